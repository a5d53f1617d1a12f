//! The providers store conformance suite: one set of tests, run against every adapter.
//! SQLite in a temp dir; MongoDB at `TOPSMILE_TEST_MONGODB_URI`, each test in its own
//! database, dropped afterwards.

use std::sync::Arc;

use futures::future::join_all;
use topsmile_kit::{
    StoreError, names::ResourceId, paging::PageRequest, store::mongo, testing, time,
};
use topsmile_providers::{
    domain::{Interval, Provider, ProviderFields, ProviderQuery, TimeOff},
    store::{ProviderStore, embedded::EmbeddedProviders, mongo::MongoProviders},
};

struct Harness {
    store: Arc<dyn ProviderStore>,
    _dir: Option<tempfile::TempDir>,
    mongo_db: Option<mongodb::Database>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            EmbeddedProviders::open(dir.path())
                .await
                .expect("open sqlite"),
        );
        Self {
            store,
            _dir: Some(dir),
            mongo_db: None,
        }
    }

    async fn mongo(test: &str) -> Option<Self> {
        let uri = testing::mongodb_uri(test)?;
        let conn = mongo::connect(
            &uri,
            &testing::unique_database("providers"),
            "providers-tests",
            "primary",
        )
        .await
        .expect("connect");
        let database = conn.database.clone();
        let store = Arc::new(MongoProviders::open(conn).await.expect("open mongo"));
        Some(Self {
            store,
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

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $test() {
                    let h = super::Harness::embedded().await;
                    super::$test(h.store.as_ref()).await;
                    h.finish().await;
                }
            )*
        }
        mod mongodb_adapter {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(h) = super::Harness::mongo(stringify!($test)).await else { return };
                    super::$test(h.store.as_ref()).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    a_created_provider_reads_back_identically_and_only_in_its_clinic,
    retried_creates_with_one_request_id_make_one_provider,
    one_provider_per_user_within_a_clinic,
    lists_page_in_creation_order_by_specialty_and_activity,
    replace_is_conditional_and_racing_replaces_have_one_winner,
);

fn page(size: i32, token: &str) -> PageRequest {
    PageRequest::parse(size, token, &["t"]).unwrap()
}

fn provider(clinic: &ResourceId, name: &str, specialties: &[&str], user: Option<&str>) -> Provider {
    let hours = vec![
        Interval {
            start_minute: 8 * 60,
            end_minute: 12 * 60,
        },
        Interval {
            start_minute: 13 * 60,
            end_minute: 18 * 60,
        },
    ];
    let mut weekly: [Vec<Interval>; 7] = Default::default();
    for day in weekly.iter_mut().take(5) {
        *day = hours.clone();
    }
    let fields = ProviderFields {
        display_name: name.into(),
        email: "dr@example.com".into(),
        phone: "+55 11 5555-0101".into(),
        specialties: specialties.iter().map(|s| (*s).to_owned()).collect(),
        license_number: "CRO-SP 12345".into(),
        user: user.map(str::to_owned),
        weekly,
        overrides: [("2026-12-24".to_owned(), Vec::new())]
            .into_iter()
            .collect(),
        time_off: vec![TimeOff {
            start_ms: 1_780_000_000_000,
            end_ms: 1_780_500_000_000,
            reason: "conference".into(),
        }],
        default_duration_secs: 1800,
        buffer_before_secs: 300,
        buffer_after_secs: 600,
    };
    Provider::new(clinic.clone(), fields, time::now())
}

async fn a_created_provider_reads_back_identically_and_only_in_its_clinic(s: &dyn ProviderStore) {
    let c = ResourceId::generate();
    let p = provider(&c, "Dr. Ana", &["orthodontics"], Some("u1"));
    assert_eq!(s.create(p.clone(), None).await.unwrap(), p);
    assert_eq!(s.get(&c, &p.id).await.unwrap(), Some(p.clone()));
    assert_eq!(s.get(&ResourceId::generate(), &p.id).await.unwrap(), None);
    // The schedule reads back whole: overrides, time off and all.
    let read = s.get(&c, &p.id).await.unwrap().unwrap().schedule();
    assert_eq!(read, p.schedule());
    assert_eq!(read.overrides.len(), 1);
    assert_eq!(read.time_off.len(), 1);
}

async fn retried_creates_with_one_request_id_make_one_provider(s: &dyn ProviderStore) {
    let c = ResourceId::generate();
    let answers =
        join_all((0..8).map(|_| s.create(provider(&c, "Dr. Bia", &[], None), Some("req-1")))).await;
    let first = answers[0].as_ref().unwrap().clone();
    for a in &answers {
        assert_eq!(
            a.as_ref().unwrap(),
            &first,
            "every retry answers the first provider"
        );
    }
    let all = s
        .list(&c, &ProviderQuery::default(), &page(100, ""))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

async fn one_provider_per_user_within_a_clinic(s: &dyn ProviderStore) {
    let (a, b) = (ResourceId::generate(), ResourceId::generate());
    s.create(provider(&a, "Dr. Caio", &[], Some("u7")), None)
        .await
        .unwrap();
    let again = s
        .create(provider(&a, "Dr. Caio Again", &[], Some("u7")), None)
        .await;
    assert!(
        matches!(again, Err(StoreError::Duplicate("user"))),
        "{again:?}"
    );
    // Another clinic's ids are its own; providers without a user never collide.
    s.create(provider(&b, "Dr. Caio B", &[], Some("u7")), None)
        .await
        .unwrap();
    for i in 0..3 {
        s.create(provider(&a, &format!("Dr. Free {i}"), &[], None), None)
            .await
            .unwrap();
    }
    // Linking an existing provider to a taken user is refused too.
    let free = s
        .create(provider(&a, "Dr. Late", &[], None), None)
        .await
        .unwrap();
    let mut fields = free.fields.clone();
    fields.user = Some("u7".into());
    let taken = s.replace(&free.changed(fields, true, time::now())).await;
    assert!(
        matches!(taken, Err(StoreError::Duplicate("user"))),
        "{taken:?}"
    );
}

async fn lists_page_in_creation_order_by_specialty_and_activity(s: &dyn ProviderStore) {
    let (c, other) = (ResourceId::generate(), ResourceId::generate());
    let mut ids = Vec::new();
    for i in 0..7 {
        let specialties: &[&str] = if i % 2 == 0 {
            &["endodontics", "orthodontics"]
        } else {
            &["endodontics"]
        };
        let p = s
            .create(provider(&c, &format!("Dr. {i}"), specialties, None), None)
            .await
            .unwrap();
        ids.push(p.id);
        s.create(provider(&other, "Elsewhere", &["orthodontics"], None), None)
            .await
            .unwrap();
    }
    // One inactive: hidden unless asked for.
    let hidden = s.get(&c, &ids[2]).await.unwrap().unwrap();
    s.replace(&hidden.changed(hidden.fields.clone(), false, time::now()))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = page(3, &token);
        let rows = s
            .list(&c, &ProviderQuery::default(), &request)
            .await
            .unwrap();
        let (rows, next) = request.finish(rows, |p| p.id.to_string());
        seen.extend(rows.into_iter().map(|p| p.id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let active: Vec<ResourceId> = ids.iter().filter(|id| **id != ids[2]).cloned().collect();
    assert_eq!(
        seen, active,
        "every active provider once, in creation order"
    );

    let orthodontists = s
        .list(
            &c,
            &ProviderQuery {
                specialty: Some("orthodontics".into()),
                include_inactive: true,
            },
            &page(100, ""),
        )
        .await
        .unwrap();
    let expected: Vec<ResourceId> = ids.iter().step_by(2).cloned().collect();
    assert_eq!(
        orthodontists.into_iter().map(|p| p.id).collect::<Vec<_>>(),
        expected
    );
}

async fn replace_is_conditional_and_racing_replaces_have_one_winner(s: &dyn ProviderStore) {
    let c = ResourceId::generate();
    let p = s
        .create(provider(&c, "Dr. Dora", &[], None), None)
        .await
        .unwrap();
    let attempts = join_all((0..6).map(|i| {
        let mut fields = p.fields.clone();
        fields.display_name = format!("Dr. Dora {i}");
        let next = p.changed(fields, true, time::now());
        async move { s.replace(&next).await }
    }))
    .await;
    let won = attempts.iter().filter(|a| a.is_ok()).count();
    let stale = attempts
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Stale)))
        .count();
    assert_eq!((won, stale), (1, 5), "{attempts:?}");
    assert_eq!(s.get(&c, &p.id).await.unwrap().unwrap().version, 2);
    let gone = provider(&c, "Nobody", &[], None);
    assert!(matches!(
        s.replace(&gone.changed(gone.fields.clone(), true, time::now()))
            .await,
        Err(StoreError::NotFound(_) | StoreError::Stale)
    ));
}
