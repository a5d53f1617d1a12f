//! Provider lists are served by an index, not a scan of the collection: the query plans
//! of every kind of list, asked of each store (SQLite `EXPLAIN QUERY PLAN`, MongoDB
//! `explain`).

use topsmile_kit::{names::ResourceId, paging::PageRequest, store::mongo, testing};
use topsmile_providers::{
    domain::ProviderQuery,
    store::{
        embedded::{EmbeddedProviders, list_sql},
        mongo::{MongoProviders, list_filter},
    },
};

/// Every kind of provider list.
fn queries() -> Vec<(&'static str, ProviderQuery)> {
    vec![
        ("all active", ProviderQuery::default()),
        (
            "with inactive",
            ProviderQuery {
                include_inactive: true,
                ..ProviderQuery::default()
            },
        ),
        (
            "by specialty",
            ProviderQuery {
                specialty: Some("orthodontics".into()),
                ..ProviderQuery::default()
            },
        ),
    ]
}

#[tokio::test]
async fn every_sqlite_provider_list_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedProviders::open(dir.path()).await.unwrap();
    let clinic = ResourceId::generate();
    let page = PageRequest::parse(50, "", &["q"]).unwrap();
    for (label, query) in queries() {
        let (sql, params) = list_sql(&clinic, &query, &page);
        testing::assert_sqlite_plan_uses_indexes(&store.db, label, sql, params).await;
    }
}

#[tokio::test]
async fn every_mongodb_provider_list_uses_an_index() {
    let Some(uri) = testing::mongodb_uri("every_mongodb_provider_list_uses_an_index") else {
        return;
    };
    let conn = mongo::connect(&uri, &testing::unique_database("plans"), "plans", "primary")
        .await
        .unwrap();
    let database = conn.database.clone();
    MongoProviders::open(conn).await.unwrap();
    let clinic = ResourceId::generate();
    for (label, query) in queries() {
        let filter = list_filter(&clinic, &query);
        testing::assert_mongo_list_uses_index(&database, "providers", label, filter).await;
    }
    database.drop().await.unwrap();
}
