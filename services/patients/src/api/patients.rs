//! `PatientService`. Staff of a clinic work on its patients; a patient (portal token)
//! may read their own record, change how to reach them and their own password, and
//! nothing else: any other patient's id is NOT_FOUND to them.

use secrecy::SecretString;
use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError,
    access::Caller,
    clinics::ClinicDirectory,
    mask::UpdatePaths,
    names::{ClinicName, ClinicScopedName},
    paging::PageRequest,
    password::check_policy,
    signin::SignIn,
    time, validate,
};
use topsmile_proto::topsmile::{
    auth::v1::Role,
    patients::v1::{self as pb, patient_service_server::PatientService},
};

use super::audit::{Actor, Trail};
use crate::{
    domain::{self, CONTACT_FIELDS, Patient, PatientInput, PatientQuery},
    store::Stores,
};

pub struct PatientApi {
    stores: Stores,
    trail: Trail,
    sign_in: SignIn,
    clinics: ClinicDirectory,
}

/// The latest calendar date anywhere on Earth (UTC+14): a date of birth after it is in
/// the future wherever the clinic is.
fn latest_today() -> jiff::civil::Date {
    let ahead = time::now()
        .checked_add(jiff::SignedDuration::from_hours(14))
        .unwrap_or_else(|_| time::now());
    ahead.to_zoned(jiff::tz::TimeZone::UTC).date()
}

impl PatientApi {
    pub fn new(stores: Stores, trail: Trail, sign_in: SignIn, clinics: ClinicDirectory) -> Self {
        Self {
            stores,
            trail,
            sign_in,
            clinics,
        }
    }

    async fn load(&self, caller: &Caller, field: &str, name: &str) -> Result<Patient, ApiError> {
        load_patient(&self.stores, caller, field, name).await
    }

    async fn create(
        &self,
        actor: &Actor,
        req: pb::CreatePatientRequest,
    ) -> Result<Patient, ApiError> {
        let caller = &actor.caller;
        let parent = ClinicName::parse("parent", &req.parent)?;
        caller.check_clinic(parent.clinic.as_str())?;
        let request_id = validate::request_id("request_id", &req.request_id)?;
        let input = req.patient.map(input_of).unwrap_or_default();
        let fields = domain::validate_fields("patient", input, latest_today())?;
        let patient = Patient::new(parent.clinic, fields, time::now());
        self.clinics
            .require_writable(&actor.caller, &patient.clinic, &actor.bearer)
            .await?;
        self.trail
            .intent(actor, "PatientService/CreatePatient", &patient.name())
            .await?;
        let patient = self
            .stores
            .patients
            .create(patient, request_id.as_deref())
            .await?;
        Ok(patient)
    }

    async fn list(
        &self,
        caller: &Caller,
        req: &pb::ListPatientsRequest,
    ) -> Result<pb::ListPatientsResponse, ApiError> {
        let parent = ClinicName::parse("parent", &req.parent)?;
        caller.check_clinic(parent.clinic.as_str())?;
        let mut violations = Vec::new();
        let name_prefix = Some(domain::search_name(&req.name_query, "")).filter(|q| !q.is_empty());
        let phone_digits = Some(domain::digits(&req.phone)).filter(|d| !d.is_empty());
        if !req.phone.trim().is_empty() && phone_digits.as_ref().is_none_or(|d| d.len() < 3) {
            violations.push(topsmile_kit::FieldViolation::new(
                "phone",
                "give at least 3 digits",
            ));
        }
        let email = if req.email.trim().is_empty() {
            None
        } else {
            validate::email("email", &req.email)
                .map_err(|v| violations.push(v))
                .ok()
        };
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
        let query = PatientQuery {
            name_prefix,
            phone_digits,
            email,
            include_inactive: req.show_inactive,
        };
        let mut fingerprint = query.fingerprint();
        fingerprint.push(parent.to_string());
        let parts: Vec<&str> = fingerprint.iter().map(String::as_str).collect();
        let page = PageRequest::parse(req.page_size, &req.page_token, &parts)?;
        let patients = self
            .stores
            .patients
            .list(&parent.clinic, &query, &page)
            .await?;
        let (patients, next_page_token) = page.finish(patients, |p| p.id.to_string());
        Ok(pb::ListPatientsResponse {
            patients: patients.iter().map(to_proto).collect(),
            next_page_token,
        })
    }

    async fn update(
        &self,
        actor: &Actor,
        req: pb::UpdatePatientRequest,
    ) -> Result<Patient, ApiError> {
        let caller = &actor.caller;
        let incoming = req
            .patient
            .ok_or_else(|| ApiError::invalid("patient", "is required"))?;
        let current = self.load(caller, "patient.name", &incoming.name).await?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = UpdatePaths::resolve(&incoming, &mask, domain::UPDATABLE_FIELDS)?;
        if caller.role() == Role::Patient && !paths.all_within(CONTACT_FIELDS) {
            // Patients change how to reach them; names and dates of birth are for staff.
            return Err(ApiError::PermissionDenied);
        }
        if !incoming.etag.is_empty() && !current.etag_matches(&incoming.etag) {
            return Err(ApiError::Stale);
        }
        let merged = domain::apply_mask(
            domain::input_of(&current.fields),
            input_of(incoming),
            &paths,
        );
        let fields = domain::validate_fields("patient", merged, latest_today())?;
        let next = current.changed(fields, current.is_active, time::now());
        self.clinics
            .require_writable(&actor.caller, &next.clinic, &actor.bearer)
            .await?;
        self.trail
            .intent(actor, "PatientService/UpdatePatient", &next.name())
            .await?;
        self.stores.patients.replace(&next).await?;
        Ok(next)
    }

    async fn deactivate(
        &self,
        actor: &Actor,
        req: &pb::DeactivatePatientRequest,
    ) -> Result<Patient, ApiError> {
        let caller = &actor.caller;
        let current = self.load(caller, "name", &req.name).await?;
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
            .intent(actor, "PatientService/DeactivatePatient", &next.name())
            .await?;
        self.stores.patients.replace(&next).await?;
        Ok(next)
    }

    async fn unlock(
        &self,
        actor: &Actor,
        req: &pb::UnlockPatientRequest,
    ) -> Result<Patient, ApiError> {
        let patient = self.load(&actor.caller, "name", &req.name).await?;
        self.clinics
            .require_writable(&actor.caller, &patient.clinic, &actor.bearer)
            .await?;
        self.trail
            .intent(actor, "PatientService/UnlockPatient", &patient.name())
            .await?;
        self.stores.patients.unlock_sign_in(&patient).await?;
        Ok(patient)
    }

    /// Staff set (or reset) a patient's portal password; a patient changes their own,
    /// giving the current one.
    async fn set_password(
        &self,
        actor: &Actor,
        req: pb::SetPatientPasswordRequest,
    ) -> Result<Patient, ApiError> {
        let caller = &actor.caller;
        let mut current = self.load(caller, "name", &req.name).await?;
        check_policy("new_password", &req.new_password)?;
        let patient_self = caller.role() == Role::Patient;
        if patient_self {
            // Checked like a portal sign-in: counted under the same lock, so the current
            // password cannot be guessed here without limit either.
            let given = SecretString::from(req.current_password);
            current = self
                .sign_in
                .confirm(
                    self.stores.patients.as_ref(),
                    current,
                    &given,
                    &actor.client,
                )
                .await?;
        }
        let hash = self
            .sign_in
            .passwords
            .hash(&SecretString::from(req.new_password))
            .await?;
        let now = time::now();
        let mut next = current.changed(current.fields.clone(), current.is_active, now);
        next.password_hash = Some(hash);
        // Every other portal session ends at its next refresh (a patient changing their
        // own keeps the session they changed it from).
        next.password_set_ms = time::to_millis(now);
        next.password_kept_session = if patient_self {
            caller.session().to_owned()
        } else {
            String::new()
        };
        self.clinics
            .require_writable(&actor.caller, &next.clinic, &actor.bearer)
            .await?;
        self.trail
            .intent(actor, "PatientService/SetPatientPassword", &next.name())
            .await?;
        self.stores.patients.replace(&next).await?;
        Ok(next)
    }
}

/// The named patient, for `caller`. Another clinic's name is PERMISSION_DENIED before
/// anything is read; a patient naming anyone but themself, or an id that is not in the
/// named clinic, is NOT_FOUND.
pub(crate) async fn load_patient(
    stores: &Stores,
    caller: &Caller,
    field: &str,
    name: &str,
) -> Result<Patient, ApiError> {
    let name = ClinicScopedName::parse(field, "patients", name)?;
    caller.check_clinic(name.clinic.as_str())?;
    if caller.role() == Role::Patient && caller.subject() != name.to_string() {
        return Err(ApiError::NotFound("patient"));
    }
    match stores.patients.get(&name.clinic, &name.id).await? {
        Some(patient) if patient.clinic == name.clinic => Ok(patient),
        _ => Err(ApiError::NotFound("patient")),
    }
}

fn input_of(p: pb::Patient) -> PatientInput {
    PatientInput {
        given_name: p.given_name,
        family_name: p.family_name,
        email: p.email,
        phone: p.phone,
        date_of_birth: p.date_of_birth.map(|d| (d.year, d.month, d.day)),
        address: p.address,
    }
}

pub fn to_proto(p: &Patient) -> pb::Patient {
    pb::Patient {
        name: p.name(),
        given_name: p.fields.given_name.clone(),
        family_name: p.fields.family_name.clone(),
        email: p.fields.email.clone().unwrap_or_default(),
        phone: p.fields.phone.clone(),
        date_of_birth: p
            .fields
            .date_of_birth
            .map(|d| topsmile_proto::google::r#type::Date {
                year: i32::from(d.year()),
                month: i32::from(d.month()),
                day: i32::from(d.day()),
            }),
        address: p.fields.address.clone().map(Into::into),
        is_active: p.is_active,
        has_portal_access: p.has_portal_access(),
        create_time: Some(time::to_proto(p.create_time)),
        update_time: Some(time::to_proto(p.update_time)),
        etag: p.etag(),
    }
}

#[tonic::async_trait]
impl PatientService for PatientApi {
    async fn create_patient(
        &self,
        req: Request<pb::CreatePatientRequest>,
    ) -> Result<Response<pb::CreatePatientResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let parent = req.parent.clone();
        let result = self.create(&actor, req).await;
        let resource = result.as_ref().map_or(parent.clone(), Patient::name);
        let patient = self
            .trail
            .record(&actor, "PatientService/CreatePatient", &resource, result)
            .await?;
        Ok(Response::new(pb::CreatePatientResponse {
            patient: Some(to_proto(&patient)),
        }))
    }

    async fn get_patient(
        &self,
        req: Request<pb::GetPatientRequest>,
    ) -> Result<Response<pb::GetPatientResponse>, Status> {
        let actor = Actor::of(&req)?;
        let caller = &actor.caller;
        let name = req.into_inner().name;
        let result = self.load(caller, "name", &name).await;
        let patient = self
            .trail
            .record(&actor, "PatientService/GetPatient", &name, result)
            .await?;
        Ok(Response::new(pb::GetPatientResponse {
            patient: Some(to_proto(&patient)),
        }))
    }

    async fn list_patients(
        &self,
        req: Request<pb::ListPatientsRequest>,
    ) -> Result<Response<pb::ListPatientsResponse>, Status> {
        let actor = Actor::of(&req)?;
        let caller = &actor.caller;
        let req = req.into_inner();
        let result = self.list(caller, &req).await;
        let page = self
            .trail
            .record(&actor, "PatientService/ListPatients", &req.parent, result)
            .await?;
        Ok(Response::new(page))
    }

    async fn update_patient(
        &self,
        req: Request<pb::UpdatePatientRequest>,
    ) -> Result<Response<pb::UpdatePatientResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let name = req
            .patient
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let result = self.update(&actor, req).await;
        let patient = self
            .trail
            .record(&actor, "PatientService/UpdatePatient", &name, result)
            .await?;
        Ok(Response::new(pb::UpdatePatientResponse {
            patient: Some(to_proto(&patient)),
        }))
    }

    async fn unlock_patient(
        &self,
        req: Request<pb::UnlockPatientRequest>,
    ) -> Result<Response<pb::UnlockPatientResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let result = self.unlock(&actor, &req).await;
        let patient = self
            .trail
            .record(&actor, "PatientService/UnlockPatient", &req.name, result)
            .await?;
        Ok(Response::new(pb::UnlockPatientResponse {
            patient: Some(to_proto(&patient)),
        }))
    }

    async fn deactivate_patient(
        &self,
        req: Request<pb::DeactivatePatientRequest>,
    ) -> Result<Response<pb::DeactivatePatientResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let result = self.deactivate(&actor, &req).await;
        let patient = self
            .trail
            .record(
                &actor,
                "PatientService/DeactivatePatient",
                &req.name,
                result,
            )
            .await?;
        Ok(Response::new(pb::DeactivatePatientResponse {
            patient: Some(to_proto(&patient)),
        }))
    }

    async fn set_patient_password(
        &self,
        req: Request<pb::SetPatientPasswordRequest>,
    ) -> Result<Response<pb::SetPatientPasswordResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let name = req.name.clone();
        let result = self.set_password(&actor, req).await;
        let patient = self
            .trail
            .record(&actor, "PatientService/SetPatientPassword", &name, result)
            .await?;
        Ok(Response::new(pb::SetPatientPasswordResponse {
            patient: Some(to_proto(&patient)),
        }))
    }
}
