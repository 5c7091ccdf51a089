//! The whole system on loopback, for the end-to-end tests: the real Pub/Sub emulator, both
//! simulators (with their Logging sinks publishing to the emulator), the simulated VM agent,
//! and every function as its own HTTP server, wired by topics and push subscriptions (ordering
//! on, retry policy, dead-letter policy) exactly as the Terraform wires them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
use shared::act::k8s::{Kube, KubeConnection, KubePolicy, TOKEN_INSTANCE_LABEL, UNWIRED_TAINT};
use shared::bus::{BoxFuture, Bus, BusError, OutboundMessage, PubSubBus};
use shared::config::{ChainConfig, Config};
use shared::deps::Deps;
use shared::event::Step;
use shared::handlers::{drift_sweep, instance_events, node_events, steps};
use shared::join::JOIN_METADATA_KEY;
use sim::agent::{AgentConfig, VmAgent};
use sim::audit::AuditSink;
use sim::compute::{ComputeConfig, ComputeSim, SubnetSpec};
use sim::faults::FaultSpec;
use sim::k8s::{IpamConfig, K8sConfig, K8sSim};

use crate::simfix::{P, REGION, cidr};
use crate::{Emulator, FnServer, emulator};

/// A project with no business with this cluster (for "another project: untouched").
pub const OTHER_PROJECT: &str = "other-project";
/// The pod range of the test cluster.
pub const POD_RANGE: &str = "10.4.0.0/16";
/// The test cluster's node tag.
pub const NODE_TAG: &str = "k8s-node";

/// Options of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOptions {
    /// Probability of an injected fault on every method of both simulators.
    pub faults: f64,
    /// Publish every step message twice.
    pub duplicate_steps: bool,
}

/// Publishes every message twice (at-least-once delivery, made visible).
struct Doubling(Arc<dyn Bus>);

impl Bus for Doubling {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async move {
            let id = self.0.publish(topic, msg.clone()).await?;
            self.0.publish(topic, msg).await?;
            Ok(id)
        })
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        self.0.flush()
    }
}

/// Everything running.
pub struct World {
    pub emu: Emulator,
    pub compute: ComputeSim,
    pub k8s: K8sSim,
    pub agent: VmAgent,
    servers: Vec<(String, FnServer)>,
    subscriptions: Vec<String>,
    sweep_server: FnServer,
    http: reqwest::Client,
}

fn subnet(project: &str) -> SubnetSpec {
    SubnetSpec {
        project: project.into(),
        region: REGION.into(),
        name: "k8s-nodes".into(),
        network: "k8s-vpc".into(),
        ip_cidr_range: cidr("10.128.0.0/20"),
        secondary: vec![
            ("pods".into(), cidr(POD_RANGE)),
            ("services".into(), cidr("172.16.16.0/21")),
        ],
    }
}

impl World {
    /// Starts everything. Panics (fails the test) when any part cannot start.
    pub async fn start(opts: WorldOptions) -> Self {
        let emu = emulator().await;
        let mut topics: Vec<String> = vec!["gce-audit".into(), "k8s-audit".into()];
        topics.extend(Step::ALL.iter().map(|s| format!("nodewire-{s}")));
        topics.extend([
            "nodewire-node-wired".into(),
            "nodewire-dead-letter".into(),
            "nodewire-undeliverable".into(),
        ]);
        for t in &topics {
            emu.create_topic(t).await.expect("topic");
        }
        let sink_cfg = shared::config::PubSubConfig {
            project: P.into(),
            emulator_endpoint: Some(emu.endpoint()),
            topic_prefix: String::new(),
            dead_letter_topic: String::new(),
            publish_timeout: Duration::from_secs(10),
        };
        let sink_bus: Arc<dyn Bus> =
            Arc::new(PubSubBus::connect(&sink_cfg).await.expect("sink bus"));
        let compute = ComputeSim::start(ComputeConfig {
            seed: 7,
            op_latency: Duration::from_millis(60),
            wait_max: Duration::from_secs(2),
            subnets: vec![subnet(P), subnet(OTHER_PROJECT)],
            audit: Some(AuditSink {
                bus: sink_bus.clone(),
                topic: format!("projects/{P}/topics/gce-audit"),
            }),
            ..ComputeConfig::default()
        })
        .await
        .expect("compute sim");
        let k8s = K8sSim::start(K8sConfig {
            seed: 11,
            ipam: Some(IpamConfig {
                cluster_cidr: cidr(POD_RANGE),
                node_mask: 24,
                delay: Duration::from_millis(200),
            }),
            audit: Some(AuditSink {
                bus: sink_bus,
                topic: format!("projects/{P}/topics/k8s-audit"),
            }),
            audit_project: P.into(),
            audit_zone: "us-central1-a".into(),
        })
        .await
        .expect("k8s sim");
        let ca = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/test-ca.crt"),
        )
        .expect("ca");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.128.0.2:6443\n    certificate-authority-data: {}\n",
            base64_encode(&ca)
        );
        k8s.seed(
            "configmaps",
            "kube-public",
            json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig}}),
        )
        .expect("cluster-info");
        let agent = VmAgent::start(
            compute.view(),
            k8s.view(),
            AgentConfig {
                join_delay: Duration::from_millis(300),
                poll: Duration::from_millis(100),
                k8s_endpoint: k8s.endpoint(),
            },
        );

        let host = emu.host();
        let compute_ep = compute.endpoint();
        let k8s_ep = k8s.endpoint();
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("NODEWIRE_PROJECT", P),
            ("PUBSUB_EMULATOR_HOST", host.as_str()),
            ("NODEWIRE_COMPUTE_ENDPOINT", compute_ep.as_str()),
            ("NODEWIRE_KUBE_API_URL", k8s_ep.as_str()),
            ("NODEWIRE_SUBNET", "us-central1/k8s-nodes"),
            ("NODEWIRE_POD_RANGE", POD_RANGE),
            ("NODEWIRE_NODE_TAGS", NODE_TAG),
            ("NODEWIRE_SELECTOR_LABELS", "cluster=demo"),
            ("NODEWIRE_REQUEST_TIMEOUT_SECS", "25"),
        ]);
        let chain = ChainConfig::from_source(&env).expect("chain config");
        let mut servers = Vec::new();
        let deps_for = |service: &str| {
            let config = Config::from_source(&env, service).expect("config");
            let chain = chain.clone();
            let duplicate = opts.duplicate_steps;
            async move {
                let bus: Arc<dyn Bus> =
                    Arc::new(PubSubBus::connect(&config.pubsub).await.expect("bus"));
                let bus: Arc<dyn Bus> = if duplicate {
                    Arc::new(Doubling(bus))
                } else {
                    bus
                };
                let compute = Compute::new(
                    P,
                    &ComputeEndpoint {
                        url: config.compute_endpoint.clone(),
                    },
                    ComputePolicy::default(),
                )
                .await
                .expect("compute client");
                let kube = Kube::new(
                    &KubeConnection::Direct {
                        url: k8s_url(&config),
                        token: None,
                        ca_pem: None,
                    },
                    KubePolicy::default(),
                )
                .await
                .expect("kube client");
                Deps::new(config, bus)
                    .with_clients(Some(compute), Some(kube))
                    .with_chain(chain)
            }
        };
        servers.push((
            "instance-events".to_string(),
            FnServer::start_with_deps(deps_for("instance-events").await, instance_events::handle)
                .await,
        ));
        servers.push((
            "node-events".to_string(),
            FnServer::start_with_deps(deps_for("node-events").await, node_events::handle).await,
        ));
        for step in Step::ALL {
            let d = deps_for(step.as_str()).await;
            let server = match step {
                Step::Bootstrap => FnServer::start_with_deps(d, steps::bootstrap).await,
                Step::AssignAlias => FnServer::start_with_deps(d, steps::assign_alias).await,
                Step::TagInstance => FnServer::start_with_deps(d, steps::tag_instance).await,
                Step::ProviderId => FnServer::start_with_deps(d, steps::provider_id).await,
                Step::Finalize => FnServer::start_with_deps(d, steps::finalize).await,
                Step::ReleaseAlias => FnServer::start_with_deps(d, steps::release_alias).await,
                Step::Decommission => FnServer::start_with_deps(d, steps::decommission).await,
            };
            servers.push((step.as_str().to_string(), server));
        }
        // The sweep is called directly, as Cloud Scheduler's HTTP target calls it.
        let sweep_server =
            FnServer::start_with_deps(deps_for("drift-sweep").await, drift_sweep::handle).await;
        // Observers first, then the push subscriptions.
        emu.create_subscription(
            "dead-letter-observer",
            "nodewire-dead-letter",
            json!({"ackDeadlineSeconds": 30}),
        )
        .await
        .expect("sub");
        emu.create_subscription(
            "node-wired-observer",
            "nodewire-node-wired",
            json!({"ackDeadlineSeconds": 30}),
        )
        .await
        .expect("sub");
        emu.create_subscription(
            "undeliverable-observer",
            "nodewire-undeliverable",
            json!({"ackDeadlineSeconds": 30}),
        )
        .await
        .expect("sub");
        let mut subscriptions = Vec::new();
        for (name, server) in &servers {
            let topic = match name.as_str() {
                "instance-events" => "gce-audit".to_string(),
                "node-events" => "k8s-audit".to_string(),
                step => format!("nodewire-{step}"),
            };
            let sub = format!("{name}-push");
            emu.create_subscription(
                &sub,
                &topic,
                json!({
                    "pushConfig": {"pushEndpoint": server.endpoint()},
                    "ackDeadlineSeconds": 30,
                    "enableMessageOrdering": true,
                    "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "3s"},
                    "deadLetterPolicy": {"deadLetterTopic": format!("projects/{P}/topics/nodewire-undeliverable"), "maxDeliveryAttempts": 30},
                }),
            )
            .await
            .expect("push subscription");
            subscriptions.push(sub);
        }
        if opts.faults > 0.0 {
            compute
                .chaos()
                .set_default_faults(FaultSpec::flaky(opts.faults));
            k8s.chaos()
                .set_default_faults(FaultSpec::flaky(opts.faults));
            // The test's own VM creations and deletions stand for a user's; only nodewire's
            // calls are made to fail.
            compute
                .chaos()
                .set_faults("instances.insert", FaultSpec::default());
            compute
                .chaos()
                .set_faults("instances.delete", FaultSpec::default());
        }
        Self {
            emu,
            compute,
            k8s,
            agent,
            servers,
            subscriptions,
            sweep_server,
            http: reqwest::Client::new(),
        }
    }

    /// Runs the drift sweep as Cloud Scheduler would (HTTP POST) and returns its report.
    pub async fn sweep(&self, dry_run: bool) -> shared::sweep::Report {
        let resp = self
            .http
            .post(self.sweep_server.endpoint())
            .header("x-cloudscheduler", "true")
            .header("x-cloudscheduler-jobname", "nodewire-sweep")
            .json(&json!({"dryRun": dry_run}))
            .send()
            .await
            .expect("sweep request");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "the sweep answers 200 with its report"
        );
        resp.json().await.expect("sweep report")
    }

    /// Creates a VM through `instances.insert`, as a user or an instance group would.
    pub async fn insert_vm(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        labels: &[(&str, &str)],
        can_ip_forward: bool,
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let body = json!({
            "name": name,
            "machineType": format!("zones/{zone}/machineTypes/n2-standard-4"),
            "canIpForward": can_ip_forward,
            "labels": labels,
            "networkInterfaces": [{"subnetwork": format!("projects/{project}/regions/{REGION}/subnetworks/k8s-nodes")}],
            "metadata": {"items": [{"key": "startup-script", "value": "#!/bin/sh\n/opt/nodewire/join.sh"}]},
        });
        self.compute_call(
            reqwest::Method::POST,
            &format!("projects/{project}/zones/{zone}/instances"),
            Some(body),
        )
        .await;
    }

    /// Deletes a VM through `instances.delete`.
    pub async fn delete_vm(&self, zone: &str, name: &str) {
        self.compute_call(
            reqwest::Method::DELETE,
            &format!("projects/{P}/zones/{zone}/instances/{name}"),
            None,
        )
        .await;
    }

    /// Sends a Compute request, retrying injected faults as gcloud would.
    async fn compute_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) {
        for _ in 0..50 {
            let mut req = self.http.request(
                method.clone(),
                format!("{}/compute/v1/{path}", self.compute.endpoint()),
            );
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.expect("compute request");
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return;
            }
            assert!(
                status == 429 || status == 403 || status >= 500,
                "{method} {path}: HTTP {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{method} {path}: still failing");
    }

    /// Deletes a Node as `kubectl delete node` would.
    pub async fn delete_node(&self, name: &str) {
        for _ in 0..50 {
            let resp = self
                .http
                .delete(format!("{}/api/v1/nodes/{name}", self.k8s.endpoint()))
                .send()
                .await
                .expect("delete");
            if resp.status().is_success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("deleting node {name} kept failing");
    }

    /// `Ok` when the VM is a wired node (read straight from the simulators' state); otherwise
    /// what is still missing.
    pub fn wired(&self, zone: &str, name: &str) -> Result<String, String> {
        let vm = self.compute.instance_json(P, zone, name).ok_or("no VM")?;
        let node = self.k8s.object("nodes", "", name).ok_or("no Node")?;
        let pod = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .ok_or("no podCIDR")?
            .to_string();
        if !cidr(POD_RANGE).contains(&cidr(&pod)) {
            return Err(format!("podCIDR {pod} outside the pod range"));
        }
        let aliases = vm
            .pointer("/networkInterfaces/0/aliasIpRanges")
            .cloned()
            .unwrap_or(json!([]));
        if aliases != json!([{"ipCidrRange": pod, "subnetworkRangeName": "pods"}]) {
            return Err(format!("aliases {aliases} != [{pod}]"));
        }
        if !vm["tags"]["items"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == NODE_TAG))
        {
            return Err("tag missing".into());
        }
        if node.pointer("/spec/providerID").and_then(Value::as_str)
            != Some(format!("gce://{P}/{zone}/{name}").as_str())
        {
            return Err(format!("providerID {:?}", node.pointer("/spec/providerID")));
        }
        if node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|x| x["key"] == UNWIRED_TAINT))
        {
            return Err("taint left".into());
        }
        if !self.tokens_of(name).is_empty() {
            return Err("token left".into());
        }
        if vm["metadata"]["items"]
            .as_array()
            .is_some_and(|m| m.iter().any(|i| i["key"] == JOIN_METADATA_KEY))
        {
            return Err("join metadata left".into());
        }
        Ok(pod)
    }

    /// Bootstrap-token Secrets minted for a VM.
    pub fn tokens_of(&self, name: &str) -> Vec<Value> {
        self.k8s
            .objects("secrets")
            .into_iter()
            .filter(|s| {
                s.pointer(&format!(
                    "/metadata/labels/{}",
                    TOKEN_INSTANCE_LABEL.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                    == Some(name)
            })
            .collect()
    }

    /// Polls `check` until it returns true or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        check(self)
    }

    /// Stops pushing and serving.
    pub async fn stop(self) {
        for s in &self.subscriptions {
            let _ = self.emu.delete_subscription(s).await;
        }
        for (_, s) in self.servers {
            s.stop().await;
        }
        self.sweep_server.stop().await;
    }
}

fn k8s_url(c: &Config) -> String {
    match &c.kube {
        Some(shared::config::KubeSettings::Direct { url, .. }) => url.clone(),
        _ => String::new(),
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
