//! ARRIVE, decision side: a handler's result → what Pub/Sub is told. The only place where
//! errors become HTTP status codes.
//!
//! Push delivery counts 102, 200, 201, 202 and 204 as an ack; everything else is redelivered.
//! - success, or "not ours / nothing to do" → 204;
//! - transient → 503 (redelivered with the subscription's backoff);
//! - permanent → logged at ERROR, forwarded once to the dead-letter topic, then 204;
//! - a panic → 500;
//! - a permanent failure whose dead-lettering failed → 503 (redelivered, so it is not lost);
//! - a request that is not a delivery at all → 400 (there is no message to ack);
//! - a request whose sender is not proven (`auth`) → 401, 403, or 503 when Google's keys cannot
//!   be fetched; nothing of it is read.
//!
//! The plain HTTP service (`join`, which node VMs call, not Pub/Sub) answers with the same
//! rule for its failures — [`Refused`]: 401 an unproven caller, 403 a VM that may not join,
//! 409 a state that forbids it (its Node exists, a used token), 429 too many requests (with
//! `Retry-After`), 503 a dependency failing in a way that may pass, 500 one that will not.

use std::error::Error as StdError;
use std::fmt;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::auth::AuthError;

/// What a handler reports when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work was done (or was already done).
    Done,
    /// Nothing to do for this message; the reason is logged at DEBUG.
    Ignored(String),
    /// Done, with a JSON report for the caller (answered 200 with the report as body).
    Report(serde_json::Value),
}

pub use crate::error::Classify;

/// A handler error reduced to what the adapter needs: its class and its message chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    /// Captures the error and its `source()` chain as one line.
    pub fn from_error<E: StdError + Classify + ?Sized>(e: &E) -> Self {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            let s_msg = s.to_string();
            if !message.contains(&s_msg) {
                message.push_str(": ");
                message.push_str(&s_msg);
            }
            src = s.source();
        }
        Self {
            retryable: e.is_retryable(),
            message,
        }
    }
}

/// The adapter's decision for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: 204.
    Ack,
    /// Handled, with a report: 200 and the JSON body.
    Report(serde_json::Value),
    /// Nothing to do: 204, reason at DEBUG.
    Ignored(String),
    /// Transient failure: 503, redelivered.
    Retry(String),
    /// Permanent failure: ERROR log, dead-letter, 204.
    Reject(String),
    /// The handler panicked: 500.
    Panic(String),
    /// Permanent, but forwarding to the dead-letter topic failed: 503, so Pub/Sub keeps it.
    DeadLetterFailed(String),
    /// Not a Pub/Sub push, CloudEvent or Scheduler request: 400.
    NotADelivery(String),
    /// The sender is not proven or not allowed: 401 / 403 / 503 (see [`AuthError::status`]).
    Unauthenticated(AuthError),
}

impl Verdict {
    /// Interprets a handler's result.
    pub fn from_result(r: Result<Outcome, Failure>) -> Self {
        match r {
            Ok(Outcome::Done) => Verdict::Ack,
            Ok(Outcome::Ignored(why)) => Verdict::Ignored(why),
            Ok(Outcome::Report(v)) => Verdict::Report(v),
            Err(f) if f.retryable => Verdict::Retry(f.message),
            Err(f) => Verdict::Reject(f.message),
        }
    }

    /// The status Pub/Sub sees, once any dead-lettering has succeeded.
    pub fn status(&self) -> StatusCode {
        match self {
            Verdict::Ack | Verdict::Ignored(_) | Verdict::Reject(_) => StatusCode::NO_CONTENT,
            Verdict::Report(_) => StatusCode::OK,
            Verdict::Retry(_) | Verdict::DeadLetterFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Verdict::Panic(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Verdict::NotADelivery(_) => StatusCode::BAD_REQUEST,
            Verdict::Unauthenticated(e) => e.status(),
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Ack | Verdict::Report(_) => "ack",
            Verdict::Ignored(_) => "ignored",
            Verdict::Retry(_) | Verdict::DeadLetterFailed(_) => "retry",
            Verdict::Reject(_) => "dead-letter",
            Verdict::Panic(_) => "panic",
            Verdict::NotADelivery(_) => "refused",
            Verdict::Unauthenticated(_) => "unauthenticated",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ack | Verdict::Report(_) => f.write_str("ack"),
            Verdict::Ignored(r)
            | Verdict::Retry(r)
            | Verdict::Reject(r)
            | Verdict::Panic(r)
            | Verdict::DeadLetterFailed(r)
            | Verdict::NotADelivery(r) => write!(f, "{}: {r}", self.label()),
            Verdict::Unauthenticated(e) => write!(f, "{}: {e}", self.label()),
        }
    }
}

/// The HTTP answer: the status, with the report as JSON body, or the reason as text for the
/// answers Pub/Sub does not count as an ack (useful in the push subscription's metrics and
/// for a human calling by hand).
impl IntoResponse for Verdict {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            Verdict::Report(v) => (status, axum::Json(v)).into_response(),
            Verdict::Retry(r)
            | Verdict::Panic(r)
            | Verdict::DeadLetterFailed(r)
            | Verdict::NotADelivery(r) => (status, r).into_response(),
            Verdict::Unauthenticated(e) => {
                let mut resp = (status, e.to_string()).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                }
                resp
            }
            Verdict::Ack | Verdict::Ignored(_) | Verdict::Reject(_) => status.into_response(),
        }
    }
}

impl AuthError {
    /// The HTTP status a caller that is not proven gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid(_) | Self::NotConfigured => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The class of a refused plain HTTP request; [`RefusalClass::status`] is its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// The request itself is unusable (a malformed certificate request): 400.
    BadRequest,
    /// The caller is not proven: 401.
    Unauthenticated,
    /// Proven, but not allowed: 403.
    Forbidden,
    /// Allowed, but the state forbids it now: 409.
    Conflict,
    /// Too many requests: 429 (with `Retry-After`).
    RateLimited,
    /// A dependency failed in a way that may pass: 503.
    Unavailable,
    /// A dependency failed in a way that will not pass by itself: 500.
    Failed,
}

impl RefusalClass {
    /// The status code of this class.
    pub fn status(self) -> StatusCode {
        match self {
            RefusalClass::BadRequest => StatusCode::BAD_REQUEST,
            RefusalClass::Unauthenticated => StatusCode::UNAUTHORIZED,
            RefusalClass::Forbidden => StatusCode::FORBIDDEN,
            RefusalClass::Conflict => StatusCode::CONFLICT,
            RefusalClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RefusalClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RefusalClass::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why a plain HTTP request is refused: its class and a reason that is safe to log and to
/// answer (never a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub class: RefusalClass,
    pub reason: String,
    /// Seconds, for [`RefusalClass::RateLimited`].
    pub retry_after: Option<u64>,
    /// What went wrong inside (a Compute or Kubernetes error's text): logged, never answered.
    pub detail: Option<String>,
}

impl Refused {
    /// A refusal of `class`.
    pub fn new(class: RefusalClass, reason: impl Into<String>) -> Self {
        Self {
            class,
            reason: reason.into(),
            retry_after: None,
            detail: None,
        }
    }

    /// 429, try again after `secs`.
    pub fn rate_limited(reason: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(RefusalClass::RateLimited, reason)
        }
    }

    /// A caller the verifier did not accept.
    pub fn from_auth(e: &AuthError) -> Self {
        let class = match e.status() {
            StatusCode::FORBIDDEN => RefusalClass::Forbidden,
            StatusCode::SERVICE_UNAVAILABLE => RefusalClass::Unavailable,
            _ => RefusalClass::Unauthenticated,
        };
        Self::new(class, e.to_string())
    }

    /// A dependency (`what`) failed: 503 when trying again may help, 500 when not. The
    /// caller is told which step failed, not the API's error text (it may name other
    /// resources or the cluster's internals): that is the logged [`Refused::detail`].
    pub fn dependency(what: &str, e: &(impl fmt::Display + Classify)) -> Self {
        let (class, then) = if e.is_retryable() {
            (RefusalClass::Unavailable, "try again shortly")
        } else {
            (RefusalClass::Failed, "the operator is told by the log")
        };
        Self {
            detail: Some(e.to_string()),
            ..Self::new(class, format!("{what} failed; {then}"))
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.class.status()
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = (self.status(), format!("{}\n", self.reason)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20, item 5: a dependency's error text reaches the log, not the caller.
    #[tokio::test]
    async fn a_dependency_failure_is_answered_without_its_text() {
        #[derive(Debug, thiserror::Error)]
        #[error(
            "secrets \"bootstrap-token-abcdef\" is forbidden: User \"system:serviceaccount:kube-system:nodewire\""
        )]
        struct Api(bool);
        impl Classify for Api {
            fn is_retryable(&self) -> bool {
                self.0
            }
        }
        for (retry, status) in [
            (true, StatusCode::SERVICE_UNAVAILABLE),
            (false, StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let r = Refused::dependency("minting the join token", &Api(retry));
            assert!(r.detail.as_deref().is_some_and(|d| d.contains("forbidden")));
            let resp = r.into_response();
            assert_eq!(resp.status(), status);
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            assert!(body.starts_with("minting the join token failed"), "{body}");
            assert!(
                !body.contains("forbidden") && !body.contains("nodewire"),
                "{body}"
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error, bool);
    impl Classify for Outer {
        fn is_retryable(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn mapping() {
        assert_eq!(
            Verdict::from_result(Ok(Outcome::Done)).status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            Verdict::from_result(Ok(Outcome::Ignored("x".into()))).status(),
            StatusCode::NO_CONTENT
        );
        let transient = Failure::from_error(&Outer(std::io::Error::other("inner"), true));
        assert_eq!(transient.message, "outer: inner");
        let v = Verdict::from_result(Err(transient));
        assert_eq!(v.status(), StatusCode::SERVICE_UNAVAILABLE);
        let permanent = Failure::from_error(&Outer(std::io::Error::other("inner"), false));
        let v = Verdict::from_result(Err(permanent));
        assert!(matches!(v, Verdict::Reject(ref m) if m == "outer: inner"));
        assert_eq!(v.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            Verdict::Panic("boom".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
