//! `topsmile-bench`: the load generator. Every figure TopSmile quotes comes from here.
//!
//! One run starts the suite in this process (embedded store in a temporary directory)
//! and a bare tonic server beside it (the yardstick every throughput is a share of),
//! signs in as the super admin, creates a clinic, then drives an authenticated
//! `GetClinic` at a fixed number of calls in flight, alternately straight at the
//! identity service and through the gateway, and prints throughput, p50 and p99 for each
//! and the ratios between them; then the same for `GetPatient` after seeding 10,000
//! patients into one clinic; twice GetClinic's saturating load, open loop, at an
//! identity replica in a process of its own (what is shed, what the admitted calls
//! wait); the memory of `topsmile dev` and of each `topsmile serve <service>` in
//! processes of their own (those need the `topsmile` binary next to this one); name
//! searches. Then the costs of authentication: the per-call token
//! check with a warm cache beside one full EdDSA verification, and sign-in latency under
//! 16 concurrent logins beside the time of one password hash. Everything compared is
//! measured in the same run on the same machine, so the ratios hold even where absolute
//! numbers don't.
//!
//! ```text
//! cargo run --release -p topsmile-bench -- --seconds 5 --in-flight 1,64
//! ```

mod appointments;
mod edge;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use secrecy::SecretString;
use tonic::{Request, Status, service::Interceptor, transport::Channel};
use topsmile::{Suite, SuiteOptions};
use topsmile_kit::{
    access::{Guard, KeySource},
    password::Passwords,
    policy::PolicyTable,
    store::StoreChoice,
};
use topsmile_proto::topsmile::{
    identity::v1::{
        Clinic, CreateClinicRequest, CreateUserRequest, GetClinicRequest, LoginRequest, User,
        UserRole, auth_service_client::AuthServiceClient,
        clinic_service_client::ClinicServiceClient, user_service_client::UserServiceClient,
    },
    patients::v1::{
        CreatePatientRequest, GetPatientRequest, ListPatientsRequest, Patient,
        patient_service_client::PatientServiceClient,
    },
};

pub(crate) const ADMIN_EMAIL: &str = "bench@topsmile.local";
pub(crate) const ADMIN_PASSWORD: &str = "bench password, long enough";

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

#[derive(Parser)]
#[command(about = "Drives TopSmile directly and through the gateway, and prints the ratios")]
struct Args {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Calls in flight, comma-separated; each level is measured on both paths.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    in_flight: Vec<usize>,
    /// Rounds per level; paths alternate within a round and the best round counts, so a
    /// passing disturbance on the machine does not decide a ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// HTTP/2 connections the load generator spreads its calls over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Only measure `working_intervals` (no suite is started).
    #[arg(long)]
    schedule_only: bool,
    /// Only the overload figure (an identity replica in its own process at twice its
    /// saturating rate).
    #[arg(long)]
    overload_only: bool,
    /// Only the edge figure: GetClinic by h2load straight at identity, through the
    /// gateway and through HAProxy, in the same rounds.
    #[arg(long)]
    edge_only: bool,
    /// Runs one path of the edge figure alone (direct, gateway or haproxy), for a
    /// profiler attached to this process.
    #[arg(long)]
    edge_profile: Option<String>,
    /// Only the appointments figures: the seed at its original scale, then
    /// FindAvailableSlots, BookAppointment and a 50-way race on top of it.
    #[arg(long)]
    appointments_only: bool,
}

/// One measurement.
#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.schedule_only {
        return schedule();
    }
    let dir = tempfile::tempdir()?;
    let mut options = SuiteOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        StoreChoice::Embedded {
            data_dir: dir.path().to_path_buf(),
        },
        dir.path().to_path_buf(),
    )?;
    options.bootstrap_admin = Some((ADMIN_EMAIL.into(), SecretString::from(ADMIN_PASSWORD)));
    options.edge.sign_in_per_minute = 0;
    let key_file = options.key_file.clone();
    let suite = Suite::start(options).await?;
    let direct = suite.services["identity"];
    let gateway = suite.gateway;

    let token = login(gateway).await?;
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    if args.appointments_only {
        appointments::run(gateway, &bearer, args.seconds).await?;
        suite.stop().await?;
        return Ok(());
    }
    let clinic = create_clinic(&connect(gateway).await?, &bearer, "Bench Clinic").await?;
    let get_clinic = Target::GetClinic(clinic.name.clone());
    if args.edge_only || args.edge_profile.is_some() {
        let only = args.edge_profile.as_deref();
        let (seconds, rounds) = (args.seconds, args.rounds);
        let own = spawn_role("gateway", &suite, dir.path(), &key_file, false, None).await?;
        let own_addr = own.as_ref().map(|c| c.addr);
        let targets = edge::Targets {
            identity: direct,
            gateway,
            own_process_gateway: own_addr,
        };
        edge::run(targets, &token, &clinic.name, seconds, rounds, only).await?;
        drop(own);
        suite.stop().await?;
        return Ok(());
    }
    if args.overload_only {
        let names = seed_patients(gateway, &bearer, &clinic.name, 1_000).await?;
        let get_patient = Target::GetPatient(names[names.len() / 2].clone());
        overload_on_its_own(&args, &suite, dir.path(), &key_file, &bearer, &get_patient).await?;
        suite.stop().await?;
        return Ok(());
    }

    // The yardstick (grpc.health Check on a bare tonic server), measured in the same
    // rounds as each call: every throughput is also given as a share of it.
    let echo = echo_server().await?;
    let clinic_figures = compare(
        &args,
        &bearer,
        echo,
        (direct, "identity"),
        gateway,
        &get_clinic,
    )
    .await?;

    println!();
    let (seconds, rounds) = (args.seconds, args.rounds);
    let own = spawn_role("gateway", &suite, dir.path(), &key_file, false, None).await?;
    let own_addr = own.as_ref().map(|c| c.addr);
    let targets = edge::Targets {
        identity: direct,
        gateway,
        own_process_gateway: own_addr,
    };
    edge::run(targets, &token, &clinic.name, seconds, rounds, None).await?;
    drop(own);
    println!();

    // Patients: 10,000 in one clinic, then GetPatient both ways and name searches.
    let patients = suite.services["patients"];
    let names = seed_patients(gateway, &bearer, &clinic.name, 10_000).await?;
    println!();
    let get_patient = Target::GetPatient(names[names.len() / 2].clone());
    let patient_figures = compare(
        &args,
        &bearer,
        echo,
        (patients, "patients"),
        gateway,
        &get_patient,
    )
    .await?;
    // Twice the load GetPatient saturates at, arriving whatever the answers, at a
    // patients replica in a process of its own: its shedding, not this process's
    // scheduler, decides what the admitted calls wait. (GetPatient, with its audit
    // write, is the call the generator can offer twice the server's rate of.)
    let (overload, served_p99) =
        overload_on_its_own(&args, &suite, dir.path(), &key_file, &bearer, &get_patient).await?;
    println!();
    let binaries = idle_binaries(&suite).await?;
    let (idle_suite, loaded_suite) = match all_in_one_memory(&args).await {
        Ok(figures) => figures,
        Err(e) => {
            println!("(the all-in-one suite's memory: skipped, {e})");
            (None, None)
        }
    };
    summary(&Measured {
        clinic: &clinic_figures,
        patient: &patient_figures,
        overload: &overload,
        served_p99,
        idle_suite,
        loaded_suite,
        binaries: &binaries,
    });
    println!();
    name_search(patients, &bearer, &clinic.name).await?;
    println!();
    token_check(&key_file, &token).await?;
    println!();
    sign_in(&suite, gateway, &bearer, &clinic.name).await?;
    suite.stop().await?;
    Ok(())
}

/// Every figure the resilience-and-speed issue asks for, as a ratio to the bare
/// server where it is a throughput, with its target beside it.
/// Everything one run measured that has a target.
struct Measured<'a> {
    clinic: &'a [Compared],
    patient: &'a [Compared],
    overload: &'a Overload,
    served_p99: Option<f64>,
    idle_suite: Option<f64>,
    loaded_suite: Option<f64>,
    binaries: &'a [(&'static str, Option<f64>)],
}

fn summary(m: &Measured<'_>) {
    let Measured {
        clinic,
        patient,
        overload,
        served_p99,
        idle_suite,
        loaded_suite,
        binaries,
    } = *m;
    let at = |figures: &[Compared], n: usize| figures.iter().find(|c| c.in_flight == n).copied();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "{:<52} {:>10} {:>10} {:>7}",
        "figure", "measured", "target", ""
    );
    if let Some(Compared {
        echo,
        direct: d,
        gateway: g,
        ..
    }) = at(clinic, 64)
    {
        let r = d.rps / echo.rps;
        println!(
            "{:<52} {:>10.2} {:>10} {:>7}",
            "GetClinic direct ÷ echo, 64 in flight",
            r,
            ">= 0.50",
            verdict(r >= 0.50)
        );
        let r = g.rps / d.rps;
        println!(
            "{:<52} {:>10.2} {:>10} {:>7}",
            "GetClinic gateway ÷ direct, 64 in flight",
            r,
            ">= 0.70",
            verdict(r >= 0.70)
        );
    }
    if let Some(Compared {
        direct: d,
        gateway: g,
        ..
    }) = at(clinic, 1)
    {
        let added = g.p50.as_micros() as i128 - d.p50.as_micros() as i128;
        println!(
            "{:<52} {:>9}µs {:>10} {:>7}",
            "GetClinic gateway added p50, 1 in flight",
            format!("{added:+}"),
            "<= 80µs",
            verdict(added <= 80)
        );
    }
    if let Some(Compared {
        echo, direct: d, ..
    }) = at(patient, 64)
    {
        let r = d.rps / echo.rps;
        println!(
            "{:<52} {:>10.2} {:>10} {:>7}",
            "GetPatient (with its audit write) direct ÷ echo, 64",
            r,
            ">= 0.35",
            verdict(r >= 0.35)
        );
    }
    let p99 = overload.admitted_p99.as_secs_f64() * 1e3;
    // Met only if the server really was overloaded (it shed calls) and nothing hung.
    let overloaded = overload.shed > 0 && overload.hung == 0;
    let overload_verdict = |ok: bool| {
        if overload.shed == 0 {
            "NOT OVERLOADED"
        } else {
            verdict(ok && overloaded)
        }
    };
    println!(
        "{:<52} {:>8.1}ms {:>10} {:>7}",
        "overload (2× saturating): admitted p99, at the client",
        p99,
        "< 100ms",
        overload_verdict(p99 < 100.0)
    );
    if let Some(served) = served_p99 {
        let served = served * 1e3;
        println!(
            "{:<52} {:>7.1}ms {:>10} {:>7}",
            "overload (2× saturating): admitted p99, at the server",
            served,
            "< 100ms",
            overload_verdict(served < 100.0)
        );
    }
    if let Some(idle) = idle_suite {
        println!(
            "{:<52} {:>8.0}MB {:>10}",
            "topsmile dev (all-in-one), idle", idle, ""
        );
    }
    if let Some(loaded) = loaded_suite {
        println!(
            "{:<52} {:>8.0}MB {:>10} {:>7}",
            "topsmile dev (all-in-one), peak under load",
            loaded,
            "<= 150MB",
            verdict(loaded <= 150.0)
        );
    }
    for (role, mib) in binaries {
        match mib {
            Some(mib) => println!(
                "{:<52} {:>8.0}MB {:>10} {:>7}",
                format!("topsmile serve {role}, idle"),
                mib,
                "<= 30MB",
                verdict(*mib <= 30.0)
            ),
            None => println!(
                "{:<52} {:>10}",
                format!("topsmile serve {role}, idle"),
                "did not start"
            ),
        }
    }
}

/// A new clinic in São Paulo, created by the bench's super admin.
pub(crate) async fn create_clinic(
    channel: &Channel,
    bearer: &Bearer,
    display_name: &str,
) -> anyhow::Result<Clinic> {
    ClinicServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .create_clinic(CreateClinicRequest {
            clinic: Some(Clinic {
                display_name: display_name.into(),
                time_zone: "America/Sao_Paulo".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .clinic
        .context("create answered no clinic")
}

/// What a measurement calls.
#[derive(Clone)]
enum Target {
    GetClinic(String),
    GetPatient(String),
    /// A bare tonic server's unary call (grpc.health Check): the yardstick.
    Echo,
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Self::GetClinic(_) => "GetClinic",
            Self::GetPatient(_) => "GetPatient",
            Self::Echo => "echo",
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Self::GetClinic(_) => "/topsmile.identity.v1.ClinicService/GetClinic",
            Self::GetPatient(_) => "/topsmile.patients.v1.PatientService/GetPatient",
            Self::Echo => "/grpc.health.v1.Health/Check",
        }
    }

    /// The service that answers it.
    fn area(&self) -> &'static str {
        match self {
            Self::GetClinic(_) => "identity",
            Self::GetPatient(_) => "patients",
            Self::Echo => "echo",
        }
    }

    async fn call(&self, channel: &Channel, bearer: &Bearer) -> Result<(), Status> {
        match self {
            Self::GetClinic(name) => {
                ClinicServiceClient::with_interceptor(channel.clone(), bearer.clone())
                    .get_clinic(GetClinicRequest { name: name.clone() })
                    .await?;
            }
            Self::GetPatient(name) => {
                PatientServiceClient::with_interceptor(channel.clone(), bearer.clone())
                    .get_patient(GetPatientRequest { name: name.clone() })
                    .await?;
            }
            Self::Echo => {
                tonic_health::pb::health_client::HealthClient::with_interceptor(
                    channel.clone(),
                    bearer.clone(),
                )
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            }
        }
        Ok(())
    }
}

/// One comparison's figures at one level of calls in flight: the bare server's, the
/// call's straight at its service, and through the gateway, measured in the same
/// alternating rounds.
#[derive(Clone, Copy)]
struct Compared {
    in_flight: usize,
    echo: Figures,
    direct: Figures,
    gateway: Figures,
}

/// Drives the bare server (`echo`), `target` straight at `direct`, and `target`
/// through `gateway`, alternating them within every round at each level of calls in
/// flight, so the three share the machine's passing state and a ratio between them
/// is one moment's; the best round of each counts. Prints them and the ratios.
async fn compare(
    args: &Args,
    bearer: &Bearer,
    echo: SocketAddr,
    (direct, service): (SocketAddr, &str),
    gateway: SocketAddr,
    target: &Target,
) -> anyhow::Result<Vec<Compared>> {
    println!(
        "Authenticated {}, embedded store, {}s per measurement, best of {} rounds, {} client connections",
        target.label(),
        args.seconds,
        args.rounds,
        args.connections
    );
    println!(
        "{:<28} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "path", "in flight", "rps", "p50 µs", "p99 µs", "errors"
    );
    let paths = [
        ("bare tonic server (echo)".to_owned(), echo, &Target::Echo),
        (format!("direct to {service}"), direct, target),
        ("through the gateway".to_owned(), gateway, target),
    ];
    let mut results = Vec::new();
    for &in_flight in &args.in_flight {
        let drive_for = |addr, target, duration| {
            drive(addr, bearer, target, in_flight, args.connections, duration)
        };
        // Warm every path (connections, caches) before measuring.
        for (_, addr, target) in &paths {
            drive_for(*addr, target, Duration::from_millis(500)).await?;
        }
        let mut best: [Option<Figures>; 3] = [None; 3];
        for _ in 0..args.rounds {
            for (i, (_, addr, target)) in paths.iter().enumerate() {
                let f = drive_for(*addr, target, Duration::from_secs(args.seconds)).await?;
                if best[i].is_none_or(|b| f.rps > b.rps) {
                    best[i] = Some(f);
                }
            }
        }
        let [Some(echo), Some(direct), Some(gateway)] = best else {
            continue;
        };
        for ((label, _, _), f) in paths.iter().zip([echo, direct, gateway]) {
            println!(
                "{label:<28} {in_flight:>9} {:>10.0} {:>9} {:>9} {:>7}",
                f.rps,
                f.p50.as_micros(),
                f.p99.as_micros(),
                f.errors
            );
        }
        results.push(Compared {
            in_flight,
            echo,
            direct,
            gateway,
        });
    }
    for c in &results {
        let added = c.gateway.p50.as_micros() as i128 - c.direct.p50.as_micros() as i128;
        println!(
            "{:>3} in flight: direct ÷ echo = {:.2}, gateway ÷ direct = {:.2} (rps), added p50 = {added:+} µs",
            c.in_flight,
            c.direct.rps / c.echo.rps,
            c.gateway.rps / c.direct.rps
        );
    }
    Ok(results)
}

/// A bare tonic server on a free loopback port: health only, no layers. What a unary
/// call costs with nothing of TopSmile in it.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    Ok(addr)
}

/// What an open-loop overload run saw.
struct Overload {
    /// The first few answers other than OK and RESOURCE_EXHAUSTED.
    error_samples: Vec<String>,
    offered: f64,
    admitted: f64,
    shed: usize,
    other_errors: usize,
    hung: usize,
    admitted_p99: Duration,
}

/// Calls `target` at `addr` at a fixed arrival rate (`rate` per second, whatever the
/// answers) for `duration`: what a server does when more comes than it can take.
///
/// It sends through hyper's HTTP/2 client with the request encoded once (no tonic
/// channel, whose buffer task would cost a hop per call), and with wide flow-control
/// windows, so the generator keeps up with twice what the server takes and a server's
/// answers are never held back by a slow reader.
async fn open_loop(
    addr: SocketAddr,
    bearer: &Bearer,
    target: &Target,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Overload> {
    let senders = RawCall::connect_all(addr, connections).await?;
    let call = std::sync::Arc::new(RawCall::new(addr, bearer, target)?);
    // Arrivals in ticks of 1 ms, each tick sending its share.
    let per_tick = rate / 1000.0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut owed = 0.0;
    let mut calls = Vec::new();
    let mut sent = 0usize;
    while started.elapsed() < duration {
        ticker.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let sender = senders[sent % senders.len()].clone();
            sent += 1;
            let call = call.clone();
            calls.push(tokio::spawn(async move {
                let t = Instant::now();
                let outcome =
                    tokio::time::timeout(Duration::from_secs(10), call.send(sender)).await;
                (t.elapsed(), outcome)
            }));
        }
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    let (mut latencies, mut shed, mut other_errors, mut hung) = (Vec::new(), 0, 0, 0);
    let mut error_samples: Vec<String> = Vec::new();
    for call in calls {
        match call.await? {
            (elapsed, Ok(Ok(tonic::Code::Ok))) => latencies.push(elapsed),
            (_, Ok(Ok(tonic::Code::ResourceExhausted))) => shed += 1,
            (_, Ok(outcome)) => {
                other_errors += 1;
                let sample = match outcome {
                    Ok(code) => format!("{code:?}"),
                    Err(e) => format!("transport: {e}"),
                };
                if error_samples.len() < 3 && !error_samples.contains(&sample) {
                    error_samples.push(sample);
                }
            }
            (_, Err(_)) => hung += 1,
        }
    }
    latencies.sort_unstable();
    Ok(Overload {
        error_samples,
        offered,
        admitted: latencies.len() as f64 / duration.as_secs_f64(),
        shed,
        other_errors,
        hung,
        admitted_p99: percentile(&latencies, 0.99),
    })
}

/// Calls answered per second with 64 calls in flight, closed loop, through `call`.
async fn saturate(
    addr: SocketAddr,
    call: &std::sync::Arc<RawCall>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let senders = RawCall::connect_all(addr, connections).await?;
    let start = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|i| {
            let (call, sender) = (call.clone(), senders[i % senders.len()].clone());
            tokio::spawn(async move {
                let mut answered = 0usize;
                while start.elapsed() < duration {
                    if matches!(call.send(sender.clone()).await, Ok(tonic::Code::Ok)) {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for worker in workers {
        answered += worker.await?;
    }
    Ok(answered as f64 / start.elapsed().as_secs_f64())
}

type RawSender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// One unary call, encoded once: its path, headers and length-prefixed message.
struct RawCall {
    uri: http::Uri,
    headers: http::HeaderMap,
    message: bytes::Bytes,
}

impl RawCall {
    fn new(addr: SocketAddr, bearer: &Bearer, target: &Target) -> anyhow::Result<Self> {
        use prost::Message;
        let path = target.path();
        let encoded = match target {
            Target::GetClinic(name) => GetClinicRequest { name: name.clone() }.encode_to_vec(),
            Target::GetPatient(name) => GetPatientRequest { name: name.clone() }.encode_to_vec(),
            Target::Echo => tonic_health::pb::HealthCheckRequest::default().encode_to_vec(),
        };
        let mut message = Vec::with_capacity(5 + encoded.len());
        message.push(0);
        message.extend_from_slice(&u32::try_from(encoded.len())?.to_be_bytes());
        message.extend_from_slice(&encoded);
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/grpc".parse()?);
        headers.insert("te", "trailers".parse()?);
        headers.insert("authorization", bearer.0.to_str()?.parse()?);
        Ok(Self {
            uri: format!("http://{addr}{path}").parse()?,
            headers,
            message: message.into(),
        })
    }

    /// `connections` connections to `addr`, for a generator to spread its calls over.
    async fn connect_all(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<RawSender>> {
        let mut senders = Vec::new();
        for _ in 0..connections.max(1) {
            senders.push(Self::connect(addr).await?);
        }
        Ok(senders)
    }

    async fn connect(addr: SocketAddr) -> anyhow::Result<RawSender> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(64 << 20)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// The call's gRPC code (from the trailers, or a trailers-only answer's headers).
    async fn send(&self, mut sender: RawSender) -> anyhow::Result<tonic::Code> {
        use http_body_util::BodyExt;
        let mut request = http::Request::new(http_body_util::Full::new(self.message.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = sender.send_request(request).await?;
        let code = |headers: &http::HeaderMap| {
            headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from)
        };
        if let Some(code) = code(response.headers()) {
            return Ok(code);
        }
        let body = response.into_body().collect().await?;
        Ok(body
            .trailers()
            .and_then(code)
            .unwrap_or(tonic::Code::Unknown))
    }
}

/// The `q` quantile of the calls `component` served of `method` between two scrapes of
/// a server's metrics, as the upper bound of the histogram bucket it falls in (seconds).
fn histogram_quantile(
    q: f64,
    before: &str,
    after: &str,
    component: &str,
    method: &str,
) -> Option<f64> {
    // `..._bucket{le="0.0001",component="identity",method="/..."} 12`
    let labels = format!("component=\"{component}\",method=\"{method}\"}} ");
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("topsmile_grpc_duration_seconds_bucket{le=\""))
            .filter_map(|rest| {
                let (le, rest) = rest.split_once("\",")?;
                let count = rest.strip_prefix(labels.as_str())?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    };
    let (before, after) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(le, _)| *le)
}

/// `connections` HTTP/2 connections to `addr`, for a load generator to spread calls over.
async fn channels(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}

/// Resident memory of this process (`None`) or of `pid`, in MiB (Linux).
fn resident_mib(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| {
        format!("/proc/{p}/status")
    });
    let status = std::fs::read_to_string(path).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The all-in-one suite (`topsmile dev`, next to this binary) in a process of its own:
/// its resident memory idle, and at its peak while GetPatient runs at 64 calls in flight
/// through its gateway. In MiB.
async fn all_in_one_memory(args: &Args) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let topsmile = std::env::current_exe()?.with_file_name("topsmile");
    anyhow::ensure!(topsmile.exists(), "{} is not built", topsmile.display());
    let dir = tempfile::tempdir()?;
    let gateway = free_port()?;
    let mut child = std::process::Command::new(&topsmile)
        .args(["dev", "--listen", &gateway.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("TOPSMILE_SIGN_IN_PER_MINUTE", "0")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let measured = async {
        let mut token = None;
        for _ in 0..100 {
            if let Ok(t) = login(gateway).await {
                token = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let token = token.context("topsmile dev did not start")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = resident_mib(Some(pid));
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        let clinic = create_clinic(&connect(gateway).await?, &bearer, "Memory Clinic").await?;
        let names = seed_patients(gateway, &bearer, &clinic.name, 1_000).await?;
        let target = Target::GetPatient(names[names.len() / 2].clone());
        let peak_during = async {
            let mut peak: f64 = 0.0;
            let load = drive(
                gateway,
                &bearer,
                &target,
                64,
                args.connections,
                Duration::from_secs(args.seconds),
            );
            tokio::pin!(load);
            loop {
                tokio::select! {
                    done = &mut load => { done?; break; }
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if let Some(mib) = resident_mib(Some(pid)) {
                            peak = peak.max(mib);
                        }
                    }
                }
            }
            anyhow::Ok(peak)
        };
        let peak = peak_during.await?;
        anyhow::Ok((idle, Some(peak)))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// One role's binary (`topsmile serve <role>`, next to this one) in a process of its
/// own, told where the suite's replicas are; killed when dropped.
struct Child {
    process: std::process::Child,
    addr: SocketAddr,
    /// Its admin port, when asked for.
    metrics: Option<SocketAddr>,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `topsmile serve <role>` on `data_dir` and `key_file` (the suite's own, to
/// serve its data and accept its tokens, or fresh ones), on the given CPUs only
/// (`taskset -c`) when they are given, and waits until it is SERVING.
async fn spawn_role(
    role: &str,
    suite: &Suite,
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
    with_metrics: bool,
    cpus: Option<&str>,
) -> anyhow::Result<Option<Child>> {
    let topsmile = std::env::current_exe()?.with_file_name("topsmile");
    if !topsmile.exists() {
        println!(
            "(separate processes: skipped, {} is not built; cargo build --release -p topsmile)",
            topsmile.display()
        );
        return Ok(None);
    }
    let addr = free_port()?;
    let metrics = with_metrics.then(free_port).transpose()?;
    let mut command = match cpus {
        Some(cpus) => {
            let mut pinned = std::process::Command::new("taskset");
            pinned.args(["-c", cpus]).arg(&topsmile);
            pinned
        }
        None => std::process::Command::new(&topsmile),
    };
    command
        .args(["serve", role])
        .env("TOPSMILE_LISTEN", addr.to_string())
        .env("TOPSMILE_DATA_DIR", data_dir)
        .env("TOPSMILE_KEY_FILE", key_file)
        .env(
            "TOPSMILE_SERVICE_SECRET",
            // The suite's own: a gateway mints its token with it at identity.
            suite
                .service_secret()
                .map(|s| secrecy::ExposeSecret::expose_secret(&s).to_owned())
                .unwrap_or_default(),
        )
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    for area in ["identity", "patients", "providers", "appointments"] {
        command.env(
            format!("TOPSMILE_{}_UPSTREAMS", area.to_uppercase()),
            suite.services[area].to_string(),
        );
    }
    if let Some(metrics) = metrics {
        command.env("TOPSMILE_METRICS_LISTEN", metrics.to_string());
    }
    let child = Child {
        process: command.spawn()?,
        addr,
        metrics,
    };
    for _ in 0..100 {
        if let Ok(channel) = connect(addr).await {
            let check = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if check.is_ok() {
                return Ok(Some(child));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("topsmile serve {role} did not start")
}

/// Each service binary on its own, idle after start: its resident memory in MiB.
async fn idle_binaries(suite: &Suite) -> anyhow::Result<Vec<(&'static str, Option<f64>)>> {
    let mut figures = Vec::new();
    for role in [
        "identity",
        "patients",
        "providers",
        "appointments",
        "gateway",
    ] {
        let dir = tempfile::tempdir()?;
        let child = match spawn_role(
            role,
            suite,
            dir.path(),
            &dir.path().join("keys.json"),
            false,
            None,
        )
        .await
        {
            Ok(Some(child)) => Some(child),
            Ok(None) => return Ok(Vec::new()),
            Err(_) => None,
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        figures.push((role, child.and_then(|c| resident_mib(Some(c.process.id())))));
    }
    Ok(figures)
}

/// The overload figure: a replica of `target`'s service in its own process on the
/// suite's store and keys; its saturating rate at 64 in flight, then twice that rate, open loop. The
/// admitted calls' p99 as the client saw it and as the replica's latency histogram
/// (arrival to last frame) saw it.
async fn overload_on_its_own(
    args: &Args,
    suite: &Suite,
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
    bearer: &Bearer,
    target: &Target,
) -> anyhow::Result<(Overload, Option<f64>)> {
    // The replica on one core, this process (the load generator) on the others: so the
    // figure is the replica's shedding, not two processes' threads fighting over cores.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let split = cores >= 2 && taskset(std::process::id(), &format!("1-{}", cores - 1));
    let spawned = spawn_role(
        target.area(),
        suite,
        data_dir,
        key_file,
        true,
        split.then_some("0"),
    )
    .await;
    let measured = async {
        let Some(replica) = spawned? else {
            anyhow::bail!("the overload figure needs the topsmile binary");
        };
        overload_at(args, &replica, bearer, target, split).await
    }
    .await;
    if split {
        taskset(std::process::id(), &format!("0-{}", cores - 1));
    }
    measured
}

/// Pins every thread of `pid` to `cpus`; whether it could.
fn taskset(pid: u32, cpus: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn overload_at(
    args: &Args,
    replica: &Child,
    bearer: &Bearer,
    target: &Target,
    split: bool,
) -> anyhow::Result<(Overload, Option<f64>)> {
    let seconds = Duration::from_secs(args.seconds);
    // Its saturating rate, with the same lean client the overload is sent with (a tonic
    // channel saturates first on this machine).
    let call = std::sync::Arc::new(RawCall::new(replica.addr, bearer, target)?);
    saturate(
        replica.addr,
        &call,
        args.connections,
        Duration::from_millis(500),
    )
    .await?;
    let saturated = saturate(replica.addr, &call, args.connections, seconds).await?;
    let scrape = || async {
        match replica.metrics {
            Some(addr) => scrape_metrics(addr).await,
            None => Ok(String::new()),
        }
    };
    let before = scrape().await?;
    let overload = open_loop(
        replica.addr,
        bearer,
        target,
        2.0 * saturated,
        args.connections,
        seconds,
    )
    .await?;
    let after = scrape().await?;
    let served = |q| histogram_quantile(q, &before, &after, target.area(), target.path());
    let served_p99 = served(0.99);
    println!(
        "Overload, {} at a {} replica in its own process{} (saturates at {:.0}/s, 64 in flight) at twice that: offered {:.0}/s, admitted {:.0}/s, shed {} (RESOURCE_EXHAUSTED), other errors {}, hung {}, admitted p99 {:.1} ms",
        target.label(),
        target.area(),
        if split {
            " on core 0, the load from the others"
        } else {
            ""
        },
        saturated,
        overload.offered,
        overload.admitted,
        overload.shed,
        overload.other_errors,
        overload.hung,
        overload.admitted_p99.as_secs_f64() * 1e3
    );
    for sample in &overload.error_samples {
        println!("  e.g. {sample} (the load generator's own client, on the same 2 cores)");
    }
    if let Some(p99) = served_p99 {
        println!(
            "  as the replica saw it (its latency histogram, arrival to last frame): admitted p50 <= {:.1} ms, p90 <= {:.1} ms, p99 <= {:.1} ms",
            served(0.5).unwrap_or_default() * 1e3,
            served(0.9).unwrap_or_default() * 1e3,
            p99 * 1e3
        );
    }
    Ok((overload, served_p99))
}

/// The Prometheus text a server's admin port serves.
async fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

const GIVEN: &[&str] = &[
    "José", "Maria", "Ana", "João", "Luíza", "Pedro", "Beatriz", "Lucas", "Mariana", "Rafael",
    "Camila", "Gustavo", "Júlia", "Felipe", "Larissa", "Thiago", "Fernanda", "Bruno", "Letícia",
    "André",
];
const FAMILY: &[&str] = &[
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Costa",
    "Ribeiro",
    "Martins",
    "Carvalho",
    "Almeida",
    "Lopes",
    "Soares",
    "Fernandes",
    "Vieira",
    "Barbosa",
    "Álvarez",
    "Conceição",
    "Araújo",
    "Cavalcanti",
    "Nascimento",
];

/// Creates `count` patients in `clinic` through the gateway; their names.
async fn seed_patients(
    gateway: SocketAddr,
    bearer: &Bearer,
    clinic: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let channel = connect(gateway).await?;
    let started = Instant::now();
    let mut names = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
        let batch = chunk.iter().map(|&i| {
            let mut client =
                PatientServiceClient::with_interceptor(channel.clone(), bearer.clone());
            let patient = Patient {
                given_name: GIVEN[i % GIVEN.len()].into(),
                family_name: format!(
                    "{} {}",
                    FAMILY[(i / GIVEN.len()) % FAMILY.len()],
                    FAMILY[i % FAMILY.len()]
                ),
                phone: format!("+55 11 9{:04}-{:04}", i / 10_000, i % 10_000),
                ..Default::default()
            };
            let parent = clinic.to_owned();
            async move {
                client
                    .create_patient(CreatePatientRequest {
                        parent,
                        patient: Some(patient),
                        request_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().patient.map(|p| p.name).unwrap_or_default())
            }
        });
        for created in futures::future::join_all(batch).await {
            names.push(created?);
        }
    }
    println!(
        "Seeded {count} patients in one clinic in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(names)
}

/// ListPatients by name prefix over the seeded clinic, one call at a time, straight at
/// the patients service (embedded store).
async fn name_search(patients: SocketAddr, bearer: &Bearer, clinic: &str) -> anyhow::Result<()> {
    let channel = connect(patients).await?;
    let mut client = PatientServiceClient::with_interceptor(channel, bearer.clone());
    let queries = [
        "jose",
        "mar",
        "ana",
        "silva",
        "alv",
        "conceicao",
        "lu",
        "bea",
        "cav",
        "ferr",
    ];
    let mut latencies = Vec::new();
    let mut found = 0usize;
    for round in 0..50 {
        for q in queries {
            let t = Instant::now();
            let page = client
                .list_patients(ListPatientsRequest {
                    parent: clinic.to_owned(),
                    name_query: q.to_owned(),
                    page_size: 50,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let elapsed = t.elapsed();
            if round > 0 {
                latencies.push(elapsed);
                found += page.patients.len();
            }
        }
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[((latencies.len() as f64 * 0.99) as usize).min(latencies.len() - 1)];
    println!(
        "ListPatients name search over 10,000 patients (page of 50, {} searches, {:.0} hits each): p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        found as f64 / latencies.len() as f64,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn login(gateway: SocketAddr) -> anyhow::Result<String> {
    login_as(gateway, ADMIN_EMAIL.into()).await
}

async fn login_as(gateway: SocketAddr, email: String) -> anyhow::Result<String> {
    Ok(AuthServiceClient::new(connect(gateway).await?)
        .login(LoginRequest {
            email,
            password: ADMIN_PASSWORD.into(),
            device_token: String::new(),
        })
        .await?
        .into_inner()
        .access_token)
}

/// The guard's per-call check with a warm cache (policy lookup, header, cached token)
/// beside one full signature verification.
/// `working_intervals` over a week and over 31 days, for a realistic schedule: two
/// intervals on each weekday, a Saturday morning, a dozen time-off entries and a dozen
/// date overrides, in a zone with daylight saving time. Reports p50 and p99 of many
/// runs.
fn schedule() -> anyhow::Result<()> {
    use jiff::{SignedDuration, Timestamp, tz::TimeZone};
    use topsmile_providers::domain::{Interval, Schedule, Span, working_intervals};
    let interval = |s: u16, e: u16| Interval {
        start_minute: s * 60,
        end_minute: e * 60,
    };
    let mut schedule = Schedule::default();
    for day in schedule.weekly.iter_mut().take(5) {
        *day = vec![interval(8, 12), interval(13, 18)];
    }
    schedule.weekly[5] = vec![interval(8, 12)];
    let start: Timestamp = "2026-03-02T00:00Z".parse()?;
    for k in 0..12i64 {
        let at = start + SignedDuration::from_hours(24 * 3 * k + 9);
        schedule
            .time_off
            .push(Span::new(at, at + SignedDuration::from_hours(3)));
        let date = (start + SignedDuration::from_hours(24 * (2 * k + 1)))
            .to_zoned(TimeZone::UTC)
            .date();
        schedule.overrides.insert(date, vec![interval(10, 14)]);
    }
    let zone = TimeZone::get("Europe/Berlin")?;
    println!("working_intervals (Europe/Berlin, across the March DST change)");
    for (label, days) in [("one week", 7i64), ("31 days", 31)] {
        let to = start + SignedDuration::from_hours(24 * days);
        let mut times = Vec::with_capacity(20_000);
        let mut spans = 0;
        for _ in 0..20_000 {
            let t = Instant::now();
            spans = std::hint::black_box(working_intervals(&schedule, &zone, start, to)).len();
            times.push(t.elapsed());
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "  {label:<9} {spans:>3} spans   p50 {:>7.2} µs   p99 {:>7.2} µs",
            at(0.5),
            at(0.99)
        );
    }
    Ok(())
}

async fn token_check(key_file: &std::path::Path, token: &str) -> anyhow::Result<()> {
    let guard = Guard::new(
        PolicyTable::builtin()?,
        KeySource::File(key_file.to_path_buf()),
    );
    guard.prefetch().await?;
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse()?);
    let path = "/topsmile.identity.v1.ClinicService/GetClinic";
    guard.authorize(path, &headers).await?;
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(guard.authorize(path, &headers).await?);
    }
    let cached = t.elapsed() / n;
    let m = 5_000u32;
    let t = Instant::now();
    for _ in 0..m {
        std::hint::black_box(guard.verify_uncached(token)?);
    }
    let full = t.elapsed() / m;
    println!("Per-call token check");
    println!(
        "  warm cache (policy + token)      {:>8.2} µs",
        cached.as_secs_f64() * 1e6
    );
    println!(
        "  full EdDSA verification          {:>8.2} µs",
        full.as_secs_f64() * 1e6
    );
    println!(
        "  full ÷ cached = {:.0}×",
        full.as_secs_f64() / cached.as_secs_f64().max(1e-12)
    );
    Ok(())
}

/// Sign-in latency with 16 logins in flight (16 accounts, each signing in again as soon
/// as it is through), beside one password hash on an idle machine.
async fn sign_in(
    suite: &Suite,
    gateway: SocketAddr,
    bearer: &Bearer,
    clinic: &str,
) -> anyhow::Result<()> {
    let in_flight = 16;
    let mut users = UserServiceClient::with_interceptor(connect(gateway).await?, bearer.clone());
    let mut emails = Vec::new();
    for i in 0..in_flight {
        let email = format!("staff{i}@bench.example");
        users
            .create_user(CreateUserRequest {
                parent: clinic.to_owned(),
                user: Some(User {
                    email: email.clone(),
                    display_name: format!("Staff {i}"),
                    role: UserRole::Staff as i32,
                    ..Default::default()
                }),
                password: ADMIN_PASSWORD.into(),
                request_id: String::new(),
            })
            .await?;
        emails.push(email);
    }

    let passwords = Passwords::new(1)?;
    let secret = SecretString::from(ADMIN_PASSWORD);
    let phc = passwords.hash(&secret).await?;
    let mut single = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        passwords.verify(&secret, Some(&phc)).await?;
        single.push(t.elapsed());
    }
    single.sort_unstable();
    let one_hash = single[single.len() / 2];

    let rounds = 4;
    let mut latencies = Vec::new();
    let before = suite.accounts.passwords.verifications();
    for _ in 0..rounds {
        let logins: Vec<_> = emails
            .iter()
            .cloned()
            .map(|email| {
                tokio::spawn(async move {
                    let t = Instant::now();
                    login_as(gateway, email).await.map(|_| t.elapsed())
                })
            })
            .collect();
        for l in logins {
            latencies.push(l.await??);
        }
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[((latencies.len() as f64 * 0.99) as usize).min(latencies.len() - 1)];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Sign-in ({in_flight} concurrent logins × {rounds} rounds, {cores} cores)");
    println!(
        "  one argon2id hash (idle)         {:>8.1} ms",
        one_hash.as_secs_f64() * 1e3
    );
    println!(
        "  login p50                        {:>8.1} ms",
        p50.as_secs_f64() * 1e3
    );
    println!(
        "  login p99                        {:>8.1} ms",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "  login p99 ÷ one hash = {:.1} (the floor with {in_flight} hashes on {cores} cores is {:.1})",
        p99.as_secs_f64() / one_hash.as_secs_f64(),
        in_flight as f64 / cores as f64
    );
    println!(
        "  password checks run: {}",
        suite.accounts.passwords.verifications() - before
    );
    Ok(())
}

/// The `p` quantile of sorted `latencies`.
fn percentile(latencies: &[Duration], p: f64) -> Duration {
    latencies
        .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Midnight in São Paulo (03:00 UTC) of the Monday the seed starts its appointments on.
fn next_monday_utc() -> jiff::Timestamp {
    let monday = topsmile::seed::next_monday(topsmile_kit::time::now());
    monday
        .at(3, 0, 0, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .unwrap_or_else(|_| topsmile_kit::time::now())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Keeps `in_flight` GetClinic calls going at `addr` for `duration`.
async fn drive(
    addr: SocketAddr,
    bearer: &Bearer,
    target: &Target,
    in_flight: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let channels = channels(addr, connections).await?;
    let target = std::sync::Arc::new(target.clone());
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..in_flight)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let target = target.clone();
            let bearer = bearer.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(64 * 1024);
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match target.call(&channel, &bearer).await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Figures {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    })
}
