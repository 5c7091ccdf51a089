//! The drift sweep: list every Node, every VM of the project and every nodewire bootstrap
//! token, join them, and find what has drifted from "wired" — with the same planner facts
//! and the same definition of wired as the chain. The sweep writes nothing itself; it
//! publishes steps and reports. Without storms (issue 10, item 7): at most one step per VM per
//! run (its first gap: the chain continues from there); none for a VM the sweep restarted less
//! than the cooldown ago (its chain is in flight) nor for one the planner would refuse (the
//! refusal is reported, not dead-lettered again on every run); at most
//! [`SweepLimits::max_steps`] per run, published [`PUBLISH_CONCURRENCY`] at a time; and never
//! two sweeps at once (the lock in `kube-system/nodewire-sweep`, which also keeps the
//! cooldown's memory).
//!
//! [`assess`] is pure; [`run`] observes, assesses and publishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::act::k8s::{NodeView, TokenInfo};
use crate::deps::{ChainDeps, Deps};
use crate::event::{Cause, CauseSource, Decode, DecodeError, Step, StepMessage};
use crate::names::{Cidr, InstanceRef};
use crate::observe::ObserveError;
use crate::observe::{node_facts, token_facts, vm_facts};
use crate::plan::{Gap, KubeletRestarts, Observed, PlanConfig, TokenFacts, gaps};

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
        }
    }
}

/// One drifted aspect, and the step that heals it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: DriftKind,
    /// The VM or Node the finding is about.
    pub subject: String,
    /// `(step, VM, node name)` to publish.
    pub heal: Option<(Step, InstanceRef, Option<String>)>,
    /// Why the planner would refuse that step (then nothing is published).
    pub refused: Option<String>,
}

/// Steps published at a time.
pub const PUBLISH_CONCURRENCY: usize = 16;

/// The sweep's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepLimits {
    /// A VM the sweep published a step for is not restarted again before this has passed.
    pub cooldown: std::time::Duration,
    /// Steps published per run at most; the rest wait for the next run.
    pub max_steps: usize,
    /// How long a sweep holds its lock at most (a crashed sweep's lock expires).
    pub hold: std::time::Duration,
}

impl Default for SweepLimits {
    fn default() -> Self {
        Self {
            cooldown: std::time::Duration::from_secs(900),
            max_steps: 1000,
            hold: std::time::Duration::from_secs(600),
        }
    }
}

pub use crate::observe::Inventory;

/// Finds every drifted aspect. Pure.
pub fn assess(inv: &Inventory, cfg: &PlanConfig, now: time::OffsetDateTime) -> Vec<Finding> {
    let mut out = Vec::new();
    let nodes_by_name: HashMap<&str, &NodeView> =
        inv.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut tokens_by_vm: HashMap<&str, Vec<&TokenInfo>> = HashMap::new();
    for t in &inv.tokens {
        if let Some(i) = t.instance.as_deref() {
            tokens_by_vm.entry(i).or_default().push(t);
        }
    }
    let existing: BTreeSet<&InstanceRef> = inv.vms.iter().map(|v| &v.instance).collect();
    let unreachable = |zone: &str| inv.unreachable_zones.iter().any(|z| z == zone);
    let existing_names: BTreeSet<&str> = inv.vms.iter().map(|v| v.instance.name()).collect();
    let mut pod_aliases: Vec<(&InstanceRef, Cidr)> = Vec::new();

    for v in &inv.vms {
        let facts = vm_facts(v);
        if cfg.not_selected(&facts).is_some() {
            continue;
        }
        let r = &v.instance;
        let name = r.name().to_string();
        let node = nodes_by_name.get(r.name()).copied();
        let tokens: Vec<TokenFacts> = tokens_by_vm
            .get(r.name())
            .map(|ts| ts.iter().map(|t| token_facts(t, now)).collect())
            .unwrap_or_default();
        for a in &facts.aliases {
            if a.range_name.as_deref() == Some(cfg.pod_range_name.as_str())
                && let Some(c) = a.block
            {
                pod_aliases.push((r, c));
            }
        }
        let finding = |kind, step: Step| Finding {
            kind,
            subject: name.clone(),
            heal: Some((step, r.clone(), Some(name.clone()))),
            refused: None,
        };
        let Some(node) = node else {
            if facts
                .aliases
                .iter()
                .any(|a| a.range_name.as_deref() == Some(cfg.pod_range_name.as_str()))
            {
                out.push(finding(DriftKind::AliasWithoutNode, Step::ReleaseAlias));
            }
            let valid_token = tokens.iter().any(|t| !t.expired);
            if facts.joined && facts.status == "RUNNING" {
                // Never a new token for a VM that joined: its kubelet is restarted instead.
                let due = facts.kubelet_restarts.is_none_or(|r| {
                    r.count < KubeletRestarts::MAX && r.age >= KubeletRestarts::backoff(r.count)
                });
                out.push(Finding {
                    kind: DriftKind::NodeLost,
                    subject: name.clone(),
                    heal: due.then(|| (Step::Bootstrap, r.clone(), Some(name.clone()))),
                    refused: None,
                });
                continue;
            }
            // Only a RUNNING VM can be bootstrapped (a stopped one is, once it runs again).
            if !valid_token && facts.status == "RUNNING" {
                let mut f = if tokens.is_empty() && !facts.join_metadata {
                    finding(DriftKind::NeverBootstrapped, Step::Bootstrap)
                } else {
                    finding(DriftKind::BootstrapExpired, Step::Bootstrap)
                };
                // Re-minting is bounded: a VM that keeps not joining waits for its next
                // attempt (the count is in its metadata, where the sweep reads it).
                if crate::plan::BootstrapAttempts::next(facts.bootstrap_attempts).is_err() {
                    f.heal = None;
                }
                out.push(f);
            }
            continue;
        };
        let obs = Observed {
            instance: r.clone(),
            vm: Some(facts),
            node: Some(node_facts(node)),
            tokens,
        };
        // A Node under this VM's name that is not provably its own (no providerID and no
        // nodewire mark, or another VM's providerID): reported for a person, never healed.
        if let (Some(n), Some(vm)) = (&obs.node, &obs.vm)
            && let Err(plan) = crate::plan::node_is_the_vms(n, vm)
        {
            let why = match plan {
                crate::plan::Plan::Refuse(r) => r.to_string(),
                crate::plan::Plan::Ignore(w) => w,
                other => format!("{other:?}"),
            };
            out.push(Finding {
                kind: DriftKind::ProviderIdWrong,
                subject: name.clone(),
                heal: None,
                refused: Some(why),
            });
            continue;
        }
        // A step the planner would refuse (another VM's Node, a podCIDR outside the range)
        // is reported, not published: it would only be dead-lettered again on every run.
        let refusal = |step: Step| match crate::plan::plan(step, &obs, cfg) {
            crate::plan::Plan::Refuse(r) => Some(r.to_string()),
            _ => None,
        };
        for g in gaps(&obs, cfg) {
            let mut f = match g {
                Gap::Alias => finding(DriftKind::AliasMismatch, Step::AssignAlias),
                Gap::Tag => finding(DriftKind::TagMissing, Step::TagInstance),
                Gap::ProviderId => finding(DriftKind::ProviderIdWrong, Step::ProviderId),
                Gap::Taint => finding(DriftKind::TaintLeft, Step::Finalize),
                Gap::Token => finding(DriftKind::LeftoverToken, Step::Finalize),
                Gap::JoinMetadata => finding(DriftKind::LeftoverJoinMetadata, Step::Finalize),
                // Waiting for the IPAM controller (or the kubelet): not drift.
                Gap::NoPodCidr | Gap::NoNode => continue,
            };
            if let Some((step, _, _)) = &f.heal
                && let Some(why) = refusal(*step)
            {
                f.heal = None;
                f.refused = Some(why);
            }
            out.push(f);
        }
    }

    for n in &inv.nodes {
        let Some(r) = n
            .provider_id
            .as_deref()
            .and_then(|p| InstanceRef::from_provider_id(p).ok().flatten())
        else {
            continue;
        };
        // A Node of a VM that is not ours (another project, outside the prefix), or a Node
        // named outside the prefix, is not drift; nor is one whose VM's zone could not be
        // listed (its VM is unknown, not gone: never decommission from partial data).
        let ours = cfg.selector.admits(&r).is_ok() && cfg.selector.admits_name(&n.name).is_ok();
        if ours && !existing.contains(&r) && !unreachable(r.zone()) {
            out.push(Finding {
                kind: DriftKind::NodeWithoutVm,
                subject: n.name.clone(),
                heal: Some((Step::Decommission, r, Some(n.name.clone()))),
                refused: None,
            });
        }
    }

    for t in &inv.tokens {
        let Some(name) = t.instance.as_deref() else {
            continue;
        };
        if existing_names.contains(name) || cfg.selector.admits_name(name).is_err() {
            continue;
        }
        // Its VM may be in a zone the list could not reach (a token without a zone label
        // could be anywhere).
        if t.zone
            .as_deref()
            .map_or(!inv.unreachable_zones.is_empty(), unreachable)
        {
            continue;
        }
        let heal = t
            .zone
            .as_deref()
            .and_then(|z| InstanceRef::new(cfg.selector.project.as_str(), z, name).ok())
            .map(|r| (Step::Decommission, r, Some(name.to_string())));
        out.push(Finding {
            kind: DriftKind::OrphanToken,
            subject: name.to_string(),
            heal,
            refused: None,
        });
    }

    pod_aliases.sort_by_key(|(_, c)| *c);
    for (i, (a, ca)) in pod_aliases.iter().enumerate() {
        for (b, cb) in &pod_aliases[i + 1..] {
            if !ca.overlaps(cb) {
                break; // sorted by network: no later block can overlap
            }
            for who in [a, b] {
                out.push(Finding {
                    kind: DriftKind::AliasOverlap,
                    refused: None,
                    subject: who.name().to_string(),
                    heal: nodes_by_name.contains_key(who.name()).then(|| {
                        (
                            Step::AssignAlias,
                            (*who).clone(),
                            Some(who.name().to_string()),
                        )
                    }),
                });
            }
        }
    }
    out
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
    /// Steps left for the next run (over [`SweepLimits::max_steps`]).
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

/// The body of a sweep request (`{}` or `{"dryRun": true}`); an empty body is a real sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SweepRequest {
    #[serde(alias = "dry_run")]
    pub dry_run: bool,
}

impl Decode for SweepRequest {
    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(data).map_err(|e| DecodeError::Json(format!("sweep request: {e}")))
    }
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("publishing a step failed")]
    Publish(#[from] crate::bus::BusError),
}

impl crate::adapter::Classify for SweepError {
    fn is_retryable(&self) -> bool {
        match self {
            SweepError::Observe(e) => e.is_retryable(),
            SweepError::Publish(e) => e.is_retryable(),
        }
    }
}

/// What [`heal`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healed {
    pub findings: Vec<Finding>,
    /// Steps published (planned, in a dry run), one per VM at most.
    pub published: Vec<StepMessage>,
    pub cooling: usize,
    pub deferred: usize,
}

/// Assesses an inventory and publishes at most one step per VM — the first in chain order,
/// release before bootstrap — skipping the VMs in `cooling` (keys `projects/P/zones/Z/instances/N`) and stopping at
/// `limits.max_steps`, [`PUBLISH_CONCURRENCY`] publishes at a time (none in a dry run).
///
/// # Errors
/// [`SweepError::Publish`] when a step cannot be published.
pub async fn heal(
    deps: &Deps,
    inv: &Inventory,
    cfg: &PlanConfig,
    dry_run: bool,
    cooling: &BTreeSet<String>,
    limits: &SweepLimits,
    trace: &crate::trace::TraceContext,
) -> Result<Healed, SweepError> {
    use futures::StreamExt as _;
    let findings = assess(inv, cfg, time::OffsetDateTime::now_utc());
    // The first gap of each VM: the chain goes on from there by itself.
    let mut first: BTreeMap<String, (Step, &InstanceRef, &Option<String>)> = BTreeMap::new();
    for f in &findings {
        if let Some((step, r, node)) = &f.heal {
            let e = first.entry(r.to_string()).or_insert((*step, r, node));
            if release_first(*step) < release_first(e.0) {
                *e = (*step, r, node);
            }
        }
    }
    let mut out = Healed::default();
    for (key, (step, r, node)) in first {
        if cooling.contains(&key) {
            out.cooling += 1;
            continue;
        }
        if out.published.len() >= limits.max_steps {
            out.deferred += 1;
            continue;
        }
        let mut msg = StepMessage::new(
            step,
            r.clone(),
            Cause {
                source: CauseSource::Sweep,
                id: None,
            },
            trace.trace_id(),
        );
        msg.node.clone_from(node);
        out.published.push(msg);
    }
    if !dry_run {
        let publishes = out
            .published
            .clone()
            .into_iter()
            .map(|m| async move { deps.publish_step(&m, trace).await });
        let results: Vec<Result<String, crate::bus::BusError>> = futures::stream::iter(publishes)
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            r?;
        }
    }
    out.findings = findings;
    Ok(out)
}

fn release_first(s: Step) -> u8 {
    match s {
        Step::ReleaseAlias => 0,
        Step::Decommission => 1,
        Step::Bootstrap => 2,
        Step::AssignAlias => 3,
        Step::TagInstance => 4,
        Step::ProviderId => 5,
        Step::Finalize => 6,
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

/// Runs one sweep with the chain's clients: observe, assess, publish (unless `dry_run`),
/// report.
///
/// # Errors
/// [`SweepError`].
pub async fn run(
    deps: &ChainDeps,
    dry_run: bool,
    trace: &crate::trace::TraceContext,
) -> Result<Report, SweepError> {
    run_with(deps, dry_run, &deps.chain.sweep, trace).await
}

/// [`run`] with explicit bounds. A real run takes the sweep lock first (a dry run neither
/// takes it nor remembers anything), skips the VMs still cooling down, and on the way out
/// stores when it published a step for each VM.
///
/// # Errors
/// [`SweepError`].
pub async fn run_with(
    deps: &ChainDeps,
    dry_run: bool,
    limits: &SweepLimits,
    trace: &crate::trace::TraceContext,
) -> Result<Report, SweepError> {
    let started = Instant::now();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let holder = trace.trace_id().to_string();
    let state = if dry_run {
        None
    } else {
        match deps
            .kube
            .acquire_sweep(&holder, now, limits.hold)
            .await
            .map_err(ObserveError::from)?
        {
            Some(s) => Some(s),
            None => return Ok(skipped_report(dry_run, started)),
        }
    };
    let cooldown = i64::try_from(limits.cooldown.as_secs()).unwrap_or(i64::MAX);
    let cooling: BTreeSet<String> = state
        .as_ref()
        .map(|s| {
            s.healed
                .iter()
                .filter(|(_, t)| now.saturating_sub(**t) < cooldown)
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let result = async {
        let (inv, calls) = crate::observe::inventory(&deps.compute, &deps.kube).await?;
        let healed = heal(
            &deps.base, &inv, &deps.plan, dry_run, &cooling, limits, trace,
        )
        .await?;
        Ok::<_, SweepError>((inv, calls, healed))
    }
    .await;
    if let Some(mut s) = state {
        if let Ok((_, _, healed)) = &result {
            s.healed.retain(|_, t| now.saturating_sub(*t) < cooldown);
            for m in &healed.published {
                s.healed.insert(m.instance.to_string(), now);
            }
        }
        if let Err(e) = deps.kube.release_sweep(s).await {
            tracing::warn!(error = %e, "releasing the sweep lock failed; it expires by itself");
        }
    }
    let (inv, calls, healed) = result?;
    Ok(report(&inv, &healed, calls, dry_run, started))
}

fn skipped_report(dry_run: bool, started: Instant) -> Report {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::compute::{AliasRange, InstanceView, NicView};

    use crate::testing::plan_config as cfg;

    fn vm(name: &str, alias: Option<&str>, selected: bool) -> InstanceView {
        InstanceView {
            instance: InstanceRef::new("example-project", "us-central1-a", name).expect("ref"),
            id: Some(1),
            status: "RUNNING".into(),
            can_ip_forward: true,
            tags: vec!["k8s-node".into()],
            labels: if selected {
                BTreeMap::from([("cluster".to_string(), "demo".to_string())])
            } else {
                BTreeMap::new()
            },
            metadata: crate::act::compute::MetadataView::default(),
            service_accounts: vec![],
            nic0: Some(NicView {
                name: "nic0".into(),
                subnetwork: "projects/example-project/regions/us-central1/subnetworks/k8s-nodes"
                    .into(),
                network_ip: None,
                aliases: alias
                    .map(|a| {
                        vec![AliasRange {
                            cidr: a.into(),
                            range_name: Some("pods".into()),
                        }]
                    })
                    .unwrap_or_default(),
            }),
        }
    }

    fn node(name: &str, zone: &str, cidr: &str) -> NodeView {
        NodeView {
            name: name.into(),
            provider_id: Some(format!("gce://example-project/{zone}/{name}")),
            pod_cidr: Some(cidr.into()),
            taints: vec![],
            resource_version: Some("1".into()),
            created: None,
        }
    }

    fn kinds(f: &[Finding]) -> Vec<(DriftKind, String)> {
        let mut v: Vec<_> = f.iter().map(|x| (x.kind, x.subject.clone())).collect();
        v.sort();
        v
    }

    /// Issue 10, item 7: one step per VM (its first gap), none for a VM cooling down, none the
    /// planner would refuse (reported instead), and at most `max_steps` per run.
    #[tokio::test]
    async fn a_sweep_publishes_one_step_per_vm_within_its_bounds() {
        let mut a = vm("a", Some("10.4.9.0/24"), true); // alias mismatch …
        a.tags.clear(); // … and tag missing: one step (assign-alias), not two
        let mut b = vm("b", Some("10.4.2.0/24"), true);
        b.tags.clear();
        let c = vm("c", Some("10.4.3.0/24"), true);
        let mut other = node("c", "us-central1-a", "10.4.3.0/24");
        other.provider_id = Some("gce://example-project/us-central1-a/b".into());
        let inv = Inventory {
            vms: vec![a, b, c],
            nodes: vec![
                node("a", "us-central1-a", "10.4.1.0/24"),
                node("b", "us-central1-a", "10.4.2.0/24"),
                other, // another VM's Node under c's name: refused, reported
            ],
            tokens: vec![],
            unreachable_zones: vec![],
        };
        let (deps, bus) = crate::testing::deps("drift-sweep", &[]);
        let trace = crate::trace::TraceContext::new_root();
        let limits = SweepLimits::default();
        let h = heal(
            &deps,
            &inv,
            &cfg(),
            false,
            &BTreeSet::new(),
            &limits,
            &trace,
        )
        .await
        .expect("heal");
        let steps: Vec<(String, Step)> = h
            .published
            .iter()
            .map(|m| (m.instance.name().to_string(), m.step))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("a".to_string(), Step::AssignAlias),
                ("b".to_string(), Step::TagInstance)
            ]
        );
        assert_eq!(bus.published().len(), 2);
        let r = report(&inv, &h, BTreeMap::new(), false, Instant::now());
        assert!(
            r.refused
                .get("c")
                .is_some_and(|why| why.contains("providerID")),
            "{r:?}"
        );
        // a cooling down: only b; and a bound of one step a run defers the rest.
        let cooling =
            BTreeSet::from(
                ["projects/example-project/zones/us-central1-a/instances/a".to_string()],
            );
        let h = heal(&deps, &inv, &cfg(), true, &cooling, &limits, &trace)
            .await
            .expect("heal");
        assert_eq!((h.published.len(), h.cooling), (1, 1));
        let one = SweepLimits {
            max_steps: 1,
            ..limits
        };
        let h = heal(&deps, &inv, &cfg(), true, &BTreeSet::new(), &one, &trace)
            .await
            .expect("heal");
        assert_eq!((h.published.len(), h.deferred), (1, 1));
    }

    #[test]
    fn converged_has_no_findings() {
        let inv = Inventory {
            vms: vec![
                vm("a", Some("10.4.1.0/24"), true),
                vm("b", Some("10.4.2.0/24"), true),
            ],
            nodes: vec![
                node("a", "us-central1-a", "10.4.1.0/24"),
                node("b", "us-central1-a", "10.4.2.0/24"),
            ],
            tokens: vec![],
            unreachable_zones: vec![],
        };
        assert!(assess(&inv, &cfg(), time::OffsetDateTime::now_utc()).is_empty());
    }

    #[test]
    fn unselected_vms_are_neither_drift_nor_orphans() {
        // A VM outside the selector with a Node of its own: not ours, and not a Node without VM.
        let inv = Inventory {
            vms: vec![vm("control-plane", None, false)],
            nodes: vec![node("control-plane", "us-central1-a", "10.4.9.0/24")],
            tokens: vec![],
            unreachable_zones: vec![],
        };
        assert!(assess(&inv, &cfg(), time::OffsetDateTime::now_utc()).is_empty());
        // A Node naming a VM of another project is not ours to decommission.
        let mut n = node("x", "us-central1-a", "10.4.3.0/24");
        n.provider_id = Some("gce://other-project/us-central1-a/x".into());
        let inv = Inventory {
            vms: vec![],
            nodes: vec![n],
            tokens: vec![],
            unreachable_zones: vec![],
        };
        assert!(assess(&inv, &cfg(), time::OffsetDateTime::now_utc()).is_empty());
    }

    #[test]
    fn overlaps_and_orphans() {
        let inv = Inventory {
            vms: vec![
                vm("a", Some("10.4.1.0/24"), true),
                vm("b", Some("10.4.1.0/25"), true),
            ],
            nodes: vec![
                node("a", "us-central1-a", "10.4.1.0/24"),
                node("b", "us-central1-a", "10.4.2.0/24"),
                node("gone", "us-central1-b", "10.4.3.0/24"),
            ],
            tokens: vec![TokenInfo {
                instance_id: None,
                id: "abcdef".into(),
                instance: Some("ghost".into()),
                zone: Some("us-central1-c".into()),
                expiration: None,
                identity: None,
            }],
            unreachable_zones: vec![],
        };
        let f = assess(&inv, &cfg(), time::OffsetDateTime::now_utc());
        assert_eq!(
            kinds(&f),
            vec![
                (DriftKind::AliasMismatch, "b".into()),
                (DriftKind::NodeWithoutVm, "gone".into()),
                (DriftKind::OrphanToken, "ghost".into()),
                (DriftKind::AliasOverlap, "a".into()),
                (DriftKind::AliasOverlap, "b".into()),
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        let orphan = f
            .iter()
            .find(|x| x.kind == DriftKind::OrphanToken)
            .expect("orphan");
        assert!(
            matches!(&orphan.heal, Some((Step::Decommission, r, _)) if r.zone() == "us-central1-c")
        );
    }

    /// `aggregatedList` can be partial: a zone that could not be listed answers with an
    /// `UNREACHABLE` warning. Its VMs are unknown, not deleted: no Node of that zone is
    /// reported as node-without-vm (and decommissioned), no token of it as orphaned (issue 9,
    /// item 8). The same Node and token in a zone that was listed are drift.
    #[test]
    fn nothing_in_an_unreachable_zone_is_taken_for_gone() {
        let token = |zone: Option<&str>| TokenInfo {
            instance_id: None,
            id: "abcdef".into(),
            instance: Some("ghost".into()),
            zone: zone.map(str::to_string),
            expiration: None,
            identity: None,
        };
        let inv = |unreachable: Vec<String>, token_zone: Option<&str>| Inventory {
            vms: vec![vm("a", Some("10.4.1.0/24"), true)],
            nodes: vec![
                node("a", "us-central1-a", "10.4.1.0/24"),
                node("gone", "us-central1-b", "10.4.3.0/24"),
            ],
            tokens: vec![token(token_zone)],
            unreachable_zones: unreachable,
        };
        let now = time::OffsetDateTime::now_utc();
        let listed = assess(&inv(vec![], Some("us-central1-b")), &cfg(), now);
        assert_eq!(
            kinds(&listed),
            vec![
                (DriftKind::NodeWithoutVm, "gone".into()),
                (DriftKind::OrphanToken, "ghost".into())
            ]
        );
        let partial = inv(vec!["us-central1-b".into()], Some("us-central1-b"));
        assert!(assess(&partial, &cfg(), now).is_empty());
        // A token without a zone label could be anywhere: not orphaned while any zone is
        // unreachable.
        let unlabelled = inv(vec!["us-central1-b".into()], None);
        assert!(assess(&unlabelled, &cfg(), now).is_empty());
    }

    #[test]
    fn sweep_requests_decode() {
        assert_eq!(
            SweepRequest::decode(b"").expect("empty"),
            SweepRequest::default()
        );
        assert!(
            SweepRequest::decode(br#"{"dryRun": true}"#)
                .expect("camel")
                .dry_run
        );
        assert!(
            SweepRequest::decode(br#"{"dry_run": true}"#)
                .expect("snake")
                .dry_run
        );
        assert!(SweepRequest::decode(b"[").is_err());
    }
}
