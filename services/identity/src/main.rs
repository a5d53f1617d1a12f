//! `topsmile-identity`: the identity service on its own, as deployed in its own container.

use topsmile_identity::{Identity, IdentitySettings};

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-identity",
        topsmile_identity::SERVICE_NAMES,
        |config| async move {
            let settings: IdentitySettings = topsmile_kit::config::load(None)?;
            let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
            let stores = topsmile_identity::open_store(&store).await?;
            let identity = Identity::from_settings(stores, &config.store.data_dir, &settings)?;
            identity.bootstrap(&settings).await?;
            Ok((identity.routes(&config.limits), identity.guard.clone()))
        },
    )
    .await
}
