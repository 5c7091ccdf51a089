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
//! - list and aggregatedList with filters and pagination (`maxResults` ≤ 500, `pageToken`),
//!   aggregatedList with partial responses (`fields`, [`fields`]);
//! - fault injection per method and a request log ([`crate::faults`]);
//! - as Cloud Logging's sink: the audit LogEntries of `instances.insert`/`delete` (first and
//!   last) are published to a topic.
//!
//! This file holds the simulator, its world and its routes; each resource family's handlers
//! live in their own module.

pub mod fields;
pub mod filter;
pub mod model;

mod instances;
mod lifecycle;
mod mutations;
mod nics;
mod operations;
mod subnets;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use nodewire::names::validate_zone;
use serde_json::Value;
use tokio::sync::Notify;

use crate::audit::AuditLog;
use crate::faults::{Chaos, InjectedError, lock};
use crate::server::{self, Answer, Server, Service};
pub use lifecycle::project_number;
pub use model::{Alias, Fingerprint, Instance, Nic, OpError, OpStatus, Operation, SubnetSpec};
use model::{error_body, now_rfc3339};

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
    /// How long an alias range removed from a NIC stays unassignable to another
    /// (`IP_IN_USE_BY_ANOTHER_RESOURCE`; zero: free at once). Compute Engine: "up to a minute"
    /// (<https://cloud.google.com/vpc/docs/configure-alias-ip-ranges>, Limitations).
    pub release_delay: Duration,
    /// How long a new VM stays `STAGING` after its insert is DONE before it is `RUNNING`
    /// (zero: `RUNNING` at once). Compute Engine: PROVISIONING → STAGING → RUNNING
    /// (<https://cloud.google.com/compute/docs/instances/instance-life-cycle>).
    pub boot_delay: Duration,
    /// From an accepted `updateNetworkInterface` to DONE, when it differs from `op_latency`
    /// (NIC updates take up to tens of seconds on Compute Engine).
    pub nic_op_latency: Option<Duration>,
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
            boot_delay: Duration::ZERO,
            release_delay: Duration::ZERO,
            nic_op_latency: None,
        }
    }
}

/// `(project, zone, name)` of an instance or an operation, `(project, region, name)` of a
/// subnetwork.
type Key = (String, String, String);

/// A write, applied to the world when its operation completes.
type Mutation = Box<dyn FnOnce(&mut World) -> Result<(), OpError> + Send>;

/// Everything the simulated project holds.
#[derive(Debug, Default)]
pub struct World {
    pub instances: BTreeMap<(String, String, String), Instance>,
    pub subnets: BTreeMap<(String, String, String), (SubnetSpec, Fingerprint)>,
    pub operations: HashMap<Key, Operation>,
    /// Zones `aggregatedList` cannot reach right now (`us-central1-b`): their scope answers
    /// with an `UNREACHABLE` warning instead of its instances.
    pub unreachable_zones: BTreeSet<String>,
    /// Alias ranges removed from a NIC, per subnet, and when (see `release_delay`).
    released: Vec<(
        (String, String, String),
        nodewire::names::Cidr,
        std::time::Instant,
    )>,
    request_ids: HashMap<String, Key>,
    pending_inserts: HashSet<Key>,
    next_host: HashMap<Key, u32>,
}

struct Sim {
    world: Mutex<World>,
    chaos: Chaos,
    config: ComputeConfig,
    changed: Notify,
    audit: AuditLog,
}

impl Sim {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// A fresh fingerprint.
    fn fp(&self) -> Fingerprint {
        Fingerprint(self.chaos.draw_u64())
    }
}

impl Service for Sim {
    type Config = ComputeConfig;

    fn new(config: ComputeConfig) -> Self {
        let mut world = World::default();
        let chaos = Chaos::new(config.seed);
        for s in &config.subnets {
            world.subnets.insert(
                (s.project.clone(), s.region.clone(), s.name.clone()),
                (s.clone(), Fingerprint(chaos.draw_u64())),
            );
        }
        let audit = AuditLog::start(config.audit.as_ref());
        Self {
            world: Mutex::new(world),
            chaos,
            config,
            changed: Notify::new(),
            audit,
        }
    }

    fn router(sim: Arc<Self>) -> Router {
        Router::new()
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/instances",
                get(instances::list).post(lifecycle::insert),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/instances/{name}",
                get(instances::get).delete(lifecycle::delete),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/instances/{name}/{action}",
                post(mutations::instance_action),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/instances/{name}/updateNetworkInterface",
                patch(nics::update_network_interface),
            )
            .route(
                "/compute/v1/projects/{project}/aggregated/instances",
                get(instances::aggregated_list),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/operations/{op}",
                get(operations::get),
            )
            .route(
                "/compute/v1/projects/{project}/zones/{zone}/operations/{op}/wait",
                post(operations::wait),
            )
            .route(
                "/compute/v1/projects/{project}/regions/{region}/subnetworks/{subnet}",
                get(subnets::get),
            )
            .fallback(fallback)
            .with_state(sim)
    }

    fn chaos(&self) -> &Chaos {
        &self.chaos
    }

    fn injected(error: InjectedError) -> Answer {
        match error {
            InjectedError::TooManyRequests => {
                refusal(429, "rateLimitExceeded", "Rate Limit Exceeded")
            }
            InjectedError::RateLimitExceeded => {
                refusal(403, "rateLimitExceeded", "Rate Limit Exceeded")
            }
            InjectedError::Unavailable => {
                refusal(503, "backendError", "The service is currently unavailable.")
            }
            InjectedError::PermissionDenied => refusal(
                403,
                "forbidden",
                "Required 'compute.instances.setTags' permission for 'projects/example-project/zones/us-central1-a/instances/vm'",
            ),
        }
    }
}

/// A running Compute Engine simulator.
pub struct ComputeSim {
    server: Server<Sim>,
}

server::running_simulator!(ComputeSim, ComputeConfig);

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
    /// The service accounts it runs as (emails).
    pub service_accounts: Vec<String>,
}

/// The service account node VMs run as in the simulators (the sandbox, the tests).
pub fn node_service_account(project: &str) -> String {
    format!("k8s-nodes@{project}.iam.gserviceaccount.com")
}

impl InstanceSeed {
    /// A node VM as a user creates it: IP forwarding on, nic0 on `PROJECT/REGION/k8s-nodes`,
    /// label `cluster=demo`; no tags, metadata or aliases. Change fields with struct update
    /// syntax.
    pub fn node_vm(project: &str, region: &str, zone: &str, name: &str) -> Self {
        Self {
            project: project.into(),
            zone: zone.into(),
            name: name.into(),
            subnet: (project.into(), region.into(), "k8s-nodes".into()),
            can_ip_forward: true,
            tags: vec![],
            labels: BTreeMap::from([("cluster".to_string(), "demo".to_string())]),
            metadata: vec![],
            aliases: vec![],
            service_accounts: vec![node_service_account(project)],
        }
    }
}

impl ComputeSim {
    fn sim(&self) -> &Arc<Sim> {
        self.server.sim()
    }

    /// Reads the world.
    pub fn with_world<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.sim().world())
    }

    /// Changes the world directly, bypassing the API (no validation, no operation, no audit):
    /// for tests that need a drifted state the API would not produce, or a lost event.
    pub fn tamper<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.sim().world())
    }

    /// From now on, the audit entries of `late.method` reach the sink's topic late (and
    /// `late.copies` times), as Cloud Logging may route them.
    pub fn make_audit_late(&self, late: crate::audit::Late) {
        self.sim().audit.make_late(late);
    }

    /// A cloneable read handle on the world (for the VM agent).
    pub fn view(&self) -> ComputeView {
        ComputeView(self.sim().clone())
    }

    /// A VM as the API would return it.
    pub fn instance_json(&self, project: &str, zone: &str, name: &str) -> Option<Value> {
        self.sim()
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
        let sim = self.sim();
        let mut w = sim.world();
        let key = (seed.project.clone(), seed.zone.clone(), seed.name.clone());
        if w.instances.contains_key(&key) {
            return Err(format!("instance {} exists", seed.name));
        }
        let (subnet, _) = w
            .subnets
            .get(&seed.subnet)
            .cloned()
            .ok_or_else(|| format!("unknown subnet {:?}", seed.subnet))?;
        let ip = subnets::next_ip(&mut w, &subnet);
        let inst = Instance {
            project: seed.project,
            zone: seed.zone,
            name: seed.name,
            id: sim.chaos.draw_u64() >> 2,
            created: now_rfc3339(),
            machine_type: "n2-standard-4".into(),
            status: "RUNNING".into(),
            can_ip_forward: seed.can_ip_forward,
            tags: seed.tags,
            tags_fp: sim.fp(),
            labels: seed.labels,
            labels_fp: sim.fp(),
            metadata: seed.metadata,
            metadata_fp: sim.fp(),
            nics: vec![Nic {
                name: "nic0".into(),
                network_link: subnet.network_link(),
                subnet: seed.subnet,
                network_ip: ip,
                aliases: seed.aliases,
                fingerprint: sim.fp(),
            }],
            service_accounts: seed.service_accounts,
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

async fn fallback(method: Method, uri: Uri) -> Response {
    refusal(
        404,
        "notFound",
        &format!("No such method or path: {method} {}", uri.path()),
    )
    .into_response()
}

/// A refusal in Google's JSON error shape; `reason` is the `errors[].reason`.
fn refusal(code: u16, reason: &str, message: &str) -> Answer {
    Answer::with_code(code, error_body(code, reason, message))
}

/// 404 `notFound` for the resource at `link`.
fn not_found(link: &str) -> Answer {
    refusal(
        404,
        "notFound",
        &format!("The resource '{link}' was not found"),
    )
}

/// 400 `invalid`.
fn invalid(message: &str) -> Answer {
    refusal(400, "invalid", message)
}

fn validate_location(project: &str, zone: &str) -> Result<(), Answer> {
    if nodewire::names::validate_project_id(project).is_err() {
        return Err(invalid(&format!(
            "Invalid value for field 'project': '{project}'."
        )));
    }
    if validate_zone(zone).is_err() {
        return Err(invalid(&format!(
            "Invalid value for field 'zone': '{zone}'. Unknown zone."
        )));
    }
    Ok(())
}

fn instance_link(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}
