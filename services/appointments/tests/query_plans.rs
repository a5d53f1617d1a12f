//! The appointment reads that run all day are served by an index, not a scan: the
//! clinic's day view, a provider's range, a patient's history, and the availability
//! reads of a provider's and a patient's calendar; asked of each store (SQLite
//! `EXPLAIN QUERY PLAN`, MongoDB `explain`).

use jiff::Timestamp;
use mongodb::bson::doc;
use topsmile_appointments::{
    domain::Status,
    store::{
        AppointmentQuery, Holder,
        embedded::{EmbeddedAppointments, holding_sql, list_sql},
        mongo::{APPOINTMENTS, MongoAppointments, list_filter},
    },
};
use topsmile_kit::{names::ResourceId, paging::PageRequest, store::mongo, testing};

fn at(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// The lists of a working day.
fn queries() -> Vec<(&'static str, AppointmentQuery)> {
    vec![
        (
            "clinic day view",
            AppointmentQuery {
                from: at("2030-03-04T03:00:00Z"),
                to: at("2030-03-05T03:00:00Z"),
                statuses: vec![Status::Scheduled, Status::Confirmed],
                ..AppointmentQuery::default()
            },
        ),
        (
            "provider range",
            AppointmentQuery {
                provider: Some(ResourceId::generate()),
                from: at("2030-03-04T03:00:00Z"),
                to: at("2030-03-11T03:00:00Z"),
                ..AppointmentQuery::default()
            },
        ),
        (
            "patient history",
            AppointmentQuery {
                patient: Some(ResourceId::generate()),
                ..AppointmentQuery::default()
            },
        ),
    ]
}

#[tokio::test]
async fn every_sqlite_appointment_read_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedAppointments::open(dir.path()).await.unwrap();
    let clinic = ResourceId::generate();
    let page = PageRequest::parse(50, "", &["q"]).unwrap();
    for (label, query) in queries() {
        let (sql, params) = list_sql(&clinic, &query, &page);
        testing::assert_sqlite_plan_uses_indexes(&store.db, label, sql, params).await;
    }
    for holder in [Holder::Provider, Holder::Patient] {
        let params = vec![
            rusqlite::types::Value::Text(clinic.to_string()),
            rusqlite::types::Value::Text(ResourceId::generate().to_string()),
            rusqlite::types::Value::Integer(0),
            rusqlite::types::Value::Integer(i64::MAX),
        ];
        testing::assert_sqlite_plan_uses_indexes(
            &store.db,
            &format!("{holder:?} calendar"),
            holding_sql(holder),
            params,
        )
        .await;
    }
}

#[tokio::test]
async fn every_mongodb_appointment_list_uses_an_index() {
    let Some(uri) = testing::mongodb_uri("every_mongodb_appointment_list_uses_an_index") else {
        return;
    };
    let conn = mongo::connect(&uri, &testing::unique_database("plans"), "plans", "primary")
        .await
        .unwrap();
    let database = conn.database.clone();
    MongoAppointments::open(conn).await.unwrap();
    let clinic = ResourceId::generate();
    for (label, query) in queries() {
        let filter = list_filter(&clinic, &query);
        let sort = doc! {"scheduledStart": 1, "_id": 1};
        testing::assert_mongo_find_uses_index(&database, APPOINTMENTS, label, filter, sort).await;
    }
    database.drop().await.unwrap();
}
