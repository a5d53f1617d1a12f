//! Seeing and ending sessions: `SessionService`. A session is one sign-in (see
//! `store::SessionRecord`); its resource name hangs under its owner,
//! `clinics/{clinic}/users/{user}/sessions/{sid}` or
//! `clinics/{clinic}/patients/{patient}/sessions/{sid}`.
//!
//! Who may: the owner (their own, any role, patients included), an ADMIN for the users
//! and patients of their clinic, a SUPER_ADMIN for anyone. A session id that is not
//! the named owner's (someone else's, made up, or gone) is INVALID_ARGUMENT on `name`,
//! the same answer for every such case, and nothing is written.

use topsmile_kit::{ApiError, access::Caller, auth::Kind, names::ResourceId};
use topsmile_proto::topsmile::{auth::v1::Role, identity::v1 as pb};

use crate::{
    accounts::{Accounts, MAX_SESSIONS, StaffEvent},
    domain::user::NO_CLINIC,
    store::SessionRecord,
};

/// Whose sessions a name is about, as parsed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The clinic id, or `-` for a super admin.
    pub clinic: String,
    /// What the sessions are stored under: the user id, or the patient's name.
    pub subject: String,
    pub kind: Kind,
    /// The owner's resource name.
    pub name: String,
}

impl Owner {
    /// `clinics/{clinic}/users/{user}` or `clinics/{clinic}/patients/{patient}`.
    pub fn parse(field: &str, name: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::invalid(
                field,
                "must be clinics/{clinic}/users/{user} or clinics/{clinic}/patients/{patient}",
            )
        };
        match name.split('/').collect::<Vec<_>>().as_slice() {
            ["clinics", clinic, "users", user] => {
                let clinic = match *clinic {
                    NO_CLINIC => NO_CLINIC.to_owned(),
                    other => ResourceId::parse(other).ok_or_else(bad)?.to_string(),
                };
                let user = ResourceId::parse(user).ok_or_else(bad)?.to_string();
                Ok(Self {
                    name: format!("clinics/{clinic}/users/{user}"),
                    clinic,
                    subject: user,
                    kind: Kind::Staff,
                })
            }
            ["clinics", clinic, "patients", patient] => {
                let clinic = ResourceId::parse(clinic).ok_or_else(bad)?.to_string();
                let patient = ResourceId::parse(patient).ok_or_else(bad)?;
                let name = format!("clinics/{clinic}/patients/{patient}");
                Ok(Self {
                    clinic,
                    subject: name.clone(),
                    kind: Kind::Patient,
                    name,
                })
            }
            _ => Err(bad()),
        }
    }

    /// A session's name: the owner's, then `/sessions/{sid}`.
    pub fn parse_session(field: &str, name: &str) -> Result<(Self, String), ApiError> {
        let bad = || ApiError::invalid(field, "must be {owner}/sessions/{session}");
        let (owner, session) = name.rsplit_once("/sessions/").ok_or_else(bad)?;
        let session = ResourceId::parse(session).ok_or_else(bad)?;
        Ok((Self::parse(field, owner)?, session.to_string()))
    }

    /// The owner themselves, their clinic's ADMIN, or a SUPER_ADMIN.
    fn may_be_managed_by(&self, caller: &Caller) -> Result<(), ApiError> {
        let allowed = caller.subject() == self.name
            || caller.role() == Role::SuperAdmin
            || (caller.role() == Role::Admin && caller.clinic() == self.clinic);
        if allowed {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied)
        }
    }
}

impl Accounts {
    /// The live sessions of `parent`, newest first.
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        parent: &str,
    ) -> Result<Vec<pb::Session>, ApiError> {
        let owner = Owner::parse("parent", parent)?;
        owner.may_be_managed_by(caller)?;
        self.require_owner_exists(&owner).await?;
        let Some(rules) = self.clinic_sessions(&owner.clinic).await? else {
            return Ok(Vec::new());
        };
        let now = self.clock.now();
        let timeouts = Self::timeouts(&rules, owner.kind, now);
        let (idle, lifetime) = rules.of(owner.kind);
        let sessions = self
            .stores
            .sessions
            .list(&owner.clinic, &owner.subject, MAX_SESSIONS + 20)
            .await?;
        Ok(sessions
            .into_iter()
            .filter(|s| s.kind == owner.kind && s.is_live(timeouts))
            .map(|s| to_proto(&owner, &s, caller.session(), (idle, lifetime)))
            .collect())
    }

    /// Ends the session `name`; recorded in the clinic's trail when not the owner's own
    /// doing.
    pub async fn revoke_session(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let (owner, id) = Owner::parse_session("name", name)?;
        owner.may_be_managed_by(caller)?;
        if caller.subject() != owner.name {
            // Ending someone else's session is sensitive.
            topsmile_kit::access::require_step_up(caller)?;
        }
        let session = self
            .stores
            .sessions
            .get(&owner.clinic, &id)
            .await?
            .filter(|s| s.subject == owner.subject && s.kind == owner.kind)
            .ok_or_else(|| ApiError::invalid("name", "no such session of this owner"))?;
        self.end_session(&session, self.clock.now()).await?;
        tracing::info!(session = %name, by = caller.subject(), "session revoked");
        if caller.subject() != owner.name {
            let event = StaffEvent {
                actor: caller.subject(),
                actor_kind: "staff",
                action: "SessionService/RevokeSession",
                resource: name,
                outcome: "OK",
            };
            if let Err(e) = self.audit(&owner.clinic, event).await {
                tracing::warn!(error = %e, session = %name, "session revocation not recorded in the audit trail");
            }
        }
        Ok(())
    }

    /// NOT_FOUND for a staff owner who is not a user of that clinic. (A patient's
    /// record lives in the patients service; an unknown patient simply has no
    /// sessions.)
    async fn require_owner_exists(&self, owner: &Owner) -> Result<(), ApiError> {
        if owner.kind != Kind::Staff {
            return Ok(());
        }
        let id = ResourceId::parse(&owner.subject).ok_or(ApiError::NotFound("user"))?;
        match self.stores.users.get(&owner.clinic, &id).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound("user")),
        }
    }
}

fn to_proto(
    owner: &Owner,
    s: &SessionRecord,
    current: &str,
    (idle, lifetime): (i64, i64),
) -> pb::Session {
    let after = |t: jiff::Timestamp, secs: i64| {
        t.checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(t)
    };
    let expire = after(s.last_used, idle).min(after(s.created, lifetime));
    pb::Session {
        name: format!("{}/sessions/{}", owner.name, s.id),
        create_time: Some(topsmile_kit::time::to_proto(s.created)),
        last_use_time: Some(topsmile_kit::time::to_proto(s.last_used)),
        expire_time: Some(topsmile_kit::time::to_proto(expire)),
        client_address: s.client_address.clone(),
        client_label: s.client_label.clone(),
        current: s.id == current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_their_owner_and_nothing_else_does() {
        let c = ResourceId::generate();
        let u = ResourceId::generate();
        let staff = Owner::parse("parent", &format!("clinics/{c}/users/{u}")).unwrap();
        assert_eq!(
            (staff.clinic.as_str(), staff.kind),
            (c.as_str(), Kind::Staff)
        );
        assert_eq!(staff.subject, u.as_str());
        let root = Owner::parse("parent", &format!("clinics/-/users/{u}")).unwrap();
        assert_eq!(root.clinic, NO_CLINIC);
        let patient = Owner::parse("parent", &format!("clinics/{c}/patients/{u}")).unwrap();
        assert_eq!(patient.subject, format!("clinics/{c}/patients/{u}"));
        let s = ResourceId::generate();
        let (owner, id) =
            Owner::parse_session("name", &format!("clinics/{c}/users/{u}/sessions/{s}")).unwrap();
        assert_eq!((owner, id.as_str()), (staff, s.as_str()));
        for bad in [
            String::new(),
            format!("clinics/{c}/users"),
            format!("clinics/-/patients/{u}"),
            format!("clinics/{c}/users/{u}/extra"),
            format!("clinics/{c}/providers/{u}"),
            format!("clinics/{c}/users/{u}/sessions/"),
            format!("clinics/{c}/users/{u}/sessions/{s}/sessions/{s}"),
            format!("clinics/{c}/users/../sessions/{s}"),
        ] {
            let parent = Owner::parse("parent", &bad).is_err();
            let session = Owner::parse_session("name", &bad).is_err();
            assert!(parent && session, "{bad:?} should not parse");
        }
    }
}
