//! Resource names (AIP-122): `clinics/{clinic}` and `clinics/{clinic}/{collection}/{id}`.
//!
//! Every clinic-scoped name starts with its clinic, so tenancy is checked on the name
//! before any store is touched.

use std::fmt;

use crate::{error::FieldViolation, validate::shown};

/// The id segment of a resource name: 1 to 63 characters of `a-z`, `0-9` and `-`,
/// starting with a letter or digit (RFC 1034 style, as AIP-122 recommends).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// A fresh id: a UUIDv7, so ids sort by creation time and list pages stay stable.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn parse(value: &str) -> Option<Self> {
        let ok = (1..=63).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-');
        ok.then(|| Self(value.to_owned()))
    }

    /// Trusts a value read back from our own store.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `clinics/{clinic}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClinicName {
    pub clinic: ResourceId,
}

impl ClinicName {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        let invalid = || {
            FieldViolation::new(
                field,
                format!(
                    "{} is not a clinic name: want clinics/{{clinic}}",
                    shown(value)
                ),
            )
        };
        let mut parts = value.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("clinics"), Some(id), None) => Ok(Self {
                clinic: ResourceId::parse(id).ok_or_else(invalid)?,
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for ClinicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clinics/{}", self.clinic)
    }
}

/// `clinics/{clinic}/{collection}/{id}`, for users, patients, providers and appointments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClinicScopedName {
    pub clinic: ResourceId,
    pub collection: &'static str,
    pub id: ResourceId,
}

impl ClinicScopedName {
    pub fn parse(
        field: &str,
        collection: &'static str,
        value: &str,
    ) -> Result<Self, FieldViolation> {
        let invalid = || {
            FieldViolation::new(
                field,
                format!(
                    "{} is not a valid name: want clinics/{{clinic}}/{collection}/{{id}}",
                    shown(value)
                ),
            )
        };
        let parts: Vec<&str> = value.split('/').collect();
        match parts.as_slice() {
            ["clinics", clinic, c, id] if *c == collection => Ok(Self {
                clinic: ResourceId::parse(clinic).ok_or_else(invalid)?,
                collection,
                id: ResourceId::parse(id).ok_or_else(invalid)?,
            }),
            _ => Err(invalid()),
        }
    }

    pub fn parent(&self) -> ClinicName {
        ClinicName {
            clinic: self.clinic.clone(),
        }
    }
}

impl fmt::Display for ClinicScopedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clinics/{}/{}/{}", self.clinic, self.collection, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clinic_names_round_trip() {
        let name = ClinicName::parse("name", "clinics/0193-abc").map(|n| n.to_string());
        assert_eq!(name.as_deref(), Ok("clinics/0193-abc"));
    }

    #[test]
    fn malformed_names_are_field_violations() {
        for bad in [
            "",
            "clinics",
            "clinics/",
            "clinics/A",
            "clinic/x",
            "clinics/x/y",
            "clinics/-x",
            "clinics/a b",
        ] {
            let err = ClinicName::parse("name", bad).err();
            assert_eq!(
                err.map(|e| e.field),
                Some("name".to_owned()),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn scoped_names_check_their_collection() {
        let ok = ClinicScopedName::parse("name", "patients", "clinics/c1/patients/p1");
        assert_eq!(
            ok.map(|n| (n.clinic.to_string(), n.id.to_string())),
            Ok(("c1".into(), "p1".into()))
        );
        assert!(ClinicScopedName::parse("name", "patients", "clinics/c1/users/p1").is_err());
        assert!(ClinicScopedName::parse("name", "patients", "clinics/c1/patients/p1/x").is_err());
    }

    #[test]
    fn violations_never_echo_a_long_name_whole() {
        let long = format!("clinics/{}", "a".repeat(1 << 20));
        let clinic = ClinicName::parse("name", &long)
            .err()
            .map(|v| v.description.len());
        let scoped = ClinicScopedName::parse("name", "patients", &long)
            .err()
            .map(|v| v.description.len());
        assert!(clinic.is_some_and(|n| n < 200), "{clinic:?}");
        assert!(scoped.is_some_and(|n| n < 200), "{scoped:?}");
    }

    #[test]
    fn generated_ids_are_valid_and_ordered() {
        let a = ResourceId::generate();
        let b = ResourceId::generate();
        assert!(ResourceId::parse(a.as_str()).is_some());
        assert!(a < b);
    }
}
