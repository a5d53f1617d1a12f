//! Identity's signing keys, kept in a key file (`topsmile keys rotate` adds one).
//!
//! The file is re-read when it changes, so a rotation takes effect without a restart:
//! `GetJwks` publishes the new key at once (beside retired ones that may still have live
//! tokens) and new tokens are signed with it once its hand-over time has come.

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
    ring: Arc<KeyRing>,
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
                public: Arc::new(ring.public_keys()),
                ring: Arc::new(ring),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key that signs new tokens now.
    pub fn issuer(&self) -> Result<TokenIssuer, ApiError> {
        self.fresh()?
            .ring
            .issuer()
            .map_err(|e| ApiError::Internal(e.to_string()))
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
            public: Arc::new(ring.public_keys()),
            ring: Arc::new(ring),
        };
        tracing::info!(path = %self.path.display(), "signing keys reloaded");
        if let Ok(mut current) = self.current.write() {
            *current = reloaded.clone();
        }
        Ok(reloaded)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
