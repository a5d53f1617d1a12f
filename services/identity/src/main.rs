//! `topsmile-identity`: the identity service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    topsmile_kit::server::run_service(
        "topsmile-identity",
        topsmile_identity::SERVICE_NAMES,
        |store, limits| async move {
            Ok(topsmile_identity::routes(
                topsmile_identity::open_store(&store).await?,
                &limits,
            ))
        },
    )
    .await
}
