//! Helpers for the store conformance suites of every service.
//!
//! MongoDB tests run against the server at `TOPSMILE_TEST_MONGODB_URI`, each in its own
//! database. Without the variable they are skipped with a message, except under
//! `CI=true`, where a missing URI fails the test: CI must never silently skip half of
//! the suite.

use secrecy::SecretString;

pub const MONGODB_URI_ENV: &str = "TOPSMILE_TEST_MONGODB_URI";

/// The MongoDB URI for tests, or `None` (after saying so) when the MongoDB half is skipped.
///
/// # Panics
/// Under `CI=true` without a URI, so that CI fails instead of skipping.
pub fn mongodb_uri(test: &str) -> Option<SecretString> {
    match std::env::var(MONGODB_URI_ENV) {
        Ok(uri) if !uri.is_empty() => Some(SecretString::from(uri)),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !in_ci,
                "{MONGODB_URI_ENV} is not set under CI=true: the MongoDB tests must run"
            );
            eprintln!("skipping MongoDB half of {test}: {MONGODB_URI_ENV} is not set");
            None
        }
    }
}

/// A database name no other test uses.
pub fn unique_database(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Where nx-27017 (the MongoDB wire-protocol stand-in CI runs on) differs from MongoDB,
/// as seen by our tests. Tests that meet one of these say so by naming it; against a
/// real MongoDB (`TOPSMILE_TEST_MONGODB_URI` pointing at one) they check it in full.
pub const NX_27017_GAPS: &[&str] = &[
    "partialFilterExpression is ignored: a partial unique index acts as a full unique index",
    "index collation is ignored: case-insensitive uniqueness needs a normalised field",
    "index names given at creation are replaced by generated ones (idx_<coll>_<fields>)",
    "index key direction is reported as ascending (-1 reads back as 1)",
    "a boolean written by $set reads back as the integer 1",
    "a date written by $set reads back as a string (times that updates change are kept as epoch milliseconds)",
    "a sub-document appended with $push reads back as a JSON string",
    "range operators on array fields match nothing unless wrapped in $elemMatch",
    "hello reports no replica set name",
    "explain reports SQLite's plan; finds scan the collection whatever the indexes",
    "a compound index that includes _id makes every later insert fail (JSON path error)",
    "$setOnInsert is not applied by an upsert (fields that never change are written with $set)",
];

/// Whether `database` is served by nx-27017 (its `buildInfo` names the process), so a
/// test that meets one of [`NX_27017_GAPS`] can check the stand-in's behaviour there
/// and MongoDB's everywhere else.
pub async fn is_nx_27017(database: &mongodb::Database) -> bool {
    database
        .run_command(mongodb::bson::doc! {"buildInfo": 1})
        .await
        .ok()
        .and_then(|info| info.get_str("process").ok().map(|p| p == "nx_27017"))
        .unwrap_or(false)
}

/// Asserts that every `(table, index)` exists in the SQLite database.
///
/// # Panics
/// When one is missing (this is a test helper).
pub async fn assert_sqlite_indexes(
    db: &crate::store::sqlite::SqliteDb,
    wanted: &'static [(&'static str, &'static str)],
) {
    let found = db
        .read(move |conn| {
            let mut names = Vec::new();
            for (table, _) in wanted {
                let mut stmt = conn
                    .prepare(&format!("PRAGMA index_list({table})"))
                    .map_err(crate::store::sqlite::translate)?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(1))
                    .map_err(crate::store::sqlite::translate)?;
                for name in rows {
                    names.push(name.map_err(crate::store::sqlite::translate)?);
                }
            }
            Ok(names)
        })
        .await
        .expect("list SQLite indexes");
    for (_, index) in wanted {
        assert!(
            found.iter().any(|n| n == index),
            "missing SQLite index {index}; found {found:?}"
        );
    }
}

/// Asserts that every index exists on its MongoDB collection. Compared by key fields in
/// order, not direction: nx-27017 reports every key as ascending (see [`NX_27017_GAPS`]).
///
/// # Panics
/// When one is missing (this is a test helper).
pub async fn assert_mongo_indexes(
    database: &mongodb::Database,
    wanted: Vec<(&str, mongodb::IndexModel)>,
) {
    let fields = |keys: &mongodb::bson::Document| keys.keys().cloned().collect::<Vec<String>>();
    for (collection, index) in wanted {
        let mut cursor = database
            .collection::<mongodb::bson::Document>(collection)
            .list_indexes()
            .await
            .expect("list MongoDB indexes");
        let mut found = Vec::new();
        while cursor.advance().await.expect("read index list") {
            found.push(fields(
                &cursor.deserialize_current().expect("decode index").keys,
            ));
        }
        let wanted = fields(&index.keys);
        assert!(
            found.contains(&wanted),
            "missing index {wanted:?} on {collection}; found {found:?}"
        );
    }
}

/// Asserts that every table read in SQLite's plan of `sql` (with `params`) goes through
/// an index: `SEARCH ... USING INDEX`, never a `SCAN`.
///
/// # Panics
/// When one does not, naming `label` and the plan (this is a test helper).
pub async fn assert_sqlite_plan_uses_indexes(
    db: &crate::store::sqlite::SqliteDb,
    label: &str,
    sql: String,
    params: Vec<rusqlite::types::Value>,
) {
    use crate::store::sqlite::translate;
    let plan: Vec<String> = db
        .read(move |conn| {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .map_err(translate)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params), |r| {
                    r.get::<_, String>(3)
                })
                .map_err(translate)?;
            rows.map(|r| r.map_err(translate)).collect()
        })
        .await
        .expect("explain the query");
    let reads: Vec<&String> = plan
        .iter()
        .filter(|d| d.starts_with("SCAN") || d.starts_with("SEARCH"))
        .collect();
    assert!(!reads.is_empty(), "{label}: no plan: {plan:?}");
    for read in reads {
        assert!(
            // An index, or the key of a table stored in key order (WITHOUT ROWID).
            read.starts_with("SEARCH") && (read.contains("INDEX") || read.contains("PRIMARY KEY")),
            "{label}: {read:?} does not use an index; plan {plan:?}"
        );
    }
}

/// Asserts that MongoDB plans a list page (`filter`, `_id` order, 51 rows) of
/// `collection` with an index scan. On nx-27017 only that `explain` answers: see
/// [`NX_27017_GAPS`] ("explain reports SQLite's plan").
///
/// # Panics
/// When the plan has no index scan, naming `label` (this is a test helper).
pub async fn assert_mongo_list_uses_index(
    database: &mongodb::Database,
    collection: &str,
    label: &str,
    mut filter: mongodb::bson::Document,
) {
    filter.insert("_id", mongodb::bson::doc! {"$gt": ""});
    let sort = mongodb::bson::doc! {"_id": 1};
    assert_mongo_find_uses_index(database, collection, label, filter, sort).await;
}

/// Asserts that MongoDB plans `find(filter).sort(sort).limit(51)` on `collection` with
/// an index scan (on nx-27017, only that `explain` answers, as above).
///
/// # Panics
/// When the plan has no index scan, naming `label` (this is a test helper).
pub async fn assert_mongo_find_uses_index(
    database: &mongodb::Database,
    collection: &str,
    label: &str,
    filter: mongodb::bson::Document,
    sort: mongodb::bson::Document,
) {
    use mongodb::bson::{Bson, doc};
    fn index_scans(plan: &Bson, found: &mut Vec<String>) {
        match plan {
            Bson::Document(d) => {
                if d.get_str("stage") == Ok("IXSCAN")
                    && let Ok(name) = d.get_str("indexName")
                {
                    found.push(name.to_owned());
                }
                for (_, v) in d {
                    index_scans(v, found);
                }
            }
            Bson::Array(items) => items.iter().for_each(|i| index_scans(i, found)),
            _ => {}
        }
    }
    let explained = database
        .run_command(doc! {
            "explain": {"find": collection, "filter": filter, "sort": sort, "limit": 51},
            "verbosity": "queryPlanner",
        })
        .await
        .expect("explain the query");
    let winning = explained
        .get_document("queryPlanner")
        .ok()
        .and_then(|q| q.get("winningPlan").cloned())
        .unwrap_or(Bson::Null);
    if is_nx_27017(database).await {
        assert!(winning != Bson::Null, "{label}: explain answered no plan");
        return;
    }
    let mut used = Vec::new();
    index_scans(&winning, &mut used);
    assert!(!used.is_empty(), "{label}: no index scan in {winning:?}");
}
