//! The simulated VM agent: plays each node VM's startup script. When `kubeadm-join` appears in a
//! VM's metadata it waits a configurable delay, parses the JoinConfiguration, checks the token
//! by the kubelet's TLS bootstrap (the API server authenticates it against its Secret: exists,
//! matching secret, not expired, authentication usage; kubeadm approves only the node group's
//! certificates) and the CA pin against `kube-public/cluster-info`, and then registers the Node
//! as the kubelet would (name, providerID and taints from the configuration) through the API
//! server's HTTP API with its node credential (`system:node:NAME`, under NodeRestriction), so that the IPAM controller and the audit pipeline see it. A wrong token
//! or pin means the Node never registers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let token = &jc.discovery.bootstrap_token.token;
    if token.split_once('.').is_none() {
        return Ok(AgentOutcome::Refused("the token is not id.secret".into()));
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
    // TLS bootstrap: the bootstrap token authenticates, the CSR is approved, the kubelet
    // holds a credential for system:node:NAME and registers with that.
    let credential = match k8s.tls_bootstrap(token, &name) {
        Ok(c) => c,
        Err(why) => return Ok(AgentOutcome::Refused(why)),
    };
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
        .bearer_auth(&credential)
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
