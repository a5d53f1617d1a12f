//! The gateway's configuration: where it listens and where each service's replicas are.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use topsmile_kit::{config::ServerLimits, telemetry::LogFormat};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Log format: "json" or "pretty".
    pub log_format: LogFormat,
    /// Replicas of the identity service, `host:port`, comma-separated.
    pub identity_upstreams: String,
    /// Replicas of the patients service.
    pub patients_upstreams: String,
    /// Replicas of the providers service.
    pub providers_upstreams: String,
    /// Replicas of the appointments service.
    pub appointments_upstreams: String,
    /// Admin address serving Prometheus metrics at `/metrics` (off when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// A second, plaintext address serving gRPC health only (off when unset): for
    /// Kubernetes' gRPC probes, which cannot speak TLS, when the gateway serves TLS.
    pub health_listen: Option<SocketAddr>,
    /// The service secret (`TOPSMILE_SERVICE_SECRET`, at least 32 bytes): the gateway
    /// mints its own service token with it, which vouches to the services for the
    /// client addresses it forwards. Required.
    #[serde(skip_serializing)]
    pub service_secret: Option<secrecy::SecretString>,
    #[serde(flatten)]
    pub edge: EdgeSettings,
    #[serde(flatten)]
    pub limits: ServerLimits,
    /// TLS for the gateway's listener (`TOPSMILE_TLS_CERT`, `_KEY`, `_CLIENT_CA`).
    #[serde(flatten)]
    pub tls: topsmile_kit::tls::TlsFiles,
    /// CA certificates (PEM) the services' certificates are verified against: set,
    /// every call to a service is TLS (`TOPSMILE_TLS_CA`).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// How the edge treats calls: connections, deadlines, shedding and the sign-in limit.
/// Shared by the gateway binary and `topsmile dev`, so both honour the same
/// `TOPSMILE_*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeSettings {
    /// HTTP/2 connections kept to each replica; calls are multiplexed over them. One
    /// (gRPC's own practice): more frames per write and fewer wake-ups per call; h2load
    /// measured about a sixth less CPU per forwarded call than with two. Raise it
    /// only when one connection's task is the limit (a gateway with many cores and few
    /// replicas).
    pub connections_per_upstream: usize,
    /// How long connecting to a replica may take before the next one is tried.
    pub connect_timeout_ms: u64,
    /// How long a replica that failed is skipped before it is tried again.
    pub upstream_retry_ms: u64,
    /// The longest deadline the gateway grants; a longer or missing `grpc-timeout` is
    /// capped to this.
    pub max_deadline_secs: u64,
    /// How often, in milliseconds, each replica's health is checked: a replica that
    /// turns NOT_SERVING (draining) stops getting new calls within this.
    pub health_check_ms: u64,
    /// Calls in flight through the gateway at once; more are shed with
    /// RESOURCE_EXHAUSTED and a retry hint.
    pub max_in_flight: usize,
    /// The share of `max_in_flight`, in percent, that one client address may hold.
    pub per_address_percent: u8,
    /// The share, in percent, one client address may hold of calls to public methods
    /// (no token: sign-in, keys), which cost an attacker nothing to make.
    pub public_per_address_percent: u8,
    /// Bytes of answers the gateway holds for clients that have not read them yet, in
    /// all; one client address may hold `per_address_percent` of it. An answer that
    /// would go past its address's share is dropped and the call shed.
    pub max_buffered_bytes: usize,
    /// The largest answer the gateway relays (gRPC's usual receive limit); a larger one
    /// is RESOURCE_EXHAUSTED.
    pub max_answer_bytes: usize,
    /// Sign-in calls (Login, LoginPatient, RefreshToken) allowed per client address and
    /// minute; more get RESOURCE_EXHAUSTED with a retry hint. 0 turns the limit off.
    pub sign_in_per_minute: u32,
    /// How many of those may come in one burst.
    pub sign_in_burst: u32,
    /// Load balancers and proxies (CIDR ranges, comma-separated) whose
    /// `X-Forwarded-For` / `Forwarded` headers name the client; empty: none.
    pub trusted_proxies: String,
    /// Web origins (`scheme://host[:port]`, comma-separated) whose pages may call over
    /// gRPC-Web; empty: none (browsers refuse cross-origin calls), `*`: any (dev only).
    pub cors_origins: String,
    /// How often each service's replica names are resolved again, in seconds, so
    /// replicas that come and go are followed without a restart; 0: never.
    pub dns_refresh_secs: u64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            connections_per_upstream: 1,
            connect_timeout_ms: 1000,
            upstream_retry_ms: 1000,
            max_deadline_secs: 30,
            health_check_ms: 1000,
            max_in_flight: 4096,
            per_address_percent: 25,
            public_per_address_percent: 10,
            max_buffered_bytes: 64 << 20,
            max_answer_bytes: 4 << 20,
            sign_in_per_minute: 30,
            sign_in_burst: 10,
            trusted_proxies: String::new(),
            cors_origins: String::new(),
            dns_refresh_secs: 5,
        }
    }
}

impl EdgeSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn upstream_retry(&self) -> Duration {
        Duration::from_millis(self.upstream_retry_ms)
    }

    pub fn max_deadline(&self) -> Duration {
        Duration::from_secs(self.max_deadline_secs)
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_format: LogFormat::Json,
            identity_upstreams: "127.0.0.1:50061".into(),
            patients_upstreams: "127.0.0.1:50062".into(),
            providers_upstreams: "127.0.0.1:50063".into(),
            appointments_upstreams: "127.0.0.1:50064".into(),
            metrics_listen: None,
            health_listen: None,
            service_secret: None,
            edge: EdgeSettings::default(),
            limits: ServerLimits::default(),
            tls: topsmile_kit::tls::TlsFiles::default(),
            tls_ca: None,
        }
    }
}

impl GatewayConfig {
    /// The identity replicas, whose `GetJwks` the gateway verifies tokens with.
    pub fn identity_addresses(&self) -> Vec<String> {
        topsmile_kit::config::split_list(&self.identity_upstreams)
    }

    /// `(area, addresses)` for every service area.
    pub fn upstreams(&self) -> Vec<(String, Vec<String>)> {
        [
            ("identity", &self.identity_upstreams),
            ("patients", &self.patients_upstreams),
            ("providers", &self.providers_upstreams),
            ("appointments", &self.appointments_upstreams),
        ]
        .into_iter()
        .map(|(area, list)| {
            let addrs = list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            (area.to_owned(), addrs)
        })
        .collect()
    }
}
