//! `topsmile-gateway`: the edge gateway on its own, as deployed in its own container.

use topsmile_gateway::{Gateway, GatewayConfig};
use topsmile_kit::{server, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: GatewayConfig = topsmile_kit::config::load(None)?;
    telemetry::init(config.log_format);
    tracing::info!(?config, "starting topsmile-gateway");
    let gateway = Gateway::new(&config)?;
    let listener = server::bind(config.listen).await?;
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.fire();
    });
    gateway.serve(listener, stop).await?;
    Ok(())
}
