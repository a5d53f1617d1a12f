//! gRPC handlers: proto in, caller and tenancy checks, domain rules, repository, proto
//! out. The gateway and this service's own guard have already checked the token and
//! the method's role policy; handlers check what depends on the record: its clinic.

pub mod auth;
pub mod clinics;
pub mod mfa;
pub mod sessions;
pub mod users;

pub use auth::{AuthApi, InternalApi};
pub use clinics::ClinicApi;
pub use mfa::MfaApi;
pub use sessions::SessionApi;
pub use users::UserApi;

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::config::ServerLimits;
use topsmile_proto::topsmile::identity::v1::{
    auth_service_server::AuthServiceServer, clinic_service_server::ClinicServiceServer,
    identity_internal_service_server::IdentityInternalServiceServer,
    mfa_service_server::MfaServiceServer, session_service_server::SessionServiceServer,
    user_service_server::UserServiceServer,
};

use crate::accounts::Accounts;

/// Every service of identity, on `accounts` (`guard` verifies the tokens that
/// `CheckSession` is asked about), with the message size limits.
pub fn routes(
    accounts: &Arc<Accounts>,
    guard: &Arc<topsmile_kit::access::Guard>,
    limits: &ServerLimits,
) -> Routes {
    let max = limits.max_message_bytes;
    Routes::new(
        ClinicServiceServer::new(ClinicApi::new(accounts.stores.clinics.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        AuthServiceServer::new(AuthApi::new(accounts.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        UserServiceServer::new(UserApi::new(accounts.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        MfaServiceServer::new(MfaApi::new(accounts.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        SessionServiceServer::new(SessionApi::new(accounts.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        IdentityInternalServiceServer::new(InternalApi::new(accounts.clone(), guard.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}
