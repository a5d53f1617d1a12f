//! A provider as a request describes it, and the rules that turn it into
//! [`ProviderFields`]: every problem is one field violation, all reported at once.

use std::collections::BTreeMap;

use topsmile_kit::{FieldViolation, mask::UpdatePaths, validate};

use super::{
    hours::Interval,
    provider::{ProviderFields, TimeOff},
};

/// Most intervals in one day (or one date override).
pub const MAX_INTERVALS_PER_DAY: usize = 6;
/// Most date overrides a provider keeps.
pub const MAX_OVERRIDES: usize = 400;
/// Most time-off entries a provider keeps.
pub const MAX_TIME_OFF: usize = 100;
/// Most specialties.
pub const MAX_SPECIALTIES: usize = 20;
/// The default appointment length when none is set: 30 minutes.
pub const DEFAULT_DURATION_SECS: i64 = 30 * 60;

/// The fields UpdateProvider may change (the contract's names).
pub const UPDATABLE_FIELDS: &[&str] = &[
    "display_name",
    "email",
    "phone",
    "specialties",
    "license_number",
    "user",
    "working_hours",
    "time_off",
    "date_overrides",
    "default_appointment_duration",
    "buffer_before",
    "buffer_after",
];

/// The schedule: what a PROVIDER may change on the provider linked to their own user.
pub const SCHEDULE_FIELDS: &[&str] = &[
    "working_hours",
    "time_off",
    "date_overrides",
    "default_appointment_duration",
    "buffer_before",
    "buffer_after",
];

/// Wall-clock intervals as sent: `(start_minute, end_minute)`.
pub type RawIntervals = Vec<(i32, i32)>;

/// A calendar date as sent: `(year, month, day)`.
pub type RawDate = (i32, i32, i32);

/// Raw values from a request, before the rules (the API converts proto to this).
#[derive(Debug, Clone, Default)]
pub struct ProviderInput {
    pub display_name: String,
    pub email: String,
    pub phone: String,
    pub specialties: Vec<String>,
    pub license_number: String,
    /// The linked user's id, already parsed from its name and checked with identity.
    pub user: Option<String>,
    /// `(weekday, intervals)`: weekday 1 (Monday) to 7 (Sunday), intervals as
    /// `(start_minute, end_minute)`.
    pub working_hours: Vec<(i32, RawIntervals)>,
    /// `(local date, intervals)`: the date as `(year, month, day)`.
    pub overrides: Vec<(RawDate, RawIntervals)>,
    /// `(start, end, reason)`, times as epoch milliseconds (`None`: missing or invalid).
    pub time_off: Vec<(Option<i64>, Option<i64>, String)>,
    /// Seconds; `None` when unset.
    pub default_duration_secs: Option<i64>,
    pub buffer_before_secs: Option<i64>,
    pub buffer_after_secs: Option<i64>,
}

impl ProviderInput {
    /// The stored fields as input again, so an update can merge into them and run the
    /// same rules over the result.
    pub fn from_fields(fields: &ProviderFields) -> Self {
        let raw = |hours: &[Interval]| -> RawIntervals {
            hours
                .iter()
                .map(|i| (i32::from(i.start_minute), i32::from(i.end_minute)))
                .collect()
        };
        Self {
            display_name: fields.display_name.clone(),
            email: fields.email.clone(),
            phone: fields.phone.clone(),
            specialties: fields.specialties.clone(),
            license_number: fields.license_number.clone(),
            user: fields.user.clone(),
            working_hours: fields
                .weekly
                .iter()
                .zip(1..)
                .filter(|(hours, _)| !hours.is_empty())
                .map(|(hours, day)| (day, raw(hours)))
                .collect(),
            overrides: fields
                .overrides
                .iter()
                .filter_map(|(date, hours)| {
                    let date = date.parse::<jiff::civil::Date>().ok()?;
                    let raw_date = (
                        i32::from(date.year()),
                        i32::from(date.month()),
                        i32::from(date.day()),
                    );
                    Some((raw_date, raw(hours)))
                })
                .collect(),
            time_off: fields
                .time_off
                .iter()
                .map(|t| (Some(t.start_ms), Some(t.end_ms), t.reason.clone()))
                .collect(),
            default_duration_secs: Some(fields.default_duration_secs),
            buffer_before_secs: Some(fields.buffer_before_secs),
            buffer_after_secs: Some(fields.buffer_after_secs),
        }
    }

    /// `self` (the current provider) with the fields `paths` names taken from
    /// `incoming`.
    pub fn merged(self, incoming: Self, paths: &UpdatePaths) -> Self {
        Self {
            display_name: paths.pick("display_name", self.display_name, incoming.display_name),
            email: paths.pick("email", self.email, incoming.email),
            phone: paths.pick("phone", self.phone, incoming.phone),
            specialties: paths.pick("specialties", self.specialties, incoming.specialties),
            license_number: paths.pick(
                "license_number",
                self.license_number,
                incoming.license_number,
            ),
            user: paths.pick("user", self.user, incoming.user),
            working_hours: paths.pick("working_hours", self.working_hours, incoming.working_hours),
            overrides: paths.pick("date_overrides", self.overrides, incoming.overrides),
            time_off: paths.pick("time_off", self.time_off, incoming.time_off),
            default_duration_secs: paths.pick(
                "default_appointment_duration",
                self.default_duration_secs,
                incoming.default_duration_secs,
            ),
            buffer_before_secs: paths.pick(
                "buffer_before",
                self.buffer_before_secs,
                incoming.buffer_before_secs,
            ),
            buffer_after_secs: paths.pick(
                "buffer_after",
                self.buffer_after_secs,
                incoming.buffer_after_secs,
            ),
        }
    }
}

/// One day's intervals, every problem reported: minutes outside 0..1440, an interval
/// that does not end after it starts, intervals that overlap, too many of them. The
/// valid ones come back sorted.
pub fn check_day(field: &str, intervals: &[(i32, i32)]) -> (Vec<Interval>, Vec<FieldViolation>) {
    let mut violations = Vec::new();
    if intervals.len() > MAX_INTERVALS_PER_DAY {
        violations.push(FieldViolation::new(
            field,
            format!("has more than {MAX_INTERVALS_PER_DAY} intervals"),
        ));
    }
    let mut valid: Vec<(usize, Interval)> = Vec::new();
    for (i, &(start, end)) in intervals.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if !(0..=1440).contains(&start) || !(0..=1440).contains(&end) {
            violations.push(FieldViolation::new(at, "minutes must be within 0 to 1440"));
        } else if end <= start {
            violations.push(FieldViolation::new(at, "must end after it starts"));
        } else {
            valid.push((
                i,
                Interval {
                    start_minute: u16::try_from(start).unwrap_or(0),
                    end_minute: u16::try_from(end).unwrap_or(0),
                },
            ));
        }
    }
    valid.sort_by_key(|(_, interval)| *interval);
    for pair in valid.windows(2) {
        let ((a, first), (b, second)) = (pair[0], pair[1]);
        if second.start_minute < first.end_minute {
            violations.push(FieldViolation::new(
                format!("{field}[{}]", a.max(b)),
                format!("overlaps {field}[{}]", a.min(b)),
            ));
        }
    }
    (valid.into_iter().map(|(_, i)| i).collect(), violations)
}

/// Applies every rule, each violation under `prefix` (e.g. `provider.time_off[2]`).
pub fn validate_fields(
    prefix: &str,
    input: ProviderInput,
) -> Result<ProviderFields, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    let display_name = keep(
        &mut v,
        validate::required_text(&field("display_name"), &input.display_name, 200),
    );
    let email = keep(
        &mut v,
        validate::optional_email(&field("email"), &input.email),
    );
    let phone = keep(
        &mut v,
        validate::optional_phone(&field("phone"), &input.phone),
    );
    let license_number = keep(
        &mut v,
        validate::optional_text(&field("license_number"), &input.license_number, 60),
    );
    let mut specialties = Vec::new();
    for (i, s) in input.specialties.iter().enumerate() {
        specialties.push(
            keep(
                &mut v,
                validate::required_text(&format!("{}[{i}]", field("specialties")), s, 60),
            )
            .to_lowercase(),
        );
    }
    if input.specialties.len() > MAX_SPECIALTIES {
        v.push(FieldViolation::new(
            field("specialties"),
            format!("has more than {MAX_SPECIALTIES} entries"),
        ));
    }
    specialties.retain(|s| !s.is_empty());
    specialties.sort();
    specialties.dedup();

    let mut weekly: [Vec<Interval>; 7] = Default::default();
    let mut seen_days = [false; 7];
    for (i, (day, intervals)) in input.working_hours.iter().enumerate() {
        let at = format!("{}[{i}]", field("working_hours"));
        let Some(slot) = usize::try_from(*day)
            .ok()
            .filter(|d| (1..=7).contains(d))
            .map(|d| d - 1)
        else {
            v.push(FieldViolation::new(
                format!("{at}.day"),
                "must be a weekday, MONDAY to SUNDAY",
            ));
            continue;
        };
        if std::mem::replace(&mut seen_days[slot], true) {
            v.push(FieldViolation::new(format!("{at}.day"), "is given twice"));
            continue;
        }
        let (hours, mut problems) = check_day(&format!("{at}.intervals"), intervals);
        v.append(&mut problems);
        weekly[slot] = hours;
    }

    let mut overrides = BTreeMap::new();
    if input.overrides.len() > MAX_OVERRIDES {
        v.push(FieldViolation::new(
            field("date_overrides"),
            format!("has more than {MAX_OVERRIDES} entries"),
        ));
    }
    for (i, ((year, month, day), intervals)) in input.overrides.iter().enumerate() {
        let at = format!("{}[{i}]", field("date_overrides"));
        let date = i16::try_from(*year)
            .ok()
            .zip(i8::try_from(*month).ok())
            .zip(i8::try_from(*day).ok())
            .and_then(|((y, m), d)| jiff::civil::Date::new(y, m, d).ok());
        let Some(date) = date else {
            v.push(FieldViolation::new(
                format!("{at}.date"),
                "is not a calendar date",
            ));
            continue;
        };
        let (hours, mut problems) = check_day(&format!("{at}.intervals"), intervals);
        v.append(&mut problems);
        if overrides.insert(date.to_string(), hours).is_some() {
            v.push(FieldViolation::new(format!("{at}.date"), "is given twice"));
        }
    }

    if input.time_off.len() > MAX_TIME_OFF {
        v.push(FieldViolation::new(
            field("time_off"),
            format!("has more than {MAX_TIME_OFF} entries"),
        ));
    }
    let mut time_off = Vec::new();
    for (i, (start, end, reason)) in input.time_off.iter().enumerate() {
        let at = format!("{}[{i}]", field("time_off"));
        let reason = keep(
            &mut v,
            validate::optional_text(&format!("{at}.reason"), reason, 200),
        );
        match (start, end) {
            (Some(start), Some(end)) if end > start => time_off.push(TimeOff {
                start_ms: *start,
                end_ms: *end,
                reason,
            }),
            (Some(_), Some(_)) => v.push(FieldViolation::new(
                format!("{at}.end_time"),
                "must be after start_time",
            )),
            (None, _) => v.push(FieldViolation::new(
                format!("{at}.start_time"),
                "is required (a valid time)",
            )),
            (_, None) => v.push(FieldViolation::new(
                format!("{at}.end_time"),
                "is required (a valid time)",
            )),
        }
    }

    let default_duration_secs = duration(
        &mut v,
        &field,
        "default_appointment_duration",
        input.default_duration_secs,
        DEFAULT_DURATION_SECS,
        5 * 60,
        8 * 3600,
    );
    let buffer_before_secs = duration(
        &mut v,
        &field,
        "buffer_before",
        input.buffer_before_secs,
        0,
        0,
        4 * 3600,
    );
    let buffer_after_secs = duration(
        &mut v,
        &field,
        "buffer_after",
        input.buffer_after_secs,
        0,
        0,
        4 * 3600,
    );

    if !v.is_empty() {
        return Err(v);
    }
    Ok(ProviderFields {
        display_name,
        email,
        phone,
        specialties,
        license_number,
        user: input.user,
        weekly,
        overrides,
        time_off,
        default_duration_secs,
        buffer_before_secs,
        buffer_after_secs,
    })
}

fn keep(v: &mut Vec<FieldViolation>, result: Result<String, FieldViolation>) -> String {
    result.map_err(|e| v.push(e)).unwrap_or_default()
}

/// A duration in seconds within `low..=high` and in whole minutes (offered times align
/// to whole-minute steps), `default` when unset.
fn duration(
    v: &mut Vec<FieldViolation>,
    field: &dyn Fn(&str) -> String,
    name: &str,
    value: Option<i64>,
    default: i64,
    low: i64,
    high: i64,
) -> i64 {
    let value = value.unwrap_or(default);
    if !(low..=high).contains(&value) {
        v.push(FieldViolation::new(
            field(name),
            format!("must be between {} and {} minutes", low / 60, high / 60),
        ));
    } else if value % 60 != 0 {
        v.push(FieldViolation::new(field(name), "must be whole minutes"));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(result: Result<ProviderFields, Vec<FieldViolation>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    fn good() -> ProviderInput {
        ProviderInput {
            display_name: "Dr. Ana Souza".into(),
            specialties: vec![
                "Orthodontics".into(),
                "orthodontics".into(),
                "Endodontics".into(),
            ],
            working_hours: vec![
                (1, vec![(13 * 60, 18 * 60), (8 * 60, 12 * 60)]),
                (3, vec![(8 * 60, 12 * 60)]),
            ],
            overrides: vec![((2026, 12, 24), vec![])],
            time_off: vec![(Some(1_000), Some(2_000), "conference".into())],
            ..ProviderInput::default()
        }
    }

    #[test]
    fn a_valid_provider_is_normalised() {
        let fields = validate_fields("provider", good()).unwrap();
        assert_eq!(fields.specialties, ["endodontics", "orthodontics"]);
        assert_eq!(fields.weekly[0][0].start_minute, 8 * 60, "sorted");
        assert_eq!(fields.weekly[2].len(), 1);
        assert!(
            fields.weekly[1].is_empty(),
            "an absent weekday is a day off"
        );
        assert_eq!(fields.overrides.get("2026-12-24"), Some(&Vec::new()));
        assert_eq!(fields.default_duration_secs, DEFAULT_DURATION_SECS);
    }

    #[test]
    fn every_problem_is_one_violation() {
        let bad = ProviderInput {
            display_name: " ".into(),
            working_hours: vec![
                (
                    1,
                    vec![(480, 720), (700, 800), (900, 900), (-5, 60), (600, 1441)],
                ),
                (1, vec![]),
                (9, vec![]),
            ],
            overrides: vec![((2026, 2, 30), vec![])],
            time_off: vec![(Some(2_000), Some(1_000), String::new())],
            default_duration_secs: Some(60),
            buffer_before_secs: Some(-60),
            ..ProviderInput::default()
        };
        assert_eq!(
            fields_of(validate_fields("p", bad)),
            [
                "p.display_name",
                "p.working_hours[0].intervals[2]",
                "p.working_hours[0].intervals[3]",
                "p.working_hours[0].intervals[4]",
                "p.working_hours[0].intervals[1]",
                "p.working_hours[1].day",
                "p.working_hours[2].day",
                "p.date_overrides[0].date",
                "p.time_off[0].end_time",
                "p.default_appointment_duration",
                "p.buffer_before",
            ]
        );
    }

    #[test]
    fn a_stored_provider_reads_back_as_the_same_input() {
        let fields = validate_fields("provider", good()).unwrap();
        let again = validate_fields("provider", ProviderInput::from_fields(&fields)).unwrap();
        assert_eq!(again, fields);
    }

    #[test]
    fn a_merge_takes_only_the_named_fields() {
        let current = ProviderInput::from_fields(&validate_fields("p", good()).unwrap());
        let incoming = ProviderInput {
            display_name: "Other".into(),
            buffer_after_secs: Some(600),
            ..ProviderInput::default()
        };
        let merged = current
            .clone()
            .merged(incoming, &UpdatePaths::trusted(["buffer_after"]));
        assert_eq!(merged.display_name, current.display_name);
        assert_eq!(merged.buffer_after_secs, Some(600));
        assert_eq!(merged.working_hours, current.working_hours);
    }

    #[test]
    fn durations_are_whole_minutes() {
        let odd = ProviderInput {
            default_duration_secs: Some(30 * 60 + 1),
            ..good()
        };
        assert_eq!(
            fields_of(validate_fields("p", odd)),
            ["p.default_appointment_duration"]
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let many = ProviderInput {
            working_hours: vec![(2, (0..7).map(|i| (i * 100, i * 100 + 50)).collect())],
            time_off: vec![(Some(1), Some(2), String::new()); MAX_TIME_OFF + 1],
            default_duration_secs: Some(9 * 3600),
            ..good()
        };
        assert_eq!(
            fields_of(validate_fields("p", many)),
            [
                "p.working_hours[0].intervals",
                "p.time_off",
                "p.default_appointment_duration"
            ]
        );
    }
}
