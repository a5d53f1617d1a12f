//! The postal address shared by clinics and patients, as the domain sees it.

use serde::{Deserialize, Serialize};
use topsmile_proto::topsmile::common::v1 as pb;

use crate::error::FieldViolation;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PostalAddress {
    pub address_lines: Vec<String>,
    pub locality: String,
    pub administrative_area: String,
    pub postal_code: String,
    pub region_code: String,
}

impl PostalAddress {
    /// Checks lengths so that no field can grow a record without bound.
    pub fn parse(field: &str, proto: pb::PostalAddress) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        if proto.address_lines.len() > 5 {
            violations.push(FieldViolation::new(
                format!("{field}.address_lines"),
                "has more than 5 lines",
            ));
        }
        let texts = [
            ("locality", &proto.locality, 100),
            ("administrative_area", &proto.administrative_area, 100),
            ("postal_code", &proto.postal_code, 20),
        ];
        for (name, value, max) in texts {
            if value.chars().count() > max {
                violations.push(FieldViolation::new(
                    format!("{field}.{name}"),
                    format!("is longer than {max} characters"),
                ));
            }
        }
        for (i, line) in proto.address_lines.iter().enumerate() {
            if line.chars().count() > 200 {
                violations.push(FieldViolation::new(
                    format!("{field}.address_lines[{i}]"),
                    "is longer than 200 characters",
                ));
            }
        }
        let region = proto.region_code.trim().to_ascii_uppercase();
        if !region.is_empty()
            && (region.len() != 2 || !region.chars().all(|c| c.is_ascii_alphabetic()))
        {
            violations.push(FieldViolation::new(
                format!("{field}.region_code"),
                "must be a two-letter CLDR region code such as \"BR\"",
            ));
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(Self {
            address_lines: proto
                .address_lines
                .into_iter()
                .map(|l| l.trim().to_owned())
                .collect(),
            locality: proto.locality.trim().to_owned(),
            administrative_area: proto.administrative_area.trim().to_owned(),
            postal_code: proto.postal_code.trim().to_owned(),
            region_code: region,
        })
    }
}

impl From<PostalAddress> for pb::PostalAddress {
    fn from(a: PostalAddress) -> Self {
        Self {
            address_lines: a.address_lines,
            locality: a.locality,
            administrative_area: a.administrative_area,
            postal_code: a.postal_code,
            region_code: a.region_code,
        }
    }
}
