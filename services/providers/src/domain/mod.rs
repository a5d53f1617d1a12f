//! Providers' domain, pure: no proto, no store, no clock.
//!
//! - [`hours`]: one weekday's wall-clock working hours and their rules;
//! - [`input`]: a provider as a request describes it, and the rules for each field;
//! - [`provider`]: a provider as the store keeps it;
//! - [`schedule`]: a provider's whole schedule (weekly hours, date overrides, time off)
//!   and [`schedule::working_intervals`], the one answer to "when does this provider
//!   work between these two instants", in UTC, exact across DST.

pub mod hours;
pub mod input;
pub mod provider;
pub mod schedule;

pub use hours::{HoursError, Interval, working_day};
pub use input::{ProviderInput, SCHEDULE_FIELDS, UPDATABLE_FIELDS, validate_fields};
pub use provider::{Provider, ProviderFields, ProviderQuery, TimeOff};
pub use schedule::{Schedule, Span, working_intervals};
