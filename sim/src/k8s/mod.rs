//! Kubernetes API server simulator: HTTP on 127.0.0.1 serving the paths the `kube` client uses
//! for Nodes, Secrets, ConfigMaps and Events, with the semantics that bite in production:
//!
//! - `resourceVersion` on every object, 409 `Conflict` when an update or patch carries a stale
//!   one; 409 `AlreadyExists` on create; `Status` bodies exactly in the API's shape;
//! - list with `limit`/`continue` and label selectors;
//! - merge, JSON (with `test`), strategic-merge (the schema's list strategies: taints replaced, conditions by type) patches and server-side apply
//!   (applied as a merge, without field ownership);
//! - validation: `spec.providerID` and `spec.podCIDR(s)` change only from empty (422 with the
//!   real message), taints, the bootstrap-token Secret format, the Event namespace rule;
//! - the node IPAM controller: assigns a free block of the cluster CIDR to each new Node after
//!   a delay, like kube-controller-manager's RangeAllocator;
//! - the audit pipeline: publishes the audit LogEntries (Ops Agent `jsonPayload` shape) for node
//!   create, podCIDR patch and delete;
//! - fault injection and a request log ([`crate::faults`]).
//!
//! This file holds the simulator, its store and its routes; the verbs, the generic write path
//! and each resource's rules live in their own modules.

pub mod patch;

pub mod admission;
mod configmaps;
pub mod controllers;
pub mod csr;
mod discovery;
mod events;
mod ipam;
mod nodes;
mod objects;
pub mod rbac;
mod rest;
mod secrets;
mod select;
mod status;
mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::audit::AuditLog;
pub use crate::audit::AuditSink;
use crate::faults::{Chaos, InjectedError, lock};
use crate::server::{self, Answer, Server, Service};
pub use ipam::IpamConfig;
pub use secrets::token_secret;
pub use status::ApiError;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    pub seed: u64,
    pub ipam: Option<IpamConfig>,
    pub audit: Option<AuditSink>,
    /// Project and zone of the simulated control-plane VM, for the audit entries' resource.
    pub audit_project: String,
    pub audit_zone: String,
    /// The RBAC manifests in force (multi-document YAML), besides the kubeadm defaults:
    /// nodewire's shipped `infra/k8s/nodewire-rbac.yaml` unless a test passes others.
    pub rbac_manifests: Vec<String>,
    /// The ValidatingAdmissionPolicies in force: nodewire's shipped
    /// `infra/k8s/nodewire-admission-policy.yaml` unless a test passes others.
    pub admission_manifests: Vec<String>,
    /// ClusterRoleBindings of `kubeadm init` that the control plane deleted afterwards:
    /// nodewire's `control-plane.sh` deletes [`CONTROL_PLANE_DELETES`] (the default here);
    /// empty is kubeadm's defaults as they are.
    pub deleted_cluster_role_bindings: Vec<String>,
    /// kube-controller-manager's `--node-monitor-grace-period` (50 s since Kubernetes 1.32,
    /// kubernetes/kubernetes#126287): a Node whose kubelet has not posted status for longer is
    /// marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable`. `None`: off.
    pub node_monitor_grace_period: Option<std::time::Duration>,
}

/// What nodewire's control-plane startup script deletes after `kubeadm init`, in both join
/// modes: the auto-approval of node client certificates for bootstrap tokens (kubeadm's
/// `kubeadm:node-autoapprove-bootstrap`), which approves a CSR for any node name.
pub const CONTROL_PLANE_DELETES: &[&str] = &["kubeadm:node-autoapprove-bootstrap"];

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            ipam: None,
            audit: None,
            audit_project: "example-project".into(),
            audit_zone: "us-central1-a".into(),
            rbac_manifests: vec![rbac::NODEWIRE_RBAC.to_string()],
            admission_manifests: vec![admission::nodewire_admission("example-project", "", 900)],
            deleted_cluster_role_bindings: CONTROL_PLANE_DELETES
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            node_monitor_grace_period: Some(std::time::Duration::from_secs(50)),
        }
    }
}

/// `(resource, namespace, name)`.
type Key = (String, String, String);

/// Every object the simulated cluster holds, by `(resource, namespace, name)`; the namespace is
/// empty for Nodes.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: BTreeMap<Key, Value>,
    resource_version: u64,
    /// Continue tokens of lists started before this revision have expired (etcd compacted).
    compacted: u64,
    /// Compact when the next continue request arrives (a test's way to have the compaction
    /// land between two pages of a list).
    compact_before_next_continue: bool,
    /// [`K8sConfig::node_monitor_grace_period`].
    node_monitor_grace: Option<std::time::Duration>,
}

struct Sim {
    store: Mutex<Store>,
    chaos: Chaos,
    config: K8sConfig,
    audit: AuditLog,
    policy: rbac::Policy,
    admission: admission::Admission,
    tokens: Mutex<rbac::Tokens>,
    /// The cluster admin's token (`kubernetes-admin` in `system:masters`), for people.
    admin_token: String,
    /// nodewire's service account token (`kube-system/nodewire`).
    nodewire_token: String,
    /// The cluster CA kube-controller-manager signs certificates with (`None`: it could not be
    /// made, and nothing is signed).
    ca: Mutex<Option<csr::ClusterCa>>,
}

impl Sim {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Authenticates the request and authorizes `req` for that identity.
    ///
    /// # Errors
    /// 401 for an unknown token, 403 when neither the Node authorizer nor RBAC allows it.
    fn authorize(
        &self,
        call: &server::Call,
        verb: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<rbac::Identity, ApiError> {
        let req = rbac::Request {
            verb,
            resource,
            namespace,
            name,
        };
        let who = self.caller(call)?;
        if self.policy.allows(&who, &req) {
            Ok(who)
        } else {
            Err(rbac::forbidden(&who, &req))
        }
    }

    /// Who a request is: its verified client certificate first (kube-apiserver's authenticator
    /// union puts the x509 authenticator before the token authenticators,
    /// pkg/kubeapiserver/authenticator/config.go), then its `Authorization` header.
    fn caller(&self, call: &server::Call) -> Result<rbac::Identity, ApiError> {
        if let Some(der) = &call.client_cert
            && let Some(who) = x509_identity(der)
        {
            return Ok(who);
        }
        self.authenticated_as(call.header("authorization"))
    }

    /// Who the `Authorization` header says it is (401 for a token nobody issued).
    fn authenticated_as(&self, authorization: &str) -> Result<rbac::Identity, ApiError> {
        let st = self.store();
        lock(&self.tokens).authenticate(authorization, |id, secret| {
            secrets::bootstrap_identity(&st, id, secret)
        })
    }

    /// Discovery is for authenticated users (`system:discovery`, bound to
    /// `system:authenticated`); `/version` for everyone (`system:public-info-viewer`).
    fn authenticated(&self, call: &server::Call) -> Result<rbac::Identity, ApiError> {
        let who = self.caller(call)?;
        if who.user == "system:anonymous" {
            return Err(ApiError::new(
                403,
                "Forbidden",
                "forbidden: User \"system:anonymous\" cannot get path \"/api\"",
            ));
        }
        Ok(who)
    }
}

/// The x509 authenticator's mapping (staging/src/k8s.io/apiserver/pkg/authentication/request/
/// x509/x509.go `CommonNameUserConversion`): the user is the subject's CN, the groups its O
/// values. The chain and validity were checked by the TLS handshake against the cluster CA.
fn x509_identity(der: &[u8]) -> Option<rbac::Identity> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if cn.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(rbac::Identity { user: cn, groups })
}

impl Service for Sim {
    type Config = K8sConfig;

    fn new(config: K8sConfig) -> Self {
        let audit = AuditLog::start(config.audit.as_ref());
        let chaos = Chaos::new(config.seed);
        let manifests: Vec<&str> = config.rbac_manifests.iter().map(String::as_str).collect();
        let policy = rbac::Policy::load(&manifests)
            .unwrap_or_else(|e| {
                // A broken manifest grants nothing: every request nodewire makes is then refused,
                // which the tests report; the simulator itself keeps running.
                tracing::error!(error = %e, "RBAC manifests do not load; no RBAC grants in force");
                rbac::Policy::load(&[]).unwrap_or_default()
            })
            .without_cluster_role_bindings(&config.deleted_cluster_role_bindings);
        let admission_docs: Vec<&str> = config
            .admission_manifests
            .iter()
            .map(String::as_str)
            .collect();
        let admission = admission::Admission::load(&admission_docs).unwrap_or_else(|e| {
            // Fail closed, as an API server whose policy cannot be evaluated does: every
            // write is refused, which the tests report.
            tracing::error!(error = %e, "admission policies do not load; every write is refused");
            admission::Admission::broken(e)
        });
        let mut tokens = rbac::Tokens::default();
        let admin_token = format!("admin-{:016x}", chaos.draw_u64());
        let nodewire_token = format!("sa-nodewire-{:016x}", chaos.draw_u64());
        tokens.issue(
            admin_token.clone(),
            rbac::Identity::new(
                "kubernetes-admin",
                &["system:masters", "system:authenticated"],
            ),
        );
        tokens.issue(
            nodewire_token.clone(),
            rbac::Identity::service_account("kube-system", "nodewire"),
        );
        Self {
            store: Mutex::new(Store {
                node_monitor_grace: config.node_monitor_grace_period,
                ..Store::default()
            }),
            chaos,
            config,
            audit,
            policy,
            admission,
            tokens: Mutex::new(tokens),
            admin_token,
            nodewire_token,
            ca: Mutex::new(
                csr::ClusterCa::generate()
                    .inspect_err(
                        |e| tracing::error!(error = %e, "no cluster CA: CSRs stay unsigned"),
                    )
                    .ok(),
            ),
        }
    }

    fn router(sim: Arc<Self>) -> Router {
        Router::new()
            .route("/version", get(version))
            .route("/api", get(discovery::core_versions))
            .route("/apis", get(discovery::groups))
            .route("/api/v1", get(discovery::core_v1))
            .route(
                "/api/v1/nodes",
                get(rest::node_collection).post(rest::node_collection),
            )
            .route(
                "/api/v1/nodes/{name}/status",
                get(rest::node_status)
                    .put(rest::node_status)
                    .patch(rest::node_status),
            )
            .route(
                "/api/v1/nodes/{name}",
                get(rest::node_item)
                    .put(rest::node_item)
                    .patch(rest::node_item)
                    .delete(rest::node_item),
            )
            // Namespaced resources across every namespace (list only).
            .route("/api/v1/{resource}", get(rest::all_namespaces))
            .route(
                "/api/v1/namespaces/{ns}/{resource}",
                get(rest::ns_collection).post(rest::ns_collection),
            )
            .route(
                "/api/v1/namespaces/{ns}/{resource}/{name}",
                get(rest::ns_item)
                    .put(rest::ns_item)
                    .patch(rest::ns_item)
                    .delete(rest::ns_item),
            )
            .route(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                get(csr::collection).post(csr::collection),
            )
            .route(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}",
                get(csr::item),
            )
            .route(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval",
                get(csr::approval).put(csr::approval).patch(csr::approval),
            )
            .fallback(fallback)
            .with_state(sim)
    }

    fn chaos(&self) -> &Chaos {
        &self.chaos
    }

    /// The bootstrap signer and token cleaner, every second (they also run after each write
    /// to Secrets and ConfigMaps).
    fn started(sim: &Arc<Self>) {
        let weak = Arc::downgrade(sim);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(sim) = weak.upgrade() else {
                    return;
                };
                controllers::reconcile(&mut sim.store());
            }
        });
    }

    fn injected(error: InjectedError) -> Answer {
        let e = match error {
            InjectedError::Unavailable => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            InjectedError::TooManyRequests | InjectedError::RateLimitExceeded => ApiError::new(
                429,
                "TooManyRequests",
                "too many requests, please try again later",
            )
            .with_details(json!({"retryAfterSeconds": 1})),
            InjectedError::PermissionDenied => ApiError::new(
                403,
                "Forbidden",
                "nodes is forbidden: User \"system:serviceaccount:kube-system:nodewire\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope",
            ),
        };
        e.into()
    }
}

/// A running Kubernetes API server simulator.
pub struct K8sSim {
    server: Server<Sim>,
}

server::running_simulator!(K8sSim, K8sConfig);

/// `(kind, namespaced)` of the resources served.
fn kind_of(resource: &str) -> Option<(&'static str, bool)> {
    match resource {
        "nodes" => Some(("Node", false)),
        "secrets" => Some(("Secret", true)),
        "configmaps" => Some(("ConfigMap", true)),
        "events" => Some(("Event", true)),
        // Listed and read only: the simulated cluster schedules no Pods (kubectl describe node
        // lists the Pods on the node, so the collection has to exist).
        "pods" => Some(("Pod", true)),
        _ => None,
    }
}

impl K8sSim {
    /// The cluster admin's bearer token (`kubernetes-admin`, `system:masters`): for people
    /// and for tests that poke the API directly.
    pub fn admin_token(&self) -> String {
        self.server.sim().admin_token.clone()
    }

    /// nodewire's service account token: what its functions authenticate with.
    pub fn nodewire_token(&self) -> String {
        self.server.sim().nodewire_token.clone()
    }

    /// The same API over HTTPS on another loopback port, for real clients (kubectl sends a
    /// kubeconfig's token only to an `https://` server).
    ///
    /// # Errors
    /// When the certificate cannot be made or the port bound.
    /// Client certificates signed by the cluster CA authenticate there (the x509
    /// authenticator), as kube-apiserver's `--client-ca-file` makes them.
    pub async fn start_tls_front(&self) -> std::io::Result<crate::tls::TlsFront> {
        let router = <Sim as Service>::router(self.server.sim().clone());
        match self.cluster_ca_pem() {
            Some(ca) => crate::tls::TlsFront::start_verifying_clients(router, &ca).await,
            None => crate::tls::TlsFront::start(router).await,
        }
    }

    /// The cluster CA's certificate (PEM): what signs kubelet client certificates and what
    /// client certificates are verified against. `None` when it could not be made.
    pub fn cluster_ca_pem(&self) -> Option<String> {
        lock(&self.server.sim().ca)
            .as_ref()
            .map(|c| c.pem().to_string())
    }

    /// A bearer credential for `system:node:NAME`, standing for a kubelet's client certificate:
    /// for tests about what a node may do once it has one. How a kubelet gets one is
    /// `kubelet_cert::tls_bootstrap` (a CSR, approval, the signer) and the TLS front.
    pub fn node_credential(&self, node: &str) -> String {
        let sim = self.server.sim();
        let t = format!("node-{node}-{:016x}", sim.chaos.draw_u64());
        lock(&sim.tokens).issue(t.clone(), rbac::Identity::node(node));
        t
    }

    /// Issues a token for a service account, as the TokenRequest API would.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let sim = self.server.sim();
        let t = format!("sa-{name}-{:016x}", sim.chaos.draw_u64());
        lock(&sim.tokens).issue(t.clone(), rbac::Identity::service_account(namespace, name));
        t
    }

    /// One object as stored (`namespace` empty for Nodes).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.view().object(resource, namespace, name)
    }

    /// Removes an object directly, without the API (no audit entry): a lost event.
    pub fn forget(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.server.sim().store().objects.remove(&(
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        ))
    }

    /// A cloneable read handle (for the VM agent).
    pub fn view(&self) -> K8sView {
        K8sView(self.server.sim().clone())
    }

    /// Every object of a resource.
    /// Has etcd compact before the next `continue` request is served: that request, and
    /// every token of a list started before, answer 410 `Expired` (kube-apiserver; the client
    /// must start the list again).
    pub fn compact_before_next_continue(&self) {
        self.server.sim().store().compact_before_next_continue = true;
    }

    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.server
            .sim()
            .store()
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates an object directly, with validation but without faults, log or audit (seeding).
    ///
    /// # Errors
    /// The API error the create would have answered.
    pub fn seed(&self, resource: &str, namespace: &str, object: Value) -> Result<Value, ApiError> {
        let mut st = self.server.sim().store();
        let out = objects::create(&mut st, resource, namespace, object);
        if resource == "secrets" || resource == "configmaps" {
            controllers::reconcile(&mut st);
        }
        out
    }
}

/// A cloneable read handle on a running simulator's objects.
#[derive(Clone)]
pub struct K8sView(Arc<Sim>);

impl std::fmt::Debug for K8sView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("K8sView")
    }
}

impl K8sView {
    /// One object as stored (`namespace` empty for Nodes).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.0
            .store()
            .objects
            .get(&(
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }
}

async fn version() -> Response {
    axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-nodewire-sim", "platform": "linux/amd64"})).into_response()
}

async fn fallback(uri: Uri) -> Response {
    let e = ApiError::new(
        404,
        "NotFound",
        format!(
            "the server could not find the requested resource ({})",
            uri.path()
        ),
    );
    Answer::from(e).into_response()
}
