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
                .keys(doc! {"requestId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("request_id_unique".to_owned())
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
            &[("patients", "email_active_unique")],
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
            audit: store.database.collection("auditEvents"),
            store,
        })
    }
}

fn to_document(p: &Patient, request_key: &str) -> Result<Document, StoreError> {
    let address = match &p.fields.address {
        Some(a) => mongodb::bson::to_bson(a)
            .map_err(|e| StoreError::Backend(format!("encode address: {e}")))?,
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
                .map_err(|e| StoreError::Backend(format!("decode address of {id}: {e}")))?,
        ),
        Some(other) => {
            return Err(StoreError::Backend(format!(
                "patient {id} address has type {:?}",
                other.element_type()
            )));
        }
    };
    let date_of_birth = match d.get_str("dateOfBirth") {
        Ok(text) => Some(
            text.parse()
                .map_err(|e| StoreError::Backend(format!("patient {id} date of birth: {e}")))?,
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

    async fn get(&self, id: &ResourceId) -> Result<Option<Patient>, StoreError> {
        let found = self
            .patients
            .find_one(doc! {"_id": id.as_str()})
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
            .find_one(doc! {"_id": next.id.as_str()})
            .await
            .map_err(translate)?
            .ok_or(StoreError::NotFound("patient"))?;
        let key = get_string(&current, "requestId");
        let mut replacement = to_document(next, &key)?;
        // Sign-in counters are not part of the record: carry them over.
        for counter in ["failedLogins", "lockedUntilMs", "lockCount"] {
            if let Some(value) = current.get(counter) {
                replacement.insert(counter, value.clone());
            }
        }
        let result = self
            .patients
            .replace_one(
                doc! {"_id": next.id.as_str(), "version": next.version - 1},
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

#[async_trait]
impl AuditLog for MongoPatients {
    async fn append(&self, e: &AuditEvent) -> Result<(), StoreError> {
        self.audit
            .insert_one(doc! {
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
            })
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
    mongodb::bson::to_bson(v).map_err(|e| StoreError::Backend(format!("encode history: {e}")))
}

fn version_from_bson(b: &Bson) -> Result<HistoryVersion, StoreError> {
    mongodb::bson::from_bson(b.clone())
        .map_err(|e| StoreError::Backend(format!("decode history: {e}")))
}

/// A history document: the current version, and every version it replaced, kept in
/// the same document so that replacing and keeping are one atomic write.
#[async_trait]
impl HistoryStore for MongoPatients {
    async fn current(&self, patient: &ResourceId) -> Result<Option<HistoryVersion>, StoreError> {
        let found = self
            .histories
            .find_one(doc! {"_id": patient.as_str()})
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
                "revisions": [],
            };
            return match self.histories.insert_one(first).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(StoreError::Stale),
                Err(e) => Err(translate(e)),
            };
        }
        let stored = self
            .histories
            .find_one(doc! {"_id": patient.as_str()})
            .await
            .map_err(translate)?
            .ok_or(StoreError::Stale)?;
        let previous = stored.get("current").cloned().unwrap_or(Bson::Null);
        let mut revisions = stored.get_array("revisions").cloned().unwrap_or_default();
        revisions.push(previous);
        let replacement = doc! {
            "_id": patient.as_str(),
            "clinicId": clinic.as_str(),
            "patientId": patient.as_str(),
            "version": next.version,
            "current": current,
            "revisions": revisions,
        };
        let result = self
            .histories
            .replace_one(
                doc! {"_id": patient.as_str(), "version": next.version - 1},
                replacement,
            )
            .await
            .map_err(translate)?;
        if result.matched_count == 1 {
            Ok(())
        } else {
            Err(StoreError::Stale)
        }
    }

    async fn revisions(
        &self,
        patient: &ResourceId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryVersion>, StoreError> {
        let Some(stored) = self
            .histories
            .find_one(doc! {"_id": patient.as_str()})
            .await
            .map_err(translate)?
        else {
            return Ok(Vec::new());
        };
        let mut versions = stored
            .get_array("revisions")
            .map(|a| {
                a.iter()
                    .map(version_from_bson)
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|_| Ok(Vec::new()))?;
        versions.retain(|v| before.is_none_or(|b| v.version < b));
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        versions.truncate(limit);
        Ok(versions)
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
