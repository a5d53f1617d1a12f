//! `topsmile-gateway`: the edge gateway on its own, as deployed in its own container.

use topsmile_gateway::{Gateway, GatewayConfig};
use topsmile_kit::{server, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: GatewayConfig = topsmile_kit::config::load(None)?;
    let telemetry = telemetry::init(config.log_format, "topsmile-gateway");
    tracing::info!(?config, "starting topsmile-gateway");
    let gateway = Gateway::new(&config)?;
    let listener = server::bind(config.listen).await?;
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.fire();
    });
    if let Some(addr) = config.metrics_listen {
        let bound = topsmile_kit::calls::spawn_metrics(addr, stop.clone()).await?;
        tracing::info!(%bound, "metrics at /metrics");
    }
    let served = gateway.serve(listener, stop).await;
    telemetry.shutdown();
    served?;
    Ok(())
}
