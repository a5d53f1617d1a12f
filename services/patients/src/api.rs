//! gRPC handlers of the patients service.
//!
//! No method is mounted yet: every call answers UNIMPLEMENTED (the router's own answer
//! for a method it does not serve) until the patients issue lands its handlers here.

use std::sync::Arc;

use tonic::service::Routes;
use topsmile_kit::config::ServerLimits;

use crate::store::PatientStore;

/// The gRPC services mounted by [`routes`].
pub const SERVED: &[&str] = &[];

pub fn routes(_store: Arc<dyn PatientStore>, _limits: &ServerLimits) -> Routes {
    Routes::default()
}
