//! The repository identity needs, and how to open it on either store.

pub mod embedded;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    signin::SignInCounters,
    store::{Backend, StoreChoice},
};

use crate::domain::{
    Clinic,
    user::{Role, User},
};
use jiff::Timestamp;
use topsmile_kit::auth::Kind;

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

/// Staff users, as identity stores them.
#[async_trait]
pub trait UserStore: SignInCounters<User> + Send + Sync + 'static {
    /// Inserts a user; `Duplicate("email")` if the email is taken (by anyone, active or
    /// not). If a user of the same clinic was already created with `request_id`, returns
    /// that one and inserts nothing: a retried create never makes a duplicate.
    async fn create(&self, user: User, request_id: Option<&str>) -> Result<User, StoreError>;

    /// The user `id` of `clinic` (`-` for super admins): every read of a tenant
    /// collection names its clinic, so it routes to one shard.
    async fn get(&self, clinic: &str, id: &ResourceId) -> Result<Option<User>, StoreError>;

    /// By normalised (lower-case) email. Always read from the primary: it decides sign-ins.
    async fn get_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Up to `page.fetch_limit()` users of one clinic in id order after `page.after`.
    async fn list(
        &self,
        clinic: &str,
        role: Option<Role>,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<User>, StoreError>;

    /// Writes the profile (email, name, role, active, password hash, update time,
    /// version) if the stored version is `next.version - 1`. Sign-in counters are left
    /// alone. `Stale`, `NotFound`, or `Duplicate("email")`.
    async fn update_profile(&self, next: &User) -> Result<(), StoreError>;

    /// Whether any active super admin exists (for the bootstrap account).
    async fn any_super_admin(&self) -> Result<bool, StoreError>;

    /// An admin unlocked `user`: every sign-in counter of it is gone.
    async fn unlock_sign_in(&self, user: &User) -> Result<(), StoreError>;
}

/// A refresh token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// The user (or patient) id the token signs in.
    pub subject: String,
    pub kind: Kind,
    /// The subject's clinic (or `-` for a super admin).
    pub clinic: String,
    /// The session family (`sid`): every token from one sign-in shares it.
    pub family: String,
    pub family_created: Timestamp,
    pub expires_at: Timestamp,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq)]
pub enum Spend {
    /// It was live and is now spent: issue its successor.
    Fresh(RefreshRecord),
    /// It was spent or revoked already: someone replays it. Revoke the family.
    Reused(RefreshRecord),
    /// No such token, or it expired.
    Unknown,
}

/// Refresh tokens (`refreshTokens`): one live token per session family.
#[async_trait]
pub trait RefreshTokenStore: Send + Sync + 'static {
    async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError>;

    /// Spends the token in one atomic conditional update: of racing presenters of one
    /// live token exactly one gets `Fresh`. Expiry is checked here too, not left to the
    /// TTL monitor, which may run a minute late.
    async fn spend(&self, hash: &str, now: Timestamp) -> Result<Spend, StoreError>;

    /// Revokes every token of a session family (logout, replay).
    async fn revoke_family(&self, family: &str, now: Timestamp) -> Result<(), StoreError>;

    /// Revokes every token of a subject (password change, deactivation).
    async fn revoke_subject(&self, subject: &str, now: Timestamp) -> Result<(), StoreError>;

    /// Revokes the oldest live families of `subject` beyond the newest `keep`.
    async fn evict_oldest(
        &self,
        subject: &str,
        keep: usize,
        now: Timestamp,
    ) -> Result<(), StoreError>;
}

/// A session as stored: one sign-in, the refresh-token family it starts (`sid`).
///
/// The session, not its refresh tokens, says whether access continues: every guard
/// asks about it (see `topsmile_kit::sessions`), and a refresh continues it only
/// while it is live. Times that updates set or compare are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The session id: the tokens' `sid` and the refresh family.
    pub id: String,
    /// The user id, or the patient's resource name (as refresh records key).
    pub subject: String,
    pub kind: Kind,
    /// The subject's clinic (or `-` for a super admin).
    pub clinic: String,
    pub created: Timestamp,
    /// The sign-in, or the latest refresh.
    pub last_used: Timestamp,
    /// When it was ended (sign-out, an admin, a password change, eviction, timeout).
    pub ended: Option<Timestamp>,
    /// The client address it signed in from.
    pub client_address: String,
    /// What the client called itself at sign-in (its user agent), for the owner to
    /// recognise the session by; at most [`CLIENT_LABEL_MAX`] characters.
    pub client_label: String,
    /// How it signed in: `pwd` (a password), `otp` (password and second factor) or
    /// `mfa_enrolment` (a password, and the session may only enrol in MFA). Its tokens,
    /// refreshed ones too, say so.
    pub method: String,
}

/// How long a session record is kept after it started, for clean-up only (the TTL
/// index; every read still checks the record): longer than any absolute lifetime.
pub const SESSION_RECORDS_KEPT: jiff::SignedDuration = jiff::SignedDuration::from_hours(31 * 24);

/// The longest client label kept.
pub const CLIENT_LABEL_MAX: usize = 200;

/// When a session counts as timed out: last used at or before `idle_before`, or
/// created at or before `started_before`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub idle_before: Timestamp,
    pub started_before: Timestamp,
}

impl SessionRecord {
    /// Whether calls and refreshes may continue it.
    pub fn is_live(&self, timeouts: Timeouts) -> bool {
        self.ended.is_none()
            && self.last_used > timeouts.idle_before
            && self.created > timeouts.started_before
    }
}

/// Sessions (`sessions`): one document per sign-in, read by every revocation check.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records a new session.
    async fn start(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The session `id` of `clinic`, ended or not. Always read from the primary: it
    /// decides whether calls go on.
    async fn get(&self, clinic: &str, id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Marks the session used at `now`, in one conditional update, if it is still live
    /// under `timeouts`; returns whether it was (a refresh continues only then).
    async fn touch(
        &self,
        clinic: &str,
        id: &str,
        now: Timestamp,
        timeouts: Timeouts,
    ) -> Result<bool, StoreError>;

    /// Ends the session `id` of `subject` in `clinic` if it has not ended; returns
    /// whether this call ended it (false: unknown, someone else's, or already over).
    async fn end(
        &self,
        clinic: &str,
        subject: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Ends every session of `subject` except `keep` (the caller's own, when a
    /// password change ends the others); returns how many it ended.
    async fn end_all(
        &self,
        clinic: &str,
        subject: &str,
        keep: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// The sessions of `subject` not yet ended, newest first, at most `limit`.
    async fn list(
        &self,
        clinic: &str,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError>;
}

/// The stored idempotency key of a create: the clinic's request id, or the user's own id
/// when the client sent none (so the column can be unique without partial indexes).
pub(crate) fn request_key(user: &User, request_id: Option<&str>) -> String {
    match request_id {
        Some(r) => format!("{}/{r}", user.clinic),
        None => user.id.to_string(),
    }
}

/// Every repository identity uses.
#[derive(Clone)]
pub struct Stores {
    pub clinics: Arc<dyn ClinicStore>,
    pub users: Arc<dyn UserStore>,
    pub refresh_tokens: Arc<dyn RefreshTokenStore>,
    pub sessions: Arc<dyn SessionStore>,
}

/// Opens the store that configuration chose, creating indexes (idempotently).
pub async fn open(choice: &StoreChoice) -> Result<Stores, StoreError> {
    Ok(match choice.connect("topsmile-identity").await? {
        Backend::Embedded(data_dir) => {
            let store = Arc::new(embedded::EmbeddedIdentity::open(data_dir).await?);
            Stores {
                clinics: store.clone(),
                users: store.clone(),
                refresh_tokens: store.clone(),
                sessions: store,
            }
        }
        Backend::Mongo(store) => {
            let store = Arc::new(mongo::MongoIdentity::open(store).await?);
            Stores {
                clinics: store.clone(),
                users: store.clone(),
                refresh_tokens: store.clone(),
                sessions: store,
            }
        }
    })
}
