//! `topsmile-patients`: the patients service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    topsmile_kit::server::run_service(
        "topsmile-patients",
        topsmile_patients::SERVICE_NAMES,
        |store, limits| async move {
            Ok(topsmile_patients::routes(
                topsmile_patients::open_store(&store).await?,
                &limits,
            ))
        },
    )
    .await
}
