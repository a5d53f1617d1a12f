//! `topsmile-providers`: the providers service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-providers",
        topsmile_providers::SERVICE_NAMES,
        |config| async move {
            let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
            let routes = topsmile_providers::routes(
                topsmile_providers::open_store(&store).await?,
                &config.limits,
            );
            let guard = topsmile_kit::access::Guard::via_identity(&config.identity_addresses())?;
            Ok((routes, guard))
        },
    )
    .await
}
