//! The patients store creates its indexes on both adapters, and doing it twice (every
//! start does) is harmless.

use topsmile_kit::{store::mongo, testing};
use topsmile_patients::store::{
    embedded::{self, EmbeddedPatients},
    mongo::MongoPatients,
};

#[tokio::test]
async fn embedded_store_creates_its_indexes_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    EmbeddedPatients::open(dir.path()).await.unwrap();
    let store = EmbeddedPatients::open(dir.path()).await.unwrap();
    let wanted = embedded::INDEXES.to_vec();
    let found = store
        .db
        .read(move |conn| {
            let mut names = Vec::new();
            for (table, _) in embedded::INDEXES {
                let mut stmt = conn
                    .prepare(&format!("PRAGMA index_list({table})"))
                    .unwrap();
                let rows = stmt.query_map([], |r| r.get::<_, String>(1)).unwrap();
                names.extend(rows.map(Result::unwrap));
            }
            Ok(names)
        })
        .await
        .unwrap();
    for (_, index) in wanted {
        assert!(
            found.iter().any(|n| n == index),
            "missing index {index} in {found:?}"
        );
    }
}

#[tokio::test]
async fn mongodb_store_creates_its_indexes_idempotently() {
    let Some(uri) = testing::mongodb_uri("mongodb_store_creates_its_indexes_idempotently") else {
        return;
    };
    let db_name = testing::unique_database("patients");
    let conn = mongo::connect(&uri, &db_name, "patients-tests", "primary")
        .await
        .unwrap();
    MongoPatients::open(conn.clone()).await.unwrap();
    MongoPatients::open(conn.clone()).await.unwrap();
    for (collection, wanted) in topsmile_patients::store::mongo::indexes() {
        let mut cursor = conn
            .database
            .collection::<mongodb::bson::Document>(collection)
            .list_indexes()
            .await
            .unwrap();
        let mut keys = Vec::new();
        while cursor.advance().await.unwrap() {
            keys.push(field_names(&cursor.deserialize_current().unwrap().keys));
        }
        // Compared by fields in order, not direction: nx-27017 reports every key as
        // ascending (see topsmile_kit::testing::NX_27017_GAPS).
        let wanted = field_names(&wanted.keys);
        assert!(
            keys.contains(&wanted),
            "missing index {wanted:?} on {collection}: {keys:?}"
        );
    }
    conn.database.drop().await.unwrap();
}

fn field_names(keys: &mongodb::bson::Document) -> Vec<String> {
    keys.keys().cloned().collect()
}
