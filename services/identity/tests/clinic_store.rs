//! The clinic store conformance suite: one set of tests, run against every adapter.
//!
//! The embedded half uses a fresh SQLite file per test. The MongoDB half runs against
//! `TOPSMILE_TEST_MONGODB_URI` (a real MongoDB, or nx-27017 in CI), each test in its own
//! database, dropped afterwards; see `topsmile_kit::testing` for when it is skipped.

use std::sync::Arc;

use futures::future::join_all;
use jiff::Timestamp;
use topsmile_identity::{
    domain::{Clinic, ClinicFields},
    store::{ClinicStore, embedded::EmbeddedClinics, mongo::MongoClinics},
};
use topsmile_kit::{StoreError, paging::PageRequest, store::mongo, testing};

/// A store under test and what must be cleaned up after it.
struct Harness {
    store: Arc<dyn ClinicStore>,
    _dir: Option<tempfile::TempDir>,
    mongo_db: Option<mongodb::Database>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedClinics::open(dir.path())
            .await
            .expect("open sqlite");
        Self {
            store: Arc::new(store),
            _dir: Some(dir),
            mongo_db: None,
        }
    }

    async fn mongo(test: &str) -> Option<Self> {
        let uri = testing::mongodb_uri(test)?;
        let db_name = testing::unique_database("identity");
        let conn = mongo::connect(&uri, &db_name, "identity-tests", "primary")
            .await
            .expect("connect");
        let database = conn.database.clone();
        let store = MongoClinics::open(conn).await.expect("open mongo");
        Some(Self {
            store: Arc::new(store),
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

/// Instantiates each test once per adapter.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $test() {
                    let h = super::Harness::embedded().await;
                    super::$test(&*h.store).await;
                    h.finish().await;
                }
            )*
        }
        mod mongodb_adapter {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(h) = super::Harness::mongo(stringify!($test)).await else { return };
                    super::$test(&*h.store).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    created_clinic_reads_back_identically,
    missing_clinic_is_none,
    same_request_id_returns_the_first_clinic,
    concurrent_creates_with_one_request_id_make_one_clinic,
    list_pages_in_creation_order_without_gaps_or_repeats,
    list_hides_inactive_unless_asked,
    replace_with_current_version_succeeds,
    replace_with_stale_version_is_stale_and_changes_nothing,
    replace_of_missing_clinic_is_not_found,
    racing_replaces_have_exactly_one_winner,
);

fn fields(name: &str) -> ClinicFields {
    ClinicFields {
        display_name: name.to_owned(),
        address: Some(topsmile_kit::address::PostalAddress {
            address_lines: vec!["Rua Augusta, 100".into()],
            locality: "São Paulo".into(),
            administrative_area: "SP".into(),
            postal_code: "01305-000".into(),
            region_code: "BR".into(),
        }),
        phone: "+55 11 5555-0100".into(),
        email: "front@example.com".into(),
        time_zone: "America/Sao_Paulo".into(),
    }
}

/// Times are stored with millisecond precision; make test values exact.
fn now() -> Timestamp {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap()
}

async fn created_clinic_reads_back_identically(store: &dyn ClinicStore) {
    let clinic = Clinic::new(fields("Sorriso"), now());
    let created = store.create(clinic.clone(), None).await.unwrap();
    assert_eq!(created, clinic);
    assert_eq!(store.get(&clinic.id).await.unwrap(), Some(clinic));
}

async fn missing_clinic_is_none(store: &dyn ClinicStore) {
    let id = topsmile_kit::names::ResourceId::generate();
    assert_eq!(store.get(&id).await.unwrap(), None);
}

async fn same_request_id_returns_the_first_clinic(store: &dyn ClinicStore) {
    let first = store
        .create(Clinic::new(fields("First"), now()), Some("req-1"))
        .await
        .unwrap();
    let second = store
        .create(Clinic::new(fields("Second"), now()), Some("req-1"))
        .await
        .unwrap();
    assert_eq!(second, first);
    let page = PageRequest::parse(10, "", &[]).unwrap();
    assert_eq!(store.list(true, &page).await.unwrap().len(), 1);
}

async fn concurrent_creates_with_one_request_id_make_one_clinic(store: &dyn ClinicStore) {
    let attempts =
        (0..10).map(|i| store.create(Clinic::new(fields(&format!("C{i}")), now()), Some("same")));
    let results: Vec<Clinic> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "all answers must be the same clinic"
    );
    let page = PageRequest::parse(100, "", &[]).unwrap();
    assert_eq!(store.list(true, &page).await.unwrap().len(), 1);
}

async fn list_pages_in_creation_order_without_gaps_or_repeats(store: &dyn ClinicStore) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            store
                .create(Clinic::new(fields(&format!("C{i}")), now()), None)
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = PageRequest::parse(3, &token, &["q"]).unwrap();
        let items = store.list(false, &page).await.unwrap();
        let (items, next) = page.finish(items, |c| c.id.to_string());
        assert!(items.len() <= 3);
        seen.extend(items.into_iter().map(|c| c.id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, ids);
}

async fn list_hides_inactive_unless_asked(store: &dyn ClinicStore) {
    let active = store
        .create(Clinic::new(fields("Open"), now()), None)
        .await
        .unwrap();
    let closing = store
        .create(Clinic::new(fields("Closed"), now()), None)
        .await
        .unwrap();
    store
        .replace(&closing.changed(closing.fields.clone(), false, now()))
        .await
        .unwrap();
    let page = PageRequest::parse(10, "", &[]).unwrap();
    let visible: Vec<_> = store
        .list(false, &page)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(visible, vec![active.id.clone()]);
    let all = store.list(true, &page).await.unwrap();
    assert_eq!(all.len(), 2);
    let reread = store.get(&closing.id).await.unwrap().unwrap();
    assert!(
        !reread.is_active,
        "a deactivated clinic reads back inactive"
    );
}

async fn replace_with_current_version_succeeds(store: &dyn ClinicStore) {
    let clinic = store
        .create(Clinic::new(fields("Old"), now()), None)
        .await
        .unwrap();
    let next = clinic.changed(fields("New"), true, now());
    store.replace(&next).await.unwrap();
    let stored = store.get(&clinic.id).await.unwrap().unwrap();
    assert_eq!(stored, next);
    assert_eq!(stored.version, 2);
}

async fn replace_with_stale_version_is_stale_and_changes_nothing(store: &dyn ClinicStore) {
    let clinic = store
        .create(Clinic::new(fields("Old"), now()), None)
        .await
        .unwrap();
    store
        .replace(&clinic.changed(fields("Second"), true, now()))
        .await
        .unwrap();
    let from_stale_read = clinic.changed(fields("Lost update"), true, now());
    assert!(matches!(
        store.replace(&from_stale_read).await,
        Err(StoreError::Stale)
    ));
    assert_eq!(
        store
            .get(&clinic.id)
            .await
            .unwrap()
            .unwrap()
            .fields
            .display_name,
        "Second"
    );
}

async fn replace_of_missing_clinic_is_not_found(store: &dyn ClinicStore) {
    let ghost = Clinic::new(fields("Ghost"), now());
    let next = ghost.changed(fields("Ghost"), true, now());
    assert!(matches!(
        store.replace(&next).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn racing_replaces_have_exactly_one_winner(store: &dyn ClinicStore) {
    let clinic = store
        .create(Clinic::new(fields("Race"), now()), None)
        .await
        .unwrap();
    let attempts: Vec<Clinic> = (0..20)
        .map(|i| clinic.changed(fields(&format!("W{i}")), true, now()))
        .collect();
    let results = join_all(attempts.iter().map(|next| store.replace(next))).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let stale = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Stale)))
        .count();
    assert_eq!((winners, stale), (1, 19));
}
