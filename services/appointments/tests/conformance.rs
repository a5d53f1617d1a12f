//! The appointments store conformance suite: one set of tests, run against every
//! adapter. SQLite in a temp dir; MongoDB at `TOPSMILE_TEST_MONGODB_URI`, each test in
//! its own database, dropped afterwards.
//!
//! Each harness opens the store twice, as two replicas of the service would: `one` and
//! `two` share the data and nothing else (no memory, no connection, no lock).

use std::sync::Arc;

use futures::future::join_all;
use jiff::{SignedDuration, Timestamp};
use topsmile_appointments::{
    domain::{Action, Appointment, Booking, Buffers, Hold},
    store::{
        AppointmentQuery, Appointments, Holder, Proposal, Record, claim_resource,
        embedded::EmbeddedAppointments, mongo::MongoAppointments, page_key, reserve::LEASE,
    },
};
use topsmile_kit::{StoreError, names::ResourceId, paging::PageRequest, store::mongo, testing};
use topsmile_providers::domain::Span;

struct Harness {
    one: Arc<Appointments>,
    two: Arc<Appointments>,
    _dir: Option<tempfile::TempDir>,
    mongo_db: Option<mongodb::Database>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || async {
            Arc::new(Appointments::new(Arc::new(
                EmbeddedAppointments::open(dir.path())
                    .await
                    .expect("open sqlite"),
            )))
        };
        let (one, two) = (open().await, open().await);
        Self {
            one,
            two,
            _dir: Some(dir),
            mongo_db: None,
        }
    }

    async fn mongo(test: &str) -> Option<Self> {
        let uri = testing::mongodb_uri(test)?;
        let database = testing::unique_database("appointments");
        let open = || async {
            let conn = mongo::connect(&uri, &database, "appointments-tests", "primary")
                .await
                .expect("connect");
            let db = conn.database.clone();
            let store = Arc::new(Appointments::new(Arc::new(
                MongoAppointments::open(conn).await.expect("open mongo"),
            )));
            (store, db)
        };
        let (one, db) = open().await;
        let (two, _) = open().await;
        Some(Self {
            one,
            two,
            _dir: None,
            mongo_db: Some(db),
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let h = super::Harness::embedded().await;
                    super::$test(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod mongodb_adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(h) = super::Harness::mongo(stringify!($test)).await else { return };
                    super::$test(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    a_booking_reads_back_and_lists_by_start,
    no_two_active_appointments_of_a_provider_overlap_with_buffers,
    no_two_active_appointments_of_a_patient_overlap,
    fifty_racing_bookings_of_one_slot_make_one_appointment,
    fifty_racing_overlapping_bookings_make_one_appointment,
    two_instances_racing_make_one_appointment,
    a_retried_booking_is_the_first_and_a_reused_request_id_is_refused,
    cancel_and_no_show_free_the_time_and_keep_the_record,
    a_reschedule_keeps_its_old_time_until_the_new_one_is_held,
    a_crash_after_claiming_blocks_the_time_only_for_the_lease,
    a_crash_before_releasing_leaves_nothing_blocked,
    transitions_are_conditional_on_the_version,
    lists_filter_by_provider_patient_range_and_status,
    a_quota_seat_is_held_once_freed_by_a_cancel_and_free_after_the_visit,
    racing_self_service_counts_stop_at_the_limit,
);

const BASE: &str = "2030-03-04T12:00:00Z";

fn at(minutes: i64) -> Timestamp {
    BASE.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

fn now() -> Timestamp {
    "2030-03-01T00:00:00Z".parse().unwrap()
}

struct Who {
    clinic: ResourceId,
    provider: ResourceId,
    patient: ResourceId,
}

fn who() -> Who {
    Who {
        clinic: ResourceId::generate(),
        provider: ResourceId::generate(),
        patient: ResourceId::generate(),
    }
}

/// An appointment of `w` from `start` for `minutes`, with 10 minutes kept free after.
fn visit(w: &Who, start: i64, minutes: i64) -> Appointment {
    visit_with(
        w,
        start,
        minutes,
        Buffers {
            before_secs: 0,
            after_secs: 600,
        },
    )
}

fn visit_with(w: &Who, start: i64, minutes: i64, buffers: Buffers) -> Appointment {
    let slot = Span::new(at(start), at(start + minutes));
    Appointment::book(
        Booking {
            clinic: w.clinic.clone(),
            patient: w.patient.clone(),
            provider: w.provider.clone(),
            slot,
            appointment_type: "cleaning".into(),
            notes: String::new(),
            hold: Hold::of(slot, buffers),
        },
        now(),
    )
}

async fn book(s: &Appointments, a: Appointment) -> Result<Appointment, StoreError> {
    let key = a.id.to_string();
    s.book(a, key, "print".into(), now()).await
}

fn page(size: i32) -> PageRequest {
    PageRequest::parse(size, "", &[]).unwrap()
}

async fn a_booking_reads_back_and_lists_by_start(h: &Harness) {
    let w = who();
    let late = book(&h.one, visit(&w, 120, 30)).await.unwrap();
    let early = book(&h.one, visit(&w, 0, 30)).await.unwrap();
    assert_eq!(early.version, 1);
    assert_eq!(
        h.two.get(&w.clinic, &early.id).await.unwrap(),
        Some(early.clone())
    );
    assert_eq!(
        h.one.get(&ResourceId::generate(), &early.id).await.unwrap(),
        None
    );
    let listed = h
        .one
        .list(&w.clinic, &AppointmentQuery::default(), &page(10))
        .await
        .unwrap();
    assert_eq!(listed, [early.clone(), late.clone()]);
    let mut second = page(1);
    second.after = Some(page_key(&early));
    let rest = h
        .one
        .list(&w.clinic, &AppointmentQuery::default(), &second)
        .await
        .unwrap();
    assert_eq!(rest, [late], "the page after the first");
}

async fn no_two_active_appointments_of_a_provider_overlap_with_buffers(h: &Harness) {
    let w = who();
    // 12:00-13:00, with 10 minutes kept free after: holds the provider until 13:10.
    book(&h.one, visit(&w, 0, 60)).await.unwrap();
    let other_patient = |start, minutes| {
        let mut a = visit(&w, start, minutes);
        a.patient = ResourceId::generate();
        a
    };
    for (what, start, minutes) in [
        ("identical", 0, 60),
        ("enclosed", 15, 30),
        ("enclosing", -30, 120),
        ("overlapping the start", -30, 45),
        ("overlapping the end", 45, 30),
        ("inside the buffer after", 60, 30),
        ("ending before, its own buffer reaching in", -35, 30),
    ] {
        let err = book(&h.one, other_patient(start, minutes))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate("time")),
            "{what}: {err:?}"
        );
    }
    // Touching is fine: from 13:10 on, and one whose own buffer ends at 12:00.
    book(&h.two, other_patient(70, 30)).await.unwrap();
    book(&h.two, other_patient(-40, 30)).await.unwrap();
}

trait WithBuffers {
    fn clone_with_buffers(&self, buffers: Buffers) -> Appointment;
}

impl WithBuffers for Appointment {
    fn clone_with_buffers(&self, buffers: Buffers) -> Appointment {
        Appointment {
            hold: Hold::of(self.slot(), buffers),
            ..self.clone()
        }
    }
}

async fn no_two_active_appointments_of_a_patient_overlap(h: &Harness) {
    let w = who();
    book(&h.one, visit(&w, 0, 60)).await.unwrap();
    // The same patient with another provider, at an overlapping time.
    let mut elsewhere = visit(&w, 30, 60);
    elsewhere.provider = ResourceId::generate();
    let err = book(&h.two, elsewhere.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate("time")), "{err:?}");
    // Right after is fine (a patient has no buffers of their own).
    let mut after = visit(&w, 60, 30);
    after.provider = elsewhere.provider.clone();
    book(&h.two, after).await.unwrap();
}

/// Runs `count` bookings at once, alternating between the two instances; the results.
async fn race(
    h: &Harness,
    count: usize,
    make: impl Fn(usize) -> Appointment,
) -> Vec<Result<Appointment, StoreError>> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let store = if i % 2 == 0 {
                h.one.clone()
            } else {
                h.two.clone()
            };
            let a = make(i);
            tokio::spawn(async move { book(&store, a).await })
        })
        .collect();
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect()
}

fn exactly_one_won(results: &[Result<Appointment, StoreError>]) {
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for r in results {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Duplicate("time") | StoreError::Stale),
                "a loser is ALREADY_EXISTS or ABORTED: {e:?}"
            );
        }
    }
}

async fn fifty_racing_bookings_of_one_slot_make_one_appointment(h: &Harness) {
    let w = who();
    let results = race(h, 50, |_| {
        let mut a = visit(&w, 0, 30);
        a.patient = ResourceId::generate();
        a
    })
    .await;
    exactly_one_won(&results);
    let listed = h
        .one
        .list(&w.clinic, &AppointmentQuery::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

async fn fifty_racing_overlapping_bookings_make_one_appointment(h: &Harness) {
    let w = who();
    // Starts a minute apart, each an hour long: every two of them overlap.
    let results = race(h, 50, |i| {
        let mut a = visit(&w, i64::try_from(i).unwrap_or(0), 60);
        a.patient = ResourceId::generate();
        a
    })
    .await;
    exactly_one_won(&results);
}

async fn two_instances_racing_make_one_appointment(h: &Harness) {
    // The same patient booking two providers at once, through both instances: the
    // patient's claims decide.
    let w = who();
    let results = race(h, 20, |_| {
        let mut a = visit(&w, 0, 30);
        a.provider = ResourceId::generate();
        a
    })
    .await;
    exactly_one_won(&results);
}

async fn a_retried_booking_is_the_first_and_a_reused_request_id_is_refused(h: &Harness) {
    let w = who();
    let key = format!("{}/visit-1", w.clinic);
    let first = h
        .one
        .book(visit(&w, 0, 30), key.clone(), "print-a".into(), now())
        .await
        .unwrap();
    let again = h
        .two
        .book(visit(&w, 0, 30), key.clone(), "print-a".into(), now())
        .await
        .unwrap();
    assert_eq!(again, first);
    let err = h
        .one
        .book(visit(&w, 120, 30), key, "print-b".into(), now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate("request_id")),
        "{err:?}"
    );
    assert_eq!(
        h.one
            .by_request(&w.clinic, &format!("{}/visit-1", w.clinic))
            .await
            .unwrap(),
        Some((first, "print-a".to_owned()))
    );
}

async fn cancel_and_no_show_free_the_time_and_keep_the_record(h: &Harness) {
    let w = who();
    for action in [Action::Cancel, Action::MarkNoShow] {
        let a = book(&h.one, visit(&w, 0, 30)).await.unwrap();
        let mut done = a.after(action, now()).unwrap();
        done.cancellation_reason = "patient called".into();
        h.two.transition(&a, &done, now()).await.unwrap();
        assert_eq!(h.one.get(&w.clinic, &a.id).await.unwrap(), Some(done));
    }
    // The time is free again: a third booking holds it.
    book(&h.one, visit(&w, 0, 30)).await.unwrap();
    let all = h
        .one
        .list(&w.clinic, &AppointmentQuery::default(), &page(10))
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "cancelled and no-show records stay listed");
}

async fn a_reschedule_keeps_its_old_time_until_the_new_one_is_held(h: &Harness) {
    let w = who();
    let buffers = Buffers {
        before_secs: 0,
        after_secs: 600,
    };
    let a = book(&h.one, visit(&w, 0, 60)).await.unwrap();
    // Another patient holds 14:00-14:30 with the same provider.
    let mut other = visit(&w, 120, 30);
    other.patient = ResourceId::generate();
    book(&h.one, other).await.unwrap();

    // Moving 15 minutes later overlaps its own old time: allowed.
    let slot = Span::new(at(15), at(75));
    let next = a
        .moved(
            slot,
            Hold::of(slot, buffers),
            "clinics/x/users/y",
            "later".into(),
            now(),
        )
        .unwrap();
    let moved = h.two.reschedule(&a, next, now()).await.unwrap();
    assert_eq!((moved.start, moved.version), (at(15), 3));
    assert_eq!(moved.reschedules.len(), 1);
    assert_eq!(
        moved.reschedules[0].previous_start_ms,
        at(0).as_millisecond()
    );

    // The old time's free part (12:00-12:15) is free now; the new one is held.
    let mut early = visit(&w, 0, 15).clone_with_buffers(Buffers::default());
    early.patient = ResourceId::generate();
    book(&h.one, early).await.unwrap();
    let mut clash = visit(&w, 30, 15);
    clash.patient = ResourceId::generate();
    assert!(matches!(
        book(&h.one, clash).await,
        Err(StoreError::Duplicate("time"))
    ));

    // Moving onto the other patient's time fails, and keeps the time it had.
    let onto = Span::new(at(110), at(170));
    let next = moved
        .moved(
            onto,
            Hold::of(onto, buffers),
            "clinics/x/users/y",
            "clash".into(),
            now(),
        )
        .unwrap();
    let err = h.one.reschedule(&moved, next, now()).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate("time")), "{err:?}");
    let kept = h.one.get(&w.clinic, &a.id).await.unwrap().unwrap();
    assert_eq!(kept.start, at(15));
    let mut squatter = visit(&w, 30, 15);
    squatter.patient = ResourceId::generate();
    assert!(
        matches!(
            book(&h.two, squatter).await,
            Err(StoreError::Duplicate("time"))
        ),
        "the kept time is still held"
    );
    // A stale version is refused.
    let again = Span::new(at(240), at(300));
    let next = moved
        .moved(
            again,
            Hold::of(again, buffers),
            "clinics/x/users/y",
            "late".into(),
            now(),
        )
        .unwrap();
    assert!(matches!(
        h.one.reschedule(&moved, next, now()).await,
        Err(StoreError::Stale)
    ));
}

/// A booking whose process died after it inserted its record and claims, before it
/// committed: the time is blocked while the lease runs, and free after.
async fn a_crash_after_claiming_blocks_the_time_only_for_the_lease(h: &Harness) {
    let w = who();
    let dead = visit(&w, 0, 30);
    let token = "dead-token".to_owned();
    let record = Record {
        proposal: Some(Proposal {
            token: token.clone(),
            start: dead.start,
            end: dead.end,
            hold: dead.hold,
            since: now(),
        }),
        appointment: Appointment {
            version: 0,
            ..dead.clone()
        },
        booked: false,
        hold_token: String::new(),
        request_key: dead.id.to_string(),
        fingerprint: "print".into(),
    };
    assert_eq!(h.one.records().insert(&record).await.unwrap(), None);
    let claims: Vec<_> = dead
        .hold
        .provider
        .iter()
        .map(|granule| topsmile_appointments::store::Claim {
            clinic: w.clinic.clone(),
            resource: claim_resource(Holder::Provider, &w.provider),
            granule,
            appointment: dead.id.clone(),
            token: token.clone(),
            prev: String::new(),
        })
        .collect();
    assert!(h.one.records().insert_claims(&claims).await.unwrap());

    let mut next = visit(&w, 0, 30);
    next.patient = ResourceId::generate();
    let within = now() + SignedDuration::from_secs(5);
    let key = next.id.to_string();
    let err = h
        .two
        .book(next.clone(), key.clone(), "p".into(), within)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate("time")),
        "in its lease: {err:?}"
    );
    let after = now() + LEASE + SignedDuration::from_secs(1);
    let booked = h.two.book(next, key, "p".into(), after).await.unwrap();
    assert_eq!(booked.start, at(0));
    assert_eq!(
        h.one.records().get(&w.clinic, &dead.id).await.unwrap(),
        None,
        "the dead booking is cleared"
    );
}

/// A cancel whose process died after the status changed, before its claims were
/// deleted: nothing stays blocked.
async fn a_crash_before_releasing_leaves_nothing_blocked(h: &Harness) {
    let w = who();
    let a = book(&h.one, visit(&w, 0, 30)).await.unwrap();
    let record = h
        .one
        .records()
        .get(&w.clinic, &a.id)
        .await
        .unwrap()
        .unwrap();
    let mut cancelled = record.clone();
    cancelled.appointment = a.after(Action::Cancel, now()).unwrap();
    assert!(
        h.one
            .records()
            .replace(&cancelled, a.version)
            .await
            .unwrap()
    );
    // The claims are all still there; the next booking clears them on its way.
    let mut next = visit(&w, 0, 30);
    next.patient = ResourceId::generate();
    book(&h.two, next).await.unwrap();
}

async fn transitions_are_conditional_on_the_version(h: &Harness) {
    let w = who();
    let a = book(&h.one, visit(&w, 0, 30)).await.unwrap();
    let confirmed = a.after(Action::Confirm, now()).unwrap();
    h.one.transition(&a, &confirmed, now()).await.unwrap();
    // The same step from the old version is stale.
    let err = h.two.transition(&a, &confirmed, now()).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale), "{err:?}");
    // Racing steps from one version: one wins.
    let results = join_all((0..10).map(|i| {
        let store = if i % 2 == 0 {
            h.one.clone()
        } else {
            h.two.clone()
        };
        let current = confirmed.clone();
        async move {
            let next = current.after(Action::CheckIn, now()).unwrap();
            store.transition(&current, &next, now()).await
        }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

async fn lists_filter_by_provider_patient_range_and_status(h: &Harness) {
    let w = who();
    let a = book(&h.one, visit(&w, 0, 30)).await.unwrap();
    let mut b = visit(&w, 60, 30);
    b.provider = ResourceId::generate();
    let b = book(&h.one, b).await.unwrap();
    let mut c = visit(&w, 120, 30);
    c.patient = ResourceId::generate();
    let c = book(&h.one, c).await.unwrap();
    let done = a.after(Action::Cancel, now()).unwrap();
    h.one.transition(&a, &done, now()).await.unwrap();
    let list = |q: AppointmentQuery| {
        let s = h.one.clone();
        let clinic = w.clinic.clone();
        async move {
            s.list(&clinic, &q, &page(10))
                .await
                .unwrap()
                .into_iter()
                .map(|x| x.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(AppointmentQuery {
            provider: Some(w.provider.clone()),
            ..Default::default()
        })
        .await,
        [a.id.clone(), c.id.clone()]
    );
    assert_eq!(
        list(AppointmentQuery {
            patient: Some(w.patient.clone()),
            ..Default::default()
        })
        .await,
        [a.id.clone(), b.id.clone()]
    );
    assert_eq!(
        list(AppointmentQuery {
            from: Some(at(30)),
            to: Some(at(120)),
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&b.id)
    );
    assert_eq!(
        list(AppointmentQuery {
            statuses: vec![topsmile_appointments::domain::Status::Cancelled],
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&a.id)
    );
}

/// `w`'s visit at `start` taking quota seat `seat`, with a provider of its own (only the
/// seat can collide).
fn seated(w: &Who, start: i64, seat: i64) -> Appointment {
    let mut a = visit(w, start, 30);
    a.provider = ResourceId::generate();
    a.hold.quota = Some(seat);
    a
}

async fn a_quota_seat_is_held_once_freed_by_a_cancel_and_free_after_the_visit(h: &Harness) {
    let w = who();
    // Racing bookings of one seat, at different times, through both instances: one.
    let results = race(h, 20, |i| seated(&w, 60 * i64::try_from(i).unwrap_or(0), 0)).await;
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Duplicate("quota") | StoreError::Stale),
                "{e:?}"
            );
        }
    }
    let holder = won[0].clone();
    // Another seat is free; the taken one stays taken.
    book(&h.two, seated(&w, 2000, 1)).await.unwrap();
    let err = book(&h.one, seated(&w, 3000, 0)).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate("quota")), "{err:?}");
    // A reschedule keeps its seat.
    let moved = holder
        .moved(
            Span::new(at(4000), at(4030)),
            Hold::of(Span::new(at(4000), at(4030)), Buffers::default()),
            "test",
            String::new(),
            now(),
        )
        .unwrap();
    assert_eq!(moved.hold.quota, Some(0));
    let moved = h.one.reschedule(&holder, moved, now()).await.unwrap();
    let err = book(&h.two, seated(&w, 3000, 0)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate("quota")),
        "still held after the move: {err:?}"
    );
    // Cancelled: the seat is free.
    let cancelled = moved.after(Action::Cancel, now()).unwrap();
    h.one.transition(&moved, &cancelled, now()).await.unwrap();
    let again = book(&h.two, seated(&w, 3000, 0)).await.unwrap();
    // Once its visit has ended, an appointment no longer holds its seat.
    let after_the_visit = again.end + SignedDuration::from_mins(1);
    let next = seated(&w, 5000, 0);
    let key = next.id.to_string();
    h.one
        .book(next, key, "print".into(), after_the_visit)
        .await
        .expect("the seat of a past visit is free");
}

async fn racing_self_service_counts_stop_at_the_limit(h: &Harness) {
    let w = who();
    let day = "2030-03-01";
    let counts = join_all((0..20).map(|i| {
        let store = if i % 2 == 0 { &h.one } else { &h.two };
        store
            .records()
            .count_self_booking(&w.clinic, &w.patient, day, 5, now())
    }))
    .await;
    let counted = counts.iter().filter(|c| matches!(c, Ok(true))).count();
    assert_eq!(counted, 5, "{counts:?}");
    assert!(counts.iter().all(Result::is_ok), "{counts:?}");
    // One given back: one more fits, then none.
    let records = h.one.records();
    records
        .uncount_self_booking(&w.clinic, &w.patient, day)
        .await
        .unwrap();
    assert!(
        records
            .count_self_booking(&w.clinic, &w.patient, day, 5, now())
            .await
            .unwrap()
    );
    assert!(
        !records
            .count_self_booking(&w.clinic, &w.patient, day, 5, now())
            .await
            .unwrap()
    );
    // Another day, another patient and another clinic are counted on their own.
    assert!(
        records
            .count_self_booking(&w.clinic, &w.patient, "2030-03-02", 5, now())
            .await
            .unwrap()
    );
    let other = who();
    assert!(
        records
            .count_self_booking(&w.clinic, &other.patient, day, 5, now())
            .await
            .unwrap()
    );
    assert!(
        records
            .count_self_booking(&other.clinic, &w.patient, day, 5, now())
            .await
            .unwrap()
    );
}
