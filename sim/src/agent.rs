//! The simulated VM agent: plays each node VM's startup script. When `kubeadm-join` appears in a
//! VM's metadata it waits a configurable delay, parses the JoinConfiguration, checks the token
//! against its Secret (exists, matching secret, not expired, authentication usage, the kubeadm
//! node group) and the CA pin against `kube-public/cluster-info`, and then registers the Node as
//! the kubelet would (name, providerID and taints from the configuration) through the API
//! server's HTTP API, so that the IPAM controller and the audit pipeline see it. A wrong token
//! or pin means the Node never registers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::compute::ComputeView;
use crate::k8s::K8sView;

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// From the metadata appearing to `kubeadm join`.
    pub join_delay: Duration,
    /// How often VMs' metadata is looked at.
    pub poll: Duration,
    /// The Kubernetes simulator's URL.
    pub k8s_endpoint: String,
}

/// What the agent did for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOutcome {
    Joined,
    AlreadyRegistered,
    Refused(String),
}

/// One line of the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEvent {
    pub vm: String,
    pub outcome: AgentOutcome,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration {
    api_version: String,
    kind: String,
    discovery: Discovery,
    node_registration: NodeRegistration,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: BootstrapTokenDiscovery,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDiscovery {
    api_server_endpoint: String,
    token: String,
    #[serde(default)]
    ca_cert_hashes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    name: String,
    #[serde(default)]
    kubelet_extra_args: Option<Value>,
    #[serde(default)]
    taints: Vec<TaintSpec>,
}

#[derive(Debug, Deserialize)]
struct TaintSpec {
    key: String,
    #[serde(default)]
    value: Option<String>,
    effect: String,
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

impl VmAgent {
    /// Starts watching the Compute simulator's VMs.
    pub fn start(compute: ComputeView, k8s: K8sView, config: AgentConfig) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            // (vm, join config) → when it was first seen; handled ones are remembered.
            let mut seen: HashMap<(String, String), Instant> = HashMap::new();
            let mut done: std::collections::HashSet<(String, String)> = Default::default();
            loop {
                let pending: Vec<(String, String)> = compute.with_world(|w| {
                    w.instances
                        .values()
                        // Only a RUNNING VM runs its startup script.
                        .filter(|i| i.status == "RUNNING")
                        .filter_map(|i| {
                            let yaml = i
                                .metadata
                                .iter()
                                .find(|(k, _)| k == "kubeadm-join")?
                                .1
                                .clone();
                            Some((format!("{}/{}/{}", i.project, i.zone, i.name), yaml))
                        })
                        .collect()
                });
                for key in pending {
                    if done.contains(&key) {
                        continue;
                    }
                    let first = *seen.entry(key.clone()).or_insert_with(Instant::now);
                    if first.elapsed() < config.join_delay {
                        continue;
                    }
                    let Some(outcome) = join(&http, &k8s, &config, &key.1).await else {
                        continue; // the API server asked to retry (429/5xx): the kubelet would too
                    };
                    match &outcome {
                        AgentOutcome::Refused(why) => {
                            tracing::warn!(vm = %key.0, %why, "simulated kubeadm join refused")
                        }
                        o => tracing::info!(vm = %key.0, outcome = ?o, "simulated kubeadm join"),
                    }
                    log2.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(AgentEvent {
                            vm: key.0.clone(),
                            outcome,
                        });
                    done.insert(key);
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

fn secret_field(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

fn provider_id(args: Option<&Value>) -> Option<String> {
    match args? {
        // v1beta4: a list of {name, value}
        Value::Array(items) => items
            .iter()
            .find(|i| i["name"] == "provider-id")
            .and_then(|i| i["value"].as_str())
            .map(str::to_string),
        // v1beta3: a map
        Value::Object(m) => m
            .get("provider-id")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

async fn join(
    http: &reqwest::Client,
    k8s: &K8sView,
    cfg: &AgentConfig,
    yaml: &str,
) -> Option<AgentOutcome> {
    check_and_register(http, k8s, cfg, yaml).await.ok()
}

async fn check_and_register(
    http: &reqwest::Client,
    k8s: &K8sView,
    cfg: &AgentConfig,
    yaml: &str,
) -> Result<AgentOutcome, ()> {
    let jc: JoinConfiguration = match serde_saphyr::from_str(yaml) {
        Ok(j) => j,
        Err(e) => {
            return Ok(AgentOutcome::Refused(format!(
                "the join configuration does not parse: {e}"
            )));
        }
    };
    if jc.kind != "JoinConfiguration" || !jc.api_version.starts_with("kubeadm.k8s.io/v1beta") {
        return Ok(AgentOutcome::Refused(format!(
            "not a kubeadm JoinConfiguration ({} {})",
            jc.api_version, jc.kind
        )));
    }
    if jc.discovery.bootstrap_token.api_server_endpoint.is_empty() {
        return Ok(AgentOutcome::Refused("no apiServerEndpoint".into()));
    }
    // The token: bootstrap-token-<id> with the same secret, not expired, usable for authentication.
    let Some((id, secret)) = jc.discovery.bootstrap_token.token.split_once('.') else {
        return Ok(AgentOutcome::Refused("the token is not id.secret".into()));
    };
    let Some(stored) = k8s.object("secrets", "kube-system", &format!("bootstrap-token-{id}"))
    else {
        return Ok(AgentOutcome::Refused(format!(
            "token {id}: no such bootstrap token"
        )));
    };
    if secret_field(&stored, "token-secret").as_deref() != Some(secret) {
        return Ok(AgentOutcome::Refused(format!("token {id}: wrong secret")));
    }
    let expired = secret_field(&stored, "expiration")
        .and_then(|e| {
            time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_some_and(|e| e <= time::OffsetDateTime::now_utc());
    if expired {
        return Ok(AgentOutcome::Refused(format!("token {id}: expired")));
    }
    if secret_field(&stored, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Ok(AgentOutcome::Refused(format!(
            "token {id}: not usable for authentication"
        )));
    }
    let groups = secret_field(&stored, "auth-extra-groups").unwrap_or_default();
    if !groups
        .split(',')
        .any(|g| g.trim() == "system:bootstrappers:kubeadm:default-node-token")
    {
        return Ok(AgentOutcome::Refused(format!(
            "token {id}: not in the kubeadm node group"
        )));
    }
    // The CA pin: kubeadm refuses a cluster-info whose CA does not match.
    let Some(kubeconfig) = k8s
        .object("configmaps", "kube-public", "cluster-info")
        .and_then(|cm| {
            cm.pointer("/data/kubeconfig")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    else {
        return Ok(AgentOutcome::Refused(
            "kube-public/cluster-info is missing".into(),
        ));
    };
    let pin = match nodewire::act::k8s::cluster_info_from_kubeconfig(&kubeconfig) {
        Ok(ci) => ci.ca_pin,
        Err(e) => return Ok(AgentOutcome::Refused(format!("cluster-info: {e}"))),
    };
    if !jc.discovery.bootstrap_token.ca_cert_hashes.contains(&pin) {
        return Ok(AgentOutcome::Refused(
            "the cluster CA does not match any caCertHashes".into(),
        ));
    }
    let name = jc.node_registration.name;
    if k8s.object("nodes", "", &name).is_some() {
        return Ok(AgentOutcome::AlreadyRegistered);
    }
    let taints: Vec<Value> = jc
        .node_registration
        .taints
        .iter()
        .map(|t| {
            let mut v = json!({"key": t.key, "effect": t.effect});
            if let Some(val) = &t.value {
                v["value"] = json!(val);
            }
            v
        })
        .collect();
    let mut spec = json!({"taints": taints});
    if let Some(pid) = provider_id(jc.node_registration.kubelet_extra_args.as_ref()) {
        spec["providerID"] = json!(pid);
    }
    let labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), name.clone())]);
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec});
    match http
        .post(format!("{}/api/v1/nodes", cfg.k8s_endpoint))
        .json(&node)
        .send()
        .await
    {
        Ok(r) if r.status().as_u16() == 201 => Ok(AgentOutcome::Joined),
        Ok(r) if r.status().as_u16() == 409 => Ok(AgentOutcome::AlreadyRegistered),
        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => Err(()),
        Ok(r) => Ok(AgentOutcome::Refused(format!(
            "registering the Node failed with HTTP {}",
            r.status()
        ))),
        Err(_) => Err(()),
    }
}
