//! The `join` service (pull mode, issue 12): a node VM asks for its JoinConfiguration with its
//! instance identity token, and reports its join with another one. Plain HTTP, not a Pub/Sub
//! subscriber.
//!
//! - `POST /v1/join`, `Authorization: Bearer <identity token>`: the token is verified by the
//!   adapter's OIDC verifier (Google's RS256 signature, issuer, audience = this service's URL,
//!   expiry, the email one of `NODEWIRE_PUSH_INVOKERS`, which for this service are the node
//!   service accounts), then its `google.compute_engine` claims against a fresh
//!   `instances.get`: this project, a zone and name the selector admits, the same instance id,
//!   RUNNING, the labels the selector wants, running as the token's service account (one of
//!   the node accounts), nic0 on the node subnet, IP forwarding, and **no Node yet**. Then a
//!   bootstrap token is minted (recording which identity token it was minted for) and the
//!   JoinConfiguration is the answer (200, `no-store`).
//! - `POST /v1/joined`: the same checks but the Node must exist, be provably this VM's and have
//!   its podCIDR (409 until then: the VM reports again); `assign-alias` is published at once
//!   (202). The Kubernetes audit path stays the fallback.
//!
//! Refusals: 401 (the token is not a valid identity token for this service), 403 (the VM may
//! not join), 409 (its Node exists; the identity token was used already; for `/v1/joined`, no
//! Node yet), 429 (rate limit, `Retry-After`), 503 (a dependency failed: try again). Each is
//! logged with its reason; neither the identity token nor the join token is ever logged or
//! answered in an error.
//!
//! Why a Pod cannot get a join token: a Pod on the node can ask the metadata server for an
//! identity token too, but before the join no Pod runs on the VM (it has no Node), and once the
//! Node exists this service refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::adapter::{AuthError, Authenticator, Caller};
use crate::config::{PushAuthSettings, SignatureCheck};
use crate::deps::ChainDeps;
use crate::error::Classify;
use crate::event::{Cause, CauseSource, Step, StepMessage};
use crate::names::InstanceRef;
use crate::observe;
use crate::plan::VmFacts;
use crate::text::shorten;
use crate::trace::TraceContext;

/// Requests per instance in [`RATE_WINDOW`] at most (join and report together).
pub const RATE_LIMIT: u32 = 10;
/// The rate limit's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// A VM with this many unexpired join tokens gets no new one until one expires.
pub const MAX_LIVE_TOKENS: usize = 3;
/// Instances (and used identity tokens) remembered at most; beyond, the oldest are forgotten.
const MAX_REMEMBERED: usize = 100_000;

/// Why a request is refused: the status and a reason that is safe to log and to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub status: StatusCode,
    pub reason: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
        retry_after: None,
    }
}

fn forbidden(reason: impl Into<String>) -> Refused {
    refuse(StatusCode::FORBIDDEN, reason)
}

/// A dependency failed: 503 when trying again may help, 500 when not.
fn dependency(what: &str, e: &(impl std::fmt::Display + Classify)) -> Refused {
    let status = if e.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    refuse(status, format!("{what}: {e}"))
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.reason)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "the join service verifies node VMs' identity tokens itself: set NODEWIRE_PUSH_AUTH=oidc \
         with NODEWIRE_PUSH_AUDIENCES (its URL) and NODEWIRE_PUSH_INVOKERS (the node service \
         accounts); off and cloud-run-iam are refused"
    )]
    NotVerifying,
}

/// The service's state: the chain's clients, the verifier, the per-instance limiter and the
/// identity tokens this process has seen used.
pub struct JoinService {
    deps: ChainDeps,
    auth: Authenticator,
    limiter: Mutex<HashMap<String, (Instant, u32)>>,
    used: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for JoinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinService").finish_non_exhaustive()
    }
}

/// The service's router: `POST /v1/join`, `POST /v1/joined`, `GET /healthz`.
///
/// # Errors
/// [`SetupError`] unless identity tokens are verified with their signatures.
pub fn router(deps: ChainDeps) -> Result<Router, SetupError> {
    let verifying = matches!(&deps.base.config.push_auth,
        PushAuthSettings::Oidc(s) if s.signature == SignatureCheck::Verify);
    if !verifying {
        return Err(SetupError::NotVerifying);
    }
    let auth = Authenticator::new(&deps.base.config.push_auth);
    let limit = deps.base.config.limits.max_body_bytes;
    let svc = Arc::new(JoinService {
        deps,
        auth,
        limiter: Mutex::new(HashMap::new()),
        used: Mutex::new(HashMap::new()),
    });
    Ok(Router::new()
        .route("/v1/join", post(join))
        .route("/v1/joined", post(joined))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(limit.min(64 * 1024)))
        .with_state(svc))
}

async fn join(State(svc): State<Arc<JoinService>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    match svc.serve_join(&headers).await {
        Ok((vm, token_id, yaml)) => {
            tracing::info!(
                verdict = "served",
                instance = %vm,
                token_id = %token_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "join configuration served"
            );
            let mut r = (StatusCode::OK, yaml).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => refused("join", &e, started),
    }
}

async fn joined(State(svc): State<Arc<JoinService>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    match svc.report_join(&headers).await {
        Ok(vm) => {
            tracing::info!(
                verdict = "reported",
                instance = %vm,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "join reported; assign-alias published"
            );
            (StatusCode::ACCEPTED, "assign-alias published\n").into_response()
        }
        Err(e) => refused("joined", &e, started),
    }
}

fn refused(endpoint: &str, e: &Refused, started: Instant) -> Response {
    tracing::warn!(
        verdict = "refused",
        endpoint,
        status = e.status.as_u16(),
        reason = %e.reason,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "join request refused"
    );
    e.clone().into_response()
}

/// A VM verified to be the one its identity token names, and one nodewire may join.
struct Verified {
    caller: Caller,
    vm: VmFacts,
    instance_id: String,
}

impl JoinService {
    async fn serve_join(
        &self,
        headers: &HeaderMap,
    ) -> Result<(InstanceRef, String, String), Refused> {
        let v = self.verify(headers).await?;
        let vm = &v.vm.instance;
        let kube = &self.deps.kube;
        if kube
            .get_node(vm.name())
            .await
            .map_err(|e| dependency("reading the Node", &e))?
            .is_some()
        {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("VM {vm} has a Node already: it joined; no join token is given"),
            ));
        }
        // Marked used now, before the mint: two concurrent requests with one token cannot both
        // pass (a mint that then fails leaves it used; the VM asks with a fresh one).
        self.claim_once(&v.caller)?;
        let now = time::OffsetDateTime::now_utc();
        let tokens = kube
            .list_bootstrap_tokens(Some(vm.name()))
            .await
            .map_err(|e| dependency("listing join tokens", &e))?;
        let mine: Vec<_> = tokens
            .items
            .iter()
            .filter(|t| t.zone.as_deref().is_none_or(|z| z == vm.zone()))
            .collect();
        let replayed = mine
            .iter()
            .filter_map(|t| t.identity.as_ref())
            .any(|j| j.digest == v.caller.token_digest || j.issued_at > v.caller.issued_at);
        if replayed {
            return Err(refuse(
                StatusCode::CONFLICT,
                "this identity token (or a newer one) was used already: ask the metadata server \
                 for a new one",
            ));
        }
        let live = mine.iter().filter(|t| !observe::expired(t, now)).count();
        if live >= MAX_LIVE_TOKENS {
            return Err(Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: format!(
                    "VM {vm} has {live} unexpired join tokens; a new one once one expires"
                ),
                retry_after: Some(60),
            });
        }
        let ci = kube
            .cluster_info()
            .await
            .map_err(|e| dependency("reading cluster-info", &e))?;
        let record = crate::act::k8s::IdentityRecord {
            digest: v.caller.token_digest.clone(),
            issued_at: v.caller.issued_at,
        };
        let chain = &self.deps.chain;
        let token = kube
            .create_bootstrap_token_for_identity(
                vm,
                &v.instance_id,
                chain.token_ttl,
                &chain.token_groups,
                &record,
            )
            .await
            .map_err(|e| dependency("minting the join token", &e))?;
        let yaml = crate::act::execute::render_join(&self.deps, &ci, vm, &token);
        Ok((vm.clone(), token.id.clone(), yaml))
    }

    async fn report_join(&self, headers: &HeaderMap) -> Result<InstanceRef, Refused> {
        let v = self.verify(headers).await?;
        let vm = &v.vm.instance;
        let node = self
            .deps
            .kube
            .get_node(vm.name())
            .await
            .map_err(|e| dependency("reading the Node", &e))?
            .ok_or_else(|| {
                refuse(
                    StatusCode::CONFLICT,
                    format!("no Node {} registered yet: report again shortly", vm.name()),
                )
            })?;
        let facts = observe::node_facts(&node);
        if let Err(plan) = crate::plan::node_is_the_vms(&facts, &v.vm) {
            return Err(forbidden(format!("Node {}: {plan:?}", facts.name)));
        }
        // The alias is the podCIDR: before the IPAM controller set it (about a second after
        // registration), assign-alias could only wait for the podCIDR's own audit entry. The
        // VM asks again shortly instead.
        if facts.pod_cidr.is_none() {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "Node {} has no podCIDR yet: report again shortly",
                    facts.name
                ),
            ));
        }
        let trace = TraceContext::new_root();
        let mut msg = StepMessage::new(
            Step::AssignAlias,
            vm.clone(),
            Cause {
                source: CauseSource::JoinReport,
                id: None,
            },
            trace.trace_id(),
        );
        msg.instance_id = Some(v.instance_id.clone());
        self.deps
            .base
            .publish_step(&msg, &trace)
            .await
            .map_err(|e| dependency("publishing assign-alias", &e))?;
        Ok(vm.clone())
    }

    /// The token, the rate limit, and the VM it names.
    async fn verify(&self, headers: &HeaderMap) -> Result<Verified, Refused> {
        let caller = match self.auth.check(headers).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "identity verification is off",
                ));
            }
            Err(e @ AuthError::KeysUnavailable(_)) => {
                return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
            }
            Err(e) => {
                // 401 for a bad token; a valid token of another account is 403.
                return Err(refuse(e.status(), e.to_string()));
            }
        };
        let Some(ce) = caller.compute_engine.clone() else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "not an instance identity token: ask the metadata server with format=full",
            ));
        };
        self.rate_limit(&ce.instance_id)?;
        let project = self.deps.compute.project();
        if ce.project_id != project {
            return Err(forbidden(format!(
                "the VM is in project {:?}, not this cluster's {project}",
                shorten(&ce.project_id, 64)
            )));
        }
        let instance = InstanceRef::new(&ce.project_id, &ce.zone, &ce.instance_name)
            .map_err(|e| forbidden(format!("the token names no valid VM: {e}")))?;
        let plan = &self.deps.plan;
        plan.selector
            .admits(&instance)
            .map_err(|why| forbidden(why.0))?;
        let view = self
            .deps
            .compute
            .get_instance(&instance)
            .await
            .map_err(|e| dependency("reading the VM", &e))?
            .ok_or_else(|| forbidden(format!("VM {instance} does not exist")))?;
        if view.id.map(|i| i.to_string()).as_deref() != Some(ce.instance_id.as_str()) {
            return Err(forbidden(format!(
                "VM {instance} has another instance id than the token's (deleted and created \
                 again?)"
            )));
        }
        let vm = observe::vm_facts(&view);
        if vm.status != "RUNNING" {
            return Err(forbidden(format!(
                "VM {instance} is {}, not RUNNING",
                vm.status
            )));
        }
        if let Some(why) = plan.not_selected(&vm) {
            return Err(forbidden(why));
        }
        if !vm
            .service_accounts
            .iter()
            .any(|sa| sa.eq_ignore_ascii_case(&caller.email))
        {
            return Err(forbidden(format!(
                "VM {instance} does not run as {}, the token's account",
                caller.email
            )));
        }
        if !plan.node_service_accounts.is_empty()
            && !plan
                .node_service_accounts
                .contains(&caller.email.to_ascii_lowercase())
        {
            return Err(forbidden(format!(
                "{} is not one of NODEWIRE_NODE_SERVICE_ACCOUNTS",
                caller.email
            )));
        }
        if !vm.can_ip_forward {
            return Err(forbidden(format!(
                "VM {instance} does not have IP forwarding enabled"
            )));
        }
        if !plan.subnet_matches(vm.subnet.as_ref()) {
            return Err(forbidden(format!(
                "VM {instance}'s nic0 is not on the node subnet {}/{}",
                plan.subnet.0, plan.subnet.1
            )));
        }
        Ok(Verified {
            caller,
            vm,
            instance_id: ce.instance_id,
        })
    }

    fn rate_limit(&self, instance_id: &str) -> Result<(), Refused> {
        let mut m = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if m.len() >= MAX_REMEMBERED {
            m.retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
        }
        let e = m.entry(instance_id.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= RATE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > RATE_LIMIT {
            let left = RATE_WINDOW.saturating_sub(now.saturating_duration_since(e.0));
            return Err(Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: format!(
                    "more than {RATE_LIMIT} requests for instance {instance_id} in {}s",
                    RATE_WINDOW.as_secs()
                ),
                retry_after: Some(left.as_secs().max(1)),
            });
        }
        Ok(())
    }

    /// Marks the identity token used; refused when this process has seen it used before (the
    /// cluster's record, the annotations of the bootstrap token, covers the other processes).
    fn claim_once(&self, caller: &Caller) -> Result<(), Refused> {
        let mut m = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_REMEMBERED {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            m.retain(|_, exp| *exp > now);
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
        }
        if m.insert(caller.token_digest.clone(), caller.expires_at)
            .is_some()
        {
            return Err(refuse(
                StatusCode::CONFLICT,
                "this identity token was used already: ask the metadata server for a new one",
            ));
        }
        Ok(())
    }
}
