//! `nodewire status` and the tables of `nodewire sweep`.

use nodewire::act::deps::ChainDeps;
use nodewire::event::Step;
use nodewire::names::InstanceRef;
use nodewire::observe::{node_facts, token_facts, vm_facts};
use nodewire::plan::{Gap, Observed, PlanConfig, TokenFacts, gaps, may_join};
use nodewire::sweep::Report;
use serde::Serialize;

/// One VM (or orphaned Node) and each aspect of "wired".
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub vm: String,
    pub zone: String,
    pub node: Option<String>,
    pub pod_cidr: Option<String>,
    pub alias: bool,
    pub tag: bool,
    pub provider_id: bool,
    pub taint_removed: bool,
    pub no_token: bool,
    pub no_join_metadata: bool,
    pub state: String,
    pub missing: Vec<String>,
    /// Why the VM will not join (or not yet), when the planner says it may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub will_not_join: Option<WillNotJoin>,
}

/// The planner's reason a VM may not join, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WillNotJoin {
    /// `plan::Ineligible::kind`: `wrong-service-account`, `no-ip-forwarding`, ….
    pub kind: String,
    /// What is wrong and what to change.
    pub why: String,
}

fn gap_name(g: Gap) -> &'static str {
    match g {
        Gap::NoNode => "node",
        Gap::StaleNode => "node of a previous instance",
        Gap::NoPodCidr => "podCIDR",
        Gap::Alias => "alias",
        Gap::Tag => "tag",
        Gap::ProviderId => "providerID",
        Gap::NetworkUnavailable => "NetworkUnavailable",
        Gap::Taint => "taint",
        Gap::Token => "token",
        Gap::JoinMetadata => "kubeadm-join",
    }
}

/// Reads everything and reduces it to rows (only `name` when given).
///
/// # Errors
/// When a list fails or the clients are not configured.
pub async fn collect(deps: &ChainDeps, name: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let cfg = &deps.plan;
    let (inv, _) = nodewire::observe::inventory(&deps.compute, &deps.kube)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for v in &inv.vms {
        // A VM of another project or outside the name prefix is not nodewire's to report; one
        // whose labels the selector does not admit is, with why it will not join.
        if cfg.selector.admits(&v.instance).is_err() || name.is_some_and(|n| n != v.instance.name())
        {
            continue;
        }
        let node = inv.nodes.iter().find(|n| n.name == v.instance.name());
        let tokens: Vec<TokenFacts> = inv
            .tokens
            .iter()
            .filter(|t| t.instance.as_deref() == Some(v.instance.name()))
            .map(|t| token_facts(t, now))
            .collect();
        let obs = Observed {
            instance: v.instance.clone(),
            vm: Some(vm_facts(v, now)),
            node: node.map(node_facts),
            tokens,
        };
        rows.push(row(&obs, cfg));
    }
    for n in &inv.nodes {
        let has_vm = inv.vms.iter().any(|v| v.instance.name() == n.name);
        // A Node named outside the selector's prefix is not ours to report.
        if has_vm || name.is_some_and(|x| x != n.name) || cfg.selector.admits_name(&n.name).is_err()
        {
            continue;
        }
        rows.push(Row {
            vm: "(none)".into(),
            zone: String::new(),
            node: Some(n.name.clone()),
            pod_cidr: n.pod_cidr.clone(),
            alias: false,
            tag: false,
            provider_id: false,
            taint_removed: !n.has_taint(nodewire::names::UNWIRED_TAINT),
            no_token: true,
            no_join_metadata: true,
            missing: vec!["vm".into()],
            state: "node without VM".into(),
            will_not_join: None,
        });
    }
    mark_exhausted(deps, &mut rows).await;
    Ok(rows)
}

/// The state of a Node waiting for its podCIDR whose last allocation found every pod range full:
/// nodewire recorded a `CIDRNotAvailable` Event on it (issue 22). When the Events cannot be
/// read, the rows keep "waiting for podCIDR" and a warning says why.
async fn mark_exhausted(deps: &ChainDeps, rows: &mut [Row]) {
    const WAITING: &str = "waiting for podCIDR";
    if !rows.iter().any(|r| r.state == WAITING) {
        return;
    }
    match deps.kube.nodes_with_event("CIDRNotAvailable").await {
        Ok(names) => {
            for r in rows.iter_mut().filter(|r| r.state == WAITING) {
                if r.node.as_ref().is_some_and(|n| names.contains(n)) {
                    r.state = "no pod range free (Event CIDRNotAvailable)".into();
                }
            }
        }
        Err(e) => eprintln!("nodewire: the Nodes' Events could not be read: {e}"),
    }
}

/// The row of one observed VM. Pure. Whether a VM without its Node may join is the planner's
/// one decision (`plan::eligibility`), the same the `join` service refuses with: a VM it
/// refuses is shown as "will not join", with the reason and what to change.
pub fn row(obs: &Observed, cfg: &PlanConfig) -> Row {
    let vm = obs.vm.as_ref();
    let node = obs.node.as_ref();
    // A Node of this name that is not provably the VM's is in the way, not this VM's progress;
    // so is a previous instance's Node (issue 21): never reported as this VM's.
    let foreign_node = match (vm, node) {
        (Some(v), Some(n)) => {
            nodewire::plan::node_is_the_vms(n, v).is_err()
                || matches!(
                    nodewire::plan::pairing(n, v),
                    nodewire::plan::Pairing::Stale(_)
                )
        }
        _ => false,
    };
    let refusal = match vm {
        Some(v) if node.is_none() || foreign_node => may_join(v, node, cfg, None).err(),
        _ => None,
    };
    let stale = matches!((vm, node), (Some(v), Some(n)) if matches!(nodewire::plan::pairing(n, v), nodewire::plan::Pairing::Stale(_)));
    let g = if stale {
        vec![Gap::StaleNode]
    } else if foreign_node {
        vec![Gap::NoNode]
    } else {
        gaps(obs, cfg)
    };
    let state = if let Some(e) = &refusal {
        match e {
            e if e.is_wait() => "booting".to_string(),
            // Healed by a kubelet restart nodewire asks for (bounded), not by a join.
            nodewire::plan::Ineligible::JoinedBefore(_) => "node lost".to_string(),
            // bootstrap deletes it; the VM joins then.
            e if e.is_replacing() => "replacing a previous instance's node".to_string(),
            _ => "will not join".to_string(),
        }
    } else if g.is_empty() {
        "wired".to_string()
    } else if g.contains(&Gap::NoNode) {
        if obs.tokens.iter().any(|t| !t.expired) {
            "joining".into()
        } else if cfg.join_mode == nodewire::config::JoinMode::Pull {
            // Pull mode: nothing is minted until the VM asks the join service.
            "waiting for the VM's join request".into()
        } else {
            "not bootstrapped".into()
        }
    } else if g.contains(&Gap::NoPodCidr) {
        "waiting for podCIDR".into()
    } else {
        "wiring".into()
    };
    let ours = node.filter(|_| !foreign_node);
    Row {
        vm: obs.instance.name().to_string(),
        zone: obs.instance.zone().to_string(),
        node: node.map(|n| n.name.clone()),
        pod_cidr: ours.and_then(|n| n.pod_cidr.clone()),
        alias: ours.is_some() && !g.contains(&Gap::Alias) && !g.contains(&Gap::NoPodCidr),
        tag: !g.contains(&Gap::Tag),
        provider_id: ours.is_some() && !g.contains(&Gap::ProviderId),
        taint_removed: ours.is_some() && !g.contains(&Gap::Taint),
        no_token: !g.contains(&Gap::Token),
        no_join_metadata: !g.contains(&Gap::JoinMetadata),
        missing: g.iter().map(|x| gap_name(*x).to_string()).collect(),
        state,
        will_not_join: refusal.map(|e| WillNotJoin {
            kind: e.kind().to_string(),
            why: e.to_string(),
        }),
    }
}

/// Reads one VM, its Node and tokens, after checking that the VM is nodewire's (project and
/// prefix from its name; labels too when it exists).
///
/// # Errors
/// When the instance path is invalid, the VM is not nodewire's, or a read fails.
pub async fn observe_ours(deps: &ChainDeps, instance: &str) -> anyhow::Result<Observed> {
    let r: InstanceRef = instance
        .parse()
        .map_err(|e| anyhow::anyhow!("--instance: {e}"))?;
    let not_ours =
        |e: nodewire::select::NotOurs| anyhow::anyhow!("{e}: the step functions would ignore it");
    deps.plan.selector.admits(&r).map_err(not_ours)?;
    let obs = nodewire::observe::one_vm(
        &deps.compute,
        &deps.kube,
        &r,
        r.name(),
        nodewire::observe::Tokens::Read,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(vm) = &obs.vm {
        deps.plan
            .selector
            .admits_vm(&vm.instance, &vm.labels)
            .map_err(not_ours)?;
    }
    Ok(obs)
}

/// The step to start for an observed VM: the first open aspect, `None` when wired or waiting.
pub fn first_step(obs: &Observed, cfg: &nodewire::plan::PlanConfig) -> Option<Step> {
    if obs.vm.is_none() {
        return (obs.node.is_some() || !obs.tokens.is_empty()).then_some(Step::Decommission);
    }
    let g = gaps(obs, cfg);
    if g.contains(&Gap::NoNode) {
        return (!obs.tokens.iter().any(|t| !t.expired)).then_some(Step::Bootstrap);
    }
    g.iter().find_map(|x| x.step())
}

fn mark(b: bool) -> &'static str {
    if b { "ok" } else { "-" }
}

/// Prints rows as a table.
pub fn print_rows(rows: &[Row]) {
    println!(
        "{:<24} {:<18} {:<18} {:<5} {:<5} {:<8} {:<6} {:<6} {:<8} STATE",
        "VM", "ZONE", "POD CIDR", "ALIAS", "TAG", "PROVIDER", "TAINT", "TOKEN", "JOIN-MD"
    );
    for r in rows {
        let state = match (&r.will_not_join, r.missing.is_empty()) {
            (Some(w), _) => format!("{}: {}", r.state, w.why),
            (None, true) => r.state.clone(),
            (None, false) => format!("{} (missing: {})", r.state, r.missing.join(", ")),
        };
        println!(
            "{:<24} {:<18} {:<18} {:<5} {:<5} {:<8} {:<6} {:<6} {:<8} {}",
            r.vm,
            r.zone,
            r.pod_cidr.as_deref().unwrap_or("-"),
            mark(r.alias),
            mark(r.tag),
            mark(r.provider_id),
            mark(r.taint_removed),
            mark(r.no_token),
            mark(r.no_join_metadata),
            state
        );
    }
}

/// Prints a sweep report as a drift table.
pub fn print_report(r: &Report) {
    println!(
        "swept {} VM(s), {} Node(s), {} token(s) in {} ms{}",
        r.vms,
        r.nodes,
        r.tokens,
        r.duration_ms,
        if r.dry_run {
            " (dry run: nothing published)"
        } else {
            ""
        }
    );
    if r.drift.is_empty() {
        println!("no drift");
    } else {
        println!("{:<26} {:>5}  AFFECTED", "DRIFT", "COUNT");
        for (kind, n) in &r.drift {
            let names = r
                .affected
                .get(kind)
                .map(|v| v.join(", "))
                .unwrap_or_default();
            let kind = serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            println!("{kind:<26} {n:>5}  {names}");
        }
    }
    let calls: Vec<String> = r
        .api_calls
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "steps {}: {}; list calls: {}",
        if r.dry_run { "planned" } else { "published" },
        r.steps,
        calls.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use nodewire::plan::{NodeFacts, VmStatus};
    use nodewire::testing::{ObservedExt as _, fresh, plan_config, registered_node, wired};

    use super::*;

    /// The node service accounts are configured, as in production.
    fn cfg() -> PlanConfig {
        PlanConfig {
            node_service_accounts: ["nodes@example-project.iam.gserviceaccount.com".to_string()]
                .into(),
            join_mode: nodewire::config::JoinMode::Pull,
            ..plan_config()
        }
    }

    /// The row's state, its reason's kind and text.
    fn refusal(obs: &Observed) -> (String, String, String) {
        let r = row(obs, &cfg());
        let w = r
            .will_not_join
            .unwrap_or_else(|| panic!("no reason in {:?}", r.state));
        (r.state, w.kind, w.why)
    }

    /// Issue 19, item 2: every condition the `join` service refuses a VM on is shown by
    /// `status` with why and what to change, instead of "waiting for the VM's join request".
    #[test]
    fn a_vm_that_will_not_join_says_why_and_what_to_change() {
        let cases: Vec<(&str, Observed, &str, &[&str])> = vec![
            (
                "created without the node service account (gcloud's default)",
                fresh().edit(|o| {
                    o.vm_mut().service_accounts =
                        vec!["123-compute@developer.gserviceaccount.com".into()]
                }),
                "wrong-service-account",
                &[
                    "123-compute@developer.gserviceaccount.com",
                    "--service-account=nodes@",
                ],
            ),
            (
                "no service account at all",
                fresh().edit(|o| o.vm_mut().service_accounts.clear()),
                "wrong-service-account",
                &["no service account"],
            ),
            (
                "no IP forwarding",
                fresh().without_ip_forwarding(),
                "no-ip-forwarding",
                &["--can-ip-forward"],
            ),
            (
                "another subnet",
                fresh().edit(|o| {
                    o.vm_mut().subnet = nodewire::names::SubnetRef::from_link(
                        "projects/example-project/regions/us-central1/subnetworks/default",
                    )
                }),
                "wrong-subnet",
                &["default", "--subnet=k8s-nodes"],
            ),
            (
                "without the selector's labels",
                fresh().edit(|o| o.vm_mut().labels.clear()),
                "not-selected",
                &["cluster"],
            ),
            (
                "stopped",
                fresh().edit(|o| o.vm_mut().status = VmStatus::Terminated),
                "not-running",
                &["TERMINATED", "instances start"],
            ),
            (
                "a Node of its name that is another VM's",
                fresh().with_node(NodeFacts {
                    provider_id: Some("gce://example-project/us-central1-b/vm-1".into()),
                    ..registered_node()
                }),
                "node-exists",
                &["kubectl delete node vm-1"],
            ),
            (
                "a Node of its name without providerID or nodewire's taint",
                fresh().with_node(NodeFacts {
                    provider_id: None,
                    unwired_taint: false,
                    ..registered_node()
                }),
                "node-exists",
                &["not VM", "kubectl delete node vm-1"],
            ),
        ];
        for (what, obs, kind, says) in cases {
            let (state, k, why) = refusal(&obs);
            assert_eq!(state, "will not join", "{what}");
            assert_eq!(k, kind, "{what}: {why}");
            for s in says {
                assert!(why.contains(s), "{what}: {why:?} does not say {s:?}");
            }
        }
    }

    /// Issue 21: a wired-looking Node recorded for another instance (the VM was recreated under
    /// its name) is never reported wired, nor as the VM's: it is being replaced.
    #[test]
    fn a_previous_instances_node_is_never_wired() {
        let c = cfg();
        let wired_for = |recorded: &str| {
            let mut o = wired();
            o.vm_mut().id = Some("2".into());
            o.vm_mut().created_at = Some(1000);
            o.vm_mut().joined = true;
            o.node_mut().instance_id = Some(recorded.into());
            o.node_mut().registered_at = Some(1030);
            o
        };
        assert_eq!(row(&wired_for("2"), &c).state, "wired");
        let r = row(&wired_for("1"), &c);
        assert_eq!(r.state, "replacing a previous instance's node");
        assert!(!r.provider_id && !r.alias && r.pod_cidr.is_none(), "{r:?}");
        assert_eq!(r.missing, vec!["node of a previous instance".to_string()]);
        let w = r.will_not_join.expect("a reason");
        assert_eq!(w.kind, "stale-node");
        assert!(w.why.contains("instance 1"), "{}", w.why);
    }

    /// Issue 20, item 5: a VM that joined before gets no new join credential; `status` says
    /// its Node is lost (the kubelet restart heals it), not that it waits for a join request.
    #[test]
    fn a_vm_that_joined_before_is_a_lost_node_not_a_join() {
        let r = row(&fresh().edit(|o| o.vm_mut().joined = true), &cfg());
        assert_eq!(r.state, "node lost");
        let w = r.will_not_join.expect("a reason");
        assert_eq!(w.kind, "joined-before");
        assert!(w.why.contains("kubeadm reset"), "{}", w.why);
    }

    #[test]
    fn a_vm_that_may_join_or_is_booting_is_not_refused() {
        let r = row(&fresh(), &cfg());
        assert_eq!(r.state, "waiting for the VM's join request");
        assert!(r.will_not_join.is_none());
        let r = row(
            &fresh().edit(|o| o.vm_mut().status = VmStatus::Staging),
            &cfg(),
        );
        assert_eq!(r.state, "booting");
        assert_eq!(r.will_not_join.map(|w| w.kind).as_deref(), Some("booting"));
        // Its own Node: the wiring is shown, not a refusal.
        let r = row(&wired(), &cfg());
        assert!(r.will_not_join.is_none());
        assert_ne!(r.state, "will not join");
    }
}
