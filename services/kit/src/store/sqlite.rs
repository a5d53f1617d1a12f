//! The embedded store: one SQLite file per service, in WAL mode so reads never wait for
//! the writer.
//!
//! SQLite calls block, so every call runs on Tokio's blocking pool. There is one writer
//! connection (SQLite allows one writer at a time anyway; a mutex queues them without
//! busy-looping) and a few reader connections taken in turn.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::StoreError;

const READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteDb {
    /// Opens (creating if needed) `dir/<file>` and runs `schema` on the writer. `schema`
    /// must be idempotent (`CREATE ... IF NOT EXISTS`): it runs at every start.
    pub async fn open(dir: &Path, file: &str, schema: &'static str) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let path = dir.join(file);
        tokio::task::spawn_blocking(move || {
            // Patient records: owner-only directory and file (SQLite gives its -wal and
            // -shm files the database file's permissions).
            crate::files::private_dir(&dir).map_err(|e| {
                StoreError::backend(format!("cannot create {}: {e}", dir.display()))
            })?;
            crate::files::private_file(&path).map_err(|e| {
                StoreError::backend(format!("cannot create {}: {e}", path.display()))
            })?;
            let writer = connection(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            writer.execute_batch(schema).map_err(translate)?;
            let readers = (0..READERS)
                .map(|_| connection(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map(Mutex::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Self {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    readers,
                    next_reader: AtomicUsize::new(0),
                }),
            })
        })
        .await
        .map_err(|e| StoreError::backend(format!("sqlite open task failed: {e}")))?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Opens `dir/<file>` and brings its schema up to date: `migrations[i]` runs once,
    /// in its own transaction, when the file's `PRAGMA user_version` is `i` or less, and
    /// the version is then set to `i + 1`. Migrations are only ever appended.
    pub async fn open_migrated(
        dir: &Path,
        file: &str,
        migrations: &'static [&'static str],
    ) -> Result<Self, StoreError> {
        let db = Self::open(dir, file, "").await?;
        db.write(move |conn| {
            let current: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(translate)?;
            for (index, sql) in migrations.iter().enumerate() {
                let version = i64::try_from(index).unwrap_or(i64::MAX) + 1;
                if version <= current {
                    continue;
                }
                let tx = conn.transaction().map_err(translate)?;
                tx.execute_batch(sql).map_err(translate)?;
                tx.execute_batch(&format!("PRAGMA user_version = {version}"))
                    .map_err(translate)?;
                tx.commit().map_err(translate)?;
            }
            Ok(())
        })
        .await?;
        Ok(db)
    }

    /// Runs `f` on the writer connection, on the blocking pool. For a multi-statement
    /// change, `f` opens a `BEGIN IMMEDIATE` transaction itself.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| StoreError::backend("sqlite writer lock poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::backend(format!("sqlite task failed: {e}")))?
    }

    /// Runs `f` on one of the reader connections, on the blocking pool.
    /// A read that takes microseconds (one row by its key), run right here when a
    /// reader connection is free at once: for such a read the hand-off to the blocking
    /// pool (a queue, a thread wake-up and back) costs more than the read. When every
    /// reader is busy it goes to the pool like any [`read`](Self::read). Never for a
    /// scan or a search: those would hold this async worker for milliseconds.
    pub async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = &self.inner.readers;
        let first = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            if let Ok(conn) = readers[(first + i) % readers.len()].try_lock() {
                return f(&conn);
            }
        }
        self.read(f).await
    }

    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i]
                .lock()
                .map_err(|_| StoreError::backend("sqlite reader lock poisoned"))?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::backend(format!("sqlite task failed: {e}")))?
    }
}

fn connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| StoreError::backend(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(translate)?;
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        // WAL lets readers run while the writer commits; NORMAL sync is durable across
        // process crashes, which is what an embedded development store needs.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(translate)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(translate)?;
    }
    Ok(conn)
}

/// Translates a SQLite error; a UNIQUE violation becomes `Duplicate(unique)`.
pub fn translate_unique(e: rusqlite::Error, unique: &'static str) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Duplicate(unique),
        _ => translate(e),
    }
}

pub fn translate(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Duplicate("record"),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::unreachable("SQLite is busy", e)
        }
        _ => StoreError::caused("SQLite", e),
    }
}

/// A create that runs once per idempotency key, in one immediate transaction so that the
/// check and the insert cannot interleave with another writer: `find` (a SELECT taking
/// the key as `?1`) looks for an earlier create with `key`; if there is one, its row
/// (read by `read`) is returned and nothing is inserted. Otherwise `insert` runs, the
/// transaction commits, and the answer is `None`.
pub fn create_once<R>(
    conn: &mut Connection,
    find: &str,
    key: &str,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    insert: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StoreError>,
) -> Result<Option<R>, StoreError> {
    use rusqlite::OptionalExtension;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(translate)?;
    let existing = tx
        .query_row(find, rusqlite::params![key], read)
        .optional()
        .map_err(translate)?;
    if existing.is_some() {
        return Ok(existing);
    }
    insert(&tx)?;
    tx.commit().map_err(translate)?;
    Ok(None)
}

/// The table of sign-in counters (see [`crate::lockout`]); every service that signs
/// accounts in includes it in its migrations.
pub const SIGN_IN_LOCKS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sign_in_locks (
    key             TEXT PRIMARY KEY,
    account         TEXT NOT NULL,
    clinic_id       TEXT NOT NULL,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER,
    lock_count      INTEGER NOT NULL DEFAULT 0,
    touched_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sign_in_locks_account ON sign_in_locks (account);
CREATE INDEX IF NOT EXISTS sign_in_locks_touched ON sign_in_locks (touched_ms);
";

/// Counts a sign-in attempt of `account` (in `clinic`) from `client` before its
/// password is checked, in one immediate transaction over every scope of
/// [`crate::lockout::scopes`]: `Locked` if any scope is locked or this attempt is one
/// too many for it (which locks it), `Proceed` otherwise.
pub async fn begin_sign_in(
    db: &SqliteDb,
    account: &str,
    clinic: &str,
    client: &str,
    now: jiff::Timestamp,
    policy: &crate::lockout::LockPolicy,
) -> Result<crate::lockout::Attempt, StoreError> {
    use crate::lockout::Attempt;
    let scopes = crate::lockout::scopes(account, client, policy);
    let (account, clinic, policy) = (account.to_owned(), clinic.to_owned(), *policy);
    db.write(move |conn| {
        let now_ms = now.as_millisecond();
        let forget_ms = i64::try_from(crate::lockout::FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(translate)?;
        // Counters nobody touched for long are forgotten (index on touched_ms).
        tx.execute(
            "DELETE FROM sign_in_locks WHERE touched_ms < ?1 AND (locked_until_ms IS NULL OR locked_until_ms < ?2)",
            rusqlite::params![now_ms.saturating_sub(forget_ms), now_ms],
        )
        .map_err(translate)?;
        for scope in &scopes {
            tx.execute(
                "INSERT OR IGNORE INTO sign_in_locks (key, account, clinic_id, touched_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![scope.key, account, clinic, now_ms],
            )
            .map_err(translate)?;
            let (failed, locked_until, lock_count) = tx
                .query_row(
                    "SELECT failed_logins, locked_until_ms, lock_count FROM sign_in_locks WHERE key = ?1",
                    rusqlite::params![scope.key],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, i64>(2)?)),
                )
                .map_err(translate)?;
            if locked_until.is_some_and(|until| until > now_ms) {
                tx.commit().map_err(translate)?;
                return Ok(Attempt::Locked);
            }
            if failed + 1 > scope.threshold {
                let until = scope.lock_end(&policy, lock_count, now).as_millisecond();
                tx.execute(
                    "UPDATE sign_in_locks SET failed_logins = 0, locked_until_ms = ?1, lock_count = lock_count + 1, touched_ms = ?2 WHERE key = ?3",
                    rusqlite::params![until, now_ms, scope.key],
                )
                .map_err(translate)?;
                tx.commit().map_err(translate)?;
                return Ok(Attempt::Locked);
            }
            tx.execute(
                "UPDATE sign_in_locks SET failed_logins = failed_logins + 1, touched_ms = ?1 WHERE key = ?2",
                rusqlite::params![now_ms, scope.key],
            )
            .map_err(translate)?;
        }
        tx.commit().map_err(translate)?;
        Ok(Attempt::Proceed)
    })
    .await
}

/// `account` signed in from `client`: that address's counter and the account-wide one
/// start again (other addresses' locks stay).
pub async fn sign_in_succeeded(
    db: &SqliteDb,
    account: &str,
    client: &str,
) -> Result<(), StoreError> {
    let keys = crate::lockout::cleared_by_success(account, client);
    db.write(move |conn| {
        for key in &keys {
            conn.execute(
                "DELETE FROM sign_in_locks WHERE key = ?1",
                rusqlite::params![key],
            )
            .map_err(translate)?;
        }
        Ok(())
    })
    .await
}

/// An admin unlocked `account`: every counter of it, from every address, is gone.
pub async fn unlock_sign_in(db: &SqliteDb, account: &str) -> Result<(), StoreError> {
    let account = account.to_owned();
    db.write(move |conn| {
        conn.execute(
            "DELETE FROM sign_in_locks WHERE account = ?1",
            rusqlite::params![account],
        )
        .map_err(translate)?;
        Ok(())
    })
    .await
}
