//! The audit trail: recording events, and `AuditService` to read them.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError,
    access::{Caller, Refusals, trace_id, trail_clinic},
    names::{ClinicName, ResourceId},
    paging::PageRequest,
    time,
};
use topsmile_proto::topsmile::patients::v1::{self as pb, audit_service_server::AuditService};

use topsmile_kit::group_commit::GroupCommit;

use crate::store::{AuditEvent, AuditLog, AuditQuery};

/// Writes audit events: each call's event is durable before the call answers, and the
/// events of calls arriving together share one write ([`GroupCommit`]).
#[derive(Clone)]
pub struct Trail {
    commit: GroupCommit<AuditEvent>,
}

/// The most events one write takes.
const MAX_EVENTS_PER_WRITE: usize = 256;

/// An event another service records (identity's sign-ins and unlocks).
pub struct ServiceEvent<'a> {
    pub clinic: &'a ResourceId,
    pub actor: &'a str,
    pub actor_role: &'a str,
    pub actor_kind: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub outcome: &'a str,
    pub trace_id: &'a str,
}

/// Who called, from where, and how to find the call in the traces.
pub use topsmile_kit::access::Actor;

/// The longest resource name an event keeps, in characters. A longer one (never a
/// real name: ours are under 150) is cut and marked, so one request cannot make an
/// event, or a page of the trail, arbitrarily large.
pub const MAX_RECORDED_RESOURCE_CHARS: usize = 200;

/// The marker after a resource name that was cut.
pub const CUT_MARKER: &str = "...[cut]";

/// `resource` as an event records it: at most [`MAX_RECORDED_RESOURCE_CHARS`]
/// characters, control characters dropped.
pub fn recorded_resource(resource: &str) -> String {
    let clean = || resource.chars().filter(|c| !c.is_control());
    if clean().count() <= MAX_RECORDED_RESOURCE_CHARS {
        return clean().collect();
    }
    let mut cut: String = clean().take(MAX_RECORDED_RESOURCE_CHARS).collect();
    cut.push_str(CUT_MARKER);
    cut
}

impl Trail {
    /// Starts the trail's writer (on the current Tokio runtime).
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self {
            commit: GroupCommit::start(MAX_EVENTS_PER_WRITE, move |events| {
                let log = log.clone();
                async move { log.append_all(events).await }
            }),
        }
    }

    /// Records the outcome of one call on `resource` (in the clinic the name is in, or
    /// the caller's) and hands the result back, unless the event cannot be written: then
    /// the call fails instead.
    pub async fn record<T>(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let outcome = topsmile_kit::audit::outcome(&result);
        self.append(&actor.caller, &actor.trace_id, action, resource, outcome)
            .await?;
        result
    }

    /// Records that a write on `resource` is about to happen (outcome `PENDING`), before
    /// the store is touched: if the trail cannot take it, nothing is written. The
    /// outcome follows with [`record`](Self::record).
    pub async fn intent(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
    ) -> Result<(), ApiError> {
        self.append(&actor.caller, &actor.trace_id, action, resource, "PENDING")
            .await
    }

    /// Appends an event another service hands in (see `RecordAuditEvent`): every field
    /// bounded like the resource of any event; the clinic is the one named, which only a
    /// service token can do (the method is internal).
    pub async fn append_for_service(&self, event: ServiceEvent<'_>) -> Result<(), ApiError> {
        let bounded = |text: &str| recorded_resource(text);
        let record = AuditEvent {
            id: ResourceId::generate(),
            clinic: event.clinic.to_string(),
            actor: bounded(event.actor),
            actor_role: bounded(event.actor_role),
            actor_kind: bounded(event.actor_kind),
            action: bounded(event.action),
            resource: bounded(event.resource),
            outcome: bounded(event.outcome),
            time: time::now(),
            trace_id: bounded(event.trace_id),
        };
        self.commit.submit(record).await.map_err(|e| {
            tracing::error!(error = %e, "audit event of another service not written");
            ApiError::Unavailable("the audit trail is unavailable".into())
        })
    }

    async fn append(
        &self,
        caller: &Caller,
        trace_id: &str,
        action: &str,
        resource: &str,
        outcome: &str,
    ) -> Result<(), ApiError> {
        let event = AuditEvent {
            id: ResourceId::generate(),
            clinic: trail_clinic(caller, resource),
            actor: caller.subject().to_owned(),
            actor_role: caller.claims().role.clone(),
            actor_kind: caller.kind().as_str().to_owned(),
            action: action.to_owned(),
            resource: recorded_resource(resource),
            outcome: outcome.to_owned(),
            time: time::now(),
            trace_id: trace_id.to_owned(),
        };
        let recorded = event.resource.clone();
        self.commit.submit(event).await.map_err(|e| {
            tracing::error!(error = %e, action, resource = %recorded, "audit event not written: call refused");
            ApiError::Unavailable("the audit trail is unavailable".into())
        })
    }
}

impl Refusals for Trail {
    /// A call the guard refused for its role: recorded against the caller's clinic,
    /// without a resource (the request was never read).
    fn refused<'a>(
        &'a self,
        path: &'a str,
        caller: &'a Caller,
        headers: &'a http::HeaderMap,
        error: &'a ApiError,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>
    {
        Box::pin(async move {
            let action = path.rsplit_once('.').map_or(path, |(_, m)| m);
            self.append(caller, &trace_id(headers), action, "", error.reason())
                .await
        })
    }
}

pub struct AuditApi {
    log: Arc<dyn AuditLog>,
}

impl AuditApi {
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self { log }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let req = req.into_inner();
        let parent = ClinicName::parse("parent", &req.parent).map_err(ApiError::from)?;
        caller.check_clinic(parent.clinic.as_str())?;
        let query = AuditQuery {
            resource: Some(req.resource.clone()).filter(|r| !r.is_empty()),
            actor: Some(req.actor.clone()).filter(|a| !a.is_empty()),
        };
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.resource, &req.actor],
        )
        .map_err(ApiError::from)?;
        let events = self
            .log
            .list(parent.clinic.as_str(), &query, &page)
            .await
            .map_err(ApiError::from)?;
        let (events, next_page_token) = page.finish(events, |e| e.id.to_string());
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events: events
                .into_iter()
                .map(|e| pb::AuditEvent {
                    name: format!("clinics/{}/auditEvents/{}", e.clinic, e.id),
                    actor: e.actor,
                    actor_role: e.actor_role,
                    actor_kind: e.actor_kind,
                    action: e.action,
                    resource: e.resource,
                    outcome: e.outcome,
                    time: Some(time::to_proto(e.time)),
                    trace_id: e.trace_id,
                })
                .collect(),
            next_page_token,
        }))
    }
}
