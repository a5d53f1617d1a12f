//! Patient lists and audit listings are served by an index, not a scan of the
//! collection: the query plans of every kind of list, asked of each store (SQLite
//! `EXPLAIN QUERY PLAN`, MongoDB `explain`).

use topsmile_kit::{names::ResourceId, paging::PageRequest, store::mongo, testing};
use topsmile_patients::{
    domain::PatientQuery,
    store::{
        AuditQuery,
        embedded::{EmbeddedPatients, audit_list_sql, list_sql},
        mongo::{MongoPatients, list_filter},
    },
};

/// Every kind of list a receptionist runs.
fn queries() -> Vec<(&'static str, PatientQuery)> {
    vec![
        ("all active", PatientQuery::default()),
        (
            "with inactive",
            PatientQuery {
                include_inactive: true,
                ..PatientQuery::default()
            },
        ),
        (
            "name prefix",
            PatientQuery {
                name_prefix: Some("jose".into()),
                ..PatientQuery::default()
            },
        ),
        (
            "phone",
            PatientQuery {
                phone_digits: Some("5511912345678".into()),
                ..PatientQuery::default()
            },
        ),
        (
            "email",
            PatientQuery {
                email: Some("ana@example.com".into()),
                ..PatientQuery::default()
            },
        ),
    ]
}

#[tokio::test]
async fn every_sqlite_patient_list_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedPatients::open(dir.path()).await.unwrap();
    let clinic = ResourceId::generate();
    let page = PageRequest::parse(50, "", &["q"]).unwrap();
    for (label, query) in queries() {
        let (sql, params) = list_sql(&clinic, &query, &page);
        testing::assert_sqlite_plan_uses_indexes(&store.db, label, sql, params).await;
    }
}

/// The audit trail's own file: a clinic's whole trail, one resource's events, one
/// actor's events.
#[tokio::test]
async fn every_sqlite_audit_listing_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedPatients::open(dir.path()).await.unwrap();
    let clinic = ResourceId::generate().to_string();
    let page = PageRequest::parse(50, "", &["q"]).unwrap();
    let listings = [
        ("whole trail", AuditQuery::default()),
        (
            "one resource",
            AuditQuery {
                resource: Some(format!("clinics/{clinic}/patients/p1")),
                ..AuditQuery::default()
            },
        ),
        (
            "one actor",
            AuditQuery {
                actor: Some("users/u1".into()),
                ..AuditQuery::default()
            },
        ),
    ];
    for (label, query) in listings {
        let (sql, params) = audit_list_sql(&clinic, &query, &page);
        testing::assert_sqlite_plan_uses_indexes(&store.trail, label, sql, params).await;
    }
}

#[tokio::test]
async fn every_mongodb_patient_list_uses_an_index() {
    let Some(uri) = testing::mongodb_uri("every_mongodb_patient_list_uses_an_index") else {
        return;
    };
    let conn = mongo::connect(&uri, &testing::unique_database("plans"), "plans", "primary")
        .await
        .unwrap();
    let database = conn.database.clone();
    MongoPatients::open(conn).await.unwrap();
    let clinic = ResourceId::generate();
    for (label, query) in queries() {
        let filter = list_filter(&clinic, &query);
        testing::assert_mongo_list_uses_index(&database, "patients", label, filter).await;
    }
    database.drop().await.unwrap();
}
