//! A provider as the store keeps it: who they are and their schedule.

use std::collections::BTreeMap;

use jiff::{Timestamp, civil::Date};
use serde::{Deserialize, Serialize};
use topsmile_kit::names::ResourceId;

use super::{
    hours::Interval,
    schedule::{Schedule, Span},
};

/// A dentist or specialist of one clinic.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub id: ResourceId,
    pub clinic: ResourceId,
    pub fields: ProviderFields,
    pub is_active: bool,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    /// Bumped by every change; the etag clients send back.
    pub version: i64,
}

/// What an ADMIN sets on a provider (a PROVIDER, only the schedule part).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderFields {
    pub display_name: String,
    pub email: String,
    pub phone: String,
    /// Lower-cased, sorted, without duplicates.
    pub specialties: Vec<String>,
    pub license_number: String,
    /// The id of the PROVIDER-role staff user of the same clinic who is this provider.
    pub user: Option<String>,
    /// Working hours by weekday, Monday first.
    pub weekly: [Vec<Interval>; 7],
    /// Local dates (`YYYY-MM-DD`) with other hours; empty: closed.
    pub overrides: BTreeMap<String, Vec<Interval>>,
    pub time_off: Vec<TimeOff>,
    pub default_duration_secs: i64,
    pub buffer_before_secs: i64,
    pub buffer_after_secs: i64,
}

/// An absence, in real time (epoch milliseconds, as both stores keep times).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeOff {
    pub start_ms: i64,
    pub end_ms: i64,
    pub reason: String,
}

impl Provider {
    pub fn new(clinic: ResourceId, fields: ProviderFields, now: Timestamp) -> Self {
        Self {
            id: ResourceId::generate(),
            clinic,
            fields,
            is_active: true,
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    /// `clinics/{clinic}/providers/{provider}`.
    pub fn name(&self) -> String {
        format!("clinics/{}/providers/{}", self.clinic, self.id)
    }

    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    /// Whether a client's etag names this version.
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }

    /// The next version: new fields and state, new time, version + 1.
    pub fn changed(&self, fields: ProviderFields, is_active: bool, now: Timestamp) -> Self {
        Self {
            id: self.id.clone(),
            clinic: self.clinic.clone(),
            fields,
            is_active,
            create_time: self.create_time,
            update_time: now,
            version: self.version + 1,
        }
    }

    /// The schedule `working_intervals` reads (overrides with unreadable dates, which
    /// validation never lets in, are left out).
    pub fn schedule(&self) -> Schedule {
        Schedule {
            weekly: self.fields.weekly.clone(),
            overrides: self
                .fields
                .overrides
                .iter()
                .filter_map(|(date, hours)| date.parse::<Date>().ok().map(|d| (d, hours.clone())))
                .collect(),
            time_off: self
                .fields
                .time_off
                .iter()
                .filter_map(|t| {
                    Some(Span::new(
                        Timestamp::from_millisecond(t.start_ms).ok()?,
                        Timestamp::from_millisecond(t.end_ms).ok()?,
                    ))
                })
                .collect(),
        }
    }
}

/// What a provider list selects (always within one clinic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderQuery {
    /// Lower-cased specialty the provider must have.
    pub specialty: Option<String>,
    pub include_inactive: bool,
}
