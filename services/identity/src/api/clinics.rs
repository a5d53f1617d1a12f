//! `ClinicService`: the tenants. Creating, listing and deactivating clinics is for
//! super admins (the contract's policy); a clinic's own staff may read it and its admins
//! update it.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError, access::Caller, mask::UpdatePaths, names::ClinicName, paging::PageRequest, time,
    validate,
};
use topsmile_proto::topsmile::identity::v1::{self as pb, clinic_service_server::ClinicService};

use crate::{
    domain::{
        self, Clinic, ClinicInput,
        clinic::{BookingRulesInput, SessionRulesInput},
    },
    store::ClinicStore,
};

pub struct ClinicApi {
    store: Arc<dyn ClinicStore>,
}

impl ClinicApi {
    pub fn new(store: Arc<dyn ClinicStore>) -> Self {
        Self { store }
    }

    async fn create(
        &self,
        req: pb::CreateClinicRequest,
    ) -> Result<pb::CreateClinicResponse, ApiError> {
        let request_id = validate::request_id("request_id", &req.request_id)?;
        let input = req.clinic.map(input_of).unwrap_or_default();
        let fields = domain::validate_fields("clinic", input)?;
        let clinic = self
            .store
            .create(Clinic::new(fields, time::now()), request_id.as_deref())
            .await?;
        tracing::info!(clinic = %clinic.id, "clinic created");
        Ok(pb::CreateClinicResponse {
            clinic: Some(to_proto(clinic)),
        })
    }

    async fn get(
        &self,
        caller: &Caller,
        req: pb::GetClinicRequest,
    ) -> Result<pb::GetClinicResponse, ApiError> {
        let name = ClinicName::parse("name", &req.name)?;
        caller.check_clinic(name.clinic.as_str())?;
        let clinic = self
            .store
            .get(&name.clinic)
            .await?
            .ok_or(ApiError::NotFound("clinic"))?;
        Ok(pb::GetClinicResponse {
            clinic: Some(to_proto(clinic)),
        })
    }

    async fn list(&self, req: pb::ListClinicsRequest) -> Result<pb::ListClinicsResponse, ApiError> {
        let show_inactive = if req.show_inactive { "all" } else { "active" };
        let page = PageRequest::parse(req.page_size, &req.page_token, &[show_inactive])?;
        let clinics = self.store.list(req.show_inactive, &page).await?;
        let (clinics, next_page_token) = page.finish(clinics, |c| c.id.to_string());
        Ok(pb::ListClinicsResponse {
            clinics: clinics.into_iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn update(
        &self,
        caller: &Caller,
        req: pb::UpdateClinicRequest,
    ) -> Result<pb::UpdateClinicResponse, ApiError> {
        let incoming = req
            .clinic
            .ok_or_else(|| ApiError::invalid("clinic", "is required"))?;
        let name = ClinicName::parse("clinic.name", &incoming.name)?;
        caller.check_clinic(name.clinic.as_str())?;
        let etag = incoming.etag.clone();
        let current = self
            .store
            .get(&name.clinic)
            .await?
            .ok_or(ApiError::NotFound("clinic"))?;
        if !current.is_active && !caller.is_super_admin() {
            return Err(topsmile_kit::clinics::inactive());
        }
        if !etag.is_empty() && !current.etag_matches(&etag) {
            return Err(ApiError::Stale);
        }
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = UpdatePaths::resolve(&incoming, &mask, domain::UPDATABLE_FIELDS)?;
        let merged = domain::apply_mask(&current.fields, input_of(incoming), &paths);
        let mut fields = domain::validate_fields("clinic", merged)?;
        let (was, now_required) = (
            current.fields.session_rules.require_mfa_for_all_staff,
            fields.session_rules.require_mfa_for_all_staff,
        );
        // The MFA policy is sensitive; turning it on starts the grace period of the
        // users it newly covers.
        if was != now_required {
            topsmile_kit::access::require_step_up(caller)?;
        }
        fields.session_rules.all_staff_mfa_since = match (was, now_required) {
            (false, true) => time::now().as_second(),
            _ => current.fields.session_rules.all_staff_mfa_since,
        };
        let next = current.changed(fields, current.is_active, time::now());
        self.store.replace(&next).await?;
        Ok(pb::UpdateClinicResponse {
            clinic: Some(to_proto(next)),
        })
    }

    async fn deactivate(
        &self,
        req: pb::DeactivateClinicRequest,
    ) -> Result<pb::DeactivateClinicResponse, ApiError> {
        let name = ClinicName::parse("name", &req.name)?;
        let current = self
            .store
            .get(&name.clinic)
            .await?
            .ok_or(ApiError::NotFound("clinic"))?;
        if !req.etag.is_empty() && !current.etag_matches(&req.etag) {
            return Err(ApiError::Stale);
        }
        if !current.is_active {
            // Deactivating twice changes nothing and is not an error.
            return Ok(pb::DeactivateClinicResponse {
                clinic: Some(to_proto(current)),
            });
        }
        let next = current.changed(current.fields.clone(), false, time::now());
        self.store.replace(&next).await?;
        tracing::info!(clinic = %next.id, "clinic deactivated");
        Ok(pb::DeactivateClinicResponse {
            clinic: Some(to_proto(next)),
        })
    }
}

/// The contract admits only super admins here; checked again so that a handler mounted
/// without the guard still refuses.
fn super_admin<T>(req: &Request<T>) -> Result<(), ApiError> {
    if Caller::of(req)?.is_super_admin() {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied)
    }
}

fn input_of(c: pb::Clinic) -> ClinicInput {
    ClinicInput {
        display_name: c.display_name,
        address: c.address,
        phone: c.phone,
        email: c.email,
        time_zone: c.time_zone,
        booking_rules: c.booking_rules.map(|r| {
            let pair = |d: Option<prost_types::Duration>| d.map(|d| (d.seconds, d.nanos));
            BookingRulesInput {
                minimum_notice: pair(r.minimum_notice),
                booking_horizon: pair(r.booking_horizon),
                slot_step: pair(r.slot_step),
                patient_change_cutoff: pair(r.patient_change_cutoff),
                // 0 (unset in proto3) is the default.
                patient_active_limit: (r.patient_active_limit != 0)
                    .then_some(i64::from(r.patient_active_limit)),
                patient_daily_limit: (r.patient_daily_limit != 0)
                    .then_some(i64::from(r.patient_daily_limit)),
            }
        }),
        session_rules: c.session_rules.map(|r| {
            let pair = |d: Option<prost_types::Duration>| d.map(|d| (d.seconds, d.nanos));
            SessionRulesInput {
                staff_idle_timeout: pair(r.staff_idle_timeout),
                staff_lifetime: pair(r.staff_lifetime),
                patient_idle_timeout: pair(r.patient_idle_timeout),
                patient_lifetime: pair(r.patient_lifetime),
                require_mfa_for_all_staff: r.require_mfa_for_all_staff,
                all_staff_mfa_since: 0,
            }
        }),
    }
}

fn to_proto(c: Clinic) -> pb::Clinic {
    pb::Clinic {
        name: format!("clinics/{}", c.id),
        etag: c.etag(),
        display_name: c.fields.display_name,
        address: c.fields.address.map(Into::into),
        phone: c.fields.phone,
        email: c.fields.email,
        time_zone: c.fields.time_zone,
        booking_rules: Some({
            let r = c.fields.booking_rules;
            let duration = |seconds: i64| Some(prost_types::Duration { seconds, nanos: 0 });
            pb::BookingRules {
                minimum_notice: duration(r.minimum_notice_secs),
                booking_horizon: duration(r.booking_horizon_secs),
                slot_step: duration(r.slot_step_secs),
                patient_change_cutoff: duration(r.patient_change_cutoff_secs),
                patient_active_limit: i32::try_from(r.patient_active_limit).unwrap_or(i32::MAX),
                patient_daily_limit: i32::try_from(r.patient_daily_limit).unwrap_or(i32::MAX),
            }
        }),
        session_rules: Some({
            let r = c.fields.session_rules;
            let duration = |seconds: i64| Some(prost_types::Duration { seconds, nanos: 0 });
            pb::SessionRules {
                staff_idle_timeout: duration(r.staff_idle_secs),
                staff_lifetime: duration(r.staff_lifetime_secs),
                patient_idle_timeout: duration(r.patient_idle_secs),
                patient_lifetime: duration(r.patient_lifetime_secs),
                require_mfa_for_all_staff: r.require_mfa_for_all_staff,
                all_staff_mfa_required_since: (r.all_staff_mfa_since > 0).then_some(
                    prost_types::Timestamp {
                        seconds: r.all_staff_mfa_since,
                        nanos: 0,
                    },
                ),
            }
        }),
        is_active: c.is_active,
        create_time: Some(time::to_proto(c.create_time)),
        update_time: Some(time::to_proto(c.update_time)),
    }
}

#[tonic::async_trait]
impl ClinicService for ClinicApi {
    async fn create_clinic(
        &self,
        req: Request<pb::CreateClinicRequest>,
    ) -> Result<Response<pb::CreateClinicResponse>, Status> {
        super_admin(&req)?;
        Ok(Response::new(self.create(req.into_inner()).await?))
    }

    async fn get_clinic(
        &self,
        req: Request<pb::GetClinicRequest>,
    ) -> Result<Response<pb::GetClinicResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.get(&caller, req.into_inner()).await?))
    }

    async fn list_clinics(
        &self,
        req: Request<pb::ListClinicsRequest>,
    ) -> Result<Response<pb::ListClinicsResponse>, Status> {
        super_admin(&req)?;
        Ok(Response::new(self.list(req.into_inner()).await?))
    }

    async fn update_clinic(
        &self,
        req: Request<pb::UpdateClinicRequest>,
    ) -> Result<Response<pb::UpdateClinicResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.update(&caller, req.into_inner()).await?))
    }

    async fn deactivate_clinic(
        &self,
        req: Request<pb::DeactivateClinicRequest>,
    ) -> Result<Response<pb::DeactivateClinicResponse>, Status> {
        super_admin(&req)?;
        Ok(Response::new(self.deactivate(req.into_inner()).await?))
    }
}
