//! PLAN: pure and synchronous. From what was observed of one VM, its Node and its bootstrap
//! tokens, and the configuration, decide what a step must do and which step comes next. No
//! clients, no clock, no environment: `observe` reduces the world to [`Observed`], `act`
//! executes the [`Action`]s.
//!
//! There is one definition of "wired" ([`gaps`] is empty), shared by every step and by the
//! drift sweep, so the chain and the sweep can never disagree about it.

use crate::config::{ChainConfig, JoinMode, RangeOrder};
use crate::event::Step;
use crate::names::{Cidr, PodRanges, ProviderIdConflict, SubnetRef};
use crate::select::Selector;

pub mod eligibility;
mod facts;
#[cfg(test)]
mod tests;

pub use eligibility::{Ineligible, may_join, vm_may_join};
pub use facts::{
    Alias, Attempts, Budget, NodeFacts, NotDue, Observed, TokenFacts, VmFacts, VmStatus,
};

/// What the planner needs to know of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// Which VMs are nodewire's.
    pub selector: Selector,
    /// nic0 must be on this subnetwork: `(region, name)`.
    pub subnet: (String, String),
    /// The secondary ranges Pods come from, in the order they are used.
    pub pod_ranges: PodRanges,
    /// Network tags every node VM carries.
    pub node_tags: Vec<String>,
    /// When not empty, only a VM running as one of these service accounts is given a join
    /// token (`NODEWIRE_NODE_SERVICE_ACCOUNTS`).
    pub node_service_accounts: std::collections::BTreeSet<String>,
    /// Pull mode: `bootstrap` mints no token and writes no metadata (the VM asks `join`).
    pub join_mode: JoinMode,
    /// Alias-first: the alias is allocated while the VM boots and copied into the podCIDR.
    pub range_order: RangeOrder,
}

impl PlanConfig {
    /// The planner's view of the chain's configuration and the selector.
    pub fn new(chain: &ChainConfig, selector: &Selector) -> Self {
        Self {
            selector: selector.clone(),
            subnet: chain.subnet.clone(),
            pod_ranges: chain.pod_ranges.clone(),
            node_tags: chain.node_tags.clone(),
            node_service_accounts: chain.node_service_accounts.clone(),
            join_mode: chain.join_mode,
            range_order: chain.range_order,
        }
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mint a bootstrap token and write the `kubeadm-join` metadata.
    Bootstrap,
    /// Delete these bootstrap tokens.
    RevokeTokens(Vec<String>),
    /// Set nic0's alias ranges to exactly this one.
    SetAlias { cidr: Cidr, range_name: String },
    /// Alias-first: have Compute Engine allocate a `/prefix` block as nic0's alias from the
    /// first of `ranges` that has one free, unless nic0 has one there already.
    AllocateAlias { prefix: u8, ranges: Vec<String> },
    /// Alias-first: set the Node's empty podCIDR(s) to this range (its VM's alias).
    SetPodCidr(Cidr),
    /// Remove nic0's alias ranges from the pod range, keeping any others.
    ReleaseAlias { keep: Vec<Alias> },
    /// Add these network tags.
    AddTags(Vec<String>),
    /// Set `spec.providerID`.
    SetProviderId(String),
    /// Set the Node's `NetworkUnavailable` condition to `False` (it was `True`).
    SetNetworkAvailable,
    /// Remove the `nodewire.io/unwired` taint.
    RemoveTaint,
    /// Remove the `kubeadm-join` (and `nodewire-restart-kubelet`) metadata keys, marking the
    /// VM as joined.
    ClearJoinMetadata,
    /// Ask the node-side unit to restart the kubelet (attempt `n`), which registers its Node
    /// again: the heal of "VM alive, Node gone" on a VM that joined before.
    RestartKubelet(u32),
    /// Delete the Node.
    DeleteNode,
    /// Delete the Node of a previous instance of this VM's name (issue 21), only if its uid is
    /// still this one.
    DeleteStaleNode { uid: Option<String> },
    /// Record the VM's instance id on its Node (annotation `nodewire.io/instance-id`).
    RecordInstance(String),
    /// Publish `node-wired` and record the `NodeWired` event.
    AnnounceWired,
}

impl Action {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Bootstrap => "bootstrap",
            Action::RevokeTokens(_) => "revoke-tokens",
            Action::SetAlias { .. } => "set-alias",
            Action::AllocateAlias { .. } => "allocate-alias",
            Action::SetPodCidr(_) => "set-pod-cidr",
            Action::ReleaseAlias { .. } => "release-alias",
            Action::AddTags(_) => "add-tags",
            Action::SetProviderId(_) => "set-provider-id",
            Action::SetNetworkAvailable => "set-network-available",
            Action::RemoveTaint => "remove-taint",
            Action::ClearJoinMetadata => "clear-join-metadata",
            Action::RestartKubelet(_) => "restart-kubelet",
            Action::DeleteNode => "delete-node",
            Action::DeleteStaleNode { .. } => "delete-stale-node",
            Action::RecordInstance(_) => "record-instance",
            Action::AnnounceWired => "announce-wired",
        }
    }
}

/// Why a VM can never be wired as it is (permanent; the message says what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "VM {0} does not have IP forwarding (canIpForward) enabled; recreate it with --can-ip-forward"
    )]
    NoIpForwarding(String),
    #[error("VM {vm}'s nic0 is on subnetwork {found:?}, not the configured {wanted}")]
    WrongSubnet {
        vm: String,
        found: String,
        wanted: String,
    },
    #[error("Node {node} has podCIDR {cidr}, outside the pod range {range}")]
    PodCidrOutsideRange {
        node: String,
        cidr: String,
        range: String,
    },
    #[error("Node {node} has podCIDR {cidr:?}, which is not a valid IPv4 CIDR")]
    InvalidPodCidr { node: String, cidr: String },
    #[error(
        "no /{prefix} is free in the pod range(s) {ranges} for VM {vm}: its Node keeps the taint {taint}; free a range (delete a VM) or add a range (NODEWIRE_ADDITIONAL_POD_RANGES)"
    )]
    PodRangeExhausted {
        vm: String,
        /// The names tried, comma-separated.
        ranges: String,
        prefix: u8,
        taint: &'static str,
    },
    #[error(transparent)]
    ProviderIdConflict(#[from] ProviderIdConflict),
}

/// The planner's answer for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Do these actions (possibly none), then publish `next` (if any).
    Act {
        actions: Vec<Action>,
        next: Option<Step>,
    },
    /// Not yet possible; try again later (the delivery is retried).
    Wait(String),
    /// Not yet possible, and about to be without anyone doing anything: a VM booting, the IPAM
    /// controller's podCIDR. The step waits for it within its delivery (re-reading), and only
    /// if it has not happened by then asks for a redelivery (issue 22, item 4: an expected
    /// wait is not a nack).
    Expect(String),
    /// Not nodewire's business; acknowledge.
    Ignore(String),
    /// Can never succeed as things are.
    Refuse(Refusal),
}

impl Plan {
    /// Why a plan that does not act stops where it does, in words (empty for [`Plan::Act`]).
    pub fn reason(&self) -> String {
        match self {
            Plan::Act { .. } => String::new(),
            Plan::Wait(w) | Plan::Expect(w) | Plan::Ignore(w) => w.clone(),
            Plan::Refuse(r) => r.to_string(),
        }
    }
}

/// One aspect of "wired" that does not hold yet, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gap {
    /// The Node of this name is a previous instance's (recorded for another instance id, or
    /// registered before this VM was created): `bootstrap` deletes it, then the VM joins.
    StaleNode,
    /// The VM has not joined: no Node.
    NoNode,
    /// The Node has no podCIDR yet.
    NoPodCidr,
    /// nic0's aliases are not exactly `[podCIDR]`.
    Alias,
    /// A node tag is missing.
    Tag,
    /// `spec.providerID` is not `gce://PROJECT/ZONE/NAME`, or the VM's instance id is not
    /// recorded on the Node.
    ProviderId,
    /// The Node's `NetworkUnavailable` condition is `True` (where a cloud provider set it at
    /// registration), although its pod range is routed.
    NetworkUnavailable,
    /// The unwired taint is still there.
    Taint,
    /// A bootstrap token is left.
    Token,
    /// The `kubeadm-join` metadata is left.
    JoinMetadata,
}

impl Gap {
    /// The step that closes this gap (`None`: waits for the kubelet or the IPAM controller).
    pub fn step(self) -> Option<Step> {
        match self {
            Gap::NoNode | Gap::NoPodCidr => None,
            Gap::StaleNode => Some(Step::Bootstrap),
            Gap::Alias => Some(Step::AssignAlias),
            Gap::Tag => Some(Step::TagInstance),
            Gap::ProviderId => Some(Step::ProviderId),
            Gap::NetworkUnavailable | Gap::Taint | Gap::Token | Gap::JoinMetadata => {
                Some(Step::Finalize)
            }
        }
    }
}

impl PlanConfig {
    /// `None` when the VM is nodewire's; otherwise why not (see [`Selector`]).
    pub fn not_selected(&self, vm: &VmFacts) -> Option<String> {
        self.selector
            .admits_vm(&vm.instance, &vm.labels)
            .err()
            .map(|e| e.0)
    }

    /// The node subnet is `(region, name)`; the project is not compared (a Shared VPC host
    /// project owns it).
    pub fn subnet_matches(&self, subnet: Option<&SubnetRef>) -> bool {
        subnet.is_some_and(|s| s.region == self.subnet.0 && s.name == self.subnet.1)
    }

    /// The alias a podCIDR asks for: the block, named after the pod range that holds it.
    fn wanted_alias(&self, cidr: Cidr) -> Alias {
        let name = self.pod_ranges.containing(&cidr).map(|r| r.name.clone());
        Alias::new(cidr.to_string(), name)
    }

    /// True when the alias is in one of the pod ranges (by name or by address).
    pub fn in_pod_range(&self, a: &Alias) -> bool {
        a.range_name
            .as_deref()
            .is_some_and(|n| self.pod_ranges.has_name(n))
            || a.block.is_some_and(|c| self.pod_ranges.overlaps(&c))
    }
}

/// The Node's podCIDR, validated against the pod range.
fn pod_cidr(node: &NodeFacts, cfg: &PlanConfig) -> Result<Option<Cidr>, Refusal> {
    let Some(raw) = node.pod_cidr.as_deref() else {
        return Ok(None);
    };
    let cidr: Cidr = raw.parse().map_err(|_| Refusal::InvalidPodCidr {
        node: node.name.clone(),
        cidr: raw.to_string(),
    })?;
    if cfg.pod_ranges.containing(&cidr).is_none() {
        return Err(Refusal::PodCidrOutsideRange {
            node: node.name.clone(),
            cidr: raw.to_string(),
            range: cfg.pod_ranges.to_string(),
        });
    }
    Ok(Some(cidr))
}

pub use crate::names::NODE_MASK;

/// Alias-first: the VM's alias range in the pod ranges, when it has exactly one and it lies
/// inside the range it is named after.
fn pod_alias(vm: &VmFacts, cfg: &PlanConfig) -> Option<Cidr> {
    let mut ours = vm.aliases.iter().filter(|a| cfg.in_pod_range(a));
    let one = ours.next()?;
    if ours.next().is_some() {
        return None;
    }
    one.block.filter(|c| {
        cfg.pod_ranges
            .containing(c)
            .is_some_and(|r| one.range_name.as_deref() == Some(r.name.as_str()))
    })
}

/// Alias-first, in `bootstrap`: while the Node has no podCIDR, the VM gets a block of a pod
/// range (allocated by Compute Engine, the first range with room) unless it has an alias in
/// one already.
fn alias_first_allocation(obs: &Observed, vm: &VmFacts, cfg: &PlanConfig) -> Option<Action> {
    if cfg.range_order != RangeOrder::AliasFirst
        || obs.node.as_ref().is_some_and(|n| n.pod_cidr.is_some())
        || vm.aliases.iter().any(|a| cfg.in_pod_range(a))
    {
        return None;
    }
    Some(Action::AllocateAlias {
        prefix: NODE_MASK,
        ranges: cfg.pod_ranges.names(),
    })
}

/// Every aspect of "wired" that does not hold, in chain order. Empty means wired: the VM has
/// exactly one alias range on nic0, equal to the Node's podCIDR, inside the pod range; the VM
/// carries the node tags; `spec.providerID` names the VM; the unwired taint is gone; no join
/// token or join metadata is left. The VM must exist.
pub fn gaps(obs: &Observed, cfg: &PlanConfig) -> Vec<Gap> {
    let mut out = Vec::new();
    let Some(vm) = &obs.vm else {
        return vec![Gap::NoNode];
    };
    match &obs.node {
        None => out.push(Gap::NoNode),
        // A previous instance's Node: nothing of it counts for this VM.
        Some(node) if matches!(pairing(node, vm), Pairing::Stale(_)) => {
            out.push(Gap::StaleNode);
        }
        Some(node) => {
            match pod_cidr(node, cfg) {
                Ok(Some(c)) => {
                    if vm.aliases != [cfg.wanted_alias(c)] {
                        out.push(Gap::Alias);
                    }
                }
                Ok(None) | Err(_) => out.push(Gap::NoPodCidr),
            }
            if node.provider_id.as_deref() != Some(vm.instance.provider_id().as_str())
                || node.instance_id != vm.id
            {
                out.push(Gap::ProviderId);
            }
            if node.network_unavailable {
                out.push(Gap::NetworkUnavailable);
            }
            if node.unwired_taint {
                out.push(Gap::Taint);
            }
        }
    }
    if cfg.node_tags.iter().any(|t| !vm.tags.contains(t)) {
        out.push(Gap::Tag);
    }
    if !obs.tokens.is_empty() {
        out.push(Gap::Token);
    }
    if vm.join_metadata
        || vm.kubelet_restarts.is_some()
        || vm.bootstrap_attempts.is_some()
        || (obs.node.is_some() && needs_joined_mark(vm, cfg))
    {
        out.push(Gap::JoinMetadata);
    }
    out.sort();
    out
}

/// Pull mode: a VM whose Node exists carries nodewire's `nodewire-joined` mark, which the
/// lost-Node heal relies on (metadata mode writes it when the join metadata is cleared).
fn needs_joined_mark(vm: &VmFacts, cfg: &PlanConfig) -> bool {
    cfg.join_mode == JoinMode::Pull && !vm.joined
}

/// True when the VM is a wired node.
pub fn is_wired(obs: &Observed, cfg: &PlanConfig) -> bool {
    gaps(obs, cfg).is_empty()
}

/// The step of the first gap that a step can close, other than `current`.
fn next_step(obs: &Observed, cfg: &PlanConfig, current: Step) -> Option<Step> {
    let gaps = gaps(obs, cfg);
    // Waiting for the kubelet or the IPAM controller: their events restart the chain.
    if gaps.contains(&Gap::NoNode) || gaps.contains(&Gap::StaleNode) {
        return None;
    }
    if gaps.contains(&Gap::NoPodCidr) {
        // Alias-first: nodewire is the allocator; `assign-alias` copies the alias.
        return (cfg.range_order == RangeOrder::AliasFirst && current != Step::AssignAlias)
            .then_some(Step::AssignAlias);
    }
    gaps.iter().filter_map(|g| g.step()).find(|s| *s != current)
}

/// Applies actions to the observed state as they would change the world (assuming they
/// succeed). Used to pick the next step, and by the tests to drive plans to convergence.
pub fn apply(obs: &Observed, actions: &[Action], cfg: &PlanConfig) -> Observed {
    let mut o = obs.clone();
    for a in actions {
        match a {
            Action::Bootstrap => {
                if let Some(vm) = &mut o.vm {
                    vm.join_metadata = true;
                    vm.bootstrap_attempts = Some(Attempts {
                        count: Attempts::next(vm.bootstrap_attempts, &Budget::JOIN_TOKENS)
                            .unwrap_or(1),
                        age: std::time::Duration::ZERO,
                    });
                }
                o.tokens.push(TokenFacts {
                    id: format!("new{}", o.tokens.len()),
                    expired: false,
                });
            }
            Action::RevokeTokens(ids) => o.tokens.retain(|t| !ids.contains(&t.id)),
            Action::SetAlias { cidr, .. } => {
                if let Some(vm) = &mut o.vm {
                    vm.aliases = vec![cfg.wanted_alias(*cidr)];
                }
            }
            Action::AllocateAlias { prefix, ranges } => {
                // Which block Compute Engine picks is not known here: one of the first range.
                if let (Some(vm), Some(range)) = (&mut o.vm, ranges.first()) {
                    vm.aliases
                        .push(Alias::new(format!("/{prefix}"), Some(range.clone())));
                }
            }
            Action::SetPodCidr(c) => {
                if let Some(n) = &mut o.node {
                    n.pod_cidr = Some(c.to_string());
                }
            }
            Action::ReleaseAlias { keep } => {
                if let Some(vm) = &mut o.vm {
                    vm.aliases = keep.clone();
                }
            }
            Action::AddTags(t) => {
                if let Some(vm) = &mut o.vm {
                    vm.tags.extend(t.iter().cloned());
                }
            }
            Action::SetProviderId(p) => {
                if let Some(n) = &mut o.node {
                    n.provider_id = Some(p.clone());
                }
            }
            Action::SetNetworkAvailable => {
                if let Some(n) = &mut o.node {
                    n.network_unavailable = false;
                }
            }
            Action::RemoveTaint => {
                if let Some(n) = &mut o.node {
                    n.unwired_taint = false;
                }
            }
            Action::ClearJoinMetadata => {
                if let Some(vm) = &mut o.vm {
                    vm.join_metadata = false;
                    vm.kubelet_restarts = None;
                    vm.bootstrap_attempts = None;
                    vm.joined = true;
                }
            }
            Action::RestartKubelet(n) => {
                if let Some(vm) = &mut o.vm {
                    vm.kubelet_restarts = Some(Attempts {
                        count: *n,
                        age: std::time::Duration::ZERO,
                    });
                }
            }
            Action::DeleteNode | Action::DeleteStaleNode { .. } => o.node = None,
            Action::RecordInstance(id) => {
                if let Some(n) = &mut o.node {
                    n.instance_id = Some(id.clone());
                }
            }
            Action::AnnounceWired => {}
        }
    }
    o
}

/// Decides what `step` must do for the observed VM.
pub fn plan(step: Step, obs: &Observed, cfg: &PlanConfig) -> Plan {
    match step {
        Step::Decommission => return plan_decommission(obs, cfg),
        Step::ReleaseAlias => return plan_release(obs, cfg),
        _ => {}
    }
    let Some(vm) = &obs.vm else {
        return Plan::Ignore(format!("VM {} does not exist (any more)", obs.instance));
    };
    if let Some(why) = cfg.not_selected(vm) {
        return Plan::Ignore(why);
    }
    if let Some(node) = &obs.node
        && let Pairing::Stale(why) = pairing(node, vm)
    {
        return plan_stale_node(step, obs, node, cfg, &why);
    }
    if let Some(node) = &obs.node
        && let Err(plan) = node_is_the_vms(node, vm)
    {
        return plan;
    }
    if is_wired(obs, cfg) {
        return Plan::Act {
            actions: vec![],
            next: None,
        };
    }
    let actions = match step {
        Step::Bootstrap => plan_bootstrap(obs, vm, cfg),
        Step::AssignAlias => plan_assign_alias(obs, vm, cfg),
        Step::TagInstance => Ok(plan_tags(vm, cfg)),
        Step::ProviderId => plan_provider_id(obs, vm),
        Step::Finalize => plan_finalize(obs, vm, cfg),
        Step::ReleaseAlias | Step::Decommission => Ok(vec![]),
    };
    match actions {
        Ok(actions) => {
            let after = apply(obs, &actions, cfg);
            Plan::Act {
                next: next_step(&after, cfg, step),
                actions,
            }
        }
        Err(plan) => plan,
    }
}

/// A step acts on a Node only when it is provably this VM's (issue 10, item 3): its providerID
/// names the VM, or it has none yet and carries nodewire's mark — the unwired taint, which only
/// nodewire's JoinConfiguration registers (NodeRestriction forbids a kubelet to add taints
/// later). A Node whose providerID names another VM is refused (an operator must delete it); one
/// with neither is left alone: it is someone else's (a control-plane Node, a node joined by
/// hand). To adopt such a node, set its providerID to `gce://P/Z/N` by hand.
pub fn node_is_the_vms(node: &NodeFacts, vm: &VmFacts) -> Result<(), Plan> {
    let wanted = vm.instance.provider_id();
    match node.provider_id.as_deref() {
        Some(p) if p == wanted => Ok(()),
        Some(other) => Err(Plan::Refuse(Refusal::ProviderIdConflict(
            ProviderIdConflict {
                node: node.name.clone(),
                current: other.to_string(),
                wanted,
            },
        ))),
        None if node.unwired_taint => Ok(()),
        None => Err(Plan::Ignore(format!(
            "Node {} has no providerID and no nodewire mark (taint {}): not provably VM {}'s; \
             set its spec.providerID to {wanted} to have nodewire wire it",
            node.name,
            crate::names::UNWIRED_TAINT,
            vm.instance
        ))),
    }
}

/// Whether a Node is this VM instance's (issue 21): the instance id recorded on it, else the
/// order of their creation — a Node registered before the VM was created is a previous
/// instance's (names are unique in a zone at any time, so the instance it belonged to was
/// deleted before this one was created), one registered after (or in the same second: the
/// Node's time has whole seconds) is this instance's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pairing {
    /// The Node records this VM's instance id.
    Recorded,
    /// No record, but registered after this instance was created: its record may be written.
    Proven,
    /// A previous instance's Node; the reason says how that is known.
    Stale(String),
    /// No record, and the times are not known: nothing is decided from it.
    Unknown,
}

/// See [`Pairing`].
pub fn pairing(node: &NodeFacts, vm: &VmFacts) -> Pairing {
    match (&node.instance_id, &vm.id) {
        (Some(recorded), Some(id)) if recorded == id => return Pairing::Recorded,
        (Some(recorded), Some(id)) => {
            return Pairing::Stale(format!(
                "Node {} is recorded for instance {recorded}, VM {} is instance {id}",
                node.name, vm.instance
            ));
        }
        _ => {}
    }
    if node.instance_id.is_some() {
        return Pairing::Unknown;
    }
    match (node.registered_at, vm.created_at) {
        (Some(node_at), Some(vm_at)) if node_at < vm_at => Pairing::Stale(format!(
            "Node {} was registered before VM {} (instance {}) was created",
            node.name,
            vm.instance,
            vm.id.as_deref().unwrap_or("?")
        )),
        // The same second counts as after: a kubeadm node registers tens of seconds after its
        // VM is created, while the previous instance's Node was registered before that
        // instance's deletion, which itself takes longer than a second.
        (Some(_), Some(_)) => Pairing::Proven,
        _ => Pairing::Unknown,
    }
}

/// A VM recreated under a name whose Node is a previous instance's: `bootstrap` deletes that
/// Node (only while its uid is the one read, so a Node registered meanwhile by the new
/// instance is not taken), and the VM joins as a new node. Any other step hands over to
/// `bootstrap`; none acts on the stale Node.
fn plan_stale_node(
    step: Step,
    obs: &Observed,
    node: &NodeFacts,
    cfg: &PlanConfig,
    why: &str,
) -> Plan {
    if step == Step::Bootstrap {
        if node.uid.is_none() {
            return Plan::Ignore(format!("{why}; its uid is unknown, so it is not deleted"));
        }
        // Deleted already and held by a finalizer: waited for (bounded by the retry policy),
        // never deleted again in a loop.
        if node.deleting {
            return Plan::Wait(format!("{why}; it is being deleted"));
        }
        let delete = Action::DeleteStaleNode {
            uid: node.uid.clone(),
        };
        // Then what bootstrap does for a VM without a Node, in the same run (metadata mode: the
        // join token); when that must wait (the VM still boots), the next bootstrap does it.
        let after = apply(obs, std::slice::from_ref(&delete), cfg);
        let rest = after.vm.as_ref().map(|vm| plan_bootstrap(&after, vm, cfg));
        return match rest {
            Some(Ok(rest)) => Plan::Act {
                actions: std::iter::once(delete).chain(rest).collect(),
                next: None,
            },
            _ => Plan::Act {
                actions: vec![delete],
                next: Some(Step::Bootstrap),
            },
        };
    }
    Plan::Act {
        actions: vec![],
        next: Some(Step::Bootstrap),
    }
}

/// A step branch: the actions, or a plan that ends the step early (wait, ignore, refuse, or
/// hand over to another step).
type Branch = Result<Vec<Action>, Plan>;

/// `bootstrap`: mint a token and write the join configuration, unless the VM has joined or a
/// valid join is pending; expired tokens are revoked first. Whether the VM may join at all is
/// [`eligibility::vm_may_join`]'s decision: a booting VM is waited for, a stopped or suspended
/// one is bootstrapped once it runs again (the drift sweep finds it then), one without IP
/// forwarding or off the node subnet is refused, one of another service account ignored.
fn plan_bootstrap(obs: &Observed, vm: &VmFacts, cfg: &PlanConfig) -> Branch {
    let eligible = eligibility::vm_may_join(vm, cfg, None);
    // The account is judged only once the VM has no Node and no pending join (below): a VM
    // already joined keeps getting its tags and its lost-Node heal.
    if let Err(e) = &eligible
        && !matches!(e, Ineligible::WrongServiceAccount { .. })
    {
        return Err(ineligible_plan(e));
    }
    // Network tags do not depend on the Node: set them now, so that after registration the
    // critical path is one alias operation, then finalize (issue 12, item 3).
    let mut a = plan_tags(vm, cfg);
    // Alias-first: the pod range is allocated while the VM boots, off the critical path.
    if eligible.is_ok() {
        a.extend(alias_first_allocation(obs, vm, cfg));
    }
    // Joined already (hand over to the chain), or bootstrapped and waiting for the kubelet to
    // register: nothing more to do.
    let joined = obs.node.is_some();
    let pending = vm.join_metadata && obs.tokens.iter().any(|t| !t.expired);
    if joined || pending {
        return Ok(a);
    }
    if vm.joined {
        a.extend(plan_lost_node(vm)?);
        return Ok(a);
    }
    if let Err(e) = &eligible {
        return Err(ineligible_plan(e));
    }
    let expired: Vec<String> = obs
        .tokens
        .iter()
        .filter(|t| t.expired)
        .map(|t| t.id.clone())
        .collect();
    if cfg.join_mode == JoinMode::Pull {
        // The VM asks the `join` service for its configuration with its instance identity:
        // no token is minted here and nothing is written into its metadata.
        if !expired.is_empty() {
            a.push(Action::RevokeTokens(expired));
        }
        return Ok(a);
    }
    if let Err(why) = Attempts::next(vm.bootstrap_attempts, &Budget::JOIN_TOKENS) {
        if a.is_empty() {
            return Err(Plan::Ignore(format!(
                "VM {}: {}",
                vm.instance,
                join_tokens_not_due(why)
            )));
        }
        return Ok(a);
    }
    if !expired.is_empty() {
        a.push(Action::RevokeTokens(expired));
    }
    a.push(Action::Bootstrap);
    Ok(a)
}

/// What `bootstrap` does about a VM that may not join: wait for a booting one, refuse one
/// that can never be wired as it is (the message says what to fix), ignore the rest.
fn ineligible_plan(e: &Ineligible) -> Plan {
    match e {
        Ineligible::Booting { .. } => Plan::Expect(e.to_string()),
        Ineligible::NoIpForwarding(vm) => Plan::Refuse(Refusal::NoIpForwarding(vm.clone())),
        Ineligible::WrongSubnet {
            vm, found, wanted, ..
        } => Plan::Refuse(Refusal::WrongSubnet {
            vm: vm.clone(),
            found: found.clone(),
            wanted: wanted.clone(),
        }),
        other => Plan::Ignore(other.to_string()),
    }
}

/// Why no join token is due, in words.
pub fn join_tokens_not_due(why: NotDue) -> String {
    match why {
        NotDue::Spent { count, resets_in } => format!(
            "{count} join tokens minted in a day and the VM never joined; the next in {}s",
            resets_in.unwrap_or_default().as_secs()
        ),
        NotDue::Backoff {
            count,
            age,
            next_in,
        } => format!(
            "join token {count} was minted {}s ago and the VM did not join; the next in {}s",
            age.as_secs(),
            next_in.as_secs()
        ),
    }
}

/// A VM that joined before has no Node (deleted, or lost): `kubeadm join` would fail its
/// preflight there and a running kubelet does not register again, so no token is minted.
/// Instead the node-side unit is asked to restart the kubelet, which registers the Node anew —
/// within [`Budget::KUBELET_RESTARTS`]; after that the lost Node is reported for a person to
/// decide (delete the VM, or rejoin it by hand).
fn plan_lost_node(vm: &VmFacts) -> Branch {
    match Attempts::next(vm.kubelet_restarts, &Budget::KUBELET_RESTARTS) {
        Ok(n) => Ok(vec![Action::RestartKubelet(n)]),
        Err(NotDue::Spent { count, .. }) => Err(Plan::Ignore(format!(
            "VM {} joined before and its Node is gone; {count} kubelet restarts did not bring it back: needs a person (delete the VM, or rejoin it by hand)",
            vm.instance
        ))),
        Err(NotDue::Backoff { count, age, .. }) => Err(Plan::Wait(format!(
            "VM {}: kubelet restart {count} asked for {}s ago; waiting for its Node",
            vm.instance,
            age.as_secs()
        ))),
    }
}

/// `assign-alias`: nic0's aliases become exactly the Node's podCIDR.
fn plan_assign_alias(obs: &Observed, vm: &VmFacts, cfg: &PlanConfig) -> Branch {
    let Some(node) = &obs.node else {
        return Err(no_node(vm));
    };
    // The Node registered, so its kubelet has its own credential: the join token has done its
    // job and goes now — at registration, not once a podCIDR exists, nor after full wiring
    // (issue 10, item 4).
    let mut a = revoke_all(obs);
    let cidr = match pod_cidr(node, cfg) {
        Ok(Some(c)) => c,
        // Alias-first: the Node's podCIDR is its VM's alias (nodewire is the only allocator).
        Ok(None) if cfg.range_order == RangeOrder::AliasFirst => {
            if let Some(alias) = pod_alias(vm, cfg) {
                a.push(Action::SetPodCidr(alias));
                return Ok(a);
            }
            // No alias yet: `bootstrap` allocates it (and hands back here).
            return Err(Plan::Act {
                actions: a,
                next: Some(Step::Bootstrap),
            });
        }
        // Revoke now; the podCIDR's own audit event (or the sweep) brings the chain back.
        Ok(None) if !a.is_empty() => {
            return Err(Plan::Act {
                actions: a,
                next: None,
            });
        }
        Ok(None) => {
            return Err(Plan::Expect(format!(
                "Node {} has no podCIDR yet",
                node.name
            )));
        }
        Err(r) => return Err(Plan::Refuse(r)),
    };
    let wanted = cfg.wanted_alias(cidr);
    if vm.aliases != [wanted.clone()] {
        a.push(Action::SetAlias {
            cidr,
            range_name: wanted.range_name.unwrap_or_default(),
        });
    }
    Ok(a)
}

/// Revoking every token of the VM, when it has any.
fn revoke_all(obs: &Observed) -> Vec<Action> {
    if obs.tokens.is_empty() {
        vec![]
    } else {
        vec![Action::RevokeTokens(
            obs.tokens.iter().map(|t| t.id.clone()).collect(),
        )]
    }
}

/// `tag-instance`: add the node tags that are missing.
fn plan_tags(vm: &VmFacts, cfg: &PlanConfig) -> Vec<Action> {
    let missing: Vec<String> = cfg
        .node_tags
        .iter()
        .filter(|t| !vm.tags.contains(t))
        .cloned()
        .collect();
    if missing.is_empty() {
        vec![]
    } else {
        vec![Action::AddTags(missing)]
    }
}

/// `provider-id`: set it while empty; another value can never be changed.
fn plan_provider_id(obs: &Observed, vm: &VmFacts) -> Branch {
    let Some(node) = &obs.node else {
        return Err(no_node(vm));
    };
    let wanted = vm.instance.provider_id();
    // The instance id goes on the Node once it is proven this instance's.
    let mut record = Vec::new();
    if node.instance_id.is_none()
        && let Some(id) = &vm.id
    {
        match pairing(node, vm) {
            Pairing::Proven => record.push(Action::RecordInstance(id.clone())),
            Pairing::Unknown => {
                return Err(Plan::Wait(format!(
                    "Node {}: its registration time or VM {}'s creation time is unknown, so                      which instance registered it is not proven",
                    node.name, vm.instance
                )));
            }
            Pairing::Recorded | Pairing::Stale(_) => {}
        }
    }
    match node.provider_id.as_deref() {
        Some(p) if p == wanted => Ok(record),
        None => {
            let mut a = vec![Action::SetProviderId(wanted)];
            a.extend(record);
            Ok(a)
        }
        Some(other) => Err(Plan::Refuse(Refusal::ProviderIdConflict(
            ProviderIdConflict {
                node: node.name.clone(),
                current: other.to_string(),
                wanted,
            },
        ))),
    }
}

/// `finalize`: only once everything but the clean-up holds; then revoke the tokens, clear the
/// join metadata, lift the taint and announce.
fn plan_finalize(obs: &Observed, vm: &VmFacts, cfg: &PlanConfig) -> Branch {
    let blocking = gaps(obs, cfg).into_iter().find(|g| {
        !matches!(
            g,
            Gap::NetworkUnavailable | Gap::Taint | Gap::Token | Gap::JoinMetadata
        )
    });
    if let Some(first) = blocking {
        // Not wired yet: send the chain back to the first open aspect.
        return Err(Plan::Act {
            actions: vec![],
            next: first.step(),
        });
    }
    // Revoke, then remove the join metadata, then lift the taint: no Pod can run on the node
    // while a join credential for it still exists (issue 10, item 4).
    let mut a = revoke_all(obs);
    let clear =
        vm.join_metadata || vm.kubelet_restarts.is_some() || vm.bootstrap_attempts.is_some();
    if clear {
        a.push(Action::ClearJoinMetadata);
    }
    // The route exists (the alias is the podCIDR): say so where a cloud provider said it did
    // not, before the taint goes (GKE's CloudAllocator does it right after the podCIDR).
    if obs.node.as_ref().is_some_and(|n| n.network_unavailable) {
        a.push(Action::SetNetworkAvailable);
    }
    if obs.node.as_ref().is_some_and(|n| n.unwired_taint) {
        a.push(Action::RemoveTaint);
    }
    // Pull mode: metadata never held a secret, so the mark that the VM joined (what heals a
    // lost Node later) is written after the taint is lifted, off the critical path.
    if !clear && needs_joined_mark(vm, cfg) {
        a.push(Action::ClearJoinMetadata);
    }
    if !a.is_empty() {
        a.push(Action::AnnounceWired);
    }
    Ok(a)
}

fn no_node(vm: &VmFacts) -> Plan {
    Plan::Ignore(format!(
        "no Node for VM {} (not registered, or deleted)",
        vm.instance
    ))
}

/// The VM is gone: delete its Node (if it is this VM's) and its tokens.
fn plan_decommission(obs: &Observed, cfg: &PlanConfig) -> Plan {
    // The VM is gone, so its labels are unknown: the name is all that can be judged.
    if let Err(why) = cfg.selector.admits(&obs.instance) {
        return Plan::Ignore(why.0);
    }
    if obs.vm.is_some() {
        return Plan::Ignore(format!(
            "VM {} exists (re-created?); nothing to decommission",
            obs.instance
        ));
    }
    let mut actions = Vec::new();
    if let Some(node) = &obs.node {
        // Only a Node that provably was this VM's: its providerID names it. A Node without one
        // is never deleted on a VM's account — kubeadm's control-plane Nodes usually have none,
        // and a forged or stale step naming one must not take it down (issue 10, item 3).
        let ours = node
            .provider_id
            .as_deref()
            .is_some_and(|p| p == obs.instance.provider_id());
        if ours {
            actions.push(Action::DeleteNode);
        }
    }
    if !obs.tokens.is_empty() {
        actions.push(Action::RevokeTokens(
            obs.tokens.iter().map(|t| t.id.clone()).collect(),
        ));
    }
    Plan::Act {
        actions,
        next: None,
    }
}

/// The Node is gone but the VM stays: give the pod range back.
fn plan_release(obs: &Observed, cfg: &PlanConfig) -> Plan {
    let Some(vm) = &obs.vm else {
        return Plan::Ignore(format!(
            "VM {} does not exist; decommission cleans up",
            obs.instance
        ));
    };
    if let Some(why) = cfg.not_selected(vm) {
        return Plan::Ignore(why);
    }
    if obs.node.is_some() {
        return Plan::Ignore(format!(
            "the Node of VM {} exists again; nothing to release",
            vm.instance
        ));
    }
    let keep: Vec<Alias> = vm
        .aliases
        .iter()
        .filter(|a| !cfg.in_pod_range(a))
        .cloned()
        .collect();
    // Alias-first: a VM without a Node holds its range on purpose (booting, joining, or
    // about to register again); the range goes with the VM.
    let actions = if keep.len() == vm.aliases.len() || cfg.range_order == RangeOrder::AliasFirst {
        vec![]
    } else {
        vec![Action::ReleaseAlias { keep }]
    };
    // A VM that had joined has lost its Node: bootstrap asks its kubelet to register again
    // (bounded; see plan_lost_node). The sweep publishes one step per VM, so the chain must
    // carry on from here by itself.
    let next = (vm.joined && vm.status == VmStatus::Running).then_some(Step::Bootstrap);
    Plan::Act { actions, next }
}
