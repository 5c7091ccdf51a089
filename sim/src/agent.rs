//! The simulated VM agent: plays each node VM's startup script, kubeadm and the kubelet, no
//! more kindly than they are.
//!
//! **`kubeadm join`** — when `kubeadm-join` appears in a RUNNING VM's metadata, after a
//! configurable delay:
//! - the JoinConfiguration is decoded strictly for its `apiVersion` (v1beta4:
//!   `kubeletExtraArgs` a list of `{name, value}`; v1beta3: a map; unknown fields refused);
//! - preflight: a VM that joined before (its disk has `/etc/kubernetes/kubelet.conf`) fails;
//! - discovery: `kube-public/cluster-info` must carry the bootstrap signer's
//!   `jws-kubeconfig-<token id>`, which must verify with the token's secret (kubeadm waits for
//!   it, up to its discovery timeout); the CA must match a `caCertHashes` pin; the
//!   `apiServerEndpoint` must be the server cluster-info names;
//! - a Node of that name must not exist yet (kubeadm refuses to join over it);
//! - the kubelet's TLS bootstrap with the token (the API server authenticates it against its
//!   Secret; kubeadm approves only the node group's certificates) gives a credential for
//!   `system:node:NAME`, and the kubelet registers its Node (name, providerID, the configured
//!   taints plus `node.kubernetes.io/not-ready`) under NodeRestriction.
//!
//! **The kubelet** then reports status (`Ready` after a while, a heartbeat at an interval) to
//! `nodes/NAME/status`. It registers **once**: a deleted Node is not created again while the
//! kubelet runs (kubernetes/kubernetes#71398; the re-registration of PR #123535 was not merged,
//! and #116485 reports the same in current releases). A kubelet *start* registers again: when
//! the VM goes from stopped to RUNNING, or when the node-side unit nodewire ships restarts it
//! because the metadata key [`KUBELET_RESTART_KEY`] changed; after a start it is Ready again
//! only after its readiness delay. A *suspended* VM's kubelet is frozen, not stopped: it
//! reports nothing while the VM is SUSPENDED and carries on after `resume` (no boot).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::compute::ComputeView;
use crate::k8s::K8sView;
use crate::k8s::controllers::detached_jws;
use crate::kubelet_cert::{self, ApiClient, Bootstrap, K8sTls};

/// The metadata key whose every new value restarts the kubelet (the node-side unit's
/// contract; nodewire writes it to heal "VM alive, Node gone").
pub const KUBELET_RESTART_KEY: &str = nodewire::join::KUBELET_RESTART_METADATA_KEY;

/// kubeadm's default discovery timeout: how long it waits for a signed cluster-info.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the simulated kubeadm waits for the kubelet's certificate. kubeadm waits up to its
/// TLS-bootstrap timeout (5 minutes). In metadata mode the approval comes from node-events,
/// after the CSR's audit entry reached it (5 s at the realistic pace, plus a push); the
/// simulator's signer signs within milliseconds of an approval, so a CSR still unsigned after
/// a minute was not approved and will not be (shorter than kubeadm's, so that a test of a
/// refusal does not wait five minutes).
const TLS_BOOTSTRAP_WAIT: Duration = Duration::from_secs(60);

/// node.sh's `NODEWIRE_JOIN_CONFLICT_ATTEMPTS` default: 409s from `/v1/join` before giving up.
const JOIN_CONFLICT_ATTEMPTS: u32 = 5;

/// node.sh's `NODEWIRE_JOIN_BACKOFF_MAX_SEC` default.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// From the metadata appearing to `kubeadm join`.
    pub join_delay: Duration,
    /// How often VMs' metadata is looked at.
    pub poll: Duration,
    /// The Kubernetes simulator's URL.
    pub k8s_endpoint: String,
    /// The kubelet's node status update interval (`nodeStatusUpdateFrequency`, 10 s by
    /// default); `None`: no status updates.
    pub heartbeat: Option<Duration>,
    /// From registration to reporting `Ready` (the runtime and CNI coming up).
    pub ready_after: Duration,
    /// Pull mode (issue 12): the startup script asks the `join` service instead of waiting
    /// for `kubeadm-join` in metadata. `None`: metadata mode.
    pub pull: Option<PullJoin>,
    /// Where kubelets and kubeadm connect with client certificates.
    pub tls: K8sTls,
    /// The Node registers with `NetworkUnavailable` = `True` (`NoRouteCreated`), as where a
    /// cloud provider manages routes: the in-tree GCE kubelet's initial node status, and
    /// cloud-provider's node controller for GCE (kubernetes/cloud-provider
    /// controllers/node/node_controller.go).
    pub network_unavailable: bool,
}

/// Where a pull-mode startup script asks.
#[derive(Debug, Clone)]
pub struct PullJoin {
    /// The metadata server's root (`…/computeMetadata/v1`).
    pub metadata_url: String,
    /// The `join` service's URL: where to POST.
    pub join_url: String,
    /// The identity token's audience: the service's `https://` URL as Cloud Run names it (on
    /// loopback the service is reached over plain HTTP at another address).
    pub audience: String,
}

/// What the agent did for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOutcome {
    Joined,
    /// A Node of that name already exists and is Ready: kubeadm refuses to join.
    AlreadyRegistered,
    /// A Node of that name existed and was not Ready: kubeadm joined, and the kubelet took
    /// that Node over as its own (pkg/kubelet/kubelet_node_status.go).
    Adopted,
    /// The kubelet started again and registered its Node again.
    Reregistered,
    Refused(String),
    /// Pull mode: the `join` service took the report of the join (202).
    Reported,
    /// The Node's podCIDR appeared (the kubelet polls its Node for it after registering,
    /// pkg/kubelet/kubelet_node_status.go `fastStatusUpdateOnce`) and the startup script
    /// wrote the CNI configuration for it (`write_cni_config` in infra/startup/common.sh).
    CniConfigured(String),
}

/// One line of the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEvent {
    pub vm: String,
    pub outcome: AgentOutcome,
}

/// A running agent. Dropping it stops it.
#[derive(Debug)]
pub struct VmAgent {
    task: tokio::task::JoinHandle<()>,
    log: Arc<Mutex<Vec<AgentEvent>>>,
}

impl Drop for VmAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A VM's kubelet after a successful join: what it registers with, and its state.
struct Kubelet {
    /// The VM's numeric id: a VM deleted and created again under the name is another disk.
    instance_id: u64,
    node: Value,
    /// The kubelet's own certificate (from its TLS bootstrap), over the TLS front.
    client: ApiClient,
    /// When this kubelet last started (its join, a boot after a stop, a restart): it reports
    /// Ready `ready_after` later, once its network is configured.
    started_at: Instant,
    /// The podCIDR the CNI configuration was written for; until then the container runtime's
    /// network is not ready ("cni config uninitialized") and the kubelet reports NotReady.
    cni: Option<String>,
    last_heartbeat: Option<Instant>,
    running: bool,
    restart_seen: Option<String>,
}

impl Kubelet {
    /// The kubelet a successful join on VM `instance_id` started, registered as `node`.
    fn started(instance_id: u64, restart: Option<String>, node: Value, client: ApiClient) -> Self {
        Self {
            instance_id,
            node,
            client,
            started_at: Instant::now(),
            cni: None,
            last_heartbeat: None,
            running: true,
            restart_seen: restart,
        }
    }
}

/// What the agent sees of one VM.
struct VmSeen {
    key: String,
    id: u64,
    running: bool,
    /// SUSPENDING or SUSPENDED.
    suspended: bool,
    join: Option<String>,
    restart: Option<String>,
}

impl VmAgent {
    /// Starts watching the Compute simulator's VMs.
    pub fn start(compute: ComputeView, k8s: K8sView, config: AgentConfig) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let record = |vm: &str, outcome: AgentOutcome| {
                match &outcome {
                    AgentOutcome::Refused(why) => {
                        tracing::warn!(vm, %why, "simulated kubeadm join refused");
                    }
                    o => tracing::info!(vm, outcome = ?o, "simulated node agent"),
                }
                log2.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(AgentEvent {
                        vm: vm.to_string(),
                        outcome,
                    });
            };
            // (vm, join config) → when it was first seen; handled ones are remembered.
            let mut seen: HashMap<(String, String), Instant> = HashMap::new();
            let mut done: HashSet<(String, String)> = HashSet::new();
            let mut kubelets: HashMap<String, Kubelet> = HashMap::new();
            // Joins run beside the loop, one task per VM, as VMs boot in parallel; stopping the
            // agent stops them.
            let mut joins: tokio::task::JoinSet<Finished> = tokio::task::JoinSet::new();
            loop {
                while let Some(Ok(f)) = joins.try_join_next() {
                    let joined = f.kubelet.is_some();
                    if let Some((node, client)) = f.kubelet {
                        kubelets.insert(
                            f.vm.clone(),
                            Kubelet::started(f.instance_id, f.restart, node, client),
                        );
                    }
                    record(&f.vm, f.outcome);
                    if let (true, Some(pull)) = (joined, &config.pull) {
                        // The report runs beside the loop, as the script's last command runs
                        // after the kubelet started.
                        let (http, pull, vm_key, log) =
                            (http.clone(), pull.clone(), f.vm.clone(), log2.clone());
                        tokio::spawn(async move {
                            if report_join(&http, &pull, &vm_key).await {
                                log.lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .push(AgentEvent {
                                        vm: vm_key,
                                        outcome: AgentOutcome::Reported,
                                    });
                            }
                        });
                    }
                }
                let vms: Vec<VmSeen> = compute.with_world(|w| {
                    w.instances
                        .values()
                        .map(|i| {
                            let meta = |k: &str| {
                                i.metadata
                                    .iter()
                                    .find(|(m, _)| m == k)
                                    .map(|(_, v)| v.clone())
                            };
                            VmSeen {
                                key: format!("{}/{}/{}", i.project, i.zone, i.name),
                                id: i.id,
                                running: i.status == "RUNNING",
                                suspended: matches!(i.status.as_str(), "SUSPENDING" | "SUSPENDED"),
                                join: meta("kubeadm-join"),
                                restart: meta(KUBELET_RESTART_KEY),
                            }
                        })
                        .collect()
                });
                // A deleted (or recreated) VM takes its kubelet with it.
                kubelets.retain(|k, kl| vms.iter().any(|v| v.key == *k && v.id == kl.instance_id));
                for vm in &vms {
                    if let Some(kl) = kubelets.get_mut(&vm.key)
                        && let Some(o) = kubelet_tick(&k8s, &config, vm, kl).await
                    {
                        record(&vm.key, o);
                    }
                    // Only a RUNNING VM runs its startup script; a VM with a kubelet (its disk
                    // holds kubelet.conf) does not join again in pull mode.
                    if !vm.running {
                        continue;
                    }
                    let source = match (&config.pull, &vm.join) {
                        (Some(pull), _) => {
                            if kubelets.contains_key(&vm.key) {
                                continue;
                            }
                            JoinSource::Pull(pull.clone(), format!("pull:{}", vm.id))
                        }
                        (None, Some(yaml)) => JoinSource::Metadata(yaml.clone()),
                        (None, None) => continue,
                    };
                    let key = (vm.key.clone(), source.key().to_string());
                    if done.contains(&key) {
                        continue;
                    }
                    let first = *seen.entry(key.clone()).or_insert_with(Instant::now);
                    if first.elapsed() < config.join_delay {
                        continue;
                    }
                    done.insert(key);
                    if matches!(source, JoinSource::Metadata(_)) && kubelets.contains_key(&vm.key) {
                        record(
                            &vm.key,
                            AgentOutcome::Refused(
                                "[preflight] /etc/kubernetes/kubelet.conf already exists: this VM joined before".into(),
                            ),
                        );
                        continue;
                    }
                    let (http, k8s, config) = (http.clone(), k8s.clone(), config.clone());
                    let (vm_key, instance_id, restart) =
                        (vm.key.clone(), vm.id, vm.restart.clone());
                    joins.spawn(async move {
                        let (outcome, kubelet) =
                            run_join(&http, &k8s, &config, &vm_key, first, source).await;
                        Finished {
                            vm: vm_key,
                            instance_id,
                            restart,
                            outcome,
                            kubelet,
                        }
                    });
                }
                tokio::time::sleep(config.poll).await;
            }
        });
        Self { task, log }
    }

    /// Everything the agent did so far.
    pub fn events(&self) -> Vec<AgentEvent> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The kubelet's part of a poll: start (registering its Node if there is none) when the VM
/// came back to RUNNING or the restart key changed; status updates while it runs.
async fn kubelet_tick(
    k8s: &K8sView,
    cfg: &AgentConfig,
    vm: &VmSeen,
    kl: &mut Kubelet,
) -> Option<AgentOutcome> {
    if vm.suspended {
        // Suspended, the guest's memory saved: the kubelet is frozen, not stopped, and carries
        // on where it was when the VM resumes (no boot, no kubelet start).
        return None;
    }
    if !vm.running {
        kl.running = false;
        return None;
    }
    let restarted = !kl.running || (vm.restart.is_some() && vm.restart != kl.restart_seen);
    kl.running = true;
    if restarted {
        kl.started_at = Instant::now();
        kl.last_heartbeat = None;
    }
    kl.restart_seen.clone_from(&vm.restart);
    let name = kl.node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut outcome = None;
    if restarted && k8s.object("nodes", "", &name).is_none() {
        let r = kl
            .client
            .request(reqwest::Method::POST, "/api/v1/nodes")
            .json(&kl.node)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 201) {
            outcome = Some(AgentOutcome::Reregistered);
        }
    }
    // Polled at every tick, as the kubelet polls its Node for the podCIDR after starting; the
    // status is reported at once when the network becomes ready.
    if kl.cni.is_none()
        && let Some(cidr) = k8s
            .object("nodes", "", &name)
            .and_then(|n| {
                n.pointer("/spec/podCIDR")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|c| !c.is_empty())
    {
        kl.cni = Some(cidr.clone());
        kl.last_heartbeat = None;
        outcome = Some(AgentOutcome::CniConfigured(cidr));
    }
    let Some(every) = cfg.heartbeat else {
        return outcome;
    };
    if kl.last_heartbeat.is_some_and(|t| t.elapsed() < every) {
        return outcome;
    }
    kl.last_heartbeat = Some(Instant::now());
    // A missing Node stays missing: this kubelet's status updates fail with 404.
    let ready = kl.started_at.elapsed() >= cfg.ready_after && kl.cni.is_some();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let (status, reason) = if ready {
        ("True", "KubeletReady")
    } else {
        ("False", "KubeletNotReady")
    };
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status,
        "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "containerd://2.0.0",
            "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0"}}});
    let _ = kl
        .client
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/nodes/{name}/status"),
        )
        .header("content-type", "application/strategic-merge-patch+json")
        .json(&patch)
        .send()
        .await;
    outcome
}

/// What the pull-mode startup script wrote to the VM's disk before `kubeadm join`.
#[derive(Clone)]
struct NodeFiles {
    /// At `nodewire::join::DISCOVERY_KUBECONFIG_PATH`.
    kubeconfig: String,
    /// At `nodewire::join::BOOTSTRAP_KEY_PATH` (PKCS#8 PEM); never sent anywhere.
    key_pem: String,
}

/// Where a VM's join configuration comes from.
enum JoinSource {
    /// Metadata mode: the JoinConfiguration in `kubeadm-join`.
    Metadata(String),
    /// Pull mode: asked of the `join` service (the key names the VM instance).
    Pull(PullJoin, String),
}

impl JoinSource {
    fn key(&self) -> &str {
        match self {
            JoinSource::Metadata(y) => y,
            JoinSource::Pull(_, k) => k,
        }
    }
}

/// A join that ended.
struct Finished {
    vm: String,
    instance_id: u64,
    restart: Option<String>,
    outcome: AgentOutcome,
    kubelet: Option<(Value, ApiClient)>,
}

/// One VM's startup script and `kubeadm join`, to an outcome: in pull mode the join request
/// (retried while the service asks to, up to kubeadm's discovery timeout), then kubeadm (its
/// own retries until the same timeout).
async fn run_join(
    http: &reqwest::Client,
    k8s: &K8sView,
    cfg: &AgentConfig,
    vm: &str,
    first: Instant,
    source: JoinSource,
) -> (AgentOutcome, Option<(Value, ApiClient)>) {
    let (yaml, files) = match source {
        JoinSource::Metadata(y) => (y, None),
        JoinSource::Pull(pull, _) => {
            let (mut conflicts, mut retries) = (0u32, 0u32);
            loop {
                match pull_join(http, &pull, vm).await {
                    Pulled::Config(y, files) => break (y, Some(files)),
                    // node.sh: a 409 is asked again with a new identity token after its
                    // backoff, JOIN_CONFLICT_ATTEMPTS (5) times at most.
                    Pulled::Conflict(why) => {
                        conflicts += 1;
                        if conflicts >= JOIN_CONFLICT_ATTEMPTS {
                            return (AgentOutcome::Refused(why), None);
                        }
                        tracing::debug!(vm, %why, "join request conflicts; asking again");
                        tokio::time::sleep(backoff(conflicts)).await;
                    }
                    // node.sh: Retry-After when the answer has one, else its backoff.
                    Pulled::Retry(why, after) if first.elapsed() < DISCOVERY_TIMEOUT => {
                        retries += 1;
                        tracing::debug!(vm, %why, "join request retries");
                        let delay = after.map_or_else(
                            || backoff(retries),
                            |s| Duration::from_secs(s).min(JOIN_BACKOFF_MAX),
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Pulled::Retry(why, _) => {
                        return (AgentOutcome::Refused(format!("timed out: {why}")), None);
                    }
                    Pulled::Refused(why) => return (AgentOutcome::Refused(why), None),
                }
            }
        }
    };
    let started = Instant::now();
    loop {
        match join(k8s, cfg, &yaml, files.as_ref()).await {
            Step::Done(outcome, kubelet) => return (outcome, kubelet),
            Step::Retry(why) if started.elapsed() < DISCOVERY_TIMEOUT => {
                tracing::debug!(vm, %why, "kubeadm join retries");
                tokio::time::sleep(cfg.poll).await;
            }
            Step::Retry(why) => {
                return (AgentOutcome::Refused(format!("timed out: {why}")), None);
            }
        }
    }
}

/// Where a pull-mode join request ended.
enum Pulled {
    Config(String, NodeFiles),
    /// 409: asked again with a new identity token, a few times.
    Conflict(String),
    /// Asked again later: why, and the answer's Retry-After (seconds), if any.
    Retry(String, Option<u64>),
    Refused(String),
}

/// An identity token of VM `vm` for the join service, from the metadata server.
async fn identity_token(
    http: &reqwest::Client,
    pull: &PullJoin,
    vm: &str,
) -> Result<String, String> {
    let r = http
        .get(format!(
            "{}/instance/service-accounts/default/identity",
            pull.metadata_url
        ))
        .query(&[("audience", pull.audience.as_str()), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .header(crate::metadata::INSTANCE_HEADER, vm)
        .send()
        .await
        .map_err(|e| format!("metadata server: {e}"))?;
    let status = r.status();
    let body = r
        .text()
        .await
        .map_err(|e| format!("metadata server: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("metadata server: HTTP {status}: {}", body.trim()))
    }
}

/// The startup script's join request: its own key pair and certificate request, a fresh
/// identity token, `POST /v1/join` with the request as the body. The key stays here.
async fn pull_join(http: &reqwest::Client, pull: &PullJoin, vm: &str) -> Pulled {
    let token = match identity_token(http, pull, vm).await {
        Ok(t) => t,
        Err(why) => return Pulled::Retry(why, None),
    };
    let name = vm.rsplit('/').next().unwrap_or(vm);
    let (key, request) = match kubelet_cert::node_key_and_request(name) {
        Ok(k) => k,
        Err(why) => return Pulled::Refused(why),
    };
    let r = match http
        .post(format!("{}/v1/join", pull.join_url))
        .bearer_auth(&token)
        .header("content-type", "application/x-pem-file")
        .body(request)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Pulled::Retry(format!("join service: {e}"), None),
    };
    let status = r.status().as_u16();
    let after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = r.text().await.unwrap_or_default();
    match status {
        200 => match body.split_once(nodewire::join::ANSWER_SEPARATOR) {
            Some((kubeconfig, yaml)) => Pulled::Config(
                yaml.to_string(),
                NodeFiles {
                    kubeconfig: kubeconfig.to_string(),
                    key_pem: key.serialize_pem(),
                },
            ),
            None => Pulled::Refused("join service: the answer has no discovery kubeconfig".into()),
        },
        409 => Pulled::Conflict(format!("join service: HTTP 409: {}", body.trim())),
        429 | 500..=599 => Pulled::Retry(
            format!("join service: HTTP {status}: {}", body.trim()),
            after,
        ),
        _ => Pulled::Refused(format!("join service: HTTP {status}: {}", body.trim())),
    }
}

/// node.sh's `backoff N`: RETRY_SLEEP (5 s) × 2^(N−1), at most JOIN_BACKOFF_MAX_SEC (60 s).
fn backoff(n: u32) -> Duration {
    let d = Duration::from_secs(5).saturating_mul(1 << n.saturating_sub(1).min(6));
    d.min(JOIN_BACKOFF_MAX)
}

/// The startup script's report after `kubeadm join`: `POST /v1/joined` with a fresh identity
/// token, retried while the Node is not visible yet. True when it was accepted.
async fn report_join(http: &reqwest::Client, pull: &PullJoin, vm: &str) -> bool {
    for _ in 0..40 {
        if let Ok(token) = identity_token(http, pull, vm).await
            && let Ok(r) = http
                .post(format!("{}/v1/joined", pull.join_url))
                .bearer_auth(&token)
                .send()
                .await
        {
            match r.status().as_u16() {
                202 => return true,
                409 | 429 | 500..=599 => {}
                _ => return false,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Where a join attempt ended.
enum Step {
    /// kubeadm keeps trying (discovery not ready, the API server asked to retry).
    Retry(String),
    /// The outcome, and on success the Node registered and the kubelet's credential.
    Done(AgentOutcome, Option<(Value, ApiClient)>),
}

fn refused(why: impl Into<String>) -> Step {
    Step::Done(AgentOutcome::Refused(why.into()), None)
}

/// The fields kubeadm knows, per level and version (kubeadm.k8s.io/v1beta3 and v1beta4 types).
fn known_fields(level: &str, v1beta4: bool) -> &'static [&'static str] {
    match (level, v1beta4) {
        ("root", false) => &[
            "apiVersion",
            "kind",
            "caCertPath",
            "discovery",
            "nodeRegistration",
            "controlPlane",
            "skipPhases",
            "patches",
        ],
        ("root", true) => &[
            "apiVersion",
            "kind",
            "dryRun",
            "caCertPath",
            "discovery",
            "nodeRegistration",
            "controlPlane",
            "skipPhases",
            "patches",
            "timeouts",
        ],
        ("discovery", false) => &["bootstrapToken", "file", "tlsBootstrapToken", "timeout"],
        ("discovery", true) => &["bootstrapToken", "file", "tlsBootstrapToken"],
        ("file", _) => &["kubeConfigPath"],
        ("bootstrapToken", _) => &[
            "token",
            "apiServerEndpoint",
            "caCertHashes",
            "unsafeSkipCAVerification",
        ],
        ("nodeRegistration", false) => &[
            "name",
            "criSocket",
            "taints",
            "kubeletExtraArgs",
            "ignorePreflightErrors",
            "imagePullPolicy",
        ],
        ("nodeRegistration", true) => &[
            "name",
            "criSocket",
            "taints",
            "kubeletExtraArgs",
            "ignorePreflightErrors",
            "imagePullPolicy",
            "imagePullSerial",
        ],
        ("taint", _) => &["key", "value", "effect", "timeAdded"],
        _ => &[],
    }
}

fn check_fields(obj: &Map<String, Value>, level: &str, v1beta4: bool) -> Result<(), String> {
    let known = known_fields(level, v1beta4);
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "strict decoding error: unknown field \"{k}\" in {level}"
        )),
        None => Ok(()),
    }
}

/// How kubeadm is told to find the cluster.
enum JoinDiscovery {
    Token {
        endpoint: String,
        token: String,
        pins: Vec<String>,
    },
    File {
        path: String,
    },
}

/// What a strictly decoded JoinConfiguration gives the join.
struct Join {
    discovery: JoinDiscovery,
    name: String,
    provider_id: Option<String>,
    taints: Vec<Value>,
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what}: expected an object"))
}

fn string(v: Option<&Value>, what: &str) -> Result<String, String> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{what}: expected a string")),
    }
}

/// Decodes as kubeadm does: the shape its `apiVersion` defines, nothing else.
fn decode(yaml: &str) -> Result<Join, String> {
    let root: Value = serde_saphyr::from_str(yaml)
        .map_err(|e| format!("the join configuration does not parse: {e}"))?;
    let r = object(&root, "JoinConfiguration")?;
    let version = string(r.get("apiVersion"), "apiVersion")?;
    let v1beta4 = match version.as_str() {
        "kubeadm.k8s.io/v1beta4" => true,
        "kubeadm.k8s.io/v1beta3" => false,
        other => {
            return Err(format!(
                "no kind \"JoinConfiguration\" is registered for version {other:?}"
            ));
        }
    };
    if string(r.get("kind"), "kind")? != "JoinConfiguration" {
        return Err(format!("not a JoinConfiguration: kind {:?}", r.get("kind")));
    }
    check_fields(r, "root", v1beta4)?;
    let d = object(r.get("discovery").unwrap_or(&Value::Null), "discovery")?;
    check_fields(d, "discovery", v1beta4)?;
    // validation.go ValidateDiscovery: exactly one of bootstrapToken and file.
    let discovery = match (d.get("bootstrapToken"), d.get("file")) {
        (Some(bt), None) => {
            let bt = object(bt, "discovery.bootstrapToken")?;
            check_fields(bt, "bootstrapToken", v1beta4)?;
            JoinDiscovery::Token {
                endpoint: string(bt.get("apiServerEndpoint"), "apiServerEndpoint")?,
                token: string(bt.get("token"), "token")?,
                pins: bt
                    .get("caCertHashes")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
        (None, Some(f)) => {
            let f = object(f, "discovery.file")?;
            check_fields(f, "file", v1beta4)?;
            let path = string(f.get("kubeConfigPath"), "discovery.file.kubeConfigPath")?;
            if path.is_empty() {
                return Err("discovery.file.kubeConfigPath: Required value".into());
            }
            JoinDiscovery::File { path }
        }
        _ => {
            return Err(
                "discovery: Invalid value: bootstrapToken or file must be set, not both".into(),
            );
        }
    };
    let empty = json!({});
    let nr = object(
        r.get("nodeRegistration").unwrap_or(&empty),
        "nodeRegistration",
    )?;
    check_fields(nr, "nodeRegistration", v1beta4)?;
    let provider_id = match (nr.get("kubeletExtraArgs"), v1beta4) {
        (None, _) => None,
        (Some(Value::Array(items)), true) => {
            let mut pid = None;
            for a in items {
                let a = object(a, "kubeletExtraArgs[]")?;
                if a.keys().any(|k| k != "name" && k != "value") {
                    return Err("strict decoding error: kubeletExtraArgs[] has fields other than name and value".into());
                }
                if string(a.get("name"), "kubeletExtraArgs[].name")? == "provider-id" {
                    pid = Some(string(a.get("value"), "kubeletExtraArgs[].value")?);
                }
            }
            pid
        }
        (Some(Value::Object(m)), false) => match m.get("provider-id") {
            None => None,
            Some(v) => Some(string(Some(v), "kubeletExtraArgs[provider-id]")?),
        },
        (Some(_), true) => {
            return Err("v1beta4 kubeletExtraArgs must be a list of {name, value}".into());
        }
        (Some(_), false) => return Err("v1beta3 kubeletExtraArgs must be a map of strings".into()),
    };
    let mut taints = Vec::new();
    for t in nr
        .get("taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let t = object(t, "taints[]")?;
        check_fields(t, "taint", v1beta4)?;
        taints.push(Value::Object(t.clone()));
    }
    Ok(Join {
        discovery,
        name: string(nr.get("name"), "nodeRegistration.name")?,
        provider_id,
        taints,
    })
}

async fn join(k8s: &K8sView, cfg: &AgentConfig, yaml: &str, files: Option<&NodeFiles>) -> Step {
    let jc = match decode(yaml) {
        Ok(j) => j,
        Err(e) => return refused(e),
    };
    let Some(ci) = k8s.object("configmaps", "kube-public", "cluster-info") else {
        return Step::Retry("kube-public/cluster-info is missing".into());
    };
    let ci_kubeconfig = ci
        .pointer("/data/kubeconfig")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // One parse of cluster-info's kubeconfig, with the library's own reader: the CA (its pin)
    // and the server it names: where the API server really is and what it really presents.
    let cluster = match nodewire::act::k8s::cluster_info_from_kubeconfig(&ci_kubeconfig) {
        Ok(c) => c,
        Err(e) => return refused(format!("cluster-info: {e}")),
    };
    let real_server = cluster
        .server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let name = jc.name.clone();
    let bootstrap = match &jc.discovery {
        JoinDiscovery::Token {
            endpoint,
            token,
            pins,
        } => match token_discovery(k8s, cfg, &cluster, &real_server, endpoint, token, pins) {
            Ok(client) => client,
            Err(step) => return step,
        },
        JoinDiscovery::File { path } => {
            match file_discovery(cfg, path, files, &cluster, &real_server).await {
                Ok(client) => client,
                Err(step) => return step,
            }
        }
    };
    // kubelet-start (cmd/kubeadm/app/cmd/phases/join/kubelet.go): the Node is read with the
    // bootstrap credential; a Node of that name whose Ready condition is True stops the join
    // here ("a Node with name … and status Ready already exists in the cluster"). One that is
    // not Ready (its kubelet gone) does not: the new kubelet takes it over.
    match bootstrap
        .request(reqwest::Method::GET, &format!("/api/v1/nodes/{name}"))
        .send()
        .await
    {
        Ok(r) if r.status().as_u16() == 404 => {}
        Ok(r) if r.status().is_success() => {
            let existing: Value = r.json().await.unwrap_or_default();
            let ready = existing
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            if ready {
                return Step::Done(AgentOutcome::AlreadyRegistered, None);
            }
        }
        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
            return Step::Retry(format!("cannot get Node {name:?}: HTTP {}", r.status()));
        }
        Ok(r) => return refused(format!("cannot get Node {name:?}: HTTP {}", r.status())),
        Err(e) => return Step::Retry(format!("cannot get Node {name:?}: {e}")),
    }
    // The kubelet's TLS bootstrap: its own key and CSR with the bootstrap credential; kubeadm
    // waits for kubelet.conf (its TLS-bootstrap timeout).
    let kubelet = match kubelet_cert::tls_bootstrap(
        &bootstrap,
        &cfg.tls,
        &name,
        TLS_BOOTSTRAP_WAIT,
        cfg.poll,
    )
    .await
    {
        Bootstrap::Issued(c) => c,
        Bootstrap::Pending(why) => {
            return refused(format!("the kubelet's TLS bootstrap timed out: {why}"));
        }
        Bootstrap::Refused(why) => {
            return refused(format!("the kubelet's TLS bootstrap failed: {why}"));
        }
    };
    let mut taints = jc.taints;
    // The kubelet registers not-ready; the node lifecycle controller lifts it once Ready.
    taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}));
    let mut spec = json!({"taints": taints});
    if let Some(pid) = &jc.provider_id {
        spec["providerID"] = json!(pid);
    }
    let labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), name.clone())]);
    let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec});
    if cfg.network_unavailable {
        node["status"] = json!({"conditions": [{"type": "NetworkUnavailable", "status": "True",
            "reason": "NoRouteCreated", "message": "Node created without a route",
            "lastTransitionTime": crate::compute::model::now_rfc3339()}]});
    }
    match kubelet
        .request(reqwest::Method::POST, "/api/v1/nodes")
        .json(&node)
        .send()
        .await
    {
        Ok(r) if r.status().as_u16() == 201 => {
            Step::Done(AgentOutcome::Joined, Some((node, kubelet)))
        }
        // The kubelet's registration finds its Node there (tryRegisterWithAPIServer): it reads
        // it and keeps it as its own — its spec (podCIDR, providerID, taints) as it was.
        Ok(r) if r.status().as_u16() == 409 => {
            match kubelet
                .request(reqwest::Method::GET, &format!("/api/v1/nodes/{name}"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                    Ok(existing) => Step::Done(AgentOutcome::Adopted, Some((existing, kubelet))),
                    Err(e) => Step::Retry(format!("reading the existing Node: {e}")),
                },
                Ok(r) => Step::Retry(format!("reading the existing Node: HTTP {}", r.status())),
                Err(e) => Step::Retry(format!("reading the existing Node: {e}")),
            }
        }
        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
            Step::Retry(format!("HTTP {}", r.status()))
        }
        Ok(r) => refused(format!(
            "registering the Node failed with HTTP {}",
            r.status()
        )),
        Err(e) => Step::Retry(e.to_string()),
    }
}

/// Token discovery (cmd/kubeadm/app/discovery/token): cluster-info signed by the bootstrap
/// signer with the token's secret, the CA matching a pin, the endpoint the one cluster-info
/// names. The token is then the TLS-bootstrap credential.
fn token_discovery(
    k8s: &K8sView,
    cfg: &AgentConfig,
    cluster: &nodewire::act::k8s::ClusterInfo,
    real_server: &str,
    endpoint: &str,
    token: &str,
    pins: &[String],
) -> Result<ApiClient, Step> {
    if endpoint.is_empty() {
        return Err(refused(
            "discovery.bootstrapToken.apiServerEndpoint is empty",
        ));
    }
    let Some((id, secret)) = token.split_once('.') else {
        return Err(refused("the token is not id.secret"));
    };
    let Some(ci) = k8s.object("configmaps", "kube-public", "cluster-info") else {
        return Err(Step::Retry("kube-public/cluster-info is missing".into()));
    };
    // The bootstrap signer's JWS proves that whoever wrote cluster-info knows the token.
    let Some(jws) = ci
        .pointer(&format!("/data/jws-kubeconfig-{id}"))
        .and_then(Value::as_str)
    else {
        return Err(Step::Retry(format!(
            "there is no JWS signed token in the cluster-info ConfigMap for token id {id:?}"
        )));
    };
    let ci_kubeconfig = ci
        .pointer("/data/kubeconfig")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if jws != detached_jws(ci_kubeconfig, id, secret) {
        return Err(refused(format!(
            "failed to verify JWS signature of received cluster info object (token id {id:?})"
        )));
    }
    if !pins.contains(&cluster.ca_pin) {
        return Err(refused("the cluster CA does not match any caCertHashes"));
    }
    if real_server != endpoint {
        return Err(refused(format!(
            "apiServerEndpoint {endpoint} is not the API server cluster-info names ({real_server})"
        )));
    }
    ApiClient::bearer(&cfg.tls, token).map_err(refused)
}

/// File discovery (cmd/kubeadm/app/discovery/file/file.go and discovery.go `For`): the
/// kubeconfig on disk, its current context's cluster and credentials (a client certificate
/// and key, embedded or as files: `HasAuthenticationCredentials`), TLS to the server it names
/// against the CA it holds, then cluster-info read **with that credential** — a 403 is a
/// warning and the file is used as it is; other errors are retried.
async fn file_discovery(
    cfg: &AgentConfig,
    path: &str,
    files: Option<&NodeFiles>,
    cluster: &nodewire::act::k8s::ClusterInfo,
    real_server: &str,
) -> Result<ApiClient, Step> {
    let no_file = |p: &str| refused(format!("open {p}: no such file or directory"));
    let files = match files {
        Some(f) if path == nodewire::join::DISCOVERY_KUBECONFIG_PATH => f,
        _ => return Err(no_file(path)),
    };
    let kc: Value = serde_saphyr::from_str(&files.kubeconfig)
        .map_err(|e| refused(format!("couldn't load the discovery file: {e}")))?;
    let named = |list: &str, name: &str, field: &str| -> Option<Value> {
        kc[list]
            .as_array()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| e[field].clone())
    };
    let context = kc["current-context"].as_str().unwrap_or_default();
    let ctx = named("contexts", context, "context").ok_or_else(|| {
        refused("the discovery file must have a CurrentContext that specifies a non-nil Cluster")
    })?;
    let cl = named(
        "clusters",
        ctx["cluster"].as_str().unwrap_or_default(),
        "cluster",
    )
    .ok_or_else(|| refused("the discovery file has no cluster for its current context"))?;
    let user = named("users", ctx["user"].as_str().unwrap_or_default(), "user").unwrap_or_default();
    let b64 = |v: &Value| {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok())
    };
    let cert = b64(&user["client-certificate-data"]);
    let key = match (user["client-key"].as_str(), b64(&user["client-key-data"])) {
        (Some(p), _) if p == nodewire::join::BOOTSTRAP_KEY_PATH => Some(files.key_pem.clone()),
        (Some(p), _) => return Err(no_file(p)),
        (None, k) => k,
    };
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(refused(
            "couldn't find authentication credentials for the TLS bootstrap process",
        ));
    };
    let server = cl["server"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if server != real_server {
        return Err(Step::Retry(format!(
            "Get \"https://{server}/api/v1/namespaces/kube-public/configmaps/cluster-info\": \
             no API server there (cluster-info names {real_server})"
        )));
    }
    // The server's certificate must chain to the CA the file holds.
    let ca_pin = b64(&cl["certificate-authority-data"])
        .and_then(|pem| nodewire::act::k8s::ca_pin(&pem).ok());
    if ca_pin.as_deref() != Some(cluster.ca_pin.as_str()) {
        return Err(refused(
            "tls: failed to verify certificate: x509: certificate signed by unknown authority",
        ));
    }
    let client = ApiClient::with_certificate(&cfg.tls, &cert, &key).map_err(refused)?;
    match client
        .request(
            reqwest::Method::GET,
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        )
        .send()
        .await
    {
        Ok(r) if r.status().is_success() || r.status().as_u16() == 403 => Ok(client),
        Ok(r) => Err(Step::Retry(format!(
            "reading cluster-info with the discovery file's credential: HTTP {}",
            r.status()
        ))),
        Err(e) => Err(Step::Retry(format!(
            "reading cluster-info with the discovery file's credential: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(extra: &str) -> String {
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: \"10.0.0.2:6443\"\n    token: \"abcdef.0123456789abcdef\"\n    caCertHashes: [\"sha256:00\"]\nnodeRegistration:\n  name: \"n1\"\n{extra}"
        )
    }

    #[test]
    fn join_configurations_are_decoded_strictly_per_version() {
        let list = "  kubeletExtraArgs:\n    - name: provider-id\n      value: gce://p/z/n1\n";
        let map = "  kubeletExtraArgs:\n    provider-id: gce://p/z/n1\n";
        let j = decode(&v4(list)).expect("v1beta4 with a list");
        assert_eq!(j.provider_id.as_deref(), Some("gce://p/z/n1"));
        assert!(decode(&v4(map)).is_err(), "v1beta4 with a map");
        let v3 = |extra: &str| v4(extra).replace("v1beta4", "v1beta3");
        assert!(decode(&v3(map)).is_ok(), "v1beta3 with a map");
        assert!(decode(&v3(list)).is_err(), "v1beta3 with a list");
        assert!(
            decode(&v4("  nodeLabels: {a: b}\n")).is_err(),
            "unknown field"
        );
        assert!(decode(&v4("").replace("v1beta4", "v1beta9")).is_err());
        assert!(decode(&v4("  imagePullSerial: true\n")).is_ok());
        assert!(
            decode(&v3("  imagePullSerial: true\n")).is_err(),
            "v1beta4 only"
        );
        assert!(
            decode(&format!("{}timeouts: {{}}\n", v4(""))).is_ok()
                && decode(&format!("{}timeouts: {{}}\n", v3(""))).is_err()
        );
    }
}
