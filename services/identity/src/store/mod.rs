//! The repository identity needs, and how to open it on either store.

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

use crate::domain::Clinic;

/// Clinics, as identity stores them.
#[async_trait]
pub trait ClinicStore: Send + Sync + 'static {
    /// Inserts `clinic`. If a clinic was already created with `request_id`, returns that
    /// one instead and inserts nothing: a retried create never makes a duplicate.
    async fn create(&self, clinic: Clinic, request_id: Option<&str>) -> Result<Clinic, StoreError>;

    /// The clinic with this id, active or not. Always read from the primary.
    async fn get(&self, id: &ResourceId) -> Result<Option<Clinic>, StoreError>;

    /// Up to `page.fetch_limit()` clinics in id (= creation) order, after `page.after`.
    async fn list(
        &self,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<Clinic>, StoreError>;

    /// Replaces the stored clinic with `next` if the stored version is still
    /// `next.version - 1`: `Stale` if another write came first, `NotFound` if it is gone.
    async fn replace(&self, next: &Clinic) -> Result<(), StoreError>;
}

/// Opens the store that configuration chose, creating indexes (idempotently).
pub async fn open(choice: &StoreChoice) -> Result<Arc<dyn ClinicStore>, StoreError> {
    Ok(match choice.connect("topsmile-identity").await? {
        Backend::Embedded(data_dir) => Arc::new(embedded::EmbeddedClinics::open(data_dir).await?),
        Backend::Mongo(store) => Arc::new(mongo::MongoClinics::open(store).await?),
    })
}
