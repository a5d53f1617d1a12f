//! gRPC handlers of the providers service: proto in, caller and tenancy checks, domain
//! rules, repository, proto out.
//!
//! Who sees what: staff of the clinic (and super admins) see every field; a patient
//! (portal token) sees the active providers of their own clinic, and of each only the
//! public view ([`public_view`]): name, display name, specialties and default
//! appointment length. Who changes what: ADMINs manage providers; a PROVIDER changes
//! the schedule ([`SCHEDULE_FIELDS`]) of the provider linked to their own user, nothing
//! else.

use tonic::{Request, Response, Status, server::NamedService, service::Routes};
use topsmile_kit::{
    ApiError, FieldViolation,
    access::{Actor, Caller},
    audit::AuditTrail,
    clinics::ClinicDirectory,
    config::ServerLimits,
    mask::UpdatePaths,
    names::{ClinicName, ClinicScopedName, ResourceId},
    paging::{MAX_PAGE_SIZE, PageRequest},
    time, validate,
};
use topsmile_proto::{
    google::r#type::{Date, DayOfWeek},
    topsmile::{
        auth::v1::Role,
        identity::v1::UserRole,
        providers::v1::{
            self as pb,
            provider_internal_service_server::{
                ProviderInternalService, ProviderInternalServiceServer,
            },
            provider_service_server::{ProviderService, ProviderServiceServer},
        },
    },
};

use crate::{
    domain::{
        Interval, Provider, ProviderFields, ProviderInput, ProviderQuery, SCHEDULE_FIELDS,
        UPDATABLE_FIELDS, validate_fields,
    },
    store::ProviderStore,
};

use std::sync::Arc;

/// The gRPC services mounted by [`routes`].
pub const SERVED: &[&str] = &[
    ProviderServiceServer::<ProviderApi>::NAME,
    ProviderInternalServiceServer::<InternalApi>::NAME,
];

/// `ProviderService` on `store`; `clinics` is identity, asked whether a clinic is still
/// active before its providers change, and whether a linked user is a PROVIDER of the
/// clinic.
pub fn routes(
    store: Arc<dyn ProviderStore>,
    clinics: ClinicDirectory,
    trail: AuditTrail,
    limits: &ServerLimits,
) -> Routes {
    let max = limits.max_message_bytes;
    Routes::new(
        ProviderServiceServer::new(ProviderApi {
            store: store.clone(),
            clinics,
            trail,
            page_bytes: max / 2,
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    )
    .add_service(
        ProviderInternalServiceServer::new(InternalApi { store })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}

/// `ProviderInternalService`: what the appointments service reads to check bookings.
pub struct InternalApi {
    store: Arc<dyn ProviderStore>,
}

/// The audit trail's names of the changes.
const CREATE: &str = "ProviderService/CreateProvider";
const UPDATE: &str = "ProviderService/UpdateProvider";
const DEACTIVATE: &str = "ProviderService/DeactivateProvider";

/// The most providers one clinic's bookable list holds.
pub const MAX_BOOKABLE: usize = 1000;

#[tonic::async_trait]
impl ProviderInternalService for InternalApi {
    async fn list_bookable_providers(
        &self,
        req: Request<pb::ListBookableProvidersRequest>,
    ) -> Result<Response<pb::ListBookableProvidersResponse>, Status> {
        let req = req.into_inner();
        let parent = ClinicName::parse("parent", &req.parent).map_err(ApiError::from)?;
        if !req.provider.is_empty() {
            let name = ClinicScopedName::parse("provider", "providers", &req.provider)
                .map_err(ApiError::from)?;
            let found = match self.store.get(&name.clinic, &name.id).await {
                Ok(Some(p)) if p.clinic == parent.clinic && name.clinic == parent.clinic => p,
                Ok(_) => return Err(ApiError::NotFound("provider").into()),
                Err(e) => return Err(ApiError::from(e).into()),
            };
            return Ok(Response::new(pb::ListBookableProvidersResponse {
                providers: vec![to_proto(&found)],
            }));
        }
        let query = ProviderQuery::default();
        let mut providers = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut page =
                PageRequest::parse(i32::try_from(MAX_PAGE_SIZE).unwrap_or(i32::MAX), "", &[])
                    .map_err(ApiError::from)?;
            page.after = after.take();
            let found = self
                .store
                .list(&parent.clinic, &query, &page)
                .await
                .map_err(ApiError::from)?;
            let more = found.len() > page.size;
            for p in found.into_iter().take(page.size) {
                after = Some(p.id.to_string());
                providers.push(to_proto(&p));
            }
            if !more || providers.len() >= MAX_BOOKABLE {
                break;
            }
        }
        providers.truncate(MAX_BOOKABLE);
        Ok(Response::new(pb::ListBookableProvidersResponse {
            providers,
        }))
    }
}

/// What a booking needs of a provider, read back from its full proto form.
#[derive(Debug, Clone, PartialEq)]
pub struct Bookable {
    pub id: ResourceId,
    pub is_active: bool,
    pub schedule: crate::domain::Schedule,
    pub default_duration_secs: i64,
    pub buffer_before_secs: i64,
    pub buffer_after_secs: i64,
}

/// A provider as `ListBookableProviders` answers it, back in domain terms (the same
/// rules that let it in); `None` for one that does not read back (never ours).
pub fn bookable_of(p: pb::Provider) -> Option<Bookable> {
    let name = ClinicScopedName::parse("name", "providers", &p.name).ok()?;
    let is_active = p.is_active;
    let mut violations = Vec::new();
    let fields = validate_fields("provider", input_of(p, &mut violations)).ok()?;
    if !violations.is_empty() {
        return None;
    }
    let provider = Provider {
        id: name.id.clone(),
        clinic: name.clinic,
        fields,
        is_active,
        create_time: jiff::Timestamp::UNIX_EPOCH,
        update_time: jiff::Timestamp::UNIX_EPOCH,
        version: 0,
    };
    Some(Bookable {
        id: name.id,
        is_active,
        schedule: provider.schedule(),
        default_duration_secs: provider.fields.default_duration_secs,
        buffer_before_secs: provider.fields.buffer_before_secs,
        buffer_after_secs: provider.fields.buffer_after_secs,
    })
}

pub struct ProviderApi {
    store: Arc<dyn ProviderStore>,
    clinics: ClinicDirectory,
    /// Every change (create, update, deactivate) is announced and its outcome recorded.
    trail: AuditTrail,
    /// About the most bytes of providers one list page holds (one always fits).
    page_bytes: usize,
}

impl ProviderApi {
    /// The named provider, for `caller`. Another clinic's name is PERMISSION_DENIED
    /// before anything is read; for a patient, a deactivated provider does not exist.
    async fn load(&self, actor: &Actor, field: &str, name: &str) -> Result<Provider, ApiError> {
        let name = ClinicScopedName::parse(field, "providers", name)?;
        actor.caller.check_clinic(name.clinic.as_str())?;
        match self.store.get(&name.clinic, &name.id).await? {
            Some(p) if p.clinic == name.clinic && (p.is_active || !actor.is_patient()) => Ok(p),
            _ => Err(ApiError::NotFound("provider")),
        }
    }

    async fn create(
        &self,
        actor: &Actor,
        req: pb::CreateProviderRequest,
    ) -> Result<Provider, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        actor.caller.check_clinic(parent.clinic.as_str())?;
        let mut violations = Vec::new();
        let request_id = validate::request_id("request_id", &req.request_id)
            .map_err(|v| violations.push(v))
            .ok()
            .flatten();
        let incoming = req.provider.unwrap_or_default();
        let user = linked_user(&parent.clinic, &incoming.user, &mut violations);
        let mut input = input_of(incoming, &mut violations);
        input.user = user.as_ref().map(|u| u.id.to_string());
        let fields = validate_fields("provider", input).map_err(|mut v| {
            violations.append(&mut v);
            std::mem::take(&mut violations)
        })?;
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
        if let Some(user) = &user {
            self.check_user(actor, user).await?;
        }
        let provider = Provider::new(parent.clinic, fields, time::now());
        self.clinics
            .require_writable(&actor.caller, &provider.clinic, &actor.bearer)
            .await?;
        self.trail
            .audit(actor, CREATE, &provider.name(), "PENDING")
            .await?;
        Ok(self.store.create(provider, request_id.as_deref()).await?)
    }

    async fn list(
        &self,
        actor: &Actor,
        req: &pb::ListProvidersRequest,
    ) -> Result<pb::ListProvidersResponse, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        actor.caller.check_clinic(parent.clinic.as_str())?;
        let specialty = if req.specialty.trim().is_empty() {
            None
        } else {
            Some(validate::required_text("specialty", &req.specialty, 60)?.to_lowercase())
        };
        let query = ProviderQuery {
            specialty,
            // Patients see active providers only, whatever they ask for.
            include_inactive: req.show_inactive && !actor.is_patient(),
        };
        let parent_text = parent.to_string();
        let inactive = query.include_inactive.to_string();
        let specialty = query.specialty.clone().unwrap_or_default();
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            &[&parent_text, &specialty, &inactive],
        )?;
        let found = self.store.list(&parent.clinic, &query, &page).await?;
        let views: Vec<pb::Provider> = found.iter().map(|p| view_for(actor, p)).collect::<Vec<_>>();
        let keyed: Vec<(String, pb::Provider)> =
            found.iter().map(|p| p.id.to_string()).zip(views).collect();
        let (page_items, next_page_token) = page.finish_within(
            keyed,
            |(id, _)| id.clone(),
            |(_, view)| prost::Message::encoded_len(view),
            (MAX_PAGE_SIZE, self.page_bytes),
        );
        Ok(pb::ListProvidersResponse {
            providers: page_items.into_iter().map(|(_, view)| view).collect(),
            next_page_token,
        })
    }

    async fn update(
        &self,
        actor: &Actor,
        req: pb::UpdateProviderRequest,
    ) -> Result<Provider, ApiError> {
        let incoming = req
            .provider
            .ok_or_else(|| ApiError::invalid("provider", "is required"))?;
        let current = self.load(actor, "provider.name", &incoming.name).await?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = UpdatePaths::resolve(&incoming, &mask, UPDATABLE_FIELDS)?;
        if actor.caller.role() == Role::Provider
            && !(is_linked_to(&current, &actor.caller) && paths.all_within(SCHEDULE_FIELDS))
        {
            // A provider keeps their own calendar; who they are is the ADMIN's to say.
            return Err(ApiError::PermissionDenied);
        }
        if !incoming.etag.is_empty() && !current.etag_matches(&incoming.etag) {
            return Err(ApiError::Stale);
        }
        let mut violations = Vec::new();
        let user = if paths.contains("user") {
            linked_user(&current.clinic, &incoming.user, &mut violations)
        } else {
            None
        };
        let mut changes = input_of(incoming, &mut violations);
        changes.user = user.as_ref().map(|u| u.id.to_string());
        let merged = ProviderInput::from_fields(&current.fields).merged(changes, &paths);
        let fields = validate_fields("provider", merged).map_err(|mut v| {
            violations.append(&mut v);
            std::mem::take(&mut violations)
        })?;
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
        if let Some(user) = &user
            && current.fields.user.as_deref() != Some(user.id.as_str())
        {
            self.check_user(actor, user).await?;
        }
        let next = current.changed(fields, current.is_active, time::now());
        self.clinics
            .require_writable(&actor.caller, &next.clinic, &actor.bearer)
            .await?;
        self.trail
            .audit(actor, UPDATE, &next.name(), "PENDING")
            .await?;
        self.store.replace(&next).await?;
        Ok(next)
    }

    async fn deactivate(
        &self,
        actor: &Actor,
        req: &pb::DeactivateProviderRequest,
    ) -> Result<Provider, ApiError> {
        let current = self.load(actor, "name", &req.name).await?;
        if !req.etag.is_empty() && !current.etag_matches(&req.etag) {
            return Err(ApiError::Stale);
        }
        if !current.is_active {
            return Ok(current);
        }
        let next = current.changed(current.fields.clone(), false, time::now());
        self.clinics
            .require_writable(&actor.caller, &next.clinic, &actor.bearer)
            .await?;
        self.trail
            .audit(actor, DEACTIVATE, &next.name(), "PENDING")
            .await?;
        self.store.replace(&next).await?;
        Ok(next)
    }

    /// INVALID_ARGUMENT unless `user` is an active PROVIDER-role user (identity is
    /// asked with the caller's token; `user` is already known to be of the clinic).
    async fn check_user(&self, actor: &Actor, user: &ClinicScopedName) -> Result<(), ApiError> {
        let problem = match self.clinics.staff_user(user, &actor.bearer).await {
            Ok(facts) if facts.role != UserRole::Provider => {
                "must be a user with the PROVIDER role"
            }
            Ok(facts) if !facts.is_active => "is deactivated",
            Ok(_) => return Ok(()),
            Err(ApiError::NotFound(_)) => "is not a user of this clinic",
            Err(other) => return Err(other),
        };
        Err(ApiError::invalid("provider.user", problem))
    }
}

/// The user a request links, parsed: a name of the provider's own clinic, or `None`
/// for an empty one (no link). Anything else is a violation; another clinic's user is
/// refused here, before identity is asked.
fn linked_user(
    clinic: &ResourceId,
    name: &str,
    violations: &mut Vec<FieldViolation>,
) -> Option<ClinicScopedName> {
    if name.is_empty() {
        return None;
    }
    match ClinicScopedName::parse("provider.user", "users", name) {
        Ok(user) if &user.clinic == clinic => Some(user),
        Ok(_) => {
            violations.push(FieldViolation::new(
                "provider.user",
                "must be a user of the provider's own clinic",
            ));
            None
        }
        Err(v) => {
            violations.push(v);
            None
        }
    }
}

/// Whether `provider` is linked to the staff user who is calling.
fn is_linked_to(provider: &Provider, caller: &Caller) -> bool {
    provider
        .fields
        .user
        .as_ref()
        .is_some_and(|user| caller.subject() == format!("clinics/{}/users/{user}", provider.clinic))
}

/// The request's provider as domain input; timestamps and durations that cannot be read
/// are violations (the rest is the domain's to judge).
fn input_of(p: pb::Provider, violations: &mut Vec<FieldViolation>) -> ProviderInput {
    let raw = |intervals: &[pb::TimeInterval]| -> Vec<(i32, i32)> {
        intervals
            .iter()
            .map(|i| (i.start_minute, i.end_minute))
            .collect()
    };
    let time_off = p
        .time_off
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut millis = |field: &str, ts: &Option<prost_types::Timestamp>| {
                ts.as_ref().and_then(|ts| {
                    time::from_proto(&format!("provider.time_off[{i}].{field}"), ts)
                        .map_err(|v| violations.push(v))
                        .ok()
                        .map(time::to_millis)
                })
            };
            let start = millis("start_time", &t.start_time);
            let end = millis("end_time", &t.end_time);
            (start, end, t.reason.clone())
        })
        .collect();
    let mut secs = |field: &str, d: Option<prost_types::Duration>| {
        let d = d?;
        if d.nanos != 0 {
            violations.push(FieldViolation::new(
                format!("provider.{field}"),
                "must be whole minutes",
            ));
            return None;
        }
        Some(d.seconds)
    };
    ProviderInput {
        default_duration_secs: secs(
            "default_appointment_duration",
            p.default_appointment_duration,
        ),
        buffer_before_secs: secs("buffer_before", p.buffer_before),
        buffer_after_secs: secs("buffer_after", p.buffer_after),
        display_name: p.display_name,
        email: p.email,
        phone: p.phone,
        specialties: p.specialties,
        license_number: p.license_number,
        user: None,
        working_hours: p
            .working_hours
            .iter()
            .map(|d| (d.day, raw(&d.intervals)))
            .collect(),
        overrides: p
            .date_overrides
            .iter()
            .map(|o| {
                let date = o
                    .date
                    .as_ref()
                    .map_or((0, 0, 0), |d| (d.year, d.month, d.day));
                (date, raw(&o.intervals))
            })
            .collect(),
        time_off,
    }
}

fn intervals_of(hours: &[Interval]) -> Vec<pb::TimeInterval> {
    hours
        .iter()
        .map(|i| pb::TimeInterval {
            start_minute: i32::from(i.start_minute),
            end_minute: i32::from(i.end_minute),
        })
        .collect()
}

fn duration_of(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos: 0,
    })
}

/// Every field, for staff.
pub fn to_proto(p: &Provider) -> pb::Provider {
    let f: &ProviderFields = &p.fields;
    const WEEKDAYS: [DayOfWeek; 7] = [
        DayOfWeek::Monday,
        DayOfWeek::Tuesday,
        DayOfWeek::Wednesday,
        DayOfWeek::Thursday,
        DayOfWeek::Friday,
        DayOfWeek::Saturday,
        DayOfWeek::Sunday,
    ];
    pb::Provider {
        name: p.name(),
        display_name: f.display_name.clone(),
        email: f.email.clone(),
        phone: f.phone.clone(),
        specialties: f.specialties.clone(),
        license_number: f.license_number.clone(),
        user: f
            .user
            .as_ref()
            .map(|u| format!("clinics/{}/users/{u}", p.clinic))
            .unwrap_or_default(),
        working_hours: WEEKDAYS
            .iter()
            .zip(&f.weekly)
            .filter(|(_, hours)| !hours.is_empty())
            .map(|(day, hours)| pb::WorkingDay {
                day: *day as i32,
                intervals: intervals_of(hours),
            })
            .collect(),
        time_off: f
            .time_off
            .iter()
            .map(|t| pb::TimeOff {
                start_time: Some(time::to_proto(time::from_millis(t.start_ms))),
                end_time: Some(time::to_proto(time::from_millis(t.end_ms))),
                reason: t.reason.clone(),
            })
            .collect(),
        default_appointment_duration: duration_of(f.default_duration_secs),
        buffer_before: duration_of(f.buffer_before_secs),
        buffer_after: duration_of(f.buffer_after_secs),
        is_active: p.is_active,
        create_time: Some(time::to_proto(p.create_time)),
        update_time: Some(time::to_proto(p.update_time)),
        etag: p.etag(),
        date_overrides: f
            .overrides
            .iter()
            .filter_map(|(date, hours)| {
                let date = date.parse::<jiff::civil::Date>().ok()?;
                Some(pb::DateOverride {
                    date: Some(Date {
                        year: i32::from(date.year()),
                        month: i32::from(date.month()),
                        day: i32::from(date.day()),
                    }),
                    intervals: intervals_of(hours),
                })
            })
            .collect(),
    }
}

/// What a patient may see of a provider: who they are and how long a visit takes; not
/// how to reach them, their licence, their user or their calendar.
pub fn public_view(p: &Provider) -> pb::Provider {
    pb::Provider {
        name: p.name(),
        display_name: p.fields.display_name.clone(),
        specialties: p.fields.specialties.clone(),
        default_appointment_duration: duration_of(p.fields.default_duration_secs),
        is_active: p.is_active,
        ..pb::Provider::default()
    }
}

fn view_for(actor: &Actor, p: &Provider) -> pb::Provider {
    if actor.is_patient() {
        public_view(p)
    } else {
        to_proto(p)
    }
}

#[tonic::async_trait]
impl ProviderService for ProviderApi {
    async fn create_provider(
        &self,
        req: Request<pb::CreateProviderRequest>,
    ) -> Result<Response<pb::CreateProviderResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let parent = req.parent.clone();
        let result = self.create(&actor, req).await;
        let resource = result.as_ref().map_or(parent, Provider::name);
        let provider = self.trail.record(&actor, CREATE, &resource, result).await?;
        Ok(Response::new(pb::CreateProviderResponse {
            provider: Some(to_proto(&provider)),
        }))
    }

    async fn get_provider(
        &self,
        req: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::GetProviderResponse>, Status> {
        let actor = Actor::of(&req)?;
        let provider = self.load(&actor, "name", &req.get_ref().name).await?;
        Ok(Response::new(pb::GetProviderResponse {
            provider: Some(view_for(&actor, &provider)),
        }))
    }

    async fn list_providers(
        &self,
        req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let actor = Actor::of(&req)?;
        Ok(Response::new(self.list(&actor, req.get_ref()).await?))
    }

    async fn update_provider(
        &self,
        req: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::UpdateProviderResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let name = req
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let result = self.update(&actor, req).await;
        let provider = self.trail.record(&actor, UPDATE, &name, result).await?;
        Ok(Response::new(pb::UpdateProviderResponse {
            provider: Some(to_proto(&provider)),
        }))
    }

    async fn deactivate_provider(
        &self,
        req: Request<pb::DeactivateProviderRequest>,
    ) -> Result<Response<pb::DeactivateProviderResponse>, Status> {
        let actor = Actor::of(&req)?;
        let result = self.deactivate(&actor, req.get_ref()).await;
        let provider = self
            .trail
            .record(&actor, DEACTIVATE, &req.get_ref().name, result)
            .await?;
        Ok(Response::new(pb::DeactivateProviderResponse {
            provider: Some(to_proto(&provider)),
        }))
    }
}
