//! Shared pieces of nodewire's benchmarks: a bus that drops messages, seeded simulators, and
//! peak-memory readings.

use std::sync::Arc;
use std::time::Duration;

use nodewire::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
use nodewire::act::deps::{ChainDeps, Deps};
use nodewire::act::k8s::{Kube, KubePolicy};
use nodewire::bus::{BoxFuture, Bus, BusError, OutboundMessage};
use nodewire::config::KubeSettings;
use nodewire::config::{ChainConfig, Config};
use nodewire::names::Cidr;
use serde_json::json;
use sim::compute::{Alias, ComputeConfig, ComputeSim, InstanceSeed, SubnetSpec};
use sim::k8s::{K8sConfig, K8sSim};

pub const P: &str = "example-project";
pub const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];

/// A bus that accepts and drops every message (measures our side only).
#[derive(Debug, Default)]
pub struct NullBus;

impl Bus for NullBus {
    fn publish<'a>(
        &'a self,
        _topic: &'a str,
        _msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(std::future::ready(Ok("0".to_string())))
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    rss_field("/proc/self/status", "VmHWM:")
}

/// Peak RSS of another process, in KiB.
pub fn peak_rss_kib_of(pid: u32) -> Option<u64> {
    rss_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

fn rss_field(path: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets this process's peak RSS to its current RSS (Linux ≥ 4.0), so that a later
/// [`peak_rss_kib`] measures one phase.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|_| panic!("constant CIDR {s}"))
}

/// Both simulators at zero latency with `n` wired nodes (`n` ≤ 65 536).
pub async fn wired_cluster(n: usize) -> (ComputeSim, K8sSim) {
    let compute = ComputeSim::start(ComputeConfig {
        op_latency: Duration::ZERO,
        subnets: vec![SubnetSpec {
            project: P.into(),
            region: "us-central1".into(),
            name: "k8s-nodes".into(),
            network: "k8s-vpc".into(),
            ip_cidr_range: cidr("10.128.0.0/9"),
            secondary: vec![("pods".into(), cidr("10.0.0.0/8"))],
        }],
        ..ComputeConfig::default()
    })
    .await
    .expect("compute sim");
    let k8s = K8sSim::start(K8sConfig::default()).await.expect("k8s sim");
    for i in 0..n {
        let name = format!("node-{i:05}");
        let zone = ZONES[i % ZONES.len()];
        let pod = format!("10.{}.{}.0/24", i / 256, i % 256);
        compute
            .seed_instance(InstanceSeed {
                tags: vec!["k8s-node".into()],
                aliases: vec![Alias {
                    cidr: cidr(&pod),
                    range_name: Some("pods".into()),
                }],
                ..InstanceSeed::node_vm(P, "us-central1", zone, &name)
            })
            .expect("seed vm");
        k8s.seed(
            "nodes",
            "",
            json!({"metadata": {"name": name}, "spec": {"providerID": format!("gce://{P}/{zone}/{name}"), "podCIDR": pod}}),
        )
        .expect("seed node");
    }
    (compute, k8s)
}

/// Deps over the simulators with a [`NullBus`].
pub async fn deps(compute: &ComputeSim, k8s: &K8sSim, service: &str) -> ChainDeps {
    let env = std::collections::BTreeMap::from([
        ("NODEWIRE_PROJECT", P),
        ("NODEWIRE_SUBNET", "us-central1/k8s-nodes"),
        ("NODEWIRE_POD_RANGE", "10.0.0.0/8"),
        ("NODEWIRE_NODE_TAGS", "k8s-node"),
        ("NODEWIRE_SELECTOR_LABELS", "cluster=demo"),
        ("NODEWIRE_PUSH_AUTH", "off"),
    ]);
    let config = Config::from_source(&env, service).expect("config");
    let chain = ChainConfig::from_source(&env).expect("chain");
    let c = Compute::new(
        P,
        &ComputeEndpoint {
            url: Some(compute.endpoint()),
        },
        ComputePolicy::default(),
    )
    .await
    .expect("compute");
    let k = Kube::new(
        &KubeSettings::Direct {
            url: k8s.endpoint(),
            token: Some(k8s.nodewire_token()),
            token_file: None,
            ca_file: None,
            ca_pem: None,
        },
        KubePolicy::default(),
    )
    .await
    .expect("kube");
    ChainDeps::new(Deps::new(config, Arc::new(NullBus)), c, k, chain)
}
