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
