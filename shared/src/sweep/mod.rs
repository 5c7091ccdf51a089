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
//! Three parts: `assess` decides (pure: facts and a clock in, findings out), `report`
//! presents (drift kinds, the report, the `drift` log lines), and this module runs a sweep
//! (observe, assess, publish, remember the cooldown).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::act::deps::{ChainDeps, Deps};
use crate::event::{Cause, CauseSource, Decode, DecodeError, Step, StepMessage};
use crate::names::InstanceRef;
use crate::observe::ObserveError;
use crate::plan::PlanConfig;

mod assess;
mod report;

pub use assess::{Finding, assess};
use report::skipped_report;
pub use report::{AFFECTED_CAP, DriftKind, Report, report};

/// Steps published at a time.
pub const PUBLISH_CONCURRENCY: usize = 16;

pub use crate::config::SweepLimits;
pub use crate::observe::Inventory;

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

impl crate::error::Classify for SweepError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::compute::{AliasRange, InstanceView, NicView};
    use crate::act::k8s::{NodeView, TokenInfo};

    use crate::testing::plan_config as cfg;

    fn vm(name: &str, alias: Option<&str>, selected: bool) -> InstanceView {
        InstanceView {
            instance: InstanceRef::new("example-project", "us-central1-a", name).expect("ref"),
            id: Some(1),
            created: None,
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
            uid: None,
            instance_id: Some("1".into()),
            deleting: false,
            network_unavailable: false,
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
