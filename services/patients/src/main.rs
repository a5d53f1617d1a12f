//! `topsmile-patients`: the patients service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-patients",
        topsmile_patients::SERVICE_NAMES,
        |config, runtime| async move { topsmile_patients::build(&config, &runtime).await },
    )
    .await
}
