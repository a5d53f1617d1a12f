//! The patients service on MongoDB: collections `medicalHistory`, `patients`.

use mongodb::{IndexModel, bson::doc, options::IndexOptions};
use topsmile_kit::{
    StoreError,
    store::mongo::{MongoStore, create_indexes},
};

use super::PatientStore;

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .partial_filter_expression(
                            doc! {"isActive": true, "email": {"$type": "string"}},
                        )
                        .name("email_active_unique".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "isActive": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_active".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "searchName": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_search_name".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "medicalHistory",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "patientId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("clinic_patient".to_owned())
                        .build(),
                )
                .build(),
        ),
    ]
}

pub struct MongoPatients {
    pub store: MongoStore,
}

impl MongoPatients {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        create_indexes(&store.database, indexes()).await?;
        Ok(Self { store })
    }
}

impl PatientStore for MongoPatients {}
