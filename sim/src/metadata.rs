//! The simulated metadata server's instance identity endpoint, and the key set that verifies
//! what it issues (issue 12).
//!
//! `GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
//! answers an RS256 JWT signed by a key made at start, with the claims Google documents
//! (<https://cloud.google.com/compute/docs/instances/verifying-instance-identity>): `iss`
//! `https://accounts.google.com`, `aud`, `azp`/`sub` (the account's unique id), `email`,
//! `email_verified`, `iat`, `exp` one hour later and, with `format=full`, `google.compute_engine`
//! (`project_id`, `project_number`, `zone`, `instance_id`, `instance_name`,
//! `instance_creation_timestamp`). It is as strict as the real server:
//! - without `Metadata-Flavor: Google`, or with an `X-Forwarded-For` header, 403
//!   (<https://cloud.google.com/compute/docs/metadata/querying-metadata>);
//! - without a non-empty `audience`, 400;
//! - a `format` other than `standard` or `full`, 400;
//! - a VM without a service account has no `service-accounts/default`: 404;
//! - a VM that is not RUNNING runs no metadata client: the request is refused (503).
//!
//! On a real VM the server knows which VM asks by where the request comes from; here every VM
//! shares loopback, so the asker names itself in [`INSTANCE_HEADER`]. Only the simulated VM
//! agent and the tests send it; the `join` service never sees it (it verifies the token).
//! `GET /oauth2/v3/certs` serves the public key as a JWKS: the verifier is pointed at it in
//! tests and in the sandbox only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use nodewire::testing::oidc::{ISSUER, SigningKey};
use serde_json::{Value, json};

use crate::compute::ComputeView;

/// The simulation-only header naming the VM that asks (`PROJECT/ZONE/NAME`).
pub const INSTANCE_HEADER: &str = "x-nodewire-sim-instance";

/// The path of the identity endpoint under the server's root.
pub const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// A running metadata server. Dropping it stops it.
pub struct MetadataServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    compute: ComputeView,
    key: SigningKey,
    issued: AtomicUsize,
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Deserialize)]
struct IdentityQuery {
    audience: Option<String>,
    format: Option<String>,
}

impl MetadataServer {
    /// Serves on a free loopback port, for the VMs of `compute`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(compute: ComputeView) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            compute,
            key: SigningKey::generate("sim-metadata-1"),
            issued: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(IDENTITY_PATH, get(identity))
            .route("/oauth2/v3/certs", get(certs))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    /// The metadata root (`http://127.0.0.1:PORT/computeMetadata/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/computeMetadata/v1", self.addr)
    }

    /// The JWKS URL (`NODEWIRE_OIDC_JWKS_URL` of the `join` service in tests and the sandbox).
    pub fn jwks_url(&self) -> String {
        format!("http://{}/oauth2/v3/certs", self.addr)
    }

    /// Identity tokens issued so far.
    pub fn issued(&self) -> usize {
        self.inner.issued.load(Ordering::SeqCst)
    }

    /// The identity token VM `project/zone/name` would get for `audience` (full format), or
    /// the server's refusal; what an attacker on that VM could obtain.
    ///
    /// # Errors
    /// The status and message the endpoint would answer.
    pub fn identity_token(&self, vm: &str, audience: &str) -> Result<String, (u16, String)> {
        self.inner.token(vm, audience, true)
    }

    /// Signs arbitrary claims with the server's key (tests: tokens Google would never issue,
    /// such as an expired one, or one for another project).
    pub fn sign(&self, claims: &Value) -> String {
        self.inner.key.token(claims)
    }

    /// The claims the server would put in a full-format token of VM `vm` for `audience`.
    ///
    /// # Errors
    /// As [`Self::identity_token`].
    pub fn claims(&self, vm: &str, audience: &str) -> Result<Value, (u16, String)> {
        self.inner.claims(vm, audience, true)
    }
}

impl Inner {
    fn claims(&self, vm: &str, audience: &str, full: bool) -> Result<Value, (u16, String)> {
        let mut parts = vm.splitn(3, '/');
        let (Some(p), Some(z), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            return Err((400, format!("{INSTANCE_HEADER} is not PROJECT/ZONE/NAME")));
        };
        let found = self.compute.with_world(|w| {
            w.instances
                .get(&(p.to_string(), z.to_string(), n.to_string()))
                .map(|i| {
                    (
                        i.status.clone(),
                        i.service_accounts.first().cloned(),
                        i.id,
                        i.created.clone(),
                    )
                })
        });
        let Some((status, sa, id, created)) = found else {
            return Err((503, format!("no VM {vm} runs a metadata client")));
        };
        if status != "RUNNING" {
            return Err((503, format!("VM {vm} is {status}: nothing runs on it")));
        }
        let Some(email) = sa else {
            return Err((404, "service account default not found".into()));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // A stable numeric unique id for the account, 21 digits like Google's.
        let unique = format!(
            "1{:020}",
            email
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        );
        let mut claims = json!({
            "iss": ISSUER,
            "aud": audience,
            "azp": unique,
            "sub": unique,
            "email": email,
            "email_verified": true,
            "iat": now,
            "exp": now + 3600,
        });
        if full {
            let created = time::OffsetDateTime::parse(
                &created,
                &time::format_description::well_known::Rfc3339,
            )
            .map_or(now, time::OffsetDateTime::unix_timestamp);
            claims["google"] = json!({"compute_engine": {
                "project_id": p,
                "project_number": crate::compute::project_number(p),
                "zone": z,
                "instance_id": id.to_string(),
                "instance_name": n,
                "instance_creation_timestamp": created,
            }});
        }
        Ok(claims)
    }

    fn token(&self, vm: &str, audience: &str, full: bool) -> Result<String, (u16, String)> {
        let claims = self.claims(vm, audience, full)?;
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(self.key.token(&claims))
    }
}

async fn identity(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<IdentityQuery>,
) -> Response {
    let text = |code: u16, msg: String| {
        (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            msg,
        )
            .into_response()
    };
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return text(403, "Missing Metadata-Flavor:Google header.".into());
    }
    if headers.contains_key("x-forwarded-for") {
        return text(403, "Request had an X-Forwarded-For header.".into());
    }
    let Some(audience) = q.audience.filter(|a| !a.is_empty()) else {
        return text(400, "non-empty audience parameter required".into());
    };
    let full = match q.format.as_deref() {
        None | Some("standard") => false,
        Some("full") => true,
        Some(_) => return text(400, "format must be standard or full".into()),
    };
    let Some(vm) = headers.get(INSTANCE_HEADER).and_then(|v| v.to_str().ok()) else {
        return text(
            400,
            format!("the simulated metadata server needs {INSTANCE_HEADER}"),
        );
    };
    match inner.token(vm, &audience, full) {
        Ok(t) => t.into_response(),
        Err((code, msg)) => text(code, msg),
    }
}

async fn certs(State(inner): State<Arc<Inner>>) -> Response {
    (
        [(http::header::CACHE_CONTROL, "public, max-age=3600")],
        axum::Json(json!({ "keys": [inner.key.jwk()] })),
    )
        .into_response()
}
