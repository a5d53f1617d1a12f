//! gRPC handlers of the patients service: proto in, caller and tenancy checks, domain
//! rules, repository, audit event, proto out.
//!
//! Every call that names patient data leaves an audit event, refused ones included,
//! before it answers; if the event cannot be written the call fails: no unaudited
//! access to patient data.

pub mod audit;
pub mod history;
pub mod internal;
pub mod patients;

use std::sync::Arc;

use tonic::{server::NamedService, service::Routes};
use topsmile_kit::{config::ServerLimits, password::Passwords};
use topsmile_proto::topsmile::patients::v1::{
    audit_service_server::AuditServiceServer,
    medical_history_service_server::MedicalHistoryServiceServer,
    patient_internal_service_server::PatientInternalServiceServer,
    patient_service_server::PatientServiceServer,
};

use crate::store::Stores;

/// The gRPC services mounted by [`routes`].
pub const SERVED: &[&str] = &[
    PatientServiceServer::<patients::PatientApi>::NAME,
    MedicalHistoryServiceServer::<history::MedicalHistoryApi>::NAME,
    AuditServiceServer::<audit::AuditApi>::NAME,
    PatientInternalServiceServer::<internal::InternalApi>::NAME,
];

/// The services, on `stores`; `clinics` is identity, asked whether a clinic is still
/// active before its records are written.
pub fn routes(
    stores: Stores,
    passwords: Passwords,
    clinics: topsmile_kit::clinics::ClinicDirectory,
    limits: &ServerLimits,
) -> Routes {
    let max = limits.max_message_bytes;
    let trail = audit::Trail::new(stores.audit.clone());
    let sign_in = topsmile_kit::signin::SignIn::new(
        passwords,
        std::sync::Arc::new(topsmile_kit::time::SystemClock),
    );
    Routes::new(
        PatientServiceServer::new(patients::PatientApi::new(
            stores.clone(),
            trail.clone(),
            sign_in.clone(),
            clinics.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    )
    .add_service(
        PatientInternalServiceServer::new(internal::InternalApi::new(
            stores.clone(),
            trail.clone(),
            sign_in,
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    )
    .add_service(
        MedicalHistoryServiceServer::new(history::MedicalHistoryApi::new(
            stores.clone(),
            trail,
            clinics,
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    )
    .add_service(
        AuditServiceServer::new(audit::AuditApi::new(stores.audit))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}

/// The patients service's guard: the common one, plus audit events for the calls it
/// refuses before a handler sees them.
pub fn guard(
    keys: topsmile_kit::access::KeySource,
    sessions: Arc<dyn topsmile_kit::sessions::SessionAuthority>,
    stores: &Stores,
) -> Result<Arc<topsmile_kit::access::Guard>, topsmile_kit::server::BoxError> {
    Ok(Arc::new(
        topsmile_kit::access::Guard::new(topsmile_kit::policy::PolicyTable::builtin()?, keys)
            .with_sessions(sessions)
            .with_refusals(Arc::new(audit::Trail::new(stores.audit.clone()))),
    ))
}
