//! `topsmile-identity`: the identity service on its own, as deployed in its own container.

use topsmile_identity::IdentitySettings;

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-identity",
        topsmile_identity::SERVICE_NAMES,
        |config, runtime| async move {
            let settings: IdentitySettings = topsmile_kit::config::load(None)?;
            let identity = topsmile_identity::build(&config, &settings, &runtime).await?;
            Ok(identity.built(&config.limits))
        },
    )
    .await
}
