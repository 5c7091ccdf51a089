//! ACT, Compute side: the client's typed errors, and how a failed attempt is classified
//! (Google's status table in `toolkit`, plus operation error codes). The only place that
//! interprets Google's error bodies.

use google_cloud_compute_v1::model;
use google_cloud_gax::error::rpc::StatusDetails;

use crate::act::toolkit::{Attempt, HttpClass, api_message, classify_http};
use crate::error::Cause;

/// What went wrong talking to Compute Engine. Classified by [`crate::error::Classify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// The resource does not exist (404, or `RESOURCE_NOT_FOUND` in an operation).
    #[error("{call}: {message}")]
    NotFound { call: &'static str, message: String },
    /// The request was refused and resending it cannot help (400, 409, other 4xx).
    #[error("{call}: refused with HTTP {status} ({reason}): {message}")]
    Refused {
        call: &'static str,
        status: u16,
        reason: String,
        message: String,
    },
    /// The alias range is held by another resource.
    #[error("{call}: alias range in use by another resource: {message}")]
    AliasInUse { call: &'static str, message: String },
    /// No free block is left in the secondary range.
    #[error("{call}: secondary range exhausted: {message}")]
    RangeExhausted { call: &'static str, message: String },
    /// An operation finished with an error that resending cannot fix.
    #[error("{call}: operation {operation} failed with {code}: {message}")]
    OperationFailed {
        call: &'static str,
        operation: String,
        code: String,
        message: String,
    },
    /// Every attempt failed transiently (rate limits, 5xx, timeouts, connection errors).
    #[error("{call}: still failing after {attempts} attempt(s) in {elapsed_ms} ms: {message}")]
    Transient {
        call: &'static str,
        attempts: u32,
        elapsed_ms: u64,
        message: String,
    },
    /// Other writers kept changing the resource: every resend lost the fingerprint race.
    #[error("{call}: fingerprint race lost {resends} time(s) in a row")]
    Contention { call: &'static str, resends: u32 },
    /// The operation was not DONE before the deadline; it may still complete.
    #[error("{call}: operation {operation} not DONE after {deadline_ms} ms")]
    OperationTimeout {
        call: &'static str,
        operation: String,
        deadline_ms: u64,
    },
    /// The client could not be built.
    #[error("building the Compute Engine client failed")]
    Setup(#[source] Cause),
}

impl crate::error::Classify for ComputeError {
    /// True when trying the same thing again later may succeed.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ComputeError::Transient { .. }
                | ComputeError::Contention { .. }
                | ComputeError::OperationTimeout { .. }
        )
    }
}

/// How one failed attempt is handled. The only place that interprets Google's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Class {
    /// Retry the same request after a backoff.
    Retry(String),
    /// The fingerprint was stale: re-read and resend.
    Precondition,
    /// Permanent.
    Fail(ComputeError),
}

impl Attempt for Class {
    fn transient(&self) -> Option<&str> {
        match self {
            Class::Retry(m) => Some(m),
            Class::Precondition | Class::Fail(_) => None,
        }
    }
}

/// Google's status table (see [`toolkit::classify_http`]) mapped onto this client's errors.
pub(super) fn classify_status(
    call: &'static str,
    status: u16,
    reasons: &[&str],
    message: String,
) -> Class {
    match classify_http(status, reasons) {
        HttpClass::Precondition => Class::Precondition,
        HttpClass::Retry if status == 403 => {
            Class::Retry(format!("HTTP 403 rateLimitExceeded: {message}"))
        }
        HttpClass::Retry => Class::Retry(format!("HTTP {status}: {message}")),
        HttpClass::NotFound => Class::Fail(ComputeError::NotFound { call, message }),
        HttpClass::Conflict | HttpClass::Invalid | HttpClass::Permanent => {
            Class::Fail(ComputeError::Refused {
                call,
                status,
                reason: reasons
                    .first()
                    .map(|r| (*r).to_string())
                    .unwrap_or_default(),
                message,
            })
        }
    }
}

pub(super) fn reasons(e: &google_cloud_compute_v1::Error) -> Vec<String> {
    e.status()
        .map(|s| {
            s.details
                .iter()
                .filter_map(|d| match d {
                    StatusDetails::ErrorInfo(i) => Some(i.reason.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn classify_error(call: &'static str, e: &google_cloud_compute_v1::Error) -> Class {
    let message = e
        .status()
        .map(|s| s.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| e.to_string());
    let message = api_message(&message);
    let Some(status) = e.http_status_code() else {
        if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted() {
            return Class::Retry(message);
        }
        return Class::Fail(ComputeError::Refused {
            call,
            status: 0,
            reason: "client".into(),
            message,
        });
    };
    let reasons = reasons(e);
    let reasons: Vec<&str> = reasons.iter().map(String::as_str).collect();
    classify_status(call, status, &reasons, message)
}

pub(super) fn classify_operation(call: &'static str, op: &model::Operation) -> Option<Class> {
    let errors = op
        .error
        .as_ref()
        .map(|e| e.errors.as_slice())
        .unwrap_or_default();
    let http = op.http_error_status_code;
    if errors.is_empty() && http.is_none() {
        return None;
    }
    let first = errors.first();
    let code = first.and_then(|e| e.code.clone()).unwrap_or_default();
    let message = api_message(
        &first
            .and_then(|e| e.message.clone())
            .or_else(|| op.http_error_message.clone())
            .unwrap_or_default(),
    );
    let operation = op.name.clone().unwrap_or_default();
    Some(match code.as_str() {
        "CONDITION_NOT_MET" => Class::Precondition,
        "IP_IN_USE_BY_ANOTHER_RESOURCE" => Class::Fail(ComputeError::AliasInUse { call, message }),
        "IP_SPACE_EXHAUSTED" => Class::Fail(ComputeError::RangeExhausted { call, message }),
        "RESOURCE_NOT_FOUND" => Class::Fail(ComputeError::NotFound { call, message }),
        "RATE_LIMIT_EXCEEDED"
        | "RESOURCE_OPERATION_RATE_EXCEEDED"
        | "INTERNAL_ERROR"
        | "RESOURCE_NOT_READY" => Class::Retry(format!("{code}: {message}")),
        _ if http.is_some_and(|h| h == 429 || h >= 500) => {
            Class::Retry(format!("{code}: {message}"))
        }
        _ if http == Some(412) => Class::Precondition,
        _ => Class::Fail(ComputeError::OperationFailed {
            call,
            operation,
            code,
            message,
        }),
    })
}

/// Google's JSON error body (`{"error":{"code","message","errors":[{"reason"}]}}`) of a
/// request sent without the library.
pub(super) fn classify_body(call: &'static str, status: u16, body: &[u8]) -> Class {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = api_message(v["error"]["message"].as_str().unwrap_or("(no message)"));
    // Both shapes: the legacy `errors[].reason` and the `ErrorInfo` of `details[]`.
    let legacy = v["error"]["errors"].as_array().into_iter().flatten();
    let details = v["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.ErrorInfo"))
        });
    let reasons: Vec<&str> = legacy
        .chain(details)
        .filter_map(|e| e["reason"].as_str())
        .collect();
    classify_status(call, status, &reasons, message)
}

pub(super) fn class_to_error(call: &'static str) -> impl Fn(Class) -> ComputeError {
    move |c| match c {
        Class::Fail(e) => e,
        Class::Retry(message) => ComputeError::Transient {
            call,
            attempts: 1,
            elapsed_ms: 0,
            message,
        },
        Class::Precondition => ComputeError::Contention { call, resends: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class_of(status: u16, body: serde_json::Value) -> Class {
        classify_body("instances.setTags", status, body.to_string().as_bytes())
    }

    /// Google's bodies carry the reason in the legacy `errors[]`, in `details[]` as a
    /// `google.rpc.ErrorInfo` (<https://cloud.google.com/apis/design/errors>), or in both.
    #[test]
    fn reasons_are_read_from_either_shape() {
        let legacy = json!({"error": {"code": 403, "message": "Rate Limit Exceeded",
            "errors": [{"reason": "rateLimitExceeded", "domain": "usageLimits"}]}});
        let details = json!({"error": {"code": 403, "message": "Quota exceeded for quota metric",
            "status": "PERMISSION_DENIED",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com"}]}});
        for body in [legacy, details] {
            assert!(
                matches!(class_of(403, body.clone()), Class::Retry(_)),
                "{body}"
            );
        }
        let denied = json!({"error": {"code": 403, "message": "Required 'compute.instances.setTags' permission",
            "errors": [{"reason": "forbidden", "domain": "global"}],
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": "IAM_PERMISSION_DENIED", "domain": "googleapis.com"}]}});
        match class_of(403, denied) {
            Class::Fail(ComputeError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, 403);
                assert!(message.contains("compute.instances.setTags"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
