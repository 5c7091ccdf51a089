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
//!   the node accounts), nic0 on the node subnet, IP forwarding, and **no Node yet**. The body
//!   is the VM's certificate request (`join::csr::check`: its own Node name, client auth only,
//!   an allowed key, a valid signature). Then a CSR for the kubelet client signer is created
//!   (recording which identity token it was made for), approved, and once the cluster signed it
//!   the answer is the discovery kubeconfig and the JoinConfiguration (200, `no-store`). No
//!   bootstrap token is minted.
//! - `POST /v1/joined`: the same checks but the Node must exist, be provably this VM's and have
//!   its podCIDR (409 until then: the VM reports again); `assign-alias` is published at once
//!   (202). The Kubernetes audit path stays the fallback.
//!
//! Two parts: `verify` proves who asks and which VM that is, then asks the planner's one
//! join-eligibility decision (`plan::eligibility`, also used by `bootstrap` and `nodewire
//! status`); this module serves the answer. Status codes come from `adapter::verdict`.
//!
//! Refusals: 400 (the certificate request is unusable), 401 (the token is not a valid identity
//! token for this service), 403 (the VM may not join, or the request names another Node), 409
//! (its Node exists; the identity token was used already with another request; for
//! `/v1/joined`, no Node yet), 429 (rate limit, `Retry-After`), 503 (a dependency failed, or
//! the signer has not signed yet: try again). Each is logged with its reason; neither the
//! identity token nor the request or the certificate is ever logged or answered in an error.
//!
//! The service runs as its own Kubernetes ServiceAccount (`nodewire-join`), whose only write is
//! a CSR and its approval for the kubelet client signer.
//!
//! Why a Pod cannot get a join credential: a Pod on the node can ask the metadata server for an
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

use crate::act::deps::ChainDeps;
use crate::adapter::{Authenticator, RefusalClass, Refused};
use crate::config::{PushAuthSettings, SignatureCheck};
use crate::event::{Cause, CauseSource, Step, StepMessage};
use crate::join::csr::{self, CsrRefusal};
use crate::names::InstanceRef;
use crate::observe;
use crate::plan::eligibility;
use crate::trace::TraceContext;

mod verify;

/// Requests per instance in [`RATE_WINDOW`] at most (join and report together).
pub const RATE_LIMIT: u32 = 10;
/// The rate limit's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// A VM issued this many join credentials within the join-token TTL gets no new one until the
/// oldest is older.
pub const MAX_LIVE_TOKENS: usize = 3;
/// How long a join request waits for the cluster's signer (kube-controller-manager's csrsigning
/// signs within a second of the approval).
pub const SIGNING_WAIT: Duration = Duration::from_secs(15);
/// Instances (and used identity tokens) remembered at most; beyond, the oldest are forgotten.
const MAX_REMEMBERED: usize = 100_000;

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

async fn join(
    State(svc): State<Arc<JoinService>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let started = Instant::now();
    match svc.serve_join(&headers, &body).await {
        Ok((vm, csr_name, yaml)) => {
            tracing::info!(
                verdict = "served",
                instance = %vm,
                csr = %csr_name,
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
        status = e.status().as_u16(),
        reason = %e.reason,
        detail = e.detail.as_deref().unwrap_or_default(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "join request refused"
    );
    e.clone().into_response()
}

impl JoinService {
    async fn serve_join(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(InstanceRef, String, String), Refused> {
        let v = self.verify(headers).await?;
        let vm = &v.vm.instance;
        let kube = &self.deps.kube;
        let node = kube
            .get_node(vm.name())
            .await
            .map_err(|e| Refused::dependency("reading the Node", &e))?
            .map(|n| observe::node_facts(&n));
        eligibility::may_join(&v.vm, node.as_ref(), &self.deps.plan, Some(&v.caller.email))
            .map_err(|e| verify::ineligible(&e))?;
        // The request the VM made with its own key: for its own Node name, client auth only.
        let text = std::str::from_utf8(body)
            .map_err(|_| Refused::new(RefusalClass::BadRequest, CsrRefusal::NotPem.to_string()))?;
        let csr = csr::check(text, vm.name()).map_err(|e| {
            let class = match e {
                CsrRefusal::Subject { .. } => RefusalClass::Forbidden,
                _ => RefusalClass::BadRequest,
            };
            Refused::new(class, e.to_string())
        })?;
        // Marked used now, before the CSR: two concurrent requests with one token cannot both
        // pass. A request that fails before its answer releases it, so the VM's retry with the
        // same token (a metadata server may hand out the same one again) is decided by the
        // cluster's record below.
        self.claim_once(&v.caller)?;
        let out = self.issue(&v, &csr).await;
        if out.is_err() {
            self.release(&v.caller);
        }
        out.map(|(name, answer)| (vm.clone(), name, answer))
    }

    /// The credential for a verified VM and its checked request: a new CSR, or the one this
    /// identity token already asked for with this same request (a retry), approved and signed.
    async fn issue(
        &self,
        v: &verify::Verified,
        csr: &csr::NodeCsr,
    ) -> Result<(String, String), Refused> {
        let vm = &v.vm.instance;
        let kube = &self.deps.kube;
        let chain = &self.deps.chain;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let earlier = kube
            .list_node_csrs(vm.name())
            .await
            .map_err(|e| Refused::dependency("listing the VM's certificate requests", &e))?;
        // This instance's only: a VM recreated under the name is another instance, and its
        // predecessor's credentials neither limit it nor count as its replays.
        let mine: Vec<_> = earlier
            .iter()
            .filter(|c| c.zone.as_deref().is_none_or(|z| z == vm.zone()))
            .filter(|c| c.instance_id.as_deref().is_none_or(|i| i == v.instance_id))
            .collect();
        let used = |c: &&&crate::act::k8s::CsrRecord| {
            c.identity
                .as_ref()
                .is_some_and(|j| j.digest == v.caller.token_digest)
        };
        // A retry of a request that failed after its CSR was made: the same token and the same
        // request continue that CSR (its certificate is of use only with the VM's key).
        let resumed = match mine.iter().find(used) {
            None => None,
            Some(c) => match kube
                .node_csr(&c.name)
                .await
                .map_err(|e| Refused::dependency("reading the certificate request", &e))?
            {
                Some((request, approved)) if request.trim() == csr.pem.trim() => {
                    Some((c.name.clone(), approved))
                }
                _ => {
                    return Err(Refused::new(
                        RefusalClass::Conflict,
                        "this identity token was used already: ask the metadata server for a \
                         new one",
                    ));
                }
            },
        };
        if resumed.is_none() {
            let newer = mine
                .iter()
                .filter_map(|c| c.identity.as_ref())
                .any(|j| j.issued_at > v.caller.issued_at);
            if newer {
                return Err(Refused::new(
                    RefusalClass::Conflict,
                    "a newer identity token of this VM was used already: ask the metadata \
                     server for a new one",
                ));
            }
            let window = i64::try_from(chain.token_ttl.as_secs()).unwrap_or(i64::MAX);
            let recent = mine
                .iter()
                .filter(|c| c.created.is_none_or(|t| now.saturating_sub(t) < window))
                .count();
            if recent >= MAX_LIVE_TOKENS {
                return Err(Refused::rate_limited(
                    format!(
                        "VM {vm} was issued {recent} join credentials in the last {window} s; a \
                         new one once one is older"
                    ),
                    60,
                ));
            }
        }
        let ci = kube
            .cluster_info()
            .await
            .map_err(|e| Refused::dependency("reading cluster-info", &e))?;
        let (name, approved) = match resumed {
            Some(r) => r,
            None => {
                let record = crate::act::k8s::IdentityRecord {
                    digest: v.caller.token_digest.clone(),
                    issued_at: v.caller.issued_at,
                };
                let name = kube
                    .create_node_csr(
                        vm,
                        &v.instance_id,
                        &csr.pem,
                        csr.key.usages(),
                        chain.token_ttl,
                        &record,
                    )
                    .await
                    .map_err(|e| {
                        Refused::dependency("creating the certificate signing request", &e)
                    })?;
                (name, false)
            }
        };
        if !approved {
            kube.approve_csr(
                &name,
                &format!(
                    "nodewire verified instance {} ({vm}) by its identity token",
                    v.instance_id
                ),
            )
            .await
            .map_err(|e| Refused::dependency("approving the certificate signing request", &e))?;
        }
        let cert = kube
            .wait_for_certificate(&name, SIGNING_WAIT, Duration::from_millis(100))
            .await
            .map_err(|e| Refused::dependency("waiting for the signed certificate", &e))?
            .ok_or_else(|| {
                Refused::new(
                    RefusalClass::Unavailable,
                    "the cluster has not signed the certificate yet: try again shortly",
                )
            })?;
        let answer = crate::act::execute::render_pull_join(&self.deps, &ci, vm, &cert);
        Ok((name, answer))
    }

    async fn report_join(&self, headers: &HeaderMap) -> Result<InstanceRef, Refused> {
        let v = self.verify(headers).await?;
        let vm = &v.vm.instance;
        let node = self
            .deps
            .kube
            .get_node(vm.name())
            .await
            .map_err(|e| Refused::dependency("reading the Node", &e))?
            .ok_or_else(|| {
                Refused::new(
                    RefusalClass::Conflict,
                    format!("no Node {} registered yet: report again shortly", vm.name()),
                )
            })?;
        let facts = observe::node_facts(&node);
        if let Err(plan) = crate::plan::node_is_the_vms(&facts, &v.vm) {
            return Err(Refused::new(
                RefusalClass::Forbidden,
                format!("Node {}: {}", facts.name, plan.reason()),
            ));
        }
        // Cluster-first, the alias is the podCIDR: before the IPAM controller set it (about a
        // second after registration), assign-alias could only wait for the podCIDR's own audit
        // entry. The VM asks again shortly instead. Alias-first, assign-alias sets it.
        if facts.pod_cidr.is_none()
            && self.deps.plan.range_order == crate::config::RangeOrder::ClusterFirst
        {
            return Err(Refused::new(
                RefusalClass::Conflict,
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
            .map_err(|e| Refused::dependency("publishing assign-alias", &e))?;
        Ok(vm.clone())
    }
}
