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
            let clinics =
                topsmile_kit::clinics::ClinicDirectory::new(&config.identity_addresses())?;
            Ok((
                topsmile_patients::routes(stores, passwords, clinics, &config.limits),
                guard,
            ))
        },
    )
    .await
}
