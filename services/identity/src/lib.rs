//! The identity service: clinics (the tenants), staff users, sign-in tokens and signing
//! keys. It owns the `clinics`, `users` and `refreshTokens` collections.
//!
//! The library is what the `topsmile-identity` binary, the all-in-one `topsmile dev`
//! launcher and the tests mount: [`open_store`] then [`routes`].
//!
//! Served now: `ClinicService`. `AuthService`, `UserService` and
//! `IdentityInternalService` are in the contract and answer UNIMPLEMENTED until they
//! land.

pub mod api;
pub mod domain;
pub mod store;

use tonic::{server::NamedService, service::Routes};
use topsmile_kit::config::ServerLimits;
use topsmile_proto::topsmile::identity::v1::clinic_service_server::ClinicServiceServer;

pub use store::{ClinicStore, Stores, UserStore, open as open_store};

/// The gRPC services this process serves, for health and reflection.
pub const SERVICE_NAMES: &[&str] = &[ClinicServiceServer::<api::ClinicApi>::NAME];

/// The identity service's routes on top of `store`.
pub fn routes(stores: Stores, limits: &ServerLimits) -> Routes {
    let clinics = ClinicServiceServer::new(api::ClinicApi::new(stores.clinics))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    Routes::new(clinics)
}
