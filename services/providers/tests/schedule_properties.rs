//! Property tests of `working_intervals` over random schedules, zones and windows: the
//! answer is sorted, disjoint, inside the window and outside time off, and it is exactly
//! the definition (an instant works when its wall-clock reading falls inside that local
//! date's hours and it is not time off), checked instant by instant at random. And the
//! machine's own `TZ` changes nothing.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use proptest::prelude::*;
use topsmile_providers::domain::{Interval, Schedule, Span, working_intervals};

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
];

/// 2026-01-01T00:00Z.
const YEAR_START: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

/// One day's hours: sorted, disjoint, within 00:00..24:00.
fn day_hours() -> impl Strategy<Value = Vec<Interval>> {
    proptest::collection::btree_set(0u16..=1440, 0..=6).prop_map(|cuts| {
        let cuts: Vec<u16> = cuts.into_iter().collect();
        cuts.chunks_exact(2)
            .map(|pair| Interval {
                start_minute: pair[0],
                end_minute: pair[1],
            })
            .collect()
    })
}

fn date_in_2026() -> impl Strategy<Value = Date> {
    (0i64..365).prop_map(|d| {
        Timestamp::from_second(YEAR_START + d * DAY)
            .map(|t| t.to_zoned(TimeZone::UTC).date())
            .unwrap_or_default()
    })
}

fn span_in_2026() -> impl Strategy<Value = Span> {
    (0i64..365 * DAY, 0i64..3 * DAY).prop_map(|(start, length)| {
        let start = YEAR_START + start;
        Span::new(
            Timestamp::from_second(start).unwrap_or_default(),
            Timestamp::from_second(start + length).unwrap_or_default(),
        )
    })
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::collection::vec(day_hours(), 7),
        proptest::collection::btree_map(date_in_2026(), day_hours(), 0..4),
        proptest::collection::vec(span_in_2026(), 0..5),
    )
        .prop_map(|(weekly, overrides, time_off)| Schedule {
            weekly: std::array::from_fn(|i| weekly.get(i).cloned().unwrap_or_default()),
            overrides: overrides.into_iter().collect::<BTreeMap<_, _>>(),
            time_off,
        })
}

/// The definition, for one instant.
fn works_at(schedule: &Schedule, zone: &TimeZone, t: Timestamp) -> bool {
    let local = zone.to_datetime(t);
    let second_of_day =
        i64::from(local.hour()) * 3600 + i64::from(local.minute()) * 60 + i64::from(local.second());
    let in_hours = schedule.hours_on(local.date()).iter().any(|i| {
        i64::from(i.start_minute) * 60 <= second_of_day
            && second_of_day < i64::from(i.end_minute) * 60
    });
    in_hours && !schedule.time_off.iter().any(|o| o.start <= t && t < o.end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn working_time_is_sorted_disjoint_inside_the_window_and_exactly_the_rule(
        schedule in schedule(),
        zone in proptest::sample::select(ZONES),
        from in 0i64..365 * DAY,
        length in 0i64..10 * DAY,
        probes in proptest::collection::vec(0.0f64..1.0, 64),
    ) {
        let zone = TimeZone::get(zone).unwrap();
        let from = Timestamp::from_second(YEAR_START + from).unwrap();
        let to = Timestamp::from_second(from.as_second() + length).unwrap();
        let spans = working_intervals(&schedule, &zone, from, to);

        for span in &spans {
            prop_assert!(span.start < span.end, "empty span {span:?}");
            prop_assert!(from <= span.start && span.end <= to, "{span:?} outside the window");
            for off in &schedule.time_off {
                prop_assert!(!span.overlaps(off), "{span:?} overlaps time off {off:?}");
            }
            // Both ends agree with the rule: the first instant works.
            prop_assert!(works_at(&schedule, &zone, span.start), "{span:?} starts off work");
        }
        for pair in spans.windows(2) {
            prop_assert!(pair[0].end < pair[1].start, "not sorted and disjoint: {pair:?}");
        }
        // Random instants of the window: inside a span exactly when the rule says so.
        for p in probes {
            let offset = (length as f64 * p) as i64;
            let t = Timestamp::from_second(from.as_second() + offset).unwrap();
            if t >= to {
                continue;
            }
            let listed = spans.iter().any(|s| s.start <= t && t < s.end);
            prop_assert_eq!(listed, works_at(&schedule, &zone, t), "at {}", t);
        }
    }
}

/// A fixed computation whose result is compared across machine time zones.
fn fingerprint() -> String {
    let schedule = Schedule {
        weekly: std::array::from_fn(|day| {
            vec![
                Interval {
                    start_minute: 8 * 60 + day as u16,
                    end_minute: 12 * 60,
                },
                Interval {
                    start_minute: 13 * 60,
                    end_minute: 18 * 60,
                },
            ]
        }),
        ..Schedule::default()
    };
    let from = Timestamp::from_second(YEAR_START).unwrap();
    let to = from + SignedDuration::from_hours(24 * 365);
    ZONES
        .iter()
        .map(|name| {
            let spans = working_intervals(&schedule, &TimeZone::get(name).unwrap(), from, to);
            let total: i64 = spans
                .iter()
                .map(|s| s.end.as_second() - s.start.as_second())
                .sum();
            format!("{name}:{}:{total}:{:?}", spans.len(), spans.first())
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Runs this very test in a child process under several `TZ` values; every child must
/// compute what this process computes.
#[test]
fn the_machines_time_zone_changes_nothing() {
    if std::env::var_os("TOPSMILE_PRINT_FINGERPRINT").is_some() {
        println!("FINGERPRINT {}", fingerprint());
        return;
    }
    let here = fingerprint();
    let exe = std::env::current_exe().unwrap();
    for tz in [
        "UTC",
        "Pacific/Kiritimati",
        "America/Adak",
        "Asia/Kathmandu",
        "Europe/Dublin",
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "the_machines_time_zone_changes_nothing",
                "--nocapture",
            ])
            .env("TZ", tz)
            .env("TOPSMILE_PRINT_FINGERPRINT", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = text
            .lines()
            .find_map(|l| l.strip_prefix("FINGERPRINT "))
            .unwrap_or_default()
            .to_owned();
        assert_eq!(theirs, here, "TZ={tz}");
    }
}
