//! Shard-ready data access, checked on the wire: every command the services send to a
//! tenant collection names its clinic (`clinicId`), so on a sharded cluster it goes to
//! one shard. A command observer installed in the services' MongoDB clients records
//! every command while a broad scenario runs through the gateway.
//!
//! The global lookups, listed in the README's data access section with their reasons,
//! are the only exceptions: staff sign-in by email and the bootstrap's "is there a
//! super admin" (on `users`), and refresh tokens by hash (`refreshTokens` is not a
//! tenant collection).
//!
//! This file holds one test: the observer is process-wide.

mod support;

use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document};
use support::{Bearer, STAFF_PASSWORD, TestSuite, mongo_store};
use topsmile_proto::topsmile::{
    identity::v1::{
        self as identity, auth_service_client::AuthServiceClient,
        user_service_client::UserServiceClient,
    },
    patients::v1::{
        self as pb, audit_service_client::AuditServiceClient,
        medical_history_service_client::MedicalHistoryServiceClient,
        patient_service_client::PatientServiceClient,
    },
    providers::v1::{self as providers, provider_service_client::ProviderServiceClient},
};

/// Collections whose documents belong to one clinic.
const TENANT_COLLECTIONS: &[&str] = &[
    "users",
    "patients",
    "medicalHistory",
    "medicalHistoryRevisions",
    "auditEvents",
    "signInLocks",
    "sessions",
    "providers",
    "appointments",
    "appointmentClaims",
    "patientBookingDays",
];

/// One command on a tenant collection: its name, collection, and each filter (or
/// inserted document) it carries.
#[derive(Debug, Clone)]
struct Seen {
    command: String,
    collection: String,
    shapes: Vec<Document>,
}

fn shapes_of(name: &str, command: &Document) -> Vec<Document> {
    let docs = |array: &str, field: Option<&str>| -> Vec<Document> {
        command
            .get_array(array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| match (item, field) {
                        (Bson::Document(d), Some(f)) => d.get_document(f).ok().cloned(),
                        (Bson::Document(d), None) => Some(d.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    match name {
        "find" => command
            .get_document("filter")
            .ok()
            .cloned()
            .into_iter()
            .collect(),
        "findAndModify" | "count" => command
            .get_document("query")
            .ok()
            .cloned()
            .into_iter()
            .collect(),
        "update" => docs("updates", Some("q")),
        "delete" => docs("deletes", Some("q")),
        "insert" => docs("documents", None),
        "aggregate" => command
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.first())
            .and_then(|stage| stage.as_document())
            .and_then(|stage| stage.get_document("$match").ok().cloned())
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The global lookups the design allows, by collection and filter shape.
fn is_listed_global_lookup(seen: &Seen, shape: &Document) -> bool {
    seen.collection == "users"
        && seen.command == "find"
        && (shape.keys().eq(["email"]) || shape.get_str("role") == Ok("super_admin"))
}

#[tokio::test]
async fn every_query_on_a_tenant_collection_names_its_clinic() {
    let Some(store) = mongo_store("every_query_on_a_tenant_collection_names_its_clinic") else {
        return;
    };
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    {
        let seen = seen.clone();
        topsmile_kit::store::mongo::observe_commands(Box::new(move |name, command| {
            let Ok(collection) = command.get_str(name) else {
                return;
            };
            if !TENANT_COLLECTIONS.contains(&collection) {
                return;
            }
            if let Ok(mut seen) = seen.lock() {
                seen.push(Seen {
                    command: name.to_owned(),
                    collection: collection.to_owned(),
                    shapes: shapes_of(name, command),
                });
            }
        }));
    }
    let suite = TestSuite::start_on(store).await;
    scenario(&suite).await;
    suite.stop().await;

    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let kinds: std::collections::BTreeSet<(String, String)> = seen
        .iter()
        .map(|s| (s.collection.clone(), s.command.clone()))
        .collect();
    for wanted in [
        ("users", "find"),
        ("users", "update"),
        ("patients", "find"),
        ("patients", "update"),
        ("medicalHistory", "find"),
        ("medicalHistoryRevisions", "insert"),
        ("medicalHistoryRevisions", "find"),
        ("auditEvents", "find"),
        ("signInLocks", "findAndModify"),
        ("signInLocks", "delete"),
        ("sessions", "insert"),
        ("sessions", "find"),
        ("sessions", "update"),
        ("providers", "insert"),
        ("providers", "find"),
        ("providers", "update"),
        ("appointments", "insert"),
        ("appointments", "find"),
        ("appointments", "update"),
        ("appointmentClaims", "insert"),
        ("appointmentClaims", "find"),
        ("appointmentClaims", "update"),
        ("appointmentClaims", "delete"),
    ] {
        assert!(
            kinds.contains(&(wanted.0.to_owned(), wanted.1.to_owned())),
            "the scenario sent no {wanted:?}: {kinds:?}"
        );
    }
    let unscoped: Vec<String> = seen
        .iter()
        .flat_map(|s| {
            s.shapes
                .iter()
                .filter(|shape| {
                    !shape.contains_key("clinicId") && !is_listed_global_lookup(s, shape)
                })
                .map(move |shape| format!("{} {}: {shape}", s.command, s.collection))
        })
        .collect();
    assert!(
        unscoped.is_empty(),
        "commands on tenant collections without clinicId:\n{}",
        unscoped.join("\n")
    );
}

/// Most of what the suite does with its tenant collections, through the gateway.
async fn scenario(suite: &TestSuite) {
    let a = suite.clinic_with_staff("Shards").await;
    let channel = suite.channel().await;
    let as_admin = Bearer(Some(a.admin.clone()));
    let mut users = UserServiceClient::with_interceptor(channel.clone(), as_admin.clone());
    let user = users
        .create_user(identity::CreateUserRequest {
            parent: a.clinic.name.clone(),
            user: Some(identity::User {
                email: "shard.user@example.com".into(),
                display_name: "Shard User".into(),
                role: identity::UserRole::Staff as i32,
                ..Default::default()
            }),
            password: STAFF_PASSWORD.into(),
            request_id: "shard-user".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    users
        .update_user(identity::UpdateUserRequest {
            user: Some(identity::User {
                name: user.name.clone(),
                display_name: "Shard User Renamed".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let mut auth = AuthServiceClient::new(channel.clone());
    let _ = auth
        .login(identity::LoginRequest {
            email: "shard.user@example.com".into(),
            password: "a wrong password here".into(),
            device_token: String::new(),
        })
        .await;
    let session = suite
        .login_pair("shard.user@example.com", STAFF_PASSWORD)
        .await;
    auth.refresh_token(identity::RefreshTokenRequest {
        refresh_token: session.refresh_token,
    })
    .await
    .unwrap();
    users
        .unlock_user(identity::UnlockUserRequest {
            name: user.name.clone(),
        })
        .await
        .unwrap();

    let mut patients = PatientServiceClient::with_interceptor(channel.clone(), as_admin.clone());
    let patient = patients
        .create_patient(pb::CreatePatientRequest {
            parent: a.clinic.name.clone(),
            patient: Some(pb::Patient {
                given_name: "Ana".into(),
                family_name: "Shard".into(),
                email: "ana.shard@example.com".into(),
                ..Default::default()
            }),
            request_id: "shard-patient".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    // A retried create reads the first one back by its request id.
    patients
        .create_patient(pb::CreatePatientRequest {
            parent: a.clinic.name.clone(),
            patient: Some(pb::Patient {
                given_name: "Ana".into(),
                family_name: "Shard".into(),
                email: "ana.shard@example.com".into(),
                ..Default::default()
            }),
            request_id: "shard-patient".into(),
        })
        .await
        .unwrap();
    patients
        .get_patient(pb::GetPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap();
    patients
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            name_query: "ana".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    patients
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                name: patient.name.clone(),
                phone: "+55 11 90000-3333".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    patients
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: patient.name.clone(),
            new_password: "ana's portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
    let _ = auth
        .login_patient(identity::LoginPatientRequest {
            clinic: a.clinic.name.clone(),
            email: "ana.shard@example.com".into(),
            password: "not ana's portal password".into(),
            device_token: String::new(),
        })
        .await;
    let portal = auth
        .login_patient(identity::LoginPatientRequest {
            clinic: a.clinic.name.clone(),
            email: "ana.shard@example.com".into(),
            password: "ana's portal password".into(),
            device_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    auth.refresh_token(identity::RefreshTokenRequest {
        refresh_token: portal.refresh_token,
    })
    .await
    .unwrap();
    patients
        .unlock_patient(pb::UnlockPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap();

    let mut histories =
        MedicalHistoryServiceClient::with_interceptor(channel.clone(), as_admin.clone());
    let name = format!("{}/medicalHistory", patient.name);
    let mut etag = "0".to_owned();
    for note in ["first", "second", "third"] {
        etag = histories
            .update_medical_history(pb::UpdateMedicalHistoryRequest {
                medical_history: Some(pb::MedicalHistory {
                    name: name.clone(),
                    etag: etag.clone(),
                    notes: note.into(),
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
    histories
        .get_medical_history(pb::GetMedicalHistoryRequest { name: name.clone() })
        .await
        .unwrap();
    histories
        .list_medical_history_revisions(pb::ListMedicalHistoryRevisionsRequest {
            parent: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    patients
        .deactivate_patient(pb::DeactivatePatientRequest {
            name: patient.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    AuditServiceClient::with_interceptor(channel.clone(), as_admin.clone())
        .list_audit_events(pb::ListAuditEventsRequest {
            parent: a.clinic.name.clone(),
            resource: patient.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    users
        .deactivate_user(identity::DeactivateUserRequest {
            name: user.name,
            etag: String::new(),
        })
        .await
        .unwrap();

    let mut providers = ProviderServiceClient::with_interceptor(channel.clone(), as_admin);
    let dentist = providers::Provider {
        display_name: "Dr. Shard".into(),
        specialties: vec!["orthodontics".into()],
        user: a.provider_name.clone(),
        ..Default::default()
    };
    for _retry in 0..2 {
        providers
            .create_provider(providers::CreateProviderRequest {
                parent: a.clinic.name.clone(),
                provider: Some(dentist.clone()),
                request_id: "shard-provider".into(),
            })
            .await
            .unwrap();
    }
    let listed = providers
        .list_providers(providers::ListProvidersRequest {
            parent: a.clinic.name.clone(),
            specialty: "orthodontics".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .providers;
    let provider = listed[0].name.clone();
    providers
        .get_provider(providers::GetProviderRequest {
            name: provider.clone(),
        })
        .await
        .unwrap();
    providers
        .update_provider(providers::UpdateProviderRequest {
            provider: Some(providers::Provider {
                name: provider.clone(),
                display_name: "Dr. Shard Renamed".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    appointments_scenario(suite, &a, &provider).await;
    providers
        .deactivate_provider(providers::DeactivateProviderRequest {
            name: provider,
            etag: String::new(),
        })
        .await
        .unwrap();
}

/// Booking, finding, moving, the lifecycle and a clash, through the gateway.
async fn appointments_scenario(suite: &TestSuite, a: &support::ClinicStaff, provider: &str) {
    use topsmile_proto::topsmile::appointments::v1::{
        self as appts, appointment_service_client::AppointmentServiceClient,
    };
    let (patient, _) = support::a_patient(suite, a, "Shard").await;
    let patient = patient.as_str();
    let channel = suite.channel().await;
    // Round hours every day, so any future hour is working time.
    ProviderServiceClient::with_interceptor(channel.clone(), Bearer(Some(a.admin.clone())))
        .update_provider(providers::UpdateProviderRequest {
            provider: Some(providers::Provider {
                name: provider.to_owned(),
                working_hours: (1..=7)
                    .map(|day| providers::WorkingDay {
                        day,
                        intervals: vec![providers::TimeInterval {
                            start_minute: 0,
                            end_minute: 1440,
                        }],
                    })
                    .collect(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let hour = topsmile_kit::time::unix_seconds() / 3600 + 24;
    let at = |h: i64| {
        Some(prost_types::Timestamp {
            seconds: h * 3600,
            nanos: 0,
        })
    };
    // A quarter of an hour later: the move takes over part of its own time.
    let quarter_past = |h: i64| {
        Some(prost_types::Timestamp {
            seconds: h * 3600 + 900,
            nanos: 0,
        })
    };
    let mut client =
        AppointmentServiceClient::with_interceptor(channel, Bearer(Some(a.staff.clone())));
    client
        .find_available_slots(appts::FindAvailableSlotsRequest {
            parent: a.clinic.name.clone(),
            start_time: at(hour),
            end_time: at(hour + 4),
            patient: patient.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let booking = |h: i64| appts::BookAppointmentRequest {
        parent: a.clinic.name.clone(),
        appointment: Some(appts::Appointment {
            patient: patient.to_owned(),
            provider: provider.to_owned(),
            start_time: at(h),
            ..Default::default()
        }),
        request_id: format!("shard-{h}"),
    };
    let visit = client
        .book_appointment(booking(hour))
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    // A retry, and a clash with another request id.
    client.book_appointment(booking(hour)).await.unwrap();
    let mut clash = booking(hour);
    clash.request_id = "shard-clash".into();
    assert!(client.book_appointment(clash).await.is_err());
    let moved = client
        .reschedule_appointment(appts::RescheduleAppointmentRequest {
            name: visit.name.clone(),
            start_time: quarter_past(hour),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    client
        .confirm_appointment(appts::ConfirmAppointmentRequest {
            name: moved.name.clone(),
            etag: moved.etag.clone(),
        })
        .await
        .unwrap();
    client
        .get_appointment(appts::GetAppointmentRequest {
            name: moved.name.clone(),
        })
        .await
        .unwrap();
    client
        .list_appointments(appts::ListAppointmentsRequest {
            parent: a.clinic.name.clone(),
            patient: patient.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .cancel_appointment(appts::CancelAppointmentRequest {
            name: moved.name.clone(),
            reason: "shard test".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
}
