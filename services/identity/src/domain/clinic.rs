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
}

/// The fields `UpdateClinic` may name in its mask.
pub const UPDATABLE_FIELDS: &[&str] = &["display_name", "address", "phone", "email", "time_zone"];

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
    let phone = if input.phone.trim().is_empty() {
        String::new()
    } else {
        check(validate::phone(&field("phone"), &input.phone))
    };
    let email = if input.email.trim().is_empty() {
        String::new()
    } else {
        check(validate::email(&field("email"), &input.email))
    };
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
    if violations.is_empty() {
        Ok(ClinicFields {
            display_name,
            address,
            phone,
            email,
            time_zone,
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
        }
    }

    #[test]
    fn valid_fields_are_normalised() {
        let fields = validate_fields("clinic", input()).unwrap();
        assert_eq!(fields.email, "front@sorriso.example");
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
