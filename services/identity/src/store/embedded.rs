//! Identity on the embedded SQLite store. Each clinic is a JSON document plus the columns
//! that queries filter and sort on (the same fields the MongoDB indexes cover).

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use topsmile_kit::{
    StoreError,
    address::PostalAddress,
    names::ResourceId,
    paging::PageRequest,
    store::sqlite::{SqliteDb, translate, translate_unique},
    time,
};

use super::ClinicStore;
use crate::domain::{Clinic, ClinicFields};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clinics (
    id          TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    is_active   INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS clinics_name ON clinics (name);
CREATE INDEX IF NOT EXISTS clinics_is_active ON clinics (is_active, id);
";

pub struct EmbeddedClinics {
    db: SqliteDb,
}

impl EmbeddedClinics {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open(data_dir, "identity.sqlite3", SCHEMA).await?,
        })
    }
}

/// The stored JSON form of a clinic.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClinicDoc {
    display_name: String,
    address: Option<PostalAddress>,
    phone: String,
    email: String,
    time_zone: String,
    create_time_ms: i64,
    update_time_ms: i64,
}

fn to_doc(c: &Clinic) -> Result<String, StoreError> {
    serde_json::to_string(&ClinicDoc {
        display_name: c.fields.display_name.clone(),
        address: c.fields.address.clone(),
        phone: c.fields.phone.clone(),
        email: c.fields.email.clone(),
        time_zone: c.fields.time_zone.clone(),
        create_time_ms: time::to_millis(c.create_time),
        update_time_ms: time::to_millis(c.update_time),
    })
    .map_err(|e| StoreError::Backend(format!("encode clinic: {e}")))
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, bool, i64, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_clinic(
    (id, is_active, version, doc): (String, bool, i64, String),
) -> Result<Clinic, StoreError> {
    let doc: ClinicDoc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::Backend(format!("decode clinic {id}: {e}")))?;
    Ok(Clinic {
        id: ResourceId::from_stored(id),
        fields: ClinicFields {
            display_name: doc.display_name,
            address: doc.address,
            phone: doc.phone,
            email: doc.email,
            time_zone: doc.time_zone,
        },
        is_active,
        create_time: time::from_millis(doc.create_time_ms),
        update_time: time::from_millis(doc.update_time_ms),
        version,
    })
}

const COLUMNS: &str = "id, is_active, version, doc";

#[async_trait]
impl ClinicStore for EmbeddedClinics {
    async fn create(&self, clinic: Clinic, request_id: Option<&str>) -> Result<Clinic, StoreError> {
        let doc = to_doc(&clinic)?;
        let request_id = request_id.unwrap_or(clinic.id.as_str()).to_owned();
        self.db
            .write(move |conn| {
                // One transaction: the idempotency check and the insert cannot interleave
                // with another writer.
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                let existing = tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM clinics WHERE request_id = ?1"),
                        params![request_id],
                        from_row,
                    )
                    .optional()
                    .map_err(translate)?;
                if let Some(row) = existing {
                    return to_clinic(row);
                }
                tx.execute(
                    "INSERT INTO clinics (id, request_id, name, is_active, version, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![clinic.id.as_str(), request_id, clinic.fields.display_name, clinic.is_active, clinic.version, doc],
                )
                .map_err(|e| translate_unique(e, "clinic"))?;
                tx.commit().map_err(translate)?;
                Ok(clinic)
            })
            .await
    }

    async fn get(&self, id: &ResourceId) -> Result<Option<Clinic>, StoreError> {
        let id = id.as_str().to_owned();
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!("SELECT {COLUMNS} FROM clinics WHERE id = ?1"),
                    params![id],
                    from_row,
                )
                .optional()
                .map_err(translate)?
                .map(to_clinic)
                .transpose()
            })
            .await
    }

    async fn list(
        &self,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<Clinic>, StoreError> {
        let after = page.after.clone().unwrap_or_default();
        let limit = i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM clinics WHERE id > ?1 AND (?2 OR is_active = 1) ORDER BY id LIMIT ?3"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(translate)?;
                let rows = stmt
                    .query_map(params![after, include_inactive, limit], from_row)
                    .map_err(translate)?;
                rows.map(|r| r.map_err(translate).and_then(to_clinic)).collect()
            })
            .await
    }

    async fn replace(&self, next: &Clinic) -> Result<(), StoreError> {
        let doc = to_doc(next)?;
        let next = next.clone();
        self.db
            .write(move |conn| {
                let changed = conn
                    .execute(
                        "UPDATE clinics SET name = ?1, is_active = ?2, version = ?3, doc = ?4 WHERE id = ?5 AND version = ?6",
                        params![next.fields.display_name, next.is_active, next.version, doc, next.id.as_str(), next.version - 1],
                    )
                    .map_err(translate)?;
                if changed == 1 {
                    return Ok(());
                }
                let exists = conn
                    .query_row("SELECT 1 FROM clinics WHERE id = ?1", params![next.id.as_str()], |_| Ok(()))
                    .optional()
                    .map_err(translate)?;
                Err(if exists.is_some() { StoreError::Stale } else { StoreError::NotFound("clinic") })
            })
            .await
    }
}
