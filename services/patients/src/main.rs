//! `topsmile-patients`: the patients service on its own, as deployed in its own container.

use topsmile_kit::{config::ServiceConfig, server, shutdown, store::StoreChoice, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: ServiceConfig = topsmile_kit::config::load(None)?;
    telemetry::init(config.log_format);
    tracing::info!(?config, "starting topsmile-patients");
    let store = topsmile_patients::open_store(&StoreChoice::from_config(&config.store)).await?;
    let listener = server::bind(config.listen).await?;
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.fire();
    });
    let routes = topsmile_patients::routes(store, &config.limits);
    server::serve(
        listener,
        routes,
        topsmile_patients::SERVICE_NAMES,
        &config.limits,
        stop,
    )
    .await?;
    Ok(())
}
