//! The appointments service's store: appointments, and the claims on provider and
//! patient time that keep any two active appointments from overlapping.
//!
//! Each adapter ([`embedded`], [`mongo`]) provides the plain operations of [`Records`]
//! (insert, get, compare-and-swap replace, list; insert, read and conditionally change
//! claims); [`reserve::Appointments`] builds booking, rescheduling and the lifecycle on
//! top of them once, for both. Both pass one conformance suite (`tests/conformance.rs`).

pub mod embedded;
pub mod mongo;
pub mod reserve;

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    store::{Backend, StoreChoice},
};
use topsmile_providers::domain::Span;

use crate::domain::{Appointment, Hold, Status};

pub use reserve::Appointments;

/// An appointment as stored, with the state of its reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub appointment: Appointment,
    /// False while a booking is still claiming its time: such a record is not listed
    /// and holds nothing; it becomes the appointment when the booking commits.
    pub booked: bool,
    /// The token of the claims of the time the appointment holds now (empty before
    /// the booking commits).
    pub hold_token: String,
    /// A time being claimed: a booking's first time, or a reschedule's next one.
    pub proposal: Option<Proposal>,
    /// The booking's idempotency key: `{clinic}/{request_id}`, or the id itself.
    pub request_key: String,
    /// What the booking asked for, so a reused request id with another body is seen.
    pub fingerprint: String,
}

/// A time being claimed, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub token: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub hold: Hold,
    pub since: Timestamp,
}

/// Whose time a claim holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    Provider,
    Patient,
}

/// One granule of one provider's or patient's time, held for one appointment. The
/// store keeps at most one claim per (clinic, resource, granule): that unique key is
/// what makes two overlapping appointments impossible, across every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub clinic: ResourceId,
    /// `provider/{id}`, `patient/{id}` or `quota/{patient}`.
    pub resource: String,
    pub granule: i64,
    pub appointment: ResourceId,
    /// The reservation (hold or proposal) the claim belongs to.
    pub token: String,
    /// The hold it belonged to before a reschedule took it over, if one did.
    pub prev: String,
}

/// `provider/{id}` or `patient/{id}`: the claim resource of a holder.
pub fn claim_resource(holder: Holder, id: &ResourceId) -> String {
    match holder {
        Holder::Provider => format!("provider/{id}"),
        Holder::Patient => format!("patient/{id}"),
    }
}

/// What the claims of a patient's self-service quota are on: `quota/{patient}`, one
/// claim per seat (the seat number is the claim's granule).
pub const QUOTA_PREFIX: &str = "quota/";

/// The quota claim resource of `patient`.
pub fn quota_resource(patient: &ResourceId) -> String {
    format!("{QUOTA_PREFIX}{patient}")
}

/// What a list selects, always within one clinic, by start time then id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppointmentQuery {
    /// Appointments starting at or after this instant.
    pub from: Option<Timestamp>,
    /// Appointments starting before this instant.
    pub to: Option<Timestamp>,
    pub provider: Option<ResourceId>,
    pub patient: Option<ResourceId>,
    /// Empty: every state.
    pub statuses: Vec<Status>,
}

/// The sort key of a listed appointment, for page tokens: start (ms, zero-padded so
/// that text order is time order) and id.
pub fn page_key(a: &Appointment) -> String {
    format!("{:020}/{}", a.start.as_millisecond(), a.id)
}

/// A page key read back: `(start ms, id)`.
pub fn parse_page_key(key: &str) -> Option<(i64, String)> {
    let (ms, id) = key.split_once('/')?;
    Some((ms.parse().ok()?, id.to_owned()))
}

/// A record in the two parts both adapters store: the indexed columns (a table's
/// columns, a document's top-level fields) and the rest, one serialised body.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub id: String,
    pub clinic: String,
    pub patient: String,
    pub provider: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub status: String,
    pub booked: bool,
    pub version: i64,
    pub request_key: String,
}

/// Everything of a record that no query selects on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Body {
    pub appointment_type: String,
    pub notes: String,
    pub cancellation_reason: String,
    pub reschedules: Vec<crate::domain::Reschedule>,
    pub hold: Hold,
    pub hold_token: String,
    pub proposal: Option<ProposalBody>,
    pub fingerprint: String,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProposalBody {
    pub token: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub hold: Hold,
    pub since_ms: i64,
}

impl Record {
    /// The record split for storing.
    pub fn split(&self) -> (Columns, Body) {
        let a = &self.appointment;
        let ms = |t: Timestamp| t.as_millisecond();
        (
            Columns {
                id: a.id.to_string(),
                clinic: a.clinic.to_string(),
                patient: a.patient.to_string(),
                provider: a.provider.to_string(),
                start_ms: ms(a.start),
                end_ms: ms(a.end),
                status: a.status.as_str().to_owned(),
                booked: self.booked,
                version: a.version,
                request_key: self.request_key.clone(),
            },
            Body {
                appointment_type: a.appointment_type.clone(),
                notes: a.notes.clone(),
                cancellation_reason: a.cancellation_reason.clone(),
                reschedules: a.reschedules.clone(),
                hold: a.hold,
                hold_token: self.hold_token.clone(),
                proposal: self.proposal.as_ref().map(|p| ProposalBody {
                    token: p.token.clone(),
                    start_ms: ms(p.start),
                    end_ms: ms(p.end),
                    hold: p.hold,
                    since_ms: ms(p.since),
                }),
                fingerprint: self.fingerprint.clone(),
                create_time_ms: ms(a.create_time),
                update_time_ms: ms(a.update_time),
            },
        )
    }

    /// The record from its stored parts.
    pub fn join(c: Columns, b: Body) -> Result<Self, StoreError> {
        let status = Status::parse(&c.status).ok_or_else(|| {
            StoreError::backend(format!("appointment {} has an unknown status", c.id))
        })?;
        let t = topsmile_kit::time::from_millis;
        Ok(Self {
            appointment: Appointment {
                id: ResourceId::from_stored(c.id),
                clinic: ResourceId::from_stored(c.clinic),
                patient: ResourceId::from_stored(c.patient),
                provider: ResourceId::from_stored(c.provider),
                start: t(c.start_ms),
                end: t(c.end_ms),
                appointment_type: b.appointment_type,
                notes: b.notes,
                status,
                cancellation_reason: b.cancellation_reason,
                reschedules: b.reschedules,
                hold: b.hold,
                create_time: t(b.create_time_ms),
                update_time: t(b.update_time_ms),
                version: c.version,
            },
            booked: c.booked,
            hold_token: b.hold_token,
            proposal: b.proposal.map(|p| Proposal {
                token: p.token,
                start: t(p.start_ms),
                end: t(p.end_ms),
                hold: p.hold,
                since: t(p.since_ms),
            }),
            request_key: c.request_key,
            fingerprint: b.fingerprint,
        })
    }
}

/// The plain operations each adapter provides. Every one names the clinic.
#[async_trait]
pub trait Records: Send + Sync + 'static {
    /// Inserts `record`; if another record of the clinic has its request key, inserts
    /// nothing and returns that one.
    async fn insert(&self, record: &Record) -> Result<Option<Record>, StoreError>;

    /// The record of `clinic` with `request_key`, booked or not. Read from the primary.
    async fn by_request(
        &self,
        clinic: &ResourceId,
        request_key: &str,
    ) -> Result<Option<Record>, StoreError>;

    /// The record `id` of `clinic`, booked or not. Read from the primary.
    async fn get(&self, clinic: &ResourceId, id: &ResourceId)
    -> Result<Option<Record>, StoreError>;

    /// Replaces the stored record with `next` if its version is still `expected`;
    /// false if it is not (or the record is gone).
    async fn replace(&self, next: &Record, expected: i64) -> Result<bool, StoreError>;

    /// Removes a record that was never booked, if its version is still `expected`.
    async fn remove_unbooked(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
        expected: i64,
    ) -> Result<bool, StoreError>;

    /// Up to `page.fetch_limit()` booked appointments matching `query`, by start time
    /// then id, after `page.after` (a [`page_key`]).
    async fn list(
        &self,
        clinic: &ResourceId,
        query: &AppointmentQuery,
        page: &PageRequest,
    ) -> Result<Vec<Appointment>, StoreError>;

    /// The booked, active appointments of one provider or patient of `clinic` that
    /// start within `starts` (callers widen it by the longest appointment). Read from
    /// the primary: booking decides on it.
    async fn holding(
        &self,
        clinic: &ResourceId,
        holder: Holder,
        id: &ResourceId,
        starts: Span,
    ) -> Result<Vec<Appointment>, StoreError>;

    /// Inserts `claims`; false if a unique key was taken (some of them may be in: the
    /// caller reads them back).
    async fn insert_claims(&self, claims: &[Claim]) -> Result<bool, StoreError>;

    /// The claims on `resource`'s granules `[first, end)`.
    async fn claims(
        &self,
        clinic: &ResourceId,
        resource: &str,
        first: i64,
        end: i64,
    ) -> Result<Vec<Claim>, StoreError>;

    /// Sets the token and prev of the claim `seen`, if it is still exactly as seen.
    async fn retoken_claim(
        &self,
        seen: &Claim,
        token: &str,
        prev: &str,
    ) -> Result<bool, StoreError>;

    /// Deletes the claim `seen`, if it is still exactly as seen.
    async fn delete_claim(&self, seen: &Claim) -> Result<bool, StoreError>;

    /// The claims of `appointment` with `token` (every claim of it when `token` is
    /// `None`): the ones whose prev is `restore` get `restore` back as their token,
    /// the others are deleted.
    async fn release_claims(
        &self,
        clinic: &ResourceId,
        appointment: &ResourceId,
        token: Option<&str>,
        restore: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Counts one self-service booking of `patient` on `day` (the clinic's date,
    /// `YYYY-MM-DD`), in one conditional write, if fewer than `limit` were counted;
    /// returns whether it did. Of racing counters at most `limit` get true. A count
    /// is kept for two days after `day` (`now` dates it), then dropped.
    async fn count_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
        limit: i64,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Gives one counted booking back (it did not happen).
    async fn uncount_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
    ) -> Result<(), StoreError>;
}

/// How long a day's count of self-service bookings is kept: past any time zone's day.
pub const BOOKING_COUNT_KEPT: jiff::SignedDuration = jiff::SignedDuration::from_hours(72);

/// Opens the store that configuration chose, creating tables and indexes.
pub async fn open(choice: &StoreChoice) -> Result<Arc<Appointments>, StoreError> {
    let records: Arc<dyn Records> = match choice.connect("topsmile-appointments").await? {
        Backend::Embedded(data_dir) => {
            Arc::new(embedded::EmbeddedAppointments::open(data_dir).await?)
        }
        Backend::Mongo(store) => Arc::new(mongo::MongoAppointments::open(store).await?),
    };
    Ok(Arc::new(Appointments::new(records)))
}
