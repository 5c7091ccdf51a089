//! Test support, compiled for this crate's unit tests and behind the `testing` feature for the
//! other crates' tests — never into a Cloud Run binary: fixture loading, a test configuration,
//! dependency builders, a fixed-table locator, and builders for observed states
//! (`wired().without_tag()`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::act::deps::Deps;
use crate::bus::{BoxFuture, InProcessBus};
use crate::config::Config;
use crate::locate::{LocateError, Locator};
use crate::names::{InstanceRef, SubnetRef};
use crate::plan::{Alias, NodeFacts, Observed, PlanConfig, TokenFacts, VmFacts, VmStatus};
use crate::select::Selector;

/// The project every test configuration uses.
pub const PROJECT: &str = "example-project";

/// `shared/fixtures/NAME`: captured real payloads and test certificates.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A fixture's bytes; panics (failing the test) when it is missing.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let p = fixture_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// A fixture as text.
pub fn fixture_text(name: &str) -> String {
    String::from_utf8(fixture_bytes(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A JSON fixture.
pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A valid configuration of `service` in [`PROJECT`], with `extra` variables on top.
pub fn config(service: &str, extra: &[(&'static str, &'static str)]) -> Config {
    let mut env = BTreeMap::from([("NODEWIRE_PROJECT", PROJECT), ("NODEWIRE_PUSH_AUTH", "off")]);
    env.extend(extra.iter().copied());
    Config::from_source(&env, service).unwrap_or_else(|e| panic!("test configuration: {e}"))
}

/// [`Deps`] over an in-process bus that records what is published.
pub fn deps(service: &str, extra: &[(&'static str, &'static str)]) -> (Deps, InProcessBus) {
    let bus = InProcessBus::new();
    (
        Deps::new(config(service, extra), Arc::new(bus.clone())),
        bus,
    )
}

/// A fixed table of VMs by name.
#[derive(Debug, Default)]
pub struct TableLocator {
    table: Mutex<BTreeMap<String, InstanceRef>>,
}

impl TableLocator {
    pub fn new(entries: impl IntoIterator<Item = InstanceRef>) -> Self {
        Self {
            table: Mutex::new(
                entries
                    .into_iter()
                    .map(|r| (r.name().to_string(), r))
                    .collect(),
            ),
        }
    }
}

impl Locator for TableLocator {
    fn locate<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceRef>, LocateError>> {
        let found = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

// ---- observed states ----

/// The planner configuration of the test cluster: project [`PROJECT`], label `cluster=demo`,
/// subnet `us-central1/k8s-nodes`, pod range `10.4.0.0/16` named `pods`, tag `k8s-node`.
pub fn plan_config() -> PlanConfig {
    PlanConfig {
        selector: Selector {
            project: PROJECT.into(),
            name_prefix: None,
            labels: BTreeMap::from([("cluster".to_string(), "demo".to_string())]),
        },
        subnet: ("us-central1".into(), "k8s-nodes".into()),
        pod_ranges: crate::names::PodRanges::single(
            "pods",
            "10.4.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
        ),
        node_tags: vec!["k8s-node".into()],
        node_service_accounts: std::collections::BTreeSet::new(),
        join_mode: crate::config::JoinMode::Metadata,
        range_order: crate::config::RangeOrder::ClusterFirst,
    }
}

/// `example-project/us-central1-a/vm-1`, the VM of the observed-state builders.
pub fn vm_ref() -> InstanceRef {
    InstanceRef::new(PROJECT, "us-central1-a", "vm-1").unwrap_or_else(|e| panic!("{e}"))
}

/// A pod-range alias.
pub fn pods(cidr: &str) -> Alias {
    Alias::new(cidr, Some("pods".into()))
}

/// A token minted for the VM.
pub fn token(id: &str, expired: bool) -> TokenFacts {
    TokenFacts {
        id: id.into(),
        expired,
    }
}

/// The VM of ours as created: selected, IP forwarding, on the node subnet, tag `base`.
pub fn fresh_vm() -> VmFacts {
    VmFacts {
        instance: vm_ref(),
        id: None,
        created_at: None,
        status: VmStatus::Running,
        labels: BTreeMap::from([("cluster".to_string(), "demo".to_string())]),
        can_ip_forward: true,
        subnet: SubnetRef::from_link(
            "https://www.googleapis.com/compute/v1/projects/example-project/regions/us-central1/subnetworks/k8s-nodes",
        ),
        aliases: vec![],
        tags: vec!["base".into()],
        join_metadata: false,
        joined: false,
        kubelet_restarts: None,
        bootstrap_attempts: None,
        service_accounts: vec!["nodes@example-project.iam.gserviceaccount.com".into()],
    }
}

/// Its Node as the kubelet registers it once the IPAM controller ran: providerID set,
/// podCIDR `10.4.1.0/24`, still tainted.
pub fn registered_node() -> NodeFacts {
    NodeFacts {
        name: "vm-1".into(),
        provider_id: Some(vm_ref().provider_id()),
        pod_cidr: Some("10.4.1.0/24".into()),
        unwired_taint: true,
        registered_at: None,
        uid: None,
        instance_id: None,
        deleting: false,
        network_unavailable: false,
    }
}

/// A VM that exists and has not been bootstrapped: no Node, no token.
pub fn fresh() -> Observed {
    Observed {
        instance: vm_ref(),
        vm: Some(fresh_vm()),
        node: None,
        tokens: vec![],
    }
}

/// A wired node.
pub fn wired() -> Observed {
    fresh()
        .with_node(registered_node())
        .with_aliases(vec![pods("10.4.1.0/24")])
        .with_tag("k8s-node")
        .without_taint()
}

/// Changes to an observed state, one aspect at a time.
pub trait ObservedExt: Sized {
    fn vm_mut(&mut self) -> &mut VmFacts;
    fn node_mut(&mut self) -> &mut NodeFacts;
    fn edit(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
    fn without_vm(self) -> Self;
    fn with_node(self, n: NodeFacts) -> Self;
    fn without_node(self) -> Self;
    fn with_token(self, id: &str, expired: bool) -> Self;
    fn with_aliases(self, a: Vec<Alias>) -> Self {
        self.edit(|o| o.vm_mut().aliases = a)
    }
    fn without_alias(self) -> Self {
        self.with_aliases(vec![])
    }
    fn with_tag(self, t: &str) -> Self {
        self.edit(|o| o.vm_mut().tags.push(t.into()))
    }
    fn with_tags(self, t: &[&str]) -> Self {
        self.edit(|o| o.vm_mut().tags = t.iter().map(|s| (*s).to_string()).collect())
    }
    fn without_tag(self) -> Self {
        self.with_tags(&[])
    }
    fn with_join_metadata(self) -> Self {
        self.edit(|o| o.vm_mut().join_metadata = true)
    }
    fn with_status(self, status: &str) -> Self {
        self.edit(|o| o.vm_mut().status = VmStatus::parse(status))
    }
    fn without_ip_forwarding(self) -> Self {
        self.edit(|o| o.vm_mut().can_ip_forward = false)
    }
    fn on_subnet(self, link: &str) -> Self {
        self.edit(|o| o.vm_mut().subnet = SubnetRef::from_link(link))
    }
    fn without_labels(self) -> Self {
        self.edit(|o| o.vm_mut().labels.clear())
    }
    fn with_taint(self) -> Self {
        self.edit(|o| o.node_mut().unwired_taint = true)
    }
    fn without_taint(self) -> Self {
        self.edit(|o| o.node_mut().unwired_taint = false)
    }
    fn with_provider_id(self, p: Option<&str>) -> Self {
        self.edit(|o| o.node_mut().provider_id = p.map(str::to_string))
    }
    fn with_pod_cidr(self, c: Option<&str>) -> Self {
        self.edit(|o| o.node_mut().pod_cidr = c.map(str::to_string))
    }
}

impl ObservedExt for Observed {
    fn vm_mut(&mut self) -> &mut VmFacts {
        self.vm
            .as_mut()
            .unwrap_or_else(|| panic!("the observed state has no VM"))
    }
    fn node_mut(&mut self) -> &mut NodeFacts {
        self.node
            .as_mut()
            .unwrap_or_else(|| panic!("the observed state has no Node"))
    }
    fn without_vm(self) -> Self {
        self.edit(|o| o.vm = None)
    }
    fn with_node(self, n: NodeFacts) -> Self {
        self.edit(|o| o.node = Some(n))
    }
    fn without_node(self) -> Self {
        self.edit(|o| o.node = None)
    }
    fn with_token(self, id: &str, expired: bool) -> Self {
        self.edit(|o| o.tokens.push(token(id, expired)))
    }
}

pub mod oidc;
