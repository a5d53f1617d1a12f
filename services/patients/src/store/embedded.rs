//! The patients service on the embedded SQLite store: a table per collection with the
//! queried fields as indexed columns, the rest as a JSON document, and a search table
//! holding every word-start suffix of each name (the SQLite side of the multikey
//! `searchName` index on MongoDB).

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params, types::Value};
use serde::{Deserialize, Serialize};
use topsmile_kit::{
    StoreError,
    address::PostalAddress,
    names::ResourceId,
    paging::PageRequest,
    store::sqlite::{SqliteDb, create_once, translate, translate_unique},
    time,
};

use super::{AuditEvent, AuditLog, AuditQuery, HistoryStore, PatientStore, request_key};
use crate::domain::{
    Patient, PatientFields, PatientQuery, history::HistoryVersion, prefix_upper_bound,
};
use jiff::Timestamp;
use topsmile_kit::lockout::{Attempt, LockPolicy};

/// Schema migrations, applied once each, in order (see `SqliteDb::open_migrated`).
const MIGRATIONS: &[&str] = &[
    // 1. The foundation created placeholder tables that nothing ever wrote: replace them.
    "
    DROP TABLE IF EXISTS patients;
    DROP TABLE IF EXISTS medical_history;
    CREATE TABLE patients (
        id           TEXT PRIMARY KEY,
        clinic_id    TEXT NOT NULL,
        request_id   TEXT NOT NULL UNIQUE,
        email        TEXT,
        phone_digits TEXT NOT NULL,
        is_active    INTEGER NOT NULL,
        search_name  TEXT NOT NULL,
        version      INTEGER NOT NULL,
        doc          TEXT NOT NULL
    );
    CREATE UNIQUE INDEX patients_email_active ON patients (email) WHERE is_active = 1 AND email IS NOT NULL;
    CREATE INDEX patients_clinic_active ON patients (clinic_id, is_active);
    CREATE INDEX patients_clinic_search_name ON patients (clinic_id, search_name);
    CREATE INDEX patients_clinic_phone ON patients (clinic_id, phone_digits);
    CREATE TABLE patient_search (
        clinic_id  TEXT NOT NULL,
        term       TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        PRIMARY KEY (patient_id, term)
    );
    CREATE INDEX patient_search_clinic_term ON patient_search (clinic_id, term);
    CREATE TABLE medical_history (
        patient_id  TEXT PRIMARY KEY,
        clinic_id   TEXT NOT NULL,
        version     INTEGER NOT NULL,
        doc         TEXT NOT NULL
    );
    CREATE TABLE audit_events (
        id        TEXT PRIMARY KEY,
        clinic_id TEXT NOT NULL,
        actor     TEXT NOT NULL,
        resource  TEXT NOT NULL,
        doc       TEXT NOT NULL
    );
    CREATE INDEX audit_events_clinic ON audit_events (clinic_id, id);
    CREATE INDEX audit_events_clinic_resource ON audit_events (clinic_id, resource, id);
    CREATE INDEX audit_events_clinic_actor ON audit_events (clinic_id, actor, id);
    -- The trail is append-only, whatever code runs against this file.
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
    ",
    // 2. Replaced versions of medical histories.
    "
    CREATE TABLE medical_history_revisions (
        patient_id TEXT NOT NULL,
        version    INTEGER NOT NULL,
        doc        TEXT NOT NULL,
        PRIMARY KEY (patient_id, version)
    );
    ",
    // 3. Portal sign-in counters.
    "
    ALTER TABLE patients ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE patients ADD COLUMN locked_until_ms INTEGER;
    ALTER TABLE patients ADD COLUMN lock_count INTEGER NOT NULL DEFAULT 0;
    ",
    // 4. Name search in id order without sorting every match: lists walk
    //    (clinic, active, id) and probe a covering (clinic, term, patient) index.
    "
    DROP INDEX patients_clinic_active;
    CREATE INDEX patients_clinic_active ON patients (clinic_id, is_active, id);
    DROP INDEX patient_search_clinic_term;
    CREATE INDEX patient_search_clinic_term ON patient_search (clinic_id, term, patient_id);
    ",
    // 5. Sign-in counters per account and client address (see topsmile_kit::lockout);
    //    the per-patient columns of migration 3 are no longer read.
    topsmile_kit::store::sqlite::SIGN_IN_LOCKS_SCHEMA,
    // 6. A patient's email is unique within a clinic, not across clinics (otherwise one
    //    clinic learns, and can squat, another's patients' addresses).
    "
    DROP INDEX patients_email_active;
    CREATE UNIQUE INDEX patients_clinic_email_active ON patients (clinic_id, email)
        WHERE is_active = 1 AND email IS NOT NULL;
    ",
];

/// The audit trail's file, beside the records'.
pub const TRAIL_FILE: &str = "patients-audit.sqlite3";

/// The trail's schema migrations (its own file, its own versions). Events are stored
/// in the order every listing reads them, (clinic, id), with no separate rowid table:
/// each event is three B-tree inserts (the events and two indexes) instead of five.
const TRAIL_MIGRATIONS: &[&str] = &["
    CREATE TABLE audit_events (
        clinic_id TEXT NOT NULL,
        id        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        resource  TEXT NOT NULL,
        doc       TEXT NOT NULL,
        PRIMARY KEY (clinic_id, id)
    ) WITHOUT ROWID;
    CREATE INDEX audit_events_clinic_resource ON audit_events (clinic_id, resource, id);
    CREATE INDEX audit_events_clinic_actor ON audit_events (clinic_id, actor, id);
    -- The trail is append-only, whatever code runs against this file.
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
    "];

/// Index names of the records' file, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[
    ("patients", "patients_clinic_email_active"),
    ("patients", "patients_clinic_active"),
    ("patients", "patients_clinic_search_name"),
    ("patients", "patients_clinic_phone"),
    ("patient_search", "patient_search_clinic_term"),
];

/// Index names of the trail's file.
pub const TRAIL_INDEXES: &[(&str, &str)] = &[("audit_events", "audit_events_clinic_resource")];

/// Two files: the records, and the audit trail on its own. Every read of a record
/// writes an audit event, and in WAL mode any commit to a file makes every reader of
/// that file drop its page cache; in one file, each GetPatient would read through a
/// cache the previous call's event had just emptied.
pub struct EmbeddedPatients {
    pub db: SqliteDb,
    pub trail: SqliteDb,
}

impl EmbeddedPatients {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let db = SqliteDb::open_migrated(data_dir, "patients.sqlite3", MIGRATIONS).await?;
        let trail = SqliteDb::open_migrated(data_dir, TRAIL_FILE, TRAIL_MIGRATIONS).await?;
        move_trail_out(&db, &trail).await?;
        Ok(Self { db, trail })
    }
}

/// Moves the events of a records file from before the trail had its own file (or the
/// empty table migration 1 still creates) into the trail's file, in three steps that
/// each commit on one file: copy (skipping events already there), check that every
/// event is in the trail's file, and only then drop the records file's table. One
/// transaction over both files would not do: in WAL mode SQLite commits attached files
/// one after the other, so a crash between the two commits could keep the drop and
/// lose the copy. Cut short anywhere, the move is finished by the next start.
async fn move_trail_out(db: &SqliteDb, trail: &SqliteDb) -> Result<(), StoreError> {
    let trail_path = trail.path().to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let moved = db
        .write(move |conn| {
            if !has_old_trail(conn)? {
                return Ok(0);
            }
            conn.execute("ATTACH DATABASE ?1 AS trail", params![trail_path])
                .map_err(translate)?;
            let moved = copy_check_drop(conn);
            let detached = conn
                .execute_batch("DETACH DATABASE trail")
                .map_err(translate);
            // Another process starting on the same directory may have finished the
            // move under this one (the table went away midway): nothing is left to do.
            let moved = match moved {
                Err(_) if !has_old_trail(conn)? => 0,
                moved => moved?,
            };
            detached?;
            if moved > 0 {
                // The drop wrote every freed page to the WAL: give the space back.
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                    .map_err(translate)?;
            }
            Ok(moved)
        })
        .await?;
    if moved > 0 {
        tracing::info!(
            events = moved,
            file = TRAIL_FILE,
            took = ?started.elapsed(),
            "audit trail moved to its own file (once)"
        );
    }
    Ok(())
}

/// Whether the records file still has a trail table of its own.
fn has_old_trail(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'audit_events')",
        [],
        |r| r.get(0),
    )
    .map_err(translate)
}

/// The move's three steps, on a writer with the trail's file attached as `trail`.
/// Returns how many events the records file held.
fn copy_check_drop(conn: &rusqlite::Connection) -> Result<usize, StoreError> {
    // One statement, committed on its own: it writes the trail's file only.
    conn.execute(
        "INSERT OR IGNORE INTO trail.audit_events (id, clinic_id, actor, resource, doc)
             SELECT id, clinic_id, actor, resource, doc FROM main.audit_events",
        [],
    )
    .map_err(translate)?;
    let (held, missing): (i64, i64) = conn
        .query_row(
            "SELECT count(*),
                    count(*) FILTER (WHERE NOT EXISTS
                        (SELECT 1 FROM trail.audit_events AS t
                          WHERE t.clinic_id = m.clinic_id AND t.id = m.id))
               FROM main.audit_events AS m",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(translate)?;
    if missing > 0 {
        return Err(StoreError::backend(format!(
            "{missing} audit events did not reach {TRAIL_FILE}; the records file keeps them"
        )));
    }
    conn.execute_batch("DROP TABLE main.audit_events")
        .map_err(translate)?;
    Ok(usize::try_from(held).unwrap_or(usize::MAX))
}

/// The stored JSON form of a patient.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatientDoc {
    given_name: String,
    family_name: String,
    email: Option<String>,
    phone: String,
    /// `YYYY-MM-DD`.
    date_of_birth: Option<String>,
    address: Option<PostalAddress>,
    password_hash: Option<String>,
    #[serde(default)]
    password_set_ms: i64,
    #[serde(default)]
    password_kept_session: String,
    create_time_ms: i64,
    update_time_ms: i64,
}

fn to_doc(p: &Patient) -> Result<String, StoreError> {
    serde_json::to_string(&PatientDoc {
        given_name: p.fields.given_name.clone(),
        family_name: p.fields.family_name.clone(),
        email: p.fields.email.clone(),
        phone: p.fields.phone.clone(),
        date_of_birth: p.fields.date_of_birth.map(|d| d.to_string()),
        address: p.fields.address.clone(),
        password_hash: p.password_hash.clone(),
        password_set_ms: p.password_set_ms,
        password_kept_session: p.password_kept_session.clone(),
        create_time_ms: time::to_millis(p.create_time),
        update_time_ms: time::to_millis(p.update_time),
    })
    .map_err(|e| StoreError::backend(format!("encode patient: {e}")))
}

type PatientRow = (String, String, bool, i64, String);

const COLUMNS: &str = "p.id, p.clinic_id, p.is_active, p.version, p.doc";

fn patient_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PatientRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn to_patient((id, clinic, is_active, version, doc): PatientRow) -> Result<Patient, StoreError> {
    let doc: PatientDoc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::backend(format!("decode patient {id}: {e}")))?;
    let date_of_birth = doc
        .date_of_birth
        .map(|d| {
            d.parse()
                .map_err(|e| StoreError::backend(format!("patient {id} date of birth: {e}")))
        })
        .transpose()?;
    Ok(Patient {
        id: ResourceId::from_stored(id),
        clinic: ResourceId::from_stored(clinic),
        fields: PatientFields {
            given_name: doc.given_name,
            family_name: doc.family_name,
            email: doc.email,
            phone: doc.phone,
            date_of_birth,
            address: doc.address,
        },
        is_active,
        password_hash: doc.password_hash,
        password_set_ms: doc.password_set_ms,
        password_kept_session: doc.password_kept_session,
        create_time: time::from_millis(doc.create_time_ms),
        update_time: time::from_millis(doc.update_time_ms),
        version,
    })
}

/// Rewrites the search terms of one patient (inside the caller's transaction).
fn index_terms(tx: &rusqlite::Transaction<'_>, p: &Patient) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM patient_search WHERE patient_id = ?1",
        params![p.id.as_str()],
    )
    .map_err(translate)?;
    for term in p.search_terms() {
        tx.execute(
            "INSERT OR IGNORE INTO patient_search (clinic_id, term, patient_id) VALUES (?1, ?2, ?3)",
            params![p.clinic.as_str(), term, p.id.as_str()],
        )
        .map_err(translate)?;
    }
    Ok(())
}

/// The SQL of an audit listing and its parameters; shared with the query-plan test.
pub fn audit_list_sql(
    clinic: &str,
    query: &AuditQuery,
    page: &PageRequest,
) -> (String, Vec<Value>) {
    let mut params = clinic_and_cursor(clinic.to_owned(), page);
    let mut sql = "SELECT id, clinic_id, actor, resource, doc FROM audit_events WHERE clinic_id = ?1 AND id > ?2".to_owned();
    if let Some(resource) = &query.resource {
        and_equal(&mut sql, &mut params, "resource", resource);
    }
    if let Some(actor) = &query.actor {
        and_equal(&mut sql, &mut params, "actor", actor);
    }
    order_and_limit(&mut sql, &mut params, "id", page);
    (sql, params)
}

/// A listing's first two parameters: the clinic (`?1`) and the key the page starts
/// after (`?2`).
fn clinic_and_cursor(clinic: String, page: &PageRequest) -> Vec<Value> {
    vec![
        Value::Text(clinic),
        Value::Text(page.after.clone().unwrap_or_default()),
    ]
}

/// Appends ` AND <column> = ?n`, `value` being parameter n.
fn and_equal(sql: &mut String, params: &mut Vec<Value>, column: &str, value: &str) {
    params.push(Value::Text(value.to_owned()));
    sql.push_str(&format!(" AND {column} = ?{}", params.len()));
}

/// Appends the page's order (by `key`) and row limit.
fn order_and_limit(sql: &mut String, params: &mut Vec<Value>, key: &str, page: &PageRequest) {
    params.push(Value::Integer(
        i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX),
    ));
    sql.push_str(&format!(" ORDER BY {key} LIMIT ?{}", params.len()));
}

/// The SQL of a patient list and its parameters; shared with the query-plan test.
pub fn list_sql(
    clinic: &ResourceId,
    query: &PatientQuery,
    page: &PageRequest,
) -> (String, Vec<Value>) {
    let mut params = clinic_and_cursor(clinic.to_string(), page);
    let mut sql = match &query.name_prefix {
        Some(prefix) => {
            params.push(Value::Text(prefix.clone()));
            params.push(Value::Text(prefix_upper_bound(prefix)));
            // The matching ids come from the covering search index as a sorted list,
            // so the page is read in id order and stops at its size: no sort of every
            // match, however common the prefix.
            format!(
                "SELECT {COLUMNS} FROM patients p WHERE p.clinic_id = ?1 AND p.id > ?2 AND p.id IN \
                 (SELECT s.patient_id FROM patient_search s WHERE s.clinic_id = ?1 AND s.term >= ?3 AND s.term < ?4)"
            )
        }
        None => format!("SELECT {COLUMNS} FROM patients p WHERE p.clinic_id = ?1 AND p.id > ?2"),
    };
    if !query.include_inactive {
        sql.push_str(" AND p.is_active = 1");
    }
    if let Some(digits) = &query.phone_digits {
        and_equal(&mut sql, &mut params, "p.phone_digits", digits);
    }
    if let Some(email) = &query.email {
        and_equal(&mut sql, &mut params, "p.email", email);
    }
    order_and_limit(&mut sql, &mut params, "p.id", page);
    (sql, params)
}

#[async_trait]
impl PatientStore for EmbeddedPatients {
    async fn get_by_email(
        &self,
        clinic: &ResourceId,
        email: &str,
    ) -> Result<Option<Patient>, StoreError> {
        let (clinic, email) = (clinic.to_string(), email.to_owned());
        self.db
            .read(move |conn| {
                conn.query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM patients p WHERE p.clinic_id = ?1 AND p.email = ?2 AND p.is_active = 1"
                    ),
                    params![clinic, email],
                    patient_row,
                )
                .optional()
                .map_err(translate)?
                .map(to_patient)
                .transpose()
            })
            .await
    }

    async fn unlock_sign_in(&self, patient: &Patient) -> Result<(), StoreError> {
        topsmile_kit::store::sqlite::unlock_sign_in(&self.db, patient.id.as_str()).await
    }

    async fn create(
        &self,
        patient: Patient,
        request_id: Option<&str>,
    ) -> Result<Patient, StoreError> {
        let doc = to_doc(&patient)?;
        let key = request_key(&patient, request_id);
        self.db
            .write(move |conn| {
                let find = format!("SELECT {COLUMNS} FROM patients p WHERE p.request_id = ?1");
                let first = create_once(conn, &find, &key, patient_row, |tx| {
                    tx.execute(
                        "INSERT INTO patients (id, clinic_id, request_id, email, phone_digits, is_active, search_name, version, doc) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            patient.id.as_str(),
                            patient.clinic.as_str(),
                            key,
                            patient.fields.email,
                            patient.phone_digits(),
                            patient.is_active,
                            patient.search_terms().first().cloned().unwrap_or_default(),
                            patient.version,
                            doc
                        ],
                    )
                    .map_err(|e| translate_unique(e, "email"))?;
                    index_terms(tx, &patient)
                })?;
                first.map_or(Ok(patient), to_patient)
            })
            .await
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Patient>, StoreError> {
        let (clinic, id) = (clinic.to_string(), id.to_string());
        self.db
            .read_point(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM patients p WHERE p.clinic_id = ?1 AND p.id = ?2"
                ))
                .map_err(translate)?
                .query_row(params![clinic, id], patient_row)
                .optional()
                .map_err(translate)?
                .map(to_patient)
                .transpose()
            })
            .await
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &PatientQuery,
        page: &PageRequest,
    ) -> Result<Vec<Patient>, StoreError> {
        let (sql, params) = list_sql(clinic, query, page);
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql).map_err(translate)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), patient_row)
                    .map_err(translate)?;
                rows.map(|r| r.map_err(translate).and_then(to_patient))
                    .collect()
            })
            .await
    }

    async fn replace(&self, next: &Patient) -> Result<(), StoreError> {
        let doc = to_doc(next)?;
        let next = next.clone();
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                let changed = tx
                    .execute(
                        "UPDATE patients SET email = ?1, phone_digits = ?2, is_active = ?3, search_name = ?4, version = ?5, doc = ?6 \
                         WHERE id = ?7 AND version = ?8 AND clinic_id = ?9",
                        params![
                            next.fields.email,
                            next.phone_digits(),
                            next.is_active,
                            next.search_terms().first().cloned().unwrap_or_default(),
                            next.version,
                            doc,
                            next.id.as_str(),
                            next.version - 1,
                            next.clinic.as_str()
                        ],
                    )
                    .map_err(|e| translate_unique(e, "email"))?;
                if changed != 1 {
                    let exists = tx
                        .query_row("SELECT 1 FROM patients WHERE id = ?1 AND clinic_id = ?2", params![next.id.as_str(), next.clinic.as_str()], |_| Ok(()))
                        .optional()
                        .map_err(translate)?;
                    return Err(if exists.is_some() { StoreError::Stale } else { StoreError::NotFound("patient") });
                }
                index_terms(&tx, &next)?;
                tx.commit().map_err(translate)
            })
            .await
    }
}

/// The stored JSON form of an audit event.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditDoc {
    actor_role: String,
    actor_kind: String,
    action: String,
    outcome: String,
    time_ms: i64,
    trace_id: String,
}

fn audit_doc(e: &AuditEvent) -> Result<String, StoreError> {
    serde_json::to_string(&AuditDoc {
        actor_role: e.actor_role.clone(),
        actor_kind: e.actor_kind.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        time_ms: time::to_millis(e.time),
        trace_id: e.trace_id.clone(),
    })
    .map_err(|err| StoreError::backend(format!("encode audit event: {err}")))
}

#[async_trait]
impl AuditLog for EmbeddedPatients {
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.append_all(vec![event.clone()]).await
    }

    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let rows = events
            .into_iter()
            .map(|e| audit_doc(&e).map(|doc| (e, doc)))
            .collect::<Result<Vec<_>, _>>()?;
        self.trail
            .write(move |conn| {
                let tx = conn.transaction().map_err(translate)?;
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO audit_events (id, clinic_id, actor, resource, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .map_err(translate)?;
                    for (e, doc) in &rows {
                        insert
                            .execute(params![e.id.as_str(), e.clinic, e.actor, e.resource, doc])
                            .map_err(translate)?;
                    }
                }
                tx.commit().map_err(translate)
            })
            .await
    }

    async fn list(
        &self,
        clinic: &str,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let (sql, params) = audit_list_sql(clinic, query, page);
        self.trail
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql).map_err(translate)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    })
                    .map_err(translate)?;
                rows.map(|row| {
                    let (id, clinic, actor, resource, doc) = row.map_err(translate)?;
                    let doc: AuditDoc = serde_json::from_str(&doc).map_err(|e| {
                        StoreError::backend(format!("decode audit event {id}: {e}"))
                    })?;
                    Ok(AuditEvent {
                        id: ResourceId::from_stored(id),
                        clinic,
                        actor,
                        actor_role: doc.actor_role,
                        actor_kind: doc.actor_kind,
                        action: doc.action,
                        resource,
                        outcome: doc.outcome,
                        time: time::from_millis(doc.time_ms),
                        trace_id: doc.trace_id,
                    })
                })
                .collect()
            })
            .await
    }
}

fn encode_version(v: &HistoryVersion) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::backend(format!("encode history: {e}")))
}

fn decode_version(doc: &str) -> Result<HistoryVersion, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::backend(format!("decode history: {e}")))
}

#[async_trait]
impl HistoryStore for EmbeddedPatients {
    async fn current(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
    ) -> Result<Option<HistoryVersion>, StoreError> {
        let (clinic, patient) = (clinic.to_string(), patient.to_string());
        self.db
            .read(move |conn| {
                conn.query_row(
                    "SELECT doc FROM medical_history WHERE patient_id = ?1 AND clinic_id = ?2",
                    params![patient, clinic],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(translate)?
                .map(|doc| decode_version(&doc))
                .transpose()
            })
            .await
    }

    async fn record(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        next: &HistoryVersion,
    ) -> Result<(), StoreError> {
        let (clinic, patient) = (clinic.to_string(), patient.to_string());
        let doc = encode_version(next)?;
        let version = next.version;
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                let stored = tx
                    .query_row(
                        "SELECT version, doc FROM medical_history WHERE patient_id = ?1 AND clinic_id = ?2",
                        params![patient, clinic],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                    )
                    .optional()
                    .map_err(translate)?;
                match stored {
                    None if version == 1 => {
                        tx.execute(
                            "INSERT INTO medical_history (patient_id, clinic_id, version, doc) VALUES (?1, ?2, 1, ?3)",
                            params![patient, clinic, doc],
                        )
                        .map_err(translate)?;
                    }
                    Some((current, previous)) if current == version - 1 => {
                        tx.execute(
                            "INSERT INTO medical_history_revisions (patient_id, version, doc) VALUES (?1, ?2, ?3)",
                            params![patient, current, previous],
                        )
                        .map_err(translate)?;
                        tx.execute(
                            "UPDATE medical_history SET version = ?2, doc = ?3 WHERE patient_id = ?1",
                            params![patient, version, doc],
                        )
                        .map_err(translate)?;
                    }
                    _ => return Err(StoreError::Stale),
                }
                tx.commit().map_err(translate)
            })
            .await
    }

    async fn revisions(
        &self,
        _clinic: &ResourceId,
        patient: &ResourceId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryVersion>, StoreError> {
        // Revisions are only ever written for a patient whose history row names the
        // clinic (checked by the caller through `current`); SQLite is never sharded.
        let patient = patient.to_string();
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT doc FROM medical_history_revisions WHERE patient_id = ?1 AND version < ?2 ORDER BY version DESC LIMIT ?3",
                    )
                    .map_err(translate)?;
                let rows = stmt
                    .query_map(params![patient, before, limit], |r| r.get::<_, String>(0))
                    .map_err(translate)?;
                rows.map(|r| r.map_err(translate).and_then(|doc| decode_version(&doc)))
                    .collect()
            })
            .await
    }
}

#[async_trait]
impl topsmile_kit::signin::SignInCounters<Patient> for EmbeddedPatients {
    async fn begin_sign_in(
        &self,
        patient: &Patient,
        client: &str,
        now: Timestamp,
        policy: &LockPolicy,
    ) -> Result<Attempt, StoreError> {
        topsmile_kit::store::sqlite::begin_sign_in(
            &self.db,
            patient.id.as_str(),
            patient.clinic.as_str(),
            client,
            now,
            policy,
        )
        .await
    }

    async fn sign_in_succeeded(&self, patient: &Patient, client: &str) -> Result<(), StoreError> {
        topsmile_kit::store::sqlite::sign_in_succeeded(&self.db, patient.id.as_str(), client).await
    }
}
