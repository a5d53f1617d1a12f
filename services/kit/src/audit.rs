//! Writing to a clinic's audit trail from a service that does not keep it: the trail
//! lives in the patients service (`PatientInternalService.RecordAuditEvent`), asked with
//! this service's own token. A change is announced (`PENDING`) before the store is
//! touched and its outcome recorded after; an event that cannot be written fails the
//! call (UNAVAILABLE), so nothing happens unrecorded.

use std::sync::Arc;

use topsmile_proto::topsmile::patients::v1::{
    RecordAuditEventRequest, patient_internal_service_client::PatientInternalServiceClient,
};

use crate::{
    ApiError,
    access::{Actor, Caller, Refusals, trail_clinic},
    names::ClinicName,
    peers::{Deadline, Replicas, ServiceTokens},
};

/// The patients service's trail, written with `tokens`.
#[derive(Clone)]
pub struct AuditTrail {
    tokens: Arc<ServiceTokens>,
    patients: Replicas,
}

impl AuditTrail {
    pub fn new(tokens: Arc<ServiceTokens>, patients: Replicas) -> Self {
        Self { tokens, patients }
    }

    /// Appends one event about `resource` to the trail of the clinic it belongs to
    /// (see [`trail_clinic`]). An event with no clinic (a super admin's call about
    /// nothing in one) is logged instead.
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
                resource = crate::validate::shown(resource),
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
        self.audit(actor, action, resource, outcome(&result))
            .await?;
        result
    }
}

/// The outcome an audit event records for `result`: `OK`, or the refusal's reason.
pub fn outcome<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "OK",
        Err(e) => e.reason(),
    }
}

impl Refusals for AuditTrail {
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
                trace_id: crate::access::trace_id(headers),
                deadline: Deadline::none(),
            };
            let action = path.rsplit_once('.').map_or(path, |(_, m)| m);
            self.audit(&actor, action, "", error.reason()).await
        })
    }
}
