//! `topsmile-appointments`: the appointments service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-appointments",
        topsmile_appointments::SERVICE_NAMES,
        |config, runtime| async move { topsmile_appointments::build(&config, &runtime).await },
    )
    .await
}
