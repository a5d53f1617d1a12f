//! `AuthService` and `IdentityInternalService`.

use std::sync::Arc;

use secrecy::SecretString;
use tonic::{Request, Response, Status};
use topsmile_kit::access::{Caller, client_address};
use topsmile_proto::topsmile::identity::v1::{
    self as pb, auth_service_server::AuthService,
    identity_internal_service_server::IdentityInternalService,
};

use crate::accounts::{Accounts, Client, TokenPair};

pub struct AuthApi {
    accounts: Arc<Accounts>,
}

impl AuthApi {
    pub fn new(accounts: Arc<Accounts>) -> Self {
        Self { accounts }
    }
}

macro_rules! token_response {
    ($ty:ident, $pair:expr) => {{
        let TokenPair {
            access_token,
            refresh_token,
            expires_in,
            ..
        } = $pair;
        pb::$ty {
            access_token,
            refresh_token,
            expires_in,
        }
    }};
    ($ty:ident, $pair:expr, with device) => {{
        let TokenPair {
            access_token,
            refresh_token,
            expires_in,
            device_token,
            ..
        } = $pair;
        pb::$ty {
            access_token,
            refresh_token,
            expires_in,
            device_token,
            ..Default::default()
        }
    }};
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let mut client = Client::of(&req);
        let req = req.into_inner();
        client.device_token = req.device_token;
        let pair = self
            .accounts
            .login(&req.email, &SecretString::from(req.password), &client)
            .await?;
        Ok(Response::new(pb::LoginResponse {
            mfa_challenge: pair.mfa_challenge.clone(),
            mfa_enrolment_due: pair.mfa_enrolment_due.map(topsmile_kit::time::to_proto),
            mfa_enrolment_only: pair.mfa_enrolment_only,
            ..token_response!(LoginResponse, pair, with device)
        }))
    }

    async fn complete_mfa_sign_in(
        &self,
        req: Request<pb::CompleteMfaSignInRequest>,
    ) -> Result<Response<pb::CompleteMfaSignInResponse>, Status> {
        let mut client = Client::of(&req);
        let req = req.into_inner();
        client.device_token = req.device_token;
        let proof = crate::mfa::Proof::of(&req.code, &req.recovery_code)?;
        let (pair, left) = self
            .accounts
            .complete_mfa_sign_in(&req.challenge, proof, &client)
            .await?;
        Ok(Response::new(pb::CompleteMfaSignInResponse {
            recovery_codes_left: i32::try_from(left).unwrap_or(0),
            ..token_response!(CompleteMfaSignInResponse, pair, with device)
        }))
    }

    async fn login_patient(
        &self,
        req: Request<pb::LoginPatientRequest>,
    ) -> Result<Response<pb::LoginPatientResponse>, Status> {
        let mut client = Client::of(&req);
        let req = req.into_inner();
        client.device_token = req.device_token;
        let pair = self
            .accounts
            .login_patient(
                &req.clinic,
                &req.email,
                &SecretString::from(req.password),
                &client,
            )
            .await?;
        Ok(Response::new(pb::LoginPatientResponse {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            expires_in: pair.expires_in,
            device_token: pair.device_token,
        }))
    }

    async fn refresh_token(
        &self,
        req: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let pair = self
            .accounts
            .refresh(&req.into_inner().refresh_token)
            .await?;
        Ok(Response::new(token_response!(RefreshTokenResponse, pair)))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.accounts.logout(&caller).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = Caller::of(&req)?;
        let client = client_address(&req);
        let req = req.into_inner();
        self.accounts
            .change_password(
                &caller,
                &SecretString::from(req.current_password),
                &SecretString::from(req.new_password),
                &client,
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.accounts.keys.public_keys()?;
        Ok(Response::new(pb::GetJwksResponse {
            keys: keys
                .iter()
                .map(|k| pb::Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: k.x.clone(),
                    kid: k.kid.clone(),
                    alg: "EdDSA".into(),
                    r#use: "sig".into(),
                })
                .collect(),
        }))
    }
}

pub struct InternalApi {
    accounts: Arc<Accounts>,
    guard: Arc<topsmile_kit::access::Guard>,
}

impl InternalApi {
    pub fn new(accounts: Arc<Accounts>, guard: Arc<topsmile_kit::access::Guard>) -> Self {
        Self { accounts, guard }
    }
}

#[tonic::async_trait]
impl IdentityInternalService for InternalApi {
    async fn mint_service_token(
        &self,
        req: Request<pb::MintServiceTokenRequest>,
    ) -> Result<Response<pb::MintServiceTokenResponse>, Status> {
        let req = req.into_inner();
        let (access_token, expires_in) = self
            .accounts
            .mint_service_token(&req.service, &SecretString::from(req.service_secret))
            .await?;
        Ok(Response::new(pb::MintServiceTokenResponse {
            access_token,
            expires_in,
        }))
    }

    async fn check_session(
        &self,
        req: Request<pb::CheckSessionRequest>,
    ) -> Result<Response<pb::CheckSessionResponse>, Status> {
        use topsmile_kit::sessions::SessionState;
        let token = req.into_inner().access_token;
        // A token that does not verify is not asked about: the answer would tell a
        // stranger nothing, but the look-ups would be theirs to spend.
        let claims = self.guard.verify(&token).await?;
        let state = self.accounts.session_state(&claims).await?;
        Ok(Response::new(match state {
            SessionState::Live(role) => pb::CheckSessionResponse {
                live: true,
                role: role as i32,
            },
            SessionState::Ended => pb::CheckSessionResponse {
                live: false,
                role: 0,
            },
        }))
    }
}
