//! The repository the providers service needs, and how to open it on either store.
//! Both adapters pass one conformance suite (`tests/conformance.rs`).

pub mod embedded;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    store::{Backend, StoreChoice},
};

use crate::domain::{Provider, ProviderQuery};

/// Providers (`providers`). Every operation names the clinic (shard-ready).
#[async_trait]
pub trait ProviderStore: Send + Sync + 'static {
    /// Inserts `provider`; `Duplicate("user")` if another provider of the clinic is
    /// linked to the same user. If a provider of the same clinic was already created
    /// with `request_id`, returns that one and inserts nothing.
    async fn create(
        &self,
        provider: Provider,
        request_id: Option<&str>,
    ) -> Result<Provider, StoreError>;

    /// The provider `id` of `clinic`, active or not. Read from the primary.
    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Provider>, StoreError>;

    /// Up to `page.fetch_limit()` providers of `clinic` in id (= creation) order after
    /// `page.after`.
    async fn list(
        &self,
        clinic: &ResourceId,
        query: &ProviderQuery,
        page: &PageRequest,
    ) -> Result<Vec<Provider>, StoreError>;

    /// Replaces the stored provider with `next` if the stored version is still
    /// `next.version - 1`: `Stale`, `NotFound`, or `Duplicate("user")`.
    async fn replace(&self, next: &Provider) -> Result<(), StoreError>;
}

/// The stored idempotency key of a create: clinic and request id, or the provider's own
/// id when the client sent none (so the key can be unique without a partial index).
pub fn request_key(provider: &Provider, request_id: Option<&str>) -> String {
    match request_id {
        Some(r) => format!("{}/{r}", provider.clinic),
        None => provider.id.to_string(),
    }
}

/// Opens the store that configuration chose, creating tables and indexes.
pub async fn open(choice: &StoreChoice) -> Result<Arc<dyn ProviderStore>, StoreError> {
    Ok(match choice.connect("topsmile-providers").await? {
        Backend::Embedded(data_dir) => Arc::new(embedded::EmbeddedProviders::open(data_dir).await?),
        Backend::Mongo(store) => Arc::new(mongo::MongoProviders::open(store).await?),
    })
}
