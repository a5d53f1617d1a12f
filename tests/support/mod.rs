//! What the end-to-end tests share: a whole suite on port 0 with a known super admin,
//! and clients that carry a bearer token.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::{net::SocketAddr, sync::Arc};

use secrecy::SecretString;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use topsmile::{Suite, SuiteOptions};
use topsmile_kit::{config::ServerLimits, password::Passwords, store::StoreChoice, time::Clock};
use topsmile_proto::topsmile::identity::v1::{
    self as identity, auth_service_client::AuthServiceClient,
    clinic_service_client::ClinicServiceClient, user_service_client::UserServiceClient,
};

pub const ROOT_EMAIL: &str = "root@topsmile.test";
pub const ROOT_PASSWORD: &str = "root password, long enough";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::invalid_argument("token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

pub struct TestSuite {
    pub suite: Suite,
    pub dir: tempfile::TempDir,
    /// The MongoDB database to drop at the end, when the suite runs on MongoDB.
    mongo: Option<(SecretString, String)>,
}

/// A fresh MongoDB database at `TOPSMILE_TEST_MONGODB_URI`, or `None` (after saying so)
/// where the MongoDB half may be skipped (never under `CI=true`).
pub fn mongo_store(test: &str) -> Option<StoreChoice> {
    let uri = topsmile_kit::testing::mongodb_uri(test)?;
    Some(StoreChoice::Mongo {
        uri,
        database: topsmile_kit::testing::unique_database("e2e"),
        list_read_preference: "primary".into(),
    })
}

pub struct Setup {
    pub store: Option<StoreChoice>,
    pub limits: ServerLimits,
    pub clock: Option<Arc<dyn Clock>>,
    pub sign_in_per_minute: u32,
    /// The gateway's trusted proxy ranges (`TOPSMILE_TRUSTED_PROXIES`).
    pub trusted_proxies: String,
    /// The first super admin (default: ROOT_EMAIL / ROOT_PASSWORD).
    pub bootstrap_admin: Option<(String, String)>,
    /// Serve Prometheus metrics on a free loopback port (`suite.metrics`).
    pub metrics: bool,
    /// Replicas of each service behind the gateway.
    pub replicas: usize,
    /// How often the gateway checks each replica's health.
    pub health_check_ms: u64,
    /// Replicas in other processes, by area.
    pub outside_replicas: std::collections::BTreeMap<&'static str, Vec<SocketAddr>>,
    /// Web origins allowed to call over gRPC-Web (`TOPSMILE_CORS_ORIGINS`).
    pub cors_origins: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            store: None,
            limits: ServerLimits {
                max_message_bytes: 64 * 1024,
                ..ServerLimits::default()
            },
            clock: None,
            sign_in_per_minute: 0,
            trusted_proxies: String::new(),
            bootstrap_admin: None,
            metrics: false,
            replicas: 1,
            health_check_ms: 1000,
            outside_replicas: Default::default(),
            cors_origins: String::new(),
        }
    }
}

impl TestSuite {
    pub async fn start() -> Self {
        Self::with(Setup::default()).await
    }

    pub async fn start_on(store: StoreChoice) -> Self {
        Self::with(Setup {
            store: Some(store),
            ..Setup::default()
        })
        .await
    }

    pub async fn with(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = setup.store.unwrap_or_else(|| StoreChoice::Embedded {
            data_dir: dir.path().to_path_buf(),
        });
        let mut options = SuiteOptions::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            dir.path().to_path_buf(),
        )
        .unwrap();
        options.limits = setup.limits;
        options.edge.sign_in_per_minute = setup.sign_in_per_minute;
        options.edge.trusted_proxies = setup.trusted_proxies.clone();
        options.replicas = setup.replicas;
        options.outside_replicas = setup.outside_replicas.clone();
        options.edge.health_check_ms = setup.health_check_ms;
        options.edge.cors_origins = setup.cors_origins.clone();
        if setup.metrics {
            options.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        // Tests change clinics and look at once: no reuse of identity's answers.
        options.clinic_facts_ttl = std::time::Duration::ZERO;
        let (email, password) = setup
            .bootstrap_admin
            .unwrap_or_else(|| (ROOT_EMAIL.into(), ROOT_PASSWORD.into()));
        options.bootstrap_admin = Some((email, SecretString::from(password)));
        options.passwords = Passwords::new(2).unwrap();
        if let Some(clock) = setup.clock {
            options.clock = clock;
        }
        let mongo = match &options.store {
            StoreChoice::Mongo { uri, database, .. } => Some((uri.clone(), database.clone())),
            StoreChoice::Embedded { .. } => None,
        };
        let suite = Suite::start(options).await.unwrap();
        Self { suite, dir, mongo }
    }

    pub async fn channel(&self) -> Channel {
        connect(self.suite.gateway).await
    }

    /// Signs in through the gateway; the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        self.login_pair(email, password).await.access_token
    }

    pub async fn login_pair(&self, email: &str, password: &str) -> identity::LoginResponse {
        AuthServiceClient::new(self.channel().await)
            .login(identity::LoginRequest {
                email: email.into(),
                password: password.into(),
                device_token: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("login of {email} failed: {e:?}"))
            .into_inner()
    }

    pub async fn root_token(&self) -> String {
        self.login(ROOT_EMAIL, ROOT_PASSWORD).await
    }

    /// ClinicService as the super admin, through the gateway.
    pub async fn clinics(&self) -> ClinicServiceClient<Authed> {
        ClinicServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.root_token().await)),
        )
    }

    /// A new clinic named `label`, created by the super admin through the gateway.
    pub async fn create_clinic(&self, label: &str) -> identity::Clinic {
        let root = self.root_token().await;
        create_clinic_as(self.channel().await, &root, label).await
    }

    /// A clinic and one user per staff role in it, each signed in.
    pub async fn clinic_with_staff(&self, label: &str) -> ClinicStaff {
        let root = self.root_token().await;
        let channel = self.channel().await;
        let clinic = create_clinic_as(channel.clone(), &root, label).await;
        let mut users = UserServiceClient::with_interceptor(channel, Bearer(Some(root)));
        let mut tokens = Vec::new();
        let mut names = Vec::new();
        for role in [
            identity::UserRole::Admin,
            identity::UserRole::Provider,
            identity::UserRole::Staff,
        ] {
            let email = format!(
                "{}.{}@example.com",
                role.as_str_name().to_lowercase(),
                uuid_like()
            );
            let user = users
                .create_user(identity::CreateUserRequest {
                    parent: clinic.name.clone(),
                    user: Some(identity::User {
                        email: email.clone(),
                        display_name: format!("{label} {}", role.as_str_name()),
                        role: role as i32,
                        ..Default::default()
                    }),
                    password: STAFF_PASSWORD.into(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap();
            names.push(user.name);
            tokens.push(self.login(&email, STAFF_PASSWORD).await);
        }
        ClinicStaff {
            clinic,
            admin: tokens[0].clone(),
            provider: tokens[1].clone(),
            staff: tokens[2].clone(),
            admin_name: names[0].clone(),
            provider_name: names[1].clone(),
            staff_name: names[2].clone(),
        }
    }

    pub async fn stop(self) {
        self.suite.stop().await.unwrap();
        if let Some((uri, database)) = self.mongo {
            let conn =
                topsmile_kit::store::mongo::connect(&uri, &database, "e2e-cleanup", "primary")
                    .await
                    .unwrap();
            conn.database.drop().await.unwrap();
        }
    }
}

pub const STAFF_PASSWORD: &str = "staff password, long enough";

pub struct ClinicStaff {
    pub clinic: identity::Clinic,
    pub admin: String,
    pub provider: String,
    pub staff: String,
    pub admin_name: String,
    pub provider_name: String,
    pub staff_name: String,
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A channel to `addr` whose connections come from the loopback address `from` (e.g.
/// 127.0.0.2): another client address, for tests of what is counted per address.
pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from))
        .connect()
        .await
        .unwrap()
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A new clinic named `label`, created with the super admin's `root` token.
pub async fn create_clinic_as(channel: Channel, root: &str, label: &str) -> identity::Clinic {
    ClinicServiceClient::with_interceptor(channel, Bearer(Some(root.to_owned())))
        .create_clinic(identity::CreateClinicRequest {
            clinic: Some(new_clinic(label)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap()
}

pub fn new_clinic(name: &str) -> identity::Clinic {
    identity::Clinic {
        display_name: name.to_owned(),
        time_zone: "America/Sao_Paulo".to_owned(),
        phone: "+55 11 5555-0100".to_owned(),
        email: "front@example.com".to_owned(),
        ..Default::default()
    }
}

/// Calls any method with a request built from the descriptor, answering only the status
/// code (the tests that use it check that no data comes back: OK is a failure there).
pub async fn call_raw(
    channel: &Channel,
    token: &str,
    path: &str,
    request: prost_reflect::DynamicMessage,
) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(request);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let codec = tonic_prost::ProstCodec::<prost_reflect::DynamicMessage, ()>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.unary(req, path, codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// A request message whose `name` and `parent` (also inside the resource message it
/// carries) are the given resource names, so a call aims at someone else's data.
pub fn aimed_at(
    input: &prost_reflect::MessageDescriptor,
    name: &str,
    parent: &str,
) -> prost_reflect::DynamicMessage {
    use prost_reflect::{DynamicMessage, Value};
    let mut message = DynamicMessage::new(input.clone());
    for field in input.fields() {
        match field.name() {
            "name" => message.set_field(&field, Value::String(name.to_owned())),
            "parent" => message.set_field(&field, Value::String(parent.to_owned())),
            "etag" => {}
            _ => {
                if let Some(inner) = field.kind().as_message()
                    && inner.get_field_by_name("name").is_some()
                    && inner.full_name().starts_with("topsmile.")
                {
                    let mut resource = DynamicMessage::new(inner.clone());
                    resource.set_field_by_name("name", Value::String(name.to_owned()));
                    for text in ["display_name", "given_name", "family_name"] {
                        if inner.get_field_by_name(text).is_some() {
                            resource.set_field_by_name(text, Value::String("Taken over".into()));
                        }
                    }
                    message.set_field(&field, Value::Message(resource));
                }
            }
        }
    }
    message
}

/// A portal access token for the patient `patient_name` of `clinic_id`, from a real
/// portal sign-in through the gateway: the super admin gives the patient an email (if
/// they have none) and a portal password, then the patient signs in. Every guard checks
/// the token's session, so a token must come from a sign-in.
pub async fn patient_token(suite: &TestSuite, clinic_id: &str, patient_name: &str) -> String {
    use topsmile_proto::topsmile::patients::v1 as patients;
    const PORTAL_PASSWORD: &str = "a portal password for tests";
    let root = suite.root_token().await;
    let mut as_root = patients::patient_service_client::PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(root)),
    );
    let patient = as_root
        .get_patient(patients::GetPatientRequest {
            name: patient_name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let email = if patient.email.is_empty() {
        let id = patient_name.rsplit('/').next().unwrap_or("someone");
        let email = format!("portal.{id}@example.com");
        as_root
            .update_patient(patients::UpdatePatientRequest {
                patient: Some(patients::Patient {
                    name: patient_name.into(),
                    email: email.clone(),
                    etag: patient.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["email".into()],
                }),
            })
            .await
            .unwrap();
        email
    } else {
        patient.email
    };
    as_root
        .set_patient_password(patients::SetPatientPasswordRequest {
            name: patient_name.into(),
            new_password: PORTAL_PASSWORD.into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
    patient_sign_in(
        suite,
        &format!("clinics/{clinic_id}"),
        &email,
        PORTAL_PASSWORD,
    )
    .await
}

/// A portal sign-in through the gateway: the access token.
pub async fn patient_sign_in(
    suite: &TestSuite,
    clinic: &str,
    email: &str,
    password: &str,
) -> String {
    AuthServiceClient::new(suite.channel().await)
        .login_patient(identity::LoginPatientRequest {
            clinic: clinic.into(),
            email: email.into(),
            password: password.into(),
            device_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
}

/// Moves `staff`'s clinic to another IANA time zone (as its ADMIN).
pub async fn set_time_zone(suite: &TestSuite, staff: &ClinicStaff, zone: &str) {
    ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(staff.admin.clone())))
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: staff.clinic.name.clone(),
                time_zone: zone.into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
}

/// Sets `staff`'s clinic's slot step (as its ADMIN).
pub async fn set_slot_step(suite: &TestSuite, staff: &ClinicStaff, minutes: i64) {
    ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(staff.admin.clone())))
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: staff.clinic.name.clone(),
                booking_rules: Some(identity::BookingRules {
                    slot_step: Some(prost_types::Duration {
                        seconds: minutes * 60,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["booking_rules".into()],
            }),
        })
        .await
        .unwrap();
}

/// `patient`, created in `staff`'s clinic by its admin through the gateway.
pub async fn create_patient(
    suite: &TestSuite,
    staff: &ClinicStaff,
    patient: topsmile_proto::topsmile::patients::v1::Patient,
) -> topsmile_proto::topsmile::patients::v1::Patient {
    use topsmile_proto::topsmile::patients::v1 as patients;
    patients::patient_service_client::PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    )
    .create_patient(patients::CreatePatientRequest {
        parent: staff.clinic.name.clone(),
        patient: Some(patient),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .patient
    .unwrap()
}

/// A new patient of `staff`'s clinic, and a portal token for them.
pub async fn a_patient(
    suite: &TestSuite,
    staff: &ClinicStaff,
    family_name: &str,
) -> (String, String) {
    let name = create_patient(
        suite,
        staff,
        topsmile_proto::topsmile::patients::v1::Patient {
            given_name: "Pat".into(),
            family_name: family_name.into(),
            ..Default::default()
        },
    )
    .await
    .name;
    let clinic_id = staff.clinic.name.trim_start_matches("clinics/").to_owned();
    let token = patient_token(suite, &clinic_id, &name).await;
    (name, token)
}

/// Sends bytes as they are and reads nothing back.
#[derive(Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

/// The fields a status's `google.rpc.BadRequest` names, in order.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// What a gRPC-Web call over HTTP/1.1 got: the HTTP status, headers and whole body.
pub struct WebAnswer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl WebAnswer {
    /// The body's frames: (flag, payload), base64-decoded first for text.
    pub fn frames(&self, text: bool) -> Vec<(u8, Vec<u8>)> {
        use base64::Engine;
        let body = if text {
            base64::engine::general_purpose::STANDARD
                .decode(&self.body)
                .expect("base64 answer")
        } else {
            self.body.to_vec()
        };
        let mut frames = Vec::new();
        let mut rest = &body[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            frames.push((rest[0], rest[5..5 + len].to_vec()));
            rest = &rest[5 + len..];
        }
        assert!(rest.is_empty(), "a partial frame at the end");
        frames
    }

    /// The grpc-status: from the trailer frame, or the headers (trailers-only).
    pub fn grpc_status(&self, text: bool) -> String {
        if let Some(status) = self.headers.get("grpc-status") {
            return status.to_str().unwrap().to_owned();
        }
        let frames = self.frames(text);
        let (flag, trailers) = frames.last().expect("a trailer frame");
        assert_eq!(*flag, 0x80, "the last frame holds the trailers");
        let trailers = String::from_utf8(trailers.clone()).unwrap();
        trailers
            .split("\r\n")
            .find_map(|line| line.strip_prefix("grpc-status: "))
            .expect("grpc-status in the trailer frame")
            .to_owned()
    }
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn http1<V: AsRef<str>>(
    gateway: SocketAddr,
    method: http::Method,
    path: &str,
    headers: impl IntoIterator<Item = (&'static str, V)>,
    body: bytes::Bytes,
) -> WebAnswer {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway");
    for (name, value) in headers {
        request = request.header(name, value.as_ref());
    }
    let response = sender
        .send_request(request.body(http_body_util::Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    WebAnswer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}
