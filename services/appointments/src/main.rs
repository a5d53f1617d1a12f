//! `topsmile-appointments`: the appointments service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_appointments::run_process().await
}
