//! The providers service on MongoDB: the `providers` collection. Every query names
//! `clinicId`; unique keys start with it.

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
        Inserted, MongoStore, create_indexes, get_bool, get_i64, get_string, insert_once,
        list_page, translate, translate_unique,
    },
    time,
};

use super::{ProviderStore, request_key};
use crate::domain::{Provider, ProviderFields, ProviderQuery};

/// The indexes of this service's collections, as `(collection, index)`.
pub fn indexes() -> Vec<(&'static str, IndexModel)> {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned());
    vec![
        (
            "providers",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "isActive": 1})
                .options(
                    named("clinic_active")
                        .partial_filter_expression(doc! {"isActive": true})
                        .build(),
                )
                .build(),
        ),
        (
            // One provider per user, within a clinic, where a user is linked.
            "providers",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "user": 1})
                .options(
                    named("clinic_user_unique")
                        .unique(true)
                        .partial_filter_expression(doc! {"user": {"$type": "string"}})
                        .build(),
                )
                .build(),
        ),
        (
            "providers",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "specialties": 1})
                .options(named("clinic_specialties").build())
                .build(),
        ),
        (
            "providers",
            IndexModel::builder()
                .keys(doc! {"clinicId": 1, "requestId": 1})
                .options(named("clinic_request_id_unique").unique(true).build())
                .build(),
        ),
    ]
}

pub struct MongoProviders {
    pub store: MongoStore,
    providers: Collection<Document>,
}

impl MongoProviders {
    /// Creates the indexes; creating an index that exists with the same keys and options
    /// is a no-op, so this runs at every start.
    pub async fn open(store: MongoStore) -> Result<Self, StoreError> {
        create_indexes(&store.database, indexes()).await?;
        Ok(Self {
            providers: store.database.collection("providers"),
            store,
        })
    }
}

fn to_document(p: &Provider, request_key: &str) -> Result<Document, StoreError> {
    let fields =
        mongodb::bson::to_bson(&p.fields).map_err(|e| StoreError::caused("encode provider", e))?;
    let mut d = doc! {
        "_id": p.id.as_str(),
        "clinicId": p.clinic.as_str(),
        "requestId": request_key,
        "fields": fields,
        // Beside the fields, for the indexes.
        "specialties": p.fields.specialties.clone(),
        "isActive": p.is_active,
        "createTimeMs": time::to_millis(p.create_time),
        "updateTimeMs": time::to_millis(p.update_time),
        "version": p.version,
    };
    // No user, no field: the partial unique index covers only linked providers.
    if let Some(user) = &p.fields.user {
        d.insert("user", user);
    }
    Ok(d)
}

fn from_document(d: &Document) -> Result<Provider, StoreError> {
    let id = get_string(d, "_id");
    let fields: ProviderFields = match d.get("fields") {
        Some(Bson::Document(f)) => mongodb::bson::from_document(f.clone())
            .map_err(|e| StoreError::caused(format!("decode provider {id}"), e))?,
        _ => return Err(StoreError::backend(format!("provider {id} has no fields"))),
    };
    Ok(Provider {
        clinic: ResourceId::from_stored(get_string(d, "clinicId")),
        fields,
        is_active: get_bool(d, "isActive"),
        create_time: time::from_millis(get_i64(d, "createTimeMs")),
        update_time: time::from_millis(get_i64(d, "updateTimeMs")),
        version: get_i64(d, "version"),
        id: ResourceId::from_stored(id),
    })
}

/// The filter of a provider list (without paging); shared with the query-plan test.
pub fn list_filter(clinic: &ResourceId, query: &ProviderQuery) -> Document {
    let mut filter = doc! {"clinicId": clinic.as_str()};
    if !query.include_inactive {
        filter.insert("isActive", true);
    }
    if let Some(specialty) = &query.specialty {
        // $elemMatch: nx-27017 matches array elements only that way (NX_27017_GAPS);
        // on MongoDB it is the same query.
        filter.insert("specialties", doc! {"$elemMatch": {"$eq": specialty}});
    }
    filter
}

#[async_trait]
impl ProviderStore for MongoProviders {
    async fn create(
        &self,
        provider: Provider,
        request_id: Option<&str>,
    ) -> Result<Provider, StoreError> {
        let key = request_key(&provider, request_id);
        match insert_once(&self.providers, to_document(&provider, &key)?, "user").await? {
            Inserted::New => Ok(provider),
            Inserted::Retry(first) => from_document(&first),
        }
    }

    async fn get(
        &self,
        clinic: &ResourceId,
        id: &ResourceId,
    ) -> Result<Option<Provider>, StoreError> {
        let found = self
            .providers
            .find_one(doc! {"clinicId": clinic.as_str(), "_id": id.as_str()})
            .await
            .map_err(translate)?;
        found.as_ref().map(from_document).transpose()
    }

    async fn list(
        &self,
        clinic: &ResourceId,
        query: &ProviderQuery,
        page: &PageRequest,
    ) -> Result<Vec<Provider>, StoreError> {
        list_page(
            &self.store,
            &self.providers,
            list_filter(clinic, query),
            page,
        )
        .await?
        .iter()
        .map(from_document)
        .collect()
    }

    async fn replace(&self, next: &Provider) -> Result<(), StoreError> {
        let head = doc! {"clinicId": next.clinic.as_str(), "_id": next.id.as_str()};
        let current = self
            .providers
            .find_one(head.clone())
            .await
            .map_err(translate)?
            .ok_or(StoreError::NotFound("provider"))?;
        let replacement = to_document(next, &get_string(&current, "requestId"))?;
        let mut filter = head;
        filter.insert("version", next.version - 1);
        let result = self
            .providers
            .replace_one(filter, replacement)
            .await
            .map_err(|e| translate_unique(e, "user"))?;
        if result.matched_count == 1 {
            Ok(())
        } else {
            Err(StoreError::Stale)
        }
    }
}
