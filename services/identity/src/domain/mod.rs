//! Identity's domain: one module per entity, each with its rules as pure functions over
//! plain types (no proto, no store).
//!
//! - [`clinic`]: the tenants, their fields and update masks;
//! - [`user`]: staff accounts, roles and the password policy;
//! - [`mfa`]: the staff second factor (TOTP, recovery codes).

pub mod clinic;
pub mod mfa;
pub mod user;

pub use clinic::{
    Clinic, ClinicFields, ClinicInput, UPDATABLE_FIELDS, apply_mask, time_zone, validate_fields,
};
