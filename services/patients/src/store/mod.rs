//! The repositories the patients service needs, and how to open them on either store.

pub mod embedded;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    signin::SignInCounters,
    store::{Backend, StoreChoice},
};

use crate::domain::{Patient, PatientQuery, history::HistoryVersion};

/// Patients, as the patients service stores them.
#[async_trait]
pub trait PatientStore: SignInCounters<Patient> + Send + Sync + 'static {
    /// Inserts `patient`; `Duplicate("email")` if an active patient of the same clinic
    /// has its email. If a
    /// patient of the same clinic was already created with `request_id`, returns that
    /// one and inserts nothing: a retried create never makes a duplicate.
    async fn create(
        &self,
        patient: Patient,
        request_id: Option<&str>,
    ) -> Result<Patient, StoreError>;

    /// The patient with this id, active or not. Read from the primary.
    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Patient>, StoreError>;

    /// Up to `page.fetch_limit()` patients of `clinic` matching `query`, in id (=
    /// creation) order after `page.after`. Served by an index on both stores.
    async fn list(
        &self,
        clinic: &ResourceId,
        query: &PatientQuery,
        page: &PageRequest,
    ) -> Result<Vec<Patient>, StoreError>;

    /// Replaces the stored patient with `next` if the stored version is still
    /// `next.version - 1`: `Stale`, `NotFound`, or `Duplicate("email")`. Sign-in
    /// counters are left alone.
    async fn replace(&self, next: &Patient) -> Result<(), StoreError>;

    /// The active patient of `clinic` with this (normalised) email, for portal sign-in
    /// (an email is unique within a clinic, not across clinics). Read from the primary.
    async fn get_by_email(
        &self,
        clinic: &ResourceId,
        email: &str,
    ) -> Result<Option<Patient>, StoreError>;

    /// An admin unlocked the patient's portal sign-in: every counter of it is gone.
    async fn unlock_sign_in(&self, patient: &Patient) -> Result<(), StoreError>;
}

/// Medical histories (`medicalHistory`): one current version per patient and every
/// version it replaced.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// The current version, or `None` when nothing was recorded yet. Read from the
    /// primary: updates are decided on it.
    async fn current(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
    ) -> Result<Option<HistoryVersion>, StoreError>;

    /// Records `next` if the stored version is still `next.version - 1` (0: nothing yet),
    /// keeping the version it replaces as a revision in the same atomic write. `Stale`
    /// if another update came first: of racing updates on one etag exactly one wins.
    async fn record(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        next: &HistoryVersion,
    ) -> Result<(), StoreError>;

    /// Replaced versions, newest first, older than version `before` (all when `None`),
    /// at most `limit`.
    async fn revisions(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryVersion>, StoreError>;
}

/// One access to patient data, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Time-ordered id.
    pub id: ResourceId,
    /// The clinic whose data was touched (or aimed at).
    pub clinic: String,
    /// The caller's subject (a user, patient or service name).
    pub actor: String,
    pub actor_role: String,
    pub actor_kind: String,
    /// The method, e.g. `PatientService/GetPatient`.
    pub action: String,
    /// The resource name the call named.
    pub resource: String,
    /// `OK` or the gRPC code name of the refusal (`PERMISSION_DENIED`, ...).
    pub outcome: String,
    pub time: Timestamp,
    /// The W3C trace id of the call, when it carried one.
    pub trace_id: String,
}

/// What an audit listing selects (always within one clinic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub resource: Option<String>,
    pub actor: Option<String>,
}

/// The append-only audit trail (`auditEvents`): nothing updates or deletes an event.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends one event, durably (majority write on MongoDB) before the call answers.
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Appends events in one durable write (one transaction; one majority-acknowledged
    /// `insert_many`): the group commit of events of calls arriving together.
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError>;

    /// Events of `clinic` in time order after `page.after`.
    async fn list(
        &self,
        clinic: &str,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}

/// The stored idempotency key of a create: clinic and request id, or the patient's own
/// id when the client sent none (so the column can be unique without a partial index).
pub fn request_key(patient: &Patient, request_id: Option<&str>) -> String {
    match request_id {
        Some(r) => format!("{}/{r}", patient.clinic),
        None => patient.id.to_string(),
    }
}

/// Every repository the patients service uses.
#[derive(Clone)]
pub struct Stores {
    pub patients: Arc<dyn PatientStore>,
    pub histories: Arc<dyn HistoryStore>,
    pub audit: Arc<dyn AuditLog>,
}

/// Opens the store that configuration chose, creating tables and indexes.
pub async fn open(choice: &StoreChoice) -> Result<Stores, StoreError> {
    Ok(match choice.connect("topsmile-patients").await? {
        Backend::Embedded(data_dir) => {
            let store = Arc::new(embedded::EmbeddedPatients::open(data_dir).await?);
            Stores {
                patients: store.clone(),
                histories: store.clone(),
                audit: store,
            }
        }
        Backend::Mongo(store) => {
            let store = Arc::new(mongo::MongoPatients::open(store).await?);
            Stores {
                patients: store.clone(),
                histories: store.clone(),
                audit: store,
            }
        }
    })
}
