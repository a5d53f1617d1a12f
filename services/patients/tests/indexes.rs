//! The patients store creates its indexes on both adapters, and doing it twice (every
//! start does) is harmless.

use topsmile_kit::{store::mongo, testing};
use topsmile_patients::store::{embedded, mongo::MongoPatients};

#[tokio::test]
async fn embedded_store_creates_its_indexes_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    embedded::EmbeddedPatients::open(dir.path()).await.unwrap();
    let store = embedded::EmbeddedPatients::open(dir.path()).await.unwrap();
    testing::assert_sqlite_indexes(&store.db, embedded::INDEXES).await;
    testing::assert_sqlite_indexes(&store.trail, embedded::TRAIL_INDEXES).await;
}

/// A records file from before the trail had its own file: its events move to the
/// trail's file at the next start (none lost, none twice, even when a move that was
/// cut short left some in both), and the records file keeps none.
#[tokio::test]
async fn events_of_a_file_from_before_the_split_move_to_the_trail_file() {
    use topsmile_patients::store::AuditLog;
    let dir = tempfile::tempdir().unwrap();
    let store = embedded::EmbeddedPatients::open(dir.path()).await.unwrap();
    let clinic = topsmile_kit::names::ResourceId::generate().to_string();
    drop(store);

    // Two events in the records file, as the old layout kept them; the first of them
    // also already in the trail's file (a move cut short after the trail committed).
    let doc = r#"{"actorRole":"ROLE_ADMIN","actorKind":"staff","action":"GetPatient","outcome":"OK","timeMs":1700000000000,"traceId":""}"#;
    let records = rusqlite::Connection::open(dir.path().join("patients.sqlite3")).unwrap();
    records
        .execute_batch(
            "CREATE TABLE audit_events (id TEXT PRIMARY KEY, clinic_id TEXT NOT NULL, actor TEXT NOT NULL, resource TEXT NOT NULL, doc TEXT NOT NULL);",
        )
        .unwrap();
    let trail = rusqlite::Connection::open(dir.path().join(embedded::TRAIL_FILE)).unwrap();
    for (id, file) in [
        ("00000000000000000001", vec![&records, &trail]),
        ("00000000000000000002", vec![&records]),
    ] {
        for conn in file {
            conn.execute(
                "INSERT INTO audit_events (id, clinic_id, actor, resource, doc) VALUES (?1, ?2, 'users/u1', 'clinics/c/patients/p', ?3)",
                rusqlite::params![id, clinic, doc],
            )
            .unwrap();
        }
    }
    drop((records, trail));

    let store = embedded::EmbeddedPatients::open(dir.path()).await.unwrap();
    let events = store
        .list(
            &clinic,
            &Default::default(),
            &topsmile_kit::paging::PageRequest::parse(10, "", &["trail"]).unwrap(),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["00000000000000000001", "00000000000000000002"]);
    assert_eq!(events[0].action, "GetPatient");
    let left: bool = rusqlite::Connection::open(dir.path().join("patients.sqlite3"))
        .unwrap()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'audit_events')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!left, "the records file keeps no trail");
}

#[tokio::test]
async fn mongodb_store_creates_its_indexes_idempotently() {
    let Some(uri) = testing::mongodb_uri("mongodb_store_creates_its_indexes_idempotently") else {
        return;
    };
    let conn = mongo::connect(
        &uri,
        &testing::unique_database("patients"),
        "patients-tests",
        "primary",
    )
    .await
    .unwrap();
    MongoPatients::open(conn.clone()).await.unwrap();
    MongoPatients::open(conn.clone()).await.unwrap();
    testing::assert_mongo_indexes(&conn.database, topsmile_patients::store::mongo::indexes()).await;
    conn.database.drop().await.unwrap();
}
