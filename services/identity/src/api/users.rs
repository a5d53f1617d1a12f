//! `UserService`: staff accounts. ADMINs manage their own clinic's users and can never
//! make or touch a SUPER_ADMIN; SUPER_ADMINs manage everyone. Super admins belong to no
//! clinic and are named `clinics/-/users/{user}`.

use std::sync::Arc;

use secrecy::SecretString;
use tonic::{Request, Response, Status};
use topsmile_kit::{
    ApiError, FieldViolation, access::Caller, mask::UpdatePaths, names::ResourceId,
    paging::PageRequest, time, validate,
};
use topsmile_proto::topsmile::identity::v1::{self as pb, user_service_server::UserService};

use crate::{
    accounts::{Accounts, StaffEvent},
    domain::user::{self, NO_CLINIC, Role, User, UserInput},
};

pub struct UserApi {
    accounts: Arc<Accounts>,
}

impl UserApi {
    pub fn new(accounts: Arc<Accounts>) -> Self {
        Self { accounts }
    }

    async fn create(
        &self,
        caller: &Caller,
        req: pb::CreateUserRequest,
    ) -> Result<pb::CreateUserResponse, ApiError> {
        let clinic = parse_parent("parent", &req.parent)?;
        may_manage(caller, &clinic)?;
        self.require_writable(caller, &clinic).await?;
        let request_id = validate::request_id("request_id", &req.request_id)?;
        let input = req.user.map(input_of).unwrap_or_default();
        let mut violations = Vec::new();
        let fields = user::validate_fields("user", input)
            .map_err(|v| violations.extend(v))
            .ok();
        if let Err(v) = user::password("password", &req.password) {
            violations.push(v);
        }
        let fields = match fields {
            Some(fields) if violations.is_empty() => fields,
            _ => return Err(ApiError::Invalid(violations)),
        };
        check_role_for(caller, fields.role, &clinic)?;
        step_up_to(caller, None, fields.role)?;
        if clinic != NO_CLINIC {
            let id = ResourceId::parse(&clinic).ok_or(ApiError::NotFound("clinic"))?;
            match self.accounts.stores.clinics.get(&id).await? {
                Some(c) if c.is_active => {}
                Some(_) => {
                    return Err(ApiError::FailedPrecondition {
                        reason: "CLINIC_INACTIVE",
                        message: "the clinic is deactivated".into(),
                    });
                }
                None => return Err(ApiError::NotFound("clinic")),
            }
        }
        let hash = self
            .accounts
            .passwords
            .hash(&SecretString::from(req.password))
            .await?;
        let created = self
            .accounts
            .stores
            .users
            .create(
                User::new(fields, clinic, hash, self.accounts.clock.now()),
                request_id.as_deref(),
            )
            .await?;
        tracing::info!(user = %created.name(), role = created.role.as_str(), by = caller.subject(), "user created");
        Ok(pb::CreateUserResponse {
            user: Some(to_proto(&created)),
        })
    }

    /// The named user, after the tenancy check: another clinic's name is
    /// PERMISSION_DENIED before any read; an id that is not in the named clinic is
    /// NOT_FOUND.
    async fn load(&self, caller: &Caller, field: &str, name: &str) -> Result<User, ApiError> {
        let (clinic, id) = parse_name(field, name)?;
        if clinic == NO_CLINIC {
            if !caller.is_super_admin() {
                return Err(ApiError::PermissionDenied);
            }
        } else {
            caller.check_clinic(&clinic)?;
        }
        match self.accounts.stores.users.get(&clinic, &id).await? {
            Some(user) if user.clinic == clinic => Ok(user),
            _ => Err(ApiError::NotFound("user")),
        }
    }

    async fn update(
        &self,
        caller: &Caller,
        req: pb::UpdateUserRequest,
    ) -> Result<pb::UpdateUserResponse, ApiError> {
        let incoming = req
            .user
            .ok_or_else(|| ApiError::invalid("user", "is required"))?;
        let current = self.load(caller, "user.name", &incoming.name).await?;
        may_manage(caller, &current.clinic)?;
        self.require_writable(caller, &current.clinic).await?;
        if !incoming.etag.is_empty() && !current.etag_matches(&incoming.etag) {
            return Err(ApiError::Stale);
        }
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = UpdatePaths::resolve(&incoming, &mask, user::UPDATABLE_FIELDS)?;
        let merged = user::apply_mask(current.fields(), input_of(incoming), &paths);
        let fields = user::validate_fields("user", merged)?;
        if (fields.role == Role::SuperAdmin) != (current.role == Role::SuperAdmin) {
            return Err(ApiError::invalid(
                "user.role",
                "cannot change to or from SUPER_ADMIN: super admins belong to no clinic",
            ));
        }
        check_role_for(caller, fields.role, &current.clinic)?;
        step_up_to(caller, Some(current.role), fields.role)?;
        let next = current.changed(fields, current.is_active, self.accounts.clock.now());
        self.accounts.stores.users.update_profile(&next).await?;
        Ok(pb::UpdateUserResponse {
            user: Some(to_proto(&next)),
        })
    }

    async fn unlock(
        &self,
        caller: &Caller,
        req: pb::UnlockUserRequest,
    ) -> Result<pb::UnlockUserResponse, ApiError> {
        let user = self.load(caller, "name", &req.name).await?;
        may_manage(caller, &user.clinic)?;
        self.require_writable(caller, &user.clinic).await?;
        // Recorded first: an unlock the trail cannot take does not happen.
        self.accounts
            .audit(
                &user.clinic,
                StaffEvent {
                    actor: caller.subject(),
                    actor_kind: caller.kind().as_str(),
                    action: "UserService/UnlockUser",
                    resource: &user.name(),
                    outcome: "OK",
                },
            )
            .await?;
        self.accounts.unlock(&user).await?;
        tracing::info!(user = %user.name(), by = caller.subject(), "sign-in locks lifted");
        Ok(pb::UnlockUserResponse {
            user: Some(to_proto(&user)),
        })
    }

    async fn deactivate(
        &self,
        caller: &Caller,
        req: pb::DeactivateUserRequest,
    ) -> Result<pb::DeactivateUserResponse, ApiError> {
        let current = self.load(caller, "name", &req.name).await?;
        may_manage(caller, &current.clinic)?;
        self.require_writable(caller, &current.clinic).await?;
        if !req.etag.is_empty() && !current.etag_matches(&req.etag) {
            return Err(ApiError::Stale);
        }
        let next = if current.is_active {
            let fields = user::validate_fields("user", current.fields())?;
            let next = current.changed(fields, false, self.accounts.clock.now());
            self.accounts.stores.users.update_profile(&next).await?;
            next
        } else {
            current
        };
        // Every session ends, also when deactivating twice (a retry after a failure).
        self.accounts.end_all_sessions(&next).await?;
        tracing::info!(user = %next.name(), by = caller.subject(), "user deactivated; sessions revoked");
        Ok(pb::DeactivateUserResponse {
            user: Some(to_proto(&next)),
        })
    }

    async fn list(
        &self,
        caller: &Caller,
        req: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse, ApiError> {
        let clinic = parse_parent("parent", &req.parent)?;
        may_manage(caller, &clinic)?;
        let role = match pb::UserRole::try_from(req.role) {
            Ok(pb::UserRole::Unspecified) => None,
            Ok(r) => role_of(r),
            Err(_) => return Err(ApiError::invalid("role", "unknown role")),
        };
        let query = [
            clinic.as_str(),
            role.map_or("any", Role::as_str),
            if req.show_inactive { "all" } else { "active" },
        ];
        let page = PageRequest::parse(req.page_size, &req.page_token, &query)?;
        let users = self
            .accounts
            .stores
            .users
            .list(&clinic, role, req.show_inactive, &page)
            .await?;
        let (users, next_page_token) = page.finish(users, |u| u.id.to_string());
        Ok(pb::ListUsersResponse {
            users: users.iter().map(to_proto).collect(),
            next_page_token,
        })
    }
}

/// Managing users: a super admin anywhere, an admin in their own clinic.
impl UserApi {
    /// A deactivated clinic's users are read-only, except to super admins.
    async fn require_writable(&self, caller: &Caller, clinic: &str) -> Result<(), ApiError> {
        if caller.is_super_admin() || self.accounts.clinic_is_active(clinic).await? {
            Ok(())
        } else {
            Err(topsmile_kit::clinics::inactive())
        }
    }
}

pub(crate) fn may_manage(caller: &Caller, clinic: &str) -> Result<(), ApiError> {
    if caller.is_super_admin() {
        return Ok(());
    }
    if clinic == NO_CLINIC {
        return Err(ApiError::PermissionDenied);
    }
    caller.check_clinic(clinic)
}

/// Making an ADMIN or a SUPER_ADMIN (creating or promoting one) is sensitive: it
/// needs a recent sign-in (step-up).
fn step_up_to(caller: &Caller, from: Option<Role>, to: Role) -> Result<(), ApiError> {
    if matches!(to, Role::Admin | Role::SuperAdmin) && from != Some(to) {
        topsmile_kit::access::require_step_up(caller)?;
    }
    Ok(())
}

/// Only a super admin grants SUPER_ADMIN, and super admins live in no clinic.
fn check_role_for(caller: &Caller, role: Role, clinic: &str) -> Result<(), ApiError> {
    if role == Role::SuperAdmin && !caller.is_super_admin() {
        return Err(ApiError::PermissionDenied);
    }
    match (role == Role::SuperAdmin, clinic == NO_CLINIC) {
        (true, false) => Err(ApiError::invalid(
            "parent",
            "a SUPER_ADMIN belongs to no clinic: use clinics/-",
        )),
        (false, true) => Err(ApiError::invalid(
            "parent",
            "clinics/- holds only SUPER_ADMINs: name the user's clinic",
        )),
        _ => Ok(()),
    }
}

/// `clinics/{clinic}` or `clinics/-` -> the clinic id or `-`.
fn parse_parent(field: &str, value: &str) -> Result<String, FieldViolation> {
    match value.split('/').collect::<Vec<_>>().as_slice() {
        ["clinics", clinic] if *clinic == NO_CLINIC || ResourceId::parse(clinic).is_some() => {
            Ok((*clinic).to_owned())
        }
        _ => Err(FieldViolation::new(
            field,
            format!(
                "{value:?} is not a clinic name: want clinics/{{clinic}} (or clinics/- for super admins)"
            ),
        )),
    }
}

/// `clinics/{clinic}/users/{user}` -> (clinic id or `-`, user id).
pub(crate) fn parse_name(field: &str, value: &str) -> Result<(String, ResourceId), FieldViolation> {
    let invalid = || {
        FieldViolation::new(
            field,
            format!("{value:?} is not a user name: want clinics/{{clinic}}/users/{{user}}"),
        )
    };
    match value.split('/').collect::<Vec<_>>().as_slice() {
        ["clinics", clinic, "users", id]
            if *clinic == NO_CLINIC || ResourceId::parse(clinic).is_some() =>
        {
            Ok((
                (*clinic).to_owned(),
                ResourceId::parse(id).ok_or_else(invalid)?,
            ))
        }
        _ => Err(invalid()),
    }
}

fn role_of(role: pb::UserRole) -> Option<Role> {
    match role {
        pb::UserRole::Unspecified => None,
        pb::UserRole::SuperAdmin => Some(Role::SuperAdmin),
        pb::UserRole::Admin => Some(Role::Admin),
        pb::UserRole::Provider => Some(Role::Provider),
        pb::UserRole::Staff => Some(Role::Staff),
    }
}

fn input_of(u: pb::User) -> UserInput {
    UserInput {
        email: u.email,
        display_name: u.display_name,
        role: pb::UserRole::try_from(u.role).ok().and_then(role_of),
    }
}

fn to_proto(u: &User) -> pb::User {
    pb::User {
        name: u.name(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        role: match u.role {
            Role::SuperAdmin => pb::UserRole::SuperAdmin,
            Role::Admin => pb::UserRole::Admin,
            Role::Provider => pb::UserRole::Provider,
            Role::Staff => pb::UserRole::Staff,
        } as i32,
        is_active: u.is_active,
        create_time: Some(time::to_proto(u.create_time)),
        update_time: Some(time::to_proto(u.update_time)),
        etag: u.version.to_string(),
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.create(&caller, req.into_inner()).await?))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = Caller::of(&req)?;
        let user = self.load(&caller, "name", &req.get_ref().name).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(to_proto(&user)),
        }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.list(&caller, req.into_inner()).await?))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.update(&caller, req.into_inner()).await?))
    }

    async fn deactivate_user(
        &self,
        req: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(
            self.deactivate(&caller, req.into_inner()).await?,
        ))
    }

    async fn unlock_user(
        &self,
        req: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::UnlockUserResponse>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(self.unlock(&caller, req.into_inner()).await?))
    }
}
