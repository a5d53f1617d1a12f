//! Clinics as the domain sees them, and the rules for their fields. Pure functions over
//! plain types: no proto, no store.

use jiff::Timestamp;
use topsmile_kit::{
    FieldViolation, address::PostalAddress, mask::UpdatePaths, names::ResourceId, validate,
};

/// A clinic, the tenant every other record belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Clinic {
    pub id: ResourceId,
    pub fields: ClinicFields,
    pub is_active: bool,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Bumped by every change; the etag clients send back.
    pub version: i64,
}

/// What a client sets on a clinic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClinicFields {
    pub display_name: String,
    pub address: Option<PostalAddress>,
    pub phone: String,
    pub email: String,
    pub time_zone: String,
    pub booking_rules: BookingRules,
    pub session_rules: SessionRules,
}

/// How long a clinic's sessions last: without a refresh (idle) and at most (absolute),
/// for staff and for portal patients, in seconds (whole minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionRules {
    pub staff_idle_secs: i64,
    pub staff_lifetime_secs: i64,
    pub patient_idle_secs: i64,
    pub patient_lifetime_secs: i64,
    /// Every staff role must enrol in MFA (super admins and ADMINs always must).
    pub require_mfa_for_all_staff: bool,
    /// When that requirement was last turned on (epoch seconds; 0: never): the grace
    /// period of the users it newly covers starts here.
    pub all_staff_mfa_since: i64,
}

impl Default for SessionRules {
    /// Staff: 30 minutes idle, 12 hours at most (a working day). Patients: 30 minutes
    /// idle, 24 hours at most (a portal visit is short; its refresh keeps it going).
    fn default() -> Self {
        Self {
            staff_idle_secs: 30 * MINUTE,
            staff_lifetime_secs: 12 * HOUR,
            patient_idle_secs: 30 * MINUTE,
            patient_lifetime_secs: 24 * HOUR,
            require_mfa_for_all_staff: false,
            all_staff_mfa_since: 0,
        }
    }
}

/// The bounds of [`SessionRules`]: idle 5 minutes to 24 hours, lifetime 1 hour to 30
/// days, and idle no longer than the lifetime.
pub const SESSION_IDLE_RANGE: (i64, i64) = (5 * MINUTE, DAY);
pub const SESSION_LIFETIME_RANGE: (i64, i64) = (HOUR, 30 * DAY);

impl SessionRules {
    /// (idle, lifetime) for sessions of `kind`.
    pub fn of(&self, kind: topsmile_kit::auth::Kind) -> (i64, i64) {
        match kind {
            topsmile_kit::auth::Kind::Patient => {
                (self.patient_idle_secs, self.patient_lifetime_secs)
            }
            _ => (self.staff_idle_secs, self.staff_lifetime_secs),
        }
    }
}

/// The fields `UpdateClinic` may name in its mask.
pub const UPDATABLE_FIELDS: &[&str] = &[
    "display_name",
    "address",
    "phone",
    "email",
    "time_zone",
    "booking_rules",
    "session_rules",
];

/// When and how a clinic's appointments may be booked, in seconds (whole minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BookingRules {
    pub minimum_notice_secs: i64,
    pub booking_horizon_secs: i64,
    pub slot_step_secs: i64,
    pub patient_change_cutoff_secs: i64,
    /// A portal patient's active appointments still to come, at most.
    pub patient_active_limit: i64,
    /// A portal patient's own bookings per day (the clinic's), at most.
    pub patient_daily_limit: i64,
}

/// The bounds of the patient limits: 1 to 50.
pub const PATIENT_LIMIT_RANGE: (i64, i64) = (1, 50);

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

impl Default for BookingRules {
    /// 2 hours' notice, a year ahead (six-month recall visits are booked at the previous
    /// visit), 15-minute steps, patients change until 24 hours before; a portal patient
    /// holds at most 3 upcoming appointments and books at most 5 a day.
    fn default() -> Self {
        Self {
            minimum_notice_secs: 2 * HOUR,
            booking_horizon_secs: 365 * DAY,
            slot_step_secs: 15 * MINUTE,
            patient_change_cutoff_secs: DAY,
            patient_active_limit: 3,
            patient_daily_limit: 5,
        }
    }
}

/// Booking rules as a request sends them: each `(seconds, nanos)`, or unset (default).
#[derive(Debug, Clone, Copy, Default)]
pub struct BookingRulesInput {
    pub minimum_notice: Option<(i64, i32)>,
    pub booking_horizon: Option<(i64, i32)>,
    pub slot_step: Option<(i64, i32)>,
    pub patient_change_cutoff: Option<(i64, i32)>,
    pub patient_active_limit: Option<i64>,
    pub patient_daily_limit: Option<i64>,
}

impl From<BookingRules> for BookingRulesInput {
    fn from(r: BookingRules) -> Self {
        Self {
            minimum_notice: Some((r.minimum_notice_secs, 0)),
            booking_horizon: Some((r.booking_horizon_secs, 0)),
            slot_step: Some((r.slot_step_secs, 0)),
            patient_change_cutoff: Some((r.patient_change_cutoff_secs, 0)),
            patient_active_limit: Some(r.patient_active_limit),
            patient_daily_limit: Some(r.patient_daily_limit),
        }
    }
}

/// Checks each rule (whole minutes, within its range) and the ones between them;
/// unset rules take their defaults.
pub fn booking_rules(
    prefix: &str,
    input: BookingRulesInput,
) -> Result<BookingRules, Vec<FieldViolation>> {
    let defaults = BookingRules::default();
    let mut violations = Vec::new();
    let mut rule = |name: &str, value: Option<(i64, i32)>, default: i64, low: i64, high: i64| {
        minutes_rule(&mut violations, prefix, name, value, default, (low, high))
    };
    let rules = BookingRules {
        minimum_notice_secs: rule(
            "minimum_notice",
            input.minimum_notice,
            defaults.minimum_notice_secs,
            0,
            30 * DAY,
        ),
        booking_horizon_secs: rule(
            "booking_horizon",
            input.booking_horizon,
            defaults.booking_horizon_secs,
            DAY,
            730 * DAY,
        ),
        slot_step_secs: rule(
            "slot_step",
            input.slot_step,
            defaults.slot_step_secs,
            5 * MINUTE,
            4 * HOUR,
        ),
        patient_change_cutoff_secs: rule(
            "patient_change_cutoff",
            input.patient_change_cutoff,
            defaults.patient_change_cutoff_secs,
            0,
            30 * DAY,
        ),
        patient_active_limit: count_rule(
            &mut violations,
            prefix,
            "patient_active_limit",
            input.patient_active_limit,
            defaults.patient_active_limit,
        ),
        patient_daily_limit: count_rule(
            &mut violations,
            prefix,
            "patient_daily_limit",
            input.patient_daily_limit,
            defaults.patient_daily_limit,
        ),
    };
    if violations.is_empty() && DAY % rules.slot_step_secs.max(1) != 0 {
        violations.push(FieldViolation::new(
            format!("{prefix}.slot_step"),
            "must divide a day evenly (e.g. 5, 10, 15, 20, 30 or 60 minutes)",
        ));
    }
    if violations.is_empty() && rules.booking_horizon_secs <= rules.minimum_notice_secs {
        violations.push(FieldViolation::new(
            format!("{prefix}.booking_horizon"),
            "must be longer than the minimum notice",
        ));
    }
    if violations.is_empty() {
        Ok(rules)
    } else {
        Err(violations)
    }
}

/// Session rules as a request sends them: each `(seconds, nanos)`, or unset (default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionRulesInput {
    pub staff_idle_timeout: Option<(i64, i32)>,
    pub staff_lifetime: Option<(i64, i32)>,
    pub patient_idle_timeout: Option<(i64, i32)>,
    pub patient_lifetime: Option<(i64, i32)>,
    pub require_mfa_for_all_staff: bool,
    /// Carried over from the stored rules (output only).
    pub all_staff_mfa_since: i64,
}

impl From<SessionRules> for SessionRulesInput {
    fn from(r: SessionRules) -> Self {
        Self {
            staff_idle_timeout: Some((r.staff_idle_secs, 0)),
            staff_lifetime: Some((r.staff_lifetime_secs, 0)),
            patient_idle_timeout: Some((r.patient_idle_secs, 0)),
            patient_lifetime: Some((r.patient_lifetime_secs, 0)),
            require_mfa_for_all_staff: r.require_mfa_for_all_staff,
            all_staff_mfa_since: r.all_staff_mfa_since,
        }
    }
}

/// Checks each session rule (whole minutes, within [`SESSION_IDLE_RANGE`] or
/// [`SESSION_LIFETIME_RANGE`], idle no longer than the lifetime); unset rules take
/// their defaults.
pub fn session_rules(
    prefix: &str,
    input: SessionRulesInput,
) -> Result<SessionRules, Vec<FieldViolation>> {
    let defaults = SessionRules::default();
    let mut violations = Vec::new();
    let (idle_low, idle_high) = SESSION_IDLE_RANGE;
    let (life_low, life_high) = SESSION_LIFETIME_RANGE;
    let mut rule = |name: &str, value: Option<(i64, i32)>, default: i64, low: i64, high: i64| {
        minutes_rule(&mut violations, prefix, name, value, default, (low, high))
    };
    let rules = SessionRules {
        staff_idle_secs: rule(
            "staff_idle_timeout",
            input.staff_idle_timeout,
            defaults.staff_idle_secs,
            idle_low,
            idle_high,
        ),
        staff_lifetime_secs: rule(
            "staff_lifetime",
            input.staff_lifetime,
            defaults.staff_lifetime_secs,
            life_low,
            life_high,
        ),
        patient_idle_secs: rule(
            "patient_idle_timeout",
            input.patient_idle_timeout,
            defaults.patient_idle_secs,
            idle_low,
            idle_high,
        ),
        patient_lifetime_secs: rule(
            "patient_lifetime",
            input.patient_lifetime,
            defaults.patient_lifetime_secs,
            life_low,
            life_high,
        ),
        require_mfa_for_all_staff: input.require_mfa_for_all_staff,
        all_staff_mfa_since: input.all_staff_mfa_since,
    };
    for (idle, lifetime, field) in [
        (
            rules.staff_idle_secs,
            rules.staff_lifetime_secs,
            "staff_idle_timeout",
        ),
        (
            rules.patient_idle_secs,
            rules.patient_lifetime_secs,
            "patient_idle_timeout",
        ),
    ] {
        if violations.is_empty() && idle > lifetime {
            violations.push(FieldViolation::new(
                format!("{prefix}.{field}"),
                "must not be longer than the lifetime",
            ));
        }
    }
    if violations.is_empty() {
        Ok(rules)
    } else {
        Err(violations)
    }
}

/// One count rule, within [`PATIENT_LIMIT_RANGE`]; unset is `default`.
fn count_rule(
    violations: &mut Vec<FieldViolation>,
    prefix: &str,
    name: &str,
    value: Option<i64>,
    default: i64,
) -> i64 {
    let Some(value) = value else {
        return default;
    };
    let (low, high) = PATIENT_LIMIT_RANGE;
    if !(low..=high).contains(&value) {
        violations.push(FieldViolation::new(
            format!("{prefix}.{name}"),
            format!("must be between {low} and {high}"),
        ));
    }
    value
}

/// One duration rule: whole minutes within `(low, high)`; unset is `default`.
fn minutes_rule(
    violations: &mut Vec<FieldViolation>,
    prefix: &str,
    name: &str,
    value: Option<(i64, i32)>,
    default: i64,
    (low, high): (i64, i64),
) -> i64 {
    let Some((seconds, nanos)) = value else {
        return default;
    };
    let field = format!("{prefix}.{name}");
    if nanos != 0 || seconds % MINUTE != 0 {
        violations.push(FieldViolation::new(
            field,
            "must be a whole number of minutes",
        ));
    } else if !(low..=high).contains(&seconds) {
        violations.push(FieldViolation::new(
            field,
            format!(
                "must be between {} and {} minutes",
                low / MINUTE,
                high / MINUTE
            ),
        ));
    }
    seconds
}

impl Clinic {
    pub fn new(fields: ClinicFields, now: Timestamp) -> Self {
        Self {
            id: ResourceId::generate(),
            fields,
            is_active: true,
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    /// Whether a client's etag names this version. Anything unparseable simply doesn't.
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }

    /// The next version of this clinic: new fields, new time, version + 1.
    pub fn changed(&self, fields: ClinicFields, is_active: bool, now: Timestamp) -> Self {
        Self {
            id: self.id.clone(),
            fields,
            is_active,
            create_time: self.create_time,
            update_time: now,
            version: self.version + 1,
        }
    }
}

/// Raw field values from a request, before the rules.
#[derive(Debug, Clone, Default)]
pub struct ClinicInput {
    pub display_name: String,
    pub address: Option<topsmile_proto::topsmile::common::v1::PostalAddress>,
    pub phone: String,
    pub email: String,
    pub time_zone: String,
    /// Unset: the defaults.
    pub booking_rules: Option<BookingRulesInput>,
    /// Unset: the defaults.
    pub session_rules: Option<SessionRulesInput>,
}

/// Applies the rules to every field and reports every violation at once, each under
/// `prefix` (e.g. `clinic.time_zone`).
pub fn validate_fields(
    prefix: &str,
    input: ClinicInput,
) -> Result<ClinicFields, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    let mut check = |result: Result<String, FieldViolation>| {
        result.map_err(|v| violations.push(v)).unwrap_or_default()
    };
    let display_name = check(validate::required_text(
        &field("display_name"),
        &input.display_name,
        200,
    ));
    let phone = check(validate::optional_phone(&field("phone"), &input.phone));
    let email = check(validate::optional_email(&field("email"), &input.email));
    let time_zone = check(time_zone(&field("time_zone"), &input.time_zone));
    let address = match input.address {
        None => None,
        Some(a) => match PostalAddress::parse(&field("address"), a) {
            Ok(a) => Some(a),
            Err(mut v) => {
                violations.append(&mut v);
                None
            }
        },
    };
    let booking_rules = booking_rules(
        &field("booking_rules"),
        input.booking_rules.unwrap_or_default(),
    )
    .map_err(|mut v| violations.append(&mut v))
    .unwrap_or_default();
    let session_rules = session_rules(
        &field("session_rules"),
        input.session_rules.unwrap_or_default(),
    )
    .map_err(|mut v| violations.append(&mut v))
    .unwrap_or_default();
    if violations.is_empty() {
        Ok(ClinicFields {
            display_name,
            address,
            phone,
            email,
            time_zone,
            booking_rules,
            session_rules,
        })
    } else {
        Err(violations)
    }
}

/// An IANA time zone name, as the kit checks it (canonical spelling only).
pub fn time_zone(field: &str, value: &str) -> Result<String, FieldViolation> {
    topsmile_kit::validate::time_zone(field, value)
}

/// `current` with the fields the update applies taken from `incoming` (see
/// [`UpdatePaths`]: an empty mask means every field set in the request).
pub fn apply_mask(
    current: &ClinicFields,
    incoming: ClinicInput,
    paths: &UpdatePaths,
) -> ClinicInput {
    ClinicInput {
        display_name: paths.pick(
            "display_name",
            current.display_name.clone(),
            incoming.display_name,
        ),
        address: paths.pick(
            "address",
            current.address.clone().map(Into::into),
            incoming.address,
        ),
        phone: paths.pick("phone", current.phone.clone(), incoming.phone),
        email: paths.pick("email", current.email.clone(), incoming.email),
        time_zone: paths.pick("time_zone", current.time_zone.clone(), incoming.time_zone),
        booking_rules: paths.pick(
            "booking_rules",
            Some(current.booking_rules.into()),
            incoming.booking_rules,
        ),
        session_rules: paths.pick(
            "session_rules",
            Some(current.session_rules.into()),
            incoming.session_rules,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ClinicInput {
        ClinicInput {
            display_name: "Sorriso Centro".into(),
            phone: "+55 11 5555-0100".into(),
            email: "Front@Sorriso.example".into(),
            time_zone: "America/Sao_Paulo".into(),
            address: None,
            booking_rules: None,
            session_rules: None,
        }
    }

    #[test]
    fn session_rules_take_defaults_and_stay_in_range() {
        let defaults = session_rules("r", SessionRulesInput::default()).unwrap();
        assert_eq!(defaults, SessionRules::default());
        assert_eq!(
            defaults.of(topsmile_kit::auth::Kind::Staff),
            (1800, 12 * 3600)
        );
        let bad = session_rules(
            "r",
            SessionRulesInput {
                staff_idle_timeout: Some((60, 0)),
                staff_lifetime: Some((31 * 86_400, 0)),
                patient_idle_timeout: Some((90, 0)),
                patient_lifetime: None,
                ..Default::default()
            },
        )
        .unwrap_err();
        let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.staff_idle_timeout",
                "r.staff_lifetime",
                "r.patient_idle_timeout"
            ]
        );
        let longer = session_rules(
            "r",
            SessionRulesInput {
                staff_idle_timeout: Some((3 * 3600, 0)),
                staff_lifetime: Some((2 * 3600, 0)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(longer[0].field, "r.staff_idle_timeout");
    }

    #[test]
    fn valid_fields_are_normalised() {
        let fields = validate_fields("clinic", input()).unwrap();
        assert_eq!(fields.email, "front@sorriso.example");
        assert_eq!(fields.booking_rules, BookingRules::default());
    }

    #[test]
    fn booking_rules_take_defaults_and_stay_in_range() {
        let minutes = |m: i64| Some((m * 60, 0));
        let rules = booking_rules(
            "r",
            BookingRulesInput {
                slot_step: minutes(30),
                minimum_notice: minutes(60),
                ..BookingRulesInput::default()
            },
        )
        .unwrap();
        assert_eq!(rules.slot_step_secs, 1800);
        assert_eq!(rules.minimum_notice_secs, 3600);
        assert_eq!(
            rules.booking_horizon_secs,
            BookingRules::default().booking_horizon_secs
        );
        let bad = |input: BookingRulesInput| -> Vec<String> {
            booking_rules("r", input)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.field)
                .collect()
        };
        // 7 minutes does not divide a day; 90 seconds is not whole minutes; 3 minutes is
        // below the smallest step; a horizon shorter than the notice is refused.
        assert_eq!(
            bad(BookingRulesInput {
                slot_step: minutes(7),
                ..Default::default()
            }),
            ["r.slot_step"]
        );
        assert_eq!(
            bad(BookingRulesInput {
                slot_step: Some((90, 0)),
                ..Default::default()
            }),
            ["r.slot_step"]
        );
        assert_eq!(
            bad(BookingRulesInput {
                slot_step: minutes(3),
                ..Default::default()
            }),
            ["r.slot_step"]
        );
        assert_eq!(
            bad(BookingRulesInput {
                minimum_notice: minutes(3 * 24 * 60),
                booking_horizon: minutes(2 * 24 * 60),
                ..Default::default()
            }),
            ["r.booking_horizon"]
        );
        assert_eq!(
            bad(BookingRulesInput {
                patient_change_cutoff: Some((-60, 0)),
                ..Default::default()
            }),
            ["r.patient_change_cutoff"]
        );
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let bad = ClinicInput {
            display_name: " ".into(),
            time_zone: "Mars/Olympus".into(),
            email: "nope".into(),
            ..input()
        };
        let fields: Vec<String> = validate_fields("clinic", bad)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            ["clinic.display_name", "clinic.email", "clinic.time_zone"]
        );
    }

    #[test]
    fn mask_keeps_unnamed_fields() {
        let current = validate_fields("clinic", input()).unwrap();
        let incoming = ClinicInput {
            display_name: "New".into(),
            phone: "+1 555 0100 22".into(),
            ..Default::default()
        };
        let merged = apply_mask(&current, incoming, &UpdatePaths::trusted(["display_name"]));
        assert_eq!(merged.display_name, "New");
        assert_eq!(merged.phone, "+55 11 5555-0100");
    }
}
