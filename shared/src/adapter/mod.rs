//! ARRIVE: our lambda_http-style adapter on axum. A function author writes a plain async fn
//! and hands the adapter a closure that owns (or shares, in an `Arc`) what it needs — the way
//! axum's `State` and the AWS Lambda runtime's `service_fn` do:
//!
//! ```no_run
//! # use nodewire::adapter::{Outcome, PushEvent, Classify};
//! # use nodewire::act::deps::Deps;
//! # #[derive(Debug, thiserror::Error)] #[error("e")] struct MyError;
//! # impl Classify for MyError { fn is_retryable(&self) -> bool { false } }
//! async fn handle(event: PushEvent<nodewire::event::StepMessage>, deps: &Deps) -> Result<Outcome, MyError> {
//!     Ok(Outcome::Done)
//! }
//! # async fn run(deps: Deps) -> std::io::Result<()> {
//! let state = deps.clone();
//! nodewire::adapter::serve(deps, move |event| {
//!     let deps = state.clone();
//!     async move { handle(event, &deps).await }
//! })
//! .await
//! # }
//! ```
//!
//! and the adapter owns the rest: HTTP (`POST /` deliveries, `GET /healthz`), the Pub/Sub push
//! envelope and Eventarc CloudEvents, decoding the payload, the per-delivery span, the body cap
//! (413), the deadline, panics (500), the ack/retry/dead-letter decision and graceful shutdown.
//! It must not know what any function does.

pub mod auth;
pub mod push;
pub mod verdict;

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use futures::FutureExt as _;
use http::HeaderMap;
use tokio::net::TcpListener;
use tracing::Instrument as _;

pub use auth::{AuthError, Authenticator, Caller};
pub use push::{EnvelopeError, PushEvent, PushMeta, Transport, parse_delivery};
pub use verdict::{Classify, Failure, Outcome, RefusalClass, Refused, Verdict};

use crate::act::deps::Deps;
use crate::bus::OutboundMessage;
use crate::event::Decode;

/// Attributes added to a message forwarded to the dead-letter topic.
pub mod dead_letter_attr {
    /// Why the message can never succeed.
    pub const REASON: &str = "nodewire-dead-letter-reason";
    /// The function (Cloud Run service) that refused it.
    pub const SERVICE: &str = "nodewire-dead-letter-service";
    /// The subscription it was delivered through.
    pub const SUBSCRIPTION: &str = "nodewire-dead-letter-subscription";
    /// Its message id on that subscription.
    pub const MESSAGE_ID: &str = "nodewire-dead-letter-message-id";
    /// Its original publish time.
    pub const PUBLISH_TIME: &str = "nodewire-dead-letter-publish-time";
}

/// Pub/Sub attribute values are limited to 1024 bytes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Pub/Sub's limit on attributes per message.
const MAX_ATTRIBUTES: usize = 100;

/// A message delivered this many times and still failing is dead-lettered (Pub/Sub's own
/// dead-letter policy allows at most 100 attempts; this holds without one too).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 100;

/// How long the publisher may take to flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(1500);

/// A handler: any `Fn(PushEvent<T>) -> impl Future<Output = Result<Outcome, E>>` where `E`
/// says whether it is retryable — typically a closure that owns its state. Implemented for
/// such functions; not meant to be implemented by hand.
pub trait Handler<T>: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + 'static;
    type Future: Future<Output = Result<Outcome, Self::Error>> + Send + 'static;
    fn call(&self, event: PushEvent<T>) -> Self::Future;
}

impl<T, F, Fut, E> Handler<T> for F
where
    F: Fn(PushEvent<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: std::error::Error + Classify + Send + 'static,
{
    type Error = E;
    type Future = Fut;
    fn call(&self, event: PushEvent<T>) -> Fut {
        self(event)
    }
}

struct App<T, H> {
    deps: Deps,
    auth: Authenticator,
    handler: H,
    _payload: PhantomData<fn() -> T>,
}

/// The HTTP router of a function: `POST /` for deliveries, `GET /healthz`.
pub fn router<T, H>(deps: Deps, handler: H) -> Router
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    let limit = deps.config.limits.max_body_bytes;
    let auth = Authenticator::new(&deps.config.push_auth);
    let app = Arc::new(App {
        deps,
        auth,
        handler,
        _payload: PhantomData,
    });
    Router::new()
        .route("/", post(deliver::<T, H>))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn deliver<T, H>(
    State(app): State<Arc<App<T, H>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    // The last guard: whatever panics in a delivery (envelope parsing, logging, dead-lettering)
    // answers 500 instead of dropping the connection.
    match AssertUnwindSafe(deliver_guarded(&app, &headers, &body))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let reason = panic_message(panic.as_ref());
            tracing::error!(verdict = "panic", %reason, "delivery panicked; answering 500");
            Verdict::Panic(reason).into_response()
        }
    }
}

async fn deliver_guarded<T, H>(app: &App<T, H>, headers: &HeaderMap, body: &Bytes) -> Response
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    // Who sent it, before anything of it is read.
    let caller = match app.auth.check(headers).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                verdict = "unauthenticated",
                status = e.status().as_u16(),
                reason = %e,
                bytes = body.len(),
                "request refused: its sender is not proven"
            );
            return Verdict::Unauthenticated(e).into_response();
        }
    };
    let caller = caller.map_or_else(|| "unchecked".to_string(), |c| c.email);
    let meta = match parse_delivery(headers, body) {
        Ok(m) => m,
        Err(e) => {
            // Not a delivery: there is no message to ack or to dead-letter.
            tracing::error!(error = %e, bytes = body.len(), "request refused: not a delivery");
            return Verdict::NotADelivery(e.to_string()).into_response();
        }
    };
    let cfg = app.deps.config.clone();
    let span = tracing::info_span!(
        "delivery",
        service = %cfg.service,
        message_id = %meta.message_id,
        subscription = %meta.subscription,
        delivery_attempt = meta.delivery_attempt,
        caller = %caller,
        trace = %meta.trace.logging_trace(&cfg.pubsub.project),
        span_id = %meta.trace.span_id(),
    );
    async move {
        let started = Instant::now();
        let verdict = process(app, meta.clone()).await;
        let verdict = give_up_if_too_old(verdict, &meta, cfg.limits.max_retry_age);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let verdict = match verdict {
            Verdict::Reject(reason) => match dead_letter(&app.deps, &meta, &reason).await {
                Ok(id) => {
                    tracing::error!(verdict = "dead-letter", reason_class = reason_class(&reason), %reason, dead_letter_message_id = %id, elapsed_ms, "delivery failed permanently; forwarded to the dead-letter topic and acked");
                    Verdict::Reject(reason)
                }
                Err(e) if past_dead_letter_bound(&meta, cfg.limits.max_retry_age) => {
                    // The dead-letter topic has been failing for longer than any retry may
                    // last: give up rather than loop for ever. The subscription's own
                    // dead-letter policy (max delivery attempts) is the backstop in production.
                    tracing::error!(verdict = "dropped", %reason, error = %e, elapsed_ms, publish_time = ?meta.publish_time, data_bytes = meta.data.len(), "delivery failed permanently and dead-lettering kept failing past twice the retry bound; acked and dropped");
                    Verdict::Reject(reason)
                }
                Err(e) => {
                    tracing::error!(verdict = "retry", %reason, error = %e, elapsed_ms, "delivery failed permanently but dead-lettering failed; asking for redelivery");
                    Verdict::DeadLetterFailed(reason)
                }
            },
            v => {
                log_verdict(&v, elapsed_ms);
                v
            }
        };
        verdict.into_response()
    }
    .instrument(span)
    .await
}

fn log_verdict(verdict: &Verdict, elapsed_ms: u64) {
    match verdict {
        Verdict::Ack => tracing::info!(verdict = "ack", elapsed_ms, "delivery handled"),
        Verdict::Report(report) => {
            tracing::info!(verdict = "ack", elapsed_ms, %report, "delivery handled");
        }
        Verdict::Ignored(reason) => {
            tracing::debug!(verdict = "ignored", %reason, elapsed_ms, "delivery ignored");
        }
        Verdict::Retry(reason) => {
            tracing::warn!(verdict = "retry", %reason, elapsed_ms, "delivery failed transiently; asking for redelivery");
        }
        Verdict::Panic(reason) => {
            tracing::error!(verdict = "panic", %reason, elapsed_ms, "handler panicked; answering 500");
        }
        Verdict::Reject(_)
        | Verdict::DeadLetterFailed(_)
        | Verdict::NotADelivery(_)
        | Verdict::Unauthenticated(_) => {}
    }
}

async fn process<T, H>(app: &App<T, H>, meta: PushMeta) -> Verdict
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    // Decoding runs inside the panic guard too: a decoder bug must answer 500, not drop the
    // connection (which Pub/Sub would redeliver forever).
    let work = async {
        let payload = match T::decode(&meta.data) {
            Ok(p) => p,
            Err(e) => return Verdict::Reject(format!("{UNDECODABLE}: {e}")),
        };
        let event = PushEvent { payload, meta };
        let result = app.handler.call(event).await;
        Verdict::from_result(result.map_err(|e| Failure::from_error(&e)))
    };
    let guarded = AssertUnwindSafe(work).catch_unwind();
    match tokio::time::timeout(app.deps.config.limits.request_timeout, guarded).await {
        Err(_) => Verdict::Retry(format!(
            "the delivery deadline of {:?} passed",
            app.deps.config.limits.request_timeout
        )),
        Ok(Err(panic)) => Verdict::Panic(panic_message(panic.as_ref())),
        Ok(Ok(verdict)) => verdict,
    }
}

/// How the reason of a payload that does not decode begins.
const UNDECODABLE: &str = "undecodable payload";

/// A bounded name for why a message was dead-lettered (the `reason` itself is free text): the
/// label of the log-based metric `nodewire/dead_letters`. Read off the prefixes this module
/// writes; everything else is a handler's permanent failure.
pub fn reason_class(reason: &str) -> &'static str {
    if reason.starts_with(UNDECODABLE) {
        "undecodable"
    } else if reason.starts_with("still failing at delivery attempt") {
        "attempts-exhausted"
    } else if reason.starts_with("still failing ") {
        "retry-age-exhausted"
    } else if reason.starts_with("no publish time") {
        "no-publish-time"
    } else {
        "permanent"
    }
}

/// A message that keeps failing transiently is dead-lettered once it is older than the bound,
/// so that no retry loop is endless even without a dead-letter policy on the subscription.
///
/// A panic is aged the same way (a payload that always panics must not be redelivered for
/// ever), and so is a message Pub/Sub has delivered [`MAX_DELIVERY_ATTEMPTS`] times.
fn give_up_if_too_old(verdict: Verdict, meta: &PushMeta, max_age: Duration) -> Verdict {
    let (reason, panicked) = match verdict {
        Verdict::Retry(r) => (r, false),
        Verdict::Panic(r) => (r, true),
        v => return v,
    };
    let again = |reason: String| {
        if panicked {
            Verdict::Panic(reason)
        } else {
            Verdict::Retry(reason)
        }
    };
    let label = if panicked {
        format!("panicked: {reason}")
    } else {
        reason.clone()
    };
    if meta
        .delivery_attempt
        .is_some_and(|n| u64::from(n) >= u64::from(MAX_DELIVERY_ATTEMPTS))
    {
        return Verdict::Reject(format!(
            "still failing at delivery attempt {} (bound {MAX_DELIVERY_ATTEMPTS}): {label}",
            meta.delivery_attempt.unwrap_or_default()
        ));
    }
    match message_age(meta) {
        Some(age) => {
            if age > max_age {
                Verdict::Reject(format!(
                    "still failing {}s after publication (bound {}s): {label}",
                    age.whole_seconds(),
                    max_age.as_secs()
                ))
            } else {
                again(reason)
            }
        }
        // Pub/Sub always sends a publish time; without one the age of the message cannot be
        // told, and a retry could go on for ever: give up now.
        None => Verdict::Reject(format!(
            "no publish time, so its retries cannot be bounded: {label}"
        )),
    }
}

/// True when a message that cannot be dead-lettered is older than twice the retry bound (or
/// has no publish time at all): redelivering it again cannot be allowed to go on for ever.
fn past_dead_letter_bound(meta: &PushMeta, max_age: Duration) -> bool {
    message_age(meta).is_none_or(|age| age > max_age * 2)
}

/// How long ago the message was published; `None` without a (readable) publish time.
fn message_age(meta: &PushMeta) -> Option<time::Duration> {
    let t = meta.publish_time.as_deref()?;
    let published =
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time::OffsetDateTime::now_utc() - published)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Forwards the original message to the dead-letter topic with the reason in attributes.
async fn dead_letter(
    deps: &Deps,
    meta: &PushMeta,
    reason: &str,
) -> Result<String, crate::bus::BusError> {
    use dead_letter_attr as a;
    // Pub/Sub takes at most 100 attributes: keep room for the five added here, and say how
    // many of the original's were left out (a message that cannot be dead-lettered would be
    // redelivered for ever).
    let mut attributes: BTreeMap<String, String> = meta
        .attributes
        .iter()
        .take(MAX_ATTRIBUTES - 6)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let dropped = meta.attributes.len().saturating_sub(attributes.len());
    if dropped > 0 {
        attributes.insert(
            format!("{}-attributes-dropped", a::REASON),
            dropped.to_string(),
        );
    }
    let mut put = |k: &str, v: &str| {
        attributes.insert(k.to_string(), crate::text::shorten(v, MAX_ATTRIBUTE_BYTES));
    };
    put(a::REASON, reason);
    put(a::SERVICE, &deps.config.service);
    put(a::SUBSCRIPTION, &meta.subscription);
    put(a::MESSAGE_ID, &meta.message_id);
    if let Some(t) = &meta.publish_time {
        put(a::PUBLISH_TIME, t);
    }
    let msg = OutboundMessage {
        data: meta.data.to_vec(),
        attributes,
        ordering_key: None,
    };
    deps.bus
        .publish(&deps.config.pubsub.dead_letter_topic, msg)
        .await
}

/// Serves `handler` on `0.0.0.0:$PORT` until SIGTERM/SIGINT, then drains and flushes. With
/// push authentication off (`NODEWIRE_PUSH_AUTH=off`) it serves on `127.0.0.1:$PORT` only.
///
/// # Errors
/// The I/O error when the port cannot be bound or the server fails; `InvalidInput` when push
/// authentication is not configured.
pub async fn serve<T, H>(deps: Deps, handler: H) -> std::io::Result<()>
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    let listener = bind(&deps).await?;
    serve_on(listener, deps, handler, crate::shutdown::signal()).await
}

/// Binds `0.0.0.0:$PORT`, or `127.0.0.1:$PORT` when push authentication is off.
///
/// # Errors
/// The I/O error when the port cannot be bound.
pub async fn bind(deps: &Deps) -> std::io::Result<TcpListener> {
    let host = match deps.config.push_auth {
        crate::config::PushAuthSettings::Off => [127, 0, 0, 1],
        _ => [0, 0, 0, 0],
    };
    TcpListener::bind(SocketAddr::from((host, deps.config.port))).await
}

/// Refuses to serve without a push authentication setting, or with it off anywhere but on
/// loopback; says loudly that it is off.
fn check_exposure(
    auth: &crate::config::PushAuthSettings,
    local: SocketAddr,
) -> std::io::Result<()> {
    use crate::config::PushAuthSettings as P;
    match auth {
        P::Unset => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "push authentication is not configured: set NODEWIRE_PUSH_AUDIENCES and \
             NODEWIRE_PUSH_INVOKERS (or NODEWIRE_PUSH_AUTH=off for loopback use)",
        )),
        P::Off if !local.ip().is_loopback() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "push authentication is off (NODEWIRE_PUSH_AUTH=off), which is allowed on \
                 loopback only, and this server listens on {local}"
            ),
        )),
        P::Off => {
            // Once per process (the sandbox serves every function from one).
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    address = %local,
                    "PUSH AUTHENTICATION IS OFF: any local process can make these functions \
                     act; for the sandbox and tests only"
                );
            });
            Ok(())
        }
        P::Oidc(_) => Ok(()),
    }
}

/// Serves on a bound listener until `shutdown` resolves. Then: stop accepting, let in-flight
/// deliveries finish within `limits.shutdown_grace`, flush the publisher, return.
///
/// # Errors
/// The I/O error when the server fails.
pub async fn serve_on<T, H, S>(
    listener: TcpListener,
    deps: Deps,
    handler: H,
    shutdown: S,
) -> std::io::Result<()>
where
    T: Decode + Send + 'static,
    H: Handler<T>,
    S: Future<Output = ()> + Send + 'static,
{
    let app = router(deps.clone(), handler);
    serve_router(listener, deps, app, shutdown).await
}

/// Serves any router (an HTTP function that is not a Pub/Sub subscriber, such as `join`) with
/// the adapter's exposure check, graceful shutdown and publisher flush.
///
/// # Errors
/// The I/O error when the server fails; `InvalidInput` when push authentication is not
/// configured, or off on a non-loopback address.
pub async fn serve_router<S>(
    listener: TcpListener,
    deps: Deps,
    app: Router,
    shutdown: S,
) -> std::io::Result<()>
where
    S: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr()?;
    check_exposure(&deps.config.push_auth, local)?;
    let grace = deps.config.limits.shutdown_grace;
    let bus = deps.bus.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    tracing::info!(address = %local, "listening");
    tokio::select! {
        res = &mut server => {
            return res.map_err(std::io::Error::other).and_then(|r| r);
        }
        () = shutdown => {}
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "draining in-flight deliveries"
    );
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, &mut server).await {
        Ok(Ok(Ok(()))) => tracing::info!("all deliveries finished"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error while draining"),
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed while draining"),
        Err(_) => {
            tracing::warn!(
                "deliveries still running after the grace period; abandoning them (they will be redelivered)"
            );
            server.abort();
        }
    }
    if tokio::time::timeout(FLUSH_TIMEOUT, bus.flush())
        .await
        .is_err()
    {
        tracing::warn!("publisher flush did not finish in time");
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod auth_tests;
