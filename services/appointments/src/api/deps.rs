//! What the appointments service asks of the others: identity (the clinic's zone,
//! state and booking rules, with the caller's token), patients (does the patient exist
//! and is active; the audit trail) and providers (schedules), with this service's own
//! token and what is left of the caller's deadline. A dependency that is down means
//! UNAVAILABLE, and nothing is written.

use std::sync::Arc;

use topsmile_kit::{
    ApiError,
    access::{Actor, Caller, Refusals},
    audit::AuditTrail,
    clinics::{ClinicDirectory, ClinicFacts},
    names::ResourceId,
    peers::{Replicas, ServiceTokens},
};
use topsmile_proto::topsmile::{
    patients::v1::{
        CheckPatientRequest, patient_internal_service_client::PatientInternalServiceClient,
    },
    providers::v1::{
        ListBookableProvidersRequest,
        provider_internal_service_client::ProviderInternalServiceClient,
    },
};
use topsmile_providers::api::{Bookable, bookable_of};

/// The other services, as this one reaches them.
#[derive(Clone)]
pub struct Dependencies {
    pub clinics: ClinicDirectory,
    pub tokens: Arc<ServiceTokens>,
    pub patients: Replicas,
    pub providers: Replicas,
    /// The clinics' audit trail (in the patients service).
    pub trail: AuditTrail,
}

impl Refusals for Dependencies {
    /// As the trail records refusals (see [`AuditTrail`]).
    fn refused<'a>(
        &'a self,
        path: &'a str,
        caller: &'a Caller,
        headers: &'a http::HeaderMap,
        error: &'a ApiError,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>
    {
        self.trail.refused(path, caller, headers, error)
    }
}

impl Dependencies {
    /// The clinic: its zone, whether it is active, its booking rules.
    pub async fn clinic(
        &self,
        actor: &Actor,
        clinic: &ResourceId,
    ) -> Result<ClinicFacts, ApiError> {
        self.clinics.get(clinic, &actor.bearer).await
    }

    /// `Ok(true)` for an active patient of the clinic, `Ok(false)` for a deactivated
    /// one, NOT_FOUND for none.
    pub async fn patient_is_active(
        &self,
        actor: &Actor,
        clinic: &ResourceId,
        patient: &ResourceId,
    ) -> Result<bool, ApiError> {
        let token = self.tokens.token(actor.deadline).await?;
        let name = format!("clinics/{clinic}/patients/{patient}");
        let answer = self
            .patients
            .call(
                Some(&token),
                actor.deadline,
                "patient",
                |channel, request| {
                    let request = request.map(|()| CheckPatientRequest { name: name.clone() });
                    async move {
                        PatientInternalServiceClient::new(channel)
                            .check_patient(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(answer.is_active)
    }

    /// The named provider of the clinic (NOT_FOUND if none), or every active one.
    pub async fn providers(
        &self,
        actor: &Actor,
        clinic: &ResourceId,
        provider: Option<&ResourceId>,
    ) -> Result<Vec<Bookable>, ApiError> {
        let token = self.tokens.token(actor.deadline).await?;
        let parent = format!("clinics/{clinic}");
        let provider = provider
            .map(|p| format!("clinics/{clinic}/providers/{p}"))
            .unwrap_or_default();
        let answer = self
            .providers
            .call(
                Some(&token),
                actor.deadline,
                "provider",
                |channel, request| {
                    let request = request.map(|()| ListBookableProvidersRequest {
                        parent: parent.clone(),
                        provider: provider.clone(),
                    });
                    async move {
                        ProviderInternalServiceClient::new(channel)
                            .list_bookable_providers(request)
                            .await
                    }
                },
            )
            .await?;
        answer
            .providers
            .into_iter()
            .map(|p| {
                bookable_of(p).ok_or_else(|| {
                    ApiError::Internal(
                        "the providers service answered a provider that does not read back".into(),
                    )
                })
            })
            .collect()
    }

    /// Appends an event about `resource` to the clinic's audit trail (kept by the
    /// patients service), like the patients service's own events: see
    /// [`AuditTrail`].
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        outcome: &str,
    ) -> Result<(), ApiError> {
        self.trail.audit(actor, action, resource, outcome).await
    }

    /// Records the outcome of a call and hands its result back (or fails the call if
    /// the event cannot be written).
    pub async fn record<T>(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.trail.record(actor, action, resource, result).await
    }
}
