//! Identity's signing keys, kept in a key file (`topsmile keys rotate` adds one).
//!
//! The file is re-read when it changes, so a rotation takes effect without a restart:
//! new tokens are signed with the new key and `GetJwks` publishes it with the retired
//! ones that may still have live tokens.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use topsmile_kit::{
    ApiError,
    auth::{KeyError, KeyRing, PublicKey, TokenIssuer},
};

pub struct SigningKeys {
    path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    modified: Option<SystemTime>,
    issuer: Arc<TokenIssuer>,
    public: Arc<Vec<PublicKey>>,
}

impl SigningKeys {
    /// Loads the key file, creating it with a first key if there is none.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let ring = KeyRing::load_or_create(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Loaded {
                modified: modified(path),
                issuer: Arc::new(ring.issuer()?),
                public: Arc::new(ring.public_keys()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key that signs new tokens.
    pub fn issuer(&self) -> Result<Arc<TokenIssuer>, ApiError> {
        Ok(self.fresh()?.issuer)
    }

    /// Every key a live token may carry: the JWKS.
    pub fn public_keys(&self) -> Result<Arc<Vec<PublicKey>>, ApiError> {
        Ok(self.fresh()?.public)
    }

    fn fresh(&self) -> Result<Loaded, ApiError> {
        let loaded = self
            .current
            .read()
            .map_err(|_| ApiError::Internal("key lock poisoned".into()))?
            .clone();
        let on_disk = modified(&self.path);
        if on_disk == loaded.modified {
            return Ok(loaded);
        }
        let ring = KeyRing::load(&self.path).map_err(|e| ApiError::Internal(e.to_string()))?;
        let reloaded = Loaded {
            modified: on_disk,
            issuer: Arc::new(
                ring.issuer()
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            public: Arc::new(ring.public_keys()),
        };
        tracing::info!(kid = reloaded.issuer.kid(), "signing keys reloaded");
        if let Ok(mut current) = self.current.write() {
            *current = reloaded.clone();
        }
        Ok(reloaded)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
