//! The drift sweep's presentation: the drift kinds and their names, the report of one run,
//! and the `drift` log line per finding (what the log-based metric `nodewire/drift` counts).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Healed, Inventory};

/// Names listed per drift kind in a report, at most.
pub const AFFECTED_CAP: usize = 20;

/// A kind of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// A VM of ours with no Node, no join metadata and no token.
    NeverBootstrapped,
    /// A VM of ours with no Node whose join token expired (or whose metadata has no valid token).
    BootstrapExpired,
    /// nic0's aliases are not exactly `[podCIDR]`.
    AliasMismatch,
    /// A VM still holds a pod-range alias but its Node is gone.
    AliasWithoutNode,
    /// A node tag is missing.
    TagMissing,
    /// `spec.providerID` is empty or names another VM.
    ProviderIdWrong,
    /// The unwired taint is left on a node that is otherwise wired.
    TaintLeft,
    /// A join token is left for a VM that has a Node.
    LeftoverToken,
    /// `kubeadm-join` is left in the metadata of a VM that has a Node.
    LeftoverJoinMetadata,
    /// A Node whose providerID names a VM of this project that does not exist.
    NodeWithoutVm,
    /// A join token for a VM that does not exist.
    OrphanToken,
    /// Two VMs hold overlapping pod-range aliases.
    AliasOverlap,
    /// A VM that joined before has no Node (deleted, or its registration lost): healed by
    /// asking the node-side unit to restart the kubelet, a bounded number of times; reported
    /// without a heal once that budget is spent or while a restart is awaited.
    NodeLost,
    /// The Node of a VM's name is a previous instance's (recorded for another instance id, or
    /// registered before the VM was created; issue 21): healed by `bootstrap`, which deletes it
    /// so that the VM joins as a new node.
    NodeOfPreviousInstance,
    /// Alias-first: a Node without podCIDR (nodewire copies its VM's alias into it).
    PodCidrMissing,
    /// A Node whose `NetworkUnavailable` condition is `True` although its pod range is routed
    /// (`finalize` sets it to `False`).
    NetworkUnavailable,
}

impl DriftKind {
    /// The kebab-case name, as in the report and the `drift` log line.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::NeverBootstrapped => "never-bootstrapped",
            DriftKind::BootstrapExpired => "bootstrap-expired",
            DriftKind::AliasMismatch => "alias-mismatch",
            DriftKind::AliasWithoutNode => "alias-without-node",
            DriftKind::TagMissing => "tag-missing",
            DriftKind::ProviderIdWrong => "provider-id-wrong",
            DriftKind::TaintLeft => "taint-left",
            DriftKind::LeftoverToken => "leftover-token",
            DriftKind::LeftoverJoinMetadata => "leftover-join-metadata",
            DriftKind::NodeWithoutVm => "node-without-vm",
            DriftKind::OrphanToken => "orphan-token",
            DriftKind::AliasOverlap => "alias-overlap",
            DriftKind::NodeLost => "node-lost",
            DriftKind::NodeOfPreviousInstance => "node-of-previous-instance",
            DriftKind::PodCidrMissing => "pod-cidr-missing",
            DriftKind::NetworkUnavailable => "network-unavailable",
        }
    }
}

/// What one sweep found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub dry_run: bool,
    pub vms: usize,
    pub nodes: usize,
    pub tokens: usize,
    /// Findings per drift kind.
    pub drift: BTreeMap<DriftKind, usize>,
    /// Affected names per drift kind (at most [`AFFECTED_CAP`] each).
    pub affected: BTreeMap<DriftKind, Vec<String>>,
    /// Steps published (planned, in a dry run).
    pub steps: usize,
    /// VMs with drift whose step was not published because the sweep restarted their chain
    /// less than the cooldown ago.
    #[serde(default)]
    pub cooling: usize,
    /// Steps left for the next run (over [`crate::config::SweepLimits::max_steps`]).
    #[serde(default)]
    pub deferred: usize,
    /// Drift the planner refuses to heal, by subject, with the reason (at most
    /// [`AFFECTED_CAP`]): for a person to look at, never published.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused: BTreeMap<String, String>,
    /// Set when this run did nothing because another sweep holds the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// List calls made, per API.
    pub api_calls: BTreeMap<String, usize>,
    /// Zones the VM list could not reach: nothing there was reported as gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_zones: Vec<String>,
    pub duration_ms: u64,
}

impl Report {
    /// Total findings.
    pub fn total(&self) -> usize {
        self.drift.values().sum()
    }
}

/// Builds the report.
pub fn report(
    inv: &Inventory,
    healed: &Healed,
    api_calls: BTreeMap<String, usize>,
    dry_run: bool,
    started: Instant,
) -> Report {
    let mut drift: BTreeMap<DriftKind, usize> = BTreeMap::new();
    let mut affected: BTreeMap<DriftKind, Vec<String>> = BTreeMap::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for f in &healed.findings {
        if let Some(why) = &f.refused
            && refused.len() < AFFECTED_CAP
        {
            refused.insert(f.subject.clone(), why.clone());
        }
        // One line per finding: the log-based metric `nodewire/drift` counts them by kind.
        tracing::info!(
            kind = f.kind.as_str(),
            subject = %f.subject,
            refused = f.refused.is_some(),
            "drift"
        );
        *drift.entry(f.kind).or_insert(0) += 1;
        let list = affected.entry(f.kind).or_default();
        if list.len() < AFFECTED_CAP && !list.contains(&f.subject) {
            list.push(f.subject.clone());
        }
    }
    Report {
        dry_run,
        vms: inv.vms.len(),
        nodes: inv.nodes.len(),
        tokens: inv.tokens.len(),
        drift,
        affected,
        steps: healed.published.len(),
        cooling: healed.cooling,
        deferred: healed.deferred,
        refused,
        skipped: None,
        api_calls,
        unreachable_zones: inv.unreachable_zones.clone(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

pub(super) fn skipped_report(dry_run: bool, started: Instant) -> Report {
    Report {
        dry_run,
        vms: 0,
        nodes: 0,
        tokens: 0,
        drift: BTreeMap::new(),
        affected: BTreeMap::new(),
        steps: 0,
        cooling: 0,
        deferred: 0,
        refused: BTreeMap::new(),
        skipped: Some("another sweep holds the lock (kube-system/nodewire-sweep)".into()),
        api_calls: BTreeMap::new(),
        unreachable_zones: Vec::new(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}
