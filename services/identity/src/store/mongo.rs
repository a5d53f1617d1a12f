//! Identity on MongoDB: the `clinics` collection.
//!
//! Document fields are camelCase as in the original data model (`name` holds the display
//! name). Changes are whole-document replacements conditioned on `version`, so an update
//! is one atomic compare-and-swap and concurrent writers cannot lose each other's work.

use async_trait::async_trait;
use mongodb::{
    Collection, IndexModel,
    bson::{Bson, Document, doc},
    options::IndexOptions,
};
use topsmile_kit::{
    StoreError,
    address::PostalAddress,
    names::ResourceId,
    paging::PageRequest,
    store::mongo::{
        Inserted, MongoStore, get_bool, get_i64, get_string, get_time, insert_once, list_page,
        to_bson_time, translate, translate_unique,
    },
};

use super::{
    ClinicStore, RefreshRecord, RefreshTokenStore, SESSION_RECORDS_KEPT, SessionRecord,
    SessionStore, Spend, Timeouts, UserStore,
};
use crate::domain::{
    Clinic, ClinicFields,
    clinic::{BookingRules, SessionRules},
    user::{Attempt, LockPolicy, Role, User},
};
use jiff::Timestamp;
use topsmile_kit::auth::Kind;

pub struct MongoIdentity {
    clinics: Collection<Document>,
    users: Collection<Document>,
    refresh_tokens: Collection<Document>,
    sessions: Collection<Document>,
    sign_in_locks: Collection<Document>,
    store: MongoStore,
}

impl MongoIdentity {
    /// Opens the collection and creates its indexes; creating an existing index is a no-op.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        let clinics = store.database.collection::<Document>("clinics");
        let indexes = [
            IndexModel::builder().keys(doc! {"name": 1}).build(),
            IndexModel::builder().keys(doc! {"isActive": 1}).build(),
            IndexModel::builder()
                .keys(doc! {"requestId": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        ];
        clinics.create_indexes(indexes).await.map_err(translate)?;
        // Request ids are unique per clinic (shard-ready: unique keys of tenant
        // collections start with clinicId); the index they replace goes.
        topsmile_kit::store::mongo::drop_indexes(&store.database, &[("users", "requestId_1")])
            .await?;
        let users = store.database.collection::<Document>("users");
        let user_indexes = [
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "requestId": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "role": 1})
                .options(
                    IndexOptions::builder()
                        .partial_filter_expression(doc! {"isActive": true})
                        .build(),
                )
                .build(),
        ];
        users
            .create_indexes(user_indexes)
            .await
            .map_err(translate)?;
        let refresh_tokens = store.database.collection::<Document>("refreshTokens");
        let refresh_indexes = [
            // The TTL monitor deletes a token once `expiresAt` has passed (reads still
            // check expiry: the monitor runs about once a minute).
            IndexModel::builder()
                .keys(doc! {"expiresAt": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(std::time::Duration::ZERO)
                        .build(),
                )
                .build(),
            IndexModel::builder().keys(doc! {"subject": 1}).build(),
            IndexModel::builder().keys(doc! {"family": 1}).build(),
        ];
        refresh_tokens
            .create_indexes(refresh_indexes)
            .await
            .map_err(translate)?;
        let sessions = store.database.collection::<Document>("sessions");
        let session_indexes = [
            // A subject's sessions, newest first (listing, ending all but one).
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "subject": 1, "createdMs": -1})
                .build(),
            // Clean-up only: `expiresAt` lies past any session's absolute lifetime.
            IndexModel::builder()
                .keys(doc! {"expiresAt": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(std::time::Duration::ZERO)
                        .build(),
                )
                .build(),
        ];
        sessions
            .create_indexes(session_indexes)
            .await
            .map_err(translate)?;
        topsmile_kit::store::mongo::create_indexes(
            &store.database,
            topsmile_kit::store::mongo::sign_in_lock_indexes(),
        )
        .await?;
        Ok(Self {
            clinics,
            users,
            refresh_tokens,
            sessions,
            sign_in_locks: store
                .database
                .collection(topsmile_kit::store::mongo::SIGN_IN_LOCKS),
            store,
        })
    }
}

fn to_document(c: &Clinic, request_id: &str) -> Result<Document, StoreError> {
    let address = match &c.fields.address {
        Some(a) => mongodb::bson::to_bson(a)
            .map_err(|e| StoreError::backend(format!("encode address: {e}")))?,
        None => Bson::Null,
    };
    Ok(doc! {
        "_id": c.id.as_str(),
        "requestId": request_id,
        "name": &c.fields.display_name,
        "address": address,
        "phone": &c.fields.phone,
        "email": &c.fields.email,
        "timeZone": &c.fields.time_zone,
        "bookingRules": mongodb::bson::to_bson(&c.fields.booking_rules)
            .map_err(|e| StoreError::backend(format!("encode booking rules: {e}")))?,
        "sessionRules": mongodb::bson::to_bson(&c.fields.session_rules)
            .map_err(|e| StoreError::backend(format!("encode session rules: {e}")))?,
        "isActive": c.is_active,
        "createTime": to_bson_time(c.create_time),
        "updateTime": to_bson_time(c.update_time),
        "version": c.version,
    })
}

fn from_document(d: &Document) -> Result<Clinic, StoreError> {
    let address = match d.get("address") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(a)) => Some(
            mongodb::bson::from_document::<PostalAddress>(a.clone())
                .map_err(|e| StoreError::backend(format!("decode address: {e}")))?,
        ),
        Some(other) => {
            return Err(StoreError::backend(format!(
                "clinic address has type {:?}",
                other.element_type()
            )));
        }
    };
    Ok(Clinic {
        id: ResourceId::from_stored(get_string(d, "_id")),
        fields: ClinicFields {
            display_name: get_string(d, "name"),
            address,
            phone: get_string(d, "phone"),
            email: get_string(d, "email"),
            time_zone: get_string(d, "timeZone"),
            // Clinics stored before booking rules existed read as the defaults.
            booking_rules: match d.get_document("bookingRules") {
                Ok(rules) => mongodb::bson::from_document(rules.clone())
                    .map_err(|e| StoreError::backend(format!("decode booking rules: {e}")))?,
                Err(_) => BookingRules::default(),
            },
            session_rules: match d.get_document("sessionRules") {
                Ok(rules) => mongodb::bson::from_document(rules.clone())
                    .map_err(|e| StoreError::backend(format!("decode session rules: {e}")))?,
                Err(_) => SessionRules::default(),
            },
        },
        is_active: get_bool(d, "isActive"),
        create_time: get_time(d, "createTime"),
        update_time: get_time(d, "updateTime"),
        version: get_i64(d, "version"),
    })
}

#[async_trait]
impl ClinicStore for MongoIdentity {
    async fn create(&self, clinic: Clinic, request_id: Option<&str>) -> Result<Clinic, StoreError> {
        let request_id = request_id.unwrap_or(clinic.id.as_str());
        match insert_once(&self.clinics, to_document(&clinic, request_id)?, "clinic").await? {
            Inserted::New => Ok(clinic),
            Inserted::Retry(first) => from_document(&first),
        }
    }

    async fn get(&self, id: &ResourceId) -> Result<Option<Clinic>, StoreError> {
        let found = self
            .clinics
            .find_one(doc! {"_id": id.as_str()})
            .await
            .map_err(translate)?;
        found.as_ref().map(from_document).transpose()
    }

    async fn list(
        &self,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<Clinic>, StoreError> {
        let filter = if include_inactive {
            doc! {}
        } else {
            doc! {"isActive": true}
        };
        list_page(&self.store, &self.clinics, filter, page)
            .await?
            .iter()
            .map(from_document)
            .collect()
    }

    async fn replace(&self, next: &Clinic) -> Result<(), StoreError> {
        let current = self
            .clinics
            .find_one(doc! {"_id": next.id.as_str()})
            .await
            .map_err(translate)?
            .ok_or(StoreError::NotFound("clinic"))?;
        let request_id = get_string(&current, "requestId");
        let result = self
            .clinics
            .replace_one(
                doc! {"_id": next.id.as_str(), "version": next.version - 1},
                to_document(next, &request_id)?,
            )
            .await
            .map_err(translate)?;
        if result.matched_count == 1 {
            Ok(())
        } else {
            Err(StoreError::Stale)
        }
    }
}

fn user_document(u: &User) -> Document {
    doc! {
        "_id": u.id.as_str(),
        "clinicId": &u.clinic,
        "email": &u.email,
        "displayName": &u.display_name,
        "role": u.role.as_str(),
        "isActive": u.is_active,
        "passwordHash": &u.password_hash,
        "createTime": to_bson_time(u.create_time),
        "updateTime": to_bson_time(u.update_time),
        "version": u.version,
        "mfa": mfa_field(&u.mfa),
    }
}

/// The second factor as stored: one JSON string, read and written whole with the
/// user's compare-and-swap (a string, not a sub-document: nx-27017 reads a
/// sub-document written by `$set` back in another shape; see DESIGN.md).
fn mfa_field(mfa: &crate::domain::mfa::Mfa) -> String {
    serde_json::to_string(mfa).unwrap_or_default()
}

fn mfa_from(d: &Document) -> crate::domain::mfa::Mfa {
    match d.get("mfa") {
        Some(Bson::String(text)) => serde_json::from_str(text).unwrap_or_default(),
        _ => crate::domain::mfa::Mfa::default(),
    }
}

fn user_from(d: &Document) -> Result<User, StoreError> {
    let role = get_string(d, "role");
    Ok(User {
        id: ResourceId::from_stored(get_string(d, "_id")),
        clinic: get_string(d, "clinicId"),
        email: get_string(d, "email"),
        display_name: get_string(d, "displayName"),
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::backend(format!("user has role {role:?}")))?,
        is_active: get_bool(d, "isActive"),
        password_hash: get_string(d, "passwordHash"),
        create_time: get_time(d, "createTime"),
        update_time: get_time(d, "updateTime"),
        version: get_i64(d, "version"),
        mfa: mfa_from(d),
    })
}

#[async_trait]
impl UserStore for MongoIdentity {
    async fn create(&self, user: User, request_id: Option<&str>) -> Result<User, StoreError> {
        let request_key = super::request_key(&user, request_id);
        let mut document = user_document(&user);
        document.insert("requestId", &request_key);
        match insert_once(&self.users, document, "email").await? {
            Inserted::New => Ok(user),
            Inserted::Retry(first) => user_from(&first),
        }
    }

    async fn get(&self, clinic: &str, id: &ResourceId) -> Result<Option<User>, StoreError> {
        let found = self
            .users
            .find_one(doc! {"clinicId": clinic, "_id": id.as_str()})
            .await
            .map_err(translate)?;
        found.as_ref().map(user_from).transpose()
    }

    async fn get_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let found = self
            .users
            .find_one(doc! {"email": email})
            .await
            .map_err(translate)?;
        found.as_ref().map(user_from).transpose()
    }

    async fn list(
        &self,
        clinic: &str,
        role: Option<Role>,
        include_inactive: bool,
        page: &PageRequest,
    ) -> Result<Vec<User>, StoreError> {
        let mut filter = doc! {"clinicId": clinic};
        if !include_inactive {
            filter.insert("isActive", true);
        }
        if let Some(role) = role {
            filter.insert("role", role.as_str());
        }
        list_page(&self.store, &self.users, filter, page)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn update_profile(&self, next: &User) -> Result<(), StoreError> {
        let set = doc! {
            "email": &next.email,
            "displayName": &next.display_name,
            "role": next.role.as_str(),
            "isActive": next.is_active,
            "passwordHash": &next.password_hash,
            "updateTime": to_bson_time(next.update_time),
            "version": next.version,
            "mfa": mfa_field(&next.mfa),
        };
        let result = self
            .users
            .update_one(
                doc! {"clinicId": &next.clinic, "_id": next.id.as_str(), "version": next.version - 1},
                doc! {"$set": set},
            )
            .await
            .map_err(|e| translate_unique(e, "email"))?;
        if result.matched_count == 1 {
            return Ok(());
        }
        match self
            .users
            .find_one(doc! {"clinicId": &next.clinic, "_id": next.id.as_str()})
            .await
            .map_err(translate)?
        {
            Some(_) => Err(StoreError::Stale),
            None => Err(StoreError::NotFound("user")),
        }
    }

    async fn any_super_admin(&self) -> Result<bool, StoreError> {
        let found = self
            .users
            .find_one(doc! {"role": "super_admin", "isActive": true})
            .await
            .map_err(translate)?;
        Ok(found.is_some())
    }

    async fn unlock_sign_in(&self, user: &User) -> Result<(), StoreError> {
        topsmile_kit::store::mongo::unlock_sign_in(
            &self.sign_in_locks,
            user.id.as_str(),
            &user.clinic,
        )
        .await
    }
}

impl MongoIdentity {
    /// Revokes every not yet revoked token that `filter` matches.
    async fn revoke(&self, mut filter: Document, now: Timestamp) -> Result<(), StoreError> {
        filter.insert("revokedAtMs", Bson::Null);
        self.refresh_tokens
            .update_many(filter, doc! {"$set": {"revokedAtMs": now.as_millisecond()}})
            .await
            .map_err(translate)?;
        Ok(())
    }
}

/// Matches the live (unspent, unrevoked, unexpired) tokens.
///
/// Times that updates set or compare are epoch milliseconds (see `unlocked`);
/// `expiresAt` is also kept as a BSON date because the TTL index needs one.
fn live(mut filter: Document, now: Timestamp) -> Document {
    filter.insert("usedAtMs", Bson::Null);
    filter.insert("revokedAtMs", Bson::Null);
    filter.insert("expiresAtMs", doc! {"$gt": now.as_millisecond()});
    filter
}

fn refresh_from(d: &Document) -> RefreshRecord {
    RefreshRecord {
        hash: get_string(d, "_id"),
        subject: get_string(d, "subject"),
        kind: Kind::parse(&get_string(d, "kind")).unwrap_or(Kind::Staff),
        clinic: get_string(d, "clinicId"),
        family: get_string(d, "family"),
        family_created: topsmile_kit::time::from_millis(get_i64(d, "familyCreatedMs")),
        expires_at: topsmile_kit::time::from_millis(get_i64(d, "expiresAtMs")),
    }
}

#[async_trait]
impl RefreshTokenStore for MongoIdentity {
    async fn insert(&self, r: &RefreshRecord) -> Result<(), StoreError> {
        let document = doc! {
            "_id": &r.hash,
            "subject": &r.subject,
            "kind": r.kind.as_str(),
            "clinicId": &r.clinic,
            "family": &r.family,
            "familyCreatedMs": r.family_created.as_millisecond(),
            "expiresAt": to_bson_time(r.expires_at),
            "expiresAtMs": r.expires_at.as_millisecond(),
            "usedAtMs": Bson::Null,
            "revokedAtMs": Bson::Null,
        };
        self.refresh_tokens
            .insert_one(document)
            .await
            .map_err(|e| translate_unique(e, "refresh token"))?;
        Ok(())
    }

    async fn spend(&self, hash: &str, now: Timestamp) -> Result<Spend, StoreError> {
        let spent = self
            .refresh_tokens
            .find_one_and_update(
                live(doc! {"_id": hash}, now),
                doc! {"$set": {"usedAtMs": now.as_millisecond()}},
            )
            .await
            .map_err(translate)?;
        if let Some(d) = spent {
            return Ok(Spend::Fresh(refresh_from(&d)));
        }
        let found = self
            .refresh_tokens
            .find_one(doc! {"_id": hash})
            .await
            .map_err(translate)?;
        Ok(match found.map(|d| refresh_from(&d)) {
            Some(record) if record.expires_at > now => Spend::Reused(record),
            _ => Spend::Unknown,
        })
    }

    async fn revoke_family(&self, family: &str, now: Timestamp) -> Result<(), StoreError> {
        self.revoke(doc! {"family": family}, now).await
    }

    async fn revoke_subject(&self, subject: &str, now: Timestamp) -> Result<(), StoreError> {
        self.revoke(doc! {"subject": subject}, now).await
    }

    async fn evict_oldest(
        &self,
        subject: &str,
        keep: usize,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut cursor = self
            .refresh_tokens
            .find(live(doc! {"subject": subject}, now))
            .sort(doc! {"familyCreatedMs": -1, "family": -1})
            .skip(u64::try_from(keep).unwrap_or(u64::MAX))
            .await
            .map_err(translate)?;
        let mut families = Vec::new();
        while cursor.advance().await.map_err(translate)? {
            families.push(get_string(
                &cursor.deserialize_current().map_err(translate)?,
                "family",
            ));
        }
        for family in families {
            self.revoke_family(&family, now).await?;
        }
        Ok(())
    }
}

fn session_from(d: &Document) -> SessionRecord {
    let ended = match d.get("endedMs") {
        None | Some(Bson::Null) => None,
        Some(_) => Some(topsmile_kit::time::from_millis(get_i64(d, "endedMs"))),
    };
    SessionRecord {
        id: get_string(d, "_id"),
        subject: get_string(d, "subject"),
        kind: Kind::parse(&get_string(d, "kind")).unwrap_or(Kind::Staff),
        clinic: get_string(d, "clinicId"),
        created: topsmile_kit::time::from_millis(get_i64(d, "createdMs")),
        last_used: topsmile_kit::time::from_millis(get_i64(d, "lastUsedMs")),
        ended,
        client_address: get_string(d, "clientAddress"),
        client_label: get_string(d, "clientLabel"),
        method: get_string(d, "method"),
    }
}

/// Matches the sessions of `filter` not yet ended.
fn not_ended(mut filter: Document) -> Document {
    filter.insert("endedMs", Bson::Null);
    filter
}

#[async_trait]
impl SessionStore for MongoIdentity {
    async fn start(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let expires = s
            .created
            .checked_add(SESSION_RECORDS_KEPT)
            .unwrap_or(s.created);
        let document = doc! {
            "_id": &s.id,
            "clinicId": &s.clinic,
            "subject": &s.subject,
            "kind": s.kind.as_str(),
            "createdMs": s.created.as_millisecond(),
            "lastUsedMs": s.last_used.as_millisecond(),
            "endedMs": s.ended.map_or(Bson::Null, |t| Bson::Int64(t.as_millisecond())),
            "clientAddress": &s.client_address,
            "clientLabel": &s.client_label,
            "method": &s.method,
            "expiresAt": to_bson_time(expires),
        };
        self.sessions
            .insert_one(document)
            .await
            .map_err(|e| translate_unique(e, "session"))?;
        Ok(())
    }

    async fn get(&self, clinic: &str, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .sessions
            .find_one(doc! {"_id": id, "clinicId": clinic})
            .await
            .map_err(translate)?
            .map(|d| session_from(&d)))
    }

    async fn touch(
        &self,
        clinic: &str,
        id: &str,
        now: Timestamp,
        timeouts: Timeouts,
    ) -> Result<bool, StoreError> {
        let filter = not_ended(doc! {
            "_id": id,
            "clinicId": clinic,
            "lastUsedMs": {"$gt": timeouts.idle_before.as_millisecond()},
            "createdMs": {"$gt": timeouts.started_before.as_millisecond()},
        });
        let touched = self
            .sessions
            .update_one(filter, doc! {"$max": {"lastUsedMs": now.as_millisecond()}})
            .await
            .map_err(translate)?;
        Ok(touched.matched_count == 1)
    }

    async fn end(
        &self,
        clinic: &str,
        subject: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let ended = self
            .sessions
            .update_one(
                not_ended(doc! {"_id": id, "clinicId": clinic, "subject": subject}),
                doc! {"$set": {"endedMs": now.as_millisecond()}},
            )
            .await
            .map_err(translate)?;
        Ok(ended.modified_count == 1)
    }

    async fn end_all(
        &self,
        clinic: &str,
        subject: &str,
        keep: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut filter = not_ended(doc! {"clinicId": clinic, "subject": subject});
        if let Some(keep) = keep {
            filter.insert("_id", doc! {"$ne": keep});
        }
        let ended = self
            .sessions
            .update_many(filter, doc! {"$set": {"endedMs": now.as_millisecond()}})
            .await
            .map_err(translate)?;
        Ok(ended.modified_count)
    }

    async fn list(
        &self,
        clinic: &str,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut cursor = self
            .sessions
            .find(not_ended(doc! {"clinicId": clinic, "subject": subject}))
            .sort(doc! {"createdMs": -1, "_id": -1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(translate)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(translate)? {
            out.push(session_from(
                &cursor.deserialize_current().map_err(translate)?,
            ));
        }
        Ok(out)
    }
}

#[async_trait]
impl topsmile_kit::signin::SignInCounters<User> for MongoIdentity {
    async fn begin_sign_in(
        &self,
        user: &User,
        client: &str,
        now: Timestamp,
        policy: &LockPolicy,
    ) -> Result<Attempt, StoreError> {
        topsmile_kit::store::mongo::begin_sign_in(
            &self.sign_in_locks,
            user.id.as_str(),
            &user.clinic,
            client,
            now,
            policy,
        )
        .await
    }

    async fn sign_in_succeeded(&self, user: &User, client: &str) -> Result<(), StoreError> {
        topsmile_kit::store::mongo::sign_in_succeeded(
            &self.sign_in_locks,
            user.id.as_str(),
            &user.clinic,
            client,
        )
        .await
    }
}
