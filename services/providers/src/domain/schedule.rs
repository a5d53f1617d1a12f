//! When a provider works: weekly wall-clock hours in the clinic's time zone, date
//! overrides (other hours, or closed, on one local date), and absolute time off; and the
//! one function that turns them into UTC instants, which finding and booking a slot
//! both use.
//!
//! The rule, exact across daylight-saving changes: an instant is working time when its
//! wall-clock reading in the clinic's zone falls inside one of that local date's
//! intervals, and it is not in time off. So a local time that does not exist (the hour
//! skipped in spring) is never working time, an hour that repeats (in autumn) counts
//! once per real instant, and an interval's real length on such a day is what the wall
//! clock implies (08:00-12:00 on a spring-forward day across the gap lasts 3 hours).
//! Nothing here reads the machine's time zone or clock.

use std::collections::BTreeMap;

use jiff::{Timestamp, civil::Date, tz::TimeZone};

use super::hours::Interval;

/// A half-open span of real time, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Span {
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        Self { start, end }
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// A provider's schedule, already validated (intervals sorted and disjoint per day).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// Working hours by weekday, Monday first.
    pub weekly: [Vec<Interval>; 7],
    /// Local dates with other hours; an empty list means closed that day.
    pub overrides: BTreeMap<Date, Vec<Interval>>,
    /// Absences, in real time.
    pub time_off: Vec<Span>,
}

impl Schedule {
    /// The wall-clock hours of one local date: its override, or its weekday's hours.
    pub fn hours_on(&self, date: Date) -> &[Interval] {
        match self.overrides.get(&date) {
            Some(hours) => hours,
            None => {
                let day = usize::try_from(date.weekday().to_monday_zero_offset()).unwrap_or(0);
                self.weekly.get(day).map_or(&[], Vec::as_slice)
            }
        }
    }
}

/// The provider's working time between `from` and `to`, in `zone`: sorted, disjoint,
/// inside `[from, to)`, none of it in time off (see the module doc for the rule).
pub fn working_intervals(
    schedule: &Schedule,
    zone: &TimeZone,
    from: Timestamp,
    to: Timestamp,
) -> Vec<Span> {
    if to <= from {
        return Vec::new();
    }
    let window = Span::new(from, to);
    // Every local date whose hours could reach into the window (offsets are within a
    // day of UTC, so one date of margin on each side covers them all).
    let first = zone.to_datetime(from).date().yesterday().ok();
    let last = zone.to_datetime(to).date().tomorrow().ok();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let mut pieces = Vec::new();
    let mut date = first;
    while date <= last {
        for interval in schedule.hours_on(date) {
            pieces.extend(instants_of(zone, date, *interval));
        }
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    let mut off: Vec<Span> = schedule.time_off.clone();
    off.sort();
    let mut working: Vec<Span> = pieces
        .into_iter()
        .flat_map(|piece| subtract(clip(piece, window), &off))
        .filter(|s| !s.is_empty())
        .collect();
    working.sort();
    merge(working)
}

/// The real instants whose wall-clock reading in `zone` is inside `interval` on `date`:
/// one span, or two around an autumn transition inside the interval (each real instant
/// once), or none if the interval lies wholly in a skipped hour.
fn instants_of(zone: &TimeZone, date: Date, interval: Interval) -> Vec<Span> {
    // Local times as seconds on a clock that never changes (civil time read as UTC).
    let Ok(midnight) = date.to_zoned(TimeZone::UTC) else {
        return Vec::new();
    };
    let local_midnight = midnight.timestamp().as_second();
    let local_start = local_midnight + i64::from(interval.start_minute) * 60;
    let local_end = local_midnight + i64::from(interval.end_minute) * 60;
    // Real instants that could read as those local times: offsets are under 26 hours.
    const MARGIN: i64 = 26 * 3600;
    let (Ok(low), Ok(high)) = (
        Timestamp::from_second(local_start - MARGIN),
        Timestamp::from_second(local_end + MARGIN),
    ) else {
        return Vec::new();
    };
    // Between two transitions the offset is fixed: local = real + offset there.
    let mut boundaries = vec![low];
    boundaries.extend(
        zone.following(low)
            .map(|t| t.timestamp())
            .take_while(|t| *t < high),
    );
    boundaries.push(high);
    let mut spans = Vec::new();
    for pair in boundaries.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let offset = i64::from(zone.to_offset(a).seconds());
        let start = a.as_second().max(local_start - offset);
        let end = b.as_second().min(local_end - offset);
        if start < end
            && let (Ok(start), Ok(end)) =
                (Timestamp::from_second(start), Timestamp::from_second(end))
        {
            spans.push(Span::new(start, end));
        }
    }
    merge(spans)
}

fn clip(span: Span, window: Span) -> Span {
    Span::new(span.start.max(window.start), span.end.min(window.end))
}

/// `span` minus every span of `off` (sorted by start).
fn subtract(span: Span, off: &[Span]) -> Vec<Span> {
    let mut left = Vec::new();
    let mut rest = span;
    for gap in off.iter().filter(|o| o.overlaps(&span)) {
        if gap.start > rest.start {
            left.push(Span::new(rest.start, gap.start.min(rest.end)));
        }
        rest.start = rest.start.max(gap.end);
        if rest.is_empty() {
            return left;
        }
    }
    left.push(rest);
    left
}

/// Sorted spans, with overlapping and touching ones joined.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, civil::date};

    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn hours(start: (u16, u16), end: (u16, u16)) -> Interval {
        Interval {
            start_minute: start.0 * 60 + start.1,
            end_minute: end.0 * 60 + end.1,
        }
    }

    /// Every day of the week has `interval`.
    fn every_day(interval: Interval) -> Schedule {
        Schedule {
            weekly: std::array::from_fn(|_| vec![interval]),
            ..Schedule::default()
        }
    }

    fn utc(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Working time on one local date, and its total length.
    fn on(schedule: &Schedule, tz: &str, day: Date) -> (Vec<Span>, SignedDuration) {
        let z = zone(tz);
        let from = day.to_zoned(z.clone()).unwrap().timestamp();
        let to = day
            .tomorrow()
            .unwrap()
            .to_zoned(z.clone())
            .unwrap()
            .timestamp();
        let spans = working_intervals(schedule, &z, from, to);
        let total = spans
            .iter()
            .map(|s| s.end.duration_since(s.start))
            .fold(SignedDuration::ZERO, |a, b| a + b);
        (spans, total)
    }

    fn h(hours: i64, minutes: i64) -> SignedDuration {
        SignedDuration::from_mins(hours * 60 + minutes)
    }

    #[test]
    fn new_york_spring_forward_skips_the_missing_hour() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let day = date(2026, 3, 8);
        let (spans, total) = on(&every_day(hours((1, 0), (4, 0))), "America/New_York", day);
        assert_eq!(total, h(2, 0));
        assert_eq!(
            spans,
            [Span::new(
                utc("2026-03-08T06:00Z"),
                utc("2026-03-08T08:00Z")
            )]
        );
        // An interval inside the skipped hour is no working time at all ...
        let (_, none) = on(&every_day(hours((2, 0), (3, 0))), "America/New_York", day);
        assert_eq!(none, SignedDuration::ZERO);
        // ... and one that starts in it starts when the clock reads 03:00.
        let (late, _) = on(&every_day(hours((2, 30), (5, 0))), "America/New_York", day);
        assert_eq!(
            late,
            [Span::new(
                utc("2026-03-08T07:00Z"),
                utc("2026-03-08T09:00Z")
            )]
        );
    }

    #[test]
    fn new_york_fall_back_counts_the_repeated_hour_once_per_instant() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00-02:00 happens twice.
        let day = date(2026, 11, 1);
        let (spans, total) = on(&every_day(hours((0, 0), (3, 0))), "America/New_York", day);
        assert_eq!(total, h(4, 0));
        assert_eq!(
            spans,
            [Span::new(
                utc("2026-11-01T04:00Z"),
                utc("2026-11-01T08:00Z")
            )]
        );
        let (twice, repeated) = on(&every_day(hours((1, 0), (2, 0))), "America/New_York", day);
        assert_eq!(repeated, h(2, 0));
        assert_eq!(
            twice,
            [Span::new(
                utc("2026-11-01T05:00Z"),
                utc("2026-11-01T07:00Z")
            )]
        );
    }

    #[test]
    fn berlin_transitions_of_2026() {
        let z = "Europe/Berlin";
        // 29 March: 02:00 CET becomes 03:00 CEST.
        let (_, spring) = on(&every_day(hours((1, 0), (4, 0))), z, date(2026, 3, 29));
        assert_eq!(spring, h(2, 0));
        // 25 October: 03:00 CEST becomes 02:00 CET.
        let (_, autumn) = on(&every_day(hours((1, 0), (4, 0))), z, date(2026, 10, 25));
        assert_eq!(autumn, h(4, 0));
        // An ordinary day is what the clock says.
        let (_, plain) = on(&every_day(hours((8, 0), (12, 0))), z, date(2026, 6, 10));
        assert_eq!(plain, h(4, 0));
    }

    #[test]
    fn lord_howe_shifts_by_half_an_hour() {
        let z = zone("Australia/Lord_Howe");
        // Find 2026's two transitions from the zone itself, then check the day of each.
        let transitions: Vec<Timestamp> = z
            .following(utc("2026-01-01T00:00Z"))
            .map(|t| t.timestamp())
            .take_while(|t| *t < utc("2027-01-01T00:00Z"))
            .collect();
        assert_eq!(transitions.len(), 2, "{transitions:?}");
        let shifts: Vec<SignedDuration> = transitions
            .iter()
            .map(|t| {
                let before = z.to_offset(*t - SignedDuration::from_secs(1));
                let after = z.to_offset(*t);
                SignedDuration::from_secs(i64::from(after.seconds() - before.seconds()))
            })
            .collect();
        let all_day = every_day(hours((0, 0), (24, 0)));
        for (t, shift) in transitions.iter().zip(shifts) {
            assert_eq!(shift.abs(), SignedDuration::from_mins(30));
            let day = z.to_datetime(*t).date();
            let (_, total) = on(&all_day, "Australia/Lord_Howe", day);
            // A day is 24 hours minus the half hour skipped, or plus the one repeated.
            assert_eq!(total, h(24, 0) - shift, "{day}");
        }
    }

    #[test]
    fn sao_paulo_has_no_dst_since_2019() {
        let z = zone("America/Sao_Paulo");
        // The offset never changes between 2020 and 2030.
        let changes = z
            .following(utc("2020-01-01T00:00Z"))
            .map(|t| t.timestamp())
            .take_while(|t| *t < utc("2030-01-01T00:00Z"))
            .filter(|t| z.to_offset(*t) != z.to_offset(*t - SignedDuration::from_secs(1)))
            .count();
        assert_eq!(changes, 0);
        let (spans, total) = on(
            &every_day(hours((8, 0), (12, 0))),
            "America/Sao_Paulo",
            date(2026, 11, 1),
        );
        assert_eq!(total, h(4, 0));
        assert_eq!(
            spans,
            [Span::new(
                utc("2026-11-01T11:00Z"),
                utc("2026-11-01T15:00Z")
            )]
        );
    }

    #[test]
    fn the_local_date_decides_overrides_not_the_utc_date() {
        // Sao Paulo is UTC-3: its 2026-12-24 runs until 03:00Z on the 25th. Closed on the
        // 24th, open 20:00-23:00 every other day: the 23rd's evening is worked (on the
        // 24th in UTC), the 24th's is not (though most of it is the 25th in UTC).
        let mut schedule = every_day(hours((20, 0), (23, 0)));
        schedule.overrides.insert(date(2026, 12, 24), Vec::new());
        schedule
            .overrides
            .insert(date(2026, 12, 26), vec![hours((9, 0), (10, 0))]);
        let z = zone("America/Sao_Paulo");
        let spans = working_intervals(
            &schedule,
            &z,
            utc("2026-12-24T00:00Z"),
            utc("2026-12-27T12:00Z"),
        );
        assert_eq!(
            spans,
            [
                Span::new(utc("2026-12-24T00:00Z"), utc("2026-12-24T02:00Z")),
                Span::new(utc("2026-12-25T23:00Z"), utc("2026-12-26T02:00Z")),
                Span::new(utc("2026-12-26T12:00Z"), utc("2026-12-26T13:00Z")),
            ]
        );
    }

    #[test]
    fn time_off_is_cut_out_and_the_window_clips() {
        let mut schedule = every_day(hours((8, 0), (12, 0)));
        schedule.time_off.push(Span::new(
            utc("2026-06-10T09:00Z"),
            utc("2026-06-10T10:00Z"),
        ));
        let spans = working_intervals(
            &schedule,
            &TimeZone::UTC,
            utc("2026-06-10T08:30Z"),
            utc("2026-06-10T11:00Z"),
        );
        assert_eq!(
            spans,
            [
                Span::new(utc("2026-06-10T08:30Z"), utc("2026-06-10T09:00Z")),
                Span::new(utc("2026-06-10T10:00Z"), utc("2026-06-10T11:00Z")),
            ]
        );
        assert!(
            working_intervals(
                &schedule,
                &TimeZone::UTC,
                utc("2026-06-10T11:00Z"),
                utc("2026-06-10T08:00Z")
            )
            .is_empty()
        );
    }

    #[test]
    fn split_shifts_and_touching_days_join() {
        // 22:00-24:00 and 00:00-02:00 on the next day are one stretch of real time.
        let schedule = every_day(hours((0, 0), (2, 0)));
        let mut schedule = schedule;
        for day in &mut schedule.weekly {
            day.push(hours((22, 0), (24, 0)));
        }
        let spans = working_intervals(
            &schedule,
            &TimeZone::UTC,
            utc("2026-06-10T21:00Z"),
            utc("2026-06-11T03:00Z"),
        );
        assert_eq!(
            spans,
            [Span::new(
                utc("2026-06-10T22:00Z"),
                utc("2026-06-11T02:00Z")
            )]
        );
    }
}
