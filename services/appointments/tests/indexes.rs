//! The appointments store creates its indexes on both adapters, and doing it twice (every
//! start does) is harmless.

use topsmile_appointments::store::{embedded, mongo::MongoAppointments};
use topsmile_kit::{store::mongo, testing};

#[tokio::test]
async fn embedded_store_creates_its_indexes_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    embedded::EmbeddedAppointments::open(dir.path())
        .await
        .unwrap();
    let store = embedded::EmbeddedAppointments::open(dir.path())
        .await
        .unwrap();
    testing::assert_sqlite_indexes(&store.db, embedded::INDEXES).await;
}

#[tokio::test]
async fn mongodb_store_creates_its_indexes_idempotently() {
    let Some(uri) = testing::mongodb_uri("mongodb_store_creates_its_indexes_idempotently") else {
        return;
    };
    let conn = mongo::connect(
        &uri,
        &testing::unique_database("appointments"),
        "appointments-tests",
        "primary",
    )
    .await
    .unwrap();
    MongoAppointments::open(conn.clone()).await.unwrap();
    MongoAppointments::open(conn.clone()).await.unwrap();
    testing::assert_mongo_indexes(
        &conn.database,
        topsmile_appointments::store::mongo::indexes(),
    )
    .await;
    conn.database.drop().await.unwrap();
}
