//! The MongoDB client every service uses: majority writes and primary reads by default,
//! an optional read preference for list and search reads, and one translation of driver
//! errors into [`StoreError`].

use mongodb::{
    Client, Database,
    error::{Error, ErrorKind, WriteFailure},
    options::{
        ClientOptions, ReadPreference, ReadPreferenceOptions, SelectionCriteria, WriteConcern,
    },
};
use secrecy::{ExposeSecret, SecretString};

use super::StoreError;

/// Sees every command any TopSmile MongoDB client sends: `(command name, command)`.
pub type CommandObserver = Box<dyn Fn(&str, &mongodb::bson::Document) + Send + Sync>;

static COMMAND_OBSERVER: std::sync::OnceLock<CommandObserver> = std::sync::OnceLock::new();

/// Installs the process's command observer (once; later calls are ignored). Tests use
/// it to check the shape of every query the services send, e.g. that each one on a
/// tenant collection names its clinic. Without one, a command costs one atomic load.
pub fn observe_commands(observer: CommandObserver) {
    let _ = COMMAND_OBSERVER.set(observer);
}

/// A service's handle on its database.
#[derive(Debug, Clone)]
pub struct MongoStore {
    pub database: Database,
    /// Where list and search reads go; reads that decide something use the primary.
    pub list_reads: SelectionCriteria,
}

/// How long an operation waits for a usable MongoDB server unless the URI says.
pub const SERVER_SELECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects with TopSmile's settings. Writes are acknowledged by a majority of the
/// replica set, so an acknowledged write survives a primary fail-over.
pub async fn connect(
    uri: &SecretString,
    database: &str,
    app_name: &str,
    list_read_preference: &str,
) -> Result<MongoStore, StoreError> {
    let mut options = ClientOptions::parse(uri.expose_secret())
        .await
        .map_err(|e| StoreError::unavailable(format!("invalid MongoDB URI or DNS: {}", e.kind)))?;
    options.app_name = Some(app_name.to_owned());
    // With the store out of reach, a call waits this long for it, then answers
    // UNAVAILABLE (well inside a call's deadline) instead of the driver's 30 s. A
    // replica-set election usually ends within it. The URI's serverSelectionTimeoutMS
    // wins.
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options.write_concern = Some(WriteConcern::majority());
    options.selection_criteria = Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
    options.command_event_handler = Some(mongodb::event::EventHandler::callback(
        |event: mongodb::event::command::CommandEvent| {
            if let (Some(observer), mongodb::event::command::CommandEvent::Started(started)) =
                (COMMAND_OBSERVER.get(), event)
            {
                observer(&started.command_name, &started.command);
            }
        },
    ));
    let client = Client::with_options(options).map_err(translate)?;
    Ok(MongoStore {
        database: client.database(database),
        list_reads: read_preference(list_read_preference)?,
    })
}

fn read_preference(name: &str) -> Result<SelectionCriteria, StoreError> {
    let options = Some(ReadPreferenceOptions::default());
    let pref = match name {
        "primary" | "" => ReadPreference::Primary,
        "primaryPreferred" => ReadPreference::PrimaryPreferred { options },
        "secondary" => ReadPreference::Secondary { options },
        "secondaryPreferred" => ReadPreference::SecondaryPreferred { options },
        "nearest" => ReadPreference::Nearest { options },
        other => {
            return Err(StoreError::backend(format!(
                "unknown mongodb_list_read_preference {other:?}"
            )));
        }
    };
    Ok(SelectionCriteria::ReadPreference(pref))
}

/// Translates a driver error. `unique` names what a duplicate-key error means for the
/// caller ("email", "clinic"); pass the index-specific meaning where there is one.
pub fn translate_unique(e: Error, unique: &'static str) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::Duplicate(unique)
    } else {
        translate(e)
    }
}

pub fn translate(e: Error) -> StoreError {
    if is_duplicate_key(&e) {
        return StoreError::Duplicate("record");
    }
    match *e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => {
            StoreError::unreachable("MongoDB is out of reach", e)
        }
        _ if e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError") =>
        {
            StoreError::unreachable("MongoDB asked for a retry", e)
        }
        _ => StoreError::caused("MongoDB", e),
    }
}

pub fn is_duplicate_key(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        _ => false,
    }
}

/// What an idempotent insert found.
#[derive(Debug)]
pub enum Inserted {
    /// The document went in.
    New,
    /// A document with the same `requestId` was there already: a retried create. The
    /// first result is the answer; nothing was inserted.
    Retry(mongodb::bson::Document),
}

/// Inserts `document`, whose `requestId` field holds the create's idempotency key under
/// a unique index. A duplicate key is a retry if a document with that key exists (its
/// first result is returned), otherwise another unique key (`unique`, e.g. "email")
/// decided it: `Duplicate(unique)`.
pub async fn insert_once(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    document: mongodb::bson::Document,
    unique: &'static str,
) -> Result<Inserted, StoreError> {
    let key = document.get("requestId").cloned();
    // Tenant documents carry their clinic: the retry lookup names it too (shard-ready).
    let clinic = document.get("clinicId").cloned();
    match collection.insert_one(document).await {
        Ok(_) => Ok(Inserted::New),
        Err(e) if is_duplicate_key(&e) => {
            let existing = match key {
                Some(key) => {
                    let mut filter = mongodb::bson::doc! {"requestId": key};
                    if let Some(clinic) = clinic {
                        filter.insert("clinicId", clinic);
                    }
                    collection.find_one(filter).await.map_err(translate)?
                }
                None => None,
            };
            existing
                .map(Inserted::Retry)
                .ok_or(StoreError::Duplicate(unique))
        }
        Err(e) => Err(translate_unique(e, unique)),
    }
}

/// Creates indexes, `(collection, index)`, at start-up. Creating an index that exists
/// with the same keys and options is a no-op, so this runs at every start.
pub async fn create_indexes(
    database: &Database,
    indexes: Vec<(&str, mongodb::IndexModel)>,
) -> Result<(), StoreError> {
    for (collection, index) in indexes {
        database
            .collection::<mongodb::bson::Document>(collection)
            .create_index(index)
            .await
            .map_err(translate)?;
    }
    Ok(())
}

/// Drops indexes a service no longer wants, `(collection, index name)`; an index (or a
/// collection) that is not there is fine: this runs at every start.
pub async fn drop_indexes(database: &Database, indexes: &[(&str, &str)]) -> Result<(), StoreError> {
    for (collection, name) in indexes {
        let collection = database.collection::<mongodb::bson::Document>(collection);
        let existing = match collection.list_index_names().await {
            Ok(names) => names,
            // No collection yet: nothing to drop.
            Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == 26) => continue,
            Err(e) => return Err(translate(e)),
        };
        if existing.iter().any(|n| n == name) {
            collection.drop_index(*name).await.map_err(translate)?;
        }
    }
    Ok(())
}

/// One page of a list: the documents matching `filter` with `_id` after `page.after`, in
/// `_id` (= creation) order, at most `page.fetch_limit()`, read with the store's list
/// read preference (lists may come from a secondary; decisions never do).
pub async fn list_page(
    store: &MongoStore,
    collection: &mongodb::Collection<mongodb::bson::Document>,
    mut filter: mongodb::bson::Document,
    page: &crate::paging::PageRequest,
) -> Result<Vec<mongodb::bson::Document>, StoreError> {
    if let Some(after) = &page.after {
        filter.insert("_id", mongodb::bson::doc! {"$gt": after});
    }
    let limit = i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX);
    let mut cursor = collection
        .find(filter)
        .sort(mongodb::bson::doc! {"_id": 1})
        .limit(limit)
        .selection_criteria(store.list_reads.clone())
        .await
        .map_err(translate)?;
    let mut documents = Vec::new();
    while cursor.advance().await.map_err(translate)? {
        documents.push(cursor.deserialize_current().map_err(translate)?);
    }
    Ok(documents)
}

/// Reads a boolean that may have been stored as an integer: some MongoDB wire-compatible
/// servers (nx-27017, used in CI) hand `$set` booleans back as 1/0.
pub fn get_bool(doc: &mongodb::bson::Document, key: &str) -> bool {
    use mongodb::bson::Bson;
    match doc.get(key) {
        Some(Bson::Boolean(b)) => *b,
        Some(Bson::Int32(n)) => *n != 0,
        Some(Bson::Int64(n)) => *n != 0,
        _ => false,
    }
}

/// Reads an integer whatever width it was stored with.
pub fn get_i64(doc: &mongodb::bson::Document, key: &str) -> i64 {
    use mongodb::bson::Bson;
    match doc.get(key) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// Reads a string field, empty if absent.
pub fn get_string(doc: &mongodb::bson::Document, key: &str) -> String {
    doc.get_str(key).map(str::to_owned).unwrap_or_default()
}

/// Reads a date field as a timestamp, the epoch if absent.
pub fn get_time(doc: &mongodb::bson::Document, key: &str) -> jiff::Timestamp {
    let millis = doc
        .get_datetime(key)
        .map(|d| d.timestamp_millis())
        .unwrap_or(0);
    crate::time::from_millis(millis)
}

pub fn to_bson_time(ts: jiff::Timestamp) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(crate::time::to_millis(ts))
}

/// Matches the document `id` if it is not locked at `now`.
///
/// The collection of sign-in counters (see [`crate::lockout`]).
pub const SIGN_IN_LOCKS: &str = "signInLocks";

/// The indexes of [`SIGN_IN_LOCKS`]: by account (an admin's unlock), and a TTL on
/// `touchedAt` that forgets counters nobody touched for [`crate::lockout::FORGET_AFTER`]
/// (longer than the longest lock; clean-up only, every read compares times itself).
pub fn sign_in_lock_indexes() -> Vec<(&'static str, mongodb::IndexModel)> {
    use mongodb::{IndexModel, bson::doc, options::IndexOptions};
    vec![
        (
            SIGN_IN_LOCKS,
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "account": 1})
                .build(),
        ),
        (
            SIGN_IN_LOCKS,
            IndexModel::builder()
                .keys(doc! {"touchedAt": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(crate::lockout::FORGET_AFTER)
                        .build(),
                )
                .build(),
        ),
    ]
}

/// The lock end is kept as epoch milliseconds rather than a BSON date: the comparison is
/// the same on real MongoDB, and nx-27017 reads a date written by `$set` back as a string.
fn unlocked_key(clinic: &str, key: &str, now: jiff::Timestamp) -> mongodb::bson::Document {
    mongodb::bson::doc! {
        "_id": key,
        "clinicId": clinic,
        "$or": [
            {"lockedUntilMs": mongodb::bson::Bson::Null},
            {"lockedUntilMs": {"$lte": now.as_millisecond()}},
        ],
    }
}

/// Counts a sign-in attempt of `account` (in `clinic`) from `client` before its
/// password is checked: for each scope of [`crate::lockout::scopes`], one atomic
/// update that only matches an unlocked counter (creating it if missing). `Locked` if
/// a scope is locked or this attempt is one too many for it (which locks it).
pub async fn begin_sign_in(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    account: &str,
    clinic: &str,
    client: &str,
    now: jiff::Timestamp,
    policy: &crate::lockout::LockPolicy,
) -> Result<crate::lockout::Attempt, StoreError> {
    use crate::lockout::Attempt;
    use mongodb::bson::doc;
    for scope in crate::lockout::scopes(account, client, policy) {
        let Some(counter) = count_attempt(collection, &scope.key, account, clinic, now).await?
        else {
            return Ok(Attempt::Locked);
        };
        if get_i64(&counter, "failedLogins") <= scope.threshold {
            continue;
        }
        // One too many: lock. Only one racing attempt wins the lock (the filter requires
        // the counter to be unlocked still), so the lock count grows once per lock.
        let until = scope.lock_end(policy, get_i64(&counter, "lockCount"), now);
        collection
            .update_one(
                unlocked_key(clinic, &scope.key, now),
                doc! {
                    "$set": {"failedLogins": 0_i64, "lockedUntilMs": until.as_millisecond()},
                    "$inc": {"lockCount": 1},
                },
            )
            .await
            .map_err(translate)?;
        return Ok(Attempt::Locked);
    }
    Ok(Attempt::Proceed)
}

/// `$inc` of the counter `key` if it is unlocked, creating it if missing; `None` if it
/// is locked. A locked counter does not match the filter, so the upsert's insert hits
/// the unique `_id` and fails: that, like no match, means locked. Two first attempts
/// racing to create the counter also meet on `_id`; the loser counts on the winner's.
async fn count_attempt(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    key: &str,
    account: &str,
    clinic: &str,
    now: jiff::Timestamp,
) -> Result<Option<mongodb::bson::Document>, StoreError> {
    use mongodb::{bson::doc, options::ReturnDocument};
    let touched = mongodb::bson::DateTime::from_millis(now.as_millisecond());
    // `account` and `clinicId` never change for a key: `$set` writes them on insert and
    // rewrites the same values after. (Not `$setOnInsert`: nx-27017 does not apply it;
    // see NX_27017_GAPS.) A missing `lockCount` reads as 0.
    let update = doc! {
        "$inc": {"failedLogins": 1_i64},
        "$set": {"touchedAt": touched, "account": account, "clinicId": clinic},
    };
    let first = collection
        .find_one_and_update(unlocked_key(clinic, key, now), update.clone())
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await;
    match first {
        Ok(counter) => Ok(counter),
        Err(e) if is_duplicate_key(&e) => collection
            .find_one_and_update(unlocked_key(clinic, key, now), update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(translate),
        Err(e) => Err(translate(e)),
    }
}

/// `account` signed in from `client`: that address's counter and the account-wide one
/// start again (other addresses' locks stay).
pub async fn sign_in_succeeded(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    account: &str,
    clinic: &str,
    client: &str,
) -> Result<(), StoreError> {
    use mongodb::bson::doc;
    let keys = crate::lockout::cleared_by_success(account, client);
    collection
        .delete_many(doc! {"clinicId": clinic, "account": account, "_id": {"$in": keys}})
        .await
        .map_err(translate)?;
    Ok(())
}

/// An admin unlocked `account`: every counter of it, from every address, is gone.
pub async fn unlock_sign_in(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    account: &str,
    clinic: &str,
) -> Result<(), StoreError> {
    use mongodb::bson::doc;
    collection
        .delete_many(doc! {"clinicId": clinic, "account": account})
        .await
        .map_err(translate)?;
    Ok(())
}
