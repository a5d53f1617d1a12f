//! What the appointments service asks of the others: identity (the clinic's zone,
//! state and booking rules, with the caller's token), patients (does the patient exist
//! and is active; the audit trail) and providers (schedules), with this service's own
//! token and what is left of the caller's deadline. A dependency that is down means
//! UNAVAILABLE, and nothing is written.

use std::sync::Arc;

use topsmile_kit::{
    ApiError,
    access::{Actor, Caller, Refusals, trail_clinic},
    clinics::{ClinicDirectory, ClinicFacts},
    names::{ClinicName, ResourceId},
    peers::{Deadline, Replicas, ServiceTokens},
};
use topsmile_proto::topsmile::{
    patients::v1::{
        CheckPatientRequest, RecordAuditEventRequest,
        patient_internal_service_client::PatientInternalServiceClient,
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
}

impl Refusals for Dependencies {
    /// A call the guard refused for its role, recorded in the caller's clinic's trail
    /// without a resource (the request was never read): refused attempts are recorded
    /// too.
    fn refused<'a>(
        &'a self,
        path: &'a str,
        caller: &'a Caller,
        headers: &'a http::HeaderMap,
        error: &'a ApiError,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>
    {
        Box::pin(async move {
            let actor = Actor {
                caller: caller.clone(),
                bearer: String::new(),
                client: String::new(),
                trace_id: topsmile_kit::access::trace_id(headers),
                deadline: Deadline::none(),
            };
            let action = path.rsplit_once('.').map_or(path, |(_, m)| m);
            self.audit(&actor, action, "", error.reason()).await
        })
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
    /// patients service), like the patients service's own events: the clinic the
    /// resource names if the caller may address it, else the caller's. An event that
    /// cannot be written fails the call. A super admin's events with no clinic to go
    /// to are logged instead.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        outcome: &str,
    ) -> Result<(), ApiError> {
        let clinic = trail_clinic(&actor.caller, resource);
        if ClinicName::parse("clinic", &format!("clinics/{clinic}")).is_err() {
            tracing::info!(
                actor = actor.caller.subject(),
                action,
                resource = topsmile_kit::validate::shown(resource),
                outcome,
                "audit event without a clinic"
            );
            return Ok(());
        }
        let token = self.tokens.token(actor.deadline).await?;
        let event = RecordAuditEventRequest {
            clinic: format!("clinics/{clinic}"),
            actor: actor.caller.subject().to_owned(),
            actor_role: actor.caller.claims().role.clone(),
            actor_kind: actor.caller.kind().as_str().to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.to_owned(),
            trace_id: actor.trace_id.clone(),
        };
        self.patients
            .call(Some(&token), actor.deadline, "clinic", |channel, request| {
                let request = request.map(|()| event.clone());
                async move {
                    PatientInternalServiceClient::new(channel)
                        .record_audit_event(request)
                        .await
                }
            })
            .await
            .map(drop)
            .map_err(|e| match e {
                ApiError::DeadlineExceeded => e,
                other => {
                    tracing::error!(error = %other, action, "audit event not written: call refused");
                    ApiError::Unavailable("the audit trail is unavailable".into())
                }
            })
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
        let outcome = match &result {
            Ok(_) => "OK",
            Err(e) => e.reason(),
        };
        self.audit(actor, action, resource, outcome).await?;
        result
    }
}
