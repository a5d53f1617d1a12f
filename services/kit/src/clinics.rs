//! What other services need to know of a clinic, asked of identity (which owns clinics
//! and their staff): whether it is active (a deactivated clinic's records are
//! read-only), its time zone, and whether a staff user exists with a given role.
//!
//! Identity is asked with the caller's own bearer token (`GetClinic` admits every member
//! of the clinic), so no service needs more rights than its caller has. Answers are
//! cached for a few seconds per clinic: every replica learns of a deactivation (or a new
//! time zone) within [`CACHE_FOR`], without a call to identity on every write.

use std::time::Duration;

use tonic::transport::Channel;
use topsmile_proto::topsmile::identity::v1::{
    GetClinicRequest, GetUserRequest, UserRole, clinic_service_client::ClinicServiceClient,
    user_service_client::UserServiceClient,
};

use crate::{
    ApiError,
    access::Caller,
    names::{ClinicScopedName, ResourceId},
};

/// How long an answer of identity's is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// A clinic as other services see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicFacts {
    pub is_active: bool,
    /// IANA time zone name.
    pub time_zone: String,
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
    replicas: Vec<Channel>,
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
        let replicas = crate::config::lazy_channels("identity", addresses)?;
        Ok(Self {
            replicas,
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
            .ask("clinic", bearer, |channel, request| {
                let request = request.map(|()| GetClinicRequest { name: name.clone() });
                async move { ClinicServiceClient::new(channel).get_clinic(request).await }
            })
            .await?
            .clinic
            .ok_or_else(|| ApiError::Internal("identity answered no clinic".into()))?;
        let facts = ClinicFacts {
            is_active: found.is_active,
            time_zone: found.time_zone,
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
            .ask("user", bearer, |channel, request| {
                let request = request.map(|()| GetUserRequest { name: name.clone() });
                async move { UserServiceClient::new(channel).get_user(request).await }
            })
            .await?
            .user
            .ok_or_else(|| ApiError::Internal("identity answered no user".into()))?;
        Ok(StaffFacts {
            role: UserRole::try_from(found.role).unwrap_or(UserRole::Unspecified),
            is_active: found.is_active,
        })
    }

    /// One call to identity, replica after replica until one answers, with the caller's
    /// `bearer`. Identity's own verdicts (not found, not allowed) are the answer; any
    /// other failure tries the next replica, then is UNAVAILABLE.
    async fn ask<T, F, Fut>(&self, what: &'static str, bearer: &str, call: F) -> Result<T, ApiError>
    where
        F: Fn(Channel, tonic::Request<()>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let value = format!("Bearer {bearer}")
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .map_err(|_| ApiError::Unauthenticated)?;
        let mut last = ApiError::Unavailable("no identity replica".into());
        for channel in &self.replicas {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            match call(channel.clone(), request).await {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) => match status.code() {
                    tonic::Code::NotFound => return Err(ApiError::NotFound(what)),
                    tonic::Code::Unauthenticated => return Err(ApiError::Unauthenticated),
                    tonic::Code::PermissionDenied => return Err(ApiError::PermissionDenied),
                    code => {
                        tracing::warn!(
                            ?code,
                            message = status.message(),
                            what,
                            "identity lookup failed"
                        );
                        last = ApiError::Unavailable("the identity service is unavailable".into());
                    }
                },
            }
        }
        Err(last)
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
