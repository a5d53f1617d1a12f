//! The providers service's store: opened on the embedded SQLite store or on MongoDB,
//! with its collections and indexes created idempotently at start-up.
//!
//! The repository operations arrive with the providers issue; the collections, indexes
//! and the way the store is chosen are fixed now so deployments can prepare them.

pub mod embedded;
pub mod mongo;

use std::sync::Arc;

use topsmile_kit::{
    StoreError,
    store::{Backend, StoreChoice},
};

/// The providers repository. Its operations, named for what they mean, arrive with the
/// providers issue together with the conformance suite that both adapters must pass.
pub trait ProviderStore: Send + Sync + 'static {}

/// Opens the store that configuration chose, creating tables and indexes.
pub async fn open(choice: &StoreChoice) -> Result<Arc<dyn ProviderStore>, StoreError> {
    Ok(match choice.connect("topsmile-providers").await? {
        Backend::Embedded(data_dir) => Arc::new(embedded::EmbeddedProviders::open(data_dir).await?),
        Backend::Mongo(store) => Arc::new(mongo::MongoProviders::open(store).await?),
    })
}
