//! Update masks (AIP-134), computed once for every Update method.
//!
//! An Update request carries the resource and an optional `google.protobuf.FieldMask`.
//! The mask names the fields to change; an **empty mask means every field that is set
//! in the resource sent**, so a client that sends only a new phone changes only the
//! phone. "Set" is what proto3 puts on the wire: a scalar that is not its default, a
//! message field that is present, a repeated field that is not empty.
//!
//! [`UpdatePaths::resolve`] decides which fields an update applies, from the request
//! alone, by reading the resource through the contracts' descriptor set (so a new field
//! in a `.proto` needs no code here). Handlers then take exactly those fields from the
//! request and keep every other field as stored.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::error::{ApiError, FieldViolation};

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(topsmile_proto::FILE_DESCRIPTOR_SET).ok());

/// The top-level fields of a resource that one Update applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePaths(Vec<String>);

impl UpdatePaths {
    /// The fields an Update applies.
    ///
    /// - `field` is the request field that holds the resource (`"patient"`), used in
    ///   violations of paths that name fields which do not exist.
    /// - `mask` is the request's `update_mask.paths` (possibly empty).
    /// - `updatable` lists the fields the method may change.
    ///
    /// A named path that is not a field of the resource, or is a field this method may not
    /// change (output only, immutable), is a field violation of `update_mask`, one per
    /// path. With an empty mask, the set fields that are not updatable (the `name` and
    /// `etag` that every update carries) are simply not applied. An update that applies
    /// nothing is INVALID_ARGUMENT: it is almost always a client mistake.
    pub fn resolve<M>(resource: &M, mask: &[String], updatable: &[&str]) -> Result<Self, ApiError>
    where
        M: prost::Message + prost::Name,
    {
        let descriptor = descriptor_of::<M>()?;
        let paths: Vec<String> = if mask.is_empty() {
            let dynamic =
                DynamicMessage::decode(descriptor.clone(), resource.encode_to_vec().as_slice())
                    .map_err(|e| ApiError::Internal(format!("resource does not transcode: {e}")))?;
            let mut set: Vec<String> = dynamic
                .fields()
                .map(|(field, _)| field.name().to_owned())
                .filter(|name| updatable.contains(&name.as_str()))
                .collect();
            set.sort();
            set
        } else {
            let mut violations = Vec::new();
            for path in mask {
                if updatable.contains(&path.as_str()) {
                    continue;
                }
                let shown = crate::validate::shown(path);
                let top = path.split('.').next().unwrap_or_default();
                let description = if descriptor.get_field_by_name(top).is_some() {
                    format!(
                        "{shown} cannot be changed by this method; updatable: {}",
                        updatable.join(", ")
                    )
                } else {
                    format!(
                        "{shown} is not a field of {}; updatable: {}",
                        descriptor.name(),
                        updatable.join(", ")
                    )
                };
                violations.push(FieldViolation::new("update_mask", description));
            }
            if !violations.is_empty() {
                return Err(ApiError::Invalid(violations));
            }
            let mut paths = mask.to_vec();
            paths.sort();
            paths.dedup();
            paths
        };
        if paths.is_empty() {
            return Err(ApiError::invalid(
                "update_mask",
                format!(
                    "names no field to change: name them, or set them in the resource ({})",
                    updatable.join(", ")
                ),
            ));
        }
        Ok(Self(paths))
    }

    /// Paths already checked (by the caller, against its own list).
    pub fn trusted<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        Self(paths.into_iter().map(str::to_owned).collect())
    }

    /// Whether the update applies `field`.
    pub fn contains(&self, field: &str) -> bool {
        self.0.iter().any(|p| p == field)
    }

    /// Whether every applied field is one of `allowed`.
    pub fn all_within(&self, allowed: &[&str]) -> bool {
        self.0.iter().all(|p| allowed.contains(&p.as_str()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// `incoming` where the update applies `field`, else `current`.
    pub fn pick<T>(&self, field: &str, current: T, incoming: T) -> T {
        if self.contains(field) {
            incoming
        } else {
            current
        }
    }
}

fn descriptor_of<M: prost::Name>() -> Result<MessageDescriptor, ApiError> {
    POOL.as_ref()
        .and_then(|pool| pool.get_message_by_name(&M::full_name()))
        .ok_or_else(|| ApiError::Internal(format!("{} is not in the contracts", M::full_name())))
}

#[cfg(test)]
mod tests {
    use topsmile_proto::topsmile::{common::v1::PostalAddress, identity::v1::Clinic};

    use super::*;

    const UPDATABLE: &[&str] = &["display_name", "address", "phone", "email", "time_zone"];

    fn applied(r: Result<UpdatePaths, ApiError>) -> Result<Vec<String>, Vec<String>> {
        match r {
            Ok(p) => Ok(p.iter().map(str::to_owned).collect()),
            Err(ApiError::Invalid(v)) => Err(v.into_iter().map(|v| v.description).collect()),
            Err(other) => Err(vec![other.to_string()]),
        }
    }

    #[test]
    fn an_empty_mask_means_the_updatable_fields_that_are_set() {
        let clinic = Clinic {
            name: "clinics/c1".into(),
            etag: "3".into(),
            is_active: true,
            phone: "+55 11 5555-0100".into(),
            address: Some(PostalAddress::default()),
            ..Default::default()
        };
        assert_eq!(
            applied(UpdatePaths::resolve(&clinic, &[], UPDATABLE)),
            Ok(vec!["address".to_owned(), "phone".to_owned()])
        );
    }

    #[test]
    fn a_named_mask_applies_its_fields_even_when_unset() {
        let clinic = Clinic::default();
        let mask = vec!["phone".to_owned(), "phone".to_owned(), "email".to_owned()];
        assert_eq!(
            applied(UpdatePaths::resolve(&clinic, &mask, UPDATABLE)),
            Ok(vec!["email".to_owned(), "phone".to_owned()])
        );
    }

    #[test]
    fn unknown_and_output_only_paths_are_each_a_violation() {
        let mask = vec![
            "is_active".to_owned(),
            "colour".to_owned(),
            "phone".to_owned(),
        ];
        let err = applied(UpdatePaths::resolve(&Clinic::default(), &mask, UPDATABLE));
        let Err(descriptions) = err else {
            panic!("accepted {err:?}");
        };
        assert_eq!(descriptions.len(), 2);
        assert!(
            descriptions[0].contains("cannot be changed"),
            "{descriptions:?}"
        );
        assert!(
            descriptions[1].contains("is not a field of Clinic"),
            "{descriptions:?}"
        );
    }

    #[test]
    fn an_update_that_changes_nothing_is_refused() {
        let clinic = Clinic {
            name: "clinics/c1".into(),
            ..Default::default()
        };
        assert!(applied(UpdatePaths::resolve(&clinic, &[], UPDATABLE)).is_err());
    }

    #[test]
    fn long_paths_are_not_echoed_whole() {
        let mask = vec!["x".repeat(10_000)];
        let err = applied(UpdatePaths::resolve(&Clinic::default(), &mask, UPDATABLE));
        let longest = err.err().into_iter().flatten().map(|d| d.len()).max();
        assert!(longest.is_some_and(|n| n < 400), "{longest:?}");
    }
}
