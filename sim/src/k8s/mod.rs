//! Kubernetes API server simulator: HTTP on 127.0.0.1 serving the paths the `kube` client uses
//! for Nodes, Secrets, ConfigMaps and Events, with the semantics that bite in production:
//!
//! - `resourceVersion` on every object, 409 `Conflict` when an update or patch carries a stale
//!   one; 409 `AlreadyExists` on create; `Status` bodies exactly in the API's shape;
//! - list with `limit`/`continue` and label selectors;
//! - merge, JSON (with `test`), strategic-merge (taints by key) patches and server-side apply
//!   (applied as a merge, without field ownership);
//! - validation: `spec.providerID` and `spec.podCIDR(s)` change only from empty (422 with the
//!   real message), taints, the bootstrap-token Secret format, the Event namespace rule;
//! - the node IPAM controller: assigns a free block of the cluster CIDR to each new Node after
//!   a delay, like kube-controller-manager's RangeAllocator;
//! - the audit pipeline: publishes the audit LogEntries (Ops Agent `jsonPayload` shape) for node
//!   create, podCIDR patch and delete;
//! - fault injection and a request log ([`crate::faults`]).

pub mod patch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};
use shared::names::{Cidr, validate_node_name};
use tokio::net::TcpListener;

pub use crate::audit::AuditSink;
use crate::faults::{Chaos, InjectedError, LoggedRequest};

/// The node IPAM controller's settings.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// `--cluster-cidr`.
    pub cluster_cidr: Cidr,
    /// `--node-cidr-mask-size` (24).
    pub node_mask: u8,
    /// From Node creation to the podCIDR patch.
    pub delay: Duration,
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    pub seed: u64,
    pub ipam: Option<IpamConfig>,
    pub audit: Option<AuditSink>,
    /// Project and zone of the simulated control-plane VM, for the audit entries' resource.
    pub audit_project: String,
    pub audit_zone: String,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            ipam: None,
            audit: None,
            audit_project: "example-project".into(),
            audit_zone: "us-central1-a".into(),
        }
    }
}

type Key = (String, String, String);

/// Every object the simulated cluster holds, by `(resource, namespace, name)`; the namespace is
/// empty for Nodes.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: BTreeMap<Key, Value>,
    resource_version: u64,
}

struct Sim {
    store: Mutex<Store>,
    chaos: Chaos,
    config: K8sConfig,
    audit_tx: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
}

impl Sim {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running Kubernetes API server simulator.
pub struct K8sSim {
    sim: Arc<Sim>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for K8sSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sSim").field("addr", &self.addr).finish()
    }
}

impl Drop for K8sSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(kind, namespaced)` of the resources served.
fn kind_of(resource: &str) -> Option<(&'static str, bool)> {
    match resource {
        "nodes" => Some(("Node", false)),
        "secrets" => Some(("Secret", true)),
        "configmaps" => Some(("ConfigMap", true)),
        "events" => Some(("Event", true)),
        _ => None,
    }
}

/// A Kubernetes `Status` failure.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(json!({"name": name, "kind": resource}))
    }
    fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "kind": resource}))
    }
    fn conflict(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        )
        .with_details(json!({"name": name, "kind": resource}))
    }
    fn invalid(kind: &str, name: &str, field: &str, cause_reason: &str, message: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {message}"),
        )
        .with_details(json!({
            "name": name, "kind": kind,
            "causes": [{"reason": cause_reason, "message": message, "field": field}]
        }))
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    fn body(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl K8sSim {
    /// Starts on `127.0.0.1:0`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(config: K8sConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, config)
    }

    /// Starts on a bound listener.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn start_on(listener: TcpListener, config: K8sConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let audit_tx = config.audit.clone().map(AuditSink::spawn);
        let sim = Arc::new(Sim {
            store: Mutex::new(Store::default()),
            chaos: Chaos::new(config.seed),
            config,
            audit_tx,
        });
        let app = Router::new()
            .route("/version", get(version))
            .route("/api/v1/nodes", get(node_collection).post(node_collection))
            .route(
                "/api/v1/nodes/{name}",
                get(node_item)
                    .put(node_item)
                    .patch(node_item)
                    .delete(node_item),
            )
            .route(
                "/api/v1/namespaces/{ns}/{resource}",
                get(ns_collection).post(ns_collection),
            )
            .route(
                "/api/v1/namespaces/{ns}/{resource}/{name}",
                get(ns_item).put(ns_item).patch(ns_item).delete(ns_item),
            )
            .fallback(|uri: Uri| async move {
                let e = ApiError::new(
                    404,
                    "NotFound",
                    format!(
                        "the server could not find the requested resource ({})",
                        uri.path()
                    ),
                );
                (StatusCode::NOT_FOUND, axum::Json(e.body())).into_response()
            })
            .with_state(sim.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { sim, addr, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Faults and the request log.
    pub fn chaos(&self) -> &Chaos {
        &self.sim.chaos
    }

    /// One object as stored (`namespace` empty for Nodes).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.sim
            .store()
            .objects
            .get(&(
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    /// Removes an object directly, without the API (no audit entry): a lost event.
    pub fn forget(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.sim.store().objects.remove(&(
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        ))
    }

    /// Publishes `kube-public/cluster-info` as kubeadm does: a kubeconfig naming the API server
    /// `https://{host}:6443` and the cluster CA (PEM).
    ///
    /// # Errors
    /// The API error the create answered.
    pub fn publish_cluster_info(&self, host: &str, ca_pem: &str) -> Result<Value, ApiError> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://{host}:6443\n    certificate-authority-data: {}\ncontexts: []\nusers: []\n",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        );
        self.seed(
            "configmaps",
            "kube-public",
            json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig}}),
        )
    }

    /// A cloneable read handle (for the VM agent).
    pub fn view(&self) -> K8sView {
        K8sView(self.sim.clone())
    }

    /// Every object of a resource.
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.sim
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
        let mut st = self.sim.store();
        create(&mut st, resource, namespace, object)
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

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Wraps a handler with fault injection and the request log.
async fn run(
    sim: &Sim,
    method: &str,
    http_method: &Method,
    uri: &Uri,
    body: &Bytes,
    f: impl FnOnce(&Sim) -> Result<(StatusCode, Value), ApiError>,
) -> Response {
    let spec = sim.chaos.faults_for(method);
    if !spec.latency.is_zero() {
        tokio::time::sleep(spec.latency).await;
    }
    let (status, body_out, injected) = match sim.chaos.draw_error(method) {
        Some(InjectedError::Unavailable) => {
            let e = ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            );
            (StatusCode::SERVICE_UNAVAILABLE, e.body(), true)
        }
        Some(InjectedError::TooManyRequests | InjectedError::RateLimitExceeded) => {
            let e = ApiError::new(
                429,
                "TooManyRequests",
                "too many requests, please try again later",
            )
            .with_details(json!({"retryAfterSeconds": 1}));
            (StatusCode::TOO_MANY_REQUESTS, e.body(), true)
        }
        None => match f(sim) {
            Ok((s, v)) => (s, v, false),
            Err(e) => (
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_REQUEST),
                e.body(),
                false,
            ),
        },
    };
    sim.chaos.record(LoggedRequest {
        method: method.to_string(),
        http_method: http_method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        status: status.as_u16(),
        at: sim.chaos.elapsed(),
        injected,
    });
    (status, axum::Json(body_out)).into_response()
}

async fn version() -> Response {
    axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-nodewire-sim", "platform": "linux/amd64"})).into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

fn check_resource(resource: &str, namespaced: bool) -> Result<&'static str, ApiError> {
    match kind_of(resource) {
        Some((kind, ns)) if ns == namespaced => Ok(kind),
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({resource})"),
        )),
    }
}

// ---- label selectors and lists ----

fn selector_matches(
    sel: &str,
    labels: Option<&serde_json::Map<String, Value>>,
) -> Result<bool, ApiError> {
    for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let ok = if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else if term.contains(' ') || term.contains('(') {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: set-based selector {term:?} is not supported by the simulator"
            )));
        } else {
            get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list(
    st: &Store,
    resource: &str,
    kind: &str,
    ns: Option<&str>,
    q: &BTreeMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let limit = match q.get("limit").filter(|v| !v.is_empty()) {
        None => usize::MAX,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?
            .max(1),
    };
    let after = match q.get("continue").filter(|v| !v.is_empty()) {
        None => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?,
        ),
    };
    let sel = q.get("labelSelector").cloned().unwrap_or_default();
    let mut items = Vec::new();
    let mut last = None;
    let mut remaining = 0usize;
    for ((r, n, name), obj) in &st.objects {
        if r != resource || ns.is_some_and(|ns| ns != n) {
            continue;
        }
        let key = format!("{n}/{name}");
        if after.as_deref().is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        if !selector_matches(
            &sel,
            obj.pointer("/metadata/labels").and_then(Value::as_object),
        )? {
            continue;
        }
        if items.len() < limit {
            items.push(obj.clone());
            last = Some(key);
        } else {
            remaining += 1;
        }
    }
    let mut meta = json!({"resourceVersion": st.resource_version.to_string()});
    if remaining > 0
        && let Some(l) = last
    {
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l));
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": meta, "items": items}),
    ))
}

// ---- validation and writes ----

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn normalize(resource: &str, obj: &mut Value) -> Result<(), ApiError> {
    if resource == "nodes" {
        // Defaulting keeps podCIDR and podCIDRs in step.
        let single = str_at(obj, "/spec/podCIDR").to_string();
        let list_first = obj
            .pointer("/spec/podCIDRs/0")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            match (single.is_empty(), list_first) {
                (false, None) => {
                    spec.insert("podCIDRs".into(), json!([single]));
                }
                (true, Some(first)) => {
                    spec.insert("podCIDR".into(), json!(first));
                }
                _ => {}
            }
        }
    }
    if resource == "secrets"
        && let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        let data = obj
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| json!({})));
        if let Some(Value::Object(d)) = data {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                d.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
    Ok(())
}

fn secret_value(obj: &Value, key: &str) -> Option<String> {
    let b64 = obj.pointer(&format!("/data/{key}"))?.as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

fn validate(
    resource: &str,
    kind: &str,
    name: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let inv = |field: &str, reason: &str, msg: &str| {
        Err(ApiError::invalid(kind, name, field, reason, msg))
    };
    match resource {
        "nodes" => {
            if validate_node_name(name).is_err() {
                return inv(
                    "metadata.name",
                    "FieldValueInvalid",
                    &format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                    ),
                );
            }
            let pod_cidr = str_at(obj, "/spec/podCIDR");
            if !pod_cidr.is_empty() && pod_cidr.parse::<Cidr>().is_err() {
                return inv(
                    "spec.podCIDRs[0]",
                    "FieldValueInvalid",
                    &format!("Invalid value: {pod_cidr:?}: must be a valid CIDR"),
                );
            }
            if let Some(list) = obj.pointer("/spec/podCIDRs").and_then(Value::as_array)
                && list
                    .first()
                    .and_then(Value::as_str)
                    .is_some_and(|f| f != pod_cidr)
            {
                return inv(
                    "spec.podCIDRs",
                    "FieldValueInvalid",
                    "Invalid value: podCIDRs[0] must match podCIDR",
                );
            }
            let mut seen = std::collections::HashSet::new();
            for (i, t) in obj
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let key = str_at(t, "/key");
                let effect = str_at(t, "/effect");
                if key.is_empty() || key.len() > 316 || key.contains(' ') {
                    return inv(
                        &format!("spec.taints[{i}].key"),
                        "FieldValueInvalid",
                        &format!(
                            "Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                        ),
                    );
                }
                if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                    return inv(
                        &format!("spec.taints[{i}].effect"),
                        "FieldValueNotSupported",
                        &format!(
                            "Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
                        ),
                    );
                }
                if !seen.insert((key.to_string(), effect.to_string())) {
                    return inv(
                        &format!("spec.taints[{i}]"),
                        "FieldValueDuplicate",
                        &format!(
                            "Duplicate value: {{\"key\":{key:?},\"effect\":{effect:?}}}: taints must be unique by key and effect pair"
                        ),
                    );
                }
            }
            if let Some(old) = old {
                let (op, np) = (
                    str_at(old, "/spec/providerID"),
                    str_at(obj, "/spec/providerID"),
                );
                if !op.is_empty() && op != np {
                    return inv(
                        "spec.providerID",
                        "FieldValueForbidden",
                        "Forbidden: node updates may not change providerID except from \"\" to valid",
                    );
                }
                let (oc, nc) = (str_at(old, "/spec/podCIDR"), str_at(obj, "/spec/podCIDR"));
                let (ol, nl) = (old.pointer("/spec/podCIDRs"), obj.pointer("/spec/podCIDRs"));
                if !oc.is_empty() && (oc != nc || ol != nl) {
                    return inv(
                        "spec.podCIDRs",
                        "FieldValueForbidden",
                        "Forbidden: node updates may not change podCIDR except from \"\" to valid",
                    );
                }
            }
        }
        "secrets" => {
            let ty = str_at(obj, "/type");
            if let Some(old) = old
                && str_at(old, "/type") != ty
            {
                return inv(
                    "type",
                    "FieldValueInvalid",
                    &format!("Invalid value: {ty:?}: field is immutable"),
                );
            }
            for (k, v) in obj
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if v.as_str()
                    .is_none_or(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err())
                {
                    return inv(
                        &format!("data[{k}]"),
                        "FieldValueInvalid",
                        "Invalid value: illegal base64 data",
                    );
                }
            }
            if ty == "bootstrap.kubernetes.io/token" {
                let lower_alnum = |s: &str, n: usize| {
                    s.len() == n
                        && s.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                };
                let Some(id) = name
                    .strip_prefix("bootstrap-token-")
                    .filter(|id| lower_alnum(id, 6))
                else {
                    return inv(
                        "metadata.name",
                        "FieldValueInvalid",
                        &format!(
                            "Invalid value: {name:?}: bootstrap token secrets must be named bootstrap-token-<[a-z0-9]{{6}}>"
                        ),
                    );
                };
                if secret_value(obj, "token-id").as_deref() != Some(id) {
                    return inv(
                        "data[token-id]",
                        "FieldValueInvalid",
                        "Invalid value: token-id must equal the name's suffix",
                    );
                }
                if !secret_value(obj, "token-secret").is_some_and(|s| lower_alnum(&s, 16)) {
                    return inv(
                        "data[token-secret]",
                        "FieldValueInvalid",
                        "Invalid value: token-secret must be 16 characters of [a-z0-9]",
                    );
                }
                if let Some(exp) = secret_value(obj, "expiration")
                    && time::OffsetDateTime::parse(
                        &exp,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_err()
                {
                    return inv(
                        "data[expiration]",
                        "FieldValueInvalid",
                        &format!("Invalid value: {exp:?}: must be RFC 3339"),
                    );
                }
                for usage in ["usage-bootstrap-authentication", "usage-bootstrap-signing"] {
                    if let Some(v) = secret_value(obj, usage)
                        && v != "true"
                        && v != "false"
                    {
                        return inv(
                            &format!("data[{usage}]"),
                            "FieldValueInvalid",
                            "Invalid value: must be \"true\" or \"false\"",
                        );
                    }
                }
                if let Some(groups) = secret_value(obj, "auth-extra-groups")
                    && groups
                        .split(',')
                        .any(|g| !g.trim().starts_with("system:bootstrappers:"))
                {
                    return inv(
                        "data[auth-extra-groups]",
                        "FieldValueInvalid",
                        "Invalid value: groups must start with \"system:bootstrappers:\"",
                    );
                }
            }
        }
        "events" => {
            let io_kind = str_at(obj, "/involvedObject/kind");
            let io_name = str_at(obj, "/involvedObject/name");
            if io_kind.is_empty() || io_name.is_empty() {
                return inv(
                    "involvedObject",
                    "FieldValueRequired",
                    "Required value: involvedObject kind and name are required",
                );
            }
            let io_ns = str_at(obj, "/involvedObject/namespace");
            let ns = str_at(obj, "/metadata/namespace");
            let ok = if io_ns.is_empty() {
                ns.is_empty() || ns == "default"
            } else {
                ns == io_ns
            };
            if !ok {
                return inv(
                    "involvedObject.namespace",
                    "FieldValueInvalid",
                    &format!("Invalid value: {io_ns:?}: does not match event.namespace"),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

fn stamp(
    st: &mut Store,
    obj: &mut Value,
    resource: &str,
    kind: &str,
    ns: &str,
    name: &str,
    old: Option<&Value>,
) {
    st.resource_version += 1;
    let rv = st.resource_version.to_string();
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["apiVersion"] = json!("v1");
    obj["kind"] = json!(kind);
    let m = &mut obj["metadata"];
    m["name"] = json!(name);
    if !ns.is_empty() {
        m["namespace"] = json!(ns);
    } else if let Some(o) = m.as_object_mut() {
        o.remove("namespace");
    }
    m["resourceVersion"] = json!(rv);
    match old {
        Some(o) => {
            m["uid"] = o["metadata"]["uid"].clone();
            m["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
        }
        None => {
            m["uid"] = json!(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                st.resource_version, st.resource_version
            ));
            m["creationTimestamp"] = json!(now());
        }
    }
    let _ = resource;
}

fn create(st: &mut Store, resource: &str, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
    let (kind, _) = kind_of(resource)
        .ok_or_else(|| ApiError::bad_request(format!("unknown resource {resource}")))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    let mut name = str_at(&obj, "/metadata/name").to_string();
    if name.is_empty() {
        let prefix = str_at(&obj, "/metadata/generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                kind,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            ));
        }
        name = format!("{prefix}{:05x}", st.resource_version + 1);
    }
    let body_ns = str_at(&obj, "/metadata/namespace");
    if !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if !ns.is_empty() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let key = (resource.to_string(), ns.to_string(), name.clone());
    if st.objects.contains_key(&key) {
        return Err(ApiError::already_exists(resource, &name));
    }
    normalize(resource, &mut obj)?;
    validate(resource, kind, &name, &obj, None)?;
    stamp(st, &mut obj, resource, kind, ns, &name, None);
    st.objects.insert(key, obj.clone());
    Ok(obj)
}

fn update(
    st: &mut Store,
    resource: &str,
    ns: &str,
    name: &str,
    mut obj: Value,
    require_rv: bool,
) -> Result<Value, ApiError> {
    let (kind, _) = kind_of(resource)
        .ok_or_else(|| ApiError::bad_request(format!("unknown resource {resource}")))?;
    let key = (resource.to_string(), ns.to_string(), name.to_string());
    let old = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let body_name = str_at(&obj, "/metadata/name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let sent_rv = str_at(&obj, "/metadata/resourceVersion").to_string();
    if sent_rv.is_empty() && require_rv {
        return Err(ApiError::invalid(
            kind,
            name,
            "metadata.resourceVersion",
            "FieldValueInvalid",
            "Invalid value: 0x0: must be specified for an update",
        ));
    }
    if !sent_rv.is_empty() && sent_rv != str_at(&old, "/metadata/resourceVersion") {
        return Err(ApiError::conflict(resource, name));
    }
    normalize(resource, &mut obj)?;
    validate(resource, kind, name, &obj, Some(&old))?;
    stamp(st, &mut obj, resource, kind, ns, name, Some(&old));
    st.objects.insert(key, obj.clone());
    Ok(obj)
}

// ---- audit ----

impl Sim {
    fn audit_node(
        &self,
        verb: &str,
        name: &str,
        code: u16,
        user: &str,
        request_object: Option<Value>,
    ) {
        let Some(tx) = &self.audit_tx else { return };
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let id = self.chaos.draw_u64();
        let uri = if verb == "create" {
            "/api/v1/nodes".to_string()
        } else {
            format!("/api/v1/nodes/{name}")
        };
        let mut event = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
            "auditID": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", id >> 32, (id >> 16) & 0xffff, id & 0xfff, (id >> 4) & 0xfff, id & 0xffff_ffff_ffff),
            "stage": "ResponseComplete", "requestURI": uri, "verb": verb,
            "user": {"username": user, "groups": ["system:authenticated"]},
            "sourceIPs": ["127.0.0.1"],
            "objectRef": {"resource": "nodes", "name": name, "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": ts, "stageTimestamp": ts,
        });
        if let Some(r) = request_object {
            event["requestObject"] = r;
        }
        let entry = json!({
            "insertId": format!("{id:x}"),
            "jsonPayload": event,
            "resource": {"type": "gce_instance", "labels": {"instance_id": "4803188210937210115", "project_id": self.config.audit_project, "zone": self.config.audit_zone}},
            "timestamp": ts,
            "labels": {"compute.googleapis.com/resource_name": "k8s-cp-1", "agent.googleapis.com/log_file_path": "/var/log/kubernetes/audit/audit.log"},
            "logName": format!("projects/{}/logs/k8s_audit", self.config.audit_project),
            "receiveTimestamp": ts,
        });
        let _ = tx.send(entry);
    }

    /// Runs the node IPAM controller for a new Node after the configured delay.
    fn schedule_ipam(self: &Arc<Self>, name: String) {
        let Some(ipam) = self.config.ipam.clone() else {
            return;
        };
        let sim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ipam.delay).await;
            let assigned = {
                let mut st = sim.store();
                let key = ("nodes".to_string(), String::new(), name.clone());
                let Some(node) = st.objects.get(&key).cloned() else {
                    return;
                };
                if !str_at(&node, "/spec/podCIDR").is_empty() {
                    return;
                }
                let used: Vec<Cidr> = st
                    .objects
                    .iter()
                    .filter(|((r, _, _), _)| r == "nodes")
                    .filter_map(|(_, n)| str_at(n, "/spec/podCIDR").parse::<Cidr>().ok())
                    .collect();
                let free = ipam
                    .cluster_cidr
                    .net()
                    .subnets(ipam.node_mask)
                    .ok()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.to_string().parse::<Cidr>().ok())
                    .find(|c| !used.iter().any(|u| u.overlaps(c)));
                let Some(cidr) = free else {
                    tracing::warn!(node = %name, "simulated IPAM: no CIDR available (CIDRNotAvailable)");
                    return;
                };
                let mut updated = node.clone();
                let patch =
                    json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                patch::merge_patch(&mut updated, &patch);
                if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                match update(&mut st, "nodes", "", &name, updated, false) {
                    Ok(_) => Some(patch),
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e.message, "simulated IPAM: patch refused");
                        None
                    }
                }
            };
            if let Some(patch) = assigned {
                sim.audit_node(
                    "patch",
                    &name,
                    200,
                    "system:serviceaccount:kube-system:node-controller",
                    Some(patch),
                );
            }
        });
    }
}

// ---- handlers ----

#[allow(clippy::too_many_arguments)]
async fn handle_item(
    sim: Arc<Sim>,
    http_method: Method,
    uri: Uri,
    headers: HeaderMap,
    resource: String,
    ns: String,
    name: String,
    body: Bytes,
) -> Response {
    let verb = match http_method.as_str() {
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "unknown",
    };
    let api_method = format!("{resource}.{verb}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let raw = body.clone();
    let sim2 = sim.clone();
    let mut after: Option<Box<dyn FnOnce() + Send>> = None;
    let resp = run(&sim, &api_method, &http_method, &uri, &raw, |s| {
        let kind = check_resource(&resource, !ns.is_empty())?;
        let mut st = s.store();
        let key = (resource.clone(), ns.clone(), name.clone());
        match verb {
            "get" => st.objects.get(&key).cloned().map(|o| (StatusCode::OK, o)).ok_or_else(|| ApiError::not_found(&resource, &name)),
            "update" => {
                let obj = parse_body(&body)?;
                let old_cidr = st.objects.get(&key).map(|o| str_at(o, "/spec/podCIDR").to_string());
                let out = update(&mut st, &resource, &ns, &name, obj, true)?;
                if resource == "nodes" && old_cidr.is_some_and(|c| c.is_empty()) && !str_at(&out, "/spec/podCIDR").is_empty() {
                    let (n, req) = (name.clone(), json!({"spec": out["spec"].clone()}));
                    after = Some(Box::new(move || sim2.audit_node("update", &n, 200, "nodewire", Some(req))));
                }
                Ok((StatusCode::OK, out))
            }
            "patch" => {
                let p = parse_body(&body)?;
                let old = st.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(&resource, &name))?;
                let mut obj = old.clone();
                let ct = content_type.split(';').next().unwrap_or("").trim();
                match ct {
                    "application/merge-patch+json" => patch::merge_patch(&mut obj, &p),
                    "application/strategic-merge-patch+json" => patch::strategic_merge_patch(&mut obj, &p),
                    "application/apply-patch+yaml" => {
                        let q = parse_query(uri.query());
                        if q.get("fieldManager").is_none_or(|f| f.is_empty()) {
                            return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set"));
                        }
                        patch::merge_patch(&mut obj, &p);
                    }
                    "application/json-patch+json" => match patch::json_patch(&mut obj, &p) {
                        Ok(()) => {}
                        Err(patch::JsonPatchError::TestFailed(m)) => {
                            return Err(ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {m}")));
                        }
                        Err(patch::JsonPatchError::Invalid(m)) => {
                            return Err(ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {m}")));
                        }
                    },
                    other => {
                        return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})")));
                    }
                }
                // A resourceVersion in the patched result is a precondition.
                let patched_rv = str_at(&obj, "/metadata/resourceVersion").to_string();
                if patched_rv != str_at(&old, "/metadata/resourceVersion") {
                    return Err(ApiError::conflict(&resource, &name));
                }
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                let out = update(&mut st, &resource, &ns, &name, obj, false)?;
                if resource == "nodes" && str_at(&old, "/spec/podCIDR").is_empty() && !str_at(&out, "/spec/podCIDR").is_empty() {
                    let n = name.clone();
                    after = Some(Box::new(move || sim2.audit_node("patch", &n, 200, "nodewire", Some(p))));
                }
                let _ = kind;
                Ok((StatusCode::OK, out))
            }
            "delete" => {
                let old = st.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(&resource, &name))?;
                if !body.is_empty() {
                    let opts = parse_body(&body)?;
                    let pre_rv = str_at(&opts, "/preconditions/resourceVersion");
                    let pre_uid = str_at(&opts, "/preconditions/uid");
                    if (!pre_rv.is_empty() && pre_rv != str_at(&old, "/metadata/resourceVersion"))
                        || (!pre_uid.is_empty() && pre_uid != str_at(&old, "/metadata/uid"))
                    {
                        return Err(ApiError::conflict(&resource, &name));
                    }
                }
                st.objects.remove(&key);
                st.resource_version += 1;
                if resource == "nodes" {
                    let n = name.clone();
                    after = Some(Box::new(move || sim2.audit_node("delete", &n, 200, "nodewire", None)));
                }
                Ok((StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "kind": resource, "uid": old["metadata"]["uid"]}})))
            }
            _ => Err(ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")),
        }
    })
    .await;
    if let Some(f) = after {
        f();
    }
    resp
}

async fn handle_collection(
    sim: Arc<Sim>,
    http_method: Method,
    uri: Uri,
    resource: String,
    ns: String,
    body: Bytes,
) -> Response {
    let verb = if http_method == Method::POST {
        "create"
    } else {
        "list"
    };
    let api_method = format!("{resource}.{verb}");
    let raw = body.clone();
    let mut created_node: Option<(String, Value)> = None;
    let resp = run(&sim, &api_method, &http_method, &uri, &raw, |s| {
        let kind = check_resource(&resource, !ns.is_empty())?;
        let mut st = s.store();
        if verb == "list" {
            let q = parse_query(uri.query());
            return list(
                &st,
                &resource,
                kind,
                (!ns.is_empty()).then_some(ns.as_str()),
                &q,
            );
        }
        let obj = parse_body(&body)?;
        let out = create(&mut st, &resource, &ns, obj)?;
        if resource == "nodes" {
            created_node = Some((str_at(&out, "/metadata/name").to_string(), out.clone()));
        }
        Ok((StatusCode::CREATED, out))
    })
    .await;
    if let Some((name, obj)) = created_node {
        sim.audit_node(
            "create",
            &name,
            201,
            &format!("system:node:{name}"),
            Some(obj),
        );
        sim.schedule_ipam(name);
    }
    resp
}

async fn node_collection(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    handle_collection(sim, method, uri, "nodes".into(), String::new(), body).await
}

async fn node_item(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_item(
        sim,
        method,
        uri,
        headers,
        "nodes".into(),
        String::new(),
        name,
        body,
    )
    .await
}

async fn ns_collection(
    State(sim): State<Arc<Sim>>,
    Path((ns, resource)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    handle_collection(sim, method, uri, resource, ns, body).await
}

async fn ns_item(
    State(sim): State<Arc<Sim>>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_item(sim, method, uri, headers, resource, ns, name, body).await
}
