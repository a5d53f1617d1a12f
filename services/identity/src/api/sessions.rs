//! `SessionService`: thin wrappers over [`Accounts`]' session methods.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use topsmile_kit::access::Caller;
use topsmile_proto::topsmile::identity::v1::{self as pb, session_service_server::SessionService};

use crate::accounts::Accounts;

pub struct SessionApi {
    accounts: Arc<Accounts>,
}

impl SessionApi {
    pub fn new(accounts: Arc<Accounts>) -> Self {
        Self { accounts }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let sessions = self
            .accounts
            .list_sessions(&caller, &req.into_inner().parent)
            .await?;
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.accounts
            .revoke_session(&caller, &req.into_inner().name)
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }
}
