//! `topsmile-gateway`: the edge gateway on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    topsmile_gateway::run_process().await
}
