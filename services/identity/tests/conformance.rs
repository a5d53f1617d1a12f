//! The identity store conformance suite (clinics, users, refresh tokens): one set of
//! tests, run against every adapter.
//!
//! The embedded half uses a fresh SQLite file per test. The MongoDB half runs against
//! `TOPSMILE_TEST_MONGODB_URI` (a real MongoDB, or nx-27017 in CI), each test in its own
//! database, dropped afterwards; see `topsmile_kit::testing` for when it is skipped.

use std::sync::Arc;

use futures::future::join_all;
use jiff::Timestamp;
use topsmile_identity::domain::user::{Attempt, LockPolicy, Role, User};
use topsmile_identity::{
    domain::{Clinic, ClinicFields},
    store::{
        RefreshRecord, SessionRecord, Spend, Stores, Timeouts, embedded::EmbeddedIdentity,
        mongo::MongoIdentity,
    },
};
use topsmile_kit::signin::SignInCounters;
use topsmile_kit::{StoreError, names::ResourceId, paging::PageRequest, store::mongo, testing};

/// A store under test and what must be cleaned up after it.
struct Harness {
    stores: Stores,
    _dir: Option<tempfile::TempDir>,
    mongo_db: Option<mongodb::Database>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            EmbeddedIdentity::open(dir.path())
                .await
                .expect("open sqlite"),
        );
        Self {
            stores: Stores {
                clinics: store.clone(),
                users: store.clone(),
                refresh_tokens: store.clone(),
                sessions: store,
            },
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
        let store = Arc::new(MongoIdentity::open(conn).await.expect("open mongo"));
        Some(Self {
            stores: Stores {
                clinics: store.clone(),
                users: store.clone(),
                refresh_tokens: store.clone(),
                sessions: store,
            },
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
                    super::$test(&h.stores).await;
                    h.finish().await;
                }
            )*
        }
        mod mongodb_adapter {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(h) = super::Harness::mongo(stringify!($test)).await else { return };
                    super::$test(&h.stores).await;
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
    user_reads_back_by_id_and_by_email,
    a_taken_email_is_a_duplicate,
    a_retried_user_create_returns_the_first_user,
    user_updates_are_conditional_and_keep_sign_in_counters,
    users_list_by_clinic_and_role,
    a_super_admin_is_found,
    sign_in_attempts_lock_the_account_until_the_lock_expires,
    racing_sign_in_attempts_let_at_most_the_threshold_through,
    a_successful_sign_in_resets_the_counters,
    guessing_from_many_addresses_meets_the_account_bound_until_unlocked,
    a_refresh_token_spends_once_then_reads_as_reused,
    racing_spends_of_one_token_have_exactly_one_winner,
    an_expired_refresh_token_is_unknown_before_any_cleanup,
    revoking_a_family_or_a_subject_stops_its_live_tokens,
    eviction_keeps_only_the_newest_families,
    a_session_reads_back_only_under_its_clinic,
    touching_keeps_a_live_session_and_refuses_an_idle_old_or_ended_one,
    ending_is_for_the_owner_and_happens_once,
    ending_all_but_one_keeps_that_one_and_spares_others,
    sessions_list_newest_first_without_ended_ones,
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
        // Not the defaults, so a store that drops them fails the round trip.
        booking_rules: topsmile_identity::domain::clinic::BookingRules {
            minimum_notice_secs: 3600,
            booking_horizon_secs: 30 * 86_400,
            slot_step_secs: 600,
            patient_change_cutoff_secs: 12 * 3600,
            patient_active_limit: 2,
            patient_daily_limit: 4,
        },
        session_rules: topsmile_identity::domain::clinic::SessionRules {
            staff_idle_secs: 15 * 60,
            staff_lifetime_secs: 8 * 3600,
            patient_idle_secs: 10 * 60,
            patient_lifetime_secs: 2 * 3600,
            require_mfa_for_all_staff: true,
            all_staff_mfa_since: 1_800_000_000,
        },
    }
}

/// Times are stored with millisecond precision; make test values exact.
fn now() -> Timestamp {
    topsmile_kit::time::now()
}

async fn created_clinic_reads_back_identically(s: &Stores) {
    let clinic = Clinic::new(fields("Sorriso"), now());
    let created = s.clinics.create(clinic.clone(), None).await.unwrap();
    assert_eq!(created, clinic);
    assert_eq!(s.clinics.get(&clinic.id).await.unwrap(), Some(clinic));
}

async fn missing_clinic_is_none(s: &Stores) {
    let id = topsmile_kit::names::ResourceId::generate();
    assert_eq!(s.clinics.get(&id).await.unwrap(), None);
}

async fn same_request_id_returns_the_first_clinic(s: &Stores) {
    let first = s
        .clinics
        .create(Clinic::new(fields("First"), now()), Some("req-1"))
        .await
        .unwrap();
    let second = s
        .clinics
        .create(Clinic::new(fields("Second"), now()), Some("req-1"))
        .await
        .unwrap();
    assert_eq!(second, first);
    let page = PageRequest::parse(10, "", &[]).unwrap();
    assert_eq!(s.clinics.list(true, &page).await.unwrap().len(), 1);
}

async fn concurrent_creates_with_one_request_id_make_one_clinic(s: &Stores) {
    let attempts = (0..10).map(|i| {
        s.clinics
            .create(Clinic::new(fields(&format!("C{i}")), now()), Some("same"))
    });
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
    assert_eq!(s.clinics.list(true, &page).await.unwrap().len(), 1);
}

async fn list_pages_in_creation_order_without_gaps_or_repeats(s: &Stores) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            s.clinics
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
        let items = s.clinics.list(false, &page).await.unwrap();
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

async fn list_hides_inactive_unless_asked(s: &Stores) {
    let active = s
        .clinics
        .create(Clinic::new(fields("Open"), now()), None)
        .await
        .unwrap();
    let closing = s
        .clinics
        .create(Clinic::new(fields("Closed"), now()), None)
        .await
        .unwrap();
    s.clinics
        .replace(&closing.changed(closing.fields.clone(), false, now()))
        .await
        .unwrap();
    let page = PageRequest::parse(10, "", &[]).unwrap();
    let visible: Vec<_> = s
        .clinics
        .list(false, &page)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(visible, vec![active.id.clone()]);
    let all = s.clinics.list(true, &page).await.unwrap();
    assert_eq!(all.len(), 2);
    let reread = s.clinics.get(&closing.id).await.unwrap().unwrap();
    assert!(
        !reread.is_active,
        "a deactivated clinic reads back inactive"
    );
}

async fn replace_with_current_version_succeeds(s: &Stores) {
    let clinic = s
        .clinics
        .create(Clinic::new(fields("Old"), now()), None)
        .await
        .unwrap();
    let next = clinic.changed(fields("New"), true, now());
    s.clinics.replace(&next).await.unwrap();
    let stored = s.clinics.get(&clinic.id).await.unwrap().unwrap();
    assert_eq!(stored, next);
    assert_eq!(stored.version, 2);
}

async fn replace_with_stale_version_is_stale_and_changes_nothing(s: &Stores) {
    let clinic = s
        .clinics
        .create(Clinic::new(fields("Old"), now()), None)
        .await
        .unwrap();
    s.clinics
        .replace(&clinic.changed(fields("Second"), true, now()))
        .await
        .unwrap();
    let from_stale_read = clinic.changed(fields("Lost update"), true, now());
    assert!(matches!(
        s.clinics.replace(&from_stale_read).await,
        Err(StoreError::Stale)
    ));
    assert_eq!(
        s.clinics
            .get(&clinic.id)
            .await
            .unwrap()
            .unwrap()
            .fields
            .display_name,
        "Second"
    );
}

async fn replace_of_missing_clinic_is_not_found(s: &Stores) {
    let ghost = Clinic::new(fields("Ghost"), now());
    let next = ghost.changed(fields("Ghost"), true, now());
    assert!(matches!(
        s.clinics.replace(&next).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn racing_replaces_have_exactly_one_winner(s: &Stores) {
    let clinic = s
        .clinics
        .create(Clinic::new(fields("Race"), now()), None)
        .await
        .unwrap();
    let attempts: Vec<Clinic> = (0..20)
        .map(|i| clinic.changed(fields(&format!("W{i}")), true, now()))
        .collect();
    let results = join_all(attempts.iter().map(|next| s.clinics.replace(next))).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let stale = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Stale)))
        .count();
    assert_eq!((winners, stale), (1, 19));
}

fn user(clinic: &str, email: &str, role: Role) -> User {
    let t = now();
    User {
        id: ResourceId::generate(),
        clinic: clinic.to_owned(),
        email: email.to_owned(),
        display_name: "Ana Souza".to_owned(),
        role,
        is_active: true,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
            .to_owned(),
        create_time: t,
        update_time: t,
        version: 1,
        // Not the default, so a store that drops it fails the round trips below.
        mfa: topsmile_identity::domain::mfa::Mfa {
            secret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into(),
            last_step: 42,
            recovery_codes: vec!["ab".repeat(32)],
            ..Default::default()
        },
    }
}

async fn user_reads_back_by_id_and_by_email(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Admin), None)
        .await
        .unwrap();
    assert_eq!(
        s.users.get(&u.clinic, &u.id).await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(
        s.users.get("c2", &u.id).await.unwrap(),
        None,
        "another clinic's id reads as missing"
    );
    assert_eq!(
        s.users.get_by_email("ana@example.com").await.unwrap(),
        Some(u)
    );
    assert_eq!(
        s.users.get_by_email("nobody@example.com").await.unwrap(),
        None
    );
}

async fn a_retried_user_create_returns_the_first_user(s: &Stores) {
    let attempts = join_all((0..10).map(|i| {
        s.users.create(
            user("c1", &format!("retry{i}@example.com"), Role::Staff),
            Some("create-staff-1"),
        )
    }))
    .await;
    let first = attempts[0].as_ref().unwrap().clone();
    for a in &attempts {
        assert_eq!(
            a.as_ref().unwrap().id,
            first.id,
            "every retry answers the same user"
        );
    }
    // The same request id in another clinic is another request.
    let other = s
        .users
        .create(
            user("c2", "other@example.com", Role::Staff),
            Some("create-staff-1"),
        )
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    let listed = s
        .users
        .list(
            "c1",
            None,
            true,
            &PageRequest::parse(100, "", &["t"]).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

async fn a_taken_email_is_a_duplicate(s: &Stores) {
    s.users
        .create(user("c1", "ana@example.com", Role::Admin), None)
        .await
        .unwrap();
    let again = s
        .users
        .create(user("c2", "ana@example.com", Role::Staff), None)
        .await;
    assert!(
        matches!(again, Err(StoreError::Duplicate("email"))),
        "{again:?}"
    );
}

async fn user_updates_are_conditional_and_keep_sign_in_counters(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Staff), None)
        .await
        .unwrap();
    let policy = LockPolicy::default();
    assert_eq!(
        attempt(s, &u, CLIENT, now(), &policy).await,
        Attempt::Proceed
    );
    let next = User {
        role: Role::Provider,
        version: 2,
        ..u.clone()
    };
    s.users.update_profile(&next).await.unwrap();
    let stored = s.users.get(&u.clinic, &u.id).await.unwrap().unwrap();
    assert_eq!(stored.role, Role::Provider);
    for _ in 1..policy.threshold {
        assert_eq!(
            attempt(s, &stored, CLIENT, now(), &policy).await,
            Attempt::Proceed
        );
    }
    assert_eq!(
        attempt(s, &stored, CLIENT, now(), &policy).await,
        Attempt::Locked,
        "a profile update must not reset sign-in counters"
    );
    let stale = User {
        display_name: "Lost".into(),
        version: 2,
        ..u.clone()
    };
    assert!(matches!(
        s.users.update_profile(&stale).await,
        Err(StoreError::Stale)
    ));
    let taken = s
        .users
        .create(user("c1", "bia@example.com", Role::Staff), None)
        .await
        .unwrap();
    let clash = User {
        email: "bia@example.com".into(),
        version: 3,
        ..stored
    };
    assert!(matches!(
        s.users.update_profile(&clash).await,
        Err(StoreError::Duplicate("email"))
    ));
    assert_eq!(
        s.users
            .get(&taken.clinic, &taken.id)
            .await
            .unwrap()
            .unwrap()
            .email,
        "bia@example.com"
    );
}

async fn users_list_by_clinic_and_role(s: &Stores) {
    let a = s
        .users
        .create(user("c1", "a@example.com", Role::Admin), None)
        .await
        .unwrap();
    let b = s
        .users
        .create(user("c1", "b@example.com", Role::Staff), None)
        .await
        .unwrap();
    s.users
        .create(user("c2", "c@example.com", Role::Staff), None)
        .await
        .unwrap();
    let gone = s
        .users
        .create(user("c1", "d@example.com", Role::Staff), None)
        .await
        .unwrap();
    s.users
        .update_profile(&User {
            is_active: false,
            version: 2,
            ..gone
        })
        .await
        .unwrap();
    let page = PageRequest::parse(10, "", &[]).unwrap();
    let ids = |users: Vec<User>| users.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.users.list("c1", None, false, &page).await.unwrap()),
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(
        ids(s
            .users
            .list("c1", Some(Role::Staff), false, &page)
            .await
            .unwrap()),
        vec![b.id]
    );
    assert_eq!(
        s.users.list("c1", None, true, &page).await.unwrap().len(),
        3
    );
}

async fn a_super_admin_is_found(s: &Stores) {
    assert!(!s.users.any_super_admin().await.unwrap());
    s.users
        .create(user("c1", "admin@example.com", Role::Admin), None)
        .await
        .unwrap();
    assert!(!s.users.any_super_admin().await.unwrap());
    s.users
        .create(user("-", "root@example.com", Role::SuperAdmin), None)
        .await
        .unwrap();
    assert!(s.users.any_super_admin().await.unwrap());
}

const CLIENT: &str = "203.0.113.7";

async fn attempt(
    s: &Stores,
    u: &User,
    client: &str,
    at: Timestamp,
    policy: &LockPolicy,
) -> Attempt {
    let counters: &dyn SignInCounters<User> = s.users.as_ref();
    counters.begin_sign_in(u, client, at, policy).await.unwrap()
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap()
}

async fn sign_in_attempts_lock_the_account_until_the_lock_expires(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Staff), None)
        .await
        .unwrap();
    let policy = LockPolicy::default();
    let t0 = now();
    for _ in 0..policy.threshold {
        assert_eq!(attempt(s, &u, CLIENT, t0, &policy).await, Attempt::Proceed);
    }
    assert_eq!(attempt(s, &u, CLIENT, t0, &policy).await, Attempt::Locked);
    // Locked for that address only: the owner elsewhere proceeds.
    assert_eq!(
        attempt(s, &u, "198.51.100.4", t0, &policy).await,
        Attempt::Proceed
    );
    assert_eq!(
        attempt(s, &u, CLIENT, plus(t0, 14 * 60), &policy).await,
        Attempt::Locked
    );
    let after = plus(t0, 15 * 60 + 1);
    assert_eq!(
        attempt(s, &u, CLIENT, after, &policy).await,
        Attempt::Proceed
    );
    // The second lock lasts longer than the first (30 minutes).
    for _ in 1..policy.threshold {
        attempt(s, &u, CLIENT, after, &policy).await;
    }
    assert_eq!(
        attempt(s, &u, CLIENT, after, &policy).await,
        Attempt::Locked
    );
    assert_eq!(
        attempt(s, &u, CLIENT, plus(after, 29 * 60), &policy).await,
        Attempt::Locked
    );
    assert_eq!(
        attempt(s, &u, CLIENT, plus(after, 30 * 60 + 1), &policy).await,
        Attempt::Proceed
    );
}

async fn racing_sign_in_attempts_let_at_most_the_threshold_through(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Staff), None)
        .await
        .unwrap();
    let policy = LockPolicy::default();
    let t = now();
    let outcomes = join_all((0..50).map(|_| attempt(s, &u, CLIENT, t, &policy))).await;
    let through = outcomes.iter().filter(|o| **o == Attempt::Proceed).count();
    assert_eq!(through, usize::try_from(policy.threshold).unwrap());
    // One lock, however many attempts raced: it ends after the first lock's length.
    assert_eq!(
        attempt(s, &u, CLIENT, plus(t, 15 * 60 + 1), &policy).await,
        Attempt::Proceed
    );
}

async fn a_successful_sign_in_resets_the_counters(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Staff), None)
        .await
        .unwrap();
    let policy = LockPolicy::default();
    for _ in 0..3 {
        attempt(s, &u, CLIENT, now(), &policy).await;
    }
    let counters: &dyn SignInCounters<User> = s.users.as_ref();
    counters.sign_in_succeeded(&u, CLIENT).await.unwrap();
    for _ in 0..policy.threshold {
        assert_eq!(
            attempt(s, &u, CLIENT, now(), &policy).await,
            Attempt::Proceed
        );
    }
    assert_eq!(
        attempt(s, &u, CLIENT, now(), &policy).await,
        Attempt::Locked
    );
}

async fn guessing_from_many_addresses_meets_the_account_bound_until_unlocked(s: &Stores) {
    let u = s
        .users
        .create(user("c1", "ana@example.com", Role::Staff), None)
        .await
        .unwrap();
    let policy = LockPolicy::default();
    let t = now();
    let per_address = policy.threshold;
    let addresses = policy.account_threshold / per_address;
    for host in 0..addresses {
        let client = format!("198.51.100.{host}");
        for _ in 0..per_address {
            assert_eq!(attempt(s, &u, &client, t, &policy).await, Attempt::Proceed);
        }
    }
    assert_eq!(
        attempt(s, &u, "192.0.2.200", t, &policy).await,
        Attempt::Locked,
        "the account-wide bound holds for a fresh address"
    );
    s.users.unlock_sign_in(&u).await.unwrap();
    assert_eq!(
        attempt(s, &u, "198.51.100.0", t, &policy).await,
        Attempt::Proceed
    );
    assert_eq!(
        attempt(s, &u, "192.0.2.200", t, &policy).await,
        Attempt::Proceed
    );
}

fn token(subject: &str, family: &str, created: Timestamp, ttl_secs: i64) -> RefreshRecord {
    RefreshRecord {
        hash: format!("{:064x}", rand_u128()),
        subject: subject.into(),
        kind: topsmile_kit::auth::Kind::Staff,
        clinic: "c1".into(),
        family: family.into(),
        family_created: created,
        expires_at: created + jiff::SignedDuration::from_secs(ttl_secs),
    }
}

fn rand_u128() -> u128 {
    uuid::Uuid::now_v7().as_u128() ^ u128::from(std::process::id())
}

async fn a_refresh_token_spends_once_then_reads_as_reused(s: &Stores) {
    let t = token("u1", "f1", now(), 3600);
    s.refresh_tokens.insert(&t).await.unwrap();
    assert_eq!(
        s.refresh_tokens.spend(&t.hash, now()).await.unwrap(),
        Spend::Fresh(t.clone())
    );
    assert_eq!(
        s.refresh_tokens.spend(&t.hash, now()).await.unwrap(),
        Spend::Reused(t.clone())
    );
    assert_eq!(
        s.refresh_tokens.spend("no such hash", now()).await.unwrap(),
        Spend::Unknown
    );
}

async fn racing_spends_of_one_token_have_exactly_one_winner(s: &Stores) {
    let t = token("u1", "f1", now(), 3600);
    s.refresh_tokens.insert(&t).await.unwrap();
    let results = join_all((0..20).map(|_| s.refresh_tokens.spend(&t.hash, now()))).await;
    let fresh = results
        .iter()
        .filter(|r| matches!(r, Ok(Spend::Fresh(_))))
        .count();
    let reused = results
        .iter()
        .filter(|r| matches!(r, Ok(Spend::Reused(_))))
        .count();
    assert_eq!((fresh, reused), (1, 19), "{results:?}");
}

async fn an_expired_refresh_token_is_unknown_before_any_cleanup(s: &Stores) {
    let issued = now();
    let t = token("u1", "f1", issued, 60);
    s.refresh_tokens.insert(&t).await.unwrap();
    let later = issued + jiff::SignedDuration::from_secs(61);
    assert_eq!(
        s.refresh_tokens.spend(&t.hash, later).await.unwrap(),
        Spend::Unknown
    );
}

async fn revoking_a_family_or_a_subject_stops_its_live_tokens(s: &Stores) {
    let a = token("u1", "fa", now(), 3600);
    let b = token("u1", "fb", now(), 3600);
    let other = token("u2", "fc", now(), 3600);
    for t in [&a, &b, &other] {
        s.refresh_tokens.insert(t).await.unwrap();
    }
    s.refresh_tokens.revoke_family("fa", now()).await.unwrap();
    assert!(matches!(
        s.refresh_tokens.spend(&a.hash, now()).await.unwrap(),
        Spend::Reused(_)
    ));
    s.refresh_tokens.revoke_subject("u1", now()).await.unwrap();
    assert!(matches!(
        s.refresh_tokens.spend(&b.hash, now()).await.unwrap(),
        Spend::Reused(_)
    ));
    assert!(
        matches!(
            s.refresh_tokens.spend(&other.hash, now()).await.unwrap(),
            Spend::Fresh(_)
        ),
        "another user's session is untouched"
    );
}

async fn eviction_keeps_only_the_newest_families(s: &Stores) {
    let start = now();
    let tokens: Vec<RefreshRecord> = (0..12)
        .map(|i| {
            token(
                "u1",
                &format!("f{i:02}"),
                start + jiff::SignedDuration::from_secs(i),
                3600,
            )
        })
        .collect();
    for t in &tokens {
        s.refresh_tokens.insert(t).await.unwrap();
    }
    s.refresh_tokens
        .evict_oldest("u1", 10, start + jiff::SignedDuration::from_secs(20))
        .await
        .unwrap();
    let at = start + jiff::SignedDuration::from_secs(30);
    for (i, t) in tokens.iter().enumerate() {
        let spent = s.refresh_tokens.spend(&t.hash, at).await.unwrap();
        if i < 2 {
            assert!(
                matches!(spent, Spend::Reused(_)),
                "family {i} should be evicted: {spent:?}"
            );
        } else {
            assert!(
                matches!(spent, Spend::Fresh(_)),
                "family {i} should live: {spent:?}"
            );
        }
    }
}

fn session(clinic: &str, subject: &str, id: &str, created: Timestamp) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        subject: subject.into(),
        kind: topsmile_kit::auth::Kind::Staff,
        clinic: clinic.into(),
        created,
        last_used: created,
        ended: None,
        client_address: "192.0.2.7".into(),
        client_label: "grpcurl/1.9.1 grpc-go/1.61.0".into(),
        method: "otp".into(),
    }
}

/// Timeouts that nothing created after `t` has reached.
fn none_before(t: Timestamp) -> Timeouts {
    Timeouts {
        idle_before: t,
        started_before: t,
    }
}

async fn a_session_reads_back_only_under_its_clinic(s: &Stores) {
    let t = now();
    let mine = session("c1", "u1", "s-read", t);
    s.sessions.start(&mine).await.unwrap();
    assert_eq!(
        s.sessions.get("c1", "s-read").await.unwrap(),
        Some(mine.clone())
    );
    assert_eq!(s.sessions.get("c2", "s-read").await.unwrap(), None);
    assert_eq!(s.sessions.get("c1", "s-none").await.unwrap(), None);
    let duplicate = s.sessions.start(&mine).await.unwrap_err();
    assert!(
        matches!(duplicate, StoreError::Duplicate(_)),
        "{duplicate:?}"
    );
}

async fn touching_keeps_a_live_session_and_refuses_an_idle_old_or_ended_one(s: &Stores) {
    let t = now();
    let minute = jiff::SignedDuration::from_secs(60);
    let live = session("c1", "u1", "s-touch", t);
    s.sessions.start(&live).await.unwrap();
    let before = none_before(t - minute);
    assert!(
        s.sessions
            .touch("c1", "s-touch", t + minute, before)
            .await
            .unwrap()
    );
    let read = s.sessions.get("c1", "s-touch").await.unwrap().unwrap();
    assert_eq!(read.last_used, t + minute, "last use moved");
    assert!(
        !s.sessions
            .touch("c2", "s-touch", t + minute, before)
            .await
            .unwrap(),
        "another clinic's touch finds nothing"
    );
    // Idle: last used at or before the idle bound.
    let idle = Timeouts {
        idle_before: t + minute,
        started_before: t - minute,
    };
    assert!(
        !s.sessions
            .touch("c1", "s-touch", t + minute * 2, idle)
            .await
            .unwrap()
    );
    // Too old: created at or before the lifetime bound.
    let old = Timeouts {
        idle_before: t - minute,
        started_before: t,
    };
    assert!(
        !s.sessions
            .touch("c1", "s-touch", t + minute * 2, old)
            .await
            .unwrap()
    );
    let read = s.sessions.get("c1", "s-touch").await.unwrap().unwrap();
    assert_eq!(read.last_used, t + minute, "refused touches change nothing");
    assert!(
        s.sessions
            .end("c1", "u1", "s-touch", t + minute * 2)
            .await
            .unwrap()
    );
    assert!(
        !s.sessions
            .touch("c1", "s-touch", t + minute * 3, before)
            .await
            .unwrap()
    );
}

async fn ending_is_for_the_owner_and_happens_once(s: &Stores) {
    let t = now();
    s.sessions
        .start(&session("c1", "u1", "s-end", t))
        .await
        .unwrap();
    assert!(
        !s.sessions.end("c1", "u2", "s-end", t).await.unwrap(),
        "someone else's session id ends nothing"
    );
    assert!(!s.sessions.end("c2", "u1", "s-end", t).await.unwrap());
    assert!(
        s.sessions
            .get("c1", "s-end")
            .await
            .unwrap()
            .unwrap()
            .ended
            .is_none()
    );
    let racing = join_all((0..20).map(|_| s.sessions.end("c1", "u1", "s-end", t))).await;
    let ended = racing.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(ended, 1, "{racing:?}");
    let read = s.sessions.get("c1", "s-end").await.unwrap().unwrap();
    assert_eq!(read.ended, Some(t));
    assert!(!read.is_live(none_before(t - jiff::SignedDuration::from_secs(60))));
}

async fn ending_all_but_one_keeps_that_one_and_spares_others(s: &Stores) {
    let t = now();
    for id in ["s-a1", "s-a2", "s-a3"] {
        s.sessions.start(&session("c1", "u1", id, t)).await.unwrap();
    }
    s.sessions
        .start(&session("c1", "u2", "s-b1", t))
        .await
        .unwrap();
    assert_eq!(
        s.sessions
            .end_all("c1", "u1", Some("s-a2"), t)
            .await
            .unwrap(),
        2
    );
    let ids: Vec<String> = s
        .sessions
        .list("c1", "u1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s-a2"]);
    assert_eq!(s.sessions.list("c1", "u2", 10).await.unwrap().len(), 1);
    assert_eq!(s.sessions.end_all("c1", "u1", None, t).await.unwrap(), 1);
    assert!(s.sessions.list("c1", "u1", 10).await.unwrap().is_empty());
}

async fn sessions_list_newest_first_without_ended_ones(s: &Stores) {
    let t = now();
    for i in 0..5 {
        let started = t + jiff::SignedDuration::from_secs(i);
        s.sessions
            .start(&session("c1", "u1", &format!("s-l{i}"), started))
            .await
            .unwrap();
    }
    s.sessions.end("c1", "u1", "s-l3", t).await.unwrap();
    let ids: Vec<String> = s
        .sessions
        .list("c1", "u1", 3)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s-l4", "s-l2", "s-l1"]);
    assert!(s.sessions.list("c2", "u1", 10).await.unwrap().is_empty());
}
