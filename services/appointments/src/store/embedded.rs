//! The appointments service on the embedded SQLite store: one table per collection, with
//! indexed columns for the fields the MongoDB indexes cover.

use std::path::Path;

use topsmile_kit::{StoreError, store::sqlite::SqliteDb};

use super::AppointmentStore;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS appointments (
    id              TEXT PRIMARY KEY,
    clinic_id       TEXT NOT NULL,
    patient_id      TEXT NOT NULL,
    provider_id     TEXT NOT NULL,
    scheduled_start INTEGER NOT NULL,
    scheduled_end   INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    doc             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS appointments_clinic_start_status ON appointments (clinic_id, scheduled_start, status);
CREATE INDEX IF NOT EXISTS appointments_provider_start ON appointments (provider_id, scheduled_start);
CREATE INDEX IF NOT EXISTS appointments_patient_start ON appointments (patient_id, scheduled_start DESC);
";

/// Index names, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[
    ("appointments", "appointments_clinic_start_status"),
    ("appointments", "appointments_provider_start"),
    ("appointments", "appointments_patient_start"),
];

pub struct EmbeddedAppointments {
    pub db: SqliteDb,
}

impl EmbeddedAppointments {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open(data_dir, "appointments.sqlite3", SCHEMA).await?,
        })
    }
}

impl AppointmentStore for EmbeddedAppointments {}
