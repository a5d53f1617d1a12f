//! The method policy table: for every RPC of the contracts, its gRPC path, the area
//! (service crate) that owns it and the access policy declared in the `.proto` as the
//! `topsmile.auth.v1.policy` method option.
//!
//! Built once at start-up from the encoded descriptor set with `prost-reflect`, which
//! keeps custom options (decoding into `prost_types` would silently drop them); after
//! that, a call's policy is one map lookup by path.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, Value};
use topsmile_proto::topsmile::auth::v1::MethodPolicy;

pub const POLICY_EXTENSION: &str = "topsmile.auth.v1.policy";

/// One RPC of the contracts.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodInfo {
    /// `/topsmile.identity.v1.ClinicService/GetClinic`.
    pub path: String,
    /// `topsmile.identity.v1.ClinicService`.
    pub service: String,
    /// `identity`, from the package `topsmile.identity.v1`: the service crate that owns it.
    pub area: String,
    /// The declared policy; `None` if the method has no option (a contract defect that
    /// the contract tests catch).
    pub policy: Option<MethodPolicy>,
}

impl MethodInfo {
    /// Internal methods are service-to-service only and never exposed at the edge.
    pub fn is_internal(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.internal)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("descriptor set does not decode: {0}")]
    Decode(#[from] prost_reflect::DescriptorError),
    #[error("descriptor set has no {POLICY_EXTENSION} extension")]
    NoExtension,
    #[error("policy option of {0} does not decode: {1}")]
    Option(String, prost::DecodeError),
}

/// Every TopSmile RPC by path.
#[derive(Debug, Clone)]
pub struct PolicyTable {
    methods: HashMap<String, MethodInfo>,
}

impl PolicyTable {
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, PolicyError> {
        let pool = DescriptorPool::decode(bytes)?;
        let extension = pool
            .get_extension_by_name(POLICY_EXTENSION)
            .ok_or(PolicyError::NoExtension)?;
        let mut methods = HashMap::new();
        for service in pool.services() {
            let Some(area) = area_of(service.package_name()) else {
                continue;
            };
            for method in service.methods() {
                let options = method.options();
                let policy = if options.has_extension(&extension) {
                    match options.get_extension(&extension).as_ref() {
                        Value::Message(m) => {
                            Some(m.transcode_to::<MethodPolicy>().map_err(|e| {
                                PolicyError::Option(method.full_name().to_owned(), e)
                            })?)
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                let path = format!("/{}/{}", service.full_name(), method.name());
                methods.insert(
                    path.clone(),
                    MethodInfo {
                        path,
                        service: service.full_name().to_owned(),
                        area: area.to_owned(),
                        policy,
                    },
                );
            }
        }
        Ok(Self { methods })
    }

    /// The contracts compiled into this binary.
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::from_descriptor_set(topsmile_proto::FILE_DESCRIPTOR_SET)
    }

    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.methods.get(path)
    }

    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.methods.values()
    }

    /// Fully-qualified names of the services the edge exposes: every service with at
    /// least one method that is not internal, sorted.
    /// Services whose every method is internal: never exposed at the edge, not even
    /// by reflection.
    pub fn internal_services(&self) -> Vec<String> {
        let public = self.public_services();
        let mut names: Vec<String> = self
            .methods
            .values()
            .filter(|m| !public.contains(&m.service))
            .map(|m| m.service.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn public_services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .methods
            .values()
            .filter(|m| !m.is_internal())
            .map(|m| m.service.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// `topsmile.identity.v1` -> `identity`; `None` for packages that own no RPCs of ours.
fn area_of(package: &str) -> Option<&str> {
    let rest = package.strip_prefix("topsmile.")?;
    let (area, version) = rest.split_once('.')?;
    (version.starts_with('v') && area != "auth" && area != "common").then_some(area)
}

#[cfg(test)]
mod tests {
    use super::*;
    use topsmile_proto::topsmile::auth::v1::Role;

    #[test]
    fn every_method_of_the_contracts_declares_a_policy() {
        let table = PolicyTable::builtin().unwrap();
        let missing: Vec<&str> = table
            .methods()
            .filter(|m| m.policy.is_none())
            .map(|m| m.path.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "methods without a topsmile.auth.v1.policy option: {missing:?}"
        );
        assert!(table.methods().count() >= 40, "the table misses methods");
    }

    #[test]
    fn every_policy_grants_something() {
        let table = PolicyTable::builtin().unwrap();
        for m in table.methods() {
            let p = m.policy.as_ref().unwrap();
            assert!(
                p.public || p.internal || !p.roles.is_empty(),
                "{} admits nobody",
                m.path
            );
        }
    }

    #[test]
    fn declared_options_are_read_back() {
        let table = PolicyTable::builtin().unwrap();
        let login = table
            .get("/topsmile.identity.v1.AuthService/Login")
            .unwrap();
        assert!(login.policy.as_ref().unwrap().public);
        assert_eq!(login.area, "identity");
        let create = table
            .get("/topsmile.identity.v1.ClinicService/CreateClinic")
            .unwrap();
        assert_eq!(
            create.policy.as_ref().unwrap().roles,
            vec![Role::SuperAdmin as i32]
        );
        let verify = table
            .get("/topsmile.patients.v1.PatientInternalService/VerifyPatientCredentials")
            .unwrap();
        assert!(verify.is_internal());
    }

    #[test]
    fn internal_services_are_not_public() {
        let public = PolicyTable::builtin().unwrap().public_services();
        assert!(public.iter().all(|s| !s.contains("Internal")), "{public:?}");
        for s in [
            "ClinicService",
            "PatientService",
            "MedicalHistoryService",
            "ProviderService",
            "AppointmentService",
            "AuthService",
            "UserService",
        ] {
            assert!(public.iter().any(|p| p.ends_with(s)), "{s} not public");
        }
    }
}
