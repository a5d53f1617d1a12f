//! Provider lists are served by an index, not a scan of the collection: the query plans
//! of every kind of list, asked of each store (SQLite `EXPLAIN QUERY PLAN`, MongoDB
//! `explain`).

use mongodb::bson::{Bson, Document, doc};
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
        let plan: Vec<String> = store
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(topsmile_kit::store::sqlite::translate)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |r| {
                        r.get::<_, String>(3)
                    })
                    .map_err(topsmile_kit::store::sqlite::translate)?;
                rows.map(|r| r.map_err(topsmile_kit::store::sqlite::translate))
                    .collect()
            })
            .await
            .unwrap();
        let reads: Vec<&String> = plan
            .iter()
            .filter(|d| d.starts_with("SCAN") || d.starts_with("SEARCH"))
            .collect();
        assert!(!reads.is_empty(), "{label}: no plan: {plan:?}");
        for read in reads {
            assert!(
                read.starts_with("SEARCH") && read.contains("INDEX"),
                "{label}: {read:?} does not use an index; plan {plan:?}"
            );
        }
    }
}

/// The index names a MongoDB plan uses (IXSCAN stages, at any depth).
fn index_scans(plan: &Bson, found: &mut Vec<String>) {
    match plan {
        Bson::Document(d) => {
            if d.get_str("stage") == Ok("IXSCAN")
                && let Ok(name) = d.get_str("indexName")
            {
                found.push(name.to_owned());
            }
            for (_, v) in d {
                index_scans(v, found);
            }
        }
        Bson::Array(items) => items.iter().for_each(|i| index_scans(i, found)),
        _ => {}
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
    let nx = testing::is_nx_27017(&database).await;
    let clinic = ResourceId::generate();
    for (label, query) in queries() {
        let mut filter: Document = list_filter(&clinic, &query);
        filter.insert("_id", doc! {"$gt": ""});
        let explained = database
            .run_command(doc! {
                "explain": {"find": "providers", "filter": filter, "sort": {"_id": 1}, "limit": 51},
                "verbosity": "queryPlanner",
            })
            .await
            .unwrap();
        let winning = explained
            .get_document("queryPlanner")
            .ok()
            .and_then(|q| q.get("winningPlan").cloned())
            .unwrap_or(Bson::Null);
        if nx {
            // NX_27017_GAPS: "explain reports SQLite's plan; finds scan the collection
            // whatever the indexes". Real MongoDB must show an IXSCAN below.
            assert!(winning != Bson::Null, "{label}: explain answered no plan");
            continue;
        }
        let mut used = Vec::new();
        index_scans(&winning, &mut used);
        assert!(!used.is_empty(), "{label}: no index scan in {winning:?}");
    }
    database.drop().await.unwrap();
}
