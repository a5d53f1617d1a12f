//! The patients service on MongoDB: collections `patients`, `medicalHistory` and
//! `auditEvents`.
//!
//! A patient is one document; a change is a whole-document replacement conditioned on
//! `version` (one atomic compare-and-swap). `searchName` holds every word-start suffix
//! of the folded name, so the multikey index `{clinicId, searchName}` answers a prefix
//! search on any name word.

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
        Inserted, MongoStore, create_indexes, get_bool, get_i64, get_string, get_time, insert_once,
        is_duplicate_key, list_page, to_bson_time, translate, translate_unique,
    },
};

use super::{AuditEvent, AuditLog, AuditQuery, HistoryStore, PatientStore, request_key};
use crate::domain::{
    Patient, PatientFields, PatientQuery, history::HistoryVersion, prefix_upper_bound,
};

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        (
            "patients",
            // Unique within a clinic, among active patients that have an email.
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "email": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .partial_filter_expression(
                            doc! {"isActive": true, "email": {"$type": "string"}},
                        )
                        .name("clinic_email_active_unique".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "isActive": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_active".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "searchName": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_search_name".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "phoneDigits": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_phone".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "patients",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "requestId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("clinic_request_id_unique".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "auditEvents",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "resource": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_resource".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "auditEvents",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "actor": 1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_actor".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            // Revisions of one patient, newest first (the list's order).
            "medicalHistoryRevisions",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "patientId": 1, "version": -1})
                .options(
                    IndexOptions::builder()
                        .name("clinic_patient_version".to_owned())
                        .build(),
                )
                .build(),
        ),
        (
            "medicalHistory",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "patientId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("clinic_patient".to_owned())
                        .build(),
                )
                .build(),
        ),
    ]
}

pub struct MongoPatients {
    pub store: MongoStore,
    patients: Collection<Document>,
    histories: Collection<Document>,
    revisions: Collection<Document>,
    audit: Collection<Document>,
    sign_in_locks: Collection<Document>,
}

impl MongoPatients {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        // Indexes this service made once and replaced (the email was unique across
        // clinics): dropped if present, so the old constraint no longer applies.
        topsmile_kit::store::mongo::drop_indexes(
            &store.database,
            &[
                ("patients", "email_active_unique"),
                ("patients", "request_id_unique"),
            ],
        )
        .await?;
        create_indexes(&store.database, indexes()).await?;
        create_indexes(
            &store.database,
            topsmile_kit::store::mongo::sign_in_lock_indexes(),
        )
        .await?;
        Ok(Self {
            sign_in_locks: store
                .database
                .collection(topsmile_kit::store::mongo::SIGN_IN_LOCKS),
            patients: store.database.collection("patients"),
            histories: store.database.collection("medicalHistory"),
            revisions: store.database.collection("medicalHistoryRevisions"),
            audit: store.database.collection("auditEvents"),
            store,
        })
    }
}

fn to_document(p: &Patient, request_key: &str) -> Result<Document, StoreError> {
    let address = match &p.fields.address {
        Some(a) => mongodb::bson::to_bson(a)
            .map_err(|e| StoreError::backend(format!("encode address: {e}")))?,
        None => Bson::Null,
    };
    let mut d = doc! {
        "_id": p.id.as_str(),
        "clinicId": p.clinic.as_str(),
        "requestId": request_key,
        "givenName": &p.fields.given_name,
        "familyName": &p.fields.family_name,
        "phone": &p.fields.phone,
        "phoneDigits": p.phone_digits(),
        "dateOfBirth": p.fields.date_of_birth.map(|d| d.to_string()),
        "address": address,
        "passwordHash": p.password_hash.clone(),
        "passwordSetMs": p.password_set_ms,
        "passwordKeptSession": &p.password_kept_session,
        "isActive": p.is_active,
        "searchName": p.search_terms(),
        "createTime": to_bson_time(p.create_time),
        "updateTime": to_bson_time(p.update_time),
        "version": p.version,
    };
    // No email, no field: the partial unique index covers only patients that have one.
    if let Some(email) = &p.fields.email {
        d.insert("email", email);
    }
    Ok(d)
}

fn from_document(d: &Document) -> Result<Patient, StoreError> {
    let id = get_string(d, "_id");
    let address = match d.get("address") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(a)) => Some(
            mongodb::bson::from_document::<PostalAddress>(a.clone())
                .map_err(|e| StoreError::backend(format!("decode address of {id}: {e}")))?,
        ),
        Some(other) => {
            return Err(StoreError::backend(format!(
                "patient {id} address has type {:?}",
                other.element_type()
            )));
        }
    };
    let date_of_birth = match d.get_str("dateOfBirth") {
        Ok(text) => Some(
            text.parse()
                .map_err(|e| StoreError::backend(format!("patient {id} date of birth: {e}")))?,
        ),
        Err(_) => None,
    };
    Ok(Patient {
        clinic: ResourceId::from_stored(get_string(d, "clinicId")),
        fields: PatientFields {
            given_name: get_string(d, "givenName"),
            family_name: get_string(d, "familyName"),
            email: d.get_str("email").ok().map(str::to_owned),
            phone: get_string(d, "phone"),
            date_of_birth,
            address,
        },
        is_active: get_bool(d, "isActive"),
        password_hash: d.get_str("passwordHash").ok().map(str::to_owned),
        password_set_ms: get_i64(d, "passwordSetMs"),
        password_kept_session: get_string(d, "passwordKeptSession"),
        create_time: get_time(d, "createTime"),
        update_time: get_time(d, "updateTime"),
        version: get_i64(d, "version"),
        id: ResourceId::from_stored(id),
    })
}

/// The filter of a patient list (without paging); shared with the query-plan test.
pub fn list_filter(clinic: &ResourceId, query: &PatientQuery) -> Document {
    let mut filter = doc! {"clinicId": clinic.as_str()};
    if let Some(prefix) = &query.name_prefix {
        // $elemMatch keeps both bounds on one array element (and nx-27017 needs it).
        filter.insert(
            "searchName",
            doc! {"$elemMatch": {"$gte": prefix, "$lt": prefix_upper_bound(prefix)}},
        );
    }
    if !query.include_inactive {
        filter.insert("isActive", true);
    }
    if let Some(digits) = &query.phone_digits {
        filter.insert("phoneDigits", digits);
    }
    if let Some(email) = &query.email {
        filter.insert("email", email);
    }
    filter
}

#[async_trait]
impl PatientStore for MongoPatients {
    async fn get_by_email(
        &self,
        clinic: &ResourceId,
        email: &str,
    ) -> Result<Option<Patient>, StoreError> {
        let found = self
            .patients
            .find_one(doc! {"clinicId": clinic.as_str(), "email": email, "isActive": true})
            .await
            .map_err(translate)?;
        found.as_ref().map(from_document).transpose()
    }

    async fn unlock_sign_in(&self, patient: &Patient) -> Result<(), StoreError> {
        topsmile_kit::store::mongo::unlock_sign_in(
            &self.sign_in_locks,
            patient.id.as_str(),
            patient.clinic.as_str(),
        )
        .await
    }

    async fn create(
        &self,
        patient: Patient,
        request_id: Option<&str>,
    ) -> Result<Patient, StoreError> {
        let key = request_key(&patient, request_id);
        match insert_once(&self.patients, to_document(&patient, &key)?, "email").await? {
            Inserted::New => Ok(patient),
            Inserted::Retry(first) => from_document(&first),
        }
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Patient>, StoreError> {
        let found = self
            .patients
            .find_one(doc! {"clinicId": clinic.as_str(), "_id": id.as_str()})
            .await
            .map_err(translate)?;
        found.as_ref().map(from_document).transpose()
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &PatientQuery,
        page: &PageRequest,
    ) -> Result<Vec<Patient>, StoreError> {
        list_page(
            &self.store,
            &self.patients,
            list_filter(clinic, query),
            page,
        )
        .await?
        .iter()
        .map(from_document)
        .collect()
    }

    async fn replace(&self, next: &Patient) -> Result<(), StoreError> {
        let current = self
            .patients
            .find_one(doc! {"clinicId": next.clinic.as_str(), "_id": next.id.as_str()})
            .await
            .map_err(translate)?
            .ok_or(StoreError::NotFound("patient"))?;
        let key = get_string(&current, "requestId");
        let replacement = to_document(next, &key)?;
        let result = self
            .patients
            .replace_one(
                doc! {"clinicId": next.clinic.as_str(), "_id": next.id.as_str(), "version": next.version - 1},
                replacement,
            )
            .await
            .map_err(|e| translate_unique(e, "email"))?;
        if result.matched_count == 1 {
            Ok(())
        } else {
            Err(StoreError::Stale)
        }
    }
}

fn audit_document(e: &AuditEvent) -> Document {
    doc! {
        "_id": e.id.as_str(),
        "clinicId": &e.clinic,
        "actor": &e.actor,
        "actorRole": &e.actor_role,
        "actorKind": &e.actor_kind,
        "action": &e.action,
        "resource": &e.resource,
        "outcome": &e.outcome,
        "time": to_bson_time(e.time),
        "traceId": &e.trace_id,
    }
}

#[async_trait]
impl AuditLog for MongoPatients {
    async fn append(&self, e: &AuditEvent) -> Result<(), StoreError> {
        self.audit
            .insert_one(audit_document(e))
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.audit
            .insert_many(events.iter().map(audit_document))
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn list(
        &self,
        clinic: &str,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut filter = doc! {"clinicId": clinic};
        if let Some(resource) = &query.resource {
            filter.insert("resource", resource);
        }
        if let Some(actor) = &query.actor {
            filter.insert("actor", actor);
        }
        Ok(list_page(&self.store, &self.audit, filter, page)
            .await?
            .iter()
            .map(|d| AuditEvent {
                id: ResourceId::from_stored(get_string(d, "_id")),
                clinic: get_string(d, "clinicId"),
                actor: get_string(d, "actor"),
                actor_role: get_string(d, "actorRole"),
                actor_kind: get_string(d, "actorKind"),
                action: get_string(d, "action"),
                resource: get_string(d, "resource"),
                outcome: get_string(d, "outcome"),
                time: get_time(d, "time"),
                trace_id: get_string(d, "traceId"),
            })
            .collect())
    }
}

fn version_to_bson(v: &HistoryVersion) -> Result<Bson, StoreError> {
    mongodb::bson::to_bson(v).map_err(|e| StoreError::backend(format!("encode history: {e}")))
}

fn version_from_bson(b: &Bson) -> Result<HistoryVersion, StoreError> {
    mongodb::bson::from_bson(b.clone())
        .map_err(|e| StoreError::backend(format!("decode history: {e}")))
}

/// The head document of a history (`medicalHistory`) holds the current version and the
/// one it replaced; every replaced version is also its own document in
/// `medicalHistoryRevisions` (`_id` = `{patient}:{version}`). So no document grows with
/// the number of versions (MongoDB's 16 MB limit), and no multi-document transaction is
/// needed:
///
/// 1. read the head (version N, current, previous);
/// 2. make sure `previous` (N - 1) has its revision document (an insert that a
///    duplicate key makes a no-op: a retry, or a crash after step 3 last time);
/// 3. compare-and-swap the head from N to N + 1, with `previous` = version N: of racing
///    updates exactly one wins, the others are `Stale`;
/// 4. insert version N's revision document (again idempotent).
///
/// A crash between 3 and 4 loses nothing: version N is still the head's `previous`,
/// listed from there, and written out by the next update's step 2.
#[async_trait]
impl HistoryStore for MongoPatients {
    async fn current(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
    ) -> Result<Option<HistoryVersion>, StoreError> {
        let found = self
            .histories
            .find_one(doc! {"clinicId": clinic.as_str(), "_id": patient.as_str()})
            .await
            .map_err(translate)?;
        found
            .map(|d| version_from_bson(d.get("current").unwrap_or(&Bson::Null)))
            .transpose()
    }

    async fn record(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        next: &HistoryVersion,
    ) -> Result<(), StoreError> {
        let current = version_to_bson(next)?;
        if next.version == 1 {
            let first = doc! {
                "_id": patient.as_str(),
                "clinicId": clinic.as_str(),
                "patientId": patient.as_str(),
                "version": 1_i64,
                "current": current,
                "previous": Bson::Null,
            };
            return match self.histories.insert_one(first).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(StoreError::Stale),
                Err(e) => Err(translate(e)),
            };
        }
        let head = doc! {"clinicId": clinic.as_str(), "_id": patient.as_str()};
        let stored = self
            .histories
            .find_one(head.clone())
            .await
            .map_err(translate)?
            .ok_or(StoreError::Stale)?;
        if get_i64(&stored, "version") != next.version - 1 {
            return Err(StoreError::Stale);
        }
        if let Some(previous) = stored.get("previous").filter(|p| !matches!(p, Bson::Null)) {
            self.keep_revision(clinic, patient, previous).await?;
        }
        let replaced = stored.get("current").cloned().unwrap_or(Bson::Null);
        let mut filter = head;
        filter.insert("version", next.version - 1);
        let result = self
            .histories
            .update_one(
                filter,
                doc! {"$set": {
                    "version": next.version,
                    "current": current,
                    "previous": replaced.clone(),
                }},
            )
            .await
            .map_err(translate)?;
        if result.matched_count != 1 {
            return Err(StoreError::Stale);
        }
        self.keep_revision(clinic, patient, &replaced).await
    }

    async fn revisions(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryVersion>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        let mut filter = doc! {
            "clinicId": clinic.as_str(),
            "patientId": patient.as_str(),
            "version": {"$lt": before},
        };
        let mut versions = Vec::new();
        let mut cursor = self
            .revisions
            .find(filter.clone())
            .sort(doc! {"version": -1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(translate)?;
        while cursor.advance().await.map_err(translate)? {
            let document = cursor.deserialize_current().map_err(translate)?;
            versions.push(version_from_bson(
                document.get("content").unwrap_or(&Bson::Null),
            )?);
        }
        // The head's `previous` may not have its own document yet (a crash after the
        // head moved): list it from the head.
        filter.remove("patientId");
        filter.remove("version");
        filter.insert("_id", patient.as_str());
        if let Some(head) = self.histories.find_one(filter).await.map_err(translate)?
            && let Some(previous) = head.get("previous").filter(|p| !matches!(p, Bson::Null))
        {
            let previous = version_from_bson(previous)?;
            if previous.version < before && versions.iter().all(|v| v.version != previous.version) {
                versions.push(previous);
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        versions.truncate(limit);
        Ok(versions)
    }
}

impl MongoPatients {
    /// Writes `version` (a history version in BSON) as its own revision document; one
    /// that is there already (a retry) is fine.
    async fn keep_revision(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        version: &Bson,
    ) -> Result<(), StoreError> {
        let number = version_from_bson(version)?.version;
        let document = doc! {
            "_id": format!("{patient}:{number}"),
            "clinicId": clinic.as_str(),
            "patientId": patient.as_str(),
            "version": number,
            "content": version.clone(),
        };
        match self.revisions.insert_one(document).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(translate(e)),
        }
    }
}

#[async_trait]
impl topsmile_kit::signin::SignInCounters<Patient> for MongoPatients {
    async fn begin_sign_in(
        &self,
        patient: &Patient,
        client: &str,
        now: jiff::Timestamp,
        policy: &topsmile_kit::lockout::LockPolicy,
    ) -> Result<topsmile_kit::lockout::Attempt, StoreError> {
        topsmile_kit::store::mongo::begin_sign_in(
            &self.sign_in_locks,
            patient.id.as_str(),
            patient.clinic.as_str(),
            client,
            now,
            policy,
        )
        .await
    }

    async fn sign_in_succeeded(&self, patient: &Patient, client: &str) -> Result<(), StoreError> {
        topsmile_kit::store::mongo::sign_in_succeeded(
            &self.sign_in_locks,
            patient.id.as_str(),
            patient.clinic.as_str(),
            client,
        )
        .await
    }
}
