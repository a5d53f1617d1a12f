//! Patients as the domain sees them: fields, their rules, the search forms of names and
//! phones, and update masks. Pure functions over plain types: no proto, no store.

pub mod history;

use jiff::{Timestamp, civil::Date};
use topsmile_kit::{
    FieldViolation, address::PostalAddress, mask::UpdatePaths, names::ResourceId, validate,
};

/// A patient of one clinic.
#[derive(Debug, Clone, PartialEq)]
pub struct Patient {
    pub id: ResourceId,
    pub clinic: ResourceId,
    pub fields: PatientFields,
    pub is_active: bool,
    /// The portal password (argon2id PHC), once staff enabled portal access.
    pub password_hash: Option<String>,
    /// When the portal password was last set (epoch ms; 0: never): portal sessions that
    /// began earlier end at their next refresh ...
    pub password_set_ms: i64,
    /// ... except this one, the patient's own session that changed it.
    pub password_kept_session: String,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Bumped by every change; the etag clients send back.
    pub version: i64,
}

/// What staff set on a patient.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatientFields {
    pub given_name: String,
    pub family_name: String,
    /// Lower-cased; unique among active patients.
    pub email: Option<String>,
    pub phone: String,
    pub date_of_birth: Option<Date>,
    pub address: Option<PostalAddress>,
}

impl topsmile_kit::signin::Account for Patient {
    fn id(&self) -> &str {
        self.id.as_str()
    }

    fn password_hash(&self) -> Option<&str> {
        self.password_hash.as_deref()
    }

    fn may_sign_in(&self) -> bool {
        self.is_active
    }
}

impl Patient {
    /// Whether a portal session that began at `session_start_ms` may go on.
    pub fn portal_session_allowed(&self, session: &str, session_start_ms: i64) -> bool {
        self.is_active
            && self.password_hash.is_some()
            && (session_start_ms >= self.password_set_ms
                || (!session.is_empty() && session == self.password_kept_session))
    }

    pub fn new(clinic: ResourceId, fields: PatientFields, now: Timestamp) -> Self {
        Self {
            id: ResourceId::generate(),
            clinic,
            fields,
            is_active: true,
            password_hash: None,
            password_set_ms: 0,
            password_kept_session: String::new(),
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    pub fn name(&self) -> String {
        format!("clinics/{}/patients/{}", self.clinic, self.id)
    }

    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }

    pub fn has_portal_access(&self) -> bool {
        self.password_hash.is_some()
    }

    /// The next version: new fields, activity, time; version + 1.
    pub fn changed(&self, fields: PatientFields, is_active: bool, now: Timestamp) -> Self {
        Self {
            fields,
            is_active,
            update_time: now,
            version: self.version + 1,
            ..self.clone()
        }
    }

    /// Every word-start suffix of the folded name: "José Álvarez" ->
    /// ["jose alvarez", "alvarez"]. A prefix search over these finds a patient by the
    /// start of any of their names, or of several in a row ("jose alv").
    pub fn search_terms(&self) -> Vec<String> {
        let folded = search_name(&self.fields.given_name, &self.fields.family_name);
        let words: Vec<&str> = folded.split(' ').filter(|w| !w.is_empty()).collect();
        (0..words.len()).map(|i| words[i..].join(" ")).collect()
    }

    /// The phone's digits, for search by phone however it was typed.
    pub fn phone_digits(&self) -> String {
        digits(&self.fields.phone)
    }
}

/// The digits of a phone number as typed.
pub fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// The fields `UpdatePatient` may name in its mask.
pub const UPDATABLE_FIELDS: &[&str] = &[
    "given_name",
    "family_name",
    "email",
    "phone",
    "date_of_birth",
    "address",
];

/// The fields a patient may change on their own record: how to reach them.
pub const CONTACT_FIELDS: &[&str] = &["email", "phone", "address"];

/// Raw field values from a request, before the rules.
#[derive(Debug, Clone, Default)]
pub struct PatientInput {
    pub given_name: String,
    pub family_name: String,
    pub email: String,
    pub phone: String,
    /// (year, month, day) as sent; all zero when absent.
    pub date_of_birth: Option<(i32, i32, i32)>,
    pub address: Option<topsmile_proto::topsmile::common::v1::PostalAddress>,
}

/// Applies the rules to every field and reports every violation at once, each under
/// `prefix` (e.g. `patient.email`). `today` bounds the date of birth.
pub fn validate_fields(
    prefix: &str,
    input: PatientInput,
    today: Date,
) -> Result<PatientFields, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    let mut check = |result: Result<String, FieldViolation>| {
        result.map_err(|v| violations.push(v)).unwrap_or_default()
    };
    let given_name = check(validate::required_text(
        &field("given_name"),
        &input.given_name,
        100,
    ));
    let family_name = check(validate::required_text(
        &field("family_name"),
        &input.family_name,
        100,
    ));
    let email = if input.email.trim().is_empty() {
        None
    } else {
        Some(check(validate::email(&field("email"), &input.email)))
    };
    let phone = if input.phone.trim().is_empty() {
        String::new()
    } else {
        check(validate::phone(&field("phone"), &input.phone))
    };
    let date_of_birth = match input.date_of_birth {
        None | Some((0, 0, 0)) => None,
        Some((y, m, d)) => match birth_date(&field("date_of_birth"), y, m, d, today) {
            Ok(date) => Some(date),
            Err(v) => {
                violations.push(v);
                None
            }
        },
    };
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
    if violations.is_empty() {
        Ok(PatientFields {
            given_name,
            family_name,
            email,
            phone,
            date_of_birth,
            address,
        })
    } else {
        Err(violations)
    }
}

/// A real calendar date, not in the future and not before 1900.
fn birth_date(
    field: &str,
    year: i32,
    month: i32,
    day: i32,
    today: Date,
) -> Result<Date, FieldViolation> {
    let date = i16::try_from(year)
        .ok()
        .zip(i8::try_from(month).ok())
        .zip(i8::try_from(day).ok())
        .and_then(|((y, m), d)| Date::new(y, m, d).ok())
        .ok_or_else(|| {
            FieldViolation::new(
                field,
                format!("{year:04}-{month:02}-{day:02} is not a calendar date"),
            )
        })?;
    if date > today {
        return Err(FieldViolation::new(field, "is in the future"));
    }
    if date.year() < 1900 {
        return Err(FieldViolation::new(field, "is before 1900"));
    }
    Ok(date)
}

/// The input form of stored fields (to merge an update into).
pub fn input_of(fields: &PatientFields) -> PatientInput {
    PatientInput {
        given_name: fields.given_name.clone(),
        family_name: fields.family_name.clone(),
        email: fields.email.clone().unwrap_or_default(),
        phone: fields.phone.clone(),
        date_of_birth: fields.date_of_birth.map(|d| {
            (
                i32::from(d.year()),
                i32::from(d.month()),
                i32::from(d.day()),
            )
        }),
        address: fields.address.clone().map(Into::into),
    }
}

/// `current` with the fields the update applies taken from `incoming` (an empty mask
/// means every field set in the request: see [`UpdatePaths`]).
pub fn apply_mask(
    current: PatientInput,
    incoming: PatientInput,
    paths: &UpdatePaths,
) -> PatientInput {
    PatientInput {
        given_name: paths.pick("given_name", current.given_name, incoming.given_name),
        family_name: paths.pick("family_name", current.family_name, incoming.family_name),
        email: paths.pick("email", current.email, incoming.email),
        phone: paths.pick("phone", current.phone, incoming.phone),
        date_of_birth: paths.pick(
            "date_of_birth",
            current.date_of_birth,
            incoming.date_of_birth,
        ),
        address: paths.pick("address", current.address, incoming.address),
    }
}

/// What a patient list selects (always within one clinic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientQuery {
    /// Folded prefix of any name word (see [`Patient::search_terms`]).
    pub name_prefix: Option<String>,
    /// Digits of the phone.
    pub phone_digits: Option<String>,
    /// Normalised email.
    pub email: Option<String>,
    pub include_inactive: bool,
}

impl PatientQuery {
    /// The query's parts, for binding page tokens to it.
    pub fn fingerprint(&self) -> Vec<String> {
        vec![
            self.name_prefix.clone().unwrap_or_default(),
            self.phone_digits.clone().unwrap_or_default(),
            self.email.clone().unwrap_or_default(),
            self.include_inactive.to_string(),
        ]
    }
}

/// The smallest string greater than every string that starts with `prefix`: the upper
/// bound of a prefix range scan (`term >= prefix AND term < upper`).
pub fn prefix_upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_owned();
    upper.push(char::MAX);
    upper
}

/// The form of a name that name search matches against: lower case, common Latin
/// accents folded ("José Álvarez" -> "jose alvarez"), words separated by one space. A
/// receptionist types "jose" and finds "José".
pub fn search_name(given: &str, family: &str) -> String {
    let folded: String = format!("{given} {family}")
        .chars()
        .map(fold)
        .collect::<String>()
        .to_lowercase();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fold(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'Á' | 'À' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'É' | 'È' | 'Ê' | 'Ë' => 'E',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
        'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
        'ç' => 'c',
        'Ç' => 'C',
        'ñ' => 'n',
        'Ñ' => 'N',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(given: &str, family: &str) -> Patient {
        let fields = PatientFields {
            given_name: given.into(),
            family_name: family.into(),
            ..PatientFields::default()
        };
        Patient::new(ResourceId::generate(), fields, Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn search_terms_start_at_every_word() {
        assert_eq!(
            patient("José", "Álvarez da Silva").search_terms(),
            vec![
                "jose alvarez da silva",
                "alvarez da silva",
                "da silva",
                "silva"
            ]
        );
    }

    #[test]
    fn dates_of_birth_must_be_real_and_past() {
        let today = Date::constant(2026, 11, 29);
        let check = |y, m, d| {
            validate_fields(
                "p",
                PatientInput {
                    given_name: "A".into(),
                    family_name: "B".into(),
                    date_of_birth: Some((y, m, d)),
                    ..PatientInput::default()
                },
                today,
            )
        };
        assert!(check(1990, 2, 28).is_ok());
        assert!(check(1990, 2, 30).is_err(), "impossible");
        assert!(check(2027, 1, 1).is_err(), "future");
        assert!(check(1850, 1, 1).is_err(), "too old");
        assert_eq!(check(1990, 13, 1).unwrap_err()[0].field, "p.date_of_birth");
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let err = validate_fields(
            "patient",
            PatientInput {
                email: "nope".into(),
                phone: "12".into(),
                ..PatientInput::default()
            },
            Date::constant(2026, 1, 1),
        )
        .unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "patient.given_name",
                "patient.family_name",
                "patient.email",
                "patient.phone"
            ]
        );
    }

    #[test]
    fn accents_and_case_are_folded() {
        assert_eq!(search_name("José", "Álvarez"), "jose alvarez");
        assert_eq!(
            search_name("  MARIA  da", "Conceição "),
            "maria da conceicao"
        );
    }
}
