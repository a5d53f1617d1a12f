//! `topsmile-appointments`: the appointments service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    topsmile_kit::server::run_service(
        "topsmile-appointments",
        topsmile_appointments::SERVICE_NAMES,
        |store, limits| async move {
            Ok(topsmile_appointments::routes(
                topsmile_appointments::open_store(&store).await?,
                &limits,
            ))
        },
    )
    .await
}
