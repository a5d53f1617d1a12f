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
    "a sub-document appended with $push reads back as a JSON string",
    "range operators on array fields match nothing unless wrapped in $elemMatch",
    "hello reports no replica set name",
];
