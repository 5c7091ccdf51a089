//! Compute Engine simulator: HTTP on 127.0.0.1 with the v1 REST paths and JSON the official
//! client sends and expects, and the semantics that bite in production:
//!
//! - fingerprints on tags, metadata, labels and each NIC that change on every write; a stale one
//!   is 412 `conditionNotMet`; a missing NIC fingerprint is 400;
//! - mutations answer with a zonal Operation that goes PENDING → RUNNING → DONE after the
//!   configured latency, and are **applied when the operation completes**: if another write
//!   changed the fingerprint in between, the operation ends DONE with `CONDITION_NOT_MET`;
//! - `requestId` makes a mutation idempotent (the same request id returns the same operation);
//! - `updateNetworkInterface`: the sent alias list replaces the NIC's; each range must lie in
//!   the named secondary range of the NIC's subnet (400 otherwise); overlap with another VM's
//!   alias in that subnet ends the operation with `IP_IN_USE_BY_ANOTHER_RESOURCE`; a bare
//!   `/N` allocates a free block, `IP_SPACE_EXHAUSTED` when none is left;
//! - `zoneOperations.wait` blocks up to its deadline and may return before DONE;
//! - list and aggregatedList with filters and pagination (`maxResults` ≤ 500, `pageToken`);
//! - fault injection per method and a request log ([`crate::faults`]);
//! - as Cloud Logging's sink: the audit LogEntries of `instances.insert`/`delete` (first and
//!   last) are published to a topic.

pub mod filter;
pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use shared::names::{Cidr, validate_gce_name, validate_zone};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::faults::{Chaos, InjectedError, LoggedRequest};
use filter::Filter;
use model::{API, error_body, now_rfc3339};
pub use model::{Alias, Fingerprint, Instance, Nic, OpError, OpStatus, Operation, SubnetSpec};

pub use crate::audit::AuditSink;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    pub seed: u64,
    /// From an accepted mutation to DONE (a third PENDING, then RUNNING).
    pub op_latency: Duration,
    /// The longest `zoneOperations.wait` blocks (the API: about 2 minutes).
    pub wait_max: Duration,
    /// Probability that `wait` returns early, before DONE.
    pub wait_early_return: f64,
    pub subnets: Vec<SubnetSpec>,
    pub audit: Option<AuditSink>,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            op_latency: Duration::from_millis(50),
            wait_max: Duration::from_secs(5),
            wait_early_return: 0.0,
            subnets: Vec::new(),
            audit: None,
        }
    }
}

type OpKey = (String, String, String);
type Mutation = Box<dyn FnOnce(&mut World) -> Result<(), OpError> + Send>;

/// Everything the simulated project holds.
#[derive(Debug, Default)]
pub struct World {
    pub instances: BTreeMap<(String, String, String), Instance>,
    pub subnets: BTreeMap<(String, String, String), (SubnetSpec, Fingerprint)>,
    pub operations: HashMap<OpKey, Operation>,
    request_ids: HashMap<String, OpKey>,
    pending_inserts: HashSet<(String, String, String)>,
    next_host: HashMap<(String, String, String), u32>,
}

struct Sim {
    world: Mutex<World>,
    chaos: Chaos,
    config: ComputeConfig,
    changed: Notify,
    audit_tx: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
}

impl Sim {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fp(&self) -> Fingerprint {
        Fingerprint(self.chaos.draw_u64())
    }
}

/// A running Compute Engine simulator.
pub struct ComputeSim {
    sim: Arc<Sim>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ComputeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeSim")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for ComputeSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A VM to create directly in the world (seeding tests), bypassing operations and audit.
#[derive(Debug, Clone)]
pub struct InstanceSeed {
    pub project: String,
    pub zone: String,
    pub name: String,
    /// `(project, region, name)` of nic0's subnetwork; must be configured.
    pub subnet: (String, String, String),
    pub can_ip_forward: bool,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub metadata: Vec<(String, String)>,
    pub aliases: Vec<Alias>,
}

impl ComputeSim {
    /// Starts on `127.0.0.1:0`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(config: ComputeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, config)
    }

    /// Starts on a bound listener.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn start_on(listener: TcpListener, config: ComputeConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let mut world = World::default();
        let chaos = Chaos::new(config.seed);
        for s in &config.subnets {
            world.subnets.insert(
                (s.project.clone(), s.region.clone(), s.name.clone()),
                (s.clone(), Fingerprint(chaos.draw_u64())),
            );
        }
        let audit_tx = config.audit.clone().map(AuditSink::spawn);
        let sim = Arc::new(Sim {
            world: Mutex::new(world),
            chaos,
            config,
            changed: Notify::new(),
            audit_tx,
        });
        let app = router(sim.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { sim, addr, task })
    }

    /// `http://127.0.0.1:PORT` (the client's endpoint).
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

    /// Reads the world.
    pub fn with_world<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.sim.world())
    }

    /// Changes the world directly, bypassing the API (no validation, no operation, no audit):
    /// for tests that need a drifted state the API would not produce, or a lost event.
    pub fn tamper<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.sim.world())
    }

    /// A cloneable read handle on the world (for the VM agent).
    pub fn view(&self) -> ComputeView {
        ComputeView(self.sim.clone())
    }

    /// A VM as the API would return it.
    pub fn instance_json(&self, project: &str, zone: &str, name: &str) -> Option<Value> {
        self.sim
            .world()
            .instances
            .get(&(project.to_string(), zone.to_string(), name.to_string()))
            .map(Instance::to_json)
    }

    /// Creates a VM directly (no operation, no audit entries).
    ///
    /// # Errors
    /// When the subnet is unknown or the name taken.
    pub fn seed_instance(&self, seed: InstanceSeed) -> Result<(), String> {
        let mut w = self.sim.world();
        let key = (seed.project.clone(), seed.zone.clone(), seed.name.clone());
        if w.instances.contains_key(&key) {
            return Err(format!("instance {} exists", seed.name));
        }
        let (subnet, _) = w
            .subnets
            .get(&seed.subnet)
            .cloned()
            .ok_or_else(|| format!("unknown subnet {:?}", seed.subnet))?;
        let ip = next_ip(&mut w, &subnet);
        let inst = Instance {
            project: seed.project,
            zone: seed.zone,
            name: seed.name,
            id: self.sim.chaos.draw_u64() >> 2,
            created: now_rfc3339(),
            machine_type: "n2-standard-4".into(),
            status: "RUNNING".into(),
            can_ip_forward: seed.can_ip_forward,
            tags: seed.tags,
            tags_fp: self.sim.fp(),
            labels: seed.labels,
            labels_fp: self.sim.fp(),
            metadata: seed.metadata,
            metadata_fp: self.sim.fp(),
            nics: vec![Nic {
                name: "nic0".into(),
                network_link: subnet.network_link(),
                subnet: seed.subnet,
                network_ip: ip,
                aliases: seed.aliases,
                fingerprint: self.sim.fp(),
            }],
        };
        w.instances.insert(key, inst);
        Ok(())
    }
}

/// A cloneable read handle on a running simulator's world.
#[derive(Clone)]
pub struct ComputeView(Arc<Sim>);

impl std::fmt::Debug for ComputeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ComputeView")
    }
}

impl ComputeView {
    /// Reads the world.
    pub fn with_world<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.0.world())
    }
}

fn next_ip(w: &mut World, subnet: &SubnetSpec) -> Ipv4Addr {
    let key = (
        subnet.project.clone(),
        subnet.region.clone(),
        subnet.name.clone(),
    );
    let n = w.next_host.entry(key).or_insert(2);
    let base = u32::from(subnet.ip_cidr_range.net().network());
    let ip = Ipv4Addr::from(base.wrapping_add(*n));
    *n += 1;
    ip
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances",
            get(list_instances).post(insert_instance),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{name}",
            get(get_instance).delete(delete_instance),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{name}/{action}",
            post(instance_action),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{name}/updateNetworkInterface",
            patch(update_nic),
        )
        .route(
            "/compute/v1/projects/{project}/aggregated/instances",
            get(aggregated_list),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/operations/{op}",
            get(get_operation),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/operations/{op}/wait",
            post(wait_operation),
        )
        .route(
            "/compute/v1/projects/{project}/regions/{region}/subnetworks/{subnet}",
            get(get_subnet),
        )
        .fallback(fallback)
        .with_state(sim)
}

/// An HTTP answer plus what to log.
struct Answer {
    status: StatusCode,
    body: Value,
    injected: bool,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            injected: false,
        }
    }
    fn err(status: u16, reason: &str, message: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            body: error_body(status, reason, message),
            injected: false,
        }
    }
    fn not_found(link: &str) -> Self {
        Self::err(
            404,
            "notFound",
            &format!("The resource '{link}' was not found"),
        )
    }
    fn invalid(message: &str) -> Self {
        Self::err(400, "invalid", message)
    }
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((pct_decode(k)?, pct_decode(v)?))
        })
        .collect()
}

fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
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
    String::from_utf8(out).ok()
}

/// Wraps every handler: latency and error injection first, then the request log.
async fn run(
    sim: &Sim,
    method: &str,
    http_method: &Method,
    uri: &Uri,
    body: &Bytes,
    f: impl FnOnce(&Sim) -> Answer,
) -> Response {
    let spec = sim.chaos.faults_for(method);
    if !spec.latency.is_zero() {
        tokio::time::sleep(spec.latency).await;
    }
    let answer = match sim.chaos.draw_error(method) {
        Some(InjectedError::TooManyRequests) => Answer {
            injected: true,
            ..Answer::err(429, "rateLimitExceeded", "Rate Limit Exceeded")
        },
        Some(InjectedError::RateLimitExceeded) => Answer {
            injected: true,
            ..Answer::err(403, "rateLimitExceeded", "Rate Limit Exceeded")
        },
        Some(InjectedError::Unavailable) => Answer {
            injected: true,
            ..Answer::err(503, "backendError", "The service is currently unavailable.")
        },
        None => f(sim),
    };
    sim.chaos.record(LoggedRequest {
        method: method.to_string(),
        http_method: http_method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        status: answer.status.as_u16(),
        at: sim.chaos.elapsed(),
        injected: answer.injected,
    });
    (answer.status, axum::Json(answer.body)).into_response()
}

async fn fallback(method: Method, uri: Uri) -> Response {
    let body = error_body(
        404,
        "notFound",
        &format!("No such method or path: {method} {}", uri.path()),
    );
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn validate_location(project: &str, zone: &str) -> Result<(), Answer> {
    if shared::names::validate_project_id(project).is_err() {
        return Err(Answer::invalid(&format!(
            "Invalid value for field 'project': '{project}'."
        )));
    }
    if validate_zone(zone).is_err() {
        return Err(Answer::invalid(&format!(
            "Invalid value for field 'zone': '{zone}'. Unknown zone."
        )));
    }
    Ok(())
}

fn instance_link(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}

async fn get_instance(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    run(&sim, "instances.get", &method, &uri, &Bytes::new(), |sim| {
        if let Err(a) = validate_location(&project, &zone) {
            return a;
        }
        match sim
            .world()
            .instances
            .get(&(project.clone(), zone.clone(), name.clone()))
        {
            Some(i) => Answer::ok(i.to_json()),
            None => Answer::not_found(&instance_link(&project, &zone, &name)),
        }
    })
    .await
}

struct Page {
    max: usize,
    offset: usize,
    filter: Filter,
}

fn page_params(q: &HashMap<String, String>) -> Result<Page, Answer> {
    let max = match q.get("maxResults") {
        None => 500,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(Answer::invalid(&format!(
                    "Invalid value for field 'maxResults': '{v}'. Must be in the range [0, 500]."
                )));
            }
        },
    };
    let offset = match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .strip_prefix("sim-")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Answer::invalid(&format!("Invalid value for field 'pageToken': '{t}'."))
            })?,
    };
    let filter = match q.get("filter").filter(|f| !f.trim().is_empty()) {
        None => Filter::default(),
        Some(f) => Filter::parse(f)
            .map_err(|e| Answer::invalid(&format!("Invalid list filter expression '{f}': {e}")))?,
    };
    Ok(Page {
        max,
        offset,
        filter,
    })
}

async fn list_instances(
    State(sim): State<Arc<Sim>>,
    Path((project, zone)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
) -> Response {
    run(&sim, "instances.list", &method, &uri, &Bytes::new(), |sim| {
        if let Err(a) = validate_location(&project, &zone) {
            return a;
        }
        let page = match page_params(&query_map(q.as_deref())) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let w = sim.world();
        let all: Vec<&Instance> = w
            .instances
            .values()
            .filter(|i| i.project == project && i.zone == zone && page.filter.matches(i))
            .collect();
        let items: Vec<Value> = all.iter().skip(page.offset).take(page.max).map(|i| i.to_json()).collect();
        let mut body = json!({"kind": "compute#instanceList", "id": format!("projects/{project}/zones/{zone}/instances"), "items": items,
            "selfLink": format!("{API}projects/{project}/zones/{zone}/instances")});
        if page.offset + page.max < all.len() {
            body["nextPageToken"] = json!(format!("sim-{}", page.offset + page.max));
        }
        Answer::ok(body)
    })
    .await
}

async fn aggregated_list(
    State(sim): State<Arc<Sim>>,
    Path(project): Path<String>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
) -> Response {
    run(&sim, "instances.aggregatedList", &method, &uri, &Bytes::new(), |sim| {
        let page = match page_params(&query_map(q.as_deref())) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let w = sim.world();
        let all: Vec<&Instance> = w
            .instances
            .values()
            .filter(|i| i.project == project && page.filter.matches(i))
            .collect();
        let mut items: BTreeMap<String, Value> = BTreeMap::new();
        for i in all.iter().skip(page.offset).take(page.max) {
            let scope = items
                .entry(format!("zones/{}", i.zone))
                .or_insert_with(|| json!({"instances": []}));
            if let Some(arr) = scope["instances"].as_array_mut() {
                arr.push(i.to_json());
            }
        }
        // The real API lists every zone, with a warning where there is nothing on the page.
        for s in w.subnets.values().filter(|(s, _)| s.project == project) {
            for letter in ["a", "b", "c"] {
                items.entry(format!("zones/{}-{letter}", s.0.region)).or_insert_with(|| {
                    json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope on this page.",
                        "data": [{"key": "scope", "value": format!("zones/{}-{letter}", s.0.region)}]}})
                });
            }
        }
        let mut body = json!({"kind": "compute#instanceAggregatedList", "id": format!("projects/{project}/aggregated/instances"),
            "items": items, "selfLink": format!("{API}projects/{project}/aggregated/instances")});
        if page.offset + page.max < all.len() {
            body["nextPageToken"] = json!(format!("sim-{}", page.offset + page.max));
        }
        Answer::ok(body)
    })
    .await
}

async fn get_subnet(
    State(sim): State<Arc<Sim>>,
    Path((project, region, subnet)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    run(
        &sim,
        "subnetworks.get",
        &method,
        &uri,
        &Bytes::new(),
        |sim| match sim
            .world()
            .subnets
            .get(&(project.clone(), region.clone(), subnet.clone()))
        {
            Some((s, fp)) => Answer::ok(s.to_json(*fp)),
            None => Answer::not_found(&format!(
                "projects/{project}/regions/{region}/subnetworks/{subnet}"
            )),
        },
    )
    .await
}

/// Resolves a subnetwork reference (full URL, `projects/P/regions/R/subnetworks/S` or
/// `regions/R/subnetworks/S`).
fn subnet_ref(project: &str, s: &str) -> Option<(String, String, String)> {
    let path = s.split_once("/compute/v1/").map_or(s, |(_, p)| p);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "regions", r, "subnetworks", n] => {
            Some(((*p).into(), (*r).into(), (*n).into()))
        }
        ["regions", r, "subnetworks", n] => Some((project.into(), (*r).into(), (*n).into())),
        _ => None,
    }
}

impl Sim {
    /// Registers an operation for `target`; the mutation is applied when it completes.
    #[allow(clippy::too_many_arguments)]
    fn start_operation(
        self: &Arc<Self>,
        method: &str,
        project: &str,
        zone: &str,
        op_type: &str,
        target: (&str, u64),
        request_id: Option<String>,
        mutation: Mutation,
    ) -> Answer {
        let mut w = self.world();
        if let Some(rid) = &request_id
            && let Some(key) = w.request_ids.get(rid)
            && let Some(op) = w.operations.get(key)
        {
            // Same requestId: the same operation, applied at most once.
            return Answer::ok(op.to_json());
        }
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let name = format!("operation-{now_ms}-{:012x}", self.chaos.draw_u64() >> 16);
        let op = Operation {
            project: project.to_string(),
            zone: zone.to_string(),
            name: name.clone(),
            id: self.chaos.draw_u64() >> 2,
            op_type: op_type.to_string(),
            target_link: format!("{API}{}", target.0),
            target_id: target.1,
            status: OpStatus::Pending,
            insert_time: now_rfc3339(),
            start_time: None,
            end_time: None,
            client_operation_id: request_id.clone(),
            error: None,
        };
        let key = (project.to_string(), zone.to_string(), name);
        w.operations.insert(key.clone(), op);
        if let Some(rid) = request_id {
            w.request_ids.insert(rid, key.clone());
        }
        let async_fail = self.chaos.draw_async_failure(method);
        let latency = self.config.op_latency;
        if latency.is_zero() {
            complete(&mut w, &key, mutation, async_fail);
            let body = w
                .operations
                .get(&key)
                .map(Operation::to_json)
                .unwrap_or_default();
            drop(w);
            self.changed.notify_waiters();
            return Answer::ok(body);
        }
        let body = w
            .operations
            .get(&key)
            .map(Operation::to_json)
            .unwrap_or_default();
        drop(w);
        let sim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(latency / 3).await;
            {
                let mut w = sim.world();
                if let Some(op) = w.operations.get_mut(&key) {
                    op.status = OpStatus::Running;
                    op.start_time = Some(now_rfc3339());
                }
            }
            sim.changed.notify_waiters();
            tokio::time::sleep(latency - latency / 3).await;
            {
                let mut w = sim.world();
                complete(&mut w, &key, mutation, async_fail);
            }
            sim.changed.notify_waiters();
        });
        Answer::ok(body)
    }

    fn audit(&self, entry: Value) {
        if let Some(tx) = &self.audit_tx {
            let _ = tx.send(entry);
        }
    }
}

fn complete(w: &mut World, key: &OpKey, mutation: Mutation, async_fail: bool) {
    let result = if async_fail {
        Err(OpError::internal())
    } else {
        mutation(w)
    };
    if let Some(op) = w.operations.get_mut(key) {
        op.status = OpStatus::Done;
        if op.start_time.is_none() {
            op.start_time = Some(now_rfc3339());
        }
        op.end_time = Some(now_rfc3339());
        op.error = result.err();
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Answer> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| Answer::invalid(&format!("Invalid JSON payload received. {e}")))
}

fn request_id(q: &HashMap<String, String>) -> Result<Option<String>, Answer> {
    match q.get("requestId").filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) if r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
            Ok(Some(r.clone()))
        }
        Some(r) => Err(Answer::invalid(&format!(
            "Invalid value for field 'requestId': '{r}'. The requestId must be a valid UUID."
        ))),
    }
}

/// What every instance mutation starts from: a valid location, the query, its `requestId`, the
/// body, and the instance as it is now.
struct Mutating {
    q: HashMap<String, String>,
    rid: Option<String>,
    body: Value,
    key: (String, String, String),
    link: String,
    current: Instance,
}

fn mutating(
    sim: &Sim,
    project: &str,
    zone: &str,
    name: &str,
    q: Option<&str>,
    body: &Bytes,
) -> Result<Mutating, Answer> {
    validate_location(project, zone)?;
    let q = query_map(q);
    let rid = request_id(&q)?;
    let body = parse_body(body)?;
    let key = (project.to_string(), zone.to_string(), name.to_string());
    let link = instance_link(project, zone, name);
    let current = sim
        .world()
        .instances
        .get(&key)
        .cloned()
        .ok_or_else(|| Answer::not_found(&link))?;
    Ok(Mutating {
        q,
        rid,
        body,
        key,
        link,
        current,
    })
}

#[allow(clippy::too_many_arguments)]
async fn instance_action(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name, action)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let api_method = format!("instances.{action}");
    let raw = body.clone();
    let m = api_method.clone();
    run(&sim.clone(), &m, &method, &uri, &raw, move |_| {
        let Mutating { rid, body, key, link, current, .. } =
            match mutating(&sim, &project, &zone, &name, q.as_deref(), &body) {
                Ok(m) => m,
                Err(a) => return a,
            };
        let target_id = current.id;
        let fp_of = |field: &str| body.get(field).and_then(Value::as_str).map(Fingerprint::parse);
        let mutation: Mutation = match action.as_str() {
            "setTags" => {
                let sent = fp_of("fingerprint");
                if sent.flatten() != Some(current.tags_fp) {
                    return Answer::err(412, "conditionNotMet", "Supplied fingerprint does not match current tags fingerprint.");
                }
                let items: Vec<String> = match body.get("items") {
                    None | Some(Value::Null) => vec![],
                    Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect(),
                    Some(_) => return Answer::invalid("Invalid value for field 'resource.items'."),
                };
                if let Some(bad) = items.iter().find(|t| validate_gce_name("tag", t).is_err()) {
                    return Answer::invalid(&format!("Invalid value for field 'resource.tags.items[]': '{bad}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"));
                }
                if items.len() > 64 {
                    return Answer::invalid("Invalid value for field 'resource.tags.items': too many tags (max 64).");
                }
                let expected = current.tags_fp;
                let new_fp = sim.fp();
                let l = link.clone();
                Box::new(move |w: &mut World| {
                    let inst = w.instances.get_mut(&key).ok_or_else(|| OpError::not_found(&l))?;
                    if inst.tags_fp != expected {
                        return Err(OpError::condition_not_met("tags"));
                    }
                    let mut seen = HashSet::new();
                    inst.tags = items.into_iter().filter(|t| seen.insert(t.clone())).collect();
                    inst.tags_fp = new_fp;
                    Ok(())
                })
            }
            "setMetadata" => {
                let sent = fp_of("fingerprint");
                if sent.flatten() != Some(current.metadata_fp) {
                    return Answer::err(412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.");
                }
                let mut items = Vec::new();
                let mut keys = HashSet::new();
                let mut total = 0usize;
                for it in body.get("items").and_then(Value::as_array).into_iter().flatten() {
                    let k = it.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
                    let v = it.get("value").and_then(Value::as_str).unwrap_or_default().to_string();
                    let key_ok = !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !key_ok {
                        return Answer::invalid(&format!("Invalid value for field 'resource.items[].key': '{k}'. Must be a match of regex '[a-zA-Z0-9-_]{{1,128}}'"));
                    }
                    if !keys.insert(k.clone()) {
                        return Answer::invalid(&format!("Invalid value for field 'resource.items[].key': '{k}'. Duplicate keys are not allowed."));
                    }
                    if v.len() > 256 * 1024 {
                        return Answer::invalid(&format!("Value for metadata key '{k}' exceeds 256 KB."));
                    }
                    total += k.len() + v.len();
                    items.push((k, v));
                }
                if total > 512 * 1024 {
                    return Answer::invalid("Metadata exceeds the total limit of 512 KB.");
                }
                let expected = current.metadata_fp;
                let new_fp = sim.fp();
                let l = link.clone();
                Box::new(move |w: &mut World| {
                    let inst = w.instances.get_mut(&key).ok_or_else(|| OpError::not_found(&l))?;
                    if inst.metadata_fp != expected {
                        return Err(OpError::condition_not_met("metadata"));
                    }
                    inst.metadata = items;
                    inst.metadata_fp = new_fp;
                    Ok(())
                })
            }
            "setLabels" => {
                let sent = fp_of("labelFingerprint");
                if sent.flatten() != Some(current.labels_fp) {
                    return Answer::err(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed");
                }
                let labels: BTreeMap<String, String> = body
                    .get("labels")
                    .and_then(Value::as_object)
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let expected = current.labels_fp;
                let new_fp = sim.fp();
                let l = link.clone();
                Box::new(move |w: &mut World| {
                    let inst = w.instances.get_mut(&key).ok_or_else(|| OpError::not_found(&l))?;
                    if inst.labels_fp != expected {
                        return Err(OpError::condition_not_met("labels"));
                    }
                    inst.labels = labels;
                    inst.labels_fp = new_fp;
                    Ok(())
                })
            }
            other => {
                let body = error_body(400, "invalid", &format!("Unknown or unsupported method {other}"));
                return Answer { status: StatusCode::BAD_REQUEST, body, injected: false };
            }
        };
        sim.start_operation(&api_method, &project, &zone, &action, (&link, target_id), rid, mutation)
    })
    .await
}

/// A requested alias range: explicit, or a prefix length to allocate.
enum Wanted {
    Exact(Cidr),
    Allocate(u8),
}

async fn update_nic(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let raw = body.clone();
    run(&sim.clone(), "instances.updateNetworkInterface", &method, &uri, &raw, move |_| {
        let Mutating { q, rid, body, key, link, current } =
            match mutating(&sim, &project, &zone, &name, q.as_deref(), &body) {
                Ok(m) => m,
                Err(a) => return a,
            };
        let Some(nic_name) = q.get("networkInterface").cloned() else {
            return Answer::invalid("Required field 'networkInterface' not specified");
        };
        let (target_id, nic, subnet) = {
            let w = sim.world();
            let inst = &current;
            let Some(nic) = inst.nics.iter().find(|n| n.name == nic_name).cloned() else {
                return Answer::invalid(&format!("Invalid value for field 'networkInterface': '{nic_name}'. The network interface does not exist."));
            };
            let Some((subnet, _)) = w.subnets.get(&nic.subnet).cloned() else {
                return Answer::invalid("The network interface's subnetwork no longer exists.");
            };
            (inst.id, nic, subnet)
        };
        let Some(fp) = body.get("fingerprint").and_then(Value::as_str) else {
            return Answer::invalid("Invalid value for field 'resource.fingerprint': ''. Required field 'resource.fingerprint' not specified");
        };
        if Fingerprint::parse(fp) != Some(nic.fingerprint) {
            return Answer::err(412, "conditionNotMet", "Supplied fingerprint does not match current network interface fingerprint.");
        }
        // Validate the requested ranges (synchronously, as the API does for syntax and range).
        // PATCH semantics: without an `aliasIpRanges` key the aliases stay as they are.
        let replace_aliases = body.get("aliasIpRanges").is_some();
        let mut wanted: Vec<(Wanted, Option<String>)> = Vec::new();
        for (i, a) in body.get("aliasIpRanges").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let raw = a.get("ipCidrRange").and_then(Value::as_str).unwrap_or_default();
            let range_name = a.get("subnetworkRangeName").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
            let parent = match &range_name {
                Some(rn) => match subnet.range(rn) {
                    Some(c) => c,
                    None => {
                        return Answer::invalid(&format!(
                            "Invalid value for field 'resource.aliasIpRanges[{i}].subnetworkRangeName': '{rn}'. Secondary range '{rn}' does not exist in subnetwork '{}'.",
                            subnet.self_link()
                        ));
                    }
                },
                None => subnet.ip_cidr_range,
            };
            let w = if let Some(len) = raw.strip_prefix('/') {
                match len.parse::<u8>() {
                    Ok(l) if (parent.prefix_len()..=32).contains(&l) => Wanted::Allocate(l),
                    _ => return Answer::invalid(&format!("Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'.")),
                }
            } else {
                let c = if raw.contains('/') { raw.parse::<Cidr>() } else { format!("{raw}/32").parse::<Cidr>() };
                match c {
                    Ok(c) if parent.contains(&c) => Wanted::Exact(c),
                    Ok(_) => {
                        return Answer::invalid(&format!(
                            "Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'. Alias IP range must be within the range '{}' ({parent}).",
                            range_name.as_deref().unwrap_or("primary")
                        ));
                    }
                    Err(_) => return Answer::invalid(&format!("Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'. Invalid IPv4 CIDR.")),
                }
            };
            wanted.push((w, range_name));
        }
        let exact: Vec<Cidr> = wanted.iter().filter_map(|(w, _)| if let Wanted::Exact(c) = w { Some(*c) } else { None }).collect();
        for (i, a) in exact.iter().enumerate() {
            if exact[i + 1..].iter().any(|b| a.overlaps(b)) {
                return Answer::invalid(&format!("Invalid value for field 'resource.aliasIpRanges': alias IP ranges overlap ({a})."));
            }
        }
        let expected = nic.fingerprint;
        let new_fp = sim.fp();
        let subnet_key = nic.subnet.clone();
        let subnet_link = subnet.self_link();
        let l = link.clone();
        let mutation: Mutation = Box::new(move |w: &mut World| {
            let link = l;
            // Every alias in this subnet held by another VM (or another NIC).
            let taken: Vec<Cidr> = w
                .instances
                .iter()
                .flat_map(|(k, inst)| inst.nics.iter().map(move |n| (k, n)))
                .filter(|(k, n)| n.subnet == subnet_key && !(**k == key && n.name == nic_name))
                .flat_map(|(_, n)| n.aliases.iter().map(|a| a.cidr))
                .collect();
            let inst = w.instances.get_mut(&key).ok_or_else(|| OpError::not_found(&link))?;
            let Some(nic) = inst.nics.iter_mut().find(|n| n.name == nic_name) else {
                return Err(OpError::not_found(&link));
            };
            if nic.fingerprint != expected {
                return Err(OpError::condition_not_met("network interface"));
            }
            if !replace_aliases {
                nic.fingerprint = new_fp;
                return Ok(());
            }
            let mut result: Vec<Alias> = Vec::new();
            for (w, range_name) in wanted {
                let parent = range_name.as_deref().and_then(|rn| subnet.range(rn)).unwrap_or(subnet.ip_cidr_range);
                let cidr = match w {
                    Wanted::Exact(c) => {
                        if taken.iter().any(|t| t.overlaps(&c)) {
                            return Err(OpError::ip_in_use(&c));
                        }
                        c
                    }
                    Wanted::Allocate(len) => {
                        let in_use: Vec<Cidr> = taken.iter().copied().chain(result.iter().map(|a| a.cidr)).collect();
                        let found = parent
                            .net()
                            .subnets(len)
                            .ok()
                            .into_iter()
                            .flatten()
                            .filter_map(|n| n.to_string().parse::<Cidr>().ok())
                            .find(|c| !in_use.iter().any(|t| t.overlaps(c)));
                        match found {
                            Some(c) => c,
                            None => return Err(OpError::exhausted(&subnet_link, range_name.as_deref().unwrap_or("primary"))),
                        }
                    }
                };
                result.push(Alias { cidr, range_name });
            }
            nic.aliases = result;
            nic.fingerprint = new_fp;
            Ok(())
        });
        sim.start_operation("instances.updateNetworkInterface", &project, &zone, "updateNetworkInterface", (&link, target_id), rid, mutation)
    })
    .await
}

#[allow(clippy::too_many_arguments)]
fn audit_entry(
    project: &str,
    zone: &str,
    name: &str,
    id: u64,
    method: &str,
    op: &str,
    first: bool,
    failure: Option<&OpError>,
) -> Value {
    let mut e = json!({
        "insertId": format!("{:x}", rand_like(id, op, first)),
        "logName": format!("projects/{project}/logs/cloudaudit.googleapis.com%2Factivity"),
        "operation": {"id": op, "producer": "compute.googleapis.com"},
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "provisioner@example-project.iam.gserviceaccount.com"},
            "serviceName": "compute.googleapis.com",
            "methodName": format!("v1.compute.instances.{method}"),
            "resourceName": instance_link(project, zone, name),
            "request": {"@type": format!("type.googleapis.com/compute.instances.{method}")},
        },
        "resource": {"type": "gce_instance", "labels": {"instance_id": id.to_string(), "project_id": project, "zone": zone}},
        "severity": "NOTICE",
        "timestamp": now_rfc3339(),
        "receiveTimestamp": now_rfc3339(),
    });
    e["operation"][if first { "first" } else { "last" }] = json!(true);
    if let Some(f) = failure {
        e["severity"] = json!("ERROR");
        e["protoPayload"]["status"] = json!({"code": 13, "message": f.message});
    }
    e
}

fn rand_like(id: u64, op: &str, first: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, op, first).hash(&mut h);
    h.finish()
}

async fn insert_instance(
    State(sim): State<Arc<Sim>>,
    Path((project, zone)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let raw = body.clone();
    run(&sim.clone(), "instances.insert", &method, &uri, &raw, move |_| {
        if let Err(a) = validate_location(&project, &zone) {
            return a;
        }
        let q = query_map(q.as_deref());
        let rid = match request_id(&q) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let body = match parse_body(&body) {
            Ok(b) => b,
            Err(a) => return a,
        };
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if validate_gce_name("instance name", &name).is_err() {
            return Answer::invalid(&format!("Invalid value for field 'resource.name': '{name}'. Must be a match of regex '[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?'"));
        }
        let key = (project.clone(), zone.clone(), name.clone());
        let link = instance_link(&project, &zone, &name);
        let region = zone.rsplit_once('-').map_or(zone.as_str(), |(r, _)| r).to_string();
        let Some(nic_json) = body.get("networkInterfaces").and_then(Value::as_array).and_then(|a| a.first()).cloned() else {
            return Answer::invalid("Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required.");
        };
        let subnet_key = match nic_json.get("subnetwork").and_then(Value::as_str).and_then(|s| subnet_ref(&project, s)) {
            Some(k) => k,
            None => return Answer::invalid("Invalid value for field 'resource.networkInterfaces[0].subnetwork': a subnetwork is required."),
        };
        if subnet_key.1 != region {
            return Answer::invalid(&format!("Invalid value for field 'resource.networkInterfaces[0].subnetwork': subnetwork is in region '{}', not '{region}'.", subnet_key.1));
        }
        let machine_type = body.get("machineType").and_then(Value::as_str).unwrap_or("n2-standard-4");
        let machine_type = machine_type.rsplit('/').next().unwrap_or(machine_type).to_string();
        let mut w = sim.world();
        if w.instances.contains_key(&key) || w.pending_inserts.contains(&key) {
            return Answer::err(409, "alreadyExists", &format!("The resource '{link}' already exists"));
        }
        let Some((subnet, _)) = w.subnets.get(&subnet_key).cloned() else {
            return Answer::not_found(&format!("projects/{}/regions/{}/subnetworks/{}", subnet_key.0, subnet_key.1, subnet_key.2));
        };
        let ip = next_ip(&mut w, &subnet);
        w.pending_inserts.insert(key.clone());
        drop(w);
        let id = sim.chaos.draw_u64() >> 2;
        let inst = Instance {
            project: project.clone(),
            zone: zone.clone(),
            name: name.clone(),
            id,
            created: now_rfc3339(),
            machine_type,
            status: "RUNNING".into(),
            can_ip_forward: body.get("canIpForward").and_then(Value::as_bool).unwrap_or(false),
            tags: body.pointer("/tags/items").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default(),
            tags_fp: sim.fp(),
            labels: body.get("labels").and_then(Value::as_object).map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default(),
            labels_fp: sim.fp(),
            metadata: body.pointer("/metadata/items").and_then(Value::as_array).map(|a| a.iter().map(|it| (it["key"].as_str().unwrap_or_default().to_string(), it["value"].as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default(),
            metadata_fp: sim.fp(),
            nics: vec![Nic { name: "nic0".into(), network_link: subnet.network_link(), subnet: subnet_key, network_ip: ip, aliases: vec![], fingerprint: sim.fp() }],
        };
        {
            let sim2 = sim.clone();
            let (p, z, n) = (project.clone(), zone.clone(), name.clone());
            let mutation: Mutation = Box::new(move |w: &mut World| {
                w.pending_inserts.remove(&key);
                w.instances.insert(key, inst);
                Ok(())
            });
            let ans = sim.start_operation("instances.insert", &project, &zone, "insert", (&link, id), rid, mutation);
            let op_name = ans.body["name"].as_str().unwrap_or_default().to_string();
            sim2.audit(audit_entry(&p, &z, &n, id, "insert", &op_name, true, None));
            spawn_last_entry(sim2, p, z, n, id, "insert", op_name);
            ans
        }
    })
    .await
}

/// Publishes the `last` audit entry once the operation is DONE (with the error, if any).
fn spawn_last_entry(
    sim: Arc<Sim>,
    project: String,
    zone: String,
    name: String,
    id: u64,
    method: &'static str,
    op: String,
) {
    if sim.audit_tx.is_none() {
        return;
    }
    tokio::spawn(async move {
        let key = (project.clone(), zone.clone(), op.clone());
        loop {
            let notified = sim.changed.notified();
            let done = sim
                .world()
                .operations
                .get(&key)
                .filter(|o| o.status == OpStatus::Done)
                .cloned();
            if let Some(o) = done {
                if method == "insert" && o.error.is_some() {
                    sim.world().pending_inserts.remove(&(
                        project.clone(),
                        zone.clone(),
                        name.clone(),
                    ));
                }
                sim.audit(audit_entry(
                    &project,
                    &zone,
                    &name,
                    id,
                    method,
                    &op,
                    false,
                    o.error.as_ref(),
                ));
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    });
}

async fn delete_instance(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    method: Method,
    uri: Uri,
) -> Response {
    run(
        &sim.clone(),
        "instances.delete",
        &method,
        &uri,
        &Bytes::new(),
        move |_| {
            if let Err(a) = validate_location(&project, &zone) {
                return a;
            }
            let rid = match request_id(&query_map(q.as_deref())) {
                Ok(r) => r,
                Err(a) => return a,
            };
            let key = (project.clone(), zone.clone(), name.clone());
            let link = instance_link(&project, &zone, &name);
            let Some(id) = sim.world().instances.get(&key).map(|i| i.id) else {
                return Answer::not_found(&link);
            };
            let link2 = link.clone();
            let mutation: Mutation = Box::new(move |w: &mut World| {
                w.instances
                    .remove(&key)
                    .map(|_| ())
                    .ok_or_else(|| OpError::not_found(&link2))
            });
            let ans = sim.start_operation(
                "instances.delete",
                &project,
                &zone,
                "delete",
                (&link, id),
                rid,
                mutation,
            );
            let op_name = ans.body["name"].as_str().unwrap_or_default().to_string();
            sim.audit(audit_entry(
                &project, &zone, &name, id, "delete", &op_name, true, None,
            ));
            spawn_last_entry(
                sim.clone(),
                project.clone(),
                zone.clone(),
                name.clone(),
                id,
                "delete",
                op_name,
            );
            ans
        },
    )
    .await
}

async fn get_operation(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, op)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    run(
        &sim,
        "zoneOperations.get",
        &method,
        &uri,
        &Bytes::new(),
        |sim| match sim
            .world()
            .operations
            .get(&(project.clone(), zone.clone(), op.clone()))
        {
            Some(o) => Answer::ok(o.to_json()),
            None => Answer::not_found(&format!("projects/{project}/zones/{zone}/operations/{op}")),
        },
    )
    .await
}

async fn wait_operation(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, op)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    let key = (project.clone(), zone.clone(), op.clone());
    // Block (outside the request-log wrapper) until DONE, the deadline, or an early return.
    let early = sim.chaos.draw_bool(sim.config.wait_early_return);
    let limit = if early {
        sim.config.wait_max / 4
    } else {
        sim.config.wait_max
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = sim.changed.notified();
        let done = sim
            .world()
            .operations
            .get(&key)
            .is_none_or(|o| o.status == OpStatus::Done);
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
    run(
        &sim,
        "zoneOperations.wait",
        &method,
        &uri,
        &Bytes::new(),
        |sim| match sim.world().operations.get(&key) {
            Some(o) => Answer::ok(o.to_json()),
            None => Answer::not_found(&format!("projects/{project}/zones/{zone}/operations/{op}")),
        },
    )
    .await
}
