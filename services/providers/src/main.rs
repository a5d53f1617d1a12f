//! `topsmile-providers`: the providers service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    topsmile_kit::server::run_service(
        "topsmile-providers",
        topsmile_providers::SERVICE_NAMES,
        |store, limits| async move {
            Ok(topsmile_providers::routes(
                topsmile_providers::open_store(&store).await?,
                &limits,
            ))
        },
    )
    .await
}
