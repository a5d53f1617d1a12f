//! Medical history: the clinical content, its rules, and update masks.
//!
//! A history is never overwritten silently: each update names the version it read
//! (etag) and keeps the version it replaces as a revision.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use topsmile_kit::{FieldViolation, mask::UpdatePaths};

/// How bad an allergic reaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Moderate,
    Severe,
    LifeThreatening,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allergy {
    pub allergen: String,
    pub reaction: String,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Medication {
    pub name: String,
    pub dosage: String,
    pub frequency: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Surgery {
    pub procedure: String,
    pub when: String,
    pub notes: String,
}

/// Tobacco and alcohol use, as the contract's enum names without their prefix
/// (`NEVER`, `CURRENT`, ...); empty when not recorded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SocialHistory {
    pub tobacco: String,
    pub alcohol: String,
    pub notes: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VitalSigns {
    pub blood_pressure_systolic: i32,
    pub blood_pressure_diastolic: i32,
    pub heart_rate_bpm: i32,
    pub temperature_celsius: f64,
    pub weight_kg: f64,
    pub height_cm: f64,
    pub measured_at_ms: Option<i64>,
}

/// The clinical content of a medical history.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HistoryContent {
    pub chief_complaint: String,
    pub allergies: Vec<Allergy>,
    pub medications: Vec<Medication>,
    pub chronic_conditions: Vec<String>,
    pub surgical_history: Vec<Surgery>,
    pub social_history: Option<SocialHistory>,
    pub vital_signs: Option<VitalSigns>,
    pub notes: String,
}

/// One version of a patient's history: the current one, or a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryVersion {
    pub content: HistoryContent,
    /// Who recorded it (from their token).
    pub recorded_by: String,
    pub update_time_ms: i64,
    /// 1 for the first recorded version; 0 means nothing recorded yet.
    pub version: i64,
}

impl HistoryVersion {
    /// What a patient without a recorded history has: nothing, version 0.
    pub fn empty() -> Self {
        Self {
            content: HistoryContent::default(),
            recorded_by: String::new(),
            update_time_ms: 0,
            version: 0,
        }
    }

    pub fn update_time(&self) -> Option<Timestamp> {
        (self.version > 0).then(|| topsmile_kit::time::from_millis(self.update_time_ms))
    }

    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }
}

/// The fields `UpdateMedicalHistory` may name in its mask.
pub const UPDATABLE_FIELDS: &[&str] = &[
    "chief_complaint",
    "allergies",
    "medications",
    "chronic_conditions",
    "surgical_history",
    "social_history",
    "vital_signs",
    "notes",
];

/// `current` with the fields the update applies taken from `incoming` (an empty mask
/// means every field set in the request: see [`UpdatePaths`]). Clearing a field takes
/// naming it in the mask.
pub fn apply_mask(
    current: &HistoryContent,
    incoming: HistoryContent,
    paths: &UpdatePaths,
) -> HistoryContent {
    let c = current.clone();
    HistoryContent {
        chief_complaint: paths.pick(
            "chief_complaint",
            c.chief_complaint,
            incoming.chief_complaint,
        ),
        allergies: paths.pick("allergies", c.allergies, incoming.allergies),
        medications: paths.pick("medications", c.medications, incoming.medications),
        chronic_conditions: paths.pick(
            "chronic_conditions",
            c.chronic_conditions,
            incoming.chronic_conditions,
        ),
        surgical_history: paths.pick(
            "surgical_history",
            c.surgical_history,
            incoming.surgical_history,
        ),
        social_history: paths.pick("social_history", c.social_history, incoming.social_history),
        vital_signs: paths.pick("vital_signs", c.vital_signs, incoming.vital_signs),
        notes: paths.pick("notes", c.notes, incoming.notes),
    }
}

/// The largest a version of a history may be, encoded: 512 KiB. With every list at
/// most 100 entries and every text bounded, a real history stays far below it; the
/// bound keeps the head document (current and previous version) small and a page of
/// revisions predictable.
pub const MAX_VERSION_BYTES: usize = 512 * 1024;

/// Checks lengths, required parts, characters and plausible vital signs, and the size
/// of the whole version; reports every problem.
pub fn validate(prefix: &str, c: &HistoryContent) -> Result<(), Vec<FieldViolation>> {
    let mut v = Vec::new();
    let mut text = |field: String, value: &str, max: usize, required: bool| {
        if required && value.trim().is_empty() {
            v.push(FieldViolation::new(field, "is required"));
        } else if value.chars().count() > max {
            v.push(FieldViolation::new(
                field,
                format!("is longer than {max} characters"),
            ));
        } else if value
            .chars()
            .any(|ch| ch.is_control() && ch != '\n' && ch != '\t')
        {
            v.push(FieldViolation::new(
                field,
                "contains control characters (only newline and tab are allowed)",
            ));
        }
    };
    text(
        format!("{prefix}.chief_complaint"),
        &c.chief_complaint,
        2000,
        false,
    );
    text(format!("{prefix}.notes"), &c.notes, 10_000, false);
    for (i, a) in c.allergies.iter().enumerate() {
        text(
            format!("{prefix}.allergies[{i}].allergen"),
            &a.allergen,
            200,
            true,
        );
        text(
            format!("{prefix}.allergies[{i}].reaction"),
            &a.reaction,
            500,
            false,
        );
    }
    for (i, m) in c.medications.iter().enumerate() {
        text(
            format!("{prefix}.medications[{i}].name"),
            &m.name,
            200,
            true,
        );
        text(
            format!("{prefix}.medications[{i}].dosage"),
            &m.dosage,
            200,
            false,
        );
        text(
            format!("{prefix}.medications[{i}].frequency"),
            &m.frequency,
            200,
            false,
        );
    }
    for (i, condition) in c.chronic_conditions.iter().enumerate() {
        text(
            format!("{prefix}.chronic_conditions[{i}]"),
            condition,
            200,
            true,
        );
    }
    for (i, s) in c.surgical_history.iter().enumerate() {
        text(
            format!("{prefix}.surgical_history[{i}].procedure"),
            &s.procedure,
            200,
            true,
        );
        text(
            format!("{prefix}.surgical_history[{i}].when"),
            &s.when,
            100,
            false,
        );
        text(
            format!("{prefix}.surgical_history[{i}].notes"),
            &s.notes,
            2000,
            false,
        );
    }
    if let Some(social) = &c.social_history {
        text(
            format!("{prefix}.social_history.notes"),
            &social.notes,
            2000,
            false,
        );
    }
    for (name, len) in [
        ("allergies", c.allergies.len()),
        ("medications", c.medications.len()),
        ("chronic_conditions", c.chronic_conditions.len()),
        ("surgical_history", c.surgical_history.len()),
    ] {
        if len > 100 {
            v.push(FieldViolation::new(
                format!("{prefix}.{name}"),
                "has more than 100 entries",
            ));
        }
    }
    if let Some(vs) = &c.vital_signs {
        let mut range = |field: &str, value: f64, low: f64, high: f64| {
            if value != 0.0 && !(low..=high).contains(&value) {
                v.push(FieldViolation::new(
                    format!("{prefix}.vital_signs.{field}"),
                    format!("must be between {low} and {high} (or unset)"),
                ));
            }
        };
        range(
            "blood_pressure_systolic",
            f64::from(vs.blood_pressure_systolic),
            50.0,
            300.0,
        );
        range(
            "blood_pressure_diastolic",
            f64::from(vs.blood_pressure_diastolic),
            20.0,
            200.0,
        );
        range("heart_rate_bpm", f64::from(vs.heart_rate_bpm), 20.0, 300.0);
        range("temperature_celsius", vs.temperature_celsius, 25.0, 45.0);
        range("weight_kg", vs.weight_kg, 0.2, 700.0);
        range("height_cm", vs.height_cm, 20.0, 300.0);
    }
    let encoded = serde_json::to_vec(c).map(|b| b.len()).unwrap_or(usize::MAX);
    if encoded > MAX_VERSION_BYTES {
        v.push(FieldViolation::new(
            prefix,
            format!("is {encoded} bytes encoded; a version may be at most {MAX_VERSION_BYTES}"),
        ));
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_applied_fields_change() {
        let current = HistoryContent {
            chief_complaint: "kept".into(),
            ..HistoryContent::default()
        };
        let merged = apply_mask(
            &current,
            HistoryContent {
                notes: "n".into(),
                chief_complaint: "not applied".into(),
                ..HistoryContent::default()
            },
            &UpdatePaths::trusted(["notes"]),
        );
        assert_eq!(merged.notes, "n");
        assert_eq!(merged.chief_complaint, "kept");
    }

    #[test]
    fn every_text_is_bounded_and_control_characters_are_refused() {
        let content = HistoryContent {
            notes: "line one\nline two\tindented".into(),
            surgical_history: vec![Surgery {
                procedure: "extraction".into(),
                when: "w".repeat(101),
                notes: String::new(),
            }],
            chief_complaint: "bell\u{7}".into(),
            ..HistoryContent::default()
        };
        let fields: Vec<String> = validate("h", &content)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec!["h.chief_complaint", "h.surgical_history[0].when"]
        );
    }

    #[test]
    fn a_version_has_a_size_bound() {
        let content = HistoryContent {
            chronic_conditions: vec!["c".repeat(200); 100],
            medications: vec![
                Medication {
                    name: "m".repeat(200),
                    dosage: "d".repeat(200),
                    frequency: "f".repeat(200),
                };
                100
            ],
            surgical_history: vec![
                Surgery {
                    procedure: "p".repeat(200),
                    when: "w".repeat(100),
                    notes: "n".repeat(2000),
                };
                100
            ],
            allergies: vec![
                Allergy {
                    allergen: "a".repeat(200),
                    reaction: "r".repeat(500),
                    severity: Severity::Severe,
                };
                100
            ],
            notes: "x".repeat(10_000),
            ..HistoryContent::default()
        };
        // Every list full and every text at its limit is still under the bound ...
        assert_eq!(validate("h", &content), Ok(()));
        // ... which refuses whatever gets past the other rules in bulk (multi-byte text).
        let heavy = HistoryContent {
            surgical_history: vec![
                Surgery {
                    procedure: "€".repeat(200),
                    when: "€".repeat(100),
                    notes: "€".repeat(2000),
                };
                100
            ],
            ..content
        };
        let fields: Vec<String> = validate("h", &heavy)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["h"]);
    }

    #[test]
    fn implausible_vital_signs_and_missing_names_are_reported() {
        let content = HistoryContent {
            medications: vec![Medication::default()],
            vital_signs: Some(VitalSigns {
                heart_rate_bpm: 900,
                temperature_celsius: 36.6,
                ..VitalSigns::default()
            }),
            ..HistoryContent::default()
        };
        let fields: Vec<String> = validate("h", &content)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec!["h.medications[0].name", "h.vital_signs.heart_rate_bpm"]
        );
    }
}
