//! End-to-end tests: the whole suite (four services and the gateway) started on port 0
//! for each test, called over real gRPC through the gateway.

mod support;

use std::{net::SocketAddr, time::Duration};

use prost_types::FieldMask;
use support::{Authed, Bearer, TestSuite, connect, new_clinic};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use topsmile_kit::shutdown;
use topsmile_proto::topsmile::{
    identity::v1::{
        self as identity, auth_service_client::AuthServiceClient,
        clinic_service_client::ClinicServiceClient, user_service_client::UserServiceClient,
    },
    patients::v1::{
        VerifyPatientCredentialsRequest,
        patient_internal_service_client::PatientInternalServiceClient,
    },
};

async fn create(client: &mut ClinicServiceClient<Authed>, name: &str) -> identity::Clinic {
    let req = identity::CreateClinicRequest {
        clinic: Some(new_clinic(name)),
        request_id: String::new(),
    };
    client
        .create_clinic(req)
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap()
}

fn field_violations(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The clinic lifecycle through the gateway; run on each store.
async fn clinic_lifecycle(suite: &TestSuite) {
    let mut clinics = suite.clinics().await;
    let created = create(&mut clinics, "Sorriso Centro").await;
    assert!(created.name.starts_with("clinics/"));
    assert!(created.is_active);

    let got = clinics
        .get_clinic(identity::GetClinicRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(got, created);

    // Update with the current etag works and bumps it.
    let update = identity::UpdateClinicRequest {
        clinic: Some(identity::Clinic {
            display_name: "Sorriso Paulista".into(),
            ..created.clone()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["display_name".into()],
        }),
    };
    let updated = clinics
        .update_clinic(update.clone())
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(updated.display_name, "Sorriso Paulista");
    assert_ne!(updated.etag, created.etag);

    // The same update again carries a stale etag: ABORTED, nothing changes.
    let stale = clinics.update_clinic(update).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let deactivated = clinics
        .deactivate_clinic(identity::DeactivateClinicRequest {
            name: created.name.clone(),
            etag: updated.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert!(!deactivated.is_active);
    let reread = clinics
        .get_clinic(identity::GetClinicRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    assert!(
        !reread.into_inner().clinic.unwrap().is_active,
        "deactivated clinics stay readable"
    );

    // Paging: five more clinics, pages of two, every clinic once; inactive ones hidden.
    for i in 0..5 {
        create(&mut clinics, &format!("Clinic {i}")).await;
    }
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clinics
            .list_clinics(identity::ListClinicsRequest {
                page_size: 2,
                page_token,
                show_inactive: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.clinics.len() <= 2);
        names.extend(page.clinics.into_iter().map(|c| c.display_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        names,
        (0..5).map(|i| format!("Clinic {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn clinic_lifecycle_through_the_gateway_on_the_embedded_store() {
    let suite = TestSuite::start().await;
    clinic_lifecycle(&suite).await;
    suite.stop().await;
}

#[tokio::test]
async fn clinic_lifecycle_through_the_gateway_on_mongodb() {
    let Some(store) = support::mongo_store("clinic_lifecycle_through_the_gateway_on_mongodb")
    else {
        return;
    };
    let suite = TestSuite::start_on(store).await;
    clinic_lifecycle(&suite).await;
    suite.stop().await;
}

#[tokio::test]
async fn a_retried_create_with_the_same_request_id_returns_the_first_clinic() {
    let suite = TestSuite::start().await;
    let mut clinics = suite.clinics().await;
    let req = identity::CreateClinicRequest {
        clinic: Some(new_clinic("Once")),
        request_id: "create-once-1".into(),
    };
    let first = clinics
        .create_clinic(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = clinics.create_clinic(req).await.unwrap().into_inner();
    assert_eq!(first, again);
    suite.stop().await;
}

#[tokio::test]
async fn invalid_input_is_invalid_argument_with_field_violations() {
    let suite = TestSuite::start().await;
    let mut clinics = suite.clinics().await;

    let err = clinics
        .get_clinic(identity::GetClinicRequest {
            name: "clinic/42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err), ["name"]);

    let bad = identity::Clinic {
        time_zone: "Mars/Olympus_Mons".into(),
        email: "nope".into(),
        ..new_clinic(" ")
    };
    let err = clinics
        .create_clinic(identity::CreateClinicRequest {
            clinic: Some(bad),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        field_violations(&err),
        ["clinic.display_name", "clinic.email", "clinic.time_zone"]
    );

    let err = clinics
        .list_clinics(identity::ListClinicsRequest {
            page_size: 1,
            page_token: "forged".into(),
            show_inactive: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err), ["page_token"]);

    let err = clinics
        .get_clinic(identity::GetClinicRequest {
            name: "clinics/does-not-exist".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await;
}

#[tokio::test]
async fn a_page_token_used_with_other_parameters_is_rejected() {
    let suite = TestSuite::start().await;
    let mut clinics = suite.clinics().await;
    for i in 0..3 {
        create(&mut clinics, &format!("C{i}")).await;
    }
    let page = clinics
        .list_clinics(identity::ListClinicsRequest {
            page_size: 1,
            page_token: String::new(),
            show_inactive: false,
        })
        .await
        .unwrap()
        .into_inner();
    let err = clinics
        .list_clinics(identity::ListClinicsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            show_inactive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), ["page_token"]);
    suite.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_public_service_and_no_internal_one() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let suite = TestSuite::start().await;
    let mut client = ServerReflectionClient::new(suite.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let public = topsmile_kit::policy::PolicyTable::builtin()
        .unwrap()
        .public_services();
    for service in &public {
        assert!(names.contains(service), "{service} not listed: {names:?}");
    }
    assert!(
        names.iter().all(|n| !n.contains("Internal")),
        "internal service listed: {names:?}"
    );
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"));

    // `describe` finds internal services no more than `list` does; public ones it finds.
    let describe = |symbol: &str| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    for (symbol, found) in [
        ("topsmile.patients.v1.PatientInternalService", false),
        ("topsmile.identity.v1.IdentityInternalService", false),
        ("topsmile.patients.v1.PatientService", true),
    ] {
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([describe(symbol)]))
            .await
            .unwrap()
            .into_inner();
        // tonic's reflection answers an unknown symbol with a NOT_FOUND status on the
        // stream; other servers with an ErrorResponse message: both mean "not found".
        match answers.message().await {
            Ok(Some(answer)) => match answer.message_response {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert!(
                        found,
                        "{symbol} described: {} files",
                        files.file_descriptor_proto.len()
                    );
                }
                Some(MessageResponse::ErrorResponse(e)) => {
                    assert!(!found, "{symbol} not found: {e:?}");
                }
                other => panic!("unexpected reflection answer {other:?}"),
            },
            Err(status) if status.code() == Code::NotFound => {
                assert!(!found, "{symbol} not found: {status:?}");
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    suite.stop().await;
}

#[tokio::test]
async fn unknown_and_internal_methods_are_unimplemented_at_the_edge() {
    let suite = TestSuite::start().await;
    let mut grpc = tonic::client::Grpc::new(suite.channel().await);
    grpc.ready().await.unwrap();
    let path =
        http::uri::PathAndQuery::from_static("/topsmile.identity.v1.ClinicService/DropAllClinics");
    let err = grpc
        .unary::<_, identity::GetClinicResponse, _>(
            Request::new(identity::GetClinicRequest::default()),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    let mut internal = PatientInternalServiceClient::new(suite.channel().await);
    let err = internal
        .verify_patient_credentials(VerifyPatientCredentialsRequest {
            email: "a@b.co".into(),
            password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    suite.stop().await;
}

#[tokio::test]
async fn health_is_served_overall_and_per_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let suite = TestSuite::start().await;
    let mut health = HealthClient::new(suite.channel().await);
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
    // Per-service health follows the upstream probes, which run right after start.
    let service = "topsmile.identity.v1.ClinicService".to_owned();
    let mut status = ServingStatus::Unknown as i32;
    for _ in 0..50 {
        if let Ok(answer) = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
        {
            status = answer.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, ServingStatus::Serving as i32);
    suite.stop().await;
}

#[tokio::test]
async fn an_oversize_message_is_refused_and_the_connection_stays_usable() {
    let suite = TestSuite::start().await;
    let mut clinics = suite.clinics().await;
    let huge = identity::Clinic {
        display_name: "x".repeat(200 * 1024),
        ..new_clinic("")
    };
    let err = clinics
        .create_clinic(identity::CreateClinicRequest {
            clinic: Some(huge),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    // tonic refuses a message over the decoding limit with OUT_OF_RANGE, naming the limit.
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("limit"), "{err:?}");
    // Nothing was written, and the same connection still serves calls.
    let page = clinics
        .list_clinics(identity::ListClinicsRequest {
            page_size: 10,
            page_token: String::new(),
            show_inactive: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.clinics.is_empty());
    suite.stop().await;
}

/// A gateway in front of the given identity replicas (the other areas point nowhere).
async fn gateway_for(
    identity_upstreams: String,
) -> (SocketAddr, shutdown::Trigger, tokio::task::JoinHandle<()>) {
    let config = topsmile_gateway::GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_upstreams,
        edge: topsmile_gateway::EdgeSettings {
            upstream_retry_ms: 60_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let gateway = topsmile_gateway::Gateway::new(&topsmile_gateway::GatewayConfig {
        service_secret: Some(secrecy::SecretString::from(
            "a test secret of at least 32 bytes",
        )),
        ..config.clone()
    })
    .unwrap();
    let listener = topsmile_kit::server::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move { gateway.serve(listener, stop).await.unwrap() });
    (addr, trigger, task)
}

/// An address where nothing listens: bound, then released.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn a_stopped_upstream_is_unavailable() {
    let dead = closed_port().await;
    let (gateway, trigger, task) = gateway_for(dead.to_string()).await;
    // Login is public: the gateway forwards it without a token, into the dead upstream.
    let mut auth = identity::auth_service_client::AuthServiceClient::new(connect(gateway).await);
    let err = auth
        .login(identity::LoginRequest {
            email: "someone@example.com".into(),
            password: "some password here".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    trigger.fire();
    task.await.unwrap();
}

#[tokio::test]
async fn calls_skip_a_dead_replica_and_reach_a_live_one() {
    let suite = TestSuite::start().await;
    let live = suite.suite.services["identity"];
    let dead = closed_port().await;
    let (gateway, trigger, task) = gateway_for(format!("{dead},{live}")).await;
    let token = suite.root_token().await;
    let mut clinics =
        ClinicServiceClient::with_interceptor(connect(gateway).await, Bearer(Some(token)));
    for i in 0..6 {
        create(&mut clinics, &format!("Replica test {i}")).await;
    }
    trigger.fire();
    task.await.unwrap();
    suite.stop().await;
}

#[tokio::test]
async fn calling_a_service_directly_behaves_like_the_gateway() {
    let suite = TestSuite::start().await;
    let token = suite.root_token().await;
    let mut direct = ClinicServiceClient::with_interceptor(
        connect(suite.suite.services["identity"]).await,
        Bearer(Some(token)),
    );
    let created = create(&mut direct, "Direct").await;
    let mut via_gateway = suite.clinics().await;
    let got = via_gateway
        .get_clinic(identity::GetClinicRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().clinic.unwrap(), created);
    suite.stop().await;
}

/// Signs in through the gateway as if forwarded by a load balancer for `client`.
async fn login_forwarded_for(
    suite: &TestSuite,
    client: &'static str,
    email: &str,
    password: &str,
) -> Result<(), Status> {
    let mut request = Request::new(identity::LoginRequest {
        email: email.into(),
        password: password.into(),
        device_token: String::new(),
    });
    request.metadata_mut().insert(
        "x-forwarded-for",
        tonic::metadata::MetadataValue::from_static(client),
    );
    AuthServiceClient::new(suite.channel().await)
        .login(request)
        .await
        .map(drop)
}

/// A user of a new clinic to guess the password of; their email.
async fn a_user_to_guess(suite: &TestSuite, label: &str) -> String {
    let email = format!("guessed.{label}@example.com");
    let clinic = suite.clinic_with_staff(label).await;
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(clinic.admin)))
        .create_user(identity::CreateUserRequest {
            parent: clinic.clinic.name.clone(),
            user: Some(identity::User {
                email: email.clone(),
                display_name: "Guessed".into(),
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            password: support::STAFF_PASSWORD.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    email
}

/// Behind a trusted load balancer (here: loopback), the sign-in lock counts each
/// forwarded client apart: a guesser locks out only themself.
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_counted_apart() {
    let suite = TestSuite::with(support::Setup {
        trusted_proxies: "127.0.0.0/8".into(),
        ..support::Setup::default()
    })
    .await;
    let email = a_user_to_guess(&suite, "Behind").await;
    for i in 0..6 {
        let wrong = format!("wrong guess number {i}");
        assert!(
            login_forwarded_for(&suite, "198.51.100.7", &email, &wrong)
                .await
                .is_err()
        );
    }
    let err = login_forwarded_for(&suite, "198.51.100.7", &email, support::STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the guesser is locked out"
    );
    login_forwarded_for(&suite, "198.51.100.8", &email, support::STAFF_PASSWORD)
        .await
        .expect("another client behind the same balancer signs in");
    suite.stop().await;
}

/// Without trusted proxies, a forwarding header is the client's own words and changes
/// nothing: guesses from one connection are counted together whatever it claims.
#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let suite = TestSuite::start().await;
    let email = a_user_to_guess(&suite, "Spoofer").await;
    let claims = [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",
        "203.0.113.5",
        "203.0.113.6",
    ];
    for (i, claim) in claims.into_iter().enumerate() {
        let wrong = format!("wrong guess number {i}");
        assert!(
            login_forwarded_for(&suite, claim, &email, &wrong)
                .await
                .is_err()
        );
    }
    let err = login_forwarded_for(&suite, "203.0.113.99", &email, support::STAFF_PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a new claimed address does not escape the lock"
    );
    suite.stop().await;
}

/// A unary request sent frame by frame over raw HTTP/2, as a client that has not yet
/// ended its side: the gRPC length prefix says when the message is whole.
fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed
}

/// The gateway forwards a call as soon as its message is complete (the proxy's promise:
/// it does not wait for the frame that ends the client's side), whatever frames the
/// message came in; and it refuses a message declared larger than the limit from its
/// prefix alone, without waiting for the rest.
#[tokio::test]
async fn a_call_goes_on_once_its_message_is_whole_and_an_oversize_one_is_refused_by_its_prefix() {
    use bytes::Bytes;
    let suite = TestSuite::start().await;
    let token = suite.root_token().await;
    let clinic = create(&mut suite.clinics().await, "Frame by frame").await;
    let gateway = suite.suite.gateway;
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let get_clinic = || {
        http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{gateway}/topsmile.identity.v1.ClinicService/GetClinic"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    };

    // The message in two frames, a pause between them, and no END_STREAM at all.
    let message = grpc_frame(&identity::GetClinicRequest {
        name: clinic.name.clone(),
    });
    let mut client = client.ready().await.unwrap();
    let (response, mut request_body) = client.send_request(get_clinic(), false).unwrap();
    let (head, tail) = message.split_at(3);
    request_body
        .send_data(Bytes::copy_from_slice(head), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    request_body
        .send_data(Bytes::copy_from_slice(tail), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered while the client's side is still open")
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = response.into_body();
    let mut answer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .unwrap()
        .expect("grpc-status trailers");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    let answer: identity::GetClinicResponse =
        prost::Message::decode(answer.get(5..).expect("a length-prefixed message")).unwrap();
    assert_eq!(answer.clinic.map(|c| c.name), Some(clinic.name.clone()));

    // A prefix declaring 256 MiB: refused at once, the body never sent.
    let mut client = client.ready().await.unwrap();
    let (response, mut request_body) = client.send_request(get_clinic(), false).unwrap();
    request_body
        .send_data(Bytes::from_static(&[0, 0x10, 0, 0, 0]), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("refused without the rest of the message")
        .unwrap();
    assert_eq!(
        response.headers()["grpc-status"],
        (Code::OutOfRange as i32).to_string().as_str(),
        "{:?}",
        response.headers()
    );
    suite.stop().await;
}

/// gRPC-Web reaches the same calls with the same token and policy as gRPC: the
/// super admin signs in and reads a clinic over HTTP/1.1; without a token the call is
/// UNAUTHENTICATED, with a clinic's staff token another clinic is out of reach.
#[tokio::test]
async fn grpc_web_calls_get_the_same_token_and_policy_as_grpc() {
    use prost::Message;
    let suite = TestSuite::start().await;
    let clinic = suite.create_clinic("Sorriso Web").await;
    let other = suite.clinic_with_staff("Sorriso Outro").await;
    let frame = |message: Vec<u8>| {
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&message);
        bytes::Bytes::from(framed)
    };
    let web = |path: &'static str, token: Option<String>, message: Vec<u8>| {
        let mut headers = vec![("content-type", "application/grpc-web+proto".to_owned())];
        if let Some(token) = token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        support::http1(
            suite.suite.gateway,
            http::Method::POST,
            path,
            headers,
            frame(message),
        )
    };
    let login = identity::LoginRequest {
        email: support::ROOT_EMAIL.into(),
        password: support::ROOT_PASSWORD.into(),
        device_token: String::new(),
    };
    let signed_in = web(
        "/topsmile.identity.v1.AuthService/Login",
        None,
        login.encode_to_vec(),
    )
    .await;
    assert_eq!(signed_in.grpc_status(false), "0");
    let token = identity::LoginResponse::decode(&signed_in.frames(false)[0].1[..])
        .unwrap()
        .access_token;
    let get = identity::GetClinicRequest {
        name: clinic.name.clone(),
    }
    .encode_to_vec();
    const GET_CLINIC: &str = "/topsmile.identity.v1.ClinicService/GetClinic";
    let got = web(GET_CLINIC, Some(token), get.clone()).await;
    assert_eq!(got.grpc_status(false), "0");
    let read = identity::GetClinicResponse::decode(&got.frames(false)[0].1[..]).unwrap();
    assert_eq!(read.clinic.unwrap().name, clinic.name);

    let anonymous = web(GET_CLINIC, None, get.clone()).await;
    assert_eq!(anonymous.grpc_status(false), "16", "UNAUTHENTICATED");
    let outsider = web(GET_CLINIC, Some(other.admin.clone()), get).await;
    assert_eq!(outsider.grpc_status(false), "7", "PERMISSION_DENIED");
    suite.stop().await;
}

/// Serves the built booking page (`web/dist`) on `listener`, as a web server would.
async fn serve_page(listener: tokio::net::TcpListener, dist: std::path::PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let dist = dist.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let dist = dist.clone();
                    async move {
                        let (file, kind) = match req.uri().path() {
                            "/" | "/index.html" => ("index.html", "text/html; charset=utf-8"),
                            "/app.js" => ("app.js", "text/javascript"),
                            _ => ("", ""),
                        };
                        let mut response = match std::fs::read(dist.join(file)) {
                            Ok(bytes) if !file.is_empty() => http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(bytes)),
                            ),
                            _ => {
                                let mut missing = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *missing.status_mut() = http::StatusCode::NOT_FOUND;
                                missing
                            }
                        };
                        if !kind.is_empty() {
                            response
                                .headers_mut()
                                .insert("content-type", http::HeaderValue::from_static(kind));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The browser client end to end, in real headless Chromium: the page (served from
/// another origin, so CORS is exercised as a browser does it) signs a receptionist in,
/// lists a provider's free slots for a day and books the first over gRPC-Web; the
/// booking is then read back with grpcurl over gRPC.
#[tokio::test]
async fn a_browser_signs_in_lists_a_days_slots_and_books_one() {
    use topsmile_proto::topsmile::providers::v1 as providers;
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = web.join("dist/index.html").exists()
        && web.join("node_modules/playwright-core").exists()
        && std::path::Path::new(&chromium).exists();
    if !ready {
        assert!(
            std::env::var("CI").is_err(),
            "the browser test needs web/ built and Chromium: scripts/test sets both up"
        );
        eprintln!("skipped: web/ is not built or Chromium is missing (scripts/test sets them up)");
        return;
    }
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = page_listener.local_addr().unwrap();
    tokio::spawn(serve_page(page_listener, web.join("dist")));
    let suite = TestSuite::with(support::Setup {
        cors_origins: format!("http://{page}"),
        ..Default::default()
    })
    .await;
    let staff = suite.clinic_with_staff("Sorriso Navegador").await;
    let email = "reception@sorriso-navegador.example";
    let password = "reception password, long enough";
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(staff.admin.clone())))
        .create_user(identity::CreateUserRequest {
            parent: staff.clinic.name.clone(),
            user: Some(identity::User {
                email: email.into(),
                display_name: "Reception".into(),
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            password: password.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let every_day = (1..=7)
        .map(|day| providers::WorkingDay {
            day,
            intervals: vec![providers::TimeInterval {
                start_minute: 9 * 60,
                end_minute: 12 * 60,
            }],
        })
        .collect();
    let provider = providers::provider_service_client::ProviderServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    )
    .create_provider(providers::CreateProviderRequest {
        parent: staff.clinic.name.clone(),
        provider: Some(providers::Provider {
            display_name: "Dr. Bruno".into(),
            working_hours: every_day,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .provider
    .unwrap()
    .name;
    let patient = support::create_patient(
        &suite,
        &staff,
        topsmile_proto::topsmile::patients::v1::Patient {
            given_name: "José".into(),
            family_name: "Silva".into(),
            ..Default::default()
        },
    )
    .await
    .name;
    let day = topsmile_kit::time::now()
        .checked_add(jiff::SignedDuration::from_hours(48))
        .unwrap()
        .strftime("%Y-%m-%d")
        .to_string();
    let gateway = suite.suite.gateway;
    let url = format!(
        "http://{page}/index.html?gateway=http://{gateway}&clinic={}&provider={provider}&patient={patient}&day={day}",
        staff.clinic.name
    );
    let driven = tokio::process::Command::new("node")
        .arg(web.join("tests/book.mjs"))
        .args([&url, email, password])
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .unwrap();
    assert!(
        driven.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&driven.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&driven.stdout).unwrap();
    assert!(seen["slots"].as_u64().unwrap() > 0, "{seen}");
    let booked = seen["booked"].as_str().unwrap().to_owned();
    assert!(
        booked.starts_with(&format!("{}/appointments/", staff.clinic.name)),
        "{booked}"
    );

    // The booking, read back over gRPC with grpcurl.
    let token = suite.login(email, password).await;
    let read = tokio::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
        ])
        .arg(serde_json::json!({ "name": booked }).to_string())
        .arg(gateway.to_string())
        .arg("topsmile.appointments.v1.AppointmentService/GetAppointment")
        .output()
        .await
        .expect("grpcurl (scripts/test installs it)");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let start = got["appointment"]["startTime"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    let clicked = seen["start"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_eq!(
        start, clicked,
        "the slot the browser clicked is the one booked"
    );
    assert_eq!(got["appointment"]["patient"], patient.as_str());
    suite.stop().await;
}
