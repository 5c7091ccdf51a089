//! PLAN: may this VM join the cluster? One decision, in one order, used by the `join` service
//! (which refuses with it), by `bootstrap` (which mints nothing and waits or ignores with it)
//! and by `nodewire status` (which shows it, with what to change). Pure.
//!
//! The VM's identity (that a request really comes from it) is not decided here: the `join`
//! service proves it first, then asks this module whether that VM may join.

use std::collections::BTreeSet;

use super::facts::{NodeFacts, VmFacts, VmStatus};
use super::{PlanConfig, node_is_the_vms};
use crate::names::SubnetRef;

/// Why a VM will not join (yet). Each message says what is wrong and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    /// The selector does not admit it (project, name prefix, labels).
    #[error("{0}")]
    NotSelected(String),
    /// Created, not RUNNING yet: it may join once it runs.
    #[error("VM {vm} is {status}; it may join once it is RUNNING")]
    Booting { vm: String, status: VmStatus },
    /// Stopped, suspended, being repaired or deleted.
    #[error(
        "VM {vm} is {status}, not RUNNING: start it (gcloud compute instances start) to have it join"
    )]
    NotRunning { vm: String, status: VmStatus },
    /// The identity token is of an account the VM does not run as (the `join` service only).
    #[error("VM {vm} does not run as {account}, the account of its identity token")]
    NotTheVmsAccount { vm: String, account: String },
    /// It runs as none of the node service accounts.
    #[error(
        "VM {vm} runs as {}, none of NODEWIRE_NODE_SERVICE_ACCOUNTS ({}): recreate it with \
         --service-account={} (a VM's service account proves who created it)",
        runs_as_text(.runs_as), .wanted.iter().cloned().collect::<Vec<_>>().join(", "),
        .wanted.iter().next().map_or("…", String::as_str)
    )]
    WrongServiceAccount {
        vm: String,
        runs_as: Vec<String>,
        wanted: BTreeSet<String>,
    },
    /// `canIpForward` is off: the VPC would drop its Pods' traffic.
    #[error(
        "VM {0} does not have IP forwarding (canIpForward) enabled; recreate it with --can-ip-forward"
    )]
    NoIpForwarding(String),
    /// nic0 is not on the node subnet, whose secondary range the pod ranges come from.
    #[error(
        "VM {vm}'s nic0 is on subnetwork {found}, not the node subnet {wanted}: recreate it with \
         --subnet={wanted_name}"
    )]
    WrongSubnet {
        vm: String,
        found: String,
        wanted: String,
        wanted_name: String,
    },
    /// A Node of its name exists: a VM that joined does not join again, and a Node of that
    /// name that is not this VM's is in the way.
    #[error("{0}")]
    NodeExists(String),
    /// It carries nodewire's `nodewire-joined` mark: its disk has a kubelet configuration.
    /// A lost Node comes back by a kubelet restart nodewire asks for, never by a new join
    /// credential (a process on the VM, a Pod still running there included, must not get one).
    #[error(
        "VM {0} joined before (metadata nodewire-joined): no new join credential; nodewire asks \
         its kubelet to register the Node again. To rejoin it by hand: kubeadm reset on the VM, \
         then remove the nodewire-joined metadata key"
    )]
    JoinedBefore(String),
    /// The Node of its name is a previous instance's (issue 21): `bootstrap` deletes it, then
    /// the VM joins. The join service answers 503, so the VM's script waits and asks again.
    #[error("{0}: nodewire is deleting it; ask again shortly")]
    StaleNode(String),
}

fn runs_as_text(accounts: &[String]) -> String {
    if accounts.is_empty() {
        "no service account".to_string()
    } else {
        accounts.join(", ")
    }
}

impl Ineligible {
    /// True when the VM will become eligible by itself (it is booting).
    pub fn is_wait(&self) -> bool {
        matches!(self, Ineligible::Booting { .. })
    }

    /// True when nodewire clears it by itself soon (a previous instance's Node being deleted).
    pub fn is_replacing(&self) -> bool {
        matches!(self, Ineligible::StaleNode(_))
    }

    /// A short kebab-case name for logs, metrics and `nodewire status --json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Ineligible::NotSelected(_) => "not-selected",
            Ineligible::Booting { .. } => "booting",
            Ineligible::NotRunning { .. } => "not-running",
            Ineligible::NotTheVmsAccount { .. } => "not-the-vms-account",
            Ineligible::WrongServiceAccount { .. } => "wrong-service-account",
            Ineligible::NoIpForwarding(_) => "no-ip-forwarding",
            Ineligible::WrongSubnet { .. } => "wrong-subnet",
            Ineligible::NodeExists(_) => "node-exists",
            Ineligible::JoinedBefore(_) => "joined-before",
            Ineligible::StaleNode(_) => "stale-node",
        }
    }
}

/// May `vm` join, as far as the VM itself goes? In order: selected, RUNNING, (with `account`,
/// the identity token's account, when a request proves one: that the VM runs as it), IP
/// forwarding, the node subnet, a node service account. The first condition that fails is the answer.
///
/// # Errors
/// The first [`Ineligible`] condition.
pub fn vm_may_join(
    vm: &VmFacts,
    cfg: &PlanConfig,
    account: Option<&str>,
) -> Result<(), Ineligible> {
    let name = || vm.instance.to_string();
    if let Some(why) = cfg.not_selected(vm) {
        return Err(Ineligible::NotSelected(why));
    }
    match &vm.status {
        VmStatus::Running => {}
        s if s.is_booting() => {
            return Err(Ineligible::Booting {
                vm: name(),
                status: s.clone(),
            });
        }
        s => {
            return Err(Ineligible::NotRunning {
                vm: name(),
                status: s.clone(),
            });
        }
    }
    if let Some(a) = account
        && !vm
            .service_accounts
            .iter()
            .any(|sa| sa.eq_ignore_ascii_case(a))
    {
        return Err(Ineligible::NotTheVmsAccount {
            vm: name(),
            account: a.to_string(),
        });
    }
    if !vm.can_ip_forward {
        return Err(Ineligible::NoIpForwarding(name()));
    }
    if !cfg.subnet_matches(vm.subnet.as_ref()) {
        return Err(Ineligible::WrongSubnet {
            vm: name(),
            found: vm
                .subnet
                .as_ref()
                .map_or_else(|| "(none)".to_string(), SubnetRef::to_string),
            wanted: format!("regions/{}/subnetworks/{}", cfg.subnet.0, cfg.subnet.1),
            wanted_name: cfg.subnet.1.clone(),
        });
    }
    // A VM can run as a service account only if its creator may act as that account
    // (iam.serviceAccounts.actAs), so the account proves who made the VM — unlike labels or
    // metadata, which whoever creates a VM chooses (issue 10, item 2).
    let candidates: Vec<&str> = match account {
        Some(a) => vec![a],
        None => vm.service_accounts.iter().map(String::as_str).collect(),
    };
    if !cfg.node_service_accounts.is_empty()
        && !candidates
            .iter()
            .any(|sa| cfg.node_service_accounts.contains(&sa.to_ascii_lowercase()))
    {
        return Err(Ineligible::WrongServiceAccount {
            vm: name(),
            runs_as: vm.service_accounts.clone(),
            wanted: cfg.node_service_accounts.clone(),
        });
    }
    Ok(())
}

/// May `vm` join, with `node` the Node of its name if one exists? [`vm_may_join`], then: no
/// Node of that name (one that is provably the VM's means it joined already; one that is not
/// is in the way, and the message says how to tell and what to do), and no mark that it joined
/// before (issue 20, item 5: docs/operations.md promises no new credential for such a VM).
///
/// # Errors
/// The first [`Ineligible`] condition.
pub fn may_join(
    vm: &VmFacts,
    node: Option<&NodeFacts>,
    cfg: &PlanConfig,
    account: Option<&str>,
) -> Result<(), Ineligible> {
    vm_may_join(vm, cfg, account)?;
    let Some(node) = node else {
        if vm.joined {
            return Err(Ineligible::JoinedBefore(vm.instance.to_string()));
        }
        return Ok(());
    };
    if let super::Pairing::Stale(why) = super::pairing(node, vm) {
        return Err(Ineligible::StaleNode(why));
    }
    Err(Ineligible::NodeExists(match node_is_the_vms(node, vm) {
        Ok(()) => format!(
            "VM {} has a Node already (Node {}): it joined; no new join credential",
            vm.instance, node.name
        ),
        Err(plan) => format!(
            "a Node named {} exists and is not VM {}'s ({}): if it is stale, delete it \
             (kubectl delete node {}); otherwise rename the VM",
            node.name,
            vm.instance,
            plan.reason(),
            node.name
        ),
    }))
}
