//! Staff second factor: RFC 6238 TOTP (six digits, 30-second steps, one step of skew),
//! and single-use recovery codes. Pure: the caller passes the time and stores the state.
//!
//! State lives on the user record ([`Mfa`]), changed only by the user's compare-and-swap
//! update, so everything that must happen once happens once across replicas: a code's
//! step is accepted only if it is later than the last accepted one (a replay within its
//! window is refused), a recovery code is removed when used, a sign-in challenge is
//! cleared when completed.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Recovery codes handed out at enrolment (and on regeneration).
pub const RECOVERY_CODES: usize = 10;

/// How long a sign-in challenge (password checked, code still to come) lives.
pub const CHALLENGE_TTL_SECS: i64 = 5 * 60;

/// How long MFA-required users may sign in without it, from the account's creation or
/// the policy's start.
pub const ENROLMENT_GRACE_SECS: i64 = 7 * 24 * 60 * 60;

/// When the default policy (super admins and ADMINs need MFA) took effect: accounts
/// older than this get their grace period from here.
pub const POLICY_START_SECS: i64 = 1_796_601_600; // 2026-12-07T00:00:00Z

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "TopSmile";

/// A user's second factor as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Mfa {
    /// The confirmed TOTP secret (base32); empty: not enrolled.
    pub secret: String,
    /// An enrolment's secret until a first code confirms it.
    pub pending_secret: String,
    /// The last TOTP step accepted: only later ones are.
    pub last_step: i64,
    /// SHA-256 (hex) of each unused recovery code.
    pub recovery_codes: Vec<String>,
    /// SHA-256 (hex) of the open sign-in challenge, if any, and when it expires.
    pub challenge: String,
    pub challenge_expires: i64,
}

impl Mfa {
    pub fn is_enrolled(&self) -> bool {
        !self.secret.is_empty()
    }
}

/// A fresh 160-bit secret, base32 (what the user types or scans).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    totp_rs::Secret::from(bytes).to_base32()
}

fn totp(secret: &str, account: &str) -> Option<totp_rs::Totp> {
    let secret = totp_rs::Secret::try_from_base32(secret).ok()?;
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .ok()
}

/// The `otpauth://` URI an authenticator app enrols with.
pub fn otpauth_uri(secret: &str, account: &str) -> Option<String> {
    totp(secret, account)?.to_url().ok()
}

/// The step `code` is valid for at `now` (unix seconds), if it is, and later than
/// `last_step` (a step is accepted once).
pub fn accepted_step(secret: &str, code: &str, now: i64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = totp(secret, "")?.check(code, u64::try_from(now).ok()?)?;
    let step = i64::try_from(step).ok()?;
    (step > last_step).then_some(step)
}

/// The code for `secret` at `now` (tests and the README walk-through compute it so).
pub fn code_at(secret: &str, now: i64) -> Option<String> {
    Some(
        totp(secret, "")?
            .generate(u64::try_from(now).ok()?)
            .to_string(),
    )
}

/// Ten fresh recovery codes (shown once) and their stored hashes.
pub fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let code = data_encoding_base32(&bytes);
            let hash = digest(&normalise(&code));
            (format!("{}-{}", &code[..8], &code[8..]), hash)
        })
        .unzip()
}

/// The stored hash of a recovery code as a user types it (dashes, spaces and case do
/// not matter).
pub fn recovery_hash(code: &str) -> String {
    digest(&normalise(code))
}

fn normalise(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Hex SHA-256.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// RFC 4648 base32 without padding: 10 bytes are 16 characters.
fn data_encoding_base32(bytes: &[u8]) -> String {
    totp_rs::Secret::from(bytes.to_vec())
        .to_base32()
        .trim_end_matches('=')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_accepted_once_and_only_near_its_time() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = code_at(&secret, now).unwrap();
        let step = accepted_step(&secret, &code, now, 0).expect("valid now");
        assert_eq!(step, now / 30);
        assert_eq!(accepted_step(&secret, &code, now, step), None, "a replay");
        assert!(
            accepted_step(&secret, &code, now + 30, 0).is_some(),
            "one step of skew"
        );
        assert_eq!(accepted_step(&secret, &code, now + 90, 0), None, "too late");
        assert_eq!(accepted_step(&secret, "12345", now, 0), None);
        assert_eq!(accepted_step(&secret, "abcdef", now, 0), None);
        assert_eq!(
            accepted_step(&new_secret(), &code, now, 0),
            None,
            "another secret"
        );
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_match_however_typed() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::BTreeSet<_> = hashes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let typed = codes[0].to_lowercase().replace('-', " ");
        assert_eq!(recovery_hash(&typed), hashes[0]);
        assert_ne!(recovery_hash(&codes[1]), hashes[0]);
    }

    #[test]
    fn the_enrolment_uri_names_the_issuer_and_account() {
        let secret = new_secret();
        let uri = otpauth_uri(&secret, "ana@example.com").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/TopSmile:ana%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    }
}
