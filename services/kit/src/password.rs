//! Password hashing: argon2id with OWASP's minimum cost (m = 19 MiB, t = 2, p = 1), PHC
//! strings, run on the blocking pool behind a semaphore.
//!
//! Each hash holds 19 MiB for tens of milliseconds of CPU. Running it on the async
//! workers would stall every other call, and running an unbounded number at once would
//! let a login flood exhaust memory; the semaphore queues the excess instead.
//! A sign-in for an unknown account is checked against a dummy hash, so neither the
//! answer nor its timing tells a stranger which emails exist.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::ApiError;

/// Memory cost in KiB (OWASP's minimum for argon2id).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over memory.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// Common passwords of 12 characters or more, refused whatever their length.
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// The password policy of every TopSmile account, staff and patients (NIST SP 800-63B):
/// 12 to 128 characters (characters, not bytes: "é" counts once); not only whitespace;
/// no control characters; not one of the bundled common passwords (compared without
/// regard to case), nor a run of one to four characters repeated ("aaaaaaaaaaaa",
/// "abcabcabcabc"). No composition rules: length is what makes a password strong.
pub fn check_policy(field: &str, value: &str) -> Result<(), crate::FieldViolation> {
    let refuse = |why: &str| Err(crate::FieldViolation::new(field, why));
    let chars: Vec<char> = value.chars().collect();
    if !(12..=128).contains(&chars.len()) {
        return refuse("must be 12 to 128 characters");
    }
    if chars.iter().all(|c| c.is_whitespace()) {
        return refuse("must not be only whitespace");
    }
    if chars.iter().any(|c| c.is_control()) {
        return refuse("must not contain control characters");
    }
    let repeated = (1..=4).any(|period| {
        chars.len().is_multiple_of(period)
            && chars
                .iter()
                .enumerate()
                .all(|(i, c)| *c == chars[i % period])
    });
    let lowered = value.to_lowercase();
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.trim() == lowered);
    if repeated || common {
        return refuse("is too common or too easy to guess: choose another");
    }
    Ok(())
}

/// Hashes and verifies passwords; cheap to clone, share one per process.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    argon: Argon2<'static>,
    permits: Semaphore,
    /// A real hash of a random password: unknown accounts are verified against it.
    dummy: String,
    verifications: AtomicU64,
    guesses: AtomicU64,
}

impl Passwords {
    /// `max_parallel` hashes run at once (each holds [`MEMORY_KIB`] of memory); the rest wait.
    pub fn new(max_parallel: usize) -> Result<Self, crate::config::StartupError> {
        let hashing = |e: String| crate::config::StartupError::Hashing(e);
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
            .map_err(|e| hashing(format!("argon2 params: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let random = SaltString::generate(&mut rand::rngs::OsRng);
        let dummy = argon
            .hash_password(
                random.as_str().as_bytes(),
                &SaltString::generate(&mut rand::rngs::OsRng),
            )
            .map_err(|e| hashing(format!("argon2: {e}")))?
            .to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                argon,
                permits: Semaphore::new(max_parallel.max(1)),
                dummy,
                verifications: AtomicU64::new(0),
                guesses: AtomicU64::new(0),
            }),
        })
    }

    /// One hash slot per core: hashing is CPU-bound, more at once only adds memory.
    pub fn for_this_machine() -> Result<Self, crate::config::StartupError> {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: &SecretString) -> Result<String, ApiError> {
        let password = password.clone();
        self.run(move |inner| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            inner
                .argon
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
        })
        .await
    }

    /// Whether `password` matches `phc`; with no `phc` (no such account) it checks the
    /// dummy hash and answers `false`, taking the same time as a real check.
    pub async fn verify(
        &self,
        password: &SecretString,
        phc: Option<&str>,
    ) -> Result<bool, ApiError> {
        let password = password.clone();
        let known = phc.is_some();
        let phc = phc.map(str::to_owned);
        self.run(move |inner| {
            inner.verifications.fetch_add(1, Ordering::Relaxed);
            if known {
                inner.guesses.fetch_add(1, Ordering::Relaxed);
            }
            let phc = phc.as_deref().unwrap_or(&inner.dummy);
            let parsed = PasswordHash::new(phc)
                .map_err(|e| ApiError::Internal(format!("stored hash: {e}")))?;
            let matches = inner
                .argon
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok();
            Ok(matches && known)
        })
        .await
    }

    /// Password checks run so far, against real and dummy hashes alike.
    pub fn verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Checks against a real account's hash so far: the guesses that could have
    /// succeeded (tests use it to prove that a locked account is not guessed at).
    pub fn guesses_checked(&self) -> u64 {
        self.inner.guesses.load(Ordering::Relaxed)
    }

    async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, ApiError> + Send + 'static,
    {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("password hashing is shutting down".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| ApiError::Internal(format!("hash task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_follows_nist_800_63b() {
        for ok in [
            "correct horse battery",
            "josé's portal password",
            "ana's long password",
        ] {
            assert_eq!(check_policy("p", ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "short",
            &"x".repeat(129),
            "            ",
            "tab\tinside password",
            "Password1234",
            "PASSWORD1234",
            "qwertyuiop123",
            "aaaaaaaaaaaa",
            "abcabcabcabc",
            "abcdabcdabcd",
        ] {
            assert!(check_policy("p", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let passwords = Passwords::new(2).unwrap();
        let right = SecretString::from("correct horse battery staple");
        let phc = passwords.hash(&right).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(passwords.verify(&right, Some(&phc)).await.unwrap());
        let wrong = SecretString::from("correct horse battery stapler");
        assert!(!passwords.verify(&wrong, Some(&phc)).await.unwrap());
        assert_eq!(passwords.verifications(), 2);
    }

    #[tokio::test]
    async fn an_unknown_account_is_checked_against_the_dummy_and_never_matches() {
        let passwords = Passwords::new(1).unwrap();
        let any = SecretString::from("whatever it may be");
        assert!(!passwords.verify(&any, None).await.unwrap());
        assert_eq!(passwords.verifications(), 1, "the dummy hash was checked");
    }
}
