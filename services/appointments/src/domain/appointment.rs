//! An appointment as the store keeps it, and the rules of its fields.

use jiff::Timestamp;
use topsmile_kit::{FieldViolation, names::ResourceId, validate};
use topsmile_providers::domain::Span;

use super::{
    availability::Hold,
    lifecycle::{Action, Status},
};

/// The most times one appointment keeps in its reschedule history; moving it again
/// after that is FAILED_PRECONDITION (book a new one): the record stays bounded.
pub const MAX_RESCHEDULES: usize = 50;
/// The longest appointment: 8 hours, as a provider's default may be.
pub const MAX_DURATION_SECS: i64 = 8 * 3600;
/// The shortest appointment: 5 minutes.
pub const MIN_DURATION_SECS: i64 = 5 * 60;

/// A booked visit of one patient to one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Appointment {
    pub id: ResourceId,
    pub clinic: ResourceId,
    pub patient: ResourceId,
    pub provider: ResourceId,
    pub start: Timestamp,
    pub end: Timestamp,
    pub appointment_type: String,
    pub notes: String,
    pub status: Status,
    pub cancellation_reason: String,
    /// Earlier times, oldest first.
    pub reschedules: Vec<Reschedule>,
    /// The time this appointment holds while it is active (see `availability`).
    pub hold: Hold,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Bumped by every change; the etag clients send back.
    pub version: i64,
}

/// One earlier time of a rescheduled appointment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reschedule {
    pub previous_start_ms: i64,
    pub previous_end_ms: i64,
    /// Who moved it: a user or patient resource name.
    pub by: String,
    pub at_ms: i64,
    pub reason: String,
}

/// What a booking request asks for, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Booking {
    pub clinic: ResourceId,
    pub patient: ResourceId,
    pub provider: ResourceId,
    pub slot: Span,
    pub appointment_type: String,
    pub notes: String,
    pub hold: Hold,
}

impl Appointment {
    pub fn book(booking: Booking, now: Timestamp) -> Self {
        Self {
            id: ResourceId::generate(),
            clinic: booking.clinic,
            patient: booking.patient,
            provider: booking.provider,
            start: booking.slot.start,
            end: booking.slot.end,
            appointment_type: booking.appointment_type,
            notes: booking.notes,
            status: Status::Scheduled,
            cancellation_reason: String::new(),
            reschedules: Vec::new(),
            hold: booking.hold,
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    /// `clinics/{clinic}/appointments/{appointment}`.
    pub fn name(&self) -> String {
        format!("clinics/{}/appointments/{}", self.clinic, self.id)
    }

    pub fn patient_name(&self) -> String {
        format!("clinics/{}/patients/{}", self.clinic, self.patient)
    }

    pub fn provider_name(&self) -> String {
        format!("clinics/{}/providers/{}", self.clinic, self.provider)
    }

    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }

    pub fn slot(&self) -> Span {
        Span::new(self.start, self.end)
    }

    /// The next version after `action`: FAILED_PRECONDITION (naming the current state)
    /// when the lifecycle does not allow it from here.
    pub fn after(&self, action: Action, now: Timestamp) -> Result<Self, Refused> {
        let status = self.status.after(action).ok_or(Refused {
            current: self.status,
            action,
        })?;
        Ok(Self {
            status,
            update_time: now,
            version: self.version + 1,
            ..self.clone()
        })
    }

    /// Moved to `slot` holding `hold`, its old time appended to the history.
    pub fn moved(
        &self,
        slot: Span,
        hold: Hold,
        by: &str,
        reason: String,
        now: Timestamp,
    ) -> Result<Self, Refused> {
        let mut next = self.after(Action::Reschedule, now)?;
        next.reschedules.push(Reschedule {
            previous_start_ms: self.start.as_millisecond(),
            previous_end_ms: self.end.as_millisecond(),
            by: by.to_owned(),
            at_ms: now.as_millisecond(),
            reason,
        });
        next.start = slot.start;
        next.end = slot.end;
        // A moved appointment keeps its seat of the patient's quota.
        next.hold = Hold {
            quota: self.hold.quota,
            ..hold
        };
        Ok(next)
    }
}

/// A lifecycle step the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub current: Status,
    pub action: Action,
}

/// The free-text fields of a booking: kind of visit and notes, bounded.
pub fn texts(
    appointment_type: &str,
    notes: &str,
    violations: &mut Vec<FieldViolation>,
) -> (String, String) {
    let kind = validate::optional_text("appointment.appointment_type", appointment_type, 100)
        .map_err(|v| violations.push(v))
        .unwrap_or_default();
    let notes = validate::optional_text("appointment.notes", notes, 2000)
        .map_err(|v| violations.push(v))
        .unwrap_or_default();
    (kind, notes)
}

/// A requested length in seconds: whole minutes, 5 minutes to 8 hours.
pub fn duration(field: &str, seconds: i64, nanos: i32) -> Result<i64, FieldViolation> {
    if nanos != 0 || seconds % 60 != 0 {
        return Err(FieldViolation::new(field, "must be whole minutes"));
    }
    if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&seconds) {
        return Err(FieldViolation::new(
            field,
            "must be between 5 minutes and 8 hours",
        ));
    }
    Ok(seconds)
}
