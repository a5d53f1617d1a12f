//! `PatientInternalService`: what identity asks of the patients service to sign
//! patients in to the portal, what the appointments service asks before it books, and
//! the audit trail other services record in. Only `kind: service` tokens reach it (the contract's
//! policy); the gateway never exposes it.

use secrecy::SecretString;
use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError,
    names::{ClinicName, ClinicScopedName},
    signin::SignIn,
};
use topsmile_proto::topsmile::patients::v1::{
    self as pb, patient_internal_service_server::PatientInternalService,
};

use super::audit::{Actor, ServiceEvent, Trail};
use crate::{domain::Patient, store::Stores};

pub struct InternalApi {
    stores: Stores,
    trail: Trail,
    sign_in: SignIn,
}

impl InternalApi {
    pub fn new(stores: Stores, trail: Trail, sign_in: SignIn) -> Self {
        Self {
            stores,
            trail,
            sign_in,
        }
    }

    /// The kit's sign-in routine over the patient the clinic and email name. Also
    /// answers that patient's name, if there is one, so that a failure can be recorded
    /// in their clinic's trail.
    async fn verify(
        &self,
        req: &pb::VerifyPatientCredentialsRequest,
    ) -> (Option<String>, Result<Patient, ApiError>) {
        let password = SecretString::from(req.password.clone());
        let found = match self.find(&req.clinic, &req.email).await {
            Ok(found) => found,
            Err(e) => return (None, Err(e)),
        };
        let named = found.as_ref().map(Patient::name);
        let result = self
            .sign_in
            .verify(
                self.stores.patients.as_ref(),
                found,
                &password,
                &req.client_address,
            )
            .await;
        (named, result)
    }

    async fn find(&self, clinic: &str, email: &str) -> Result<Option<Patient>, ApiError> {
        let clinic = ClinicName::parse("clinic", clinic)?;
        let email = email.trim().to_lowercase();
        if email.is_empty() || email.len() > 254 {
            return Ok(None);
        }
        Ok(self
            .stores
            .patients
            .get_by_email(&clinic.clinic, &email)
            .await?)
    }

    async fn access(&self, req: &pb::GetPortalAccessRequest) -> Result<bool, ApiError> {
        let name = ClinicScopedName::parse("name", "patients", &req.name)?;
        let start_ms = req.session_start.as_ref().map_or(0, |t| {
            t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
        });
        Ok(
            match self.stores.patients.get(&name.clinic, &name.id).await? {
                Some(p) => {
                    p.clinic == name.clinic && p.portal_session_allowed(&req.session, start_ms)
                }
                None => false,
            },
        )
    }
}

#[tonic::async_trait]
impl PatientInternalService for InternalApi {
    async fn verify_patient_credentials(
        &self,
        req: Request<pb::VerifyPatientCredentialsRequest>,
    ) -> Result<Response<pb::VerifyPatientCredentialsResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let (named, result) = self.verify(&req).await;
        // Every sign-in is recorded, failed ones included: against the account the email
        // named (in its clinic's trail), or, for an email with no account, against no
        // resource in the calling service's trail.
        let patient = self
            .trail
            .record(
                &actor,
                "PatientInternalService/VerifyPatientCredentials",
                named.as_deref().unwrap_or_default(),
                result,
            )
            .await?;
        Ok(Response::new(pb::VerifyPatientCredentialsResponse {
            patient: patient.name(),
        }))
    }

    async fn record_audit_event(
        &self,
        req: Request<pb::RecordAuditEventRequest>,
    ) -> Result<Response<pb::RecordAuditEventResponse>, Status> {
        let req = req.into_inner();
        let clinic = ClinicName::parse("clinic", &req.clinic).map_err(ApiError::from)?;
        for (field, value) in [("action", &req.action), ("outcome", &req.outcome)] {
            if value.trim().is_empty() {
                return Err(ApiError::invalid(field, "is required").into());
            }
        }
        self.trail
            .append_for_service(ServiceEvent {
                clinic: &clinic.clinic,
                actor: &req.actor,
                actor_role: &req.actor_role,
                actor_kind: &req.actor_kind,
                action: &req.action,
                resource: &req.resource,
                outcome: &req.outcome,
                trace_id: &req.trace_id,
            })
            .await?;
        Ok(Response::new(pb::RecordAuditEventResponse {}))
    }

    async fn check_patient(
        &self,
        req: Request<pb::CheckPatientRequest>,
    ) -> Result<Response<pb::CheckPatientResponse>, Status> {
        let name = ClinicScopedName::parse("name", "patients", &req.get_ref().name)
            .map_err(ApiError::from)?;
        match self.stores.patients.get(&name.clinic, &name.id).await {
            Ok(Some(p)) if p.clinic == name.clinic => Ok(Response::new(pb::CheckPatientResponse {
                is_active: p.is_active,
            })),
            Ok(_) => Err(ApiError::NotFound("patient").into()),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    async fn get_portal_access(
        &self,
        req: Request<pb::GetPortalAccessRequest>,
    ) -> Result<Response<pb::GetPortalAccessResponse>, Status> {
        let allowed = self.access(req.get_ref()).await?;
        Ok(Response::new(pb::GetPortalAccessResponse { allowed }))
    }
}
