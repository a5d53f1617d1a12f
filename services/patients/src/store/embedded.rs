//! The patients service on the embedded SQLite store: one table per collection, with
//! indexed columns for the fields the MongoDB indexes cover.

use std::path::Path;

use topsmile_kit::{StoreError, store::sqlite::SqliteDb};

use super::PatientStore;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS patients (
    id          TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL,
    email       TEXT,
    is_active   INTEGER NOT NULL,
    search_name TEXT NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS patients_email_active ON patients (email) WHERE is_active = 1 AND email IS NOT NULL;
CREATE INDEX IF NOT EXISTS patients_clinic_active ON patients (clinic_id, is_active);
CREATE INDEX IF NOT EXISTS patients_clinic_search_name ON patients (clinic_id, search_name);
CREATE TABLE IF NOT EXISTS medical_history (
    patient_id  TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
";

/// Index names, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[
    ("patients", "patients_email_active"),
    ("patients", "patients_clinic_active"),
    ("patients", "patients_clinic_search_name"),
];

pub struct EmbeddedPatients {
    pub db: SqliteDb,
}

impl EmbeddedPatients {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open(data_dir, "patients.sqlite3", SCHEMA).await?,
        })
    }
}

impl PatientStore for EmbeddedPatients {}
