//! The providers service on MongoDB: collections `providers`.

use mongodb::{IndexModel, bson::doc, options::IndexOptions};
use topsmile_kit::{
    StoreError,
    store::mongo::{MongoStore, create_indexes},
};

use super::ProviderStore;

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    vec![(
        "providers",
        IndexModel::builder()
            .keys(doc! {"clinicId": 1, "isActive": 1})
            .options(
                IndexOptions::builder()
                    .partial_filter_expression(doc! {"isActive": true})
                    .name("clinic_active".to_owned())
                    .build(),
            )
            .build(),
    )]
}

pub struct MongoProviders {
    pub store: MongoStore,
}

impl MongoProviders {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        create_indexes(&store.database, indexes()).await?;
        Ok(Self { store })
    }
}

impl ProviderStore for MongoProviders {}
