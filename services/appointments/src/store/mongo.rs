//! The appointments service on MongoDB: `appointments` (the seed's field names:
//! `clinicId`, `patientId`, `providerId`, `scheduledStart`, `scheduledEnd`, `status`)
//! and `appointmentClaims`, whose unique index `{clinicId, resource, granule}` keeps
//! appointments from overlapping (see `store::reserve`). No multi-document
//! transaction is used anywhere.

use async_trait::async_trait;
use mongodb::{
    Collection, IndexModel,
    bson::{Bson, Document, doc},
    options::IndexOptions,
};
use topsmile_kit::{
    StoreError,
    names::ResourceId,
    paging::PageRequest,
    store::mongo::{
        MongoStore, create_indexes, get_bool, get_i64, get_string, is_duplicate_key, translate,
    },
};
use topsmile_providers::domain::Span;

use super::{AppointmentQuery, Body, Claim, Columns, Holder, Record, Records, parse_page_key};
use crate::domain::{Appointment, Status};

/// The collection of appointments.
pub const APPOINTMENTS: &str = "appointments";
/// The collection of claims on provider and patient time.
pub const CLAIMS: &str = "appointmentClaims";
/// The collection of portal patients' self-service bookings per day.
pub const BOOKING_DAYS: &str = "patientBookingDays";

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned());
    let index = |keys: Document, options: IndexOptions| {
        IndexModel::builder().keys(keys).options(options).build()
    };
    vec![
        (
            APPOINTMENTS,
            index(
                doc! {"clinicId": 1, "scheduledStart": 1, "status": 1},
                named("clinic_start_status").build(),
            ),
        ),
        (
            APPOINTMENTS,
            index(
                doc! {"providerId": 1, "scheduledStart": 1},
                named("provider_start").build(),
            ),
        ),
        (
            APPOINTMENTS,
            index(
                doc! {"patientId": 1, "scheduledStart": -1},
                named("patient_start").build(),
            ),
        ),
        (
            APPOINTMENTS,
            index(
                doc! {"clinicId": 1, "requestKey": 1},
                named("clinic_request_key_unique").unique(true).build(),
            ),
        ),
        (
            CLAIMS,
            index(
                doc! {"clinicId": 1, "resource": 1, "granule": 1},
                named("clinic_resource_granule_unique").unique(true).build(),
            ),
        ),
        (
            CLAIMS,
            index(
                doc! {"clinicId": 1, "appointmentId": 1},
                named("clinic_appointment").build(),
            ),
        ),
        (
            BOOKING_DAYS,
            index(
                doc! {"clinicId": 1, "patientId": 1, "day": 1},
                named("clinic_patient_day_unique").unique(true).build(),
            ),
        ),
        (
            BOOKING_DAYS,
            index(
                doc! {"expiresAt": 1},
                named("expires_at_ttl")
                    .expire_after(std::time::Duration::ZERO)
                    .build(),
            ),
        ),
    ]
}

pub struct MongoAppointments {
    pub store: MongoStore,
    appointments: Collection<Document>,
    claims: Collection<Document>,
    booking_days: Collection<Document>,
}

impl MongoAppointments {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        create_indexes(&store.database, indexes()).await?;
        Ok(Self {
            appointments: store.database.collection(APPOINTMENTS),
            claims: store.database.collection(CLAIMS),
            booking_days: store.database.collection(BOOKING_DAYS),
            store,
        })
    }
}

fn date(ms: i64) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(ms)
}

fn millis(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        _ => get_i64(d, key),
    }
}

fn to_document(record: &Record) -> Result<Document, StoreError> {
    let (c, body) = record.split();
    let mut d = mongodb::bson::to_document(&body)
        .map_err(|e| StoreError::caused("encode appointment", e))?;
    d.insert("_id", c.id);
    d.insert("clinicId", c.clinic);
    d.insert("patientId", c.patient);
    d.insert("providerId", c.provider);
    d.insert("scheduledStart", date(c.start_ms));
    d.insert("scheduledEnd", date(c.end_ms));
    d.insert("status", c.status);
    d.insert("booked", c.booked);
    d.insert("version", c.version);
    d.insert("requestKey", c.request_key);
    Ok(d)
}

fn from_document(d: Document) -> Result<Record, StoreError> {
    let columns = Columns {
        id: get_string(&d, "_id"),
        clinic: get_string(&d, "clinicId"),
        patient: get_string(&d, "patientId"),
        provider: get_string(&d, "providerId"),
        start_ms: millis(&d, "scheduledStart"),
        end_ms: millis(&d, "scheduledEnd"),
        status: get_string(&d, "status"),
        booked: get_bool(&d, "booked"),
        version: get_i64(&d, "version"),
        request_key: get_string(&d, "requestKey"),
    };
    let body: Body = mongodb::bson::from_document(d)
        .map_err(|e| StoreError::caused(format!("decode appointment {}", columns.id), e))?;
    Record::join(columns, body)
}

fn statuses(list: impl Iterator<Item = Status>) -> Bson {
    Bson::Array(list.map(|s| Bson::String(s.as_str().to_owned())).collect())
}

/// The filter of an appointment list (without paging); shared with the query-plan test.
pub fn list_filter(clinic: &ResourceId, query: &AppointmentQuery) -> Document {
    let mut filter = doc! {"clinicId": clinic.as_str(), "booked": true};
    if let Some(provider) = &query.provider {
        filter.insert("providerId", provider.as_str());
    }
    if let Some(patient) = &query.patient {
        filter.insert("patientId", patient.as_str());
    }
    let mut range = Document::new();
    if let Some(from) = query.from {
        range.insert("$gte", date(from.as_millisecond()));
    }
    if let Some(to) = query.to {
        range.insert("$lt", date(to.as_millisecond()));
    }
    if !range.is_empty() {
        filter.insert("scheduledStart", range);
    }
    if !query.statuses.is_empty() {
        filter.insert(
            "status",
            doc! {"$in": statuses(query.statuses.iter().copied())},
        );
    }
    filter
}

fn claim_document(c: &Claim) -> Document {
    doc! {
        "clinicId": c.clinic.as_str(),
        "resource": &c.resource,
        "granule": c.granule,
        "appointmentId": c.appointment.as_str(),
        "token": &c.token,
        "prev": &c.prev,
    }
}

fn claim_of(d: &Document) -> Claim {
    Claim {
        clinic: ResourceId::from_stored(get_string(d, "clinicId")),
        resource: get_string(d, "resource"),
        granule: get_i64(d, "granule"),
        appointment: ResourceId::from_stored(get_string(d, "appointmentId")),
        token: get_string(d, "token"),
        prev: get_string(d, "prev"),
    }
}

async fn collect(mut cursor: mongodb::Cursor<Document>) -> Result<Vec<Document>, StoreError> {
    let mut out = Vec::new();
    while cursor.advance().await.map_err(translate)? {
        out.push(cursor.deserialize_current().map_err(translate)?);
    }
    Ok(out)
}

#[async_trait]
impl Records for MongoAppointments {
    async fn insert(&self, record: &Record) -> Result<Option<Record>, StoreError> {
        match self.appointments.insert_one(to_document(record)?).await {
            Ok(_) => Ok(None),
            Err(e) if is_duplicate_key(&e) => {
                let first = self
                    .appointments
                    .find_one(doc! {
                        "clinicId": record.appointment.clinic.as_str(),
                        "requestKey": &record.request_key,
                    })
                    .await
                    .map_err(translate)?
                    .ok_or(StoreError::Duplicate("appointment"))?;
                from_document(first).map(Some)
            }
            Err(e) => Err(translate(e)),
        }
    }

    async fn by_request(
        &self,
        clinic: &ResourceId,
        request_key: &str,
    ) -> Result<Option<Record>, StoreError> {
        self.appointments
            .find_one(doc! {"clinicId": clinic.as_str(), "requestKey": request_key})
            .await
            .map_err(translate)?
            .map(from_document)
            .transpose()
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Record>, StoreError> {
        self.appointments
            .find_one(doc! {"clinicId": clinic.as_str(), "_id": id.as_str()})
            .await
            .map_err(translate)?
            .map(from_document)
            .transpose()
    }

    async fn replace(&self, next: &Record, expected: i64) -> Result<bool, StoreError> {
        let a = &next.appointment;
        let result = self
            .appointments
            .replace_one(
                doc! {"clinicId": a.clinic.as_str(), "_id": a.id.as_str(), "version": expected},
                to_document(next)?,
            )
            .await
            .map_err(translate)?;
        Ok(result.matched_count == 1)
    }

    async fn remove_unbooked(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
        expected: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .appointments
            .delete_one(doc! {
                "clinicId": clinic.as_str(),
                "_id": id.as_str(),
                "booked": false,
                "version": expected,
            })
            .await
            .map_err(translate)?;
        Ok(result.deleted_count == 1)
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &AppointmentQuery,
        page: &PageRequest,
    ) -> Result<Vec<Appointment>, StoreError> {
        let mut filter = list_filter(clinic, query);
        if let Some((after_ms, after_id)) = page.after.as_deref().and_then(parse_page_key) {
            filter.insert(
                "$or",
                vec![
                    doc! {"scheduledStart": {"$gt": date(after_ms)}},
                    doc! {"scheduledStart": date(after_ms), "_id": {"$gt": after_id}},
                ],
            );
        }
        let limit = i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX);
        let cursor = self
            .appointments
            .find(filter)
            .sort(doc! {"scheduledStart": 1, "_id": 1})
            .limit(limit)
            .selection_criteria(self.store.list_reads.clone())
            .await
            .map_err(translate)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(|d| from_document(d).map(|r| r.appointment))
            .collect()
    }

    async fn holding(
        &self,
        clinic: &ResourceId,
        holder: Holder,
        id: &ResourceId,
        starts: Span,
    ) -> Result<Vec<Appointment>, StoreError> {
        let field = match holder {
            Holder::Provider => "providerId",
            Holder::Patient => "patientId",
        };
        let cursor = self
            .appointments
            .find(doc! {
                field: id.as_str(),
                "clinicId": clinic.as_str(),
                "scheduledStart": {
                    "$gte": date(starts.start.as_millisecond()),
                    "$lt": date(starts.end.as_millisecond()),
                },
                "booked": true,
                "status": {"$in": statuses(Status::active())},
            })
            .await
            .map_err(translate)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(|d| from_document(d).map(|r| r.appointment))
            .collect()
    }

    async fn insert_claims(&self, claims: &[Claim]) -> Result<bool, StoreError> {
        if claims.is_empty() {
            return Ok(true);
        }
        match self
            .claims
            .insert_many(claims.iter().map(claim_document))
            .ordered(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(translate(e)),
        }
    }

    async fn claims(
        &self,
        clinic: &ResourceId,
        resource: &str,
        first: i64,
        end: i64,
    ) -> Result<Vec<Claim>, StoreError> {
        let cursor = self
            .claims
            .find(doc! {
                "clinicId": clinic.as_str(),
                "resource": resource,
                "granule": {"$gte": first, "$lt": end},
            })
            .await
            .map_err(translate)?;
        Ok(collect(cursor).await?.iter().map(claim_of).collect())
    }

    async fn retoken_claim(
        &self,
        seen: &Claim,
        token: &str,
        prev: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .claims
            .update_one(
                claim_document(seen),
                doc! {"$set": {"token": token, "prev": prev}},
            )
            .await
            .map_err(translate)?;
        Ok(result.matched_count == 1)
    }

    async fn delete_claim(&self, seen: &Claim) -> Result<bool, StoreError> {
        let result = self
            .claims
            .delete_one(claim_document(seen))
            .await
            .map_err(translate)?;
        Ok(result.deleted_count == 1)
    }

    async fn release_claims(
        &self,
        clinic: &ResourceId,
        appointment: &ResourceId,
        token: Option<&str>,
        restore: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut filter = doc! {"clinicId": clinic.as_str(), "appointmentId": appointment.as_str()};
        if let Some(token) = token {
            filter.insert("token", token);
            if let Some(restore) = restore {
                let mut taken_over = filter.clone();
                taken_over.insert("prev", restore);
                self.claims
                    .update_many(taken_over, doc! {"$set": {"token": restore, "prev": ""}})
                    .await
                    .map_err(translate)?;
            }
        }
        self.claims.delete_many(filter).await.map_err(translate)?;
        Ok(())
    }

    async fn count_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
        limit: i64,
        now: jiff::Timestamp,
    ) -> Result<bool, StoreError> {
        if limit < 1 {
            return Ok(false);
        }
        let key = doc! {"clinicId": clinic.as_str(), "patientId": patient.as_str(), "day": day};
        // Increment below the limit; the first of a day is an insert, and of racing
        // first inserts one wins and the others go round to the increment.
        for _ in 0..3 {
            let mut below = key.clone();
            below.insert("count", doc! {"$lt": limit});
            let counted = self
                .booking_days
                .update_one(below, doc! {"$inc": {"count": 1_i64}})
                .await
                .map_err(translate)?;
            if counted.matched_count == 1 {
                return Ok(true);
            }
            let mut first = key.clone();
            first.insert("count", 1_i64);
            let expires = now.checked_add(super::BOOKING_COUNT_KEPT).unwrap_or(now);
            first.insert("expiresAt", date(expires.as_millisecond()));
            match self.booking_days.insert_one(first).await {
                Ok(_) => return Ok(true),
                // The day exists: at the limit, or another booking inserted it first.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(translate(e)),
            }
        }
        Ok(false)
    }

    async fn uncount_self_booking(
        &self,
        clinic: &ResourceId,
        patient: &ResourceId,
        day: &str,
    ) -> Result<(), StoreError> {
        self.booking_days
            .update_one(
                doc! {
                    "clinicId": clinic.as_str(),
                    "patientId": patient.as_str(),
                    "day": day,
                    "count": {"$gt": 0_i64},
                },
                doc! {"$inc": {"count": -1_i64}},
            )
            .await
            .map_err(translate)?;
        Ok(())
    }
}
