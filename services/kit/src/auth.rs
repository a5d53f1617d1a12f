//! Access tokens: the signing keys, issuing tokens, and verifying them.
//!
//! Tokens are JWTs signed with Ed25519 (`alg: EdDSA`), with the signing key's id in the
//! `kid` header. Verification pins the algorithm, requires a known `kid`, and checks
//! `iss`, `aud` and `exp`; every failure is one generic UNAUTHENTICATED for the caller.
//! A verified token is cached until it expires, so the per-call cost of a token seen
//! before is a map lookup, not a signature check.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// `iss` of every TopSmile access token.
pub const ISSUER: &str = "topsmile-identity";
/// `aud` of every TopSmile access token.
pub const AUDIENCE: &str = "topsmile";
/// How long a rotated-in key is published before it signs: longer than the shortest
/// interval between two key fetches of a verifier (`access::REFRESH_INTERVAL`).
pub const PUBLISH_BEFORE_SIGNING: Duration = Duration::from_secs(10);
/// How long an access token lives.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// What kind of principal a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Staff,
    Patient,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staff => "staff",
            Self::Patient => "patient",
            Self::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "staff" => Some(Self::Staff),
            "patient" => Some(Self::Patient),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The claims of a TopSmile access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The principal: a user, patient or service resource name.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The caller's clinic id (empty for a super admin or a service).
    pub clinic: String,
    /// `super_admin`, `admin`, `provider`, `staff`, `patient` or `service`.
    pub role: String,
    pub kind: Kind,
    /// Session family: every token from one login shares it.
    pub sid: String,
    /// How the principal proved who they are (RFC 8176 values: `pwd`, `otp`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When they last proved it (epoch seconds; 0 for service tokens).
    #[serde(default)]
    pub auth_time: i64,
    /// [`SCOPE_MFA_ENROLMENT`] on a token that only allows enrolling in MFA; empty on
    /// every other.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// The `amr` of a password.
pub const AMR_PASSWORD: &str = "pwd";
/// The `amr` of a second factor (a TOTP code or a recovery code).
pub const AMR_OTP: &str = "otp";
/// The scope of a token that only allows enrolling in MFA: its user must enrol and
/// their grace period is over.
pub const SCOPE_MFA_ENROLMENT: &str = "mfa_enrolment";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("key ring has no active key")]
    NoActiveKey,
}

/// One signing key as kept on disk.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER of the Ed25519 private key, base64url.
    pkcs8: String,
    /// Public key, base64url (the JWK `x`).
    x: String,
    created_at: i64,
    /// When the key starts signing (epoch seconds). A rotated-in key is published first
    /// and signs only after [`PUBLISH_BEFORE_SIGNING`], so every verifier can have
    /// fetched it before it meets a token carrying it.
    #[serde(default)]
    signs_from: i64,
    /// Set when a newer key took over; the key is still published until every token
    /// it signed has expired.
    retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// A public verification key, as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    /// Ed25519 public key, base64url without padding.
    pub x: String,
}

/// The signing keys of identity: one active, plus retired ones still published.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<StoredKey>,
}

impl KeyRing {
    /// Loads the key file, or creates it with one fresh key (mode 0600 on Unix).
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let ring = Self {
            keys: vec![new_key(now_secs())?],
        };
        ring.save(path)?;
        Ok(ring)
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let keys: Vec<StoredKey> = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if !keys.iter().any(|k| k.retired_at.is_none()) {
            return Err(KeyError::NoActiveKey);
        }
        Ok(Self { keys })
    }

    /// Adds a new key that takes over signing after [`PUBLISH_BEFORE_SIGNING`] and
    /// retires the current one then; drops keys retired long enough ago that no token
    /// they signed can still be valid. Returns the new kid.
    pub fn rotate(path: &Path) -> Result<String, KeyError> {
        Self::rotate_after(path, PUBLISH_BEFORE_SIGNING)
    }

    /// [`rotate`](Self::rotate) with another hand-over delay.
    pub fn rotate_after(path: &Path, delay: Duration) -> Result<String, KeyError> {
        let mut ring = Self::load_or_create(path)?;
        let now = now_secs();
        let takes_over = now + i64::try_from(delay.as_secs()).unwrap_or(0);
        let ttl = ACCESS_TOKEN_TTL.as_secs() as i64;
        ring.keys
            .retain(|k| k.retired_at.is_none_or(|r| r + ttl > now));
        for key in &mut ring.keys {
            key.retired_at.get_or_insert(takes_over);
        }
        let mut key = new_key(now)?;
        key.signs_from = takes_over;
        let kid = key.kid.clone();
        ring.keys.push(key);
        ring.save(path)?;
        Ok(kid)
    }

    fn save(&self, path: &Path) -> Result<(), KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            crate::files::private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(&self.keys).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|e| err(e.to_string()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// The key that signs new tokens.
    pub fn issuer(&self) -> Result<TokenIssuer, KeyError> {
        let now = now_secs();
        let key = self
            .keys
            .iter()
            .filter(|k| k.signs_from <= now)
            .max_by_key(|k| (k.signs_from, k.created_at))
            .ok_or(KeyError::NoActiveKey)?;
        let der = URL_SAFE_NO_PAD
            .decode(&key.pkcs8)
            .map_err(|_| KeyError::NoActiveKey)?;
        Ok(TokenIssuer {
            kid: key.kid.clone(),
            key: EncodingKey::from_ed_der(&der),
        })
    }

    /// Every key a valid token may have been signed with: the JWKS.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys
            .iter()
            .map(|k| PublicKey {
                kid: k.kid.clone(),
                x: k.x.clone(),
            })
            .collect()
    }
}

fn new_key(now: i64) -> Result<StoredKey, KeyError> {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = signing.to_pkcs8_der().map_err(|e| KeyError::File {
        path: PathBuf::new(),
        reason: format!("encode key: {e}"),
    })?;
    Ok(StoredKey {
        kid: uuid::Uuid::now_v7().simple().to_string(),
        pkcs8: URL_SAFE_NO_PAD.encode(der.as_bytes()),
        x: URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
        created_at: now,
        signs_from: now,
        retired_at: None,
    })
}

fn now_secs() -> i64 {
    crate::time::unix_seconds()
}

/// Signs access tokens with the active key.
pub struct TokenIssuer {
    kid: String,
    key: EncodingKey,
}

impl TokenIssuer {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as they are (callers set `exp` from [`ACCESS_TOKEN_TTL`]).
    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

/// The audience of device tokens: never an access token's, so a device token opens no
/// method anywhere (every guard requires [`AUDIENCE`]).
pub const DEVICE_AUDIENCE: &str = "topsmile-device";

/// How long a device token is good for (each sign-in with it hands out a fresh one).
pub const DEVICE_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// The longest device token looked at: anything longer is malformed.
pub const DEVICE_TOKEN_MAX_BYTES: usize = 2048;

/// Verifies a device token against `keys` (identity's published keys): signature,
/// issuer, [`DEVICE_AUDIENCE`] and expiry. Its `sub` is the account it is bound to and
/// its `sid` the device.
pub fn verify_device_token(keys: &[PublicKey], token: &str) -> Result<Claims, TokenError> {
    if token.len() > DEVICE_TOKEN_MAX_BYTES {
        return Err(TokenError::Malformed);
    }
    let kid = TokenVerifier::kid_of(token)?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .and_then(|k| DecodingKey::from_ed_components(&k.x).ok())
        .ok_or(TokenError::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[DEVICE_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Why a token was refused. Callers get one generic UNAUTHENTICATED whatever the cause;
/// the cause is for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies access tokens against the published keys, caching what it verified.
pub struct TokenVerifier {
    keys: RwLock<HashMap<String, DecodingKey>>,
    validation: Validation,
    verified: moka::sync::Cache<String, Arc<Claims>>,
    last_refresh: RwLock<Option<Instant>>,
}

/// Expires each cached token when the token itself expires.
struct UntilTokenExpiry;

impl moka::Expiry<String, Arc<Claims>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        claims: &Arc<Claims>,
        _: Instant,
    ) -> Option<Duration> {
        let left = claims.exp.saturating_sub(now_secs());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

impl TokenVerifier {
    pub fn new(keys: &[PublicKey]) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let verifier = Self {
            keys: RwLock::new(HashMap::new()),
            validation,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilTokenExpiry)
                .build(),
            last_refresh: RwLock::new(None),
        };
        verifier.set_keys(keys);
        verifier
    }

    /// Replaces the known keys (after a JWKS fetch).
    pub fn set_keys(&self, keys: &[PublicKey]) {
        let decoded = keys
            .iter()
            .filter_map(|k| {
                DecodingKey::from_ed_components(&k.x)
                    .ok()
                    .map(|d| (k.kid.clone(), d))
            })
            .collect();
        if let Ok(mut current) = self.keys.write() {
            *current = decoded;
        }
        if let Ok(mut at) = self.last_refresh.write() {
            *at = Some(Instant::now());
        }
    }

    /// Whether a JWKS refetch is allowed now: at most once per `interval`, so a flood
    /// of tokens with made-up `kid`s cannot turn into a flood of fetches.
    pub fn may_refresh(&self, interval: Duration) -> bool {
        self.last_refresh
            .read()
            .ok()
            .and_then(|at| *at)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// Whether `kid` is one of the known keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.read().is_ok_and(|k| k.contains_key(kid))
    }

    /// The `kid` a token claims, without verifying anything.
    pub fn kid_of(token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        header.kid.ok_or(TokenError::UnknownKey)
    }

    /// Verifies a token: from the cache if it was verified before and has not expired,
    /// otherwise by signature and claims.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if let Some(claims) = self.verified.get(token)
            && claims.exp > now_secs()
        {
            return Ok(claims);
        }
        let kid = Self::kid_of(token)?;
        let claims = {
            let keys = self.keys.read().map_err(|_| TokenError::UnknownKey)?;
            let key = keys.get(&kid).ok_or(TokenError::UnknownKey)?;
            jsonwebtoken::decode::<Claims>(token, key, &self.validation)
                .map_err(|e| TokenError::Invalid(e.to_string()))?
                .claims
        };
        let claims = Arc::new(claims);
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// Verifies without the cache: a full signature check every time (for benchmarks).
    pub fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        let kid = Self::kid_of(token)?;
        let keys = self.keys.read().map_err(|_| TokenError::UnknownKey)?;
        let key = keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> Claims {
        let now = now_secs();
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "clinics/c1/users/u1".into(),
            exp: now + exp_in,
            iat: now,
            jti: "j1".into(),
            clinic: "c1".into(),
            role: "admin".into(),
            kind: Kind::Staff,
            sid: "s1".into(),
            amr: Vec::new(),
            auth_time: 0,
            scope: String::new(),
        }
    }

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(&dir.path().join("keys.json")).unwrap();
        (dir, ring)
    }

    fn b64(part: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(part).unwrap())
    }

    #[test]
    fn a_signed_token_verifies_and_is_then_cached() {
        let (_d, ring) = ring();
        let issued = claims(600);
        let token = ring.issuer().unwrap().sign(&issued).unwrap();
        let verifier = TokenVerifier::new(&ring.public_keys());
        assert_eq!(*verifier.verify(&token).unwrap(), issued);
        assert!(
            verifier.verified.get(&token).is_some(),
            "a verified token is cached"
        );
        assert_eq!(*verifier.verify(&token).unwrap(), issued);
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (_d, ring) = ring();
        let issuer = ring.issuer().unwrap();
        let verifier = TokenVerifier::new(&ring.public_keys());
        let good = issuer.sign(&claims(600)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();

        // Tampered payload, original signature.
        let mut evil = claims(600);
        evil.role = "super_admin".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(&evil).unwrap()),
            parts[2]
        );
        assert!(verifier.verify(&tampered).is_err());

        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "kid": issuer.kid()})),
            parts[1]
        );
        assert!(verifier.verify(&none).is_err());

        // HS256 signed with the public key as the HMAC secret.
        let x = ring.public_keys()[0].x.clone();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(issuer.kid().to_owned());
        let hs = jsonwebtoken::encode(
            &header,
            &claims(600),
            &EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs).unwrap_err(), TokenError::Algorithm);

        // Signed by a key nobody published.
        let (_d2, other) = self::ring();
        let foreign = other.issuer().unwrap().sign(&claims(600)).unwrap();
        assert_eq!(
            verifier.verify(&foreign).unwrap_err(),
            TokenError::UnknownKey
        );

        // Expired, wrong audience, wrong issuer.
        assert!(
            verifier
                .verify(&issuer.sign(&claims(-120)).unwrap())
                .is_err()
        );
        let wrong_aud = Claims {
            aud: "someone-else".into(),
            ..claims(600)
        };
        assert!(verifier.verify(&issuer.sign(&wrong_aud).unwrap()).is_err());
        let wrong_iss = Claims {
            iss: "evil".into(),
            ..claims(600)
        };
        assert!(verifier.verify(&issuer.sign(&wrong_iss).unwrap()).is_err());

        assert_eq!(
            verifier.verify("not.a.jwt").unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let before = KeyRing::load_or_create(&path).unwrap().issuer().unwrap();
        let old_token = before.sign(&claims(600)).unwrap();
        // Published at once, signing only after the hand-over.
        let next_kid = KeyRing::rotate(&path).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.issuer().unwrap().kid(), before.kid());
        assert!(ring.public_keys().iter().any(|k| k.kid == next_kid));
        // With no hand-over delay the new key signs at once.
        let new_kid = KeyRing::rotate_after(&path, Duration::ZERO).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.issuer().unwrap().kid(), new_kid);
        assert_eq!(ring.public_keys().len(), 3);
        let verifier = TokenVerifier::new(&ring.public_keys());
        assert!(verifier.verify(&old_token).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeyRing::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
