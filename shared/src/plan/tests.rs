//! Table tests of every step, written as rows (every failing row is reported, not only the
//! first), and a property test: from any reachable partial state, applying the planned
//! actions (with the kubelet and the IPAM controller doing their part) reaches "wired" in a
//! bounded number of steps, and a wired node plans nothing.

use proptest::prelude::*;

use super::*;
use crate::testing::{
    ObservedExt as _, fresh, fresh_vm as vm, plan_config as cfg, pods, registered_node as node,
    token, vm_ref, wired,
};

const CHAIN: [Step; 5] = [
    Step::Bootstrap,
    Step::AssignAlias,
    Step::TagInstance,
    Step::ProviderId,
    Step::Finalize,
];

/// What a row expects of its plan.
enum Want {
    /// Exactly this plan.
    Is(Plan),
    /// A plan with this property (described by the row's name).
    That(fn(&Plan) -> bool),
    /// Some actions, then this step.
    Next(Step),
}

fn act(actions: Vec<Action>, next: Option<Step>) -> Want {
    Want::Is(Plan::Act { actions, next })
}

/// Runs `row` on every row and fails once, listing every row that failed (its message).
fn all_rows<R>(rows: Vec<R>, row: impl Fn(R) -> Option<String>) {
    let failures: Vec<String> = rows.into_iter().filter_map(row).collect();
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Plans every row: the plan must be as wanted.
fn check(rows: Vec<(&str, Step, Observed, Want)>) {
    let c = cfg();
    all_rows(rows, |(name, step, obs, want)| {
        let got = plan(step, &obs, &c);
        let ok = match &want {
            Want::Is(p) => *p == got,
            Want::That(f) => f(&got),
            Want::Next(n) => matches!(&got, Plan::Act { next: Some(x), .. } if x == n),
        };
        (!ok).then(|| format!("{name} ({step}): got {got:?}"))
    });
}

/// A `gaps` row: name, state, and what the gaps must satisfy.
type GapRow<'a> = (&'a str, Observed, fn(&[Gap]) -> bool);

/// Checks `gaps` row by row.
fn check_gaps(rows: Vec<GapRow<'_>>) {
    let c = cfg();
    all_rows(rows, |(name, obs, ok)| {
        let g = gaps(&obs, &c);
        (!ok(&g)).then(|| format!("{name}: got {g:?}"))
    });
}

#[test]
fn a_wired_node_has_no_gaps_and_plans_nothing() {
    assert!(gaps(&wired(), &cfg()).is_empty());
    check(
        CHAIN
            .iter()
            .map(|s| ("wired", *s, wired(), act(vec![], None)))
            .collect(),
    );
}

#[test]
fn each_gap_is_named() {
    check_gaps(vec![
        (
            "exactly one alias",
            wired().with_aliases(vec![pods("10.4.1.0/24"), pods("10.4.9.0/24")]),
            |g| g == [Gap::Alias],
        ),
        (
            "the alias must name the pod range",
            wired().with_aliases(vec![Alias::new("10.4.1.0/24", None)]),
            |g| g == [Gap::Alias],
        ),
        ("tag", wired().without_tag(), |g| g == [Gap::Tag]),
        ("providerID", wired().with_provider_id(None), |g| {
            g == [Gap::ProviderId]
        }),
        (
            "clean-up",
            wired()
                .with_taint()
                .with_token("abcdef", false)
                .with_join_metadata(),
            |g| g == [Gap::Taint, Gap::Token, Gap::JoinMetadata],
        ),
        ("podCIDR", wired().with_pod_cidr(None), |g| {
            g.contains(&Gap::NoPodCidr)
        }),
        ("node", wired().without_node(), |g| g.contains(&Gap::NoNode)),
    ]);
}

/// Bootstrap sets the node tags (issue 12: tags do not depend on the Node).
fn tags() -> Action {
    Action::AddTags(vec!["k8s-node".into()])
}

/// Pull mode (issue 12): bootstrap tags and mints nothing; finalize marks the VM joined after
/// lifting the taint; a wired node in pull mode carries that mark.
#[test]
fn pull_mode_table() {
    let c = PlanConfig {
        join_mode: crate::config::JoinMode::Pull,
        ..cfg()
    };
    let rows: Vec<(&str, Step, Observed, Plan)> = vec![
        (
            "fresh VM: tags only, no token, no metadata",
            Step::Bootstrap,
            fresh(),
            Plan::Act {
                actions: vec![tags()],
                next: None,
            },
        ),
        (
            "an expired token of a VM that never joined is revoked, none minted",
            Step::Bootstrap,
            fresh().with_token("aaaaaa", true),
            Plan::Act {
                actions: vec![tags(), Action::RevokeTokens(vec!["aaaaaa".into()])],
                next: None,
            },
        ),
    ];
    all_rows(rows, |(name, step, obs, want)| {
        let got = plan(step, &obs, &c);
        (got != want).then(|| format!("{name} ({step}): got {got:?}"))
    });
    // Finalize in pull mode: revoke, lift the taint, then mark (off the critical path).
    let mut w = wired();
    if let Some(n) = &mut w.node {
        n.unwired_taint = true;
    }
    if let Some(v) = &mut w.vm {
        v.joined = false;
    }
    let got = plan(Step::Finalize, &w.clone().with_token("bbbbbb", false), &c);
    assert_eq!(
        got,
        Plan::Act {
            actions: vec![
                Action::RevokeTokens(vec!["bbbbbb".into()]),
                Action::RemoveTaint,
                Action::ClearJoinMetadata,
                Action::AnnounceWired
            ],
            next: None
        }
    );
    // A node without the mark is not wired in pull mode; with it, it is.
    let mut unmarked = wired();
    if let Some(v) = &mut unmarked.vm {
        v.joined = false;
    }
    assert!(!is_wired(&unmarked, &c));
    let mut marked = unmarked.clone();
    if let Some(v) = &mut marked.vm {
        v.joined = true;
    }
    assert!(is_wired(&marked, &c), "{:?}", gaps(&marked, &c));
}

#[test]
fn bootstrap_table() {
    let pending = fresh().with_join_metadata().with_token("aaaaaa", false);
    check(vec![
        (
            "fresh VM",
            Step::Bootstrap,
            fresh(),
            act(vec![tags(), Action::Bootstrap], None),
        ),
        (
            "already bootstrapped with a valid token: wait for the kubelet, do nothing",
            Step::Bootstrap,
            pending.clone(),
            act(vec![tags()], None),
        ),
        (
            "the token expired without a Node: revoke it, mint a new one",
            Step::Bootstrap,
            pending.edit(|o| o.tokens[0].expired = true),
            act(
                vec![
                    tags(),
                    Action::RevokeTokens(vec!["aaaaaa".into()]),
                    Action::Bootstrap,
                ],
                None,
            ),
        ),
        (
            "joined already: hand over to the first open aspect",
            Step::Bootstrap,
            fresh().with_node(node()),
            act(vec![tags()], Some(Step::AssignAlias)),
        ),
        (
            "a VM still booting (STAGING) is expected to run: waited for within the delivery, no token yet",
            Step::Bootstrap,
            fresh().with_status("STAGING"),
            Want::That(|p| matches!(p, Plan::Expect(w) if w.contains("STAGING"))),
        ),
        (
            "a stopped VM (TERMINATED) gets no join token",
            Step::Bootstrap,
            fresh().with_status("TERMINATED"),
            Want::That(|p| matches!(p, Plan::Ignore(w) if w.contains("TERMINATED"))),
        ),
        (
            "a suspended VM gets no join token",
            Step::Bootstrap,
            fresh().with_status("SUSPENDED"),
            Want::That(|p| matches!(p, Plan::Ignore(_))),
        ),
        (
            "no IP forwarding: refused",
            Step::Bootstrap,
            fresh().without_ip_forwarding(),
            Want::That(|p| matches!(p, Plan::Refuse(Refusal::NoIpForwarding(_)))),
        ),
        (
            "another subnet: refused",
            Step::Bootstrap,
            fresh().on_subnet("projects/example-project/regions/us-central1/subnetworks/other"),
            Want::That(|p| matches!(p, Plan::Refuse(Refusal::WrongSubnet { .. }))),
        ),
        (
            "without the selector label: ignored, naming it",
            Step::Bootstrap,
            fresh().without_labels(),
            Want::That(|p| matches!(p, Plan::Ignore(w) if w.contains("cluster=demo"))),
        ),
        (
            "the VM is gone: ignored",
            Step::Bootstrap,
            fresh().without_vm(),
            Want::That(|p| matches!(p, Plan::Ignore(_))),
        ),
    ]);
}

/// Issue 10, item 2: with an allow-list of node service accounts, a VM running as another
/// (or none) gets no join token.
#[test]
fn only_vms_running_as_an_allowed_service_account_are_bootstrapped() {
    let mut c = cfg();
    c.node_service_accounts = ["nodes@example-project.iam.gserviceaccount.com".to_string()].into();
    let mints = |o: &Observed, c: &PlanConfig| matches!(plan(Step::Bootstrap, o, c), Plan::Act { ref actions, .. } if actions.contains(&Action::Bootstrap));
    assert!(mints(&fresh(), &c));
    let other = fresh().edit(|o| {
        o.vm_mut().service_accounts = vec!["123-compute@developer.gserviceaccount.com".into()];
    });
    assert!(!mints(&other, &c));
    assert!(!mints(
        &fresh().edit(|o| o.vm_mut().service_accounts.clear()),
        &c
    ));
    assert!(mints(&other, &cfg()), "no allow-list, no condition");
}

/// Issue 10, item 4: a VM that never joins gets a handful of join tokens a day, not one per
/// sweep: the count and time of the last are in its metadata.
#[test]
fn re_minting_join_tokens_is_bounded() {
    let attempts = |count: u32, secs: u64| {
        fresh().edit(|o| {
            o.vm_mut().bootstrap_attempts = Some(Attempts {
                count,
                age: std::time::Duration::from_secs(secs),
            });
        })
    };
    let mints = |o: &Observed| matches!(plan(Step::Bootstrap, o, &cfg()), Plan::Act { ref actions, .. } if actions.contains(&Action::Bootstrap));
    assert!(mints(&fresh()), "the first token");
    assert!(!mints(&attempts(1, 600)), "10 min after the first: wait");
    assert!(mints(&attempts(1, 1900)), "past 30 min: the second");
    assert!(!mints(&attempts(3, 3600)), "the fourth waits 2 h");
    assert!(mints(&attempts(3, 2 * 3600 + 1)));
    assert!(!mints(&attempts(6, 20 * 3600)), "six a day at most");
    assert!(mints(&attempts(6, 24 * 3600)), "a new day");
    // A hostile or broken value spends the budget; a time in the future is "just now".
    let now = 1_800_000_000;
    assert_eq!(
        Attempts::parse("junk", now, &Budget::JOIN_TOKENS).count,
        Budget::JOIN_TOKENS.max
    );
    assert_eq!(
        Attempts::parse("1@1900000000", now, &Budget::JOIN_TOKENS).age,
        std::time::Duration::ZERO
    );
    // Minting records the attempt; finalize removes the record with the join metadata.
    let after = apply(&attempts(1, 1900), &[Action::Bootstrap], &cfg());
    assert_eq!(
        after
            .vm
            .as_ref()
            .and_then(|v| v.bootstrap_attempts)
            .map(|a| a.count),
        Some(2)
    );
}

/// "VM alive, Node gone" on a VM that joined before: never a token (kubeadm's preflight would
/// fail there), a bounded number of kubelet restarts instead, then a person.
#[test]
fn a_lost_node_restarts_the_kubelet_a_bounded_number_of_times() {
    let joined = fresh().edit(|o| o.vm_mut().joined = true);
    let restarts = |count: u32, secs: u64| {
        joined.clone().edit(|o| {
            o.vm_mut().kubelet_restarts = Some(Attempts {
                count,
                age: std::time::Duration::from_secs(secs),
            });
        })
    };
    check(vec![
        (
            "first loss: restart the kubelet, mint nothing",
            Step::Bootstrap,
            joined.clone(),
            act(vec![tags(), Action::RestartKubelet(1)], None),
        ),
        (
            "restart asked for a minute ago: wait for the Node",
            Step::Bootstrap,
            restarts(1, 60),
            Want::That(|p| matches!(p, Plan::Wait(_))),
        ),
        (
            "past the backoff: the next restart",
            Step::Bootstrap,
            restarts(1, 301),
            act(vec![tags(), Action::RestartKubelet(2)], None),
        ),
        (
            "the second waits twice as long",
            Step::Bootstrap,
            restarts(2, 400),
            Want::That(|p| matches!(p, Plan::Wait(_))),
        ),
        (
            "the budget spent: a person decides, nothing is done",
            Step::Bootstrap,
            restarts(Budget::KUBELET_RESTARTS.max, 100_000),
            Want::That(|p| matches!(p, Plan::Ignore(w) if w.contains("needs a person"))),
        ),
        (
            "the Node came back: finalize clears the restart request",
            Step::Finalize,
            wired().edit(|o| {
                o.vm_mut().joined = true;
                o.vm_mut().kubelet_restarts = Some(Attempts {
                    count: 1,
                    age: std::time::Duration::from_secs(5),
                });
            }),
            act(vec![Action::ClearJoinMetadata, Action::AnnounceWired], None),
        ),
    ]);
    // Junk in the metadata value never buys more restarts.
    assert_eq!(
        Attempts::parse("lots", 0, &Budget::KUBELET_RESTARTS).count,
        Budget::KUBELET_RESTARTS.max
    );
    assert_eq!(
        Attempts::parse(&Attempts::value(2, 1_000), 1_060, &Budget::KUBELET_RESTARTS),
        Attempts {
            count: 2,
            age: std::time::Duration::from_secs(60)
        }
    );
}

#[test]
fn assign_alias_table() {
    let o = wired().without_alias();
    check(vec![
        (
            "after the alias the node is wired: nothing next",
            Step::AssignAlias,
            o.clone(),
            act(
                vec![Action::SetAlias {
                    cidr: "10.4.1.0/24".parse().expect("c"),
                    range_name: "pods".into(),
                }],
                None,
            ),
        ),
        (
            "then finalize while the taint is on",
            Step::AssignAlias,
            o.clone().with_taint(),
            Want::Next(Step::Finalize),
        ),
        (
            "then tag-instance while a tag is missing",
            Step::AssignAlias,
            o.clone().without_tag(),
            Want::Next(Step::TagInstance),
        ),
        (
            "no podCIDR yet: expected from the IPAM controller, waited for within the delivery",
            Step::AssignAlias,
            o.clone().with_pod_cidr(None),
            Want::That(|p| matches!(p, Plan::Expect(_))),
        ),
        (
            "the Node registered: its join token is revoked at once, before the alias",
            Step::AssignAlias,
            o.clone().with_token("abcdef", false),
            act(
                vec![
                    Action::RevokeTokens(vec!["abcdef".into()]),
                    Action::SetAlias {
                        cidr: "10.4.1.0/24".parse().expect("c"),
                        range_name: "pods".into(),
                    },
                ],
                None,
            ),
        ),
        (
            "podCIDR outside the pod range: refused",
            Step::AssignAlias,
            o.clone().with_pod_cidr(Some("192.168.0.0/24")),
            Want::That(|p| matches!(p, Plan::Refuse(Refusal::PodCidrOutsideRange { .. }))),
        ),
        (
            "podCIDR that is no CIDR: refused",
            Step::AssignAlias,
            o.clone().with_pod_cidr(Some("garbage")),
            Want::That(|p| matches!(p, Plan::Refuse(Refusal::InvalidPodCidr { .. }))),
        ),
        (
            "no Node: ignored",
            Step::AssignAlias,
            o.clone().without_node(),
            Want::That(|p| matches!(p, Plan::Ignore(_))),
        ),
        (
            "a wrong alias is replaced by exactly the podCIDR",
            Step::AssignAlias,
            o.with_aliases(vec![pods("10.4.7.0/24")]),
            Want::That(|p| matches!(p, Plan::Act { actions, .. } if actions.len() == 1)),
        ),
    ]);
}

#[test]
fn tag_provider_id_finalize_table() {
    let o = wired()
        .with_tags(&["base"])
        .with_provider_id(None)
        .with_taint();
    check(vec![
        (
            "tag, then provider-id",
            Step::TagInstance,
            o.clone(),
            act(
                vec![Action::AddTags(vec!["k8s-node".into()])],
                Some(Step::ProviderId),
            ),
        ),
        (
            "provider-id, then tag-instance",
            Step::ProviderId,
            o.clone(),
            act(
                vec![Action::SetProviderId(vm_ref().provider_id())],
                Some(Step::TagInstance),
            ),
        ),
        (
            "another VM's providerID: refused",
            Step::ProviderId,
            o.clone()
                .with_provider_id(Some("gce://example-project/us-central1-a/other")),
            Want::That(|p| matches!(p, Plan::Refuse(Refusal::ProviderIdConflict(_)))),
        ),
        (
            "finalize sends the chain back while an aspect is open",
            Step::Finalize,
            o,
            act(vec![], Some(Step::TagInstance)),
        ),
        (
            "finalize cleans up when none is",
            Step::Finalize,
            wired()
                .with_taint()
                .with_token("abcdef", false)
                .with_join_metadata(),
            act(
                vec![
                    Action::RevokeTokens(vec!["abcdef".into()]),
                    Action::ClearJoinMetadata,
                    Action::RemoveTaint,
                    Action::AnnounceWired,
                ],
                None,
            ),
        ),
    ]);
}

#[test]
fn decommission_and_release_table() {
    let gone = fresh()
        .without_vm()
        .with_node(node())
        .with_token("abcdef", false);
    let keep = Alias::new("10.128.0.50/32", None);
    check(vec![
        (
            "the VM is gone: delete its Node and tokens",
            Step::Decommission,
            gone.clone(),
            act(
                vec![
                    Action::DeleteNode,
                    Action::RevokeTokens(vec!["abcdef".into()]),
                ],
                None,
            ),
        ),
        (
            "a Node of the same name on another VM is not deleted",
            Step::Decommission,
            gone.clone()
                .with_provider_id(Some("gce://example-project/us-central1-b/vm-1")),
            act(vec![Action::RevokeTokens(vec!["abcdef".into()])], None),
        ),
        (
            "a Node without providerID is never deleted (a kubeadm control-plane Node has none)",
            Step::Decommission,
            gone.with_provider_id(None),
            act(vec![Action::RevokeTokens(vec!["abcdef".into()])], None),
        ),
        (
            "the VM exists: nothing to decommission",
            Step::Decommission,
            wired(),
            Want::That(|p| matches!(p, Plan::Ignore(_))),
        ),
        (
            "the Node is gone: release the pod range, keep other aliases",
            Step::ReleaseAlias,
            wired()
                .without_node()
                .edit(|o| o.vm_mut().aliases.push(keep.clone())),
            act(
                vec![Action::ReleaseAlias {
                    keep: vec![keep.clone()],
                }],
                None,
            ),
        ),
        (
            "the Node exists: nothing to release",
            Step::ReleaseAlias,
            wired(),
            Want::That(|p| matches!(p, Plan::Ignore(_))),
        ),
    ]);
}

// ---- property test ----

/// The world's other actors: the kubelet registers once a valid join config is there; the
/// IPAM controller assigns a podCIDR. Each returns the step their audit event would trigger.
fn environment(o: &mut Observed, cidr: &str) -> Option<Step> {
    let vm = o.vm.as_ref()?;
    if o.node.is_none() {
        if vm.join_metadata && o.tokens.iter().any(|t| !t.expired) {
            o.node = Some(NodeFacts {
                name: "vm-1".into(),
                provider_id: Some(vm.instance.provider_id()),
                pod_cidr: None,
                unwired_taint: true,
                registered_at: None,
                uid: None,
                instance_id: None,
                deleting: false,
                network_unavailable: false,
            });
            return Some(Step::AssignAlias);
        }
        return None;
    }
    if o.node.as_ref().is_some_and(|n| n.pod_cidr.is_none()) {
        if let Some(n) = o.node.as_mut() {
            n.pod_cidr = Some(cidr.to_string());
        }
        return Some(Step::AssignAlias);
    }
    None
}

/// The step the drift sweep would publish for the first gap.
fn sweep_entry(o: &Observed, c: &PlanConfig) -> Step {
    let g = gaps(o, c);
    if g.contains(&Gap::NoNode) {
        return Step::Bootstrap;
    }
    g.iter().find_map(|g| g.step()).unwrap_or(Step::Finalize)
}

fn arb_observed() -> impl Strategy<Value = (Observed, Step)> {
    let cidrs = prop::sample::select(vec!["10.4.1.0/24", "10.4.2.0/24", "10.4.200.0/24"]);
    (
        prop::option::of((
            prop::bool::ANY,
            prop::option::of(cidrs.clone()),
            prop::bool::ANY,
        )),
        prop::collection::vec(cidrs, 0..3),
        prop::bool::ANY,
        prop::bool::ANY,
        prop::collection::vec(prop::bool::ANY, 0..3),
        prop::sample::select(CHAIN.to_vec()),
    )
        .prop_map(|(node, aliases, tagged, join, tokens, step)| {
            let mut v = vm();
            v.aliases = aliases.into_iter().map(pods).collect();
            if tagged {
                v.tags.push("k8s-node".into());
            }
            v.join_metadata = join;
            // Reachable under nodewire: a Node without providerID carries nodewire's mark (an
            // unmarked one is someone else's and is never wired; `unmarked_nodes_are_left_alone`).
            let node = node.map(|(pid, cidr, taint)| NodeFacts {
                name: "vm-1".into(),
                provider_id: pid.then(|| vm_ref().provider_id()),
                pod_cidr: cidr.map(str::to_string),
                unwired_taint: taint || !pid,
                registered_at: None,
                uid: None,
                instance_id: None,
                deleting: false,
                network_unavailable: false,
            });
            let tokens = tokens
                .into_iter()
                .enumerate()
                .map(|(i, e)| token(&format!("t{i}"), e))
                .collect();
            (
                Observed {
                    instance: vm_ref(),
                    vm: Some(v),
                    node,
                    tokens,
                },
                step,
            )
        })
}

/// Issue 10, item 3: a step acts on a Node only when it is provably the VM's.
#[test]
fn unmarked_nodes_are_left_alone_and_another_vms_node_is_refused() {
    let c = cfg();
    let mut o = fresh();
    o.node = Some(NodeFacts {
        name: "vm-1".into(),
        provider_id: None,
        pod_cidr: Some("10.4.1.0/24".into()),
        unwired_taint: false,
        registered_at: None,
        uid: None,
        instance_id: None,
        deleting: false,
        network_unavailable: false,
    });
    for step in CHAIN {
        assert!(
            matches!(plan(step, &o, &c), Plan::Ignore(ref why) if why.contains("not provably")),
            "{step}: {:?}",
            plan(step, &o, &c)
        );
    }
    // Another VM's Node (a forged step naming this VM while the Node was registered for
    // another): never its podCIDR as this VM's alias, never its taint or tokens.
    if let Some(n) = o.node.as_mut() {
        n.provider_id = Some("gce://example-project/us-central1-b/other-vm".into());
        n.unwired_taint = true;
    }
    for step in CHAIN {
        assert!(
            matches!(
                plan(step, &o, &c),
                Plan::Refuse(Refusal::ProviderIdConflict(_))
            ),
            "{step}"
        );
    }
    // Marked, or naming this VM: worked on.
    if let Some(n) = o.node.as_mut() {
        n.provider_id = None;
    }
    assert!(matches!(plan(Step::AssignAlias, &o, &c), Plan::Act { .. }));
}

proptest! {
    #[test]
    fn any_reachable_state_converges_to_wired((start, first_step) in arb_observed()) {
        let c = cfg();
        let mut o = start;
        let mut queue = vec![first_step];
        let mut steps = 0;
        while !is_wired(&o, &c) {
            prop_assert!(steps < 25, "not wired after {steps} steps: {o:?}, gaps {:?}", gaps(&o, &c));
            steps += 1;
            let step = match queue.pop() {
                Some(s) => s,
                None => environment(&mut o, "10.4.3.0/24").unwrap_or_else(|| sweep_entry(&o, &c)),
            };
            match plan(step, &o, &c) {
                Plan::Act { actions, next } => {
                    o = apply(&o, &actions, &c);
                    if let Some(n) = next {
                        queue.push(n);
                    }
                }
                Plan::Wait(_) | Plan::Expect(_) => {
                    if let Some(s) = environment(&mut o, "10.4.3.0/24") {
                        queue.push(s);
                    }
                }
                // A step for an aspect that cannot be worked on yet (an assign-alias before the
                // Node exists) is dropped; the events that follow start the chain again.
                Plan::Ignore(_) => {}
                Plan::Refuse(r) => prop_assert!(false, "{step}: refused {r:?} for {o:?}"),
            }
        }
        for s in CHAIN {
            prop_assert_eq!(plan(s, &o, &c), Plan::Act { actions: vec![], next: None });
        }
    }

    #[test]
    fn planned_actions_are_idempotent((start, step) in arb_observed()) {
        // Applying a step's actions and planning the same step again plans nothing new for it.
        let c = cfg();
        if let Plan::Act { actions, .. } = plan(step, &start, &c) {
            let after = apply(&start, &actions, &c);
            if let Plan::Act { actions: again, .. } = plan(step, &after, &c) {
                prop_assert!(again.iter().all(|a| !actions.contains(a) || matches!(a, Action::AnnounceWired)),
                    "{step}: {actions:?} then {again:?}");
            }
        }
    }
}

/// Issue 21: which instance a Node is. `wired()` with ids: the VM is instance 2, created at
/// t=1000; the Node was registered at t=1030.
fn with_instances(o: Observed, recorded: Option<&str>, registered_at: i64) -> Observed {
    o.edit(|o| {
        let v = o.vm_mut();
        v.id = Some("2".into());
        v.created_at = Some(1000);
        let n = o.node_mut();
        n.instance_id = recorded.map(Into::into);
        n.registered_at = Some(registered_at);
        n.uid = Some("uid-old".into());
    })
}

#[test]
fn a_node_is_one_instances() {
    let c = cfg();
    // Recorded for this instance: wired, nothing to do.
    let own = with_instances(wired(), Some("2"), 1030);
    assert_eq!(
        pairing(
            own.node.as_ref().expect("node"),
            own.vm.as_ref().expect("vm")
        ),
        Pairing::Recorded
    );
    assert!(is_wired(&own, &c), "{:?}", gaps(&own, &c));

    // Recorded for another instance (the VM was recreated under its name): never wired, and
    // every aspect of it is the previous instance's.
    let stale = with_instances(wired(), Some("1"), 1030);
    assert_eq!(gaps(&stale, &c).first(), Some(&Gap::StaleNode));
    assert!(!is_wired(&stale, &c));
    // bootstrap deletes it, preconditioned on its uid, then does what it does for a VM
    // without a Node (here, metadata mode: the join token); any other step hands over to
    // bootstrap and touches nothing.
    let delete = Action::DeleteStaleNode {
        uid: Some("uid-old".into()),
    };
    assert_eq!(c.join_mode, JoinMode::Metadata);
    assert_eq!(
        plan(Step::Bootstrap, &stale, &c),
        Plan::Act {
            actions: vec![delete.clone(), Action::Bootstrap],
            next: None
        }
    );
    // Still booting: deleted now, the token once it runs (the next bootstrap waits for it).
    let booting = stale
        .clone()
        .edit(|o| o.vm_mut().status = VmStatus::Staging);
    assert_eq!(
        plan(Step::Bootstrap, &booting, &c),
        Plan::Act {
            actions: vec![delete],
            next: Some(Step::Bootstrap)
        }
    );
    // Deleted already but held by a finalizer: waited for, not deleted again in a loop.
    let held = stale.clone().edit(|o| o.node_mut().deleting = true);
    assert!(matches!(plan(Step::Bootstrap, &held, &c), Plan::Wait(_)));
    for step in [
        Step::AssignAlias,
        Step::TagInstance,
        Step::ProviderId,
        Step::Finalize,
    ] {
        assert_eq!(
            plan(step, &stale, &c),
            Plan::Act {
                actions: vec![],
                next: Some(Step::Bootstrap)
            },
            "{step}"
        );
    }
    // No record, registered before this VM was created: a previous instance's too.
    let before = with_instances(wired(), None, 999);
    assert!(matches!(
        pairing(
            before.node.as_ref().expect("node"),
            before.vm.as_ref().expect("vm")
        ),
        Pairing::Stale(_)
    ));
    assert!(!is_wired(&before, &c));
    // Without a uid nothing is deleted.
    let no_uid = before.clone().edit(|o| o.node_mut().uid = None);
    assert!(matches!(
        plan(Step::Bootstrap, &no_uid, &c),
        Plan::Ignore(_)
    ));

    // No record, registered after the VM was created (or in the same second): proven this
    // instance's, and provider-id records it; it is not wired before the record is there.
    for at in [1000, 1030] {
        let unrecorded = with_instances(wired(), None, at);
        assert_eq!(gaps(&unrecorded, &c), vec![Gap::ProviderId], "{at}");
        assert_eq!(
            plan(Step::ProviderId, &unrecorded, &c),
            Plan::Act {
                actions: vec![Action::RecordInstance("2".into())],
                next: None
            }
        );
    }
    // The times unknown: nothing is recorded, the step waits.
    let unknown = with_instances(wired(), None, 1030).edit(|o| o.node_mut().registered_at = None);
    assert!(matches!(
        plan(Step::ProviderId, &unknown, &c),
        Plan::Wait(_)
    ));
}

/// Issue 22, the alias-first order, step by step.
#[test]
fn alias_first_allocates_while_the_vm_boots_and_copies_into_the_pod_cidr() {
    let c = PlanConfig {
        range_order: RangeOrder::AliasFirst,
        join_mode: JoinMode::Pull,
        ..cfg()
    };
    let allocate = Action::AllocateAlias {
        prefix: NODE_MASK,
        ranges: vec!["pods".into()],
    };
    let tags = Action::AddTags(vec!["k8s-node".into()]);
    // A new VM, RUNNING, no Node: tags and the allocation by size, nothing else (pull mode).
    assert_eq!(
        plan(Step::Bootstrap, &fresh(), &c),
        Plan::Act {
            actions: vec![tags.clone(), allocate.clone()],
            next: None
        }
    );
    // Still booting: expected, nothing allocated yet (updateNetworkInterface needs RUNNING).
    assert!(matches!(
        plan(Step::Bootstrap, &fresh().with_status("STAGING"), &c),
        Plan::Expect(_)
    ));
    // It has its alias already (a redelivery, or its template asked for /24): none more.
    let allocated = fresh()
        .with_tag("k8s-node")
        .with_aliases(vec![pods("10.4.7.0/24")]);
    assert_eq!(
        plan(Step::Bootstrap, &allocated, &c),
        Plan::Act {
            actions: vec![],
            next: None
        }
    );
    // The Node registered without podCIDR (no IPAM controller): the alias is copied.
    let registered = allocated.clone().with_node(node()).with_pod_cidr(None);
    match plan(Step::AssignAlias, &registered, &c) {
        Plan::Act { actions, next } => {
            assert_eq!(
                actions,
                vec![Action::SetPodCidr("10.4.7.0/24".parse().expect("cidr"))]
            );
            assert!(next.is_some(), "the chain goes on: {next:?}");
        }
        other => panic!("{other:?}"),
    }
    // No alias yet when the Node registered: bootstrap allocates it, then hands back.
    let early = fresh()
        .with_tag("k8s-node")
        .with_node(node())
        .with_pod_cidr(None);
    assert_eq!(
        plan(Step::AssignAlias, &early, &c),
        Plan::Act {
            actions: vec![],
            next: Some(Step::Bootstrap)
        }
    );
    match plan(Step::Bootstrap, &early, &c) {
        Plan::Act { actions, next } => {
            assert_eq!(actions, vec![allocate.clone()]);
            assert_eq!(next, Some(Step::AssignAlias));
        }
        other => panic!("{other:?}"),
    }
    // A podCIDR someone else set is never changed: the alias follows it, none is allocated.
    let theirs = allocated
        .clone()
        .with_node(node())
        .with_pod_cidr(Some("10.4.9.0/24"));
    assert_eq!(
        plan(Step::Bootstrap, &theirs, &c),
        Plan::Act {
            actions: vec![],
            next: Some(Step::AssignAlias)
        }
    );
    match plan(Step::AssignAlias, &theirs, &c) {
        Plan::Act { actions, .. } => assert_eq!(
            actions,
            vec![Action::SetAlias {
                cidr: "10.4.9.0/24".parse().expect("cidr"),
                range_name: "pods".into()
            }]
        ),
        other => panic!("{other:?}"),
    }
    // A VM without Node keeps its range: release-alias releases nothing in this order.
    assert_eq!(
        plan(Step::ReleaseAlias, &allocated, &c),
        Plan::Act {
            actions: vec![],
            next: None
        }
    );
    // The cluster-first order never allocates nor writes a podCIDR.
    let cf = PlanConfig {
        join_mode: JoinMode::Pull,
        ..cfg()
    };
    assert_eq!(
        plan(Step::Bootstrap, &fresh(), &cf),
        Plan::Act {
            actions: vec![tags],
            next: None
        }
    );
    assert!(matches!(
        plan(Step::AssignAlias, &early, &cf),
        Plan::Expect(_)
    ));
}

/// Issue 22, item 2: several pod ranges. The allocation names them all, in order (the executor
/// takes the first with room); a VM holding a block of any of them is allocated nothing more,
/// its podCIDR is copied from it and its alias is named after the range that holds it; a
/// podCIDR outside all of them is refused, naming every range.
#[test]
fn several_pod_ranges_are_used_in_order_and_each_counts_as_a_pod_range() {
    let mut c = PlanConfig {
        range_order: RangeOrder::AliasFirst,
        join_mode: JoinMode::Pull,
        ..cfg()
    };
    c.pod_ranges = PodRanges::new(vec![
        crate::names::PodRange {
            name: "pods".into(),
            cidr: "10.4.0.0/16".parse().expect("cidr"),
        },
        crate::names::PodRange {
            name: "pods-b".into(),
            cidr: "10.8.0.0/16".parse().expect("cidr"),
        },
    ])
    .expect("ranges");
    match plan(Step::Bootstrap, &fresh(), &c) {
        Plan::Act { actions, .. } => assert!(
            actions.contains(&Action::AllocateAlias {
                prefix: NODE_MASK,
                ranges: vec!["pods".into(), "pods-b".into()],
            }),
            "{actions:?}"
        ),
        other => panic!("{other:?}"),
    }
    let in_b = fresh()
        .with_tag("k8s-node")
        .with_aliases(vec![Alias::new("10.8.3.0/24", Some("pods-b".into()))]);
    assert_eq!(
        plan(Step::Bootstrap, &in_b, &c),
        Plan::Act {
            actions: vec![],
            next: None
        }
    );
    let registered = in_b.clone().with_node(node()).with_pod_cidr(None);
    match plan(Step::AssignAlias, &registered, &c) {
        Plan::Act { actions, .. } => assert_eq!(
            actions,
            vec![Action::SetPodCidr("10.8.3.0/24".parse().expect("cidr"))]
        ),
        other => panic!("{other:?}"),
    }
    // Wired with a block of the second range, named after it.
    let wired_b = in_b
        .clone()
        .with_node(node())
        .with_pod_cidr(Some("10.8.3.0/24"));
    assert!(
        !gaps(&wired_b, &c).contains(&Gap::Alias),
        "{:?}",
        gaps(&wired_b, &c)
    );
    assert!(!gaps(&wired_b, &c).contains(&Gap::NoPodCidr));
    // The same block named after the wrong range is not the wanted alias.
    let misnamed = wired_b.clone().with_aliases(vec![pods("10.8.3.0/24")]);
    assert!(gaps(&misnamed, &c).contains(&Gap::Alias));
    // Outside every range: refused, naming both.
    let outside = in_b.with_node(node()).with_pod_cidr(Some("10.9.0.0/24"));
    match plan(Step::AssignAlias, &outside, &c) {
        Plan::Refuse(r) => {
            let text = r.to_string();
            assert!(
                text.contains("pods (10.4.0.0/16), pods-b (10.8.0.0/16)"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 22: a Node registered with `NetworkUnavailable` = `True` (where a cloud provider
/// manages routes) is not wired until it is `False`; `finalize` sets it once everything else
/// holds, before the taint goes; the sweep's gap maps to `finalize`.
#[test]
fn network_unavailable_is_cleared_by_finalize_before_the_taint() {
    let c = cfg();
    let o = wired()
        .with_taint()
        .edit(|o| o.node_mut().network_unavailable = true);
    assert!(gaps(&o, &c).contains(&Gap::NetworkUnavailable));
    assert_eq!(Gap::NetworkUnavailable.step(), Some(Step::Finalize));
    match plan(Step::Finalize, &o, &c) {
        Plan::Act { actions, .. } => {
            let net = actions
                .iter()
                .position(|a| *a == Action::SetNetworkAvailable);
            let taint = actions.iter().position(|a| *a == Action::RemoveTaint);
            assert!(net.is_some() && net < taint, "{actions:?}");
            let after = apply(&o, &actions, &c);
            assert!(!gaps(&after, &c).contains(&Gap::NetworkUnavailable));
        }
        other => panic!("{other:?}"),
    }
    // Not before the alias routes the podCIDR: finalize sends the chain back first.
    let unrouted = o.clone().with_aliases(vec![]);
    assert!(matches!(
        plan(Step::Finalize, &unrouted, &c),
        Plan::Act { ref actions, next: Some(Step::AssignAlias) } if actions.is_empty()
    ));
    // A wired Node without the condition is not touched.
    match plan(Step::Finalize, &wired().with_taint(), &c) {
        Plan::Act { actions, .. } => assert!(!actions.contains(&Action::SetNetworkAvailable)),
        other => panic!("{other:?}"),
    }
}
