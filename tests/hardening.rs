//! Defects found by probing what landed, each pinned by a test through the gateway:
//! update masks that erased data, an audit trail outsiders could write into, error
//! answers that echoed unbounded input (and turned into "retry" at the edge), undecodable
//! bodies reported as INTERNAL, internal services visible to `describe`, and weak
//! passwords and time zone names that were accepted.

mod support;

use support::violations;

use prost_types::FieldMask;
use support::{Authed, Bearer, TestSuite, mongo_store, patient_token};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use topsmile_proto::{
    google::r#type::Date,
    topsmile::{
        common::v1::PostalAddress,
        identity::v1::{
            self as identity, auth_service_client::AuthServiceClient,
            clinic_service_client::ClinicServiceClient, user_service_client::UserServiceClient,
        },
        patients::v1::{
            self as pb, audit_service_client::AuditServiceClient,
            medical_history_service_client::MedicalHistoryServiceClient,
            patient_service_client::PatientServiceClient,
        },
    },
};

async fn clinics_as(suite: &TestSuite, token: &str) -> ClinicServiceClient<Authed> {
    ClinicServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.to_owned())))
}

async fn users_as(suite: &TestSuite, token: &str) -> UserServiceClient<Authed> {
    UserServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.to_owned())))
}

async fn patients_as(suite: &TestSuite, token: &str) -> PatientServiceClient<Authed> {
    PatientServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.to_owned())))
}

async fn histories_as(suite: &TestSuite, token: &str) -> MedicalHistoryServiceClient<Authed> {
    MedicalHistoryServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(token.to_owned())),
    )
}

async fn audit_as(suite: &TestSuite, token: &str) -> AuditServiceClient<Authed> {
    AuditServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.to_owned())))
}

fn empty_mask() -> Option<FieldMask> {
    Some(FieldMask { paths: vec![] })
}

fn address() -> PostalAddress {
    PostalAddress {
        address_lines: vec!["Rua Augusta 100".into()],
        locality: "São Paulo".into(),
        postal_code: "01305-000".into(),
        region_code: "BR".into(),
        ..Default::default()
    }
}

async fn a_full_patient(suite: &TestSuite, token: &str, clinic: &str) -> pb::Patient {
    let tag = clinic.trim_start_matches("clinics/");
    patients_as(suite, token)
        .await
        .create_patient(pb::CreatePatientRequest {
            parent: clinic.to_owned(),
            patient: Some(pb::Patient {
                given_name: "José".into(),
                family_name: "Álvarez".into(),
                email: format!("jose.{tag}@example.com"),
                phone: "+55 11 91234-5678".into(),
                date_of_birth: Some(Date {
                    year: 1988,
                    month: 3,
                    day: 14,
                }),
                address: Some(address()),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
}

/// AIP-134, as every Update's proto comment promises: an empty mask means "every field
/// that is set". A partial resource with an empty mask changes what it carries and keeps
/// everything else.
async fn empty_masks_change_only_what_is_set(suite: TestSuite) {
    let a = suite.clinic_with_staff("Masks").await;

    // UpdateClinic: only the phone is sent.
    let clinic = clinics_as(&suite, &a.admin)
        .await
        .update_clinic(identity::UpdateClinicRequest {
            clinic: Some(identity::Clinic {
                name: a.clinic.name.clone(),
                phone: "+55 11 5555-0199".into(),
                ..Default::default()
            }),
            update_mask: empty_mask(),
        })
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    assert_eq!(clinic.phone, "+55 11 5555-0199");
    assert_eq!(clinic.display_name, a.clinic.display_name);
    assert_eq!(clinic.email, a.clinic.email);
    assert_eq!(clinic.time_zone, a.clinic.time_zone);

    // UpdateUser: only the display name (this used to fail with "role is required").
    let user = users_as(&suite, &a.admin)
        .await
        .update_user(identity::UpdateUserRequest {
            user: Some(identity::User {
                name: a.staff_name.clone(),
                display_name: "Front Desk Renamed".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.display_name, "Front Desk Renamed");
    assert_eq!(user.role, identity::UserRole::Staff as i32);
    assert!(user.email.contains("staff"), "{}", user.email);

    // UpdatePatient: names and phone only; email, date of birth and address stay (this
    // used to erase them, and with the email the patient's portal sign-in).
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let updated = patients_as(&suite, &a.staff)
        .await
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                name: patient.name.clone(),
                given_name: "José Carlos".into(),
                family_name: "Álvarez Lima".into(),
                phone: "+55 11 90000-0000".into(),
                ..Default::default()
            }),
            update_mask: empty_mask(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(updated.given_name, "José Carlos");
    assert_eq!(updated.family_name, "Álvarez Lima");
    assert_eq!(updated.phone, "+55 11 90000-0000");
    assert_eq!(updated.email, patient.email);
    assert_eq!(updated.date_of_birth, patient.date_of_birth);
    assert_eq!(updated.address, patient.address);

    // UpdateMedicalHistory: first the allergies, then only the notes with an empty mask
    // (this used to be refused); the allergies stay.
    let history_name = format!("{}/medicalHistory", patient.name);
    let mut histories = histories_as(&suite, &a.admin).await;
    let first = histories
        .update_medical_history(pb::UpdateMedicalHistoryRequest {
            medical_history: Some(pb::MedicalHistory {
                name: history_name.clone(),
                etag: "0".into(),
                allergies: vec![pb::Allergy {
                    allergen: "penicillin".into(),
                    reaction: "rash".into(),
                    severity: pb::AllergySeverity::Severe as i32,
                }],
                chief_complaint: "tooth ache".into(),
                ..Default::default()
            }),
            update_mask: empty_mask(),
        })
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    let second = histories
        .update_medical_history(pb::UpdateMedicalHistoryRequest {
            medical_history: Some(pb::MedicalHistory {
                name: history_name.clone(),
                etag: first.etag.clone(),
                notes: "prefers mornings".into(),
                ..Default::default()
            }),
            update_mask: empty_mask(),
        })
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    assert_eq!(second.notes, "prefers mornings");
    assert_eq!(second.allergies, first.allergies);
    assert_eq!(second.chief_complaint, "tooth ache");

    // A named path that is not updatable is a field violation of update_mask.
    let refused = patients_as(&suite, &a.staff)
        .await
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                name: patient.name.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["is_active".into(), "no_such_field".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = violations(&refused);
    assert_eq!(fields, ["update_mask", "update_mask"], "{refused:?}");
    suite.stop().await;
}

#[tokio::test]
async fn empty_update_masks_change_only_the_fields_that_are_set() {
    empty_masks_change_only_what_is_set(TestSuite::start().await).await;
}

#[tokio::test]
async fn empty_update_masks_change_only_the_fields_that_are_set_on_mongodb() {
    if let Some(store) = mongo_store("empty_update_masks_on_mongodb") {
        empty_masks_change_only_what_is_set(TestSuite::start_on(store).await).await;
    }
}

async fn trail(suite: &TestSuite, admin: &str, clinic: &str) -> Vec<pb::AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit_as(suite, admin)
            .await
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: clinic.to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// Probes of another clinic's records, of made-up clinics and with huge names land in
/// the prober's own trail, bounded; the target's trail holds nothing of them and every
/// listing still reads back.
async fn probes_land_in_the_probers_trail(suite: TestSuite) {
    let a = suite.clinic_with_staff("Prober").await;
    let b = suite.clinic_with_staff("Target").await;
    let b_patient = a_full_patient(&suite, &b.staff, &b.clinic.name).await;
    let a_patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let a_clinic_id = a.clinic.name.trim_start_matches("clinics/");
    let portal = patient_token(&suite, a_clinic_id, &a_patient.name).await;

    let huge = format!("clinics/{}/patients/x", "b".repeat(60_000));
    let probes = [
        b_patient.name.clone(),
        "clinics/made-up-clinic/patients/p1".to_owned(),
        huge,
    ];
    for token in [&a.staff, &portal] {
        for name in &probes {
            let err = patients_as(&suite, token)
                .await
                .get_patient(pb::GetPatientRequest { name: name.clone() })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err.code(),
                    Code::PermissionDenied | Code::InvalidArgument | Code::NotFound
                ),
                "{err:?}"
            );
            assert!(
                err.message().len() < 1024,
                "echoed {} bytes",
                err.message().len()
            );
        }
    }

    let target = trail(&suite, &b.admin, &b.clinic.name).await;
    assert!(!target.is_empty(), "the target's own work is in its trail");
    assert!(
        target
            .iter()
            .all(|e| !e.actor.contains(a_clinic_id) && e.actor != a_patient.name),
        "a probe landed in the target's trail: {target:?}"
    );
    let own = trail(&suite, &a.admin, &a.clinic.name).await;
    let probes_recorded = own
        .iter()
        .filter(|e| e.action.ends_with("GetPatient") && e.outcome != "OK")
        .count();
    assert_eq!(probes_recorded, 6, "{own:?}");
    assert!(
        own.iter()
            .all(|e| e.resource.chars().count() <= 200 + "...[cut]".len()),
        "an event kept an unbounded resource"
    );
    assert!(own.iter().any(|e| e.resource.ends_with("...[cut]")));
    // Nobody filed anything under the made-up clinic either.
    let root = suite.root_token().await;
    let made_up = audit_as(&suite, &root)
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            parent: "clinics/made-up-clinic".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(made_up.audit_events.is_empty(), "{made_up:?}");
    suite.stop().await;
}

#[tokio::test]
async fn probes_of_other_clinics_land_in_the_probers_own_trail() {
    probes_land_in_the_probers_trail(TestSuite::start().await).await;
}

#[tokio::test]
async fn probes_of_other_clinics_land_in_the_probers_own_trail_on_mongodb() {
    if let Some(store) = mongo_store("probes_land_in_the_probers_trail_on_mongodb") {
        probes_land_in_the_probers_trail(TestSuite::start_on(store).await).await;
    }
}

#[tokio::test]
async fn failed_sign_ins_and_unlocks_are_recorded_in_the_clinics_trail() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Portal Trail").await;
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    patients_as(&suite, &a.admin)
        .await
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: patient.name.clone(),
            new_password: "josé's portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
    let wrong = AuthServiceClient::new(suite.channel().await)
        .login_patient(identity::LoginPatientRequest {
            clinic: a.clinic.name.clone(),
            email: patient.email.clone(),
            password: "not josé's password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let events = trail(&suite, &a.admin, &a.clinic.name).await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action.ends_with("VerifyPatientCredentials"))
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].resource, patient.name);
    assert_eq!(failed[0].outcome, "UNAUTHENTICATED");

    // Staff sign-ins to the clinic's accounts, failed ones included, and an admin's
    // unlock, are in the same trail.
    let email = "trail.staff@example.com";
    let staff = users_as(&suite, &a.admin)
        .await
        .create_user(identity::CreateUserRequest {
            parent: a.clinic.name.clone(),
            user: Some(identity::User {
                email: email.into(),
                display_name: "Trail Staff".into(),
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            password: support::STAFF_PASSWORD.into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let wrong = AuthServiceClient::new(suite.channel().await)
        .login(identity::LoginRequest {
            email: email.into(),
            password: "not the staff password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    suite.login(email, support::STAFF_PASSWORD).await;
    users_as(&suite, &a.admin)
        .await
        .unlock_user(identity::UnlockUserRequest {
            name: staff.name.clone(),
        })
        .await
        .unwrap();
    let events = trail(&suite, &a.admin, &a.clinic.name).await;
    let staff_events: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.resource == staff.name)
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        staff_events,
        [
            ("AuthService/Login", "anonymous", "UNAUTHENTICATED"),
            ("AuthService/Login", staff.name.as_str(), "OK"),
            ("UserService/UnlockUser", a.admin_name.as_str(), "OK"),
        ],
        "{events:?}"
    );
    suite.stop().await;
}

/// A name too long to be one, and a history with 100 bad entries, are INVALID_ARGUMENT
/// with a small answer, never UNAVAILABLE-with-RetryInfo (which made clients retry a
/// request that can never succeed).
#[tokio::test]
async fn bad_input_answers_stay_small_and_are_never_retryable() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Small Errors").await;
    let long = format!("clinics/{}", "x".repeat(60_000));
    let err = clinics_as(&suite, &a.admin)
        .await
        .get_clinic(identity::GetClinicRequest { name: long })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 512, "{} bytes", err.message().len());
    assert!(err.get_error_details().retry_info().is_none());

    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let bad_allergies = (0..100)
        .map(|i| pb::Allergy {
            allergen: String::new(),
            reaction: format!("reaction {i}"),
            severity: pb::AllergySeverity::Low as i32,
        })
        .collect();
    let err = histories_as(&suite, &a.admin)
        .await
        .update_medical_history(pb::UpdateMedicalHistoryRequest {
            medical_history: Some(pb::MedicalHistory {
                name: format!("{}/medicalHistory", patient.name),
                etag: "0".into(),
                allergies: bad_allergies,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = err.get_error_details();
    assert_eq!(violations(&err).len(), topsmile_kit::error::MAX_VIOLATIONS);
    let more = details
        .error_info()
        .and_then(|i| i.metadata.get("more_violations").cloned());
    assert_eq!(more.as_deref(), Some("80"));
    assert!(details.retry_info().is_none());
    suite.stop().await;
}

/// Bytes that are not the request message are the caller's mistake: INVALID_ARGUMENT,
/// with no decoder internals in the message.
#[tokio::test]
async fn a_malformed_request_body_is_invalid_argument() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Garbage").await;
    // Field 1 (name, a string) announced as 100 bytes long, with 3 bytes following.
    let garbage = bytes::Bytes::from_static(&[0x0a, 0x64, b'a', b'b', b'c']);
    let mut grpc = tonic::client::Grpc::new(suite.channel().await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(garbage);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", a.admin).parse().unwrap(),
    );
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/topsmile.identity.v1.ClinicService/GetClinic",
    );
    let err = grpc.unary(req, path, support::RawCodec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!err.message().contains("DecodeError"), "{}", err.message());
    suite.stop().await;
}

#[tokio::test]
async fn common_passwords_and_ambiguous_time_zones_are_refused() {
    let suite = TestSuite::start().await;
    let root = suite.root_token().await;
    let a = suite.clinic_with_staff("Policies").await;
    for weak in [
        "password1234",
        "aaaaaaaaaaaa",
        "            ",
        "QWERTY123456",
    ] {
        let err = users_as(&suite, &a.admin)
            .await
            .create_user(identity::CreateUserRequest {
                parent: a.clinic.name.clone(),
                user: Some(identity::User {
                    email: "weak@example.com".into(),
                    display_name: "Weak".into(),
                    role: identity::UserRole::Staff as i32,
                    ..Default::default()
                }),
                password: weak.into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{weak:?}: {err:?}");
    }
    for zone in ["america/sao_paulo", "localtime", "Factory"] {
        let err = clinics_as(&suite, &root)
            .await
            .create_clinic(identity::CreateClinicRequest {
                clinic: Some(identity::Clinic {
                    time_zone: zone.into(),
                    ..support::new_clinic("Zones")
                }),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{zone:?}: {err:?}");
        assert_eq!(violations(&err), ["clinic.time_zone"]);
    }
    suite.stop().await;
}

/// Once a clinic is deactivated its people cannot sign in or refresh, and its records
/// refuse writes (FAILED_PRECONDITION) to everyone but super admins; reads still work.
async fn a_deactivated_clinic_is_read_only(suite: TestSuite) {
    let a = suite.clinic_with_staff("Closing Down").await;
    let root = suite.root_token().await;
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    patients_as(&suite, &a.admin)
        .await
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: patient.name.clone(),
            new_password: "josé's portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
    let admin_email = "closing.admin@example.com";
    users_as(&suite, &a.admin)
        .await
        .create_user(identity::CreateUserRequest {
            parent: a.clinic.name.clone(),
            user: Some(identity::User {
                email: admin_email.into(),
                display_name: "Second Admin".into(),
                role: identity::UserRole::Admin as i32,
                ..Default::default()
            }),
            password: support::STAFF_PASSWORD.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let session = suite.login_pair(admin_email, support::STAFF_PASSWORD).await;

    clinics_as(&suite, &root)
        .await
        .deactivate_clinic(identity::DeactivateClinicRequest {
            name: a.clinic.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();

    // No sign-in, no refresh.
    let mut auth = AuthServiceClient::new(suite.channel().await);
    let staff = auth
        .login(identity::LoginRequest {
            email: admin_email.into(),
            password: support::STAFF_PASSWORD.into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(staff.code(), Code::Unauthenticated);
    let portal = auth
        .login_patient(identity::LoginPatientRequest {
            clinic: a.clinic.name.clone(),
            email: patient.email.clone(),
            password: "josé's portal password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(portal.code(), Code::Unauthenticated);
    let refreshed = auth
        .refresh_token(identity::RefreshTokenRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refreshed.code(), Code::Unauthenticated);

    // Tokens issued before still read, but every write is refused.
    let inactive = |status: Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone());
        assert_eq!(reason.as_deref(), Some("CLINIC_INACTIVE"));
    };
    patients_as(&suite, &a.admin)
        .await
        .get_patient(pb::GetPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap();
    inactive(
        patients_as(&suite, &a.staff)
            .await
            .create_patient(pb::CreatePatientRequest {
                parent: a.clinic.name.clone(),
                patient: Some(pb::Patient {
                    given_name: "Late".into(),
                    family_name: "Comer".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap_err(),
    );
    inactive(
        patients_as(&suite, &a.admin)
            .await
            .update_patient(pb::UpdatePatientRequest {
                patient: Some(pb::Patient {
                    name: patient.name.clone(),
                    phone: "+55 11 90000-1111".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err(),
    );
    inactive(
        histories_as(&suite, &a.admin)
            .await
            .update_medical_history(pb::UpdateMedicalHistoryRequest {
                medical_history: Some(pb::MedicalHistory {
                    name: format!("{}/medicalHistory", patient.name),
                    etag: "0".into(),
                    notes: "late note".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err(),
    );
    inactive(
        clinics_as(&suite, &a.admin)
            .await
            .update_clinic(identity::UpdateClinicRequest {
                clinic: Some(identity::Clinic {
                    name: a.clinic.name.clone(),
                    phone: "+55 11 5555-0000".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err(),
    );
    inactive(
        users_as(&suite, &a.admin)
            .await
            .create_user(identity::CreateUserRequest {
                parent: a.clinic.name.clone(),
                user: Some(identity::User {
                    email: "too.late@example.com".into(),
                    display_name: "Too Late".into(),
                    role: identity::UserRole::Staff as i32,
                    ..Default::default()
                }),
                password: support::STAFF_PASSWORD.into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err(),
    );
    // A super admin may still write (to wind the clinic down, or fix a record).
    patients_as(&suite, &root)
        .await
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                name: patient.name.clone(),
                phone: "+55 11 90000-2222".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    suite.stop().await;
}

#[tokio::test]
async fn a_deactivated_clinic_signs_nobody_in_and_refuses_writes() {
    a_deactivated_clinic_is_read_only(TestSuite::start().await).await;
}

#[tokio::test]
async fn a_deactivated_clinic_signs_nobody_in_and_refuses_writes_on_mongodb() {
    if let Some(store) = mongo_store("deactivated_clinic_on_mongodb") {
        a_deactivated_clinic_is_read_only(TestSuite::start_on(store).await).await;
    }
}

/// Setting or resetting a portal password ends the patient's other sessions at their
/// next refresh; the session that changed it goes on.
#[tokio::test]
async fn a_new_portal_password_ends_the_other_portal_sessions() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Portal Sessions").await;
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let set = |password: &'static str, token: String, current: &'static str| {
        let suite = &suite;
        let name = patient.name.clone();
        async move {
            patients_as(suite, &token)
                .await
                .set_patient_password(pb::SetPatientPasswordRequest {
                    name,
                    new_password: password.into(),
                    current_password: current.into(),
                })
                .await
        }
    };
    let login = |password: &'static str| {
        let suite = &suite;
        let clinic = a.clinic.name.clone();
        let email = patient.email.clone();
        async move {
            AuthServiceClient::new(suite.channel().await)
                .login_patient(identity::LoginPatientRequest {
                    clinic,
                    email,
                    password: password.into(),
                    device_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let refresh = |token: String| {
        let suite = &suite;
        async move {
            AuthServiceClient::new(suite.channel().await)
                .refresh_token(identity::RefreshTokenRequest {
                    refresh_token: token,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    set("first portal password", a.admin.clone(), "")
        .await
        .unwrap();
    let phone = login("first portal password").await;
    let laptop = login("first portal password").await;
    // The patient changes it on the laptop: the phone's session ends, the laptop's not.
    set(
        "second portal password",
        laptop.access_token.clone(),
        "first portal password",
    )
    .await
    .unwrap();
    assert_eq!(
        refresh(phone.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let laptop = refresh(laptop.refresh_token).await.unwrap();
    // An admin resets it: every session ends, the laptop's too.
    set("third portal password", a.admin.clone(), "")
        .await
        .unwrap();
    assert_eq!(
        refresh(laptop.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    login("third portal password").await;
    suite.stop().await;
}

/// Guessing the current password through SetPatientPassword counts against the portal
/// sign-in lock; an ADMIN's UnlockPatient lifts it, and is in the audit trail.
#[tokio::test]
async fn patient_password_guessing_is_locked_and_an_admin_unlocks_it() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Guessing Patient").await;
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let mut admin = patients_as(&suite, &a.admin).await;
    admin
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: patient.name.clone(),
            new_password: "the real portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
    let portal = support::patient_sign_in(
        &suite,
        &a.clinic.name,
        &patient.email,
        "the real portal password",
    )
    .await;
    let mut me = patients_as(&suite, &portal).await;
    let change = |current: String| pb::SetPatientPasswordRequest {
        name: patient.name.clone(),
        new_password: "a brand new portal password".into(),
        current_password: current,
    };
    let before = suite.suite.accounts.passwords.guesses_checked();
    for i in 0..20 {
        let err = me
            .set_patient_password(change(format!("guess number {i} here")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let checked = suite.suite.accounts.passwords.guesses_checked() - before;
    assert!(checked <= 5, "{checked} guesses checked for 20 attempts");
    // Locked: the right current password is refused too, here and at sign-in.
    let locked = me
        .set_patient_password(change("the real portal password".into()))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::Unauthenticated);
    let sign_in = AuthServiceClient::new(suite.channel().await)
        .login_patient(identity::LoginPatientRequest {
            clinic: a.clinic.name.clone(),
            email: patient.email.clone(),
            password: "the real portal password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(sign_in.code(), Code::Unauthenticated);
    // STAFF may not unlock; an ADMIN may, and it is recorded.
    let refused = patients_as(&suite, &a.staff)
        .await
        .unlock_patient(pb::UnlockPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    admin
        .unlock_patient(pb::UnlockPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap();
    me.set_patient_password(change("the real portal password".into()))
        .await
        .unwrap();
    let events = trail(&suite, &a.admin, &a.clinic.name).await;
    let unlocks: Vec<_> = events
        .iter()
        .filter(|e| e.action == "PatientService/UnlockPatient")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(
        unlocks,
        ["PERMISSION_DENIED", "PENDING", "OK"],
        "{events:?}"
    );
    suite.stop().await;
}

/// A medical history's bounds, through the gateway: an out-of-range measurement time
/// and control characters are INVALID_ARGUMENT (the time used to be dropped), and
/// revisions list in bounded pages to the end.
#[tokio::test]
async fn medical_history_input_and_revision_pages_are_bounded() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("History Bounds").await;
    let patient = a_full_patient(&suite, &a.staff, &a.clinic.name).await;
    let name = format!("{}/medicalHistory", patient.name);
    let mut histories = histories_as(&suite, &a.admin).await;
    let err = histories
        .update_medical_history(pb::UpdateMedicalHistoryRequest {
            medical_history: Some(pb::MedicalHistory {
                name: name.clone(),
                etag: "0".into(),
                notes: "ring\u{7}ring".into(),
                vital_signs: Some(pb::VitalSigns {
                    heart_rate_bpm: 70,
                    measured_at: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "medical_history.notes",
            "medical_history.vital_signs.measured_at"
        ]
    );

    let mut etag = "0".to_owned();
    for n in 0..25 {
        etag = histories
            .update_medical_history(pb::UpdateMedicalHistoryRequest {
                medical_history: Some(pb::MedicalHistory {
                    name: name.clone(),
                    etag: etag.clone(),
                    notes: format!("visit {n}\n\tall well"),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap()
            .into_inner()
            .medical_history
            .unwrap()
            .etag;
    }
    let mut seen = 0;
    let mut page_token = String::new();
    loop {
        let page = histories
            .list_medical_history_revisions(pb::ListMedicalHistoryRevisionsRequest {
                parent: name.clone(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.revisions.len() <= 20,
            "{} in one page",
            page.revisions.len()
        );
        seen += page.revisions.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, 24, "every replaced version, once");
    suite.stop().await;
}
