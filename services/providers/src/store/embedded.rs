//! The providers service on the embedded SQLite store: the `providers` table with
//! indexed columns for what lists select, and `provider_specialties` for the specialty
//! filter.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params, types::Value};
use serde::{Deserialize, Serialize};
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    store::sqlite::{SqliteDb, create_once, translate, translate_unique},
    time,
};

use super::{ProviderStore, request_key};
use crate::domain::{Provider, ProviderFields, ProviderQuery};

/// Schema migrations, applied once each, in order (see `SqliteDb::open_migrated`).
const MIGRATIONS: &[&str] = &[
    // 1. The placeholder table of the foundation, kept as it was.
    "
    CREATE TABLE IF NOT EXISTS providers (
        id          TEXT PRIMARY KEY,
        clinic_id   TEXT NOT NULL,
        is_active   INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        doc         TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS providers_clinic_active ON providers (clinic_id) WHERE is_active = 1;
    ",
    // 2. Nothing ever wrote the placeholder: the real table, with its keys.
    "
    DROP TABLE IF EXISTS providers;
    CREATE TABLE providers (
        id          TEXT PRIMARY KEY,
        clinic_id   TEXT NOT NULL,
        request_id  TEXT NOT NULL UNIQUE,
        user_id     TEXT,
        is_active   INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        doc         TEXT NOT NULL
    );
    CREATE INDEX providers_clinic_active ON providers (clinic_id, is_active, id);
    CREATE UNIQUE INDEX providers_clinic_user ON providers (clinic_id, user_id) WHERE user_id IS NOT NULL;
    CREATE TABLE provider_specialties (
        clinic_id   TEXT NOT NULL,
        specialty   TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        PRIMARY KEY (provider_id, specialty)
    );
    CREATE INDEX provider_specialties_clinic ON provider_specialties (clinic_id, specialty, provider_id);
    ",
];

/// Index names, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[
    ("providers", "providers_clinic_active"),
    ("providers", "providers_clinic_user"),
    ("provider_specialties", "provider_specialties_clinic"),
];

pub struct EmbeddedProviders {
    pub db: SqliteDb,
}

impl EmbeddedProviders {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open_migrated(data_dir, "providers.sqlite3", MIGRATIONS).await?,
        })
    }
}

/// The stored JSON form of a provider.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderDoc {
    fields: ProviderFields,
    create_time_ms: i64,
    update_time_ms: i64,
}

fn to_doc(p: &Provider) -> Result<String, StoreError> {
    serde_json::to_string(&ProviderDoc {
        fields: p.fields.clone(),
        create_time_ms: time::to_millis(p.create_time),
        update_time_ms: time::to_millis(p.update_time),
    })
    .map_err(|e| StoreError::caused("encode provider", e))
}

type ProviderRow = (String, String, bool, i64, String);

const COLUMNS: &str = "p.id, p.clinic_id, p.is_active, p.version, p.doc";

fn provider_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ProviderRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn to_provider((id, clinic, is_active, version, doc): ProviderRow) -> Result<Provider, StoreError> {
    let doc: ProviderDoc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::caused(format!("decode provider {id}"), e))?;
    Ok(Provider {
        id: ResourceId::from_stored(id),
        clinic: ResourceId::from_stored(clinic),
        fields: doc.fields,
        is_active,
        create_time: time::from_millis(doc.create_time_ms),
        update_time: time::from_millis(doc.update_time_ms),
        version,
    })
}

/// Rewrites one provider's specialties (inside the caller's transaction).
fn index_specialties(tx: &rusqlite::Transaction<'_>, p: &Provider) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM provider_specialties WHERE provider_id = ?1",
        params![p.id.as_str()],
    )
    .map_err(translate)?;
    for specialty in &p.fields.specialties {
        tx.execute(
            "INSERT OR IGNORE INTO provider_specialties (clinic_id, specialty, provider_id) VALUES (?1, ?2, ?3)",
            params![p.clinic.as_str(), specialty, p.id.as_str()],
        )
        .map_err(translate)?;
    }
    Ok(())
}

/// The SQL of a provider list and its parameters; shared with the query-plan test.
pub fn list_sql(
    clinic: &ResourceId,
    query: &ProviderQuery,
    page: &PageRequest,
) -> (String, Vec<Value>) {
    let mut params: Vec<Value> = vec![
        Value::Text(clinic.to_string()),
        Value::Text(page.after.clone().unwrap_or_default()),
    ];
    let mut sql = format!("SELECT {COLUMNS} FROM providers p WHERE p.clinic_id = ?1 AND p.id > ?2");
    if let Some(specialty) = &query.specialty {
        params.push(Value::Text(specialty.clone()));
        sql.push_str(&format!(
            " AND p.id IN (SELECT s.provider_id FROM provider_specialties s WHERE s.clinic_id = ?1 AND s.specialty = ?{})",
            params.len()
        ));
    }
    if !query.include_inactive {
        sql.push_str(" AND p.is_active = 1");
    }
    params.push(Value::Integer(
        i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX),
    ));
    sql.push_str(&format!(" ORDER BY p.id LIMIT ?{}", params.len()));
    (sql, params)
}

#[async_trait]
impl ProviderStore for EmbeddedProviders {
    async fn create(
        &self,
        provider: Provider,
        request_id: Option<&str>,
    ) -> Result<Provider, StoreError> {
        let doc = to_doc(&provider)?;
        let key = request_key(&provider, request_id);
        self.db
            .write(move |conn| {
                let find = format!("SELECT {COLUMNS} FROM providers p WHERE p.request_id = ?1");
                let first = create_once(conn, &find, &key, provider_row, |tx| {
                    tx.execute(
                        "INSERT INTO providers (id, clinic_id, request_id, user_id, is_active, version, doc) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            provider.id.as_str(),
                            provider.clinic.as_str(),
                            key,
                            provider.fields.user,
                            provider.is_active,
                            provider.version,
                            doc
                        ],
                    )
                    .map_err(|e| translate_unique(e, "user"))?;
                    index_specialties(tx, &provider)
                })?;
                first.map_or(Ok(provider), to_provider)
            })
            .await
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Provider>, StoreError> {
        let (clinic, id) = (clinic.to_string(), id.to_string());
        self.db
            .read_point(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM providers p WHERE p.clinic_id = ?1 AND p.id = ?2"
                ))
                .map_err(translate)?
                .query_row(params![clinic, id], provider_row)
                .optional()
                .map_err(translate)?
                .map(to_provider)
                .transpose()
            })
            .await
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &ProviderQuery,
        page: &PageRequest,
    ) -> Result<Vec<Provider>, StoreError> {
        let (sql, params) = list_sql(clinic, query, page);
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql).map_err(translate)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), provider_row)
                    .map_err(translate)?;
                rows.map(|r| r.map_err(translate).and_then(to_provider))
                    .collect()
            })
            .await
    }

    async fn replace(&self, next: &Provider) -> Result<(), StoreError> {
        let doc = to_doc(next)?;
        let next = next.clone();
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                let changed = tx
                    .execute(
                        "UPDATE providers SET user_id = ?1, is_active = ?2, version = ?3, doc = ?4 \
                         WHERE clinic_id = ?5 AND id = ?6 AND version = ?7",
                        params![
                            next.fields.user,
                            next.is_active,
                            next.version,
                            doc,
                            next.clinic.as_str(),
                            next.id.as_str(),
                            next.version - 1
                        ],
                    )
                    .map_err(|e| translate_unique(e, "user"))?;
                if changed != 1 {
                    let exists = tx
                        .query_row(
                            "SELECT 1 FROM providers WHERE clinic_id = ?1 AND id = ?2",
                            params![next.clinic.as_str(), next.id.as_str()],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(translate)?;
                    return Err(if exists.is_some() {
                        StoreError::Stale
                    } else {
                        StoreError::NotFound("provider")
                    });
                }
                index_specialties(&tx, &next)?;
                tx.commit().map_err(translate)
            })
            .await
    }
}
