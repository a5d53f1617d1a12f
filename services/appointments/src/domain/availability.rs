//! The one availability function: which start times are free for an appointment of a
//! given length with a given provider (and patient). `FindAvailableSlots` lists what it
//! yields; `BookAppointment` and `RescheduleAppointment` accept a time only if it
//! yields that very slot ([`is_offered`]), so what is offered is bookable and what is
//! refused is never offered.
//!
//! A slot `[start, start + duration)` is free when:
//! - it lies inside one of the provider's working intervals (providers'
//!   `working_intervals`: weekly hours, date overrides, time off, exact across DST);
//! - its start is aligned to the clinic's slot step on the clinic's wall clock
//!   (counted from local midnight), and within the caller's notice and horizon;
//! - the provider's time it takes, widened by the provider's buffers before and after,
//!   touches no time-granule another active appointment of the provider holds, and the
//!   slot itself touches no granule another appointment of the patient holds.
//!
//! Time is held in [`GRANULE_SECS`] granules of real time, the same ones the store
//! reserves (see `store::reserve`): an appointment holds every granule its (widened)
//! span touches. With the usual whole-five-minute times that is exactly its span; a time
//! off the grid holds the granule it starts or ends inside, here and in the store alike.

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use topsmile_providers::domain::Span;

/// The length of one granule of reserved time: five minutes.
pub const GRANULE_SECS: i64 = 300;

/// Granules `[first, end)`, numbered from the Unix epoch (granule `n` is the real time
/// `[n * GRANULE_SECS, (n + 1) * GRANULE_SECS)` seconds).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Granules {
    pub first: i64,
    pub end: i64,
}

impl Granules {
    /// Every granule `span` touches.
    pub fn covering(span: Span) -> Self {
        let start = span.start.as_second();
        let end = span.end.as_second() + i64::from(span.end.subsec_nanosecond() > 0);
        Self {
            first: start.div_euclid(GRANULE_SECS),
            end: (end + GRANULE_SECS - 1).div_euclid(GRANULE_SECS),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.first
    }

    pub fn overlaps(&self, other: &Granules) -> bool {
        self.first < other.end && other.first < self.end
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> {
        self.first..self.end
    }

    pub fn contains(&self, granule: i64) -> bool {
        (self.first..self.end).contains(&granule)
    }
}

/// The provider's gaps kept free around each appointment, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buffers {
    pub before_secs: i64,
    pub after_secs: i64,
}

/// What an appointment at `slot` holds: the provider's time (widened by the buffers)
/// and the patient's (the slot itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub provider: Granules,
    pub patient: Granules,
    /// The seat of the patient's self-service quota the appointment takes (0 up to the
    /// clinic's `patient_active_limit`), for a booking a portal patient made; `None`
    /// for staff bookings, which are not limited. See `store::reserve`.
    #[serde(default)]
    pub quota: Option<i64>,
}

impl Hold {
    pub fn of(slot: Span, buffers: Buffers) -> Self {
        let widened = Span::new(
            slot.start
                .checked_sub(SignedDuration::from_secs(buffers.before_secs))
                .unwrap_or(slot.start),
            slot.end
                .checked_add(SignedDuration::from_secs(buffers.after_secs))
                .unwrap_or(slot.end),
        );
        Self {
            provider: Granules::covering(widened),
            patient: Granules::covering(slot),
            quota: None,
        }
    }
}

/// Who is asking decides the limits: patients book within the clinic's booking rules;
/// staff may book from now on (a same-day emergency) and as far ahead as they like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The earliest start, as seconds after now.
    pub notice_secs: i64,
    /// The latest start, as seconds after now.
    pub horizon_secs: i64,
    /// Offered starts align to this many seconds on the wall clock (divides a day).
    pub step_secs: i64,
}

/// Everything one availability question needs, already fetched.
pub struct Question<'a> {
    /// The provider's working intervals covering at least `window` (sorted, disjoint).
    pub working: &'a [Span],
    pub zone: &'a TimeZone,
    pub limits: Limits,
    pub now: Timestamp,
    pub duration_secs: i64,
    pub buffers: Buffers,
    /// Granules other active appointments of the provider hold (any order).
    pub provider_busy: &'a [Granules],
    /// Granules other active appointments of the patient hold (empty: no patient).
    pub patient_busy: &'a [Granules],
    /// Slots must lie wholly inside this window.
    pub window: Span,
}

/// Every free slot inside the window, by start time.
pub fn free_slots(q: &Question<'_>) -> Vec<Span> {
    let mut slots = Vec::new();
    let (Some(duration), Some(step)) = (secs(q.duration_secs), secs(q.limits.step_secs)) else {
        return slots;
    };
    if q.duration_secs <= 0 || q.limits.step_secs <= 0 {
        return slots;
    }
    let earliest = q
        .now
        .checked_add(SignedDuration::from_secs(q.limits.notice_secs))
        .unwrap_or(Timestamp::MAX);
    let latest = q
        .now
        .checked_add(SignedDuration::from_secs(q.limits.horizon_secs))
        .unwrap_or(Timestamp::MAX);
    for span in q.working {
        let from = span.start.max(q.window.start).max(earliest);
        let until = span.end.min(q.window.end);
        let mut start = aligned_at_or_after(from, q.zone, q.limits.step_secs);
        while let Some(t) = start {
            let Ok(end) = t.checked_add(duration) else {
                break;
            };
            if end > until || t > latest {
                break;
            }
            let slot = Span::new(t, end);
            if is_free(q, slot) {
                slots.push(slot);
            }
            start = t.checked_add(step).ok().and_then(|next| {
                if q.zone.to_offset(next) == q.zone.to_offset(t) {
                    Some(next)
                } else {
                    // The wall clock jumped: align again on the new offset.
                    aligned_at_or_after(next, q.zone, q.limits.step_secs)
                }
            });
        }
    }
    slots
}

/// Whether `slot` is one that [`free_slots`] offers (the question's window is replaced
/// by the slot itself): the check Book and Reschedule make.
pub fn is_offered(q: &Question<'_>, slot: Span) -> bool {
    let exact = Question { window: slot, ..*q };
    free_slots(&exact) == [slot]
}

/// Why a slot is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOffered {
    /// It starts before the earliest start (now plus the notice).
    TooSoon,
    /// It starts after the latest start (now plus the horizon).
    TooFar,
    /// Its start is not on the clinic's step.
    OffStep,
    /// It is not wholly inside the provider's working time.
    OutsideHours,
    /// Another appointment of the provider (with buffers) or the patient holds part of
    /// it.
    Taken,
}

/// `None` if [`is_offered`] offers `slot`; otherwise the first reason it does not, in
/// the order a person would check them.
pub fn why_not(q: &Question<'_>, slot: Span) -> Option<NotOffered> {
    if is_offered(q, slot) {
        return None;
    }
    let after = |secs: i64| {
        q.now
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MAX)
    };
    Some(if slot.start < after(q.limits.notice_secs) {
        NotOffered::TooSoon
    } else if slot.start > after(q.limits.horizon_secs) {
        NotOffered::TooFar
    } else if aligned_at_or_after(slot.start, q.zone, q.limits.step_secs) != Some(slot.start) {
        NotOffered::OffStep
    } else if !q
        .working
        .iter()
        .any(|w| w.start <= slot.start && slot.end <= w.end)
    {
        NotOffered::OutsideHours
    } else {
        NotOffered::Taken
    })
}

fn is_free(q: &Question<'_>, slot: Span) -> bool {
    let hold = Hold::of(slot, q.buffers);
    !q.provider_busy.iter().any(|b| b.overlaps(&hold.provider))
        && !q.patient_busy.iter().any(|b| b.overlaps(&hold.patient))
}

fn secs(s: i64) -> Option<SignedDuration> {
    (s > 0).then(|| SignedDuration::from_secs(s))
}

/// The first instant at or after `from` whose wall-clock reading in `zone` is a whole
/// multiple of `step_secs` after local midnight.
fn aligned_at_or_after(from: Timestamp, zone: &TimeZone, step_secs: i64) -> Option<Timestamp> {
    let mut at = from;
    // Each round either returns or moves past one offset change; a few suffice.
    for _ in 0..4 {
        let offset = i64::from(zone.to_offset(at).seconds());
        let local = at.as_second() + offset;
        let into_step = local.rem_euclid(step_secs);
        let exact = into_step == 0 && at.subsec_nanosecond() == 0;
        let candidate = if exact {
            at
        } else {
            Timestamp::from_second(at.as_second() - into_step + step_secs).ok()?
        };
        if i64::from(zone.to_offset(candidate).seconds()) == offset {
            return Some(candidate);
        }
        // An offset change lies between `at` and `candidate`: start again from it.
        let change = zone.following(at).next()?.timestamp();
        if change <= at {
            return None;
        }
        at = change;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn span(a: &str, b: &str) -> Span {
        Span::new(ts(a), ts(b))
    }

    fn question<'a>(
        working: &'a [Span],
        zone: &'a TimeZone,
        busy: &'a [Granules],
        window: Span,
    ) -> Question<'a> {
        Question {
            working,
            zone,
            limits: Limits {
                notice_secs: 0,
                horizon_secs: 365 * 86_400,
                step_secs: 900,
            },
            now: ts("2026-01-01T00:00:00Z"),
            duration_secs: 1800,
            buffers: Buffers {
                before_secs: 0,
                after_secs: 600,
            },
            provider_busy: busy,
            patient_busy: &[],
            window,
        }
    }

    #[test]
    fn granules_cover_every_touched_five_minutes() {
        let g = Granules::covering(span("2026-03-02T12:00:00Z", "2026-03-02T12:30:00Z"));
        assert_eq!(g.end - g.first, 6);
        let odd = Granules::covering(span("2026-03-02T12:01:00Z", "2026-03-02T12:31:00Z"));
        assert_eq!((odd.first, odd.end), (g.first, g.end + 1));
    }

    #[test]
    fn slots_step_through_working_hours_and_skip_held_time() {
        let zone = TimeZone::get("America/Sao_Paulo").unwrap();
        // Monday 2 March 2026, 09:00-11:00 local = 12:00-14:00 UTC.
        let working = [span("2026-03-02T12:00:00Z", "2026-03-02T14:00:00Z")];
        let window = working[0];
        let none: [Granules; 0] = [];
        let q = question(&working, &zone, &none, window);
        let all = free_slots(&q);
        let starts: Vec<String> = all.iter().map(|s| s.start.to_string()).collect();
        assert_eq!(
            starts,
            [
                "2026-03-02T12:00:00Z",
                "2026-03-02T12:15:00Z",
                "2026-03-02T12:30:00Z",
                "2026-03-02T12:45:00Z",
                "2026-03-02T13:00:00Z",
                "2026-03-02T13:15:00Z",
                "2026-03-02T13:30:00Z",
            ]
        );
        // One appointment at 12:30-13:00 with its 10-minute buffer holds 12:30-13:10; a
        // slot collides when its own time plus its 10-minute buffer reaches into that.
        let held = [Hold::of(
            span("2026-03-02T12:30:00Z", "2026-03-02T13:00:00Z"),
            q.buffers,
        )
        .provider];
        let q = question(&working, &zone, &held, window);
        let starts: Vec<String> = free_slots(&q).iter().map(|s| s.start.to_string()).collect();
        assert_eq!(
            starts,
            ["2026-03-02T13:15:00Z", "2026-03-02T13:30:00Z"],
            "12:00 would run into the held time with its own buffer"
        );
        for slot in free_slots(&q) {
            assert!(is_offered(&q, slot));
            assert_eq!(why_not(&q, slot), None);
        }
        assert_eq!(
            why_not(&q, span("2026-03-02T12:30:00Z", "2026-03-02T13:00:00Z")),
            Some(NotOffered::Taken)
        );
        assert_eq!(
            why_not(&q, span("2026-03-02T13:45:00Z", "2026-03-02T14:15:00Z")),
            Some(NotOffered::OutsideHours)
        );
        assert!(!is_offered(
            &q,
            span("2026-03-02T12:30:00Z", "2026-03-02T13:00:00Z")
        ));
        assert_eq!(
            why_not(&q, span("2026-03-02T13:20:00Z", "2026-03-02T13:50:00Z")),
            Some(NotOffered::OffStep)
        );
    }

    #[test]
    fn steps_align_to_the_local_wall_clock() {
        // Kathmandu is UTC+05:45: on-the-hour local starts are :15 past in UTC.
        let zone = TimeZone::get("Asia/Kathmandu").unwrap();
        let working = [span("2026-03-02T03:00:00Z", "2026-03-02T06:00:00Z")];
        let none: [Granules; 0] = [];
        let mut q = question(&working, &zone, &none, working[0]);
        q.limits.step_secs = 3600;
        let starts: Vec<String> = free_slots(&q).iter().map(|s| s.start.to_string()).collect();
        assert_eq!(
            starts,
            [
                "2026-03-02T03:15:00Z",
                "2026-03-02T04:15:00Z",
                "2026-03-02T05:15:00Z"
            ]
        );
    }

    #[test]
    fn notice_and_horizon_bound_the_starts() {
        let zone = TimeZone::UTC;
        let working = [span("2026-01-01T08:00:00Z", "2026-01-01T12:00:00Z")];
        let none: [Granules; 0] = [];
        let mut q = question(&working, &zone, &none, working[0]);
        q.now = ts("2026-01-01T07:50:00Z");
        q.limits.notice_secs = 3600;
        q.limits.horizon_secs = 2 * 3600;
        let starts: Vec<String> = free_slots(&q).iter().map(|s| s.start.to_string()).collect();
        assert_eq!(
            starts,
            [
                "2026-01-01T09:00:00Z",
                "2026-01-01T09:15:00Z",
                "2026-01-01T09:30:00Z",
                "2026-01-01T09:45:00Z"
            ]
        );
    }

    #[test]
    fn the_patients_own_appointments_are_busy_too() {
        let zone = TimeZone::UTC;
        let working = [span("2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z")];
        let none: [Granules; 0] = [];
        let patient = [Granules::covering(span(
            "2026-01-01T08:00:00Z",
            "2026-01-01T08:30:00Z",
        ))];
        let mut q = question(&working, &zone, &none, working[0]);
        q.patient_busy = &patient;
        let starts: Vec<String> = free_slots(&q).iter().map(|s| s.start.to_string()).collect();
        assert_eq!(starts, ["2026-01-01T08:30:00Z"]);
    }
}
