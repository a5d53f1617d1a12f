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
    store::sqlite::{SqliteDb, create_once, translate, translate_unique},
    time,
};

use super::{
    ClinicStore, RefreshRecord, RefreshTokenStore, SESSION_RECORDS_KEPT, SessionRecord,
    SessionStore, Spend, Timeouts, UserStore,
};
use crate::domain::{
    Clinic, ClinicFields,
    clinic::{BookingRules, SessionRules},
    user::{Attempt, LockPolicy, Role, User},
};
use jiff::Timestamp;
use topsmile_kit::auth::Kind;

/// Schema migrations, applied once each, in order (see `SqliteDb::open_migrated`).
/// The first is the original schema (idempotent, so stores made before migrations
/// existed take it as a no-op); later ones are only ever appended.
/// (The `users` sign-in columns of the first are no longer read: counters live in
/// `sign_in_locks`, per account and client address.)
const MIGRATIONS: &[&str] = &[
    SCHEMA,
    topsmile_kit::store::sqlite::SIGN_IN_LOCKS_SCHEMA,
    SESSIONS_SCHEMA,
];

/// Sessions: one row per sign-in (see [`SessionStore`]).
const SESSIONS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id              TEXT PRIMARY KEY,
    subject         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    clinic_id       TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    last_used_ms    INTEGER NOT NULL,
    ended_ms        INTEGER,
    client_address  TEXT NOT NULL,
    client_label    TEXT NOT NULL,
    method          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_clinic_subject ON sessions (clinic_id, subject, created_ms);
CREATE INDEX IF NOT EXISTS sessions_created ON sessions (created_ms);
";

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
CREATE TABLE IF NOT EXISTS users (
    id              TEXT PRIMARY KEY,
    clinic_id       TEXT NOT NULL,
    email           TEXT NOT NULL UNIQUE,
    request_id      TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL,
    is_active       INTEGER NOT NULL,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER,
    lock_count      INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL,
    doc             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_clinic_role ON users (clinic_id, role) WHERE is_active = 1;
CREATE INDEX IF NOT EXISTS users_clinic_id ON users (clinic_id, id);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash              TEXT PRIMARY KEY,
    subject           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    clinic_id         TEXT NOT NULL,
    family            TEXT NOT NULL,
    family_created_ms INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL,
    used_at_ms        INTEGER,
    revoked_at_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_subject ON refresh_tokens (subject);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX IF NOT EXISTS refresh_tokens_expires_at ON refresh_tokens (expires_at_ms);
";

pub struct EmbeddedIdentity {
    db: SqliteDb,
}

impl EmbeddedIdentity {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: SqliteDb::open_migrated(data_dir, "identity.sqlite3", MIGRATIONS).await?,
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
    /// Clinics stored before booking rules existed read as the defaults.
    #[serde(default)]
    booking_rules: BookingRules,
    /// Likewise for session rules.
    #[serde(default)]
    session_rules: SessionRules,
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
        booking_rules: c.fields.booking_rules,
        session_rules: c.fields.session_rules,
        create_time_ms: time::to_millis(c.create_time),
        update_time_ms: time::to_millis(c.update_time),
    })
    .map_err(|e| StoreError::backend(format!("encode clinic: {e}")))
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, bool, i64, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_clinic(
    (id, is_active, version, doc): (String, bool, i64, String),
) -> Result<Clinic, StoreError> {
    let doc: ClinicDoc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::backend(format!("decode clinic {id}: {e}")))?;
    Ok(Clinic {
        id: ResourceId::from_stored(id),
        fields: ClinicFields {
            display_name: doc.display_name,
            address: doc.address,
            phone: doc.phone,
            email: doc.email,
            time_zone: doc.time_zone,
            booking_rules: doc.booking_rules,
            session_rules: doc.session_rules,
        },
        is_active,
        create_time: time::from_millis(doc.create_time_ms),
        update_time: time::from_millis(doc.update_time_ms),
        version,
    })
}

const COLUMNS: &str = "id, is_active, version, doc";

#[async_trait]
impl ClinicStore for EmbeddedIdentity {
    async fn create(&self, clinic: Clinic, request_id: Option<&str>) -> Result<Clinic, StoreError> {
        let doc = to_doc(&clinic)?;
        let request_id = request_id.unwrap_or(clinic.id.as_str()).to_owned();
        self.db
            .write(move |conn| {
                let find = format!("SELECT {COLUMNS} FROM clinics WHERE request_id = ?1");
                let first = create_once(conn, &find, &request_id, from_row, |tx| {
                    tx.execute(
                        "INSERT INTO clinics (id, request_id, name, is_active, version, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![clinic.id.as_str(), request_id, clinic.fields.display_name, clinic.is_active, clinic.version, doc],
                    )
                    .map_err(|e| translate_unique(e, "clinic"))?;
                    Ok(())
                })?;
                first.map_or(Ok(clinic), to_clinic)
            })
            .await
    }

    async fn get(&self, id: &ResourceId) -> Result<Option<Clinic>, StoreError> {
        let id = id.as_str().to_owned();
        self.db
            .read_point(move |conn| {
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM clinics WHERE id = ?1"))
                    .map_err(translate)?
                    .query_row(params![id], from_row)
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

/// The stored JSON form of a user's profile.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserDoc {
    display_name: String,
    password_hash: String,
    create_time_ms: i64,
    update_time_ms: i64,
    /// Users stored before MFA existed read as not enrolled.
    #[serde(default)]
    mfa: crate::domain::mfa::Mfa,
}

const USER_COLUMNS: &str = "id, clinic_id, email, role, is_active, version, doc";

type UserRow = (String, String, String, String, bool, i64, String);

fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn to_user(r: UserRow) -> Result<User, StoreError> {
    let (id, clinic, email, role, is_active, version, doc) = r;
    let doc: UserDoc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::backend(format!("decode user {id}: {e}")))?;
    Ok(User {
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::backend(format!("user {id} has role {role:?}")))?,
        id: ResourceId::from_stored(id),
        clinic,
        email,
        display_name: doc.display_name,
        is_active,
        password_hash: doc.password_hash,
        create_time: time::from_millis(doc.create_time_ms),
        update_time: time::from_millis(doc.update_time_ms),
        version,
        mfa: doc.mfa,
    })
}

fn user_doc(u: &User) -> Result<String, StoreError> {
    serde_json::to_string(&UserDoc {
        display_name: u.display_name.clone(),
        password_hash: u.password_hash.clone(),
        create_time_ms: time::to_millis(u.create_time),
        update_time_ms: time::to_millis(u.update_time),
        mfa: u.mfa.clone(),
    })
    .map_err(|e| StoreError::backend(format!("encode user: {e}")))
}

#[async_trait]
impl UserStore for EmbeddedIdentity {
    async fn create(&self, user: User, request_id: Option<&str>) -> Result<User, StoreError> {
        let doc = user_doc(&user)?;
        let request_key = super::request_key(&user, request_id);
        self.db
            .write(move |conn| {
                let find = format!("SELECT {USER_COLUMNS} FROM users WHERE request_id = ?1");
                let first = create_once(conn, &find, &request_key, user_row, |tx| {
                    tx.execute(
                        "INSERT INTO users (id, clinic_id, email, request_id, role, is_active, version, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![user.id.as_str(), user.clinic, user.email, request_key, user.role.as_str(), user.is_active, user.version, doc],
                    )
                    .map_err(|e| translate_unique(e, "email"))?;
                    Ok(())
                })?;
                first.map_or(Ok(user), to_user)
            })
            .await
    }

    async fn get(&self, clinic: &str, id: &ResourceId) -> Result<Option<User>, StoreError> {
        let (clinic, id) = (clinic.to_owned(), id.as_str().to_owned());
        self.db
            .read_point(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE clinic_id = ?1 AND id = ?2"
                ))
                .map_err(translate)?
                .query_row(params![clinic, id], user_row)
                .optional()
                .map_err(translate)?
                .map(to_user)
                .transpose()
            })
            .await
    }

    async fn get_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_owned();
        self.db
            .read_point(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE email = ?1"
                ))
                .map_err(translate)?
                .query_row(params![email], user_row)
                .optional()
                .map_err(translate)?
                .map(to_user)
                .transpose()
            })
            .await
    }

    async fn list(
        &self,
        clinic: &str,
        role: Option<Role>,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<User>, StoreError> {
        let clinic = clinic.to_owned();
        let role = role.map(|r| r.as_str().to_owned());
        let after = page.after.clone().unwrap_or_default();
        let limit = i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE clinic_id = ?1 AND id > ?2 AND (?3 OR is_active = 1) \
                     AND (?4 IS NULL OR role = ?4) ORDER BY id LIMIT ?5"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(translate)?;
                let rows = stmt.query_map(params![clinic, after, include_inactive, role, limit], user_row).map_err(translate)?;
                rows.map(|r| r.map_err(translate).and_then(to_user)).collect()
            })
            .await
    }

    async fn update_profile(&self, next: &User) -> Result<(), StoreError> {
        let doc = user_doc(next)?;
        let next = next.clone();
        self.db
            .write(move |conn| {
                let changed = conn
                    .execute(
                        "UPDATE users SET email = ?1, role = ?2, is_active = ?3, version = ?4, doc = ?5 WHERE id = ?6 AND version = ?7",
                        params![next.email, next.role.as_str(), next.is_active, next.version, doc, next.id.as_str(), next.version - 1],
                    )
                    .map_err(|e| translate_unique(e, "email"))?;
                if changed == 1 {
                    return Ok(());
                }
                let exists = conn
                    .query_row("SELECT 1 FROM users WHERE id = ?1", params![next.id.as_str()], |_| Ok(()))
                    .optional()
                    .map_err(translate)?;
                Err(if exists.is_some() { StoreError::Stale } else { StoreError::NotFound("user") })
            })
            .await
    }

    async fn any_super_admin(&self) -> Result<bool, StoreError> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'super_admin' AND is_active = 1)", [], |r| r.get(0))
                    .map_err(translate)
            })
            .await
    }

    async fn unlock_sign_in(&self, user: &User) -> Result<(), StoreError> {
        topsmile_kit::store::sqlite::unlock_sign_in(&self.db, user.id.as_str()).await
    }
}

impl EmbeddedIdentity {
    /// Revokes every not yet revoked token whose `column` (a constant of ours, never
    /// input) is `value`.
    async fn revoke(
        &self,
        column: &'static str,
        value: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let value = value.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    &format!("UPDATE refresh_tokens SET revoked_at_ms = ?2 WHERE {column} = ?1 AND revoked_at_ms IS NULL"),
                    params![value, time::to_millis(now)],
                )
                .map_err(translate)?;
                Ok(())
            })
            .await
    }
}

const REFRESH_COLUMNS: &str = "hash, subject, kind, clinic_id, family, family_created_ms, expires_at_ms, used_at_ms, revoked_at_ms";

/// A refresh token row and whether it was spent or revoked.
fn refresh_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(RefreshRecord, bool)> {
    let kind: String = row.get(2)?;
    let used: Option<i64> = row.get(7)?;
    let revoked: Option<i64> = row.get(8)?;
    Ok((
        RefreshRecord {
            hash: row.get(0)?,
            subject: row.get(1)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Staff),
            clinic: row.get(3)?,
            family: row.get(4)?,
            family_created: time::from_millis(row.get(5)?),
            expires_at: time::from_millis(row.get(6)?),
        },
        used.is_some() || revoked.is_some(),
    ))
}

#[async_trait]
impl RefreshTokenStore for EmbeddedIdentity {
    async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.db
            .write(move |conn| {
                // The embedded store's TTL monitor: expired tokens go when new ones come.
                conn.execute(
                    "DELETE FROM refresh_tokens WHERE expires_at_ms <= ?1",
                    params![time::to_millis(r.family_created.min(r.expires_at))],
                )
                .map_err(translate)?;
                conn.execute(
                    &format!("INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)"),
                    params![
                        r.hash,
                        r.subject,
                        r.kind.as_str(),
                        r.clinic,
                        r.family,
                        time::to_millis(r.family_created),
                        time::to_millis(r.expires_at)
                    ],
                )
                .map_err(|e| translate_unique(e, "refresh token"))?;
                Ok(())
            })
            .await
    }

    async fn spend(&self, hash: &str, now: Timestamp) -> Result<Spend, StoreError> {
        let hash = hash.to_owned();
        let now = time::to_millis(now);
        self.db
            .write(move |conn| {
                let spent = conn
                    .execute(
                        "UPDATE refresh_tokens SET used_at_ms = ?2 WHERE hash = ?1 AND used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > ?2",
                        params![hash, now],
                    )
                    .map_err(translate)?;
                let found = conn
                    .query_row(
                        &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE hash = ?1"),
                        params![hash],
                        refresh_row,
                    )
                    .optional()
                    .map_err(translate)?;
                Ok(match found {
                    Some((record, _)) if spent == 1 => Spend::Fresh(record),
                    Some((record, _)) if time::to_millis(record.expires_at) > now => Spend::Reused(record),
                    _ => Spend::Unknown,
                })
            })
            .await
    }

    async fn revoke_family(&self, family: &str, now: Timestamp) -> Result<(), StoreError> {
        self.revoke("family", family, now).await
    }

    async fn revoke_subject(&self, subject: &str, now: Timestamp) -> Result<(), StoreError> {
        self.revoke("subject", subject, now).await
    }

    async fn evict_oldest(
        &self,
        subject: &str,
        keep: usize,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let subject = subject.to_owned();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let now = time::to_millis(now);
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE refresh_tokens SET revoked_at_ms = ?3 WHERE family IN (
                        SELECT family FROM refresh_tokens
                        WHERE subject = ?1 AND used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > ?3
                        ORDER BY family_created_ms DESC, family DESC LIMIT -1 OFFSET ?2
                    )",
                    params![subject, keep, now],
                )
                .map_err(translate)?;
                Ok(())
            })
            .await
    }
}

const SESSION_COLUMNS: &str = "id, subject, kind, clinic_id, created_ms, last_used_ms, ended_ms, client_address, client_label, method";

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let kind: String = row.get(2)?;
    let ended: Option<i64> = row.get(6)?;
    Ok(SessionRecord {
        id: row.get(0)?,
        subject: row.get(1)?,
        kind: Kind::parse(&kind).unwrap_or(Kind::Staff),
        clinic: row.get(3)?,
        created: time::from_millis(row.get(4)?),
        last_used: time::from_millis(row.get(5)?),
        ended: ended.map(time::from_millis),
        client_address: row.get(7)?,
        client_label: row.get(8)?,
        method: row.get(9)?,
    })
}

#[async_trait]
impl SessionStore for EmbeddedIdentity {
    async fn start(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.db
            .write(move |conn| {
                // The embedded store's TTL monitor: records past any lifetime go.
                let kept = s
                    .created
                    .checked_sub(SESSION_RECORDS_KEPT)
                    .unwrap_or(s.created);
                conn.execute(
                    "DELETE FROM sessions WHERE created_ms <= ?1",
                    params![time::to_millis(kept)],
                )
                .map_err(translate)?;
                conn.execute(
                    &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                    params![
                        s.id,
                        s.subject,
                        s.kind.as_str(),
                        s.clinic,
                        time::to_millis(s.created),
                        time::to_millis(s.last_used),
                        s.ended.map(time::to_millis),
                        s.client_address,
                        s.client_label,
                        s.method
                    ],
                )
                .map_err(|e| translate_unique(e, "session"))?;
                Ok(())
            })
            .await
    }

    async fn get(&self, clinic: &str, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let (clinic, id) = (clinic.to_owned(), id.to_owned());
        self.db
            .read_point(move |conn| {
                conn.query_row(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions WHERE clinic_id = ?1 AND id = ?2"
                    ),
                    params![clinic, id],
                    session_row,
                )
                .optional()
                .map_err(translate)
            })
            .await
    }

    async fn touch(
        &self,
        clinic: &str,
        id: &str,
        now: Timestamp,
        timeouts: Timeouts,
    ) -> Result<bool, StoreError> {
        let (clinic, id) = (clinic.to_owned(), id.to_owned());
        self.db
            .write(move |conn| {
                let touched = conn
                    .execute(
                        "UPDATE sessions SET last_used_ms = MAX(last_used_ms, ?3)
                         WHERE clinic_id = ?1 AND id = ?2 AND ended_ms IS NULL
                           AND last_used_ms > ?4 AND created_ms > ?5",
                        params![
                            clinic,
                            id,
                            time::to_millis(now),
                            time::to_millis(timeouts.idle_before),
                            time::to_millis(timeouts.started_before)
                        ],
                    )
                    .map_err(translate)?;
                Ok(touched == 1)
            })
            .await
    }

    async fn end(
        &self,
        clinic: &str,
        subject: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (clinic, subject, id) = (clinic.to_owned(), subject.to_owned(), id.to_owned());
        self.db
            .write(move |conn| {
                let ended = conn
                    .execute(
                        "UPDATE sessions SET ended_ms = ?4
                         WHERE clinic_id = ?1 AND subject = ?2 AND id = ?3 AND ended_ms IS NULL",
                        params![clinic, subject, id, time::to_millis(now)],
                    )
                    .map_err(translate)?;
                Ok(ended == 1)
            })
            .await
    }

    async fn end_all(
        &self,
        clinic: &str,
        subject: &str,
        keep: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let (clinic, subject) = (clinic.to_owned(), subject.to_owned());
        let keep = keep.unwrap_or("").to_owned();
        self.db
            .write(move |conn| {
                let ended = conn
                    .execute(
                        "UPDATE sessions SET ended_ms = ?4
                         WHERE clinic_id = ?1 AND subject = ?2 AND id != ?3 AND ended_ms IS NULL",
                        params![clinic, subject, keep, time::to_millis(now)],
                    )
                    .map_err(translate)?;
                Ok(u64::try_from(ended).unwrap_or(0))
            })
            .await
    }

    async fn list(
        &self,
        clinic: &str,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (clinic, subject) = (clinic.to_owned(), subject.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let mut statement = conn
                    .prepare(&format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions
                         WHERE clinic_id = ?1 AND subject = ?2 AND ended_ms IS NULL
                         ORDER BY created_ms DESC, id DESC LIMIT ?3"
                    ))
                    .map_err(translate)?;
                let rows = statement
                    .query_map(params![clinic, subject, limit], session_row)
                    .map_err(translate)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(translate)
            })
            .await
    }
}

#[async_trait]
impl topsmile_kit::signin::SignInCounters<User> for EmbeddedIdentity {
    async fn begin_sign_in(
        &self,
        user: &User,
        client: &str,
        now: Timestamp,
        policy: &LockPolicy,
    ) -> Result<Attempt, StoreError> {
        topsmile_kit::store::sqlite::begin_sign_in(
            &self.db,
            user.id.as_str(),
            &user.clinic,
            client,
            now,
            policy,
        )
        .await
    }

    async fn sign_in_succeeded(&self, user: &User, client: &str) -> Result<(), StoreError> {
        topsmile_kit::store::sqlite::sign_in_succeeded(&self.db, user.id.as_str(), client).await
    }
}
