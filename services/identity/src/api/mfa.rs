//! `MfaService`: thin wrappers over [`Accounts`]' MFA methods (`crate::mfa`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use topsmile_kit::access::{Caller, client_address};
use topsmile_proto::topsmile::identity::v1::{self as pb, mfa_service_server::MfaService};

use crate::{accounts::Accounts, mfa::Proof};

pub struct MfaApi {
    accounts: Arc<Accounts>,
}

impl MfaApi {
    pub fn new(accounts: Arc<Accounts>) -> Self {
        Self { accounts }
    }
}

#[tonic::async_trait]
impl MfaService for MfaApi {
    async fn enroll_mfa(
        &self,
        req: Request<pb::EnrollMfaRequest>,
    ) -> Result<Response<pb::EnrollMfaResponse>, Status> {
        let caller = Caller::of(&req)?;
        let (secret, otpauth_uri) = self.accounts.enroll_mfa(&caller).await?;
        Ok(Response::new(pb::EnrollMfaResponse {
            secret,
            otpauth_uri,
        }))
    }

    async fn confirm_mfa(
        &self,
        req: Request<pb::ConfirmMfaRequest>,
    ) -> Result<Response<pb::ConfirmMfaResponse>, Status> {
        let caller = Caller::of(&req)?;
        let client = client_address(&req);
        let recovery_codes = self
            .accounts
            .confirm_mfa(&caller, &req.into_inner().code, &client)
            .await?;
        Ok(Response::new(pb::ConfirmMfaResponse { recovery_codes }))
    }

    async fn disable_mfa(
        &self,
        req: Request<pb::DisableMfaRequest>,
    ) -> Result<Response<pb::DisableMfaResponse>, Status> {
        let caller = Caller::of(&req)?;
        let client = client_address(&req);
        let req = req.into_inner();
        let proof = Proof::of(&req.code, &req.recovery_code)?;
        self.accounts.disable_mfa(&caller, proof, &client).await?;
        Ok(Response::new(pb::DisableMfaResponse {}))
    }

    async fn regenerate_recovery_codes(
        &self,
        req: Request<pb::RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<pb::RegenerateRecoveryCodesResponse>, Status> {
        let caller = Caller::of(&req)?;
        let client = client_address(&req);
        let recovery_codes = self
            .accounts
            .regenerate_recovery_codes(&caller, &req.into_inner().code, &client)
            .await?;
        Ok(Response::new(pb::RegenerateRecoveryCodesResponse {
            recovery_codes,
        }))
    }

    async fn reset_mfa(
        &self,
        req: Request<pb::ResetMfaRequest>,
    ) -> Result<Response<pb::ResetMfaResponse>, Status> {
        let caller = Caller::of(&req)?;
        let name = req.into_inner().name;
        let (clinic, id) =
            super::users::parse_name("name", &name).map_err(topsmile_kit::ApiError::from)?;
        super::users::may_manage(&caller, &clinic)?;
        let user = self
            .accounts
            .stores
            .users
            .get(&clinic, &id)
            .await
            .map_err(topsmile_kit::ApiError::from)?
            .filter(|u| u.clinic == clinic)
            .ok_or(topsmile_kit::ApiError::NotFound("user"))?;
        // An ADMIN does not reset a super admin's (those live in no clinic anyway).
        self.accounts.reset_mfa(&caller, user).await?;
        Ok(Response::new(pb::ResetMfaResponse {}))
    }
}
