//! The appointments service on MongoDB: collections `appointments`.

use mongodb::{IndexModel, bson::doc, options::IndexOptions};
use topsmile_kit::{
    StoreError,
    store::mongo::{MongoStore, create_indexes},
};

use super::AppointmentStore;

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        (
            "appointments",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "scheduledStart": 1, "status": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_start_status".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "appointments",
            IndexModel::builder()
                .keys(doc! {"providerId": 1, "scheduledStart": 1})
                .options(
                    IndexOptions::builder()
                        .name("provider_start".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "appointments",
            IndexModel::builder()
                .keys(doc! {"patientId": 1, "scheduledStart": -1})
                .options(
                    IndexOptions::builder()
                        .name("patient_start".to_owned())
                        .build(),
                )
                .build(),
        ),
    ]
}

pub struct MongoAppointments {
    pub store: MongoStore,
}

impl MongoAppointments {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        create_indexes(&store.database, indexes()).await?;
        Ok(Self { store })
    }
}

impl AppointmentStore for MongoAppointments {}
