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
