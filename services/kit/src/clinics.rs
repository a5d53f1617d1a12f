//! What other services need to know of a clinic, asked of identity (which owns clinics):
//! whether it is active (a deactivated clinic's records are read-only) and its time
//! zone.
//!
//! Identity is asked with the caller's own bearer token (`GetClinic` admits every member
//! of the clinic), so no service needs more rights than its caller has. Answers are
//! cached for a few seconds per clinic: every replica learns of a deactivation (or a new
//! time zone) within [`CACHE_FOR`], without a call to identity on every write.

use std::time::Duration;

use tonic::transport::Channel;
use topsmile_proto::topsmile::identity::v1::{
    GetClinicRequest, clinic_service_client::ClinicServiceClient,
};

use crate::{ApiError, access::Caller, names::ResourceId};

/// How long an answer of identity's is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// A clinic as other services see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicFacts {
    pub is_active: bool,
    /// IANA time zone name.
    pub time_zone: String,
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
        let value = format!("Bearer {bearer}")
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .map_err(|_| ApiError::Unauthenticated)?;
        let mut last = ApiError::Unavailable("no identity replica".into());
        for channel in &self.replicas {
            let mut request = tonic::Request::new(GetClinicRequest {
                name: format!("clinics/{clinic}"),
            });
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            match ClinicServiceClient::new(channel.clone())
                .get_clinic(request)
                .await
            {
                Ok(answer) => {
                    let found = answer
                        .into_inner()
                        .clinic
                        .ok_or_else(|| ApiError::Internal("identity answered no clinic".into()))?;
                    let facts = ClinicFacts {
                        is_active: found.is_active,
                        time_zone: found.time_zone,
                    };
                    self.cache.insert(clinic.to_string(), facts.clone());
                    return Ok(facts);
                }
                Err(status) => match status.code() {
                    tonic::Code::NotFound => return Err(ApiError::NotFound("clinic")),
                    tonic::Code::Unauthenticated => return Err(ApiError::Unauthenticated),
                    tonic::Code::PermissionDenied => return Err(ApiError::PermissionDenied),
                    code => {
                        tracing::warn!(
                            ?code,
                            message = status.message(),
                            "identity GetClinic failed"
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
