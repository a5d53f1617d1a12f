//! `topsmile-providers`: the providers service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-providers",
        topsmile_providers::SERVICE_NAMES,
        |config, runtime| async move { topsmile_providers::build(&config, &runtime).await },
    )
    .await
}
