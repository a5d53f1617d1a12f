//! The providers service on the embedded SQLite store: one table per collection, with
//! indexed columns for the fields the MongoDB indexes cover.

use std::path::Path;

use topsmile_kit::{StoreError, store::sqlite::SqliteDb};

use super::ProviderStore;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS providers (
    id          TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL,
    is_active   INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS providers_clinic_active ON providers (clinic_id) WHERE is_active = 1;
";

/// Index names, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[("providers", "providers_clinic_active")];

pub struct EmbeddedProviders {
    pub db: SqliteDb,
}

impl EmbeddedProviders {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open(data_dir, "providers.sqlite3", SCHEMA).await?,
        })
    }
}

impl ProviderStore for EmbeddedProviders {}
