//! Appointments' domain, pure: no proto, no store, no clock.
//!
//! - [`lifecycle`]: the states of an appointment and the steps between them;
//! - [`appointment`]: an appointment as the store keeps it, and its field rules;
//! - [`availability`]: the one availability function, shared by finding and booking.

pub mod appointment;
pub mod availability;
pub mod lifecycle;

pub use appointment::{Appointment, Booking, Refused, Reschedule};
pub use availability::{
    Buffers, Granules, Hold, Limits, NotOffered, Question, free_slots, is_offered, why_not,
};
pub use lifecycle::{Action, Status};
