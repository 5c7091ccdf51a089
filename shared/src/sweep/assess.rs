//! The drift sweep's decisions: from an [`Inventory`] and the planner's configuration, every
//! aspect that drifted from "wired", each with the step that heals it or the planner's reason
//! to refuse. Pure: the facts come from `observe`, the clock is passed in, nothing is read or
//! published here.

use std::collections::{BTreeSet, HashMap};

use crate::act::k8s::{NodeView, TokenInfo};
use crate::event::Step;
use crate::names::{Cidr, InstanceRef};
use crate::observe::{Inventory, node_facts, token_facts, vm_facts};
use crate::plan::{Attempts, Budget, Gap, Observed, PlanConfig, TokenFacts, VmStatus, gaps};

use super::report::DriftKind;

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
        let facts = vm_facts(v, now);
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
            if a.range_name
                .as_deref()
                .is_some_and(|n| cfg.pod_ranges.has_name(n))
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
            // Alias-first: a VM holds its range before its Node exists; not drift.
            if cfg.range_order == crate::config::RangeOrder::ClusterFirst
                && facts.aliases.iter().any(|a| {
                    a.range_name
                        .as_deref()
                        .is_some_and(|n| cfg.pod_ranges.has_name(n))
                })
            {
                out.push(finding(DriftKind::AliasWithoutNode, Step::ReleaseAlias));
            }
            let valid_token = tokens.iter().any(|t| !t.expired);
            if facts.joined && facts.status == VmStatus::Running {
                // Never a new token for a VM that joined: its kubelet is restarted instead.
                let due = Attempts::next(facts.kubelet_restarts, &Budget::KUBELET_RESTARTS).is_ok();
                out.push(Finding {
                    kind: DriftKind::NodeLost,
                    subject: name.clone(),
                    heal: due.then(|| (Step::Bootstrap, r.clone(), Some(name.clone()))),
                    refused: None,
                });
                continue;
            }
            // Only a RUNNING VM can be bootstrapped (a stopped one is, once it runs again).
            if !valid_token && facts.status == VmStatus::Running {
                let mut f = if tokens.is_empty() && !facts.join_metadata {
                    finding(DriftKind::NeverBootstrapped, Step::Bootstrap)
                } else {
                    finding(DriftKind::BootstrapExpired, Step::Bootstrap)
                };
                // Re-minting is bounded: a VM that keeps not joining waits for its next
                // attempt (the count is in its metadata, where the sweep reads it).
                if Attempts::next(facts.bootstrap_attempts, &Budget::JOIN_TOKENS).is_err() {
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
        // A previous instance's Node under this VM's name (issue 21): bootstrap deletes it.
        if let (Some(n), Some(vm)) = (&obs.node, &obs.vm)
            && let crate::plan::Pairing::Stale(_) = crate::plan::pairing(n, vm)
        {
            out.push(Finding {
                kind: DriftKind::NodeOfPreviousInstance,
                subject: name.clone(),
                heal: Some((Step::Bootstrap, r.clone(), Some(name.clone()))),
                refused: None,
            });
            continue;
        }
        // A Node under this VM's name that is not provably its own (no providerID and no
        // nodewire mark, or another VM's providerID): reported for a person, never healed.
        if let (Some(n), Some(vm)) = (&obs.node, &obs.vm)
            && let Err(plan) = crate::plan::node_is_the_vms(n, vm)
        {
            let why = plan.reason();
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
                Gap::NetworkUnavailable => finding(DriftKind::NetworkUnavailable, Step::Finalize),
                Gap::Taint => finding(DriftKind::TaintLeft, Step::Finalize),
                Gap::Token => finding(DriftKind::LeftoverToken, Step::Finalize),
                Gap::JoinMetadata => finding(DriftKind::LeftoverJoinMetadata, Step::Finalize),
                // Alias-first: nodewire is the allocator, a Node without podCIDR is its gap.
                Gap::NoPodCidr if cfg.range_order == crate::config::RangeOrder::AliasFirst => {
                    finding(DriftKind::PodCidrMissing, Step::AssignAlias)
                }
                // Waiting for the IPAM controller (or the kubelet): not drift.
                Gap::NoPodCidr | Gap::NoNode => continue,
                // Reported above.
                Gap::StaleNode => continue,
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
