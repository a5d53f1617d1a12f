//! Identity's client of the patients service, which owns portal credentials and the
//! audit trail: it checks a patient's sign-in (`VerifyPatientCredentials`), whether a
//! portal session may go on (`GetPortalAccess`), and records staff sign-ins and unlocks
//! (`RecordAuditEvent`), over each replica in turn, with identity's own service token.

use secrecy::{ExposeSecret, SecretString};
use topsmile_kit::ApiError;
use topsmile_proto::topsmile::patients::v1::{
    GetPortalAccessRequest, RecordAuditEventRequest, VerifyPatientCredentialsRequest,
    patient_internal_service_client::PatientInternalServiceClient,
};

/// What a portal sign-in sends the patients service.
pub struct PortalCredentials<'a> {
    pub clinic: String,
    pub email: &'a str,
    pub password: &'a SecretString,
    pub client: &'a str,
}

/// The patients service as identity reaches it: each replica in turn until one answers.
pub struct PatientDirectory {
    replicas: Vec<tonic::transport::Channel>,
}

impl PatientDirectory {
    /// Lazily connected channels to `addresses` (host:port).
    pub fn new(addresses: &[String]) -> Result<Self, topsmile_kit::config::StartupError> {
        let replicas = topsmile_kit::config::lazy_channels("patients", addresses)?;
        Ok(Self { replicas })
    }

    fn client(
        channel: &tonic::transport::Channel,
        token: &str,
    ) -> Result<
        PatientInternalServiceClient<
            tonic::service::interceptor::InterceptedService<
                tonic::transport::Channel,
                impl tonic::service::Interceptor + use<>,
            >,
        >,
        ApiError,
    > {
        let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| ApiError::Internal("service token is not a header value".into()))?;
        Ok(PatientInternalServiceClient::with_interceptor(
            channel.clone(),
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                // What is left of the sign-in's deadline, and its trace.
                topsmile_kit::peers::on_behalf_of_the_call(
                    &mut req,
                    topsmile_kit::peers::Deadline::none(),
                )?;
                Ok(req)
            },
        ))
    }

    /// The patient these portal credentials sign in, or UNAUTHENTICATED.
    pub async fn verify(
        &self,
        token: &str,
        credentials: &PortalCredentials<'_>,
    ) -> Result<String, ApiError> {
        let mut last = ApiError::Unavailable("no patients replica".into());
        for channel in &self.replicas {
            let request = VerifyPatientCredentialsRequest {
                clinic: credentials.clinic.clone(),
                email: credentials.email.to_owned(),
                password: credentials.password.expose_secret().to_owned(),
                client_address: credentials.client.to_owned(),
            };
            match Self::client(channel, token)?
                .verify_patient_credentials(request)
                .await
            {
                Ok(answer) => return Ok(answer.into_inner().patient),
                Err(status) if status.code() == tonic::Code::Unauthenticated => {
                    return Err(ApiError::Unauthenticated);
                }
                Err(status) => last = unavailable(&status),
            }
        }
        Err(last)
    }

    /// Appends `event` to a clinic's audit trail, which the patients service keeps.
    pub async fn record(
        &self,
        token: &str,
        event: &RecordAuditEventRequest,
    ) -> Result<(), ApiError> {
        let mut last = ApiError::Unavailable("no patients replica".into());
        for channel in &self.replicas {
            match Self::client(channel, token)?
                .record_audit_event(event.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => last = unavailable(&status),
            }
        }
        Err(last)
    }

    /// Whether the patient may still use the portal in the session `(sid, started)`.
    pub async fn has_portal_access(
        &self,
        token: &str,
        name: &str,
        (session, started): (&str, jiff::Timestamp),
    ) -> Result<bool, ApiError> {
        let mut last = ApiError::Unavailable("no patients replica".into());
        for channel in &self.replicas {
            let request = GetPortalAccessRequest {
                name: name.to_owned(),
                session: session.to_owned(),
                session_start: Some(topsmile_kit::time::to_proto(started)),
            };
            match Self::client(channel, token)?
                .get_portal_access(request)
                .await
            {
                Ok(answer) => return Ok(answer.into_inner().allowed),
                Err(status) => last = unavailable(&status),
            }
        }
        Err(last)
    }
}

fn unavailable(status: &tonic::Status) -> ApiError {
    tracing::warn!(code = ?status.code(), message = status.message(), "patients service call failed");
    ApiError::Unavailable("the patients service is unavailable".into())
}
