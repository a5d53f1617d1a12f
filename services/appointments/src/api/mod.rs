//! gRPC handlers of the appointments service: proto in, caller and tenancy checks,
//! the clinic, patient and provider asked of their services, the availability function,
//! the store's reservation, an audit event, proto out.
//!
//! Who: clinic staff per the contract's policy. A patient (portal token) books,
//! confirms, reschedules and cancels only their own appointments, within the clinic's
//! booking rules (minimum notice, horizon, change cut-off); they list and get only
//! their own, and another patient's id is NOT_FOUND to them. Staff book from now on and
//! as far ahead as they like, but on the same step, in the same working hours, never
//! over another appointment.
//!
//! Every call is audited in the clinic's trail (appointments are health information):
//! a read once with its outcome, a write announced (`PENDING`) before the store is
//! touched and its outcome after. The one exception is a search for free times that
//! involves no patient (a provider's free times are not health information).

pub mod deps;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, server::NamedService, service::Routes};
use topsmile_kit::{
    ApiError, FieldViolation, StoreError,
    clinics::ClinicFacts,
    config::ServerLimits,
    names::{ClinicName, ClinicScopedName, ResourceId},
    paging::PageRequest,
    time::{self, Clock},
    validate,
};
use topsmile_proto::topsmile::appointments::v1::{
    self as pb,
    appointment_service_server::{AppointmentService, AppointmentServiceServer},
};
use topsmile_providers::{
    api::Bookable,
    domain::{Span, working_intervals},
};

use crate::{
    domain::{
        Action, Appointment, Booking, Buffers, Hold, Limits, NotOffered, Question, Refused,
        Status as Lifecycle, appointment, free_slots, why_not,
    },
    store::{AppointmentQuery, Appointments, Holder, page_key},
};
pub use deps::Dependencies;
use topsmile_kit::access::Actor;

/// The gRPC services mounted by [`routes`].
pub const SERVED: &[&str] = &[AppointmentServiceServer::<AppointmentApi>::NAME];

/// The longest FindAvailableSlots window.
pub const MAX_WINDOW: SignedDuration = SignedDuration::from_hours(31 * 24);
/// The most slots one FindAvailableSlots answer holds: the earliest ones.
pub const MAX_SLOTS: usize = 5000;
/// How far ahead staff may book (patients: the clinic's horizon).
pub const STAFF_HORIZON_SECS: i64 = 2 * 366 * 86_400;

/// `AppointmentService` on `store`, asking `deps`, with `clock` for "now".
pub fn routes(
    store: Arc<Appointments>,
    deps: Dependencies,
    clock: Arc<dyn Clock>,
    limits: &ServerLimits,
) -> Routes {
    let max = limits.max_message_bytes;
    Routes::new(
        AppointmentServiceServer::new(AppointmentApi {
            store,
            deps,
            clock,
            max_answer_bytes: max.saturating_sub(1024),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    )
}

pub struct AppointmentApi {
    store: Arc<Appointments>,
    deps: Dependencies,
    clock: Arc<dyn Clock>,
    /// The largest answer to encode (the message limit, less room for the envelope).
    max_answer_bytes: usize,
}

/// The patient a portal token is, if the caller is one.
fn patient_self(actor: &Actor) -> Option<ResourceId> {
    (actor.is_patient())
        .then(|| ClinicScopedName::parse("caller", "patients", actor.caller.subject()).ok())
        .flatten()
        .map(|n| n.id)
}

/// FAILED_PRECONDITION `PATIENT_LIMIT`: a portal patient's own bookings are capped.
fn patient_limit(message: String) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "PATIENT_LIMIT",
        message,
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Duplicate("time") => ApiError::AlreadyExists("overlapping appointment"),
        // A reschedule whose seat was taken meanwhile (only after its visit ended).
        StoreError::Duplicate("quota") => {
            patient_limit("the patient's quota of appointments to come is full".into())
        }
        StoreError::Duplicate("request_id") => ApiError::invalid(
            "request_id",
            "was used for a different booking: use a new request id for a new booking",
        ),
        other => other.into(),
    }
}

fn wrong_state(refused: Refused) -> ApiError {
    ApiError::WrongState {
        current: proto_status(refused.current).as_str_name(),
        message: format!(
            "an appointment that is {} cannot be {}",
            refused.current.as_str().replace('_', " "),
            match refused.action {
                Action::Confirm => "confirmed",
                Action::CheckIn => "checked in",
                Action::Start => "started",
                Action::Complete => "completed",
                Action::Cancel => "cancelled",
                Action::MarkNoShow => "marked a no-show",
                Action::Reschedule => "rescheduled",
            }
        ),
    }
}

fn not_offered(why: NotOffered, step_secs: i64) -> ApiError {
    let refuse = |reason: &'static str, message: &str| ApiError::FailedPrecondition {
        reason,
        message: message.to_owned(),
    };
    match why {
        NotOffered::TooSoon => refuse(
            "TOO_SOON",
            "the time is in the past or within the clinic's minimum notice",
        ),
        NotOffered::TooFar => refuse(
            "TOO_FAR_AHEAD",
            "the time is beyond the clinic's booking horizon",
        ),
        NotOffered::OffStep => ApiError::invalid(
            "start_time",
            format!(
                "must be on the clinic's {}-minute step (from local midnight)",
                step_secs / 60
            ),
        ),
        NotOffered::OutsideHours => refuse(
            "OUTSIDE_WORKING_HOURS",
            "the provider does not work for the whole of that time",
        ),
        NotOffered::Taken => ApiError::AlreadyExists("overlapping appointment"),
    }
}

/// The fingerprint of what a booking asked for: the same request id must come back
/// with the same body.
fn fingerprint(req: &pb::BookAppointmentRequest) -> String {
    let a = req.appointment.clone().unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [
        req.parent.as_str(),
        &a.patient,
        &a.provider,
        &a.start_time
            .map(|t| format!("{}.{}", t.seconds, t.nanos))
            .unwrap_or_default(),
        &a.duration
            .map(|d| format!("{}.{}", d.seconds, d.nanos))
            .unwrap_or_default(),
        &a.appointment_type,
        &a.notes,
    ] {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn zone_of(facts: &ClinicFacts) -> Result<TimeZone, ApiError> {
    TimeZone::get(&facts.time_zone)
        .map_err(|_| ApiError::Internal(format!("clinic zone {} is unknown", facts.time_zone)))
}

fn limits(actor: &Actor, facts: &ClinicFacts) -> Limits {
    let rules = facts.booking;
    if actor.is_patient() {
        Limits {
            notice_secs: rules.minimum_notice_secs,
            horizon_secs: rules.booking_horizon_secs,
            step_secs: rules.slot_step_secs,
        }
    } else {
        Limits {
            notice_secs: 0,
            horizon_secs: STAFF_HORIZON_SECS,
            step_secs: rules.slot_step_secs,
        }
    }
}

fn buffers(provider: &Bookable) -> Buffers {
    Buffers {
        before_secs: provider.buffer_before_secs,
        after_secs: provider.buffer_after_secs,
    }
}

fn span_of(start: Timestamp, secs: i64) -> Result<Span, ApiError> {
    let end = start
        .checked_add(SignedDuration::from_secs(secs))
        .map_err(|_| ApiError::invalid("start_time", "is out of range"))?;
    Ok(Span::new(start, end))
}

/// A duration field: whole minutes, 5 minutes to 8 hours; `None` when unset.
fn duration_field(
    field: &str,
    d: Option<prost_types::Duration>,
    violations: &mut Vec<FieldViolation>,
) -> Option<i64> {
    let d = d?;
    appointment::duration(field, d.seconds, d.nanos)
        .map_err(|v| violations.push(v))
        .ok()
}

/// A required timestamp field.
fn time_field(
    field: &str,
    t: Option<&prost_types::Timestamp>,
    violations: &mut Vec<FieldViolation>,
) -> Option<Timestamp> {
    match t {
        None => {
            violations.push(FieldViolation::new(field, "is required"));
            None
        }
        Some(t) => time::from_proto(field, t)
            .map_err(|v| violations.push(v))
            .ok(),
    }
}

/// A name of the clinic's `collection` (`patients`, `providers`), in `field`.
fn member(
    field: &str,
    collection: &'static str,
    value: &str,
    clinic: &ResourceId,
    violations: &mut Vec<FieldViolation>,
) -> Option<ResourceId> {
    match ClinicScopedName::parse(field, collection, value) {
        Ok(name) if &name.clinic == clinic => Some(name.id),
        Ok(_) => {
            violations.push(FieldViolation::new(field, "must be of the same clinic"));
            None
        }
        Err(v) => {
            violations.push(v);
            None
        }
    }
}

impl AppointmentApi {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The named appointment, for `actor`. Another clinic's name is PERMISSION_DENIED
    /// before anything is read; to a patient, anyone else's appointment is NOT_FOUND.
    async fn load(&self, actor: &Actor, field: &str, name: &str) -> Result<Appointment, ApiError> {
        let name = ClinicScopedName::parse(field, "appointments", name)?;
        actor.caller.check_clinic(name.clinic.as_str())?;
        let found = self
            .store
            .get(&name.clinic, &name.id)
            .await?
            .filter(|a| a.clinic == name.clinic)
            .ok_or(ApiError::NotFound("appointment"))?;
        if actor.is_patient() && patient_self(actor) != Some(found.patient.clone()) {
            return Err(ApiError::NotFound("appointment"));
        }
        Ok(found)
    }

    /// The provider a booking names, active, with its schedule.
    async fn provider(
        &self,
        actor: &Actor,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Bookable, ApiError> {
        let found = match self.deps.providers(actor, clinic, Some(id)).await {
            Err(ApiError::NotFound(_)) => {
                return Err(ApiError::invalid(
                    "appointment.provider",
                    "is not a provider of this clinic",
                ));
            }
            other => other?,
        };
        let provider = found
            .into_iter()
            .next()
            .ok_or(ApiError::NotFound("provider"))?;
        if !provider.is_active {
            return Err(ApiError::FailedPrecondition {
                reason: "PROVIDER_INACTIVE",
                message: "the provider is deactivated: no new bookings".into(),
            });
        }
        Ok(provider)
    }

    /// The patient a booking names must be active and of the clinic.
    async fn require_patient(
        &self,
        actor: &Actor,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<(), ApiError> {
        match self.deps.patient_is_active(actor, clinic, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::FailedPrecondition {
                reason: "PATIENT_INACTIVE",
                message: "the patient is deactivated: no new bookings".into(),
            }),
            Err(ApiError::NotFound(_)) => Err(ApiError::invalid(
                "appointment.patient",
                "is not a patient of this clinic",
            )),
            Err(e) => Err(e),
        }
    }

    /// FAILED_PRECONDITION unless the clinic takes bookings.
    fn require_open(facts: &ClinicFacts, actor: &Actor) -> Result<(), ApiError> {
        if facts.is_active || actor.caller.is_super_admin() {
            Ok(())
        } else {
            Err(topsmile_kit::clinics::inactive())
        }
    }

    /// Whether `slot` is free for this provider and patient: the one availability
    /// function, asked about exactly this slot. `except` leaves out the appointment
    /// being moved.
    #[allow(clippy::too_many_arguments)]
    async fn check_slot(
        &self,
        actor: &Actor,
        facts: &ClinicFacts,
        provider: &Bookable,
        clinic: &ResourceId,
        patient: &ResourceId,
        slot: Span,
        except: Option<&ResourceId>,
    ) -> Result<Hold, ApiError> {
        let zone = zone_of(facts)?;
        let buffers = buffers(provider);
        let hold = Hold::of(slot, buffers);
        let working = working_intervals(&provider.schedule, &zone, slot.start, slot.end);
        let (provider_busy, patient_busy) = tokio::try_join!(
            self.store
                .busy(clinic, Holder::Provider, &provider.id, slot, except),
            self.store
                .busy(clinic, Holder::Patient, patient, slot, except),
        )?;
        let limits = limits(actor, facts);
        let question = Question {
            working: &working,
            zone: &zone,
            limits,
            now: self.now(),
            duration_secs: slot.end.duration_since(slot.start).as_secs(),
            buffers,
            provider_busy: &provider_busy,
            patient_busy: &patient_busy,
            window: slot,
        };
        match why_not(&question, slot) {
            None => Ok(hold),
            Some(why) => Err(not_offered(why, limits.step_secs)),
        }
    }

    async fn book(
        &self,
        actor: &Actor,
        req: pb::BookAppointmentRequest,
    ) -> Result<Appointment, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        let clinic = parent.clinic.clone();
        actor.caller.check_clinic(clinic.as_str())?;
        let fingerprint = fingerprint(&req);
        let mut v = Vec::new();
        let request_id = validate::request_id("request_id", &req.request_id)
            .map_err(|e| v.push(e))
            .ok()
            .flatten();
        let a = req.appointment.unwrap_or_default();
        let patient = member(
            "appointment.patient",
            "patients",
            &a.patient,
            &clinic,
            &mut v,
        );
        let provider_id = member(
            "appointment.provider",
            "providers",
            &a.provider,
            &clinic,
            &mut v,
        );
        let start = time_field("appointment.start_time", a.start_time.as_ref(), &mut v);
        let duration = duration_field("appointment.duration", a.duration, &mut v);
        let (kind, notes) = appointment::texts(&a.appointment_type, &a.notes, &mut v);
        if !v.is_empty() {
            return Err(ApiError::Invalid(v));
        }
        let (Some(patient), Some(provider_id), Some(start)) = (patient, provider_id, start) else {
            return Err(ApiError::invalid("appointment", "is required"));
        };
        if actor.is_patient() && patient_self(actor).as_ref() != Some(&patient) {
            // Patients book for themselves only.
            return Err(ApiError::PermissionDenied);
        }
        let request_key = match &request_id {
            Some(r) => format!("{clinic}/{r}"),
            None => ResourceId::generate().to_string(),
        };
        // A retry of a booking that went through is answered with it, before its own
        // time (now taken, by itself) could refuse it.
        if request_id.is_some()
            && let Some((first, print)) = self.store.by_request(&clinic, &request_key).await?
        {
            return if print == fingerprint {
                Ok(first)
            } else {
                Err(store_error(StoreError::Duplicate("request_id")))
            };
        }
        // The three other services at once: the answer waits for the slowest, not the sum.
        let (facts, (), provider) = tokio::try_join!(
            self.deps.clinic(actor, &clinic),
            self.require_patient(actor, &clinic, &patient),
            self.provider(actor, &clinic, &provider_id),
        )?;
        Self::require_open(&facts, actor)?;
        let slot = span_of(start, duration.unwrap_or(provider.default_duration_secs))?;
        let hold = self
            .check_slot(actor, &facts, &provider, &clinic, &patient, slot, None)
            .await?;
        let now = self.now();
        let booked = Appointment::book(
            Booking {
                clinic,
                patient,
                provider: provider_id,
                slot,
                appointment_type: kind,
                notes,
                hold,
            },
            now,
        );
        self.deps
            .audit(
                actor,
                "AppointmentService/BookAppointment",
                &booked.name(),
                "PENDING",
            )
            .await?;
        if actor.is_patient() {
            return self
                .book_within_limits(&facts, booked, request_key, fingerprint, now)
                .await;
        }
        self.store
            .book(booked, request_key, fingerprint, now)
            .await
            .map_err(store_error)
    }

    /// A portal patient's own booking: one of the day's self-service bookings (a
    /// conditional count, never given back for a cancel: booking and cancelling in a
    /// loop stops at the limit too), and a free seat of their quota of appointments to
    /// come, claimed with the time (see `store::reserve`). Either limit reached is
    /// FAILED_PRECONDITION `PATIENT_LIMIT`, and nothing is booked.
    async fn book_within_limits(
        &self,
        facts: &ClinicFacts,
        booked: Appointment,
        request_key: String,
        fingerprint: String,
        now: Timestamp,
    ) -> Result<Appointment, ApiError> {
        let rules = facts.booking;
        let day = now.to_zoned(zone_of(facts)?).date().to_string();
        let (clinic, patient) = (booked.clinic.clone(), booked.patient.clone());
        let records = self.store.records();
        if !records
            .count_self_booking(&clinic, &patient, &day, rules.patient_daily_limit, now)
            .await?
        {
            return Err(patient_limit(format!(
                "a patient books at most {} appointments a day online here: try again tomorrow, or ask the clinic",
                rules.patient_daily_limit
            )));
        }
        let give_back = || async {
            if let Err(e) = records.uncount_self_booking(&clinic, &patient, &day).await {
                tracing::warn!(error = %e, "a self-service booking that did not happen stays counted");
            }
        };
        for seat in 0..rules.patient_active_limit {
            let mut attempt = booked.clone();
            attempt.hold.quota = Some(seat);
            match self
                .store
                .book(attempt, request_key.clone(), fingerprint.clone(), now)
                .await
            {
                Err(StoreError::Duplicate("quota")) => {}
                Ok(appointment) => return Ok(appointment),
                Err(e) => {
                    give_back().await;
                    return Err(store_error(e));
                }
            }
        }
        give_back().await;
        Err(patient_limit(format!(
            "a patient holds at most {} upcoming appointments booked online here: cancel one, or ask the clinic",
            rules.patient_active_limit
        )))
    }

    async fn list(
        &self,
        actor: &Actor,
        req: &pb::ListAppointmentsRequest,
    ) -> Result<pb::ListAppointmentsResponse, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        let clinic = parent.clinic.clone();
        actor.caller.check_clinic(clinic.as_str())?;
        let mut v = Vec::new();
        let from = req.start_time_from.as_ref().and_then(|t| {
            time::from_proto("start_time_from", t)
                .map_err(|e| v.push(e))
                .ok()
        });
        let to = req.start_time_to.as_ref().and_then(|t| {
            time::from_proto("start_time_to", t)
                .map_err(|e| v.push(e))
                .ok()
        });
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            v.push(FieldViolation::new(
                "start_time_to",
                "must be after start_time_from",
            ));
        }
        let provider = (!req.provider.is_empty())
            .then(|| member("provider", "providers", &req.provider, &clinic, &mut v))
            .flatten();
        let mut patient = (!req.patient.is_empty())
            .then(|| member("patient", "patients", &req.patient, &clinic, &mut v))
            .flatten();
        let mut statuses = Vec::new();
        for (i, s) in req.statuses.iter().enumerate() {
            match pb::AppointmentStatus::try_from(*s)
                .ok()
                .and_then(domain_status)
            {
                Some(s) => statuses.push(s),
                None => v.push(FieldViolation::new(
                    format!("statuses[{i}]"),
                    "is not an appointment status",
                )),
            }
        }
        statuses.sort_by_key(|s| s.as_str());
        statuses.dedup();
        if !v.is_empty() {
            return Err(ApiError::Invalid(v));
        }
        if actor.is_patient() {
            let me = patient_self(actor).ok_or(ApiError::PermissionDenied)?;
            if patient.as_ref().is_some_and(|p| p != &me) {
                return Err(ApiError::PermissionDenied);
            }
            // A patient's list is their own appointments, whatever else it asks.
            patient = Some(me);
        }
        let query = AppointmentQuery {
            from,
            to,
            provider,
            patient,
            statuses,
        };
        let shape = format!("{query:?}");
        let page = PageRequest::parse(req.page_size, &req.page_token, &[&req.parent, &shape])?;
        let found = self.store.list(&clinic, &query, &page).await?;
        let (found, next_page_token) = page.finish(found, page_key);
        Ok(pb::ListAppointmentsResponse {
            appointments: found.iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    /// A patient may change their appointment only until the clinic's cut-off before
    /// it starts (`facts`, the clinic's rules, asked once by the caller).
    fn require_patient_may_change(
        &self,
        actor: &Actor,
        current: &Appointment,
        facts: &ClinicFacts,
    ) -> Result<(), ApiError> {
        if !actor.is_patient() {
            return Ok(());
        }
        let cutoff = current
            .start
            .checked_sub(SignedDuration::from_secs(
                facts.booking.patient_change_cutoff_secs,
            ))
            .unwrap_or(current.start);
        if self.now() > cutoff {
            return Err(ApiError::FailedPrecondition {
                reason: "PAST_CHANGE_CUTOFF",
                message: format!(
                    "patients may change an appointment until {} hours before it starts; call the clinic",
                    facts.booking.patient_change_cutoff_secs / 3600
                ),
            });
        }
        Ok(())
    }

    async fn reschedule(
        &self,
        actor: &Actor,
        req: pb::RescheduleAppointmentRequest,
    ) -> Result<Appointment, ApiError> {
        let current = self.load(actor, "name", &req.name).await?;
        let mut v = Vec::new();
        let start = time_field("start_time", req.start_time.as_ref(), &mut v);
        let duration = duration_field("duration", req.duration, &mut v);
        let reason = validate::optional_text("reason", &req.reason, 500)
            .map_err(|e| v.push(e))
            .unwrap_or_default();
        if !v.is_empty() {
            return Err(ApiError::Invalid(v));
        }
        let Some(start) = start else {
            return Err(ApiError::invalid("start_time", "is required"));
        };
        if !req.etag.is_empty() && !current.etag_matches(&req.etag) {
            return Err(ApiError::Stale);
        }
        // The state first: a finished visit is not moved, whoever asks.
        current
            .after(Action::Reschedule, self.now())
            .map_err(wrong_state)?;
        let facts = self.deps.clinic(actor, &current.clinic).await?;
        self.require_patient_may_change(actor, &current, &facts)?;
        Self::require_open(&facts, actor)?;
        let provider = self
            .provider(actor, &current.clinic, &current.provider)
            .await?;
        let length = duration.unwrap_or(current.end.duration_since(current.start).as_secs());
        let slot = span_of(start, length)?;
        let hold = self
            .check_slot(
                actor,
                &facts,
                &provider,
                &current.clinic,
                &current.patient,
                slot,
                Some(&current.id),
            )
            .await?;
        let now = self.now();
        let next = current
            .moved(slot, hold, actor.caller.subject(), reason, now)
            .map_err(wrong_state)?;
        if next.reschedules.len() > appointment::MAX_RESCHEDULES {
            return Err(ApiError::FailedPrecondition {
                reason: "TOO_MANY_RESCHEDULES",
                message: format!(
                    "an appointment is moved at most {} times: cancel it and book a new one",
                    appointment::MAX_RESCHEDULES
                ),
            });
        }
        self.deps
            .audit(
                actor,
                "AppointmentService/RescheduleAppointment",
                &current.name(),
                "PENDING",
            )
            .await?;
        self.store
            .reschedule(&current, next, now)
            .await
            .map_err(store_error)
    }

    /// One lifecycle step on the named appointment, if `etag` (when given) is current
    /// and `check` allows it.
    async fn step(
        &self,
        actor: &Actor,
        action_name: &str,
        name: &str,
        etag: &str,
        action: Action,
        change: impl FnOnce(&Appointment, Appointment, Timestamp) -> Result<Appointment, ApiError>,
    ) -> Result<Appointment, ApiError> {
        let current = self.load(actor, "name", name).await?;
        if !etag.is_empty() && !current.etag_matches(etag) {
            return Err(ApiError::Stale);
        }
        let now = self.now();
        let next = current.after(action, now).map_err(wrong_state)?;
        let next = change(&current, next, now)?;
        if action.has_patient_cutoff() && actor.is_patient() {
            let facts = self.deps.clinic(actor, &current.clinic).await?;
            self.require_patient_may_change(actor, &current, &facts)?;
        }
        self.deps
            .audit(actor, action_name, &current.name(), "PENDING")
            .await?;
        self.store
            .transition(&current, &next, now)
            .await
            .map_err(store_error)?;
        Ok(next)
    }

    /// A lifecycle step that is the state machine and nothing more (confirm, check in,
    /// start, complete), recorded in the trail.
    async fn plain_step(
        &self,
        actor: &Actor,
        action_name: &str,
        name: &str,
        etag: &str,
        action: Action,
    ) -> Result<Appointment, ApiError> {
        let result = self
            .step(actor, action_name, name, etag, action, |_, next, _| {
                Ok(next)
            })
            .await;
        self.deps.record(actor, action_name, name, result).await
    }

    async fn find(
        &self,
        actor: &Actor,
        req: &pb::FindAvailableSlotsRequest,
    ) -> Result<pb::FindAvailableSlotsResponse, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        let clinic = parent.clinic.clone();
        actor.caller.check_clinic(clinic.as_str())?;
        let mut v = Vec::new();
        let start = time_field("start_time", req.start_time.as_ref(), &mut v);
        let end = time_field("end_time", req.end_time.as_ref(), &mut v);
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                v.push(FieldViolation::new("end_time", "must be after start_time"));
            } else if end.duration_since(start) > MAX_WINDOW {
                v.push(FieldViolation::new(
                    "end_time",
                    "must be at most 31 days after start_time",
                ));
            }
        }
        let duration = duration_field("duration", req.duration, &mut v);
        let provider_id = (!req.provider.is_empty())
            .then(|| member("provider", "providers", &req.provider, &clinic, &mut v))
            .flatten();
        let mut patient = (!req.patient.is_empty())
            .then(|| member("patient", "patients", &req.patient, &clinic, &mut v))
            .flatten();
        if !v.is_empty() {
            return Err(ApiError::Invalid(v));
        }
        let (Some(start), Some(end)) = (start, end) else {
            return Err(ApiError::invalid("start_time", "is required"));
        };
        if actor.is_patient() {
            let me = patient_self(actor).ok_or(ApiError::PermissionDenied)?;
            if patient.as_ref().is_some_and(|p| p != &me) {
                return Err(ApiError::PermissionDenied);
            }
            patient = Some(me);
        }
        let window = Span::new(start, end);
        let facts = self.deps.clinic(actor, &clinic).await?;
        let zone = zone_of(&facts)?;
        let providers = match &provider_id {
            Some(id) => vec![
                self.provider(actor, &clinic, id)
                    .await
                    .map_err(|e| match e {
                        ApiError::Invalid(_) => {
                            ApiError::invalid("provider", "is not a provider of this clinic")
                        }
                        other => other,
                    })?,
            ],
            None => self.deps.providers(actor, &clinic, None).await?,
        };
        let patient_busy = match &patient {
            Some(p) => {
                self.store
                    .busy(&clinic, Holder::Patient, p, window, None)
                    .await?
            }
            None => Vec::new(),
        };
        let limits = limits(actor, &facts);
        let now = self.now();
        let mut slots = Vec::new();
        for provider in providers.iter().filter(|p| p.is_active) {
            let working = working_intervals(&provider.schedule, &zone, start, end);
            if working.is_empty() {
                continue;
            }
            let provider_busy = self
                .store
                .busy(&clinic, Holder::Provider, &provider.id, window, None)
                .await?;
            let question = Question {
                working: &working,
                zone: &zone,
                limits,
                now,
                duration_secs: duration.unwrap_or(provider.default_duration_secs),
                buffers: buffers(provider),
                provider_busy: &provider_busy,
                patient_busy: &patient_busy,
                window,
            };
            let name = format!("clinics/{clinic}/providers/{}", provider.id);
            slots.extend(free_slots(&question).into_iter().map(|s| (s, name.clone())));
        }
        slots.sort_by(|a, b| (a.0.start, &a.1).cmp(&(b.0.start, &b.1)));
        // The earliest slots, at most MAX_SLOTS and no more than one answer can carry.
        let mut answer = pb::FindAvailableSlotsResponse::default();
        let mut size = 0usize;
        for (s, provider) in slots.into_iter().take(MAX_SLOTS) {
            let slot = pb::Slot {
                provider,
                start_time: Some(time::to_proto(s.start)),
                end_time: Some(time::to_proto(s.end)),
            };
            size += prost::Message::encoded_len(&slot) + 4;
            if size > self.max_answer_bytes {
                break;
            }
            answer.slots.push(slot);
        }
        Ok(answer)
    }
}

fn proto_status(s: Lifecycle) -> pb::AppointmentStatus {
    use pb::AppointmentStatus as P;
    match s {
        Lifecycle::Scheduled => P::Scheduled,
        Lifecycle::Confirmed => P::Confirmed,
        Lifecycle::CheckedIn => P::CheckedIn,
        Lifecycle::InProgress => P::InProgress,
        Lifecycle::Completed => P::Completed,
        Lifecycle::Cancelled => P::Cancelled,
        Lifecycle::NoShow => P::NoShow,
    }
}

fn domain_status(s: pb::AppointmentStatus) -> Option<Lifecycle> {
    use pb::AppointmentStatus as P;
    Some(match s {
        P::Unspecified => return None,
        P::Scheduled => Lifecycle::Scheduled,
        P::Confirmed => Lifecycle::Confirmed,
        P::CheckedIn => Lifecycle::CheckedIn,
        P::InProgress => Lifecycle::InProgress,
        P::Completed => Lifecycle::Completed,
        P::Cancelled => Lifecycle::Cancelled,
        P::NoShow => Lifecycle::NoShow,
    })
}

pub fn to_proto(a: &Appointment) -> pb::Appointment {
    let ts = |ms: i64| Some(time::to_proto(time::from_millis(ms)));
    pb::Appointment {
        name: a.name(),
        patient: a.patient_name(),
        provider: a.provider_name(),
        start_time: Some(time::to_proto(a.start)),
        end_time: Some(time::to_proto(a.end)),
        duration: Some(prost_types::Duration {
            seconds: a.end.duration_since(a.start).as_secs(),
            nanos: 0,
        }),
        appointment_type: a.appointment_type.clone(),
        status: proto_status(a.status) as i32,
        notes: a.notes.clone(),
        cancellation_reason: a.cancellation_reason.clone(),
        reschedule_history: a
            .reschedules
            .iter()
            .map(|r| pb::Reschedule {
                previous_start_time: ts(r.previous_start_ms),
                previous_end_time: ts(r.previous_end_ms),
                rescheduled_by: r.by.clone(),
                reschedule_time: ts(r.at_ms),
                reason: r.reason.clone(),
            })
            .collect(),
        create_time: Some(time::to_proto(a.create_time)),
        update_time: Some(time::to_proto(a.update_time)),
        etag: a.etag(),
    }
}

macro_rules! answer {
    ($resp:ident, $a:expr) => {
        Ok(Response::new(pb::$resp {
            appointment: Some(to_proto(&$a)),
        }))
    };
}

#[tonic::async_trait]
impl AppointmentService for AppointmentApi {
    async fn book_appointment(
        &self,
        req: Request<pb::BookAppointmentRequest>,
    ) -> Result<Response<pb::BookAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let parent = req.parent.clone();
        let result = self.book(&actor, req).await;
        let resource = result.as_ref().map_or(parent, Appointment::name);
        let booked = self
            .deps
            .record(
                &actor,
                "AppointmentService/BookAppointment",
                &resource,
                result,
            )
            .await?;
        answer!(BookAppointmentResponse, booked)
    }

    async fn get_appointment(
        &self,
        req: Request<pb::GetAppointmentRequest>,
    ) -> Result<Response<pb::GetAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let name = req.into_inner().name;
        let result = self.load(&actor, "name", &name).await;
        let found = self
            .deps
            .record(&actor, "AppointmentService/GetAppointment", &name, result)
            .await?;
        answer!(GetAppointmentResponse, found)
    }

    async fn list_appointments(
        &self,
        req: Request<pb::ListAppointmentsRequest>,
    ) -> Result<Response<pb::ListAppointmentsResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let result = self.list(&actor, &req).await;
        let resource = if req.patient.is_empty() {
            req.parent.clone()
        } else {
            req.patient.clone()
        };
        let page = self
            .deps
            .record(
                &actor,
                "AppointmentService/ListAppointments",
                &resource,
                result,
            )
            .await?;
        Ok(Response::new(page))
    }

    async fn reschedule_appointment(
        &self,
        req: Request<pb::RescheduleAppointmentRequest>,
    ) -> Result<Response<pb::RescheduleAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let name = req.name.clone();
        let result = self.reschedule(&actor, req).await;
        let moved = self
            .deps
            .record(
                &actor,
                "AppointmentService/RescheduleAppointment",
                &name,
                result,
            )
            .await?;
        answer!(RescheduleAppointmentResponse, moved)
    }

    async fn confirm_appointment(
        &self,
        req: Request<pb::ConfirmAppointmentRequest>,
    ) -> Result<Response<pb::ConfirmAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let r = req.get_ref();
        let action = "AppointmentService/ConfirmAppointment";
        let done = self
            .plain_step(&actor, action, &r.name, &r.etag, Action::Confirm)
            .await?;
        answer!(ConfirmAppointmentResponse, done)
    }

    async fn check_in_appointment(
        &self,
        req: Request<pb::CheckInAppointmentRequest>,
    ) -> Result<Response<pb::CheckInAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let r = req.get_ref();
        let action = "AppointmentService/CheckInAppointment";
        let done = self
            .plain_step(&actor, action, &r.name, &r.etag, Action::CheckIn)
            .await?;
        answer!(CheckInAppointmentResponse, done)
    }

    async fn start_appointment(
        &self,
        req: Request<pb::StartAppointmentRequest>,
    ) -> Result<Response<pb::StartAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let r = req.get_ref();
        let action = "AppointmentService/StartAppointment";
        let done = self
            .plain_step(&actor, action, &r.name, &r.etag, Action::Start)
            .await?;
        answer!(StartAppointmentResponse, done)
    }

    async fn complete_appointment(
        &self,
        req: Request<pb::CompleteAppointmentRequest>,
    ) -> Result<Response<pb::CompleteAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let r = req.get_ref();
        let action = "AppointmentService/CompleteAppointment";
        let done = self
            .plain_step(&actor, action, &r.name, &r.etag, Action::Complete)
            .await?;
        answer!(CompleteAppointmentResponse, done)
    }

    async fn cancel_appointment(
        &self,
        req: Request<pb::CancelAppointmentRequest>,
    ) -> Result<Response<pb::CancelAppointmentResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        const ACTION: &str = "AppointmentService/CancelAppointment";
        let reason = req.reason.clone();
        let result = self
            .step(
                &actor,
                ACTION,
                &req.name,
                &req.etag,
                Action::Cancel,
                |_, mut next, _| {
                    let reason = validate::required_text("reason", &reason, 500)?;
                    next.cancellation_reason = reason;
                    Ok(next)
                },
            )
            .await;
        let done = self.deps.record(&actor, ACTION, &req.name, result).await?;
        answer!(CancelAppointmentResponse, done)
    }

    async fn mark_appointment_no_show(
        &self,
        req: Request<pb::MarkAppointmentNoShowRequest>,
    ) -> Result<Response<pb::MarkAppointmentNoShowResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        const ACTION: &str = "AppointmentService/MarkAppointmentNoShow";
        let result = self
            .step(
                &actor,
                ACTION,
                &req.name,
                &req.etag,
                Action::MarkNoShow,
                |current, next, now| {
                    if now < current.start {
                        return Err(ApiError::FailedPrecondition {
                            reason: "NOT_STARTED",
                            message: "a patient can be marked a no-show only after the start time"
                                .into(),
                        });
                    }
                    Ok(next)
                },
            )
            .await;
        let done = self.deps.record(&actor, ACTION, &req.name, result).await?;
        answer!(MarkAppointmentNoShowResponse, done)
    }

    async fn find_available_slots(
        &self,
        req: Request<pb::FindAvailableSlotsRequest>,
    ) -> Result<Response<pb::FindAvailableSlotsResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let result = self.find(&actor, &req).await;
        // Free times are a provider's, not health information, unless the search is a
        // patient's own or names one: then it is recorded like any appointment read.
        if req.patient.is_empty() && !actor.is_patient() {
            return Ok(Response::new(result?));
        }
        let resource = if req.patient.is_empty() {
            actor.caller.subject().to_owned()
        } else {
            req.patient.clone()
        };
        let found = self
            .deps
            .record(
                &actor,
                "AppointmentService/FindAvailableSlots",
                &resource,
                result,
            )
            .await?;
        Ok(Response::new(found))
    }
}
