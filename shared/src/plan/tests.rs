//! Table tests of every step, and a property test: from any reachable partial state, applying
//! the planned actions (with the kubelet and the IPAM controller doing their part) reaches
//! "wired" in a bounded number of steps, and a wired node plans nothing.

use proptest::prelude::*;

use super::*;

fn cfg() -> PlanConfig {
    PlanConfig {
        selector: crate::select::Selector {
            project: "example-project".into(),
            name_prefix: None,
            labels: BTreeMap::from([("cluster".to_string(), "demo".to_string())]),
        },
        subnet: ("us-central1".into(), "k8s-nodes".into()),
        pod_range_name: "pods".into(),
        pod_range: "10.4.0.0/16".parse().expect("cidr"),
        node_tags: vec!["k8s-node".into()],
    }
}

fn vm_ref() -> InstanceRef {
    InstanceRef::new("example-project", "us-central1-a", "vm-1").expect("ref")
}

fn vm() -> VmFacts {
    VmFacts {
        instance: vm_ref(),
        labels: BTreeMap::from([("cluster".to_string(), "demo".to_string())]),
        can_ip_forward: true,
        subnet_link: Some("https://www.googleapis.com/compute/v1/projects/example-project/regions/us-central1/subnetworks/k8s-nodes".into()),
        aliases: vec![],
        tags: vec!["base".into()],
        join_metadata: false,
    }
}

fn node() -> NodeFacts {
    NodeFacts {
        name: "vm-1".into(),
        provider_id: Some(vm_ref().provider_id()),
        pod_cidr: Some("10.4.1.0/24".into()),
        unwired_taint: true,
    }
}

fn pods(c: &str) -> Alias {
    Alias {
        cidr: c.into(),
        range_name: Some("pods".into()),
    }
}

fn wired() -> Observed {
    let mut v = vm();
    v.aliases = vec![pods("10.4.1.0/24")];
    v.tags.push("k8s-node".into());
    let mut n = node();
    n.unwired_taint = false;
    Observed {
        instance: vm_ref(),
        vm: Some(v),
        node: Some(n),
        tokens: vec![],
    }
}

fn token(id: &str, expired: bool) -> TokenFacts {
    TokenFacts {
        id: id.into(),
        expired,
    }
}

const CHAIN: [Step; 5] = [
    Step::Bootstrap,
    Step::AssignAlias,
    Step::TagInstance,
    Step::ProviderId,
    Step::Finalize,
];

#[test]
fn a_wired_node_has_no_gaps_and_plans_nothing() {
    let o = wired();
    assert!(gaps(&o, &cfg()).is_empty());
    for s in CHAIN {
        assert_eq!(
            plan(s, &o, &cfg()),
            Plan::Act {
                actions: vec![],
                next: None
            },
            "{s}"
        );
    }
}

#[test]
fn each_gap_is_named() {
    let mut o = wired();
    o.vm.as_mut().expect("vm").aliases = vec![pods("10.4.1.0/24"), pods("10.4.9.0/24")];
    assert_eq!(gaps(&o, &cfg()), vec![Gap::Alias], "exactly one alias");
    let mut o = wired();
    o.vm.as_mut().expect("vm").aliases = vec![Alias {
        cidr: "10.4.1.0/24".into(),
        range_name: None,
    }];
    assert_eq!(
        gaps(&o, &cfg()),
        vec![Gap::Alias],
        "the alias must name the pod range"
    );
    let mut o = wired();
    o.vm.as_mut().expect("vm").tags.clear();
    assert_eq!(gaps(&o, &cfg()), vec![Gap::Tag]);
    let mut o = wired();
    o.node.as_mut().expect("node").provider_id = None;
    assert_eq!(gaps(&o, &cfg()), vec![Gap::ProviderId]);
    let mut o = wired();
    o.node.as_mut().expect("node").unwired_taint = true;
    o.tokens.push(token("abcdef", false));
    o.vm.as_mut().expect("vm").join_metadata = true;
    assert_eq!(
        gaps(&o, &cfg()),
        vec![Gap::Taint, Gap::Token, Gap::JoinMetadata]
    );
    let mut o = wired();
    o.node.as_mut().expect("node").pod_cidr = None;
    assert!(gaps(&o, &cfg()).contains(&Gap::NoPodCidr));
    let mut o = wired();
    o.node = None;
    assert!(gaps(&o, &cfg()).contains(&Gap::NoNode));
}

#[test]
fn bootstrap_table() {
    let fresh = Observed {
        instance: vm_ref(),
        vm: Some(vm()),
        node: None,
        tokens: vec![],
    };
    assert_eq!(
        plan(Step::Bootstrap, &fresh, &cfg()),
        Plan::Act {
            actions: vec![Action::Bootstrap],
            next: None
        }
    );
    // Already bootstrapped with a valid token: wait for the kubelet, do nothing.
    let mut o = fresh.clone();
    o.vm.as_mut().expect("vm").join_metadata = true;
    o.tokens.push(token("aaaaaa", false));
    assert_eq!(
        plan(Step::Bootstrap, &o, &cfg()),
        Plan::Act {
            actions: vec![],
            next: None
        }
    );
    // The token expired without a Node: revoke it, mint a new one.
    o.tokens[0].expired = true;
    assert_eq!(
        plan(Step::Bootstrap, &o, &cfg()),
        Plan::Act {
            actions: vec![
                Action::RevokeTokens(vec!["aaaaaa".into()]),
                Action::Bootstrap
            ],
            next: None
        }
    );
    // Joined already: hand over to the first open aspect.
    let mut o = fresh.clone();
    o.node = Some(node());
    assert_eq!(
        plan(Step::Bootstrap, &o, &cfg()),
        Plan::Act {
            actions: vec![],
            next: Some(Step::AssignAlias)
        }
    );
    let mut o = fresh.clone();
    o.vm.as_mut().expect("vm").can_ip_forward = false;
    assert!(matches!(
        plan(Step::Bootstrap, &o, &cfg()),
        Plan::Refuse(Refusal::NoIpForwarding(_))
    ));
    let mut o = fresh.clone();
    o.vm.as_mut().expect("vm").subnet_link =
        Some("projects/example-project/regions/us-central1/subnetworks/other".into());
    assert!(matches!(
        plan(Step::Bootstrap, &o, &cfg()),
        Plan::Refuse(Refusal::WrongSubnet { .. })
    ));
    let mut o = fresh.clone();
    o.vm.as_mut().expect("vm").labels.clear();
    assert!(
        matches!(plan(Step::Bootstrap, &o, &cfg()), Plan::Ignore(ref w) if w.contains("cluster=demo"))
    );
    let gone = Observed {
        instance: vm_ref(),
        vm: None,
        node: None,
        tokens: vec![],
    };
    assert!(matches!(
        plan(Step::Bootstrap, &gone, &cfg()),
        Plan::Ignore(_)
    ));
}

#[test]
fn assign_alias_table() {
    let mut o = wired();
    o.vm.as_mut().expect("vm").aliases.clear();
    assert_eq!(
        plan(Step::AssignAlias, &o, &cfg()),
        Plan::Act {
            actions: vec![Action::SetAlias {
                cidr: "10.4.1.0/24".parse().expect("c"),
                range_name: "pods".into()
            }],
            next: None
        },
        "after the alias the node is wired: nothing next"
    );
    let mut o2 = o.clone();
    o2.node.as_mut().expect("node").unwired_taint = true;
    assert!(matches!(
        plan(Step::AssignAlias, &o2, &cfg()),
        Plan::Act {
            next: Some(Step::Finalize),
            ..
        }
    ));
    let mut o3 = o.clone();
    o3.vm.as_mut().expect("vm").tags.clear();
    assert!(matches!(
        plan(Step::AssignAlias, &o3, &cfg()),
        Plan::Act {
            next: Some(Step::TagInstance),
            ..
        }
    ));
    let mut w = o.clone();
    w.node.as_mut().expect("node").pod_cidr = None;
    assert!(matches!(plan(Step::AssignAlias, &w, &cfg()), Plan::Wait(_)));
    let mut r = o.clone();
    r.node.as_mut().expect("node").pod_cidr = Some("192.168.0.0/24".into());
    assert!(matches!(
        plan(Step::AssignAlias, &r, &cfg()),
        Plan::Refuse(Refusal::PodCidrOutsideRange { .. })
    ));
    let mut r = o.clone();
    r.node.as_mut().expect("node").pod_cidr = Some("garbage".into());
    assert!(matches!(
        plan(Step::AssignAlias, &r, &cfg()),
        Plan::Refuse(Refusal::InvalidPodCidr { .. })
    ));
    let mut n = o.clone();
    n.node = None;
    assert!(matches!(
        plan(Step::AssignAlias, &n, &cfg()),
        Plan::Ignore(_)
    ));
    // A wrong alias is replaced by exactly the podCIDR.
    let mut x = o.clone();
    x.vm.as_mut().expect("vm").aliases = vec![pods("10.4.7.0/24")];
    assert!(
        matches!(plan(Step::AssignAlias, &x, &cfg()), Plan::Act { ref actions, .. } if actions.len() == 1)
    );
}

#[test]
fn tag_provider_id_finalize_table() {
    let mut o = wired();
    o.vm.as_mut().expect("vm").tags = vec!["base".into()];
    o.node.as_mut().expect("node").provider_id = None;
    o.node.as_mut().expect("node").unwired_taint = true;
    assert_eq!(
        plan(Step::TagInstance, &o, &cfg()),
        Plan::Act {
            actions: vec![Action::AddTags(vec!["k8s-node".into()])],
            next: Some(Step::ProviderId)
        }
    );
    assert_eq!(
        plan(Step::ProviderId, &o, &cfg()),
        Plan::Act {
            actions: vec![Action::SetProviderId(vm_ref().provider_id())],
            next: Some(Step::TagInstance)
        }
    );
    o.node.as_mut().expect("node").provider_id =
        Some("gce://example-project/us-central1-a/other".into());
    assert!(matches!(
        plan(Step::ProviderId, &o, &cfg()),
        Plan::Refuse(Refusal::ProviderIdConflict { .. })
    ));
    // Finalize sends the chain back while an aspect is open, and cleans up when none is.
    o.node.as_mut().expect("node").provider_id = None;
    assert_eq!(
        plan(Step::Finalize, &o, &cfg()),
        Plan::Act {
            actions: vec![],
            next: Some(Step::TagInstance)
        }
    );
    let mut f = wired();
    f.node.as_mut().expect("node").unwired_taint = true;
    f.tokens.push(token("abcdef", false));
    f.vm.as_mut().expect("vm").join_metadata = true;
    assert_eq!(
        plan(Step::Finalize, &f, &cfg()),
        Plan::Act {
            actions: vec![
                Action::RemoveTaint,
                Action::RevokeTokens(vec!["abcdef".into()]),
                Action::ClearJoinMetadata,
                Action::AnnounceWired
            ],
            next: None
        }
    );
}

#[test]
fn decommission_and_release_table() {
    let gone = Observed {
        instance: vm_ref(),
        vm: None,
        node: Some(node()),
        tokens: vec![token("abcdef", false)],
    };
    assert_eq!(
        plan(Step::Decommission, &gone, &cfg()),
        Plan::Act {
            actions: vec![
                Action::DeleteNode,
                Action::RevokeTokens(vec!["abcdef".into()])
            ],
            next: None
        }
    );
    let mut other = gone.clone();
    other.node.as_mut().expect("node").provider_id =
        Some("gce://example-project/us-central1-b/vm-1".into());
    assert_eq!(
        plan(Step::Decommission, &other, &cfg()),
        Plan::Act {
            actions: vec![Action::RevokeTokens(vec!["abcdef".into()])],
            next: None
        },
        "a Node of the same name on another VM is not deleted"
    );
    assert!(matches!(
        plan(Step::Decommission, &wired(), &cfg()),
        Plan::Ignore(_)
    ));
    let mut orphan = wired();
    orphan.node = None;
    orphan.vm.as_mut().expect("vm").aliases.push(Alias {
        cidr: "10.128.0.50/32".into(),
        range_name: None,
    });
    assert_eq!(
        plan(Step::ReleaseAlias, &orphan, &cfg()),
        Plan::Act {
            actions: vec![Action::ReleaseAlias {
                keep: vec![Alias {
                    cidr: "10.128.0.50/32".into(),
                    range_name: None
                }]
            }],
            next: None
        }
    );
    assert!(matches!(
        plan(Step::ReleaseAlias, &wired(), &cfg()),
        Plan::Ignore(_)
    ));
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
            let node = node.map(|(pid, cidr, taint)| NodeFacts {
                name: "vm-1".into(),
                provider_id: pid.then(|| vm_ref().provider_id()),
                pod_cidr: cidr.map(str::to_string),
                unwired_taint: taint,
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
                Plan::Wait(_) => {
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
