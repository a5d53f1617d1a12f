//! `PatientInternalService`: what identity asks of the patients service to sign
//! patients in to the portal. Only `kind: service` tokens reach it (the contract's
//! policy); the gateway never exposes it.

use secrecy::SecretString;
use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError,
    lockout::{Attempt, LockPolicy},
    names::ClinicScopedName,
    password::Passwords,
    time,
};
use topsmile_proto::topsmile::patients::v1::{
    self as pb, patient_internal_service_server::PatientInternalService,
};

use super::audit::{Actor, Trail};
use crate::{domain::Patient, store::Stores};

pub struct InternalApi {
    stores: Stores,
    trail: Trail,
    passwords: Passwords,
    lock_policy: LockPolicy,
}

impl InternalApi {
    pub fn new(stores: Stores, trail: Trail, passwords: Passwords) -> Self {
        Self {
            stores,
            trail,
            passwords,
            lock_policy: LockPolicy::default(),
        }
    }

    /// The same steps as a staff sign-in: unknown, inactive or portal-less accounts are
    /// checked against the dummy hash; attempts are counted before the password is; every
    /// failure is the same UNAUTHENTICATED.
    async fn verify(&self, email: &str, password: &SecretString) -> Result<Patient, ApiError> {
        let email = email.trim().to_lowercase();
        let found = if email.is_empty() {
            None
        } else {
            self.stores.patients.get_by_email(&email).await?
        };
        let patient = match found {
            Some(p) if p.is_active && p.password_hash.is_some() => p,
            _ => {
                self.passwords.verify(password, None).await?;
                return Err(ApiError::Unauthenticated);
            }
        };
        let attempt = self
            .stores
            .patients
            .begin_login_attempt(&patient.id, time::now(), &self.lock_policy)
            .await?;
        if attempt == Attempt::Locked {
            tracing::warn!(patient = %patient.id, "portal sign-in refused: account locked");
            return Err(ApiError::Unauthenticated);
        }
        if !self
            .passwords
            .verify(password, patient.password_hash.as_deref())
            .await?
        {
            return Err(ApiError::Unauthenticated);
        }
        self.stores.patients.login_succeeded(&patient.id).await?;
        Ok(patient)
    }

    async fn access(&self, name: &str) -> Result<bool, ApiError> {
        let name = ClinicScopedName::parse("name", "patients", name)?;
        Ok(match self.stores.patients.get(&name.id).await? {
            Some(p) => p.clinic == name.clinic && p.is_active && p.password_hash.is_some(),
            None => false,
        })
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
        let result = self
            .verify(&req.email, &SecretString::from(req.password))
            .await;
        let resource = result.as_ref().map(Patient::name).unwrap_or_default();
        // Successful sign-ins are recorded against the patient's clinic; failed ones name
        // no patient (which would tell who has an account).
        let patient = if result.is_ok() {
            self.trail
                .record(
                    &actor,
                    "PatientInternalService/VerifyPatientCredentials",
                    &resource,
                    result,
                )
                .await?
        } else {
            result?
        };
        Ok(Response::new(pb::VerifyPatientCredentialsResponse {
            patient: patient.name(),
        }))
    }

    async fn get_portal_access(
        &self,
        req: Request<pb::GetPortalAccessRequest>,
    ) -> Result<Response<pb::GetPortalAccessResponse>, Status> {
        let allowed = self.access(&req.get_ref().name).await?;
        Ok(Response::new(pb::GetPortalAccessResponse { allowed }))
    }
}
