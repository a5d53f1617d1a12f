//! What a clinic would notice in production, provoked on purpose: replicas drained
//! while calls keep coming.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use support::{Bearer, Setup, TestSuite, mongo_store};
use tokio::sync::Mutex;
use topsmile_kit::{config::ServerLimits, store::StoreChoice};
use topsmile_proto::topsmile::patients::v1 as pb;

/// What a load run saw: calls answered, patients created (by request id), and every
/// failure (with the request id of a failed create).
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    created: Mutex<Vec<(String, String)>>,
    failures: Mutex<Vec<(Option<String>, tonic::Status)>>,
}

/// Reads and writes patients through the gateway from `workers` clients until `stop`:
/// each creates a patient (with a request id, so a retry is safe) and reads it back.
fn steady_load(
    channel: tonic::transport::Channel,
    token: String,
    clinic: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let mut client = pb::patient_service_client::PatientServiceClient::with_interceptor(
                channel.clone(),
                Bearer(Some(token.clone())),
            );
            let (stop, tally, clinic) = (stop.clone(), tally.clone(), clinic.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request_id = format!("load-{worker}-{n}");
                    let created = client
                        .create_patient(new_patient(&clinic, &request_id))
                        .await;
                    let name = match created {
                        Ok(answer) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let name = answer
                                .into_inner()
                                .patient
                                .map(|p| p.name)
                                .unwrap_or_default();
                            tally.created.lock().await.push((request_id, name.clone()));
                            name
                        }
                        Err(status) => {
                            tally.failures.lock().await.push((Some(request_id), status));
                            continue;
                        }
                    };
                    match client.get_patient(pb::GetPatientRequest { name }).await {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => tally.failures.lock().await.push((None, status)),
                    }
                }
            })
        })
        .collect()
}

fn new_patient(clinic: &str, request_id: &str) -> pb::CreatePatientRequest {
    pb::CreatePatientRequest {
        parent: clinic.to_owned(),
        patient: Some(pb::Patient {
            given_name: "Load".into(),
            family_name: request_id.to_owned(),
            ..Default::default()
        }),
        request_id: request_id.to_owned(),
    }
}

async fn a_drained_replica_fails_no_call(store: Option<StoreChoice>) {
    let suite = TestSuite::with(Setup {
        store,
        replicas: 2,
        health_check_ms: 100,
        limits: ServerLimits {
            // Long enough for the gateway's next health check to see NOT_SERVING.
            drain_delay_ms: 1000,
            ..Setup::default().limits
        },
        ..Setup::default()
    })
    .await;
    let staff = suite.clinic_with_staff("Drained").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = steady_load(
        suite.channel().await,
        staff.admin.clone(),
        staff.clinic.name.clone(),
        8,
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "the load is running");

    // SIGTERM to one of the two patients replicas, mid-load.
    let draining = &suite.suite.replicas["patients"][1];
    draining.stop();
    // During its drain delay it says NOT_SERVING (so callers move away) yet still
    // answers the calls that reach it.
    let direct = support::connect(draining.addr).await;
    let mut said = None;
    for _ in 0..50 {
        let status = tonic_health::pb::health_client::HealthClient::new(direct.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: "topsmile.patients.v1.PatientService".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        said = Some(status.clone());
        if status.ok()
            == Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        said.and_then(Result::ok),
        Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32),
        "a draining replica reports NOT_SERVING on its readiness name"
    );
    pb::patient_service_client::PatientServiceClient::with_interceptor(
        direct,
        Bearer(Some(staff.admin.clone())),
    )
    .list_patients(pb::ListPatientsRequest {
        parent: staff.clinic.name.clone(),
        ..Default::default()
    })
    .await
    .expect("a draining replica still serves during its delay");
    // Its delay, its drain, and a while after it is gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let failures = tally.failures.lock().await;
    assert!(
        failures.is_empty(),
        "{} of {} calls failed while a replica drained: {:?}",
        failures.len(),
        failures.len() + tally.ok.load(Ordering::Relaxed),
        failures.iter().take(5).map(|(_, s)| s).collect::<Vec<_>>()
    );
    assert!(
        tally.ok.load(Ordering::Relaxed) > before,
        "calls went on after the drain began"
    );
    // The drained replica is gone: it accepts no connection.
    let gone = tonic::transport::Endpoint::from_shared(format!("http://{}", draining.addr))
        .unwrap()
        .connect()
        .await;
    assert!(
        gone.is_err(),
        "the drained replica still accepts connections"
    );
    drop(failures);
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_drained_under_load_fails_no_call() {
    a_drained_replica_fails_no_call(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_drained_under_load_fails_no_call_on_mongodb() {
    if let Some(store) = mongo_store("drain_on_mongodb") {
        a_drained_replica_fails_no_call(Some(store)).await;
    }
}

/// An nx-27017 process of this test's own (the shared stand-in must stay up for the
/// other tests), on a data directory that outlives it, so it can be stopped and
/// started again with its data.
struct OwnStore {
    port: u16,
    dir: std::path::PathBuf,
    process: Option<std::process::Child>,
}

impl OwnStore {
    /// `None` when nx-27017 is not installed here (outside CI the test is then skipped).
    fn start(dir: &std::path::Path) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut store = Self {
            port,
            dir: dir.to_path_buf(),
            process: None,
        };
        store.restart().then_some(store)
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    fn restart(&mut self) -> bool {
        let process = std::process::Command::new("python3")
            .args(["-m", "nx_27017.nx_27017", "--data-dir"])
            .arg(&self.dir)
            .args(["--host", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--log-file")
            .arg(self.dir.join("nx.log"))
            .arg("--pid-file")
            .arg(self.dir.join("nx.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut process) = process else {
            return false;
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.process = Some(process);
                return true;
            }
            if matches!(process.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = process.kill();
        false
    }

    /// Kills it outright, as a crashed or partitioned server.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for OwnStore {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A patients call through the gateway with a 20-second deadline.
fn within_deadline<T>(request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(20));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_unavailable_within_the_deadline_and_loses_no_acknowledged_write() {
    if topsmile_kit::testing::mongodb_uri("store_outage").is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let Some(mut store) = OwnStore::start(data.path()) else {
        assert!(
            std::env::var("CI").is_err(),
            "nx-27017 must be installed in CI (scripts/test installs it)"
        );
        eprintln!("skipping: nx-27017 is not installed (pip install nx-27017)");
        return;
    };
    let suite = TestSuite::start_on(StoreChoice::Mongo {
        uri: secrecy::SecretString::from(store.uri()),
        database: "outage".into(),
        list_read_preference: "primary".into(),
    })
    .await;
    let staff = suite.clinic_with_staff("Outage").await;
    let mut patients = pb::patient_service_client::PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    );
    let create = |n: usize| pb::CreatePatientRequest {
        parent: staff.clinic.name.clone(),
        patient: Some(pb::Patient {
            given_name: "Kept".into(),
            family_name: format!("Patient {n}"),
            ..Default::default()
        }),
        request_id: format!("outage-{n}"),
    };
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let created = patients
            .create_patient(within_deadline(create(n)))
            .await
            .unwrap();
        acknowledged.push(created.into_inner().patient.unwrap().name);
    }

    store.kill();
    // Reads and writes answer UNAVAILABLE (worth a retry, with a hint), before their
    // deadline: not DEADLINE_EXCEEDED (a hang), not INTERNAL.
    let write = patients
        .create_patient(within_deadline(create(5)))
        .await
        .unwrap_err();
    let read = patients
        .get_patient(within_deadline(pb::GetPatientRequest {
            name: acknowledged[0].clone(),
        }))
        .await
        .unwrap_err();
    let list = patients
        .list_patients(within_deadline(pb::ListPatientsRequest {
            parent: staff.clinic.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    for (what, status) in [("create", &write), ("get", &read), ("list", &list)] {
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{what}: {status:?}"
        );
        let details = tonic_types::StatusExt::get_error_details(status);
        assert!(details.retry_info().is_some(), "{what}: no retry hint");
    }

    assert!(store.restart(), "nx-27017 came back");
    // The services find the store again by themselves: no restart.
    let mut recovered = None;
    for _ in 0..150 {
        match patients.create_patient(within_deadline(create(5))).await {
            Ok(created) => {
                recovered = created.into_inner().patient;
                break;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let retried = recovered.expect("the services recovered once the store was back");
    // Every acknowledged write is there, and the create that failed during the outage,
    // retried with its request id, made exactly one patient.
    for name in &acknowledged {
        patients
            .get_patient(pb::GetPatientRequest { name: name.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} lost: {e:?}"));
    }
    let listed = patients
        .list_patients(pb::ListPatientsRequest {
            parent: staff.clinic.name.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .patients;
    assert_eq!(listed.len(), 6, "five before the outage, one retried after");
    assert!(listed.iter().any(|p| p.name == retried.name));
    suite.stop().await;
}

/// A replica in a process of its own (`topsmile serve <area>`, as a pod runs it), so
/// the test can kill it outright.
struct ChildReplica {
    area: &'static str,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    env: Vec<(&'static str, String)>,
    process: Option<std::process::Child>,
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl ChildReplica {
    fn new(area: &'static str, env: Vec<(&'static str, String)>) -> Self {
        Self {
            area,
            addr: free_port(),
            metrics: free_port(),
            env,
            process: None,
        }
    }

    /// Starts it (again, on the same address) and waits until it serves.
    async fn start(&mut self) {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_topsmile"));
        command
            .args(["serve", self.area])
            .env_remove("TOPSMILE_TEST_MONGODB_URI")
            .env("TOPSMILE_LISTEN", self.addr.to_string())
            .env("TOPSMILE_METRICS_LISTEN", self.metrics.to_string())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        self.process = Some(command.spawn().expect("topsmile serve starts"));
        for _ in 0..300 {
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect()
                    .await
            {
                let serving = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status);
                if serving.ok()
                    == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the {} replica did not start", self.area);
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Whether it serves a call of `method` within five seconds.
    async fn serves_soon(&self, method: &str) -> bool {
        for _ in 0..100 {
            if self.served(method).await > 0.0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// How many calls of `method` it has served since it started (its own metrics).
    async fn served(&self, method: &str) -> f64 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.metrics).await else {
            return 0.0;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .await;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        let series = format!(
            "topsmile_grpc_requests_total{{component=\"{}\",method=\"{method}\"}} ",
            self.area
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

const CREATE_PATIENT: &str = "/topsmile.patients.v1.PatientService/CreatePatient";

async fn killed_replica(store: StoreChoice) {
    let store_env: Vec<(&'static str, String)> = match &store {
        StoreChoice::Embedded { data_dir } => {
            vec![("TOPSMILE_DATA_DIR", data_dir.display().to_string())]
        }
        StoreChoice::Mongo { uri, database, .. } => vec![
            (
                "TOPSMILE_MONGODB_URI",
                secrecy::ExposeSecret::expose_secret(uri).to_owned(),
            ),
            ("TOPSMILE_MONGODB_DATABASE", database.clone()),
        ],
    };
    let mut child = ChildReplica::new("patients", store_env);
    let suite = TestSuite::with(Setup {
        store: Some(store),
        health_check_ms: 100,
        outside_replicas: [("patients", vec![child.addr])].into(),
        ..Setup::default()
    })
    .await;
    child.env.extend([
        (
            "TOPSMILE_IDENTITY_UPSTREAMS",
            suite.suite.services["identity"].to_string(),
        ),
        ("TOPSMILE_CLINIC_CACHE_SECS", "0".to_owned()),
    ]);
    child.start().await;
    let staff = suite.clinic_with_staff("Killed").await;

    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = steady_load(
        suite.channel().await,
        staff.admin.clone(),
        staff.clinic.name.clone(),
        WORKERS,
        stop.clone(),
        tally.clone(),
    );
    assert!(
        child.serves_soon(CREATE_PATIENT).await,
        "the child replica gets calls"
    );

    child.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_kill = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tally.ok.load(Ordering::Relaxed) > after_kill,
        "calls go on without the dead replica"
    );

    // It comes back on its address: the gateway picks it again.
    child.start().await;
    assert!(
        child.serves_soon(CREATE_PATIENT).await,
        "the gateway sends calls to the replica again once it is back"
    );
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }

    // Only the calls in flight to it failed (each worker has one call at a time), and
    // only with UNAVAILABLE.
    let failures = std::mem::take(&mut *tally.failures.lock().await);
    assert!(
        failures.len() <= WORKERS,
        "{} calls failed: more than were in flight to the killed replica: {:?}",
        failures.len(),
        failures.iter().take(5).map(|(_, s)| s).collect::<Vec<_>>()
    );
    for (_, status) in &failures {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    // The client retries its failed creates with the same request ids: each either was
    // written (the first result comes back) or is written now, never twice; a create
    // that succeeded, retried, returns its first patient.
    let mut patients = pb::patient_service_client::PatientServiceClient::with_interceptor(
        suite.channel().await,
        Bearer(Some(staff.admin.clone())),
    );
    let mut retry = async |request_id: &str| {
        patients
            .create_patient(new_patient(&staff.clinic.name, request_id))
            .await
            .unwrap()
            .into_inner()
            .patient
            .unwrap()
    };
    let mut created: std::collections::BTreeMap<String, String> =
        tally.created.lock().await.iter().cloned().collect();
    for (request_id, _) in &failures {
        if let Some(request_id) = request_id {
            let retried = retry(request_id).await;
            created.insert(request_id.clone(), retried.name);
        }
    }
    if let Some((request_id, name)) = created.iter().next() {
        let again = retry(request_id).await;
        assert_eq!(
            &again.name, name,
            "a retried create returns the first patient"
        );
    }
    // Nothing half-written, nothing twice: the clinic has exactly these patients.
    let mut listed = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = patients
            .list_patients(pb::ListPatientsRequest {
                parent: staff.clinic.name.clone(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.patients.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let expected: std::collections::BTreeSet<String> = created.into_values().collect();
    assert_eq!(listed, expected);
    child.kill();
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_only_its_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    killed_replica(StoreChoice::Embedded {
        data_dir: dir.path().to_path_buf(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_only_its_calls_in_flight_on_mongodb() {
    if let Some(store) = mongo_store("killed_replica_on_mongodb") {
        killed_replica(store).await;
    }
}
