//! `nodewire status` and the tables of `nodewire sweep`.

use nodewire::deps::ChainDeps;
use nodewire::event::Step;
use nodewire::names::InstanceRef;
use nodewire::observe::{node_facts, token_facts, vm_facts};
use nodewire::plan::{Gap, Observed, TokenFacts, gaps};
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
}

fn gap_name(g: Gap) -> &'static str {
    match g {
        Gap::NoNode => "node",
        Gap::NoPodCidr => "podCIDR",
        Gap::Alias => "alias",
        Gap::Tag => "tag",
        Gap::ProviderId => "providerID",
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
        let facts = vm_facts(v);
        if cfg.not_selected(&facts).is_some() || name.is_some_and(|n| n != v.instance.name()) {
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
            vm: Some(facts),
            node: node.map(node_facts),
            tokens,
        };
        let g = gaps(&obs, cfg);
        let state = if g.is_empty() {
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
        rows.push(Row {
            vm: v.instance.name().to_string(),
            zone: v.instance.zone().to_string(),
            node: node.map(|n| n.name.clone()),
            pod_cidr: node.and_then(|n| n.pod_cidr.clone()),
            alias: node.is_some() && !g.contains(&Gap::Alias) && !g.contains(&Gap::NoPodCidr),
            tag: !g.contains(&Gap::Tag),
            provider_id: node.is_some() && !g.contains(&Gap::ProviderId),
            taint_removed: node.is_some() && !g.contains(&Gap::Taint),
            no_token: !g.contains(&Gap::Token),
            no_join_metadata: !g.contains(&Gap::JoinMetadata),
            missing: g.iter().map(|x| gap_name(*x).to_string()).collect(),
            state,
        });
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
            taint_removed: !n.has_taint(nodewire::act::k8s::UNWIRED_TAINT),
            no_token: true,
            no_join_metadata: true,
            missing: vec!["vm".into()],
            state: "node without VM".into(),
        });
    }
    Ok(rows)
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
        let state = if r.missing.is_empty() {
            r.state.clone()
        } else {
            format!("{} (missing: {})", r.state, r.missing.join(", "))
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
