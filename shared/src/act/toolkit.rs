//! ACT, shared by the Compute and Kubernetes clients: one bounded retry loop with jittered
//! exponential backoff ([`Backoff`], [`retrying`]), one page walker ([`all_pages`] →
//! [`Listed`]), one table that classifies an HTTP error status and the reasons Google and
//! Kubernetes put in their error bodies ([`classify_http`]), and API message shortening
//! ([`api_message`]). Each client maps the class onto its own typed error; neither decides from
//! message strings.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Whether a write was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The change was made.
    Changed,
    /// The resource was already in the desired state; nothing was sent.
    Unchanged,
}

/// Retry bounds of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts on transient errors, the first included.
    pub max_attempts: u32,
    /// Total time one call may spend retrying.
    pub max_elapsed: Duration,
    /// First backoff; doubles each attempt, capped at `max`.
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause before retry `attempt` (1-based): the capped exponential delay, jittered to
    /// a uniformly random point in its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

/// A failed attempt that may be retried says so.
pub trait Attempt {
    /// The transient failure's message, or `None` when retrying cannot help.
    fn transient(&self) -> Option<&str>;
}

/// A call that kept failing transiently until the bounds ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub attempts: u32,
    pub elapsed_ms: u64,
    pub message: String,
}

/// Runs `f` until it succeeds, fails permanently, or the bounds of `policy` run out; then
/// `give_up` turns the last transient failure into the caller's error.
///
/// # Errors
/// The permanent failure, or `give_up`'s.
pub async fn retrying<T, E, F, Fut>(
    policy: &Backoff,
    call: &'static str,
    mut f: F,
    give_up: impl FnOnce(Exhausted) -> E,
) -> Result<T, E>
where
    E: Attempt,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match f().await {
            Err(e) => e,
            ok => return ok,
        };
        let Some(message) = err.transient() else {
            return Err(err);
        };
        let backoff = policy.delay(attempt);
        if attempt >= policy.max_attempts || started.elapsed() + backoff > policy.max_elapsed {
            return Err(give_up(Exhausted {
                attempts: attempt,
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                message: message.to_string(),
            }));
        }
        tracing::debug!(
            call,
            attempt,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            %message,
            "transient error; retrying"
        );
        tokio::time::sleep(backoff).await;
    }
}

/// Every item of a list, and how many pages (list calls) it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub pages: usize,
    /// Scopes the list could not read (Compute's `UNREACHABLE` zones): the items are partial,
    /// and what is missing from them is unknown, not absent.
    pub unreachable: Vec<String>,
}

/// Reads every page of a list: `fetch(token)` returns one page's items and the next page's
/// token (`None` or empty: that was the last). Returns the items and the number of pages.
///
/// # Errors
/// The first page that fails.
pub async fn all_pages<T, E, F, Fut>(mut fetch: F) -> Result<Listed<T>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), E>>,
{
    let mut out = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let (items, next) = fetch(token.take()).await?;
        pages += 1;
        out.extend(items);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => {
                return Ok(Listed {
                    items: out,
                    pages,
                    unreachable: Vec::new(),
                });
            }
        }
    }
}

/// What an HTTP error status means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClass {
    /// 429, 5xx, no status at all (the connection failed), or a rate-limit 403: try again.
    Retry,
    /// 412: the precondition (a fingerprint) no longer holds; re-read and resend.
    Precondition,
    /// 409 whose reason is `Conflict` (a stale `resourceVersion`); re-read and resend.
    Conflict,
    /// 404.
    NotFound,
    /// 422: the object was refused as invalid.
    Invalid,
    /// Anything else: permanent, with the API's message.
    Permanent,
}

/// Reasons that make a 403 a rate limit rather than a permission problem: the legacy
/// `error.errors[].reason` and the `google.rpc.ErrorInfo` reasons of `error.details[]`
/// (`google.api.ErrorReason`). Quota exhaustion (`QUOTA_EXCEEDED`, `quotaExceeded`) is not a
/// rate: it stays permanent, with the API's message.
const RATE_LIMIT_REASONS: &[&str] = &[
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "RATE_LIMIT_EXCEEDED",
    "RESOURCE_OPERATION_RATE_EXCEEDED",
];

/// The one table: an HTTP status and the error body's reasons → what to do.
pub fn classify_http(status: u16, reasons: &[&str]) -> HttpClass {
    let has = |r: &str| reasons.contains(&r);
    match status {
        0 | 429 | 500..=599 => HttpClass::Retry,
        403 if RATE_LIMIT_REASONS.iter().any(|r| has(r)) => HttpClass::Retry,
        // Compute Engine: another operation on the same resource is still running.
        400 if has("resourceNotReady") => HttpClass::Retry,
        412 => HttpClass::Precondition,
        409 if has("Conflict") => HttpClass::Conflict,
        404 => HttpClass::NotFound,
        422 => HttpClass::Invalid,
        _ => HttpClass::Permanent,
    }
}

pub use crate::text::api_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Transient(String),
        Permanent,
        GaveUp(u32),
    }
    impl Attempt for E {
        fn transient(&self) -> Option<&str> {
            match self {
                E::Transient(m) => Some(m),
                _ => None,
            }
        }
    }

    fn fast(max_attempts: u32) -> Backoff {
        Backoff {
            max_attempts,
            max_elapsed: Duration::from_secs(5),
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_within_the_bounds() {
        let mut n = 0;
        let r: Result<u32, E> = retrying(
            &fast(5),
            "c",
            || {
                n += 1;
                let v = n;
                async move {
                    if v < 3 {
                        Err(E::Transient("busy".into()))
                    } else {
                        Ok(v)
                    }
                }
            },
            |x| E::GaveUp(x.attempts),
        )
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<u32, E> = retrying(
            &fast(4),
            "c",
            || async { Err(E::Transient("busy".into())) },
            |x| E::GaveUp(x.attempts),
        )
        .await;
        assert_eq!(r, Err(E::GaveUp(4)));
        let mut calls = 0;
        let r: Result<u32, E> = retrying(
            &fast(4),
            "c",
            || {
                calls += 1;
                async { Err(E::Permanent) }
            },
            |x| E::GaveUp(x.attempts),
        )
        .await;
        assert_eq!((r, calls), (Err(E::Permanent), 1), "permanent: no retry");
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_last() {
        let r: Result<Listed<u32>, ()> = all_pages(|token| async move {
            Ok(match token.as_deref() {
                None => (vec![1, 2], Some("b".to_string())),
                Some("b") => (vec![3], Some(String::new())),
                Some(_) => (vec![99], None),
            })
        })
        .await;
        assert_eq!(
            r,
            Ok(Listed {
                items: vec![1, 2, 3],
                pages: 2,
                unreachable: vec![]
            })
        );
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let b = Backoff {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(60),
            base: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        for attempt in 1..12 {
            let d = b.delay(attempt);
            assert!(d <= Duration::from_millis(800), "{attempt}: {d:?}");
        }
        assert!(b.delay(1) >= Duration::from_millis(50));
        assert!(b.delay(9) >= Duration::from_millis(400));
    }

    #[test]
    fn the_table() {
        assert_eq!(classify_http(503, &[]), HttpClass::Retry);
        assert_eq!(classify_http(429, &[]), HttpClass::Retry);
        assert_eq!(classify_http(0, &[]), HttpClass::Retry);
        assert_eq!(classify_http(403, &["rateLimitExceeded"]), HttpClass::Retry);
        assert_eq!(classify_http(403, &["forbidden"]), HttpClass::Permanent);
        assert_eq!(
            classify_http(403, &["RATE_LIMIT_EXCEEDED"]),
            HttpClass::Retry
        );
        assert_eq!(
            classify_http(403, &["RESOURCE_OPERATION_RATE_EXCEEDED"]),
            HttpClass::Retry
        );
        assert_eq!(
            classify_http(403, &["QUOTA_EXCEEDED"]),
            HttpClass::Permanent
        );
        assert_eq!(
            classify_http(403, &["IAM_PERMISSION_DENIED"]),
            HttpClass::Permanent
        );
        assert_eq!(classify_http(412, &[]), HttpClass::Precondition);
        assert_eq!(classify_http(409, &["Conflict"]), HttpClass::Conflict);
        assert_eq!(classify_http(409, &["AlreadyExists"]), HttpClass::Permanent);
        assert_eq!(classify_http(404, &[]), HttpClass::NotFound);
        assert_eq!(classify_http(422, &[]), HttpClass::Invalid);
        assert_eq!(classify_http(400, &[]), HttpClass::Permanent);
        assert_eq!(classify_http(400, &["resourceNotReady"]), HttpClass::Retry);
        assert_eq!(classify_http(400, &["invalid"]), HttpClass::Permanent);
    }
}
