//! The appointments service on the embedded SQLite store: `appointments` with indexed
//! columns for what lists and availability select, and `appointment_claims`, whose
//! primary key is the unique key that keeps appointments from overlapping.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params, types::Value};
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    store::sqlite::{SqliteDb, translate},
};
use topsmile_providers::domain::Span;

use super::{AppointmentQuery, Body, Claim, Columns, Holder, Record, Records, parse_page_key};
use crate::domain::{Appointment, Status};

/// Schema migrations, applied once each, in order (see `SqliteDb::open_migrated`).
const MIGRATIONS: &[&str] = &[
    // 1. The placeholder table of the foundation, kept as it was.
    "
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
    ",
    // 2. Nothing ever wrote the placeholder: the real tables, with their keys.
    "
    DROP TABLE IF EXISTS appointments;
    CREATE TABLE appointments (
        id              TEXT PRIMARY KEY,
        clinic_id       TEXT NOT NULL,
        request_key     TEXT NOT NULL UNIQUE,
        patient_id      TEXT NOT NULL,
        provider_id     TEXT NOT NULL,
        scheduled_start INTEGER NOT NULL,
        scheduled_end   INTEGER NOT NULL,
        status          TEXT NOT NULL,
        booked          INTEGER NOT NULL,
        version         INTEGER NOT NULL,
        doc             TEXT NOT NULL
    );
    CREATE INDEX appointments_clinic_start_status ON appointments (clinic_id, scheduled_start, status);
    CREATE INDEX appointments_provider_start ON appointments (provider_id, scheduled_start);
    CREATE INDEX appointments_patient_start ON appointments (patient_id, scheduled_start DESC);
    CREATE TABLE appointment_claims (
        clinic_id      TEXT NOT NULL,
        resource       TEXT NOT NULL,
        granule        INTEGER NOT NULL,
        appointment_id TEXT NOT NULL,
        token          TEXT NOT NULL,
        prev           TEXT NOT NULL,
        PRIMARY KEY (clinic_id, resource, granule)
    );
    CREATE INDEX appointment_claims_appointment ON appointment_claims (clinic_id, appointment_id);
    ",
    // 3. A portal patient's self-service bookings per day (see `count_self_booking`).
    "
    CREATE TABLE patient_booking_days (
        clinic_id   TEXT NOT NULL,
        patient_id  TEXT NOT NULL,
        day         TEXT NOT NULL,
        count       INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        PRIMARY KEY (clinic_id, patient_id, day)
    );
    CREATE INDEX patient_booking_days_expires ON patient_booking_days (expires_ms);
    ",
];

/// Index names, as `(table, index)`.
pub const INDEXES: &[(&str, &str)] = &[
    ("appointments", "appointments_clinic_start_status"),
    ("appointments", "appointments_provider_start"),
    ("appointments", "appointments_patient_start"),
    ("appointment_claims", "appointment_claims_appointment"),
    ("patient_booking_days", "patient_booking_days_expires"),
];

pub struct EmbeddedAppointments {
    pub db: SqliteDb,
}

impl EmbeddedAppointments {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open_migrated(data_dir, "appointments.sqlite3", MIGRATIONS).await?,
        })
    }
}

const COLUMNS: &str = "a.id, a.clinic_id, a.patient_id, a.provider_id, a.scheduled_start, \
                       a.scheduled_end, a.status, a.booked, a.version, a.request_key, a.doc";

type Row = (Columns, String);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        Columns {
            id: r.get(0)?,
            clinic: r.get(1)?,
            patient: r.get(2)?,
            provider: r.get(3)?,
            start_ms: r.get(4)?,
            end_ms: r.get(5)?,
            status: r.get(6)?,
            booked: r.get(7)?,
            version: r.get(8)?,
            request_key: r.get(9)?,
        },
        r.get(10)?,
    ))
}

fn to_record((columns, doc): Row) -> Result<Record, StoreError> {
    let body: Body = serde_json::from_str(&doc)
        .map_err(|e| StoreError::caused(format!("decode appointment {}", columns.id), e))?;
    Record::join(columns, body)
}

/// The one record `WHERE` selects (a unique key and the clinic). Reader connections
/// see every committed write (WAL), which is all a decision here needs: the claims'
/// unique key, not this read, is what keeps two bookings apart.
async fn one(
    db: &SqliteDb,
    clause: &'static str,
    key: String,
    clinic: String,
) -> Result<Option<Record>, StoreError> {
    db.read_point(move |conn| {
        conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM appointments a WHERE {clause}"
        ))
        .map_err(translate)?
        .query_row(params![key, clinic], row)
        .optional()
        .map_err(translate)?
        .map(to_record)
        .transpose()
    })
    .await
}

/// Every appointment a prepared query selects.
fn appointments_of(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Appointment>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(translate)?;
    let rows = stmt.query_map(params, row).map_err(translate)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(to_record(r.map_err(translate)?)?.appointment);
    }
    Ok(out)
}

fn encode(record: &Record) -> Result<(Columns, String), StoreError> {
    let (columns, body) = record.split();
    let doc =
        serde_json::to_string(&body).map_err(|e| StoreError::caused("encode appointment", e))?;
    Ok((columns, doc))
}

/// Adds a parameter; its placeholder.
fn bind(params: &mut Vec<Value>, value: Value) -> String {
    params.push(value);
    format!("?{}", params.len())
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The SQL of an appointment list and its parameters; shared with the query-plan test.
/// With a provider or a patient the query goes by that one's index; otherwise by the
/// clinic's day view.
pub fn list_sql(
    clinic: &ResourceId,
    query: &AppointmentQuery,
    page: &PageRequest,
) -> (String, Vec<Value>) {
    let mut params: Vec<Value> = vec![Value::Text(clinic.to_string())];
    let mut sql =
        format!("SELECT {COLUMNS} FROM appointments a WHERE a.clinic_id = ?1 AND a.booked = 1");
    if let Some(provider) = &query.provider {
        let p = bind(&mut params, Value::Text(provider.to_string()));
        sql.push_str(&format!(" AND a.provider_id = {p}"));
    }
    if let Some(patient) = &query.patient {
        let p = bind(&mut params, Value::Text(patient.to_string()));
        sql.push_str(&format!(" AND a.patient_id = {p}"));
    }
    if let Some(from) = query.from {
        let p = bind(&mut params, Value::Integer(from.as_millisecond()));
        sql.push_str(&format!(" AND a.scheduled_start >= {p}"));
    }
    if let Some(to) = query.to {
        let p = bind(&mut params, Value::Integer(to.as_millisecond()));
        sql.push_str(&format!(" AND a.scheduled_start < {p}"));
    }
    if let Some((after_ms, after_id)) = page.after.as_deref().and_then(parse_page_key) {
        let ms = bind(&mut params, Value::Integer(after_ms));
        let id = bind(&mut params, Value::Text(after_id));
        sql.push_str(&format!(
            " AND (a.scheduled_start > {ms} OR (a.scheduled_start = {ms} AND a.id > {id}))"
        ));
    }
    if !query.statuses.is_empty() {
        let names: Vec<String> = query
            .statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        // The names are our own constants, never request text.
        sql.push_str(&format!(" AND a.status IN ({})", names.join(", ")));
    }
    params.push(Value::Integer(to_i64(page.fetch_limit())));
    sql.push_str(&format!(
        " ORDER BY a.scheduled_start, a.id LIMIT ?{}",
        params.len()
    ));
    (sql, params)
}

/// The SQL of the appointments that hold one provider's or patient's time, starting
/// within a range; shared with the query-plan test.
pub fn holding_sql(holder: Holder) -> String {
    let column = match holder {
        Holder::Provider => "provider_id",
        Holder::Patient => "patient_id",
    };
    let active: Vec<String> = Status::active()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        "SELECT {COLUMNS} FROM appointments a WHERE a.{column} = ?2 AND a.clinic_id = ?1 \
         AND a.scheduled_start >= ?3 AND a.scheduled_start < ?4 AND a.booked = 1 \
         AND a.status IN ({})",
        active.join(", ")
    )
}

fn claim_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claim> {
    Ok(Claim {
        clinic: ResourceId::from_stored(r.get(0)?),
        resource: r.get(1)?,
        granule: r.get(2)?,
        appointment: ResourceId::from_stored(r.get(3)?),
        token: r.get(4)?,
        prev: r.get(5)?,
    })
}

#[async_trait]
impl Records for EmbeddedAppointments {
    async fn insert(&self, record: &Record) -> Result<Option<Record>, StoreError> {
        let (c, doc) = encode(record)?;
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                let first = tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM appointments a WHERE a.request_key = ?1"),
                        params![c.request_key],
                        row,
                    )
                    .optional()
                    .map_err(translate)?;
                if let Some(first) = first {
                    return to_record(first).map(Some);
                }
                tx.execute(
                    "INSERT INTO appointments (id, clinic_id, request_key, patient_id, provider_id, \
                     scheduled_start, scheduled_end, status, booked, version, doc) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        c.id,
                        c.clinic,
                        c.request_key,
                        c.patient,
                        c.provider,
                        c.start_ms,
                        c.end_ms,
                        c.status,
                        c.booked,
                        c.version,
                        doc
                    ],
                )
                .map_err(translate)?;
                tx.commit().map_err(translate)?;
                Ok(None)
            })
            .await
    }

    async fn by_request(
        &self,
        clinic: &ResourceId,
        request_key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let clause = "a.request_key = ?1 AND a.clinic_id = ?2";
        one(&self.db, clause, request_key.to_owned(), clinic.to_string()).await
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Record>, StoreError> {
        let clause = "a.id = ?1 AND a.clinic_id = ?2";
        one(&self.db, clause, id.to_string(), clinic.to_string()).await
    }

    async fn replace(&self, next: &Record, expected: i64) -> Result<bool, StoreError> {
        let (c, doc) = encode(next)?;
        self.db
            .write(move |conn| {
                let changed = conn
                    .execute(
                        "UPDATE appointments SET scheduled_start = ?3, scheduled_end = ?4, status = ?5, \
                         booked = ?6, version = ?7, doc = ?8 \
                         WHERE id = ?1 AND clinic_id = ?2 AND version = ?9",
                        params![
                            c.id, c.clinic, c.start_ms, c.end_ms, c.status, c.booked, c.version, doc,
                            expected
                        ],
                    )
                    .map_err(translate)?;
                Ok(changed == 1)
            })
            .await
    }

    async fn remove_unbooked(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
        expected: i64,
    ) -> Result<bool, StoreError> {
        let (clinic, id) = (clinic.to_string(), id.to_string());
        self.db
            .write(move |conn| {
                let removed = conn
                    .execute(
                        "DELETE FROM appointments WHERE id = ?1 AND clinic_id = ?2 AND booked = 0 AND version = ?3",
                        params![id, clinic, expected],
                    )
                    .map_err(translate)?;
                Ok(removed == 1)
            })
            .await
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &AppointmentQuery,
        page: &PageRequest,
    ) -> Result<Vec<Appointment>, StoreError> {
        let (sql, params) = list_sql(clinic, query, page);
        self.db
            .read(move |conn| appointments_of(conn, &sql, rusqlite::params_from_iter(params)))
            .await
    }

    async fn holding(
        &self,
        clinic: &ResourceId,
        holder: Holder,
        id: &ResourceId,
        starts: Span,
    ) -> Result<Vec<Appointment>, StoreError> {
        let sql = holding_sql(holder);
        let (clinic, id) = (clinic.to_string(), id.to_string());
        let (from, to) = (starts.start.as_millisecond(), starts.end.as_millisecond());
        self.db
            .read(move |conn| appointments_of(conn, &sql, params![clinic, id, from, to]))
            .await
    }

    async fn insert_claims(&self, claims: &[Claim]) -> Result<bool, StoreError> {
        let claims = claims.to_vec();
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT INTO appointment_claims (clinic_id, resource, granule, appointment_id, token, prev) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )
                        .map_err(translate)?;
                    for c in &claims {
                        let inserted = stmt.execute(params![
                            c.clinic.as_str(),
                            c.resource,
                            c.granule,
                            c.appointment.as_str(),
                            c.token,
                            c.prev
                        ]);
                        match inserted.map_err(translate) {
                            Ok(_) => {}
                            // All or nothing: the transaction rolls back on drop.
                            Err(StoreError::Duplicate(_)) => return Ok(false),
                            Err(e) => return Err(e),
                        }
                    }
                }
                tx.commit().map_err(translate)?;
                Ok(true)
            })
            .await
    }

    async fn claims(
        &self,
        clinic: &ResourceId,
        resource: &str,
        first: i64,
        end: i64,
    ) -> Result<Vec<Claim>, StoreError> {
        let (clinic, resource) = (clinic.to_string(), resource.to_owned());
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT clinic_id, resource, granule, appointment_id, token, prev FROM appointment_claims \
                         WHERE clinic_id = ?1 AND resource = ?2 AND granule >= ?3 AND granule < ?4 ORDER BY granule",
                    )
                    .map_err(translate)?;
                let rows = stmt
                    .query_map(params![clinic, resource, first, end], claim_row)
                    .map_err(translate)?;
                rows.map(|r| r.map_err(translate)).collect()
            })
            .await
    }

    async fn retoken_claim(
        &self,
        seen: &Claim,
        token: &str,
        prev: &str,
    ) -> Result<bool, StoreError> {
        let (seen, token, prev) = (seen.clone(), token.to_owned(), prev.to_owned());
        self.db
            .write(move |conn| {
                let changed = conn
                    .execute(
                        "UPDATE appointment_claims SET token = ?1, prev = ?2 \
                         WHERE clinic_id = ?3 AND resource = ?4 AND granule = ?5 \
                         AND appointment_id = ?6 AND token = ?7 AND prev = ?8",
                        params![
                            token,
                            prev,
                            seen.clinic.as_str(),
                            seen.resource,
                            seen.granule,
                            seen.appointment.as_str(),
                            seen.token,
                            seen.prev
                        ],
                    )
                    .map_err(translate)?;
                Ok(changed == 1)
            })
            .await
    }

    async fn delete_claim(&self, seen: &Claim) -> Result<bool, StoreError> {
        let seen = seen.clone();
        self.db
            .write(move |conn| {
                let deleted = conn
                    .execute(
                        "DELETE FROM appointment_claims WHERE clinic_id = ?1 AND resource = ?2 AND granule = ?3 \
                         AND appointment_id = ?4 AND token = ?5 AND prev = ?6",
                        params![
                            seen.clinic.as_str(),
                            seen.resource,
                            seen.granule,
                            seen.appointment.as_str(),
                            seen.token,
                            seen.prev
                        ],
                    )
                    .map_err(translate)?;
                Ok(deleted == 1)
            })
            .await
    }

    async fn release_claims(
        &self,
        clinic: &ResourceId,
        appointment: &ResourceId,
        token: Option<&str>,
        restore: Option<&str>,
    ) -> Result<(), StoreError> {
        let (clinic, appointment) = (clinic.to_string(), appointment.to_string());
        let (token, restore) = (token.map(str::to_owned), restore.map(str::to_owned));
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(translate)?;
                if let (Some(token), Some(restore)) = (&token, &restore) {
                    tx.execute(
                        "UPDATE appointment_claims SET token = ?4, prev = '' \
                         WHERE clinic_id = ?1 AND appointment_id = ?2 AND token = ?3 AND prev = ?4",
                        params![clinic, appointment, token, restore],
                    )
                    .map_err(translate)?;
                }
                match &token {
                    Some(token) => tx.execute(
                        "DELETE FROM appointment_claims WHERE clinic_id = ?1 AND appointment_id = ?2 AND token = ?3",
                        params![clinic, appointment, token],
                    ),
                    None => tx.execute(
                        "DELETE FROM appointment_claims WHERE clinic_id = ?1 AND appointment_id = ?2",
                        params![clinic, appointment],
                    ),
                }
                .map_err(translate)?;
                tx.commit().map_err(translate)?;
                Ok(())
            })
            .await
    }

    async fn count_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
        limit: i64,
        now: jiff::Timestamp,
    ) -> Result<bool, StoreError> {
        let (clinic, patient, day) = (clinic.to_string(), patient.to_string(), day.to_owned());
        let now_ms = now.as_millisecond();
        let expires = now
            .checked_add(super::BOOKING_COUNT_KEPT)
            .unwrap_or(now)
            .as_millisecond();
        self.db
            .write(move |conn| {
                // The embedded store's TTL monitor: old days go when new ones come.
                conn.execute(
                    "DELETE FROM patient_booking_days WHERE expires_ms <= ?1",
                    params![now_ms],
                )
                .map_err(translate)?;
                let counted = conn
                    .execute(
                        "INSERT INTO patient_booking_days (clinic_id, patient_id, day, count, expires_ms)
                         VALUES (?1, ?2, ?3, 1, ?5)
                         ON CONFLICT (clinic_id, patient_id, day)
                         DO UPDATE SET count = count + 1 WHERE count < ?4",
                        params![clinic, patient, day, limit, expires],
                    )
                    .map_err(translate)?;
                Ok(counted == 1 && limit >= 1)
            })
            .await
    }

    async fn uncount_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
    ) -> Result<(), StoreError> {
        let (clinic, patient, day) = (clinic.to_string(), patient.to_string(), day.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE patient_booking_days SET count = count - 1
                     WHERE clinic_id = ?1 AND patient_id = ?2 AND day = ?3 AND count > 0",
                    params![clinic, patient, day],
                )
                .map_err(translate)?;
                Ok(())
            })
            .await
    }
}
