//! What other services need to know of a clinic, asked of identity (which owns clinics
//! and their staff): whether it is active (a deactivated clinic's records are
//! read-only), its time zone, and whether a staff user exists with a given role.
//!
//! Identity is asked with the caller's own bearer token (`GetClinic` admits every member
//! of the clinic), so no service needs more rights than its caller has. Answers are
//! cached for a few seconds per clinic: every replica learns of a deactivation (or a new
//! time zone) within [`CACHE_FOR`], without a call to identity on every write.

use std::time::Duration;

use topsmile_proto::topsmile::identity::v1::{
    GetClinicRequest, GetUserRequest, UserRole, clinic_service_client::ClinicServiceClient,
    user_service_client::UserServiceClient,
};

use crate::{
    ApiError,
    access::Caller,
    names::{ClinicScopedName, ResourceId},
    peers::{Deadline, Replicas},
};

/// How long an answer of identity's is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// A clinic as other services see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicFacts {
    pub is_active: bool,
    /// IANA time zone name.
    pub time_zone: String,
    /// When and how its appointments may be booked.
    pub booking: BookingRules,
}

/// A clinic's booking rules, in seconds (identity keeps and checks them; identity
/// always answers them, these defaults only fill a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookingRules {
    pub minimum_notice_secs: i64,
    pub booking_horizon_secs: i64,
    /// Offered start times align to this on the clinic's wall clock.
    pub slot_step_secs: i64,
    /// A patient may cancel or reschedule until this long before the start.
    pub patient_change_cutoff_secs: i64,
    /// A portal patient's active appointments still to come, at most.
    pub patient_active_limit: i64,
    /// A portal patient's own bookings per (clinic) day, at most.
    pub patient_daily_limit: i64,
}

impl Default for BookingRules {
    fn default() -> Self {
        Self {
            minimum_notice_secs: 2 * 3600,
            booking_horizon_secs: 365 * 86_400,
            slot_step_secs: 15 * 60,
            patient_change_cutoff_secs: 86_400,
            patient_active_limit: 3,
            patient_daily_limit: 5,
        }
    }
}

/// A staff user as other services see them (to check a link to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaffFacts {
    pub role: UserRole,
    pub is_active: bool,
}

/// Identity's replicas and the cache of their answers.
#[derive(Clone)]
pub struct ClinicDirectory {
    identity: Replicas,
    cache: moka::sync::Cache<String, ClinicFacts>,
}

impl ClinicDirectory {
    /// Identity at `addresses` (host:port), each over a lazily connected channel, with
    /// answers reused for [`CACHE_FOR`].
    pub fn new(addresses: &[String]) -> Result<Self, crate::config::StartupError> {
        Self::caching_for(addresses, CACHE_FOR)
    }

    /// Like [`new`](Self::new), reusing answers for `cache_for` (zero: never; tests).
    pub fn caching_for(
        addresses: &[String],
        cache_for: Duration,
    ) -> Result<Self, crate::config::StartupError> {
        Ok(Self {
            identity: Replicas::new("identity", addresses)?,
            cache: moka::sync::Cache::builder()
                .max_capacity(if cache_for.is_zero() { 0 } else { 100_000 })
                .time_to_live(cache_for.max(Duration::from_millis(1)))
                .build(),
        })
    }

    /// The clinic `clinic`, asked with `bearer` (the caller's token) on a cache miss.
    pub async fn get(&self, clinic: &ResourceId, bearer: &str) -> Result<ClinicFacts, ApiError> {
        if let Some(facts) = self.cache.get(clinic.as_str()) {
            return Ok(facts);
        }
        let name = format!("clinics/{clinic}");
        let found = self
            .identity
            .call(
                Some(bearer),
                Deadline::none(),
                "clinic",
                |channel, request| {
                    let request = request.map(|()| GetClinicRequest { name: name.clone() });
                    async move { ClinicServiceClient::new(channel).get_clinic(request).await }
                },
            )
            .await?
            .clinic
            .ok_or_else(|| ApiError::Internal("identity answered no clinic".into()))?;
        let rules = found.booking_rules.unwrap_or_default();
        let secs =
            |d: Option<prost_types::Duration>, default: i64| d.map_or(default, |d| d.seconds);
        let count = |n: i32, default: i64| if n > 0 { i64::from(n) } else { default };
        let defaults = BookingRules::default();
        let facts = ClinicFacts {
            is_active: found.is_active,
            time_zone: found.time_zone,
            booking: BookingRules {
                minimum_notice_secs: secs(rules.minimum_notice, defaults.minimum_notice_secs),
                booking_horizon_secs: secs(rules.booking_horizon, defaults.booking_horizon_secs),
                slot_step_secs: secs(rules.slot_step, defaults.slot_step_secs),
                patient_change_cutoff_secs: secs(
                    rules.patient_change_cutoff,
                    defaults.patient_change_cutoff_secs,
                ),
                patient_active_limit: count(
                    rules.patient_active_limit,
                    defaults.patient_active_limit,
                ),
                patient_daily_limit: count(rules.patient_daily_limit, defaults.patient_daily_limit),
            },
        };
        self.cache.insert(clinic.to_string(), facts.clone());
        Ok(facts)
    }

    /// The staff user `user` (`clinics/{clinic}/users/{id}`), asked with `bearer`, never
    /// cached: a link to a user is checked against the user as they are now.
    /// NOT_FOUND when identity has no such user in that clinic.
    pub async fn staff_user(
        &self,
        user: &ClinicScopedName,
        bearer: &str,
    ) -> Result<StaffFacts, ApiError> {
        let name = user.to_string();
        let found = self
            .identity
            .call(
                Some(bearer),
                Deadline::none(),
                "user",
                |channel, request| {
                    let request = request.map(|()| GetUserRequest { name: name.clone() });
                    async move { UserServiceClient::new(channel).get_user(request).await }
                },
            )
            .await?
            .user
            .ok_or_else(|| ApiError::Internal("identity answered no user".into()))?;
        Ok(StaffFacts {
            role: UserRole::try_from(found.role).unwrap_or(UserRole::Unspecified),
            is_active: found.is_active,
        })
    }

    /// Refuses a write to `clinic`'s records once the clinic is deactivated
    /// (FAILED_PRECONDITION `CLINIC_INACTIVE`); super admins may still write.
    pub async fn require_writable(
        &self,
        caller: &Caller,
        clinic: &ResourceId,
        bearer: &str,
    ) -> Result<(), ApiError> {
        if caller.is_super_admin() {
            return Ok(());
        }
        if self.get(clinic, bearer).await?.is_active {
            Ok(())
        } else {
            Err(inactive())
        }
    }
}

/// The answer to a write in a deactivated clinic.
pub fn inactive() -> ApiError {
    ApiError::FailedPrecondition {
        reason: "CLINIC_INACTIVE",
        message: "the clinic is deactivated: its records are read-only".into(),
    }
}
