//! The one error type of the API layer and the one place where errors become
//! `tonic::Status` codes and rich details (google.rpc `BadRequest`, `ErrorInfo`,
//! `RetryInfo`).
//!
//! Handlers return `Result<_, ApiError>` and convert with `?`; store errors convert into
//! it too, so no handler chooses a status code by hand and no driver error type reaches a
//! client.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// The `ErrorInfo.domain` of every TopSmile error.
pub const ERROR_DOMAIN: &str = "topsmile.dev";

/// One invalid field of a request, in google.rpc `BadRequest` form: `field` is a path
/// such as `clinic.time_zone`, `description` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// INVALID_ARGUMENT with one field violation per problem found.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    /// NOT_FOUND: missing, or in another clinic (existence never leaks across clinics).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// ALREADY_EXISTS: a unique key (email, slot, ...) is taken.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// ABORTED: the etag sent is no longer current; read again and retry.
    #[error("the resource changed since it was read (etag mismatch)")]
    Stale,
    /// FAILED_PRECONDITION: the resource is in the wrong state for this call.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// FAILED_PRECONDITION: a lifecycle step the resource's current state does not
    /// allow. `ErrorInfo` (reason `WRONG_STATE`) names the state in `current_state`.
    #[error("{message}")]
    WrongState {
        current: &'static str,
        message: String,
    },
    /// PERMISSION_DENIED: the caller's role or clinic may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// UNAUTHENTICATED: no valid credentials. One message for every cause.
    #[error("unauthenticated")]
    Unauthenticated,
    /// UNIMPLEMENTED: a method this server does not serve (unknown, internal, or not
    /// built yet).
    #[error("{0} is not implemented")]
    Unimplemented(String),
    /// RESOURCE_EXHAUSTED: too many calls; retry after the hinted delay.
    #[error("too many requests, retry later")]
    Overloaded { retry_after: Duration },
    /// OUT_OF_RANGE: a request message larger than the server decodes (tonic's own code
    /// for it, so the answer is the same through the gateway and directly).
    #[error("the request message is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// RESOURCE_EXHAUSTED, with no retry hint: an answer larger than the edge relays
    /// (gRPC's code for a message past the receiver's limit).
    #[error("the answer is larger than the limit of {limit} bytes")]
    AnswerTooLarge { limit: usize },
    /// CANCELLED: the client cancelled the call (or went away) before it was sent on.
    #[error("the client cancelled the call")]
    Cancelled,
    /// DEADLINE_EXCEEDED: the call's deadline passed before an answer came.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// UNAVAILABLE: a dependency is down; worth retrying after a short wait.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// INTERNAL: logged with its cause, sent with no detail.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How many field violations one error reports; the rest are counted, not listed, so
/// that a request with thousands of bad entries still gets a small, complete answer.
pub const MAX_VIOLATIONS: usize = 20;

fn describe(violations: &[FieldViolation]) -> String {
    let shown = violations
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    match violations.len().saturating_sub(MAX_VIOLATIONS) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// The UPPER_SNAKE reason of the `ErrorInfo` detail (also what audit trails record).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::Stale => "ETAG_MISMATCH",
            Self::FailedPrecondition { reason, .. } => reason,
            Self::WrongState { .. } => "WRONG_STATE",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Unimplemented(_) => "NOT_IMPLEMENTED",
            Self::Overloaded { .. } => "OVERLOADED",
            Self::TooLarge { .. } => "MESSAGE_TOO_LARGE",
            Self::AnswerTooLarge { .. } => "ANSWER_TOO_LARGE",
            Self::Cancelled => "CANCELLED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<FieldViolation> for ApiError {
    fn from(v: FieldViolation) -> Self {
        Self::Invalid(vec![v])
    }
}

impl From<Vec<FieldViolation>> for ApiError {
    fn from(v: Vec<FieldViolation>) -> Self {
        Self::Invalid(v)
    }
}

/// An error and every cause under it, for the log: "store failure: ...: <driver error>".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(what) => Self::AlreadyExists(what),
            StoreError::Stale => Self::Stale,
            StoreError::NotFound(what) => Self::NotFound(what),
            // The whole chain of causes goes to the log (once, where the status is
            // made); the caller sees none of it.
            e @ StoreError::Unavailable { .. } => Self::Unavailable(chain(&e)),
            e @ StoreError::Backend { .. } => Self::Internal(chain(&e)),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let reason = e.reason();
        let info = |details: &mut ErrorDetails| {
            details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        };
        let mut details = ErrorDetails::new();
        let (code, message) = match &e {
            ApiError::Invalid(violations) => {
                for v in violations.iter().take(MAX_VIOLATIONS) {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let mut metadata = HashMap::new();
                let more = violations.len().saturating_sub(MAX_VIOLATIONS);
                if more > 0 {
                    metadata.insert("more_violations".to_owned(), more.to_string());
                }
                details.set_error_info(reason, ERROR_DOMAIN, metadata);
                (Code::InvalidArgument, e.to_string())
            }
            ApiError::NotFound(_) => (Code::NotFound, e.to_string()),
            ApiError::AlreadyExists(_) => (Code::AlreadyExists, e.to_string()),
            ApiError::Stale => (Code::Aborted, e.to_string()),
            ApiError::FailedPrecondition { .. } => (Code::FailedPrecondition, e.to_string()),
            ApiError::WrongState { current, .. } => {
                let metadata = HashMap::from([("current_state".to_owned(), (*current).to_owned())]);
                details.set_error_info(reason, ERROR_DOMAIN, metadata);
                (Code::FailedPrecondition, e.to_string())
            }
            ApiError::PermissionDenied => (Code::PermissionDenied, e.to_string()),
            ApiError::Unauthenticated => (Code::Unauthenticated, e.to_string()),
            ApiError::Unimplemented(_) => (Code::Unimplemented, e.to_string()),
            ApiError::Overloaded { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                (Code::ResourceExhausted, e.to_string())
            }
            ApiError::TooLarge { .. } => (Code::OutOfRange, e.to_string()),
            ApiError::AnswerTooLarge { .. } => (Code::ResourceExhausted, e.to_string()),
            ApiError::Cancelled => (Code::Cancelled, e.to_string()),
            ApiError::DeadlineExceeded => (Code::DeadlineExceeded, e.to_string()),
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                details.set_retry_info(Some(Duration::from_secs(1)));
                (
                    Code::Unavailable,
                    "temporarily unavailable, retry shortly".to_owned(),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                return Status::new(Code::Internal, "internal error");
            }
        };
        if !matches!(e, ApiError::Invalid(_) | ApiError::WrongState { .. }) {
            info(&mut details);
        }
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_carries_every_field_violation_and_a_reason() {
        let status = Status::from(ApiError::Invalid(vec![
            FieldViolation::new("clinic.time_zone", "is not an IANA time zone"),
            FieldViolation::new("clinic.display_name", "is required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().map(|b| b.field_violations.len());
        assert_eq!(bad, Some(2));
        let reason = details.error_info().map(|i| i.reason.clone());
        assert_eq!(reason.as_deref(), Some("INVALID_ARGUMENT"));
    }

    #[test]
    fn violations_are_capped_with_a_count_of_the_rest() {
        let many: Vec<FieldViolation> = (0..1000)
            .map(|i| FieldViolation::new(format!("allergies[{i}].allergen"), "is required"))
            .collect();
        let status = Status::from(ApiError::Invalid(many));
        let details = status.get_error_details();
        let listed = details.bad_request().map(|b| b.field_violations.len());
        assert_eq!(listed, Some(MAX_VIOLATIONS));
        let more = details
            .error_info()
            .and_then(|i| i.metadata.get("more_violations").cloned());
        assert_eq!(more.as_deref(), Some("980"));
        assert!(
            status.message().ends_with("and 980 more"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 2000);
    }

    #[test]
    fn a_store_failure_keeps_its_cause_for_the_log_only() {
        let driver = std::io::Error::other("disk on fire");
        let api = ApiError::from(StoreError::caused("SQLite", driver));
        match &api {
            ApiError::Internal(logged) => {
                assert_eq!(logged, "store failure: SQLite: disk on fire");
            }
            other => panic!("{other:?}"),
        }
        let status = Status::from(api);
        assert!(!status.message().contains("disk"), "{}", status.message());
    }

    #[test]
    fn internal_errors_reveal_nothing() {
        let status = Status::from(ApiError::Internal("password=hunter2 at db".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert!(status.details().is_empty());
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let status = Status::from(ApiError::Unavailable("mongo down".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
    }
}
