//! `topsmile-appointments`: the appointments service on its own, as deployed in its own container.

use topsmile_appointments::AppointmentSettings;

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-appointments",
        topsmile_appointments::SERVICE_NAMES,
        |config, runtime| async move {
            let settings: AppointmentSettings = topsmile_kit::config::load(None)?;
            topsmile_appointments::build(&config, &settings, &runtime).await
        },
    )
    .await
}
