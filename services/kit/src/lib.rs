//! What every TopSmile service shares, written once.
//!
//! A service's `main.rs` is a handful of lines on top of this crate: load its [`config`],
//! start [`telemetry`], open its store ([`store`]), and hand its routes to [`server`].
//! Handlers use [`names`] to parse resource names, [`paging`] for list pages and
//! [`error::ApiError`] as the one error type that becomes a `tonic::Status`.

pub mod access;
pub mod address;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod clinics;
pub mod config;
pub mod error;
pub mod files;
pub mod group_commit;
pub mod lockout;
pub mod mask;
pub mod names;
pub mod paging;
pub mod password;
pub mod peers;
pub mod policy;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod signin;
pub mod store;
pub mod telemetry;
/// Helpers for tests (MongoDB stand-in detection, index checks): only with the
/// `testing` feature, which test builds turn on.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod tls;
pub mod validate;

pub use error::{ApiError, FieldViolation};
pub use store::StoreError;
