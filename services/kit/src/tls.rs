//! TLS for a TopSmile listener: a certificate chain and key from PEM files, reloaded
//! when they change, and optionally client certificates checked against a CA.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, and cert-manager renews a
//! certificate by rewriting its Secret: neither tells the process. So the files are
//! read again every [`TlsFiles::tls_reload_secs`] and, when what they hold changed, a
//! new server configuration replaces the old one for the *next* handshake. A connection
//! keeps the configuration it was accepted with until it ends: nothing is dropped. A
//! change that does not load (a half-written file, a key that does not match the
//! certificate) is logged and the last good configuration kept.
//!
//! Rejected: watching the files with inotify (a Secret's symlink swap replaces the
//! directory the watch is on; polling a few small files every few seconds costs
//! nothing and works on every volume type), and a `ResolvesServerCert` that swaps only
//! the certificate (a new client CA needs a new verifier, hence a new configuration).
//!
//! TLS 1.2 and 1.3 with rustls' safe defaults, ring as the crypto provider; ALPN offers
//! what the caller serves (the gateway: `h2`, then `http/1.1` for gRPC-Web).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shutdown::Shutdown;

/// Where a listener's TLS files are (`TOPSMILE_TLS_*`). TLS is on when the certificate
/// and key are both set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's own certificate first.
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// CA certificates, PEM: when set, every client must present a certificate one of
    /// them signed (mutual TLS, for partners' systems).
    pub tls_client_ca: Option<PathBuf>,
    /// How often the files are read again for a rotated certificate, in seconds.
    pub tls_reload_secs: u64,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_secs: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TOPSMILE_TLS_CERT and TOPSMILE_TLS_KEY go together: set both or neither")]
    Half,
    #[error("TOPSMILE_TLS_CLIENT_CA needs TOPSMILE_TLS_CERT and TOPSMILE_TLS_KEY")]
    ClientCaWithoutTls,
    #[error("{path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("a certificate for {name}: {cause}")]
    Generate { name: String, cause: String },
}

impl TlsFiles {
    /// The certificate and key, when TLS is on; an error for a half configuration.
    pub fn pair(&self) -> Result<Option<(&Path, &Path)>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) if self.tls_client_ca.is_some() => Err(TlsError::ClientCaWithoutTls),
            (None, None) => Ok(None),
            _ => Err(TlsError::Half),
        }
    }

    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|e| TlsError::File {
            path: path.to_owned(),
            cause: e.to_string(),
        })
    }

    /// What the files hold now, read once.
    fn snapshot(&self) -> Result<Option<Snapshot>, TlsError> {
        let Some((cert, key)) = self.pair()? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            cert: (cert.to_owned(), Self::read(cert)?),
            key: (key.to_owned(), Self::read(key)?),
            client_ca: match &self.tls_client_ca {
                Some(path) => Some((path.clone(), Self::read(path)?)),
                None => None,
            },
        }))
    }
}

/// The bytes of the files at one moment, with their paths for errors.
struct Snapshot {
    cert: (PathBuf, Vec<u8>),
    key: (PathBuf, Vec<u8>),
    client_ca: Option<(PathBuf, Vec<u8>)>,
}

impl Snapshot {
    fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [
            Some(&self.cert.1),
            Some(&self.key.1),
            self.client_ca.as_ref().map(|c| &c.1),
        ]
        .into_iter()
        .flatten()
        {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let bad = |path: &Path, cause: String| TlsError::File {
            path: path.to_owned(),
            cause,
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert.1)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&self.cert.0, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(&self.cert.0, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key.1)
            .map_err(|e| bad(&self.key.0, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((path, pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad(path, e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// What this process's clients trust when they call other TopSmile services over TLS
/// (`TOPSMILE_TLS_CA`): set once at start-up, before any client is made. Without it,
/// service-to-service calls are plaintext (a service mesh may encrypt them).
pub struct ClientTrust {
    /// The CA certificates, PEM (for tonic's clients).
    pub pem: String,
    /// The same, as a rustls client configuration with ALPN `h2` (for the gateway's).
    pub config: Arc<rustls::ClientConfig>,
}

static CLIENT_TRUST: std::sync::OnceLock<ClientTrust> = std::sync::OnceLock::new();

/// Makes every service client of this process speak TLS to the services and trust the
/// CA certificates in `path` (PEM). Called once, at start-up; a second call is refused.
pub fn trust_ca(path: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        cause: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::File {
            path: path.to_owned(),
            cause: e.to_string(),
        })?;
        roots
            .add(cert)
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            cause: "no certificate in the file".into(),
        });
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    CLIENT_TRUST
        .set(ClientTrust {
            pem,
            config: Arc::new(config),
        })
        .map_err(|_| TlsError::ClientCa("TOPSMILE_TLS_CA was set twice".into()))
}

/// What service clients trust, when they speak TLS.
pub fn client_trust() -> Option<&'static ClientTrust> {
    CLIENT_TRUST.get()
}

/// The host of `host:port` (brackets of an IPv6 literal removed): the name a
/// service's certificate must carry.
pub fn host_of(authority: &str) -> &str {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A listener's TLS configuration, current as of the last reload.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<(Arc<ServerConfig>, [u8; 32])>,
}

impl ServerTls {
    /// Loads the files (`None` when TLS is off). ALPN offers `alpn`, in that order.
    pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Option<Arc<Self>>, TlsError> {
        let Some(snapshot) = files.snapshot()? else {
            return Ok(None);
        };
        let config = snapshot.config(alpn)?;
        Ok(Some(Arc::new(Self {
            files: files.clone(),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: RwLock::new((Arc::new(config), snapshot.fingerprint())),
        })))
    }

    /// An acceptor for the next connection, with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => current.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; `Ok(true)` when they changed and the new configuration
    /// is in use, `Err` (the old one kept) when they changed and do not load.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(snapshot) = self.files.snapshot()? else {
            return Ok(false);
        };
        let fingerprint = snapshot.fingerprint();
        let unchanged = self
            .current
            .read()
            .map(|current| current.1 == fingerprint)
            .unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let config = snapshot.config(&alpn)?;
        if let Ok(mut current) = self.current.write() {
            *current = (Arc::new(config), fingerprint);
        }
        Ok(true)
    }

    /// Reloads every `tls_reload_secs` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: Shutdown) {
        let tls = self.clone();
        let every = Duration::from_secs(self.files.tls_reload_secs.max(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.clone().wait() => return,
                }
                match tls.reload() {
                    Ok(true) => tracing::info!(
                        "TLS certificate files changed: new connections get the new certificate"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load: keeping the last good certificate")
                    }
                }
            }
        });
    }
}

/// A certificate authority made on the spot: what `topsmile dev --tls` signs its
/// certificate with (so clients trust one file, `ca.pem`) and what tests issue server
/// and client certificates from.
pub struct LocalCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl LocalCa {
    pub fn new(common_name: &str) -> Result<Self, TlsError> {
        let failed = |cause: rcgen::Error| TlsError::Generate {
            name: common_name.to_owned(),
            cause: cause.to_string(),
        };
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(failed)?;
        Ok(Self { issuer })
    }

    /// The CA's certificate, PEM: what clients trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Issued, TlsError> {
        self.issue(names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str) -> Result<Issued, TlsError> {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Result<Issued, TlsError> {
        let failed = |cause: rcgen::Error| TlsError::Generate {
            name: names.join(","),
            cause: cause.to_string(),
        };
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(owned).map_err(failed)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes the certificate and key into `dir` (owner-only) as `<stem>.pem` and
    /// `<stem>-key.pem`, and returns them as TLS files.
    pub fn write_to(&self, dir: &Path, stem: &str) -> std::io::Result<TlsFiles> {
        crate::files::private_dir(dir)?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_private(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok(TlsFiles {
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..TlsFiles::default()
        })
    }
}

/// Writes `text` to `path`, owner-only, replacing it whole (a reader never sees half).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    crate::files::private_file(&partial)?;
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}
