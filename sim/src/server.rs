//! The HTTP front both simulators share: serving on 127.0.0.1, fault injection and the request
//! log around every handler ([`crate::faults`]), and query strings. What an answer says — Google's
//! error JSON or a Kubernetes `Status` — is each simulator's own; this module only carries it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::faults::{Chaos, InjectedError, LoggedRequest};

/// A simulator's state, as the shared front sees it.
pub(crate) trait Service: Send + Sync + Sized + 'static {
    /// How the simulator is configured.
    type Config;

    /// The state a simulator starts from.
    fn new(config: Self::Config) -> Self;

    /// Every route the simulator serves.
    fn router(sim: Arc<Self>) -> Router;

    /// Faults and the request log.
    fn chaos(&self) -> &Chaos;

    /// The answer to an injected fault, in the simulated API's error shape.
    fn injected(error: InjectedError) -> Answer;

    /// Starts what runs beside the HTTP server (controllers on a timer); called once, inside
    /// the runtime. A task started here must hold the state weakly, so that it ends when the
    /// simulator is dropped.
    fn started(_sim: &Arc<Self>) {}
}

/// An HTTP answer: a status and a JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Answer {
    /// 200 with `body`.
    pub(crate) fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    /// `code` with `body`; a code that is no HTTP status answers 400.
    pub(crate) fn with_code(code: u16, body: Value) -> Self {
        Self {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            body,
        }
    }
}

impl From<(StatusCode, Value)> for Answer {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Self { status, body }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A handler's success and its refusal are both answers.
impl<T: Into<Answer>, E: Into<Answer>> From<Result<T, E>> for Answer {
    fn from(r: Result<T, E>) -> Self {
        r.map_or_else(Into::into, Into::into)
    }
}

/// What the request log keeps of a request besides its body: the HTTP method and the URI.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: axum::http::HeaderMap,
    /// The client certificate the TLS front verified (DER), for the x509 authenticator.
    pub(crate) client_cert: Option<std::sync::Arc<Vec<u8>>>,
}

impl Call {
    /// A request header as text (empty when absent or not ASCII).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            client_cert: parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::tls::PeerCertificate>>()
                .and_then(|c| c.0.0.clone()),
        })
    }
}

/// Wraps every handler: the method's added latency and injected errors first, then the request
/// log. `method` is the API method the faults are configured by (`instances.setTags`,
/// `nodes.patch`, …); `body` is logged as JSON (`null` when it is none).
pub(crate) async fn run<S: Service, A: Into<Answer>>(
    sim: &Arc<S>,
    method: &str,
    call: &Call,
    body: &[u8],
    handle: impl FnOnce(&Arc<S>) -> A,
) -> Response {
    let chaos = sim.chaos();
    let spec = chaos.faults_for(method);
    if !spec.latency.is_zero() {
        tokio::time::sleep(spec.latency).await;
    }
    let (answer, injected) = match chaos.draw_error(method) {
        Some(e) => (S::injected(e), true),
        None => {
            let answer: Answer = handle(sim).into();
            // The effect is applied; only the answer is lost on its way back.
            if answer.status.is_success() && chaos.draw_lost_answer(method) {
                (S::injected(InjectedError::Unavailable), true)
            } else {
                (answer, false)
            }
        }
    };
    chaos.record(LoggedRequest {
        method: method.to_string(),
        http_method: call.method.to_string(),
        path: call.uri.path().to_string(),
        query: call.uri.query().unwrap_or_default().to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        status: answer.status.as_u16(),
        response: answer.body.clone(),
        at: chaos.elapsed(),
        injected,
    });
    answer.into_response()
}

/// A listener on `127.0.0.1` with a free port.
///
/// # Errors
/// When the port cannot be bound.
pub(crate) async fn bind_local() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").await
}

/// A simulator serving on a bound listener; dropping it stops the server.
pub(crate) struct Server<S> {
    sim: Arc<S>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl<S: Service> Server<S> {
    /// Serves the simulator configured by `config` on `listener`. The state is built once the
    /// listener's address is known, so nothing is started for a listener that has none.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub(crate) fn start(listener: TcpListener, config: S::Config) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let sim = Arc::new(S::new(config));
        S::started(&sim);
        let app = S::router(sim.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { sim, addr, task })
    }

    pub(crate) fn sim(&self) -> &Arc<S> {
        &self.sim
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults and the request log.
    pub(crate) fn chaos(&self) -> &Chaos {
        self.sim.chaos()
    }
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Gives a running simulator — a struct `$name { server: Server<S> }` where `S` is configured
/// by `$config` — the public face both share: `start`, `start_on`, `endpoint`, `addr`, `chaos`
/// and a `Debug` that shows the address.
macro_rules! running_simulator {
    ($name:ident, $config:ty) => {
        impl $name {
            /// Starts on `127.0.0.1:0`.
            ///
            /// # Errors
            /// When the port cannot be bound.
            pub async fn start(config: $config) -> ::std::io::Result<Self> {
                Self::start_on($crate::server::bind_local().await?, config)
            }

            /// Starts on a bound listener.
            ///
            /// # Errors
            /// When the listener has no local address.
            pub fn start_on(
                listener: ::tokio::net::TcpListener,
                config: $config,
            ) -> ::std::io::Result<Self> {
                $crate::server::Server::start(listener, config).map(|server| Self { server })
            }

            /// `http://127.0.0.1:PORT` (the client's endpoint).
            pub fn endpoint(&self) -> String {
                self.server.endpoint()
            }

            pub fn addr(&self) -> ::std::net::SocketAddr {
                self.server.addr()
            }

            /// Faults and the request log.
            pub fn chaos(&self) -> &$crate::faults::Chaos {
                self.server.chaos()
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("addr", &self.server.addr())
                    .finish()
            }
        }
    };
}
pub(crate) use running_simulator;

/// A query string's parameters, percent-decoded with `+` as a space; of a repeated key the last
/// one counts.
pub(crate) type Query = BTreeMap<String, String>;

/// What becomes of a parameter whose key or value has a malformed escape (`%zz`, or `%` with
/// fewer than two characters after it decodes as written) or decodes to bytes that are not
/// UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// The parameter is left out (the Compute simulator).
    Skip,
    /// The escape stays as written and invalid UTF-8 becomes U+FFFD (the Kubernetes simulator).
    Keep,
}

/// Parses a raw query string (`None`: no query).
pub(crate) fn parse_query(q: Option<&str>, malformed: Malformed) -> Query {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((pct_decode(k, malformed)?, pct_decode(v, malformed)?))
        })
        .collect()
}

fn pct_decode(s: &str, malformed: Malformed) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut well_formed = true;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let escaped = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = escaped {
                    out.push(b);
                    i += 3;
                } else {
                    well_formed = false;
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    match malformed {
        Malformed::Skip if !well_formed => None,
        Malformed::Skip => String::from_utf8(out).ok(),
        Malformed::Keep => Some(String::from_utf8_lossy(&out).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        for m in [Malformed::Skip, Malformed::Keep] {
            let q = parse_query(
                Some("labelSelector=a%3Db%2Cc&filter=name+%3D+%22x%22&flag"),
                m,
            );
            assert_eq!(q["labelSelector"], "a=b,c");
            assert_eq!(q["filter"], "name = \"x\"");
            assert_eq!(q["flag"], "");
        }
        assert!(parse_query(None, Malformed::Skip).is_empty());
    }

    #[test]
    fn malformed_parameters_are_skipped_or_kept_as_written() {
        let raw = Some("a=%zz&b=%4&c=%ff&d=1&d=2");
        let skip = parse_query(raw, Malformed::Skip);
        assert_eq!(skip.get("a"), None, "malformed escape");
        assert_eq!(skip["b"], "%4", "too short to be an escape");
        assert_eq!(skip.get("c"), None, "not UTF-8");
        assert_eq!(skip["d"], "2", "the last of a repeated key");
        let keep = parse_query(raw, Malformed::Keep);
        assert_eq!(keep["a"], "%zz");
        assert_eq!(keep["b"], "%4");
        assert_eq!(keep["c"], "\u{fffd}");
        assert_eq!(keep["d"], "2");
    }
}
