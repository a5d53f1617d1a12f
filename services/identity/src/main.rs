//! `topsmile-identity`: the identity service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_identity::run_process().await
}
