//! `topsmile-patients`: the patients service on its own, as deployed in its own container.

#[tokio::main]
async fn main() -> Result<(), topsmile_kit::server::BoxError> {
    topsmile_kit::server::run_service(
        "topsmile-patients",
        topsmile_patients::SERVICE_NAMES,
        |config| async move {
            let store = topsmile_kit::store::StoreChoice::from_config(&config.store);
            let stores = topsmile_patients::open_store(&store).await?;
            let keys = topsmile_kit::access::KeySource::identity(&config.identity_addresses())?;
            let guard = topsmile_patients::guard(keys, &stores)?;
            let passwords = topsmile_kit::password::Passwords::for_this_machine()?;
            Ok((
                topsmile_patients::routes(stores, passwords, &config.limits),
                guard,
            ))
        },
    )
    .await
}
