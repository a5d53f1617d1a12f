//! The patients service end to end: tenancy and patient-self rules over every method
//! (generated from the descriptor's policy), idempotent and racing creates, validation,
//! and the completeness of the audit trail. The whole suite runs on port 0.

mod support;

use support::violations;

use futures::future::join_all;
use prost_reflect::DescriptorPool;
use support::{
    Authed, Bearer, ClinicStaff, TestSuite, aimed_at, call_raw, mongo_store, patient_token,
};
use tonic::{Code, Status};
use topsmile_kit::policy::PolicyTable;
use topsmile_proto::{
    FILE_DESCRIPTOR_SET,
    google::r#type::Date,
    topsmile::{
        auth::v1::Role,
        patients::v1::{
            self as pb, audit_service_client::AuditServiceClient,
            patient_service_client::PatientServiceClient,
        },
    },
};

async fn patients_as(suite: &TestSuite, token: &str) -> PatientServiceClient<Authed> {
    PatientServiceClient::with_interceptor(suite.channel().await, Bearer(Some(token.to_owned())))
}

fn new_patient(given: &str, family: &str, email: &str) -> pb::Patient {
    pb::Patient {
        given_name: given.into(),
        family_name: family.into(),
        email: email.into(),
        phone: "+55 11 91234-5678".into(),
        date_of_birth: Some(Date {
            year: 1988,
            month: 3,
            day: 14,
        }),
        ..Default::default()
    }
}

async fn create(
    client: &mut PatientServiceClient<Authed>,
    clinic: &str,
    p: pb::Patient,
) -> pb::Patient {
    client
        .create_patient(pb::CreatePatientRequest {
            parent: clinic.to_owned(),
            patient: Some(p),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
}

/// A clinic with staff and two patients.
struct World {
    staff: ClinicStaff,
    patient: pb::Patient,
    other_patient: pb::Patient,
    patient_token: String,
}

async fn world(suite: &TestSuite, label: &str) -> World {
    let staff = suite.clinic_with_staff(label).await;
    let mut client = patients_as(suite, &staff.staff).await;
    let tag = label.to_lowercase().replace(' ', ".");
    let patient = create(
        &mut client,
        &staff.clinic.name,
        new_patient("José", "Álvarez", &format!("jose.{tag}@example.com")),
    )
    .await;
    let other_patient = create(
        &mut client,
        &staff.clinic.name,
        new_patient("Maria", "Souza", &format!("maria.{tag}@example.com")),
    )
    .await;
    let clinic_id = staff.clinic.name.trim_start_matches("clinics/").to_owned();
    let patient_token = patient_token(suite, &clinic_id, &patient.name).await;
    // The portal sign-in gave the patient a password: read them as they are now.
    let patient = client
        .get_patient(pb::GetPatientRequest {
            name: patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    World {
        staff,
        patient,
        other_patient,
        patient_token,
    }
}

#[tokio::test]
async fn no_patient_data_crosses_a_clinic_or_reaches_another_patient() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "Clinic A").await;
    let b = world(&suite, "Clinic B").await;
    let c = world(&suite, "Clinic C").await;
    let root = suite.root_token().await;
    let table = PolicyTable::builtin().unwrap();
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut methods: Vec<_> = table
        .methods()
        .filter(|m| m.area == "patients" && !m.is_internal())
        .cloned()
        .collect();
    methods.sort_by(|x, y| x.path.cmp(&y.path));
    assert!(
        methods.len() >= 10,
        "patients-service methods: {}",
        methods.len()
    );

    // (who, role, token, whose data it aims at: clinic, patient)
    let callers = [
        ("super admin", Role::SuperAdmin, root.clone(), &c),
        ("admin of A", Role::Admin, a.staff.admin.clone(), &b),
        (
            "provider of A",
            Role::Provider,
            a.staff.provider.clone(),
            &b,
        ),
        ("staff of A", Role::Staff, a.staff.staff.clone(), &b),
        (
            "patient of A, at B",
            Role::Patient,
            a.patient_token.clone(),
            &b,
        ),
        (
            "patient of A, at A's other patient",
            Role::Patient,
            a.patient_token.clone(),
            &a,
        ),
    ];
    let channel = suite.channel().await;
    let direct = support::connect(suite.suite.services["patients"]).await;
    for target in [&channel, &direct] {
        for method in &methods {
            let policy = method.policy.as_ref().unwrap();
            let (service, name) = method
                .path
                .trim_start_matches('/')
                .rsplit_once('/')
                .unwrap();
            let rpc = pool
                .get_service_by_name(service)
                .unwrap()
                .methods()
                .find(|m| m.name() == name)
                .unwrap();
            for (who, role, token, aim) in &callers {
                let victim = if *role == Role::Patient && std::ptr::eq(*aim, &a) {
                    &a.other_patient.name
                } else {
                    &aim.patient.name
                };
                let (name, parent) = if service.ends_with("MedicalHistoryService") {
                    let history = format!("{victim}/medicalHistory");
                    (history.clone(), history)
                } else {
                    (victim.clone(), aim.staff.clinic.name.clone())
                };
                let code = call_raw(
                    target,
                    token,
                    &method.path,
                    aimed_at(&rpc.input(), &name, &parent),
                )
                .await;
                let allowed = policy.roles.contains(&(*role as i32))
                    || (*role == Role::Patient && policy.allow_patient_self);
                let what = format!("{} by {who}", method.path);
                if !allowed {
                    assert_eq!(
                        code,
                        Code::PermissionDenied,
                        "{what}: the policy does not admit the role"
                    );
                } else if *role == Role::SuperAdmin {
                    assert!(
                        !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                        "{what}: the policy admits the role, got {code:?}"
                    );
                } else {
                    assert!(
                        matches!(
                            code,
                            Code::PermissionDenied | Code::NotFound | Code::Unimplemented
                        ),
                        "{what}: someone else's data must not be reachable, got {code:?}"
                    );
                }
            }
        }
    }
    // B's patients are as created.
    let got = patients_as(&suite, &b.staff.admin)
        .await
        .get_patient(pb::GetPatientRequest {
            name: b.patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(got, b.patient);
    suite.stop().await;
}

#[tokio::test]
async fn a_patient_reads_their_own_record_and_changes_only_how_to_reach_them() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "Self").await;
    let mut me = patients_as(&suite, &a.patient_token).await;
    let own = me
        .get_patient(pb::GetPatientRequest {
            name: a.patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(own, a.patient);
    let other = me
        .get_patient(pb::GetPatientRequest {
            name: a.other_patient.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound, "{other:?}");
    let listed = me
        .list_patients(pb::ListPatientsRequest {
            parent: a.staff.clinic.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied);

    let mask = |paths: &[&str]| prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    };
    let phone = me
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                phone: "+55 11 90000-0000".into(),
                ..own.clone()
            }),
            update_mask: Some(mask(&["phone"])),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(phone.phone, "+55 11 90000-0000");
    let renamed = me
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                given_name: "Someone Else".into(),
                ..phone.clone()
            }),
            update_mask: Some(mask(&["given_name"])),
        })
        .await
        .unwrap_err();
    assert_eq!(renamed.code(), Code::PermissionDenied);

    // Portal password: STAFF may not set it (they could then sign in as the patient and
    // read the medical history they may not read); an ADMIN sets it, the patient changes
    // it with the current one.
    let refused = patients_as(&suite, &a.staff.staff)
        .await
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: a.patient.name.clone(),
            new_password: "first portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut admin = patients_as(&suite, &a.staff.admin).await;
    let enabled = admin
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: a.patient.name.clone(),
            new_password: "first portal password".into(),
            current_password: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(enabled.has_portal_access);
    let wrong = me
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: a.patient.name.clone(),
            new_password: "second portal password".into(),
            current_password: "not the current one".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    me.set_patient_password(pb::SetPatientPasswordRequest {
        name: a.patient.name.clone(),
        new_password: "second portal password".into(),
        current_password: "first portal password".into(),
    })
    .await
    .unwrap();
    suite.stop().await;
}

async fn idempotent_and_racing_creates(suite: TestSuite) {
    let a = suite.clinic_with_staff("Races").await;
    let client = patients_as(&suite, &a.staff).await;
    let same = join_all((0..10).map(|_| {
        let mut client = client.clone();
        let parent = a.clinic.name.clone();
        async move {
            client
                .create_patient(pb::CreatePatientRequest {
                    parent,
                    patient: Some(new_patient("Idem", "Potent", "idem@example.com")),
                    request_id: "front-desk-42".into(),
                })
                .await
                .map(|r| r.into_inner().patient.unwrap())
        }
    }))
    .await;
    let first = same[0].as_ref().unwrap().clone();
    assert!(
        same.iter().all(|r| r.as_ref().unwrap() == &first),
        "10 identical answers"
    );

    let racing = join_all((0..20).map(|i| {
        let mut client = client.clone();
        let parent = a.clinic.name.clone();
        async move {
            client
                .create_patient(pb::CreatePatientRequest {
                    parent,
                    patient: Some(new_patient(
                        "Race",
                        &format!("Number {i}"),
                        "race@example.com",
                    )),
                    request_id: String::new(),
                })
                .await
        }
    }))
    .await;
    let created = racing.iter().filter(|r| r.is_ok()).count();
    let taken = racing
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((created, taken), (1, 19), "{racing:?}");

    let listed = patients_as(&suite, &a.admin)
        .await
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert_eq!(
        listed.len(),
        2,
        "one idempotent patient and one race winner"
    );
    suite.stop().await;
}

#[tokio::test]
async fn a_retried_create_makes_one_patient_and_one_email_one_winner() {
    idempotent_and_racing_creates(TestSuite::start().await).await;
}

#[tokio::test]
async fn a_retried_create_makes_one_patient_and_one_email_one_winner_on_mongodb() {
    if let Some(store) = mongo_store("patients_idempotent_and_racing_on_mongodb") {
        idempotent_and_racing_creates(TestSuite::start_on(store).await).await;
    }
}

#[tokio::test]
async fn invalid_patients_are_refused_field_by_field() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Validation").await;
    let mut client = patients_as(&suite, &a.staff).await;
    let err = client
        .create_patient(pb::CreatePatientRequest {
            parent: a.clinic.name.clone(),
            patient: Some(pb::Patient {
                given_name: "Ana".into(),
                family_name: String::new(),
                email: "not-an-email".into(),
                phone: "12".into(),
                date_of_birth: Some(Date {
                    year: 2999,
                    month: 1,
                    day: 1,
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&err),
        vec![
            "patient.family_name",
            "patient.email",
            "patient.phone",
            "patient.date_of_birth"
        ]
    );
    let impossible = client
        .create_patient(pb::CreatePatientRequest {
            parent: a.clinic.name.clone(),
            patient: Some(pb::Patient {
                date_of_birth: Some(Date {
                    year: 1990,
                    month: 2,
                    day: 30,
                }),
                ..new_patient("Ana", "Lima", "")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&impossible), vec!["patient.date_of_birth"]);
    let listed = client
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            show_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert!(listed.is_empty(), "nothing was written");
    suite.stop().await;
}

#[tokio::test]
async fn search_deactivation_and_stale_updates_through_the_gateway() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "Search").await;
    let mut client = patients_as(&suite, &a.staff.admin).await;
    let search = |q: &str| pb::ListPatientsRequest {
        parent: a.staff.clinic.name.clone(),
        name_query: q.into(),
        ..Default::default()
    };
    let found = client
        .list_patients(search("jose"))
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert_eq!(
        found.iter().map(|p| &p.name).collect::<Vec<_>>(),
        vec![&a.patient.name]
    );
    let found = client
        .list_patients(search("SOU"))
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert_eq!(
        found.iter().map(|p| &p.name).collect::<Vec<_>>(),
        vec![&a.other_patient.name]
    );

    let gone = client
        .deactivate_patient(pb::DeactivatePatientRequest {
            name: a.patient.name.clone(),
            etag: a.patient.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(!gone.is_active);
    // Still readable by staff, saying inactive; hidden from lists unless asked.
    let read = client
        .get_patient(pb::GetPatientRequest {
            name: a.patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(!read.is_active);
    assert!(
        client
            .list_patients(search("jose"))
            .await
            .unwrap()
            .into_inner()
            .patients
            .is_empty()
    );
    let stale = client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                phone: "+55 11 3333-3333".into(),
                ..a.patient.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["phone".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    suite.stop().await;
}

#[tokio::test]
async fn every_access_to_patient_data_is_audited_denied_ones_included() {
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Audit A").await;
    let b = suite.clinic_with_staff("Audit B").await;
    let mut staff = patients_as(&suite, &a.staff).await;
    // 1. create (OK)
    let p = create(
        &mut staff,
        &a.clinic.name,
        new_patient("Audit", "Me", "audit.me@example.com"),
    )
    .await;
    // 2. get (OK)
    staff
        .get_patient(pb::GetPatientRequest {
            name: p.name.clone(),
        })
        .await
        .unwrap();
    // 3. list (OK)
    staff
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // 4. staff may not deactivate: refused by the policy before the handler
    let denied = staff
        .deactivate_patient(pb::DeactivatePatientRequest {
            name: p.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // 5. another clinic's admin aims at it: refused by tenancy
    let foreign = patients_as(&suite, &b.admin)
        .await
        .get_patient(pb::GetPatientRequest {
            name: p.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied);
    // 6. a patient reads itself (OK); 7. and someone else (NOT_FOUND)
    let clinic_id = a.clinic.name.trim_start_matches("clinics/");
    let mut me = patients_as(&suite, &patient_token(&suite, clinic_id, &p.name).await).await;
    me.get_patient(pb::GetPatientRequest {
        name: p.name.clone(),
    })
    .await
    .unwrap();
    let missing = format!("{}/patients/0000-nobody", a.clinic.name);
    me.get_patient(pb::GetPatientRequest { name: missing })
        .await
        .unwrap_err();

    let events =
        AuditServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: a.clinic.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events;
    // (The clinic's staff signing in is in the trail too, and so is the portal
    // sign-in's set-up by the super admin and its check by identity; this test is
    // about the clinic's own staff and the patient.)
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| !e.action.starts_with("AuthService/"))
        .filter(|e| !e.actor.starts_with("clinics/-/") && e.actor_kind != "service")
        .collect();
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| (e.action.clone(), e.actor_kind.clone(), e.outcome.clone()))
        .collect();
    let expected: Vec<(String, String, String)> = [
        // A write is announced before the store is touched, then its outcome follows.
        ("PatientService/CreatePatient", "staff", "PENDING"),
        ("PatientService/CreatePatient", "staff", "OK"),
        ("PatientService/GetPatient", "staff", "OK"),
        ("PatientService/ListPatients", "staff", "OK"),
        (
            "PatientService/DeactivatePatient",
            "staff",
            "PERMISSION_DENIED",
        ),
        ("PatientService/GetPatient", "patient", "OK"),
        ("PatientService/GetPatient", "patient", "NOT_FOUND"),
    ]
    .iter()
    .map(|(a, k, o)| ((*a).to_owned(), (*k).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(seen, expected);
    assert!(
        events
            .iter()
            .all(|e| !e.actor.is_empty() && e.time.is_some())
    );
    // The foreign attempt is in the prober's own trail, naming its actor and target:
    // nobody outside a clinic can write into its trail.
    let probes =
        AuditServiceClient::with_interceptor(suite.channel().await, Bearer(Some(b.admin.clone())))
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: b.clinic.name.clone(),
                resource: p.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events;
    let probe: Vec<_> = probes
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        probe,
        [(
            "PatientService/GetPatient",
            b.admin_name.as_str(),
            "PERMISSION_DENIED"
        )]
    );
    // Filtered by resource: the events that named the patient.
    let about =
        AuditServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: a.clinic.name.clone(),
                resource: p.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events;
    assert_eq!(
        about.len(),
        8,
        "create (announced, done), get, the portal set-up (get, password announced and \
         done, credentials check), own get: {about:?}"
    );
    suite.stop().await;
}

fn history_update(name: &str, etag: &str, notes: &str) -> pb::UpdateMedicalHistoryRequest {
    pb::UpdateMedicalHistoryRequest {
        medical_history: Some(pb::MedicalHistory {
            name: name.to_owned(),
            notes: notes.to_owned(),
            allergies: vec![pb::Allergy {
                allergen: "latex".into(),
                reaction: "hives".into(),
                severity: pb::AllergySeverity::Moderate as i32,
            }],
            etag: etag.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["notes".into(), "allergies".into()],
        }),
    }
}

#[tokio::test]
async fn medical_history_is_revised_never_overwritten_and_kept_from_staff() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "History").await;
    let name = format!("{}/medicalHistory", a.patient.name);
    let client = |token: &str| {
        let token = token.to_owned();
        let suite = &suite;
        async move {
            topsmile_proto::topsmile::patients::v1::medical_history_service_client::MedicalHistoryServiceClient::with_interceptor(
                suite.channel().await,
                Bearer(Some(token)),
            )
        }
    };
    let mut provider = client(&a.staff.provider).await;
    let empty = provider
        .get_medical_history(pb::GetMedicalHistoryRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    assert_eq!(empty.etag, "0");
    let first = provider
        .update_medical_history(history_update(&name, "0", "first visit"))
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    assert_eq!(
        first.recorded_by, a.staff.provider_name,
        "recorded_by comes from the token"
    );
    assert_eq!(first.etag, "1");

    // Two updates racing on one etag: one wins, the other is ABORTED.
    let racers = join_all((0..2).map(|i| {
        let mut c = provider.clone();
        let req = history_update(&name, "1", &format!("racer {i}"));
        async move { c.update_medical_history(req).await }
    }))
    .await;
    assert_eq!(racers.iter().filter(|r| r.is_ok()).count(), 1, "{racers:?}");
    assert!(
        racers
            .iter()
            .any(|r| matches!(r, Err(s) if s.code() == Code::Aborted))
    );

    let revisions = client(&a.staff.admin)
        .await
        .list_medical_history_revisions(pb::ListMedicalHistoryRevisionsRequest {
            parent: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(revisions.len(), 1);
    assert_eq!(
        revisions[0].notes, "first visit",
        "the replaced version is kept"
    );

    // Least privilege: the front desk may not read clinical data.
    let staff = client(&a.staff.staff)
        .await
        .get_medical_history(pb::GetMedicalHistoryRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(staff.code(), Code::PermissionDenied);
    // The patient reads their own, and not anyone else's.
    let mut me = client(&a.patient_token).await;
    let own = me
        .get_medical_history(pb::GetMedicalHistoryRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    assert_eq!(own.etag, "2");
    let other = me
        .get_medical_history(pb::GetMedicalHistoryRequest {
            name: format!("{}/medicalHistory", a.other_patient.name),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let write = me
        .update_medical_history(history_update(&name, "2", "self-diagnosis"))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied);
    // A missing severity is a field violation, and nothing is written.
    let mut bad = history_update(&name, "2", "x");
    if let Some(h) = bad.medical_history.as_mut() {
        h.allergies[0].severity = 0;
    }
    let err = provider.update_medical_history(bad).await.unwrap_err();
    assert_eq!(
        violations(&err),
        vec!["medical_history.allergies[0].severity"]
    );
    suite.stop().await;
}

async fn portal_login(
    suite: &TestSuite,
    clinic: &str,
    email: &str,
    password: &str,
) -> Result<topsmile_proto::topsmile::identity::v1::LoginPatientResponse, Status> {
    topsmile_proto::topsmile::identity::v1::auth_service_client::AuthServiceClient::new(
        suite.channel().await,
    )
    .login_patient(
        topsmile_proto::topsmile::identity::v1::LoginPatientRequest {
            clinic: clinic.into(),
            email: email.into(),
            password: password.into(),
            device_token: String::new(),
        },
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn enable_portal(suite: &TestSuite, admin_token: &str, patient: &str, password: &str) {
    patients_as(suite, admin_token)
        .await
        .set_patient_password(pb::SetPatientPasswordRequest {
            name: patient.to_owned(),
            new_password: password.into(),
            current_password: String::new(),
        })
        .await
        .unwrap();
}

async fn portal_sign_in(suite: TestSuite) {
    let a = world(&suite, "Portal").await;
    let email = a.patient.email.clone();
    // No portal access yet: the same answer as a wrong password.
    let none = portal_login(&suite, &a.staff.clinic.name, &email, "portal password 1")
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    enable_portal(&suite, &a.staff.admin, &a.patient.name, "portal password 1").await;
    let session = portal_login(&suite, &a.staff.clinic.name, &email, "portal password 1")
        .await
        .unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<topsmile_kit::auth::Claims>(
        &session.access_token,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.kind, topsmile_kit::auth::Kind::Patient);
    assert_eq!(claims.sub, a.patient.name);
    assert_eq!(format!("clinics/{}", claims.clinic), a.staff.clinic.name);

    let mut me = patients_as(&suite, &session.access_token).await;
    let own = me
        .get_patient(pb::GetPatientRequest {
            name: a.patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(own.has_portal_access);
    let other = me
        .get_patient(pb::GetPatientRequest {
            name: a.other_patient.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);

    // The session refreshes while the patient is active, and not after deactivation.
    let auth = || async {
        topsmile_proto::topsmile::identity::v1::auth_service_client::AuthServiceClient::new(
            suite.channel().await,
        )
    };
    let refreshed = auth()
        .await
        .refresh_token(
            topsmile_proto::topsmile::identity::v1::RefreshTokenRequest {
                refresh_token: session.refresh_token.clone(),
            },
        )
        .await
        .unwrap()
        .into_inner();
    patients_as(&suite, &a.staff.admin)
        .await
        .deactivate_patient(pb::DeactivatePatientRequest {
            name: a.patient.name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let after = auth()
        .await
        .refresh_token(
            topsmile_proto::topsmile::identity::v1::RefreshTokenRequest {
                refresh_token: refreshed.refresh_token,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
    let gone = portal_login(&suite, &a.staff.clinic.name, &email, "portal password 1")
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
    suite.stop().await;
}

#[tokio::test]
async fn patients_sign_in_to_the_portal_and_reach_only_their_own_record() {
    portal_sign_in(TestSuite::start().await).await;
}

#[tokio::test]
async fn patients_sign_in_to_the_portal_and_reach_only_their_own_record_on_mongodb() {
    if let Some(store) = mongo_store("portal_sign_in_on_mongodb") {
        portal_sign_in(TestSuite::start_on(store).await).await;
    }
}

#[tokio::test]
async fn portal_password_guessing_is_locked_out_like_staff_sign_in() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "Portal Lock").await;
    enable_portal(
        &suite,
        &a.staff.admin,
        &a.patient.name,
        "the right portal password",
    )
    .await;
    let before = suite.suite.accounts.passwords.guesses_checked();
    let guesses =
        join_all(
            (0..30).map(|i| {
                let suite = &suite;
                let email = a.patient.email.clone();
                let clinic = a.staff.clinic.name.clone();
                async move {
                    portal_login(suite, &clinic, &email, &format!("wrong guess {i} here")).await
                }
            }),
        )
        .await;
    assert!(
        guesses
            .iter()
            .all(|g| matches!(g, Err(s) if s.code() == Code::Unauthenticated))
    );
    let checked = suite.suite.accounts.passwords.guesses_checked() - before;
    assert!(
        (1..=5).contains(&checked),
        "{checked} guesses checked against the real password for 30 attempts"
    );
    let locked = portal_login(
        &suite,
        &a.staff.clinic.name,
        &a.patient.email,
        "the right portal password",
    )
    .await
    .unwrap_err();
    assert_eq!(
        locked.code(),
        Code::Unauthenticated,
        "locked: even the right password is refused"
    );
    suite.stop().await;
}

#[tokio::test]
async fn the_patient_walkthrough_steps_behave_as_the_readme_says() {
    // The same steps as README.md "Patients, the portal and medical history".
    let suite = TestSuite::start().await;
    let a = suite.clinic_with_staff("Sorriso Centro").await;
    let mut ana = patients_as(&suite, &a.admin).await;
    let patient = ana
        .create_patient(pb::CreatePatientRequest {
            parent: a.clinic.name.clone(),
            patient: Some(new_patient("José", "Álvarez", "jose@example.com")),
            request_id: "readme-patient".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let found = ana
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            name_query: "jose".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert_eq!(found, vec![patient.clone()]);
    let history_name = format!("{}/medicalHistory", patient.name);
    let mut histories =
        topsmile_proto::topsmile::patients::v1::medical_history_service_client::MedicalHistoryServiceClient::with_interceptor(
            suite.channel().await,
            Bearer(Some(a.admin.clone())),
        );
    histories
        .update_medical_history(pb::UpdateMedicalHistoryRequest {
            medical_history: Some(pb::MedicalHistory {
                name: history_name.clone(),
                etag: "0".into(),
                allergies: vec![pb::Allergy {
                    allergen: "penicillin".into(),
                    reaction: "rash".into(),
                    severity: pb::AllergySeverity::Severe as i32,
                }],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["allergies".into()],
            }),
        })
        .await
        .unwrap();
    enable_portal(&suite, &a.admin, &patient.name, "josé's portal password").await;
    let jose = portal_login(
        &suite,
        &a.clinic.name,
        "jose@example.com",
        "josé's portal password",
    )
    .await
    .unwrap()
    .access_token;
    let mut as_jose =
        topsmile_proto::topsmile::patients::v1::medical_history_service_client::MedicalHistoryServiceClient::with_interceptor(
            suite.channel().await,
            Bearer(Some(jose.clone())),
        );
    let own = as_jose
        .get_medical_history(pb::GetMedicalHistoryRequest { name: history_name })
        .await
        .unwrap()
        .into_inner()
        .medical_history
        .unwrap();
    assert_eq!(own.allergies[0].allergen, "penicillin");
    let other = create(&mut ana, &a.clinic.name, new_patient("Maria", "Souza", "")).await;
    let err = as_jose
        .get_medical_history(pb::GetMedicalHistoryRequest {
            name: format!("{}/medicalHistory", other.name),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = patients_as(&suite, &jose)
        .await
        .list_patients(pb::ListPatientsRequest {
            parent: a.clinic.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let trail =
        AuditServiceClient::with_interceptor(suite.channel().await, Bearer(Some(a.admin.clone())))
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: a.clinic.name.clone(),
                resource: patient.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events;
    assert!(
        trail.len() >= 3,
        "create, set password, portal sign-in: {trail:?}"
    );
    suite.stop().await;
}

#[tokio::test]
async fn no_patient_data_is_served_when_the_audit_event_cannot_be_written() {
    let suite = TestSuite::start().await;
    let a = world(&suite, "Audit Down").await;
    // Break the trail for real: the embedded store's trail file refuses new events.
    let file = suite
        .dir
        .path()
        .join(topsmile_patients::store::embedded::TRAIL_FILE);
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
    )
    .unwrap();
    let err = patients_as(&suite, &a.staff.staff)
        .await
        .get_patient(pb::GetPatientRequest {
            name: a.patient.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        !err.message().contains("Álvarez"),
        "no patient data in the answer"
    );
    // Writes are refused the same way (the record is unchanged afterwards).
    let err = patients_as(&suite, &a.staff.staff)
        .await
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient {
                phone: "+55 11 97777-7777".into(),
                ..a.patient.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["phone".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    conn.execute_batch("DROP TRIGGER audit_down;").unwrap();
    let after = patients_as(&suite, &a.staff.staff)
        .await
        .get_patient(pb::GetPatientRequest {
            name: a.patient.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(
        after.phone, a.patient.phone,
        "an update whose audit failed did not land"
    );
    suite.stop().await;
}
