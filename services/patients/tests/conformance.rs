//! The patients store conformance suite (patients and the audit trail): one set of
//! tests, run against every adapter. SQLite in a temp dir; MongoDB at
//! `TOPSMILE_TEST_MONGODB_URI`, each test in its own database, dropped afterwards.

use std::sync::Arc;

use futures::future::join_all;
use jiff::{Timestamp, civil::Date};
use topsmile_kit::{
    StoreError, names::ResourceId, paging::PageRequest, store::mongo, testing, time,
};
use topsmile_patients::{
    domain::{
        Patient, PatientFields, PatientQuery,
        history::{Allergy, HistoryContent, HistoryVersion, Severity},
        search_name,
    },
    store::{AuditEvent, AuditQuery, Stores, embedded::EmbeddedPatients, mongo::MongoPatients},
};

struct Harness {
    stores: Stores,
    _dir: Option<tempfile::TempDir>,
    mongo_db: Option<mongodb::Database>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            EmbeddedPatients::open(dir.path())
                .await
                .expect("open sqlite"),
        );
        Self {
            stores: Stores {
                patients: store.clone(),
                histories: store.clone(),
                audit: store,
            },
            _dir: Some(dir),
            mongo_db: None,
        }
    }

    async fn mongo(test: &str) -> Option<Self> {
        let uri = testing::mongodb_uri(test)?;
        let conn = mongo::connect(
            &uri,
            &testing::unique_database("patients"),
            "patients-tests",
            "primary",
        )
        .await
        .expect("connect");
        let database = conn.database.clone();
        let store = Arc::new(MongoPatients::open(conn).await.expect("open mongo"));
        Some(Self {
            stores: Stores {
                patients: store.clone(),
                histories: store.clone(),
                audit: store,
            },
            _dir: None,
            mongo_db: Some(database),
        })
    }

    async fn finish(self) {
        if let Some(db) = self.mongo_db {
            db.drop().await.expect("drop test database");
        }
    }
}

/// Each test gets the stores and, on MongoDB, the database (for gap checks).
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $test() {
                    let h = super::Harness::embedded().await;
                    super::$test(&h.stores, None).await;
                    h.finish().await;
                }
            )*
        }
        mod mongodb_adapter {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(h) = super::Harness::mongo(stringify!($test)).await else { return };
                    super::$test(&h.stores, h.mongo_db.clone()).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    a_created_patient_reads_back_identically,
    retried_creates_with_one_request_id_make_one_patient,
    racing_creates_of_one_email_make_one_patient,
    a_deactivated_patients_email_can_be_used_again,
    one_email_may_be_a_patient_of_each_clinic,
    patients_without_email_do_not_collide,
    list_pages_one_clinic_in_creation_order,
    name_search_finds_any_name_word_by_prefix_without_case_or_accents,
    phone_and_email_search,
    racing_replaces_have_exactly_one_winner,
    audit_events_are_listed_by_clinic_resource_and_actor,
    a_history_update_keeps_the_version_it_replaces,
    a_history_outgrows_no_document,
    racing_history_updates_on_one_etag_have_one_winner,
);

fn clinic() -> ResourceId {
    ResourceId::generate()
}

fn now() -> Timestamp {
    time::now()
}

fn patient(clinic: &ResourceId, given: &str, family: &str, email: Option<&str>) -> Patient {
    Patient::new(
        clinic.clone(),
        PatientFields {
            given_name: given.into(),
            family_name: family.into(),
            email: email.map(str::to_owned),
            phone: "+55 11 5555-0100".into(),
            date_of_birth: Some(Date::constant(1990, 5, 17)),
            address: None,
        },
        now(),
    )
}

fn page(size: i32) -> PageRequest {
    PageRequest::parse(size, "", &["t"]).unwrap()
}

async fn a_created_patient_reads_back_identically(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    let p = patient(&c, "José", "Álvarez", Some("jose@example.com"));
    let created = s.patients.create(p.clone(), None).await.unwrap();
    assert_eq!(created, p);
    assert_eq!(
        s.patients.get(&p.clinic, &p.id).await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(
        s.patients.get(&c, &ResourceId::generate()).await.unwrap(),
        None
    );
    assert_eq!(
        s.patients.get(&clinic(), &p.id).await.unwrap(),
        None,
        "another clinic's id reads as missing"
    );
}

async fn retried_creates_with_one_request_id_make_one_patient(
    s: &Stores,
    _: Option<mongodb::Database>,
) {
    let c = clinic();
    let answers = join_all((0..10).map(|_| {
        s.patients.create(
            patient(&c, "Ana", "Souza", Some("ana@example.com")),
            Some("req-1"),
        )
    }))
    .await;
    let first = answers[0].as_ref().unwrap().clone();
    for a in &answers {
        assert_eq!(
            a.as_ref().unwrap(),
            &first,
            "every retry answers the first patient"
        );
    }
    let all = s
        .patients
        .list(&c, &PatientQuery::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

async fn racing_creates_of_one_email_make_one_patient(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    let answers = join_all((0..20).map(|_| {
        s.patients
            .create(patient(&c, "Bia", "Lima", Some("bia@example.com")), None)
    }))
    .await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    let taken = answers
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Duplicate("email"))))
        .count();
    assert_eq!((created, taken), (1, 19), "{answers:?}");
}

async fn a_deactivated_patients_email_can_be_used_again(s: &Stores, db: Option<mongodb::Database>) {
    let c = clinic();
    let first = s
        .patients
        .create(patient(&c, "Caio", "Reis", Some("caio@example.com")), None)
        .await
        .unwrap();
    let inactive = first.changed(first.fields.clone(), false, now());
    s.patients.replace(&inactive).await.unwrap();
    let again = s
        .patients
        .create(patient(&c, "Caio", "Reis", Some("caio@example.com")), None)
        .await;
    if let Some(db) = db
        && testing::is_nx_27017(&db).await
    {
        // NX_27017_GAPS: "partialFilterExpression is ignored: a partial unique index
        // acts as a full unique index". On MongoDB the reuse must succeed.
        assert!(
            matches!(again, Err(StoreError::Duplicate("email"))),
            "{again:?}"
        );
        return;
    }
    again.expect("a deactivated patient's email is free again");
}

/// A patient's email is unique within a clinic, not across clinics: otherwise one
/// clinic learns (ALREADY_EXISTS), and can squat, another's patients' addresses.
async fn one_email_may_be_a_patient_of_each_clinic(s: &Stores, _: Option<mongodb::Database>) {
    let (a, b) = (clinic(), clinic());
    let in_a = s
        .patients
        .create(patient(&a, "Duda", "Alves", Some("duda@example.com")), None)
        .await
        .unwrap();
    let in_b = s
        .patients
        .create(patient(&b, "Duda", "Alves", Some("duda@example.com")), None)
        .await
        .unwrap();
    let again_in_a = s
        .patients
        .create(patient(&a, "Other", "Duda", Some("duda@example.com")), None)
        .await;
    assert!(
        matches!(again_in_a, Err(StoreError::Duplicate("email"))),
        "{again_in_a:?}"
    );
    let found_a = s
        .patients
        .get_by_email(&a, "duda@example.com")
        .await
        .unwrap();
    let found_b = s
        .patients
        .get_by_email(&b, "duda@example.com")
        .await
        .unwrap();
    assert_eq!(found_a.map(|p| p.id), Some(in_a.id));
    assert_eq!(found_b.map(|p| p.id), Some(in_b.id));
    assert!(
        s.patients
            .get_by_email(&clinic(), "duda@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

async fn patients_without_email_do_not_collide(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    for i in 0..3 {
        s.patients
            .create(patient(&c, "Sem", &format!("Email {i}"), None), None)
            .await
            .unwrap();
    }
}

async fn list_pages_one_clinic_in_creation_order(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    let other = clinic();
    let mut ids = Vec::new();
    for i in 0..7 {
        let p = s
            .patients
            .create(patient(&c, "P", &format!("N{i}"), None), None)
            .await
            .unwrap();
        ids.push(p.id);
        s.patients
            .create(patient(&other, "O", "X", None), None)
            .await
            .unwrap();
    }
    // One inactive: hidden unless asked for.
    let hidden = s.patients.get(&c, &ids[3]).await.unwrap().unwrap();
    s.patients
        .replace(&hidden.changed(hidden.fields.clone(), false, now()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = PageRequest::parse(3, &token, &["q"]).unwrap();
        let items = s
            .patients
            .list(&c, &PatientQuery::default(), &page)
            .await
            .unwrap();
        let (items, next) = page.finish(items, |p| p.id.to_string());
        seen.extend(items.into_iter().map(|p| p.id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let expected: Vec<_> = ids.iter().filter(|id| **id != ids[3]).cloned().collect();
    assert_eq!(seen, expected);
    let all = PatientQuery {
        include_inactive: true,
        ..PatientQuery::default()
    };
    assert_eq!(
        s.patients.list(&c, &all, &page(100)).await.unwrap().len(),
        7
    );
}

fn by_name(prefix: &str) -> PatientQuery {
    PatientQuery {
        name_prefix: Some(search_name(prefix, "")),
        ..PatientQuery::default()
    }
}

async fn name_search_finds_any_name_word_by_prefix_without_case_or_accents(
    s: &Stores,
    _: Option<mongodb::Database>,
) {
    let c = clinic();
    let jose = s
        .patients
        .create(patient(&c, "José", "Álvarez", None), None)
        .await
        .unwrap();
    let maria = s
        .patients
        .create(patient(&c, "Maria", "da Conceição", None), None)
        .await
        .unwrap();
    s.patients
        .create(patient(&c, "Josué", "Lima", None), None)
        .await
        .unwrap();
    s.patients
        .create(patient(&clinic(), "José", "Outra Clínica", None), None)
        .await
        .unwrap();
    let c = &c;
    let find = async |q: &str| -> Vec<ResourceId> {
        s.patients
            .list(c, &by_name(q), &page(100))
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect()
    };
    assert_eq!(
        find("jose").await,
        vec![jose.id.clone()],
        "accent-insensitive, one clinic"
    );
    assert_eq!(
        find("ÁLV").await,
        vec![jose.id.clone()],
        "any word, any case"
    );
    assert_eq!(
        find("jose alv").await,
        vec![jose.id.clone()],
        "several words in a row"
    );
    assert_eq!(find("conceicao").await, vec![maria.id.clone()]);
    assert_eq!(find("jos").await.len(), 2, "José and Josué");
    assert!(find("varez").await.is_empty(), "prefixes only");
}

async fn phone_and_email_search(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    let mut a = patient(&c, "Ana", "Phone", Some("ana.phone@example.com"));
    a.fields.phone = "+55 (11) 98765-4321".into();
    let a = s.patients.create(a, None).await.unwrap();
    s.patients
        .create(patient(&c, "Bea", "Other", Some("bea@example.com")), None)
        .await
        .unwrap();
    let by_phone = PatientQuery {
        phone_digits: Some("5511987654321".into()),
        ..PatientQuery::default()
    };
    let found = s.patients.list(&c, &by_phone, &page(10)).await.unwrap();
    assert_eq!(found.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&a.id]);
    let by_email = PatientQuery {
        email: Some("ana.phone@example.com".into()),
        ..PatientQuery::default()
    };
    let found = s.patients.list(&c, &by_email, &page(10)).await.unwrap();
    assert_eq!(found.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&a.id]);
}

async fn racing_replaces_have_exactly_one_winner(s: &Stores, _: Option<mongodb::Database>) {
    let c = clinic();
    let p = s
        .patients
        .create(patient(&c, "Rita", "Race", None), None)
        .await
        .unwrap();
    let attempts = join_all((0..8).map(|i| {
        let mut fields = p.fields.clone();
        fields.phone = format!("+55 11 5555-010{i}");
        let next = p.changed(fields, true, now());
        async move { s.patients.replace(&next).await }
    }))
    .await;
    let won = attempts.iter().filter(|a| a.is_ok()).count();
    let stale = attempts
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Stale)))
        .count();
    assert_eq!((won, stale), (1, 7), "{attempts:?}");
    assert_eq!(
        s.patients
            .get(&p.clinic, &p.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

fn event(clinic: &str, actor: &str, resource: &str, outcome: &str) -> AuditEvent {
    AuditEvent {
        id: ResourceId::generate(),
        clinic: clinic.into(),
        actor: actor.into(),
        actor_role: "staff".into(),
        actor_kind: "staff".into(),
        action: "PatientService/GetPatient".into(),
        resource: resource.into(),
        outcome: outcome.into(),
        time: now(),
        trace_id: String::new(),
    }
}

async fn audit_events_are_listed_by_clinic_resource_and_actor(
    s: &Stores,
    _: Option<mongodb::Database>,
) {
    let events = [
        event("c1", "u1", "clinics/c1/patients/p1", "OK"),
        event("c1", "u2", "clinics/c1/patients/p1", "PERMISSION_DENIED"),
        event("c1", "u1", "clinics/c1/patients/p2", "OK"),
        event("c2", "u1", "clinics/c2/patients/p9", "OK"),
    ];
    // One event alone, then the rest in one group-commit write.
    s.audit.append(&events[0]).await.unwrap();
    s.audit.append_all(events[1..].to_vec()).await.unwrap();
    let all = s
        .audit
        .list("c1", &AuditQuery::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(
        all,
        events[..3].to_vec(),
        "time order, one clinic, stored as given"
    );
    let p1 = AuditQuery {
        resource: Some("clinics/c1/patients/p1".into()),
        actor: None,
    };
    assert_eq!(s.audit.list("c1", &p1, &page(100)).await.unwrap().len(), 2);
    let u1 = AuditQuery {
        resource: None,
        actor: Some("u1".into()),
    };
    assert_eq!(s.audit.list("c1", &u1, &page(100)).await.unwrap().len(), 2);
}

fn version(n: i64, notes: &str) -> HistoryVersion {
    HistoryVersion {
        content: HistoryContent {
            notes: notes.into(),
            allergies: vec![Allergy {
                allergen: "penicillin".into(),
                reaction: "rash".into(),
                severity: Severity::Severe,
            }],
            ..HistoryContent::default()
        },
        recorded_by: "clinics/c/users/u".into(),
        update_time_ms: 1_700_000_000_000 + n,
        version: n,
    }
}

async fn a_history_update_keeps_the_version_it_replaces(s: &Stores, _: Option<mongodb::Database>) {
    let (c, p) = (clinic(), ResourceId::generate());
    assert_eq!(s.histories.current(&c, &p).await.unwrap(), None);
    for n in 1..=4 {
        s.histories
            .record(&c, &p, &version(n, &format!("v{n}")))
            .await
            .unwrap();
    }
    assert_eq!(
        s.histories.current(&c, &p).await.unwrap(),
        Some(version(4, "v4"))
    );
    let all = s.histories.revisions(&c, &p, None, 10).await.unwrap();
    assert_eq!(
        all,
        vec![version(3, "v3"), version(2, "v2"), version(1, "v1")],
        "newest first"
    );
    let older = s.histories.revisions(&c, &p, Some(3), 1).await.unwrap();
    assert_eq!(older, vec![version(2, "v2")]);
    // A write naming a version that is not current changes nothing.
    assert!(matches!(
        s.histories.record(&c, &p, &version(3, "late")).await,
        Err(StoreError::Stale)
    ));
    assert_eq!(
        s.histories.revisions(&c, &p, None, 10).await.unwrap().len(),
        3
    );
}

/// Forty versions of about 400 kB each (16 MB together: more than one MongoDB document
/// may hold) are all kept and listed: each revision is its own document.
async fn a_history_outgrows_no_document(s: &Stores, _: Option<mongodb::Database>) {
    let (c, p) = (clinic(), ResourceId::generate());
    let big = "x".repeat(400 * 1024);
    for n in 1..=40 {
        s.histories
            .record(&c, &p, &version(n, &format!("{n} {big}")))
            .await
            .unwrap_or_else(|e| panic!("version {n}: {e:?}"));
    }
    let current = s.histories.current(&c, &p).await.unwrap().unwrap();
    assert_eq!(current.version, 40);
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s.histories.revisions(&c, &p, before, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|v| v.version);
        seen.extend(page.into_iter().map(|v| v.version));
    }
    assert_eq!(seen, (1..40).rev().collect::<Vec<i64>>());
    assert!(
        s.histories.current(&clinic(), &p).await.unwrap().is_none(),
        "another clinic reads no history"
    );
}

async fn racing_history_updates_on_one_etag_have_one_winner(
    s: &Stores,
    _: Option<mongodb::Database>,
) {
    let (c, p) = (clinic(), ResourceId::generate());
    for round in 1..=2 {
        let attempts = join_all((0..6).map(|i| {
            let v = version(round, &format!("writer {i}"));
            let (c, p) = (c.clone(), p.clone());
            async move { s.histories.record(&c, &p, &v).await }
        }))
        .await;
        let won = attempts.iter().filter(|a| a.is_ok()).count();
        let stale = attempts
            .iter()
            .filter(|a| matches!(a, Err(StoreError::Stale)))
            .count();
        assert_eq!((won, stale), (1, 5), "round {round}: {attempts:?}");
    }
    assert_eq!(
        s.histories.revisions(&c, &p, None, 10).await.unwrap().len(),
        1
    );
}
