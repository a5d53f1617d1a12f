//! `topsmile`: the TopSmile command line. `topsmile dev` (the default) runs the whole
//! suite on this machine.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use topsmile::{DevConfig, Suite, SuiteOptions};
use topsmile_kit::{
    shutdown,
    store::StoreChoice,
    telemetry::{self, LogFormat},
};

/// TopSmile: the back end of multi-tenant dental clinics, as gRPC services.
///
/// With no command, runs `topsmile dev`.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// A TOML config file; settings there are overridden by TOPSMILE_* variables and
    /// then by flags.
    #[arg(long, global = true, env = "TOPSMILE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every service and the gateway in this process: the gateway on
    /// 127.0.0.1:50051, the services on free loopback ports, data in the embedded store
    /// under ./.topsmile (or in MongoDB with --mongodb-uri). Ctrl-C drains and stops.
    Dev(DevArgs),
    /// Fills a running suite with sample data through its gateway: clinics, staff,
    /// providers with weekly hours, patients, medical histories and appointments. Safe
    /// to run again: it adds nothing the first run made.
    Seed(SeedArgs),
    /// Manages identity's token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Runs one service (or the gateway) on its own, configured by `TOPSMILE_*`
    /// variables exactly like its own binary (`topsmile-patients`, ...): one replica of
    /// a deployment.
    Serve {
        #[arg(value_enum)]
        service: Role,
    },
}

/// What `topsmile serve` runs.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Role {
    Gateway,
    Identity,
    Patients,
    Providers,
    Appointments,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Adds a new signing key and retires the current one. Running services pick it up
    /// without a restart; tokens signed with the retired key stay valid until they
    /// expire, and the retired key stays in GetJwks until then.
    Rotate {
        /// The key file [env: TOPSMILE_KEY_FILE] [default: <data dir>/signing-keys.json].
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Seconds between publishing the new key and signing with it. Every identity
        /// replica and every verifier must have the new key before any replica signs
        /// with it: on one machine 10 s is plenty; in Kubernetes, where a changed Secret
        /// reaches the pods within a minute or two, use 300.
        #[arg(long, default_value_t = 10)]
        sign_after: u64,
    },
}

#[derive(clap::Args, Default)]
struct DevArgs {
    /// Address of the gateway [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the embedded store [env: TOPSMILE_DATA_DIR] [default: ./.topsmile].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use MongoDB at this URI instead of the embedded store [env: TOPSMILE_MONGODB_URI].
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// Log format: pretty or json [env: TOPSMILE_LOG_FORMAT] [default: pretty].
    #[arg(long, value_parser = ["pretty", "json"])]
    log_format: Option<String>,
    /// Serve the gateway over TLS with a certificate for localhost signed by a local
    /// CA, both made on first use in <data dir>/tls (clients trust its ca.pem).
    /// TOPSMILE_TLS_CERT and TOPSMILE_TLS_KEY serve a certificate of your own instead.
    #[arg(long)]
    tls: bool,
}

#[derive(clap::Args)]
struct SeedArgs {
    /// The gateway of the running suite.
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway: String,
    /// How much: `demo` (two small clinics) or `seed` (100 clinics, 500 staff, 200
    /// providers, 10,000 patients and histories, 50,000 appointments).
    #[arg(long, default_value = "demo", value_parser = ["demo", "seed"])]
    scale: String,
    /// The super admin to sign in as.
    #[arg(long, env = "TOPSMILE_BOOTSTRAP_ADMIN_EMAIL", default_value = DEV_ADMIN_EMAIL)]
    admin_email: String,
    /// Their password (`topsmile dev` printed it on its first start).
    #[arg(
        long,
        env = "TOPSMILE_BOOTSTRAP_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    admin_password: String,
}

/// The account `topsmile dev` creates when no super admin exists and none is configured.
const DEV_ADMIN_EMAIL: &str = topsmile_identity::DEFAULT_BOOTSTRAP_EMAIL;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Dev(DevArgs::default())) {
        Command::Dev(args) => dev(cli.config, args).await,
        Command::Seed(args) => seed(args).await,
        Command::Serve { service } => {
            let served = match service {
                Role::Gateway => return topsmile_gateway::run_process().await,
                Role::Identity => topsmile_identity::run_process().await,
                Role::Patients => topsmile_patients::run_process().await,
                Role::Providers => topsmile_providers::run_process().await,
                Role::Appointments => topsmile_appointments::run_process().await,
            };
            served.map_err(|e| anyhow::anyhow!(e))
        }
        Command::Keys(KeysCommand::Rotate {
            key_file,
            sign_after,
        }) => {
            let config: DevConfig = topsmile_kit::config::load(cli.config)?;
            let path = key_file.unwrap_or_else(|| config.key_file());
            let delay = std::time::Duration::from_secs(sign_after);
            let kid = topsmile_kit::auth::KeyRing::rotate_after(&path, delay)?;
            println!(
                "new signing key {kid} in {}: published now, signing in {sign_after} s",
                path.display()
            );
            Ok(())
        }
    }
}

async fn dev(file: Option<PathBuf>, args: DevArgs) -> anyhow::Result<()> {
    let mut config: DevConfig = topsmile_kit::config::load(file)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.store.data_dir = dir;
    }
    if let Some(uri) = args.mongodb_uri {
        config.store.mongodb_uri = Some(SecretString::from(uri));
    }
    if let Some(format) = args.log_format.as_deref() {
        config.log_format = if format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Pretty
        };
    }
    let telemetry = telemetry::init(config.log_format, "topsmile");
    tracing::debug!(?config, "topsmile dev configuration");

    // --tls: a local CA and a localhost certificate, made once and kept, so a client
    // trusts the same ca.pem across restarts.
    let dev_ca = if args.tls && config.tls.pair()?.is_none() {
        let dir = config.store.data_dir.join("tls");
        let ca = dir.join("ca.pem");
        if !ca.exists() || !dir.join("gateway.pem").exists() {
            let local = topsmile_kit::tls::LocalCa::new("TopSmile dev CA")?;
            local
                .server(&["localhost", "127.0.0.1", "::1"])?
                .write_to(&dir, "gateway")?;
            topsmile_kit::tls::write_private(&ca, &local.pem())?;
        }
        config.tls.tls_cert = Some(dir.join("gateway.pem"));
        config.tls.tls_key = Some(dir.join("gateway-key.pem"));
        Some(ca)
    } else {
        None
    };
    let tls_on = config.tls.pair()?.is_some();

    let store = StoreChoice::from_config(&config.store);
    let mut options =
        SuiteOptions::new(config.listen, store.clone(), config.store.data_dir.clone())?;
    options.key_file = config.key_file();
    options.limits = config.limits.clone();
    options.edge = config.edge.clone();
    options.tls = config.tls.clone();
    options.metrics_listen = config.metrics_listen;
    // A password on its own is the dev admin's (the README's table says so); an email
    // on its own gets a generated password, shown below.
    let admin_email = config
        .identity
        .bootstrap_admin_email
        .clone()
        .unwrap_or_else(|| DEV_ADMIN_EMAIL.to_owned());
    options.bootstrap_admin = config
        .identity
        .bootstrap_admin_password
        .clone()
        .map(|password| (admin_email.clone(), password));
    let suite = Suite::start(options).await?;
    // A newcomer needs a first account: make one and show its password, once.
    let generated = if suite.accounts.stores.users.any_super_admin().await? {
        None
    } else {
        let password = generate_password();
        suite
            .accounts
            .bootstrap_admin(&admin_email, &SecretString::from(password.clone()))
            .await?
            .then_some(password)
    };

    let where_data = match &store {
        StoreChoice::Embedded { data_dir } => format!("embedded store in {}", data_dir.display()),
        StoreChoice::Mongo { database, .. } => format!("MongoDB database {database}"),
    };
    println!("TopSmile is running ({where_data})");
    println!("  {:<13} {}", "gateway", suite.gateway);
    for (area, addr) in &suite.services {
        println!("  {area:<13} {addr}");
    }
    if let Some(metrics) = suite.metrics {
        println!("  {:<13} http://{metrics}/metrics", "metrics");
    }
    if telemetry.exports_traces() {
        println!(
            "  {:<13} exported over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)",
            "traces"
        );
    }
    println!();
    match generated {
        Some(password) => {
            println!("Created the super admin {admin_email} with the password (shown only now):");
            println!("  {password}");
        }
        None => println!(
            "Sign in with your super admin (TOPSMILE_BOOTSTRAP_ADMIN_EMAIL, or {DEV_ADMIN_EMAIL} from the first run)."
        ),
    }
    println!();
    match (&dev_ca, tls_on) {
        (Some(ca), _) => println!(
            "Try:  grpcurl -cacert {} localhost:{} list",
            ca.display(),
            suite.gateway.port()
        ),
        (None, true) => println!(
            "Try:  grpcurl -cacert <your CA> <your certificate's name>:{} list",
            suite.gateway.port()
        ),
        (None, false) => println!("Try:  grpcurl -plaintext {} list", suite.gateway),
    }
    println!("Ctrl-C drains in-flight calls and stops.");

    let ran = suite.run_until(shutdown::os_signal()).await;
    telemetry.shutdown();
    ran
}

async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let plan = if args.scale == "seed" {
        topsmile::seed::Plan::seed()
    } else {
        topsmile::seed::Plan::demo()
    };
    let target = topsmile::seed::Target {
        gateway: args.gateway,
        admin_email: args.admin_email,
        admin_password: args.admin_password,
        progress: std::io::stderr().is_terminal(),
    };
    let report = topsmile::seed::run(&target, &plan).await?;
    println!(
        "Seeded {} clinics in {:.1} s ({} calls through {}).",
        report.clinics.len(),
        report.elapsed_ms as f64 / 1000.0,
        report.calls,
        target.gateway
    );
    if let Some(first) = report.clinics.first() {
        println!("  first clinic   {first}");
    }
    println!(
        "  clinic admin   {} / {}",
        report.admin_email,
        topsmile::seed::SEED_PASSWORD
    );
    println!(
        "  portal patient {} / {} (LoginPatient with the first clinic)",
        report.patient_email,
        topsmile::seed::SEED_PASSWORD
    );
    Ok(())
}

/// 20 characters from an unambiguous alphabet (about 110 bits).
fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}
