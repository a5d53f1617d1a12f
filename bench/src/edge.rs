//! The edge figure: GetClinic through the gateway beside the same call straight at
//! identity and through HAProxy in front of the same identity, driven by h2load (a
//! lean HTTP/2 client in its own process: the bench's tonic client saturates before
//! the servers do and would hide what the gateway costs).
//!
//! Each round runs the three paths one after the other with the same h2load command
//! line, at 64 calls in flight (4 connections × 16 streams) and at 1; the best round
//! of each path counts. HAProxy 2.6 (Debian's `haproxy`) is configured as the issue
//! measured it: `proto h2` both ways and `http-reuse always`. Without `h2load` the
//! figure is skipped with a note; without `haproxy`, its row.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use prost::Message;

/// One h2load run's figures.
#[derive(Clone, Copy, Default)]
pub struct Load {
    pub rps: f64,
    /// Mean time per request.
    pub mean: Duration,
    /// Requests that did not succeed (HTTP status; gRPC errors are checked before).
    pub failed: u64,
}

/// What the edge figure drives.
pub struct Targets {
    pub identity: SocketAddr,
    /// The suite's gateway, in this process.
    pub gateway: SocketAddr,
    /// A gateway in a process of its own (`topsmile serve gateway`), when built.
    pub own_process_gateway: Option<SocketAddr>,
}

/// The ratio the issue asks of the gateway: gateway ÷ direct at 64 in flight.
pub const TARGET_RATIO: f64 = 0.80;

/// Runs the comparison and prints it; `clinic` is the clinic GetClinic reads. With
/// `only` ("direct", "gateway" or "haproxy"), runs that path alone at 64 in flight for
/// `seconds`, once: for a profiler attached to this process (`perf record -p`).
pub async fn run(
    targets: Targets,
    token: &str,
    clinic: &str,
    seconds: u64,
    rounds: usize,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let Targets {
        identity,
        gateway,
        own_process_gateway,
    } = targets;
    if !installed("h2load") {
        println!(
            "(the edge figure: skipped, h2load is missing: apt-get install nghttp2-client haproxy)"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("get-clinic.bin");
    let message = topsmile_proto::topsmile::identity::v1::GetClinicRequest {
        name: clinic.to_owned(),
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(&message);
    std::fs::write(&body, framed)?;

    let haproxy = if installed("haproxy") {
        Some(HaProxy::start(dir.path(), identity).await?)
    } else {
        println!("(HAProxy's row: skipped, haproxy is missing: apt-get install haproxy)");
        None
    };
    let mut paths = vec![
        ("direct to identity", identity),
        ("through the gateway", gateway),
    ];
    if let Some(h) = &haproxy {
        paths.push(("through HAProxy 2.6", h.addr));
    }
    // The gateway as a deployment runs it: a process of its own, as HAProxy is.
    let own = own_process_gateway.map(|addr| {
        paths.push(("gateway, own process", addr));
        paths.len() - 1
    });
    // h2load sees HTTP statuses only: check once that every path answers the call OK,
    // so no path is measured answering errors fast.
    for (label, addr) in &paths {
        answers_ok(*addr, token, clinic)
            .await
            .with_context(|| format!("GetClinic {label}"))?;
    }
    if let Some(only) = only {
        let wanted = |label: &str| label.to_lowercase().contains(&only.to_lowercase());
        let Some((label, addr)) = paths.iter().find(|(label, _)| wanted(label)) else {
            anyhow::bail!("--edge-profile: no path {only:?}");
        };
        println!(
            "{label}: h2load for {seconds}s in 3s (pid {})",
            std::process::id()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let load = h2load(*addr, &body, token, 4, 16, seconds).await?;
        println!(
            "{label}: {:.0} rps, mean {} µs",
            load.rps,
            load.mean.as_micros()
        );
        return Ok(());
    }
    println!(
        "Edge: authenticated GetClinic by h2load (its own process), {seconds}s per run, best of {rounds} rounds"
    );
    println!(
        "{:<30} {:>9} {:>10} {:>9} {:>7}",
        "path", "in flight", "rps", "mean µs", "failed"
    );
    // (connections, streams per connection)
    let levels = [(4usize, 16usize), (1, 1)];
    let mut best = vec![vec![Load::default(); paths.len()]; levels.len()];
    for (level, &(connections, streams)) in levels.iter().enumerate() {
        // Warm each path (connections, the token cache) first.
        for (_, addr) in &paths {
            h2load(*addr, &body, token, connections, streams, 1).await?;
        }
        for _ in 0..rounds {
            for (i, (_, addr)) in paths.iter().enumerate() {
                let load = h2load(*addr, &body, token, connections, streams, seconds).await?;
                if load.rps > best[level][i].rps {
                    best[level][i] = load;
                }
            }
        }
        for ((label, _), load) in paths.iter().zip(&best[level]) {
            println!(
                "{label:<30} {:>9} {:>10.0} {:>9} {:>7}",
                connections * streams,
                load.rps,
                load.mean.as_micros(),
                load.failed
            );
        }
    }
    let ratio = |level: usize, i: usize| best[level][i].rps / best[level][0].rps;
    let added =
        |i: usize| best[1][i].mean.as_micros() as i128 - best[1][0].mean.as_micros() as i128;
    let haproxy_ratio = haproxy.as_ref().map(|_| ratio(0, 2));
    println!(
        "64 in flight: gateway ÷ direct = {:.2}{} (target ≥ {TARGET_RATIO:.2}){}",
        ratio(0, 1),
        own.map_or(String::new(), |i| format!(
            ", in its own process {:.2}",
            ratio(0, i)
        )),
        haproxy_ratio.map_or(String::new(), |r| format!(", HAProxy ÷ direct = {r:.2}"))
    );
    println!(
        " 1 in flight: the gateway adds {:+} µs mean{}{}",
        added(1),
        own.map_or(String::new(), |i| format!(
            " ({:+} µs in its own process)",
            added(i)
        )),
        haproxy.as_ref().map_or(String::new(), |_| format!(
            ", HAProxy {:+} µs (target: no more than HAProxy)",
            added(2)
        ))
    );
    if let Some(h) = haproxy {
        h.stop().await;
    }
    Ok(())
}

async fn answers_ok(addr: SocketAddr, token: &str, clinic: &str) -> anyhow::Result<()> {
    use topsmile_proto::topsmile::identity::v1::{
        GetClinicRequest, clinic_service_client::ClinicServiceClient,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut request = tonic::Request::new(GetClinicRequest {
        name: clinic.to_owned(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    ClinicServiceClient::new(channel)
        .get_clinic(request)
        .await?;
    Ok(())
}

fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// One h2load run: `connections` × `streams` GetClinic calls in flight for `seconds`.
async fn h2load(
    addr: SocketAddr,
    body: &Path,
    token: &str,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> anyhow::Result<Load> {
    let output = tokio::process::Command::new("h2load")
        .arg(format!(
            "http://{addr}/topsmile.identity.v1.ClinicService/GetClinic"
        ))
        .args(["-D", &seconds.to_string()])
        .args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-t", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .output()
        .await
        .context("h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_h2load(&text).with_context(|| format!("h2load's output: {text}"))
}

/// Reads throughput, mean request time and failures from h2load's summary.
fn parse_h2load(text: &str) -> Option<Load> {
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))?
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))?
        .trim()
        .parse()
        .ok()?;
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))?
        .split(", ")
        .find_map(|part| part.strip_suffix(" failed"))?
        .trim()
        .parse()
        .ok()?;
    // time for request:   min   max   mean   sd   +/- sd
    let mean = text
        .lines()
        .find(|l| l.starts_with("time for request:"))?
        .split_whitespace()
        .nth(5)
        .and_then(parse_duration)?;
    Some(Load { rps, mean, failed })
}

/// h2load's durations: `123us`, `1.23ms`, `1.2s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * scale))
}

/// HAProxy in front of identity, in a process of its own.
struct HaProxy {
    addr: SocketAddr,
    child: tokio::process::Child,
    _config: PathBuf,
}

impl HaProxy {
    async fn start(dir: &Path, identity: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        drop(listener);
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 4000\n\
                 defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend grpc\n  bind {addr} proto h2\n  default_backend identity\n\
                 backend identity\n  http-reuse always\n  server identity {identity} proto h2\n"
            ),
        )?;
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("haproxy")?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self {
                    addr,
                    child,
                    _config: config,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("haproxy did not start listening on {addr}")
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summaries_are_read() {
        let text = "finished in 5.00s, 20412.20 req/s, 2.10MB/s\n\
                    requests: 102061 total, 102125 started, 102061 done, 102061 succeeded, 0 failed, 0 errored, 0 timeout\n\
                    time for request:      263us     14.81ms      3.09ms      1.05ms    71.57%\n";
        let load = parse_h2load(text).unwrap();
        assert!((load.rps - 20412.20).abs() < 0.01);
        assert_eq!(load.failed, 0);
        assert_eq!(load.mean, Duration::from_micros(3090));
    }
}
