//! The patients service. It owns the `patients`, `medicalHistory` and `auditEvents`
//! collections.
//!
//! The library is what the `topsmile-patients` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`], then [`routes`] behind [`guard`].
//!
//! Served: `PatientService`, `MedicalHistoryService`, `AuditService`, and
//! `PatientInternalService` (portal credential checks for identity; never exposed).

pub mod api;
pub mod domain;
pub mod store;

pub use api::{guard, routes};
pub use store::{AuditLog, PatientStore, Stores, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = api::SERVED;
