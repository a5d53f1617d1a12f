//! The embedded store keeps the audit trail in a file of its own. A records file from
//! before that keeps its events in an `audit_events` table of its own: the next start
//! moves them over, and however the move is cut short, no event is lost or doubled.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};
use topsmile_patients::store::{AuditLog, embedded};

const RECORDS_FILE: &str = "patients.sqlite3";

const DOC: &str = r#"{"actorRole":"ROLE_ADMIN","actorKind":"staff","action":"GetPatient","outcome":"OK","timeMs":1700000000000,"traceId":""}"#;

/// A data directory as the store left it before the split: the current schema, plus
/// `events` audit events of `clinic` in the records file (the trail's file empty).
fn old_layout(dir: &Path, clinic: &str, events: usize) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(embedded::EmbeddedPatients::open(dir))
        .unwrap();
    let mut records = Connection::open(dir.join(RECORDS_FILE)).unwrap();
    let tx = records.transaction().unwrap();
    tx.execute_batch(
        "CREATE TABLE audit_events (id TEXT PRIMARY KEY, clinic_id TEXT NOT NULL, actor TEXT NOT NULL, resource TEXT NOT NULL, doc TEXT NOT NULL);",
    )
    .unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO audit_events (id, clinic_id, actor, resource, doc) VALUES (?1, ?2, 'users/u1', 'clinics/c/patients/p', ?3)")
            .unwrap();
        for i in 0..events {
            insert
                .execute(params![format!("{i:020}"), clinic, DOC])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Events in the records file (`None`: its table is gone), events in the trail's
/// file, and distinct events in the two.
fn census(dir: &Path) -> (Option<i64>, i64, i64) {
    let conn = Connection::open(dir.join(RECORDS_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let trail = dir.join(embedded::TRAIL_FILE);
    conn.execute(
        "ATTACH DATABASE ?1 AS trail",
        params![trail.to_string_lossy()],
    )
    .unwrap();
    let in_records: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'audit_events'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .unwrap()
        .map(|_| {
            conn.query_row("SELECT count(*) FROM main.audit_events", [], |r| r.get(0))
                .unwrap()
        });
    let in_trail: i64 = conn
        .query_row("SELECT count(*) FROM trail.audit_events", [], |r| r.get(0))
        .unwrap();
    let distinct: i64 = if in_records.is_some() {
        conn.query_row(
            "SELECT count(*) FROM (SELECT id FROM main.audit_events UNION SELECT id FROM trail.audit_events)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    } else {
        in_trail
    };
    (in_records, in_trail, distinct)
}

/// A running service process, killed when dropped (also when an assertion fails).
struct Service(std::process::Child);

impl Service {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The patients service on `dir`, as deployed (its own binary, embedded store).
fn start_service(dir: &Path) -> Service {
    start_logging_service(dir, None)
}

/// The same, its info log (JSON lines, on stderr) written to `log` when given.
fn start_logging_service(dir: &Path, log: Option<&Path>) -> Service {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_topsmile-patients"))
        .env("TOPSMILE_DATA_DIR", dir)
        .env("TOPSMILE_LISTEN", "127.0.0.1:0")
        .env("TOPSMILE_IDENTITY_UPSTREAMS", "127.0.0.1:9")
        .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
        // Its "metrics at" line says the store is open and the service started.
        .env("TOPSMILE_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Service(child)
}

/// Whether the records file's table is gone (the move's last step).
fn moved(dir: &Path) -> bool {
    let conn = Connection::open(dir.join(RECORDS_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_events')",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn events_of_a_file_from_before_the_split_move_to_the_trail_file() {
    let dir = tempfile::tempdir().unwrap();
    let clinic = topsmile_kit::names::ResourceId::generate().to_string();
    old_layout(dir.path(), &clinic, 2);
    // The first event is also in the trail's file already: a move cut short after the
    // copy committed.
    Connection::open(dir.path().join(embedded::TRAIL_FILE))
        .unwrap()
        .execute(
            "INSERT INTO audit_events (id, clinic_id, actor, resource, doc) VALUES (?1, ?2, 'users/u1', 'clinics/c/patients/p', ?3)",
            params![format!("{:020}", 0), clinic, DOC],
        )
        .unwrap();

    let events = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = embedded::EmbeddedPatients::open(dir.path()).await.unwrap();
        store
            .list(
                &clinic,
                &Default::default(),
                &topsmile_kit::paging::PageRequest::parse(10, "", &["trail"]).unwrap(),
            )
            .await
            .unwrap()
    });
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [format!("{:020}", 0), format!("{:020}", 1)]);
    assert_eq!(events[0].action, "GetPatient");
    assert_eq!(
        census(dir.path()),
        (None, 2, 2),
        "the records file keeps none"
    );
}

/// The service is killed (SIGKILL) at points spread over a whole move, then started
/// again, until the move is done: after every kill each event is in one file or both,
/// and at the end each is in the trail's file once.
#[test]
fn a_move_killed_at_any_point_loses_no_event() {
    const EVENTS: i64 = 60_000;
    const KILLS: u32 = 12;
    let clinic = "clinic-under-test";

    // How long an uncut start and move takes here, on a copy.
    let timing = tempfile::tempdir().unwrap();
    old_layout(timing.path(), clinic, EVENTS as usize);
    let began = Instant::now();
    let mut service = start_service(timing.path());
    while !moved(timing.path()) {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the move never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let whole = began.elapsed();
    // Killed the moment the records file's table is gone: the copy must be durable
    // by then.
    service.kill();
    assert_eq!(
        census(timing.path()),
        (None, EVENTS, EVENTS),
        "(records file, trail, distinct) once the records file's table was gone"
    );

    let dir = tempfile::tempdir().unwrap();
    old_layout(dir.path(), clinic, EVENTS as usize);
    let mut cut_short = 0;
    for k in 1..=KILLS {
        let mut service = start_service(dir.path());
        std::thread::sleep(whole * k / (KILLS + 1));
        service.kill();
        let (in_records, in_trail, distinct) = census(dir.path());
        assert_eq!(
            distinct, EVENTS,
            "after kill {k}: records file {in_records:?}, trail {in_trail}: events lost"
        );
        if in_records.is_some() {
            cut_short += 1;
        }
    }
    assert!(cut_short > 0, "no kill landed before the move ended");

    let mut service = start_service(dir.path());
    let began = Instant::now();
    while !moved(dir.path()) {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the move never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    service.kill();
    assert_eq!(census(dir.path()), (None, EVENTS, EVENTS));
}

/// Replicas starting together on one older directory: both start, whichever finishes
/// the move, and every event ends up in the trail's file once.
#[test]
fn replicas_starting_together_both_start_and_move_each_event_once() {
    const EVENTS: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    old_layout(dir.path(), "clinic-under-test", EVENTS as usize);
    let (first, second) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        tokio::join!(
            embedded::EmbeddedPatients::open(dir.path()),
            embedded::EmbeddedPatients::open(dir.path())
        )
    });
    assert!(first.is_ok(), "{:?}", first.err());
    assert!(second.is_ok(), "{:?}", second.err());
    assert_eq!(census(dir.path()), (None, EVENTS, EVENTS));
}

/// The operator learns of the move: one info line with the number of events moved.
#[test]
fn the_move_is_logged_once_with_its_count() {
    const EVENTS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    old_layout(dir.path(), "clinic-under-test", EVENTS);
    let log = dir.path().join("service.log");
    let mut service = start_logging_service(dir.path(), Some(&log));
    let began = Instant::now();
    let line = loop {
        let written = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = written
            .lines()
            .find(|l| l.contains("audit trail moved to its own file"))
        {
            break line.to_owned();
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no move logged: {written}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    service.kill();
    assert!(line.contains(&format!("\"events\":{EVENTS}")), "{line}");
    let written = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        written
            .lines()
            .filter(|l| l.contains("audit trail moved"))
            .count(),
        1,
        "{written}"
    );
    // A second start has nothing to move, and says nothing of it.
    let mut service = start_logging_service(dir.path(), Some(&log));
    let began = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("metrics at /metrics")
    {
        assert!(began.elapsed() < Duration::from_secs(120), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    service.kill();
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("audit trail moved")
    );
}
