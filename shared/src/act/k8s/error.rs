//! ACT, Kubernetes side: the client's typed errors, and how a failed attempt is classified
//! (the shared status table in `toolkit`, plus kube's transport errors). The only place that
//! interprets kube's errors.

use crate::act::toolkit::{Attempt, HttpClass, api_message, classify_http};
use crate::error::Cause;

/// What went wrong talking to the API server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// 422: the API refused the change as invalid (immutable field, bad format).
    #[error("{call}: invalid: {message}")]
    Invalid { call: &'static str, message: String },
    /// The Node's providerID is set to something else; it can only be fixed by deleting the Node.
    #[error(transparent)]
    ProviderIdConflict(#[from] crate::names::ProviderIdConflict),
    /// The object does not exist.
    #[error("{call}: {message}")]
    NotFound { call: &'static str, message: String },
    /// Refused for another reason resending cannot fix (400, 401, 403, …).
    #[error("{call}: refused with HTTP {code} ({reason}): {message}")]
    Refused {
        call: &'static str,
        code: u16,
        reason: String,
        message: String,
    },
    /// Every attempt failed transiently (429, 5xx, timeouts, connection errors, conflicts).
    #[error("{call}: still failing after {attempts} attempt(s): {message}")]
    Transient {
        call: &'static str,
        attempts: u32,
        message: String,
    },
    /// `kube-public/cluster-info` is missing or unusable.
    #[error("cluster-info: {0}")]
    ClusterInfo(String),
    /// The client could not be built.
    #[error("building the Kubernetes client failed")]
    Setup(#[source] Cause),
}

impl crate::error::Classify for KubeError {
    fn is_retryable(&self) -> bool {
        matches!(self, KubeError::Transient { .. })
    }
}

/// How one failed attempt is handled; the only place that interprets kube's errors.
#[derive(Debug)]
pub(super) enum Class {
    Retry(String),
    Conflict,
    Fail(KubeError),
}

impl Attempt for Class {
    fn transient(&self) -> Option<&str> {
        match self {
            Class::Retry(m) => Some(m),
            Class::Conflict | Class::Fail(_) => None,
        }
    }
}

pub(super) fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = x.source();
    }
    None
}

pub(super) fn classify(call: &'static str, e: &kube::Error) -> Class {
    match e {
        // A projected service-account token rotates; the client re-reads its file within a
        // minute. A 401 is therefore retried (bounded like every transient failure), not a
        // permanent error that would dead-letter every delivery until the file is re-read.
        kube::Error::Api(s) if s.code == 401 => Class::Retry(format!(
            "HTTP 401 {}: {} (the bearer token may have just rotated)",
            s.reason,
            api_message(&s.message)
        )),
        kube::Error::Api(s) => {
            let message = api_message(&s.message);
            match classify_http(s.code, &[s.reason.as_str()]) {
                HttpClass::Conflict => Class::Conflict,
                HttpClass::Retry => {
                    Class::Retry(format!("HTTP {} {}: {message}", s.code, s.reason))
                }
                HttpClass::NotFound => Class::Fail(KubeError::NotFound { call, message }),
                HttpClass::Invalid => Class::Fail(KubeError::Invalid { call, message }),
                HttpClass::Precondition | HttpClass::Permanent => Class::Fail(KubeError::Refused {
                    call,
                    code: s.code,
                    reason: s.reason.clone(),
                    message,
                }),
            }
        }
        kube::Error::Service(b) => {
            if io_kind(b.as_ref()) == Some(std::io::ErrorKind::InvalidData) {
                Class::Fail(KubeError::Refused {
                    call,
                    code: 0,
                    reason: "tls".into(),
                    message: b.to_string(),
                })
            } else {
                Class::Retry(b.to_string())
            }
        }
        kube::Error::HyperError(h) => Class::Retry(h.to_string()),
        other => Class::Fail(KubeError::Refused {
            call,
            code: 0,
            reason: "client".into(),
            message: api_message(&other.to_string()),
        }),
    }
}

pub(super) fn fail(call: &'static str, c: Class) -> KubeError {
    match c {
        Class::Fail(e) => e,
        Class::Retry(message) => KubeError::Transient {
            call,
            attempts: 1,
            message,
        },
        Class::Conflict => KubeError::Transient {
            call,
            attempts: 1,
            message: "409 Conflict".into(),
        },
    }
}
