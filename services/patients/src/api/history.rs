//! `MedicalHistoryService`. ADMINs and PROVIDERs read and write clinical data; STAFF may
//! not read it (least privilege: the contract's policy refuses them); a patient reads
//! their own. Every update keeps the version it replaces.

use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError, FieldViolation, access::Caller, clinics::ClinicDirectory, mask::UpdatePaths,
    paging::PageRequest, time,
};
use topsmile_proto::topsmile::patients::v1::{
    self as pb, medical_history_service_server::MedicalHistoryService,
};

use super::{
    audit::{Actor, Trail},
    patients::load_patient,
};
use crate::{
    domain::{
        Patient,
        history::{
            self, Allergy, HistoryContent, HistoryVersion, Medication, Severity, SocialHistory,
            Surgery, VitalSigns,
        },
    },
    store::Stores,
};

const SUFFIX: &str = "/medicalHistory";

pub struct MedicalHistoryApi {
    stores: Stores,
    trail: Trail,
    clinics: ClinicDirectory,
}

impl MedicalHistoryApi {
    pub fn new(stores: Stores, trail: Trail, clinics: ClinicDirectory) -> Self {
        Self {
            stores,
            trail,
            clinics,
        }
    }

    /// The patient whose history `name` (`.../patients/{p}/medicalHistory`) is.
    async fn patient_of(
        &self,
        caller: &Caller,
        field: &str,
        name: &str,
    ) -> Result<Patient, ApiError> {
        let patient = name.strip_suffix(SUFFIX).ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{name:?} is not a medical history name: want clinics/{{clinic}}/patients/{{patient}}/medicalHistory"),
            )
        })?;
        load_patient(&self.stores, caller, field, patient).await
    }

    async fn get(&self, caller: &Caller, name: &str) -> Result<pb::MedicalHistory, ApiError> {
        let patient = self.patient_of(caller, "name", name).await?;
        let current = self
            .stores
            .histories
            .current(&patient.clinic, &patient.id)
            .await?
            .unwrap_or_else(HistoryVersion::empty);
        Ok(to_proto(&patient, &current))
    }

    async fn update(
        &self,
        actor: &Actor,
        req: pb::UpdateMedicalHistoryRequest,
    ) -> Result<pb::MedicalHistory, ApiError> {
        let caller = &actor.caller;
        let incoming = req
            .medical_history
            .ok_or_else(|| ApiError::invalid("medical_history", "is required"))?;
        let patient = self
            .patient_of(caller, "medical_history.name", &incoming.name)
            .await?;
        if incoming.etag.is_empty() {
            return Err(ApiError::invalid(
                "medical_history.etag",
                "is required: send the etag you read (\"0\" before the first record)",
            ));
        }
        let current = self
            .stores
            .histories
            .current(&patient.clinic, &patient.id)
            .await?
            .unwrap_or_else(HistoryVersion::empty);
        if !current.etag_matches(&incoming.etag) {
            return Err(ApiError::Stale);
        }
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = UpdatePaths::resolve(&incoming, &mask, history::UPDATABLE_FIELDS)?;
        // Conversion problems and rule violations are reported together.
        let (content, mut violations) = content_of(incoming);
        let merged = history::apply_mask(&current.content, content, &paths);
        if let Err(more) = history::validate("medical_history", &merged) {
            violations.extend(more);
        }
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
        let next = HistoryVersion {
            content: merged,
            recorded_by: caller.subject().to_owned(),
            update_time_ms: time::to_millis(time::now()),
            version: current.version + 1,
        };
        self.clinics
            .require_writable(&actor.caller, &patient.clinic, &actor.bearer)
            .await?;
        self.trail
            .intent(
                actor,
                "MedicalHistoryService/UpdateMedicalHistory",
                &format!("{}{SUFFIX}", patient.name()),
            )
            .await?;
        self.stores
            .histories
            .record(&patient.clinic, &patient.id, &next)
            .await?;
        Ok(to_proto(&patient, &next))
    }

    async fn revisions(
        &self,
        caller: &Caller,
        req: &pb::ListMedicalHistoryRevisionsRequest,
    ) -> Result<pb::ListMedicalHistoryRevisionsResponse, ApiError> {
        let patient = self.patient_of(caller, "parent", &req.parent).await?;
        let page = PageRequest::parse(req.page_size, &req.page_token, &[&req.parent])?;
        let before = page.after.as_deref().and_then(|a| a.parse::<i64>().ok());
        // A page holds at most MAX_REVISIONS_PER_PAGE versions and about
        // MAX_REVISION_PAGE_BYTES, whatever page_size asks: versions may be large.
        let versions = self
            .stores
            .histories
            .revisions(
                &patient.clinic,
                &patient.id,
                before,
                page.fetch_limit().min(MAX_REVISIONS_PER_PAGE + 1),
            )
            .await?;
        let (versions, next_page_token) = page.finish_within(
            versions,
            |v| v.version.to_string(),
            |v| serde_json::to_vec(&v.content).map_or(0, |b| b.len()),
            (MAX_REVISIONS_PER_PAGE, MAX_REVISION_PAGE_BYTES),
        );
        Ok(pb::ListMedicalHistoryRevisionsResponse {
            revisions: versions.iter().map(|v| to_proto(&patient, v)).collect(),
            next_page_token,
        })
    }
}

/// The most revisions one page of ListMedicalHistoryRevisions holds.
pub const MAX_REVISIONS_PER_PAGE: usize = 20;
/// About the most bytes of history one page holds (one version always fits).
pub const MAX_REVISION_PAGE_BYTES: usize = 2 * 1024 * 1024;

fn severity_of(i: usize, value: i32) -> Result<Severity, FieldViolation> {
    match pb::AllergySeverity::try_from(value) {
        Ok(pb::AllergySeverity::Low) => Ok(Severity::Low),
        Ok(pb::AllergySeverity::Moderate) => Ok(Severity::Moderate),
        Ok(pb::AllergySeverity::Severe) => Ok(Severity::Severe),
        Ok(pb::AllergySeverity::LifeThreatening) => Ok(Severity::LifeThreatening),
        _ => Err(FieldViolation::new(
            format!("medical_history.allergies[{i}].severity"),
            "is required: LOW, MODERATE, SEVERE or LIFE_THREATENING",
        )),
    }
}

fn severity_to_proto(s: Severity) -> pb::AllergySeverity {
    match s {
        Severity::Low => pb::AllergySeverity::Low,
        Severity::Moderate => pb::AllergySeverity::Moderate,
        Severity::Severe => pb::AllergySeverity::Severe,
        Severity::LifeThreatening => pb::AllergySeverity::LifeThreatening,
    }
}

/// The content of a request. Enum values are kept by their contract names (without
/// prefix), so stored data reads the same as the API.
/// The content of a request, and the violations met converting it (values that have no
/// domain form are left out of the content).
fn content_of(h: pb::MedicalHistory) -> (HistoryContent, Vec<FieldViolation>) {
    let mut violations = Vec::new();
    let allergies = h
        .allergies
        .into_iter()
        .enumerate()
        .filter_map(|(i, a)| match severity_of(i, a.severity) {
            Ok(severity) => Some(Allergy {
                allergen: a.allergen,
                reaction: a.reaction,
                severity,
            }),
            Err(v) => {
                violations.push(v);
                None
            }
        })
        .collect();
    let social_history = h.social_history.map(|s| SocialHistory {
        tobacco: pb::social_history::TobaccoUse::try_from(s.tobacco)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("TOBACCO_USE_")
                    .to_owned()
            })
            .unwrap_or_default()
            .replace("UNSPECIFIED", ""),
        alcohol: pb::social_history::AlcoholUse::try_from(s.alcohol)
            .map(|a| {
                a.as_str_name()
                    .trim_start_matches("ALCOHOL_USE_")
                    .to_owned()
            })
            .unwrap_or_default()
            .replace("UNSPECIFIED", ""),
        notes: s.notes,
    });
    let vital_signs = h.vital_signs.map(|v| VitalSigns {
        blood_pressure_systolic: v.blood_pressure_systolic,
        blood_pressure_diastolic: v.blood_pressure_diastolic,
        heart_rate_bpm: v.heart_rate_bpm,
        temperature_celsius: v.temperature_celsius,
        weight_kg: v.weight_kg,
        height_cm: v.height_cm,
        // A time that is not one (out of range) is the caller's error, not dropped.
        measured_at_ms: v.measured_at.and_then(|t| {
            time::from_proto("medical_history.vital_signs.measured_at", &t)
                .map_err(|e| violations.push(e))
                .ok()
                .map(time::to_millis)
        }),
    });
    let content = HistoryContent {
        chief_complaint: h.chief_complaint,
        allergies,
        medications: h
            .medications
            .into_iter()
            .map(|m| Medication {
                name: m.name,
                dosage: m.dosage,
                frequency: m.frequency,
            })
            .collect(),
        chronic_conditions: h.chronic_conditions,
        surgical_history: h
            .surgical_history
            .into_iter()
            .map(|s| Surgery {
                procedure: s.procedure,
                when: s.when,
                notes: s.notes,
            })
            .collect(),
        social_history,
        vital_signs,
        notes: h.notes,
    };
    (content, violations)
}

fn to_proto(patient: &Patient, v: &HistoryVersion) -> pb::MedicalHistory {
    let c = &v.content;
    pb::MedicalHistory {
        name: format!("{}{SUFFIX}", patient.name()),
        chief_complaint: c.chief_complaint.clone(),
        allergies: c
            .allergies
            .iter()
            .map(|a| pb::Allergy {
                allergen: a.allergen.clone(),
                reaction: a.reaction.clone(),
                severity: severity_to_proto(a.severity) as i32,
            })
            .collect(),
        medications: c
            .medications
            .iter()
            .map(|m| pb::Medication {
                name: m.name.clone(),
                dosage: m.dosage.clone(),
                frequency: m.frequency.clone(),
            })
            .collect(),
        chronic_conditions: c.chronic_conditions.clone(),
        surgical_history: c
            .surgical_history
            .iter()
            .map(|s| pb::Surgery {
                procedure: s.procedure.clone(),
                when: s.when.clone(),
                notes: s.notes.clone(),
            })
            .collect(),
        social_history: c.social_history.as_ref().map(|s| pb::SocialHistory {
            tobacco: pb::social_history::TobaccoUse::from_str_name(&format!(
                "TOBACCO_USE_{}",
                s.tobacco
            ))
            .unwrap_or_default() as i32,
            alcohol: pb::social_history::AlcoholUse::from_str_name(&format!(
                "ALCOHOL_USE_{}",
                s.alcohol
            ))
            .unwrap_or_default() as i32,
            notes: s.notes.clone(),
        }),
        vital_signs: c.vital_signs.as_ref().map(|v| pb::VitalSigns {
            blood_pressure_systolic: v.blood_pressure_systolic,
            blood_pressure_diastolic: v.blood_pressure_diastolic,
            heart_rate_bpm: v.heart_rate_bpm,
            temperature_celsius: v.temperature_celsius,
            weight_kg: v.weight_kg,
            height_cm: v.height_cm,
            measured_at: v
                .measured_at_ms
                .map(|ms| time::to_proto(time::from_millis(ms))),
        }),
        notes: c.notes.clone(),
        recorded_by: v.recorded_by.clone(),
        update_time: v.update_time().map(time::to_proto),
        etag: v.version.to_string(),
    }
}

#[tonic::async_trait]
impl MedicalHistoryService for MedicalHistoryApi {
    async fn get_medical_history(
        &self,
        req: Request<pb::GetMedicalHistoryRequest>,
    ) -> Result<Response<pb::GetMedicalHistoryResponse>, Status> {
        let actor = Actor::of(&req)?;
        let caller = &actor.caller;
        let name = req.into_inner().name;
        let result = self.get(caller, &name).await;
        let history = self
            .trail
            .record(
                &actor,
                "MedicalHistoryService/GetMedicalHistory",
                &name,
                result,
            )
            .await?;
        Ok(Response::new(pb::GetMedicalHistoryResponse {
            medical_history: Some(history),
        }))
    }

    async fn update_medical_history(
        &self,
        req: Request<pb::UpdateMedicalHistoryRequest>,
    ) -> Result<Response<pb::UpdateMedicalHistoryResponse>, Status> {
        let actor = Actor::of(&req)?;
        let req = req.into_inner();
        let name = req
            .medical_history
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default();
        let result = self.update(&actor, req).await;
        let history = self
            .trail
            .record(
                &actor,
                "MedicalHistoryService/UpdateMedicalHistory",
                &name,
                result,
            )
            .await?;
        Ok(Response::new(pb::UpdateMedicalHistoryResponse {
            medical_history: Some(history),
        }))
    }

    async fn list_medical_history_revisions(
        &self,
        req: Request<pb::ListMedicalHistoryRevisionsRequest>,
    ) -> Result<Response<pb::ListMedicalHistoryRevisionsResponse>, Status> {
        let actor = Actor::of(&req)?;
        let caller = &actor.caller;
        let req = req.into_inner();
        let result = self.revisions(caller, &req).await;
        let page = self
            .trail
            .record(
                &actor,
                "MedicalHistoryService/ListMedicalHistoryRevisions",
                &req.parent,
                result,
            )
            .await?;
        Ok(Response::new(page))
    }
}
