//! gRPC handlers: proto in, caller and tenancy checks, domain rules, repository, proto
//! out. The gateway and this service's own guard have already checked the token and
//! the method's role policy; handlers check what depends on the record: its clinic.

pub mod auth;
pub mod clinics;
pub mod users;

pub use auth::{AuthApi, InternalApi};
pub use clinics::ClinicApi;
pub use users::UserApi;
