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
        MongoStore, get_bool, get_i64, get_string, get_time, to_bson_time, translate,
        translate_unique,
    },
};

use super::ClinicStore;
use crate::domain::{Clinic, ClinicFields};

pub struct MongoClinics {
    clinics: Collection<Document>,
    store: MongoStore,
}

impl MongoClinics {
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
        Ok(Self { clinics, store })
    }
}

fn to_document(c: &Clinic, request_id: &str) -> Result<Document, StoreError> {
    let address = match &c.fields.address {
        Some(a) => mongodb::bson::to_bson(a)
            .map_err(|e| StoreError::Backend(format!("encode address: {e}")))?,
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
                .map_err(|e| StoreError::Backend(format!("decode address: {e}")))?,
        ),
        Some(other) => {
            return Err(StoreError::Backend(format!(
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
        },
        is_active: get_bool(d, "isActive"),
        create_time: get_time(d, "createTime"),
        update_time: get_time(d, "updateTime"),
        version: get_i64(d, "version"),
    })
}

#[async_trait]
impl ClinicStore for MongoClinics {
    async fn create(&self, clinic: Clinic, request_id: Option<&str>) -> Result<Clinic, StoreError> {
        let request_id = request_id.unwrap_or(clinic.id.as_str());
        match self
            .clinics
            .insert_one(to_document(&clinic, request_id)?)
            .await
        {
            Ok(_) => Ok(clinic),
            Err(e) if topsmile_kit::store::mongo::is_duplicate_key(&e) => {
                // The unique requestId index decided the race: return the first result.
                let existing = self
                    .clinics
                    .find_one(doc! {"requestId": request_id})
                    .await
                    .map_err(translate)?
                    .ok_or(StoreError::Duplicate("clinic"))?;
                from_document(&existing)
            }
            Err(e) => Err(translate_unique(e, "clinic")),
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
        let mut filter = doc! {};
        if let Some(after) = &page.after {
            filter.insert("_id", doc! {"$gt": after});
        }
        if !include_inactive {
            filter.insert("isActive", true);
        }
        let limit = i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX);
        let mut cursor = self
            .clinics
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(limit)
            .selection_criteria(self.store.list_reads.clone())
            .await
            .map_err(translate)?;
        let mut clinics = Vec::new();
        while cursor.advance().await.map_err(translate)? {
            let d = cursor.deserialize_current().map_err(translate)?;
            clinics.push(from_document(&d)?);
        }
        Ok(clinics)
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
