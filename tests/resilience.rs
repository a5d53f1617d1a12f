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

/// What a load run saw: calls answered, and every failure.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Reads and writes patients through the gateway from `workers` clients until `stop`.
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
                    let created = client
                        .create_patient(pb::CreatePatientRequest {
                            parent: clinic.clone(),
                            patient: Some(pb::Patient {
                                given_name: format!("Load {worker}"),
                                family_name: format!("Patient {n}"),
                                ..Default::default()
                            }),
                            request_id: format!("load-{worker}-{n}"),
                        })
                        .await;
                    let name = match created {
                        Ok(answer) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            answer
                                .into_inner()
                                .patient
                                .map(|p| p.name)
                                .unwrap_or_default()
                        }
                        Err(status) => {
                            tally
                                .failures
                                .lock()
                                .await
                                .push(format!("create: {status:?}"));
                            continue;
                        }
                    };
                    match client.get_patient(pb::GetPatientRequest { name }).await {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => tally.failures.lock().await.push(format!("get: {status:?}")),
                    }
                }
            })
        })
        .collect()
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
        &failures[..failures.len().min(5)]
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
