//! Staff users: roles, the sign-in lock policy, and field rules.

use jiff::Timestamp;
use topsmile_kit::{FieldViolation, mask::UpdatePaths, names::ResourceId, validate};

/// The pseudo clinic id of super admins, who belong to no clinic:
/// their names read `clinics/-/users/{user}`.
pub const NO_CLINIC: &str = "-";

/// What a staff user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    SuperAdmin,
    Admin,
    Provider,
    Staff,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuperAdmin => "super_admin",
            Self::Admin => "admin",
            Self::Provider => "provider",
            Self::Staff => "staff",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "super_admin" => Some(Self::SuperAdmin),
            "admin" => Some(Self::Admin),
            "provider" => Some(Self::Provider),
            "staff" => Some(Self::Staff),
            _ => None,
        }
    }
}

/// A staff account.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: ResourceId,
    /// The clinic id, or [`NO_CLINIC`] for a super admin.
    pub clinic: String,
    /// Lower-cased: unique across TopSmile without regard to case.
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub is_active: bool,
    /// argon2id PHC string.
    pub password_hash: String,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub version: i64,
    /// The second factor (see [`super::mfa`]).
    pub mfa: super::mfa::Mfa,
}

impl topsmile_kit::signin::Account for User {
    fn id(&self) -> &str {
        self.id.as_str()
    }

    fn password_hash(&self) -> Option<&str> {
        Some(&self.password_hash)
    }

    fn may_sign_in(&self) -> bool {
        self.is_active
    }
}

impl User {
    pub fn new(fields: UserFields, clinic: String, password_hash: String, now: Timestamp) -> Self {
        Self {
            id: ResourceId::generate(),
            clinic,
            email: fields.email,
            display_name: fields.display_name,
            role: fields.role,
            is_active: true,
            password_hash,
            create_time: now,
            update_time: now,
            version: 1,
            mfa: super::mfa::Mfa::default(),
        }
    }

    pub fn fields(&self) -> UserInput {
        UserInput {
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            role: Some(self.role),
        }
    }

    /// Whether a client's etag names this version.
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.parse::<i64>().is_ok_and(|v| v == self.version)
    }

    /// The next version with new profile fields.
    pub fn changed(&self, fields: UserFields, is_active: bool, now: Timestamp) -> Self {
        Self {
            email: fields.email,
            display_name: fields.display_name,
            role: fields.role,
            is_active,
            update_time: now,
            version: self.version + 1,
            ..self.clone()
        }
    }

    pub fn name(&self) -> String {
        format!("clinics/{}/users/{}", self.clinic, self.id)
    }

    pub fn etag(&self) -> String {
        self.version.to_string()
    }
}

pub use topsmile_kit::lockout::{Attempt, LockPolicy};

/// The password policy: 12 to 128 characters (shared with patients).
pub fn password(field: &str, value: &str) -> Result<(), FieldViolation> {
    topsmile_kit::password::check_policy(field, value)
}

/// Raw fields of a user from a request.
#[derive(Debug, Clone, Default)]
pub struct UserInput {
    pub email: String,
    pub display_name: String,
    pub role: Option<Role>,
}

/// The checked, normalised profile fields.
#[derive(Debug, Clone, PartialEq)]
pub struct UserFields {
    pub email: String,
    pub display_name: String,
    pub role: Role,
}

/// The fields `UpdateUser` may name in its mask.
pub const UPDATABLE_FIELDS: &[&str] = &["email", "display_name", "role"];

/// `current` with the fields the update applies taken from `incoming` (an empty mask
/// means every field set in the request: see [`UpdatePaths`]).
pub fn apply_mask(current: UserInput, incoming: UserInput, paths: &UpdatePaths) -> UserInput {
    UserInput {
        email: paths.pick("email", current.email, incoming.email),
        display_name: paths.pick("display_name", current.display_name, incoming.display_name),
        role: paths.pick("role", current.role, incoming.role),
    }
}

pub fn validate_fields(prefix: &str, input: UserInput) -> Result<UserFields, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let email = validate::email(&format!("{prefix}.email"), &input.email)
        .map_err(|v| violations.push(v))
        .ok();
    let display_name =
        validate::required_text(&format!("{prefix}.display_name"), &input.display_name, 200)
            .map_err(|v| violations.push(v))
            .ok();
    if input.role.is_none() {
        violations.push(FieldViolation::new(
            format!("{prefix}.role"),
            "is required: SUPER_ADMIN, ADMIN, PROVIDER or STAFF",
        ));
    }
    match (email, display_name, input.role) {
        (Some(email), Some(display_name), Some(role)) if violations.is_empty() => Ok(UserFields {
            email,
            display_name,
            role,
        }),
        _ => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_12_to_128_characters() {
        assert!(password("p", "short").is_err());
        assert!(password("p", "correct horse battery").is_ok());
        assert!(password("p", &"x".repeat(129)).is_err());
        assert!(
            password("p", "éàüöñçåøßœæé").is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::SuperAdmin, Role::Admin, Role::Provider, Role::Staff] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("patient"), None);
    }
}
