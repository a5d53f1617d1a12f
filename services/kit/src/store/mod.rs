//! Store set-up shared by every service: the error type repositories return, the MongoDB
//! client with TopSmile's durability settings, and the embedded SQLite database.
//!
//! Each service defines its own repository trait and implements it twice (MongoDB and
//! SQLite); what is common to all of those adapters lives here.

pub mod mongo;
pub mod sqlite;

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::config::StoreConfig;

/// What a repository can fail with. Adapters translate driver errors into these, so
/// handlers never see a driver type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key is taken; the value says which ("email", "slot", ...).
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// A conditional write found another version than the one expected.
    #[error("stale version")]
    Stale,
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The database cannot be reached right now; the call may be retried.
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// Anything else: a bug or a broken database. Logged with its causes, never shown
    /// to clients.
    #[error("store failure: {message}")]
    Backend {
        message: String,
        #[source]
        source: Option<Cause>,
    },
}

/// What a store error wraps: the driver's own error, kept for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// A failure described in words (no underlying error).
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// The database is out of reach, described in words.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A driver's failure, kept as the cause.
    pub fn caused(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(cause.into()),
        }
    }

    /// A driver's "cannot reach the database", kept as the cause.
    pub fn unreachable(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(cause.into()),
        }
    }
}

/// Which store a service runs on, decided by configuration: MongoDB when a URI is set,
/// the embedded store otherwise.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    Embedded {
        data_dir: PathBuf,
    },
    Mongo {
        uri: SecretString,
        database: String,
        list_read_preference: String,
    },
}

/// A chosen store, connected: the directory of the embedded store, or a MongoDB handle.
#[derive(Debug)]
pub enum Backend<'a> {
    Embedded(&'a Path),
    Mongo(mongo::MongoStore),
}

impl StoreChoice {
    /// Connects to MongoDB if it is the choice (`app_name` shows in MongoDB's logs and
    /// `currentOp`); a service then opens its adapter on the result.
    pub async fn connect(&self, app_name: &str) -> Result<Backend<'_>, StoreError> {
        Ok(match self {
            Self::Embedded { data_dir } => Backend::Embedded(data_dir),
            Self::Mongo {
                uri,
                database,
                list_read_preference,
            } => {
                Backend::Mongo(mongo::connect(uri, database, app_name, list_read_preference).await?)
            }
        })
    }

    /// The configuration that chooses this store (the inverse of [`from_config`](Self::from_config)).
    pub fn to_config(&self) -> StoreConfig {
        match self {
            Self::Embedded { data_dir } => StoreConfig {
                data_dir: data_dir.clone(),
                ..StoreConfig::default()
            },
            Self::Mongo {
                uri,
                database,
                list_read_preference,
            } => StoreConfig {
                mongodb_uri: Some(uri.clone()),
                mongodb_database: database.clone(),
                mongodb_list_read_preference: list_read_preference.clone(),
                ..StoreConfig::default()
            },
        }
    }

    pub fn from_config(config: &StoreConfig) -> Self {
        match &config.mongodb_uri {
            Some(uri) => Self::Mongo {
                uri: uri.clone(),
                database: config.mongodb_database.clone(),
                list_read_preference: config.mongodb_list_read_preference.clone(),
            },
            None => Self::Embedded {
                data_dir: config.data_dir.clone(),
            },
        }
    }
}
