//! Contract tests: the production Compute client against the Compute simulator over HTTP.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use integration_tests::simfix::*;
use nodewire::act::compute::{AliasRange, ComputeError, WriteOutcome};
use nodewire::error::Classify as _;
use sim::faults::{FaultSpec, InjectedError};

fn pods(c: &str) -> AliasRange {
    AliasRange {
        cidr: c.into(),
        range_name: Some("pods".into()),
    }
}

fn count(sim: &sim::compute::ComputeSim, method: &str) -> usize {
    sim.chaos()
        .requests()
        .iter()
        .filter(|r| r.method == method)
        .count()
}

#[tokio::test]
async fn reads_lists_and_subnets() {
    let sim = compute_sim(0).await;
    for i in 0..1203 {
        seed(&sim, &format!("vm-{i:04}"));
    }
    let c = compute_client(&sim, fast_compute_policy()).await;
    let all = c.list_instances(None).await.expect("list").items;
    assert_eq!(all.len(), 1203);
    assert_eq!(
        count(&sim, "instances.aggregatedList"),
        3,
        "maxResults=500: three pages"
    );
    assert!(
        sim.chaos()
            .requests()
            .iter()
            .all(|r| r.method != "instances.aggregatedList" || r.query.contains("maxResults=500"))
    );
    let some = c
        .list_instances(Some("name eq \"vm-000.*\""))
        .await
        .expect("filtered")
        .items;
    assert_eq!(some.len(), 10);
    let v = c
        .get_instance(&all[0].instance)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(v.tags, vec!["base"]);
    assert!(v.can_ip_forward);
    assert_eq!(v.labels.get("cluster").map(String::as_str), Some("demo"));
    assert!(v.nic0.as_ref().is_some_and(|n| {
        n.subnetwork
            .ends_with("/regions/us-central1/subnetworks/k8s-nodes")
    }));
    let missing = nodewire::names::InstanceRef::new(P, Z, "nope").expect("ref");
    assert_eq!(c.get_instance(&missing).await.expect("404 is None"), None);
    let s = c.get_subnetwork(REGION, "k8s-nodes").await.expect("subnet");
    assert_eq!(s.secondary[0], ("pods".to_string(), cidr("10.4.0.0/16")));
    assert!(matches!(
        c.get_subnetwork(REGION, "nope").await,
        Err(ComputeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn tags_are_added_keeping_others_and_only_once() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    let tags = vec!["k8s-node".to_string()];
    assert_eq!(
        c.add_tags(&vm, &tags).await.expect("add"),
        WriteOutcome::Changed
    );
    assert_eq!(
        c.add_tags(&vm, &tags).await.expect("again"),
        WriteOutcome::Unchanged
    );
    assert_eq!(count(&sim, "instances.setTags"), 1, "no second write");
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert_eq!(v.tags, vec!["base", "k8s-node"]);
    let body = &sim
        .chaos()
        .requests()
        .into_iter()
        .find(|r| r.method == "instances.setTags")
        .expect("logged")
        .body;
    assert!(
        body["fingerprint"].is_string(),
        "every mutation carries the fingerprint"
    );
    let q = sim
        .chaos()
        .requests()
        .into_iter()
        .find(|r| r.method == "instances.setTags")
        .expect("logged")
        .query;
    assert!(
        q.contains("requestId="),
        "every mutation carries a requestId: {q}"
    );
}

#[tokio::test]
async fn metadata_read_modify_write_keeps_other_keys() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    let out = c
        .update_metadata(&vm, |m| {
            m.insert("kubeadm-join".into(), "config".into());
        })
        .await
        .expect("set");
    assert_eq!(out, WriteOutcome::Changed);
    let items = |sim: &sim::compute::ComputeSim| -> BTreeMap<String, String> {
        sim.instance_json(vm.project(), vm.zone(), vm.name())
            .and_then(|j| j.pointer("/metadata/items").cloned())
            .and_then(|i| i.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|it| {
                (
                    it["key"].as_str().unwrap_or_default().to_string(),
                    it["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        items(&sim),
        BTreeMap::from([
            ("kubeadm-join".to_string(), "config".to_string()),
            ("startup-script".to_string(), "#!/bin/sh".to_string())
        ])
    );
    // The view keeps which keys exist, never their values (issue 10, item 4): the join
    // token and the startup script stay out of every view.
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert!(v.metadata.contains_key("kubeadm-join"));
    assert!(v.metadata.contains_key("startup-script"));
    assert_eq!(v.metadata.get("kubeadm-join"), None);
    assert!(!format!("{v:?}").contains("#!/bin/sh"));
    let out = c
        .update_metadata(&vm, |m| {
            m.remove("absent");
        })
        .await
        .expect("noop");
    assert_eq!(out, WriteOutcome::Unchanged);
    c.update_metadata(&vm, |m| {
        m.remove("kubeadm-join");
    })
    .await
    .expect("remove");
    assert_eq!(items(&sim).len(), 1);
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert!(!v.metadata.contains_key("kubeadm-join"));
}

#[tokio::test]
async fn synchronous_412_race_is_resolved_by_re_reading() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    // Both writers read the same fingerprint; their setTags calls are held 200 ms and then
    // handled one after the other: the second one meets a stale fingerprint (412).
    sim.chaos().set_faults(
        "instances.setTags",
        FaultSpec {
            latency: Duration::from_millis(200),
            ..FaultSpec::default()
        },
    );
    let c = compute_client(&sim, fast_compute_policy()).await;
    let (ta, tb) = (["a".to_string()], ["b".to_string()]);
    let (a, b) = tokio::join!(c.add_tags(&vm, &ta), c.add_tags(&vm, &tb));
    assert_eq!(a.expect("a"), WriteOutcome::Changed);
    assert_eq!(b.expect("b"), WriteOutcome::Changed);
    let statuses: Vec<u16> = sim
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.method == "instances.setTags")
        .map(|r| r.status)
        .collect();
    assert!(statuses.contains(&412), "a 412 happened: {statuses:?}");
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert!(
        v.tags.contains(&"a".to_string()) && v.tags.contains(&"b".to_string()),
        "{:?}",
        v.tags
    );
}

#[tokio::test]
async fn asynchronous_condition_not_met_is_resolved_by_re_reading() {
    // Operations apply when DONE (300 ms later). Compute Engine refuses a second operation on
    // the instance while this one runs (resourceNotReady), so the competing change here lands
    // the way a writer outside the operation queue would: the tags and their fingerprint change
    // after our request was accepted, and ours loses at DONE with CONDITION_NOT_MET.
    let sim = compute_sim(300).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    let ta = ["a".to_string()];
    let other_writer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sim.tamper(|w| {
            let i = w
                .instances
                .get_mut(&(P.into(), Z.into(), "vm-a".into()))
                .expect("vm");
            i.tags.push("b".into());
            i.tags_fp = sim::compute::Fingerprint(i.tags_fp.0.wrapping_add(1));
        });
    };
    let (a, ()) = tokio::join!(c.add_tags(&vm, &ta), other_writer);
    a.expect("a");
    let failed = sim.with_world(|w| {
        w.operations
            .values()
            .filter(|o| {
                o.error
                    .as_ref()
                    .is_some_and(|e| e.code == "CONDITION_NOT_MET")
            })
            .count()
    });
    assert_eq!(
        failed, 1,
        "exactly one operation lost the race asynchronously"
    );
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert!(
        v.tags.contains(&"a".to_string()) && v.tags.contains(&"b".to_string()),
        "{:?}",
        v.tags
    );
    assert!(
        count(&sim, "zoneOperations.wait") >= 2,
        "operations were awaited"
    );
}

/// The simulator's 403 rate limit carries both error shapes, as Compute Engine's does; the
/// client library exposes the `ErrorInfo` reason `RATE_LIMIT_EXCEEDED` of `details[]` (not the
/// legacy `rateLimitExceeded`), so a client that knows only the legacy reason dead-letters a
/// rate limit (issue 9, item 4).
#[tokio::test]
async fn rate_limits_are_retried_then_surface_as_transient_within_the_bound() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let mut policy = fast_compute_policy();
    policy.retry.max_attempts = 4;
    let c = compute_client(&sim, policy).await;
    sim.chaos().set_faults(
        "instances.get",
        FaultSpec {
            error_rate: 1.0,
            errors: vec![InjectedError::RateLimitExceeded],
            ..FaultSpec::default()
        },
    );
    let started = Instant::now();
    let err = c
        .get_instance(&vm)
        .await
        .expect_err("always 403 rateLimitExceeded");
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(err, ComputeError::Transient { attempts: 4, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(count(&sim, "instances.get"), 4, "bounded attempts");
    // Half the calls fail (429 / 503 / 403): the call still succeeds.
    sim.chaos().set_faults(
        "instances.get",
        FaultSpec {
            error_rate: 0.5,
            ..FaultSpec::default()
        },
    );
    sim.chaos().set_faults(
        "instances.setTags",
        FaultSpec {
            error_rate: 0.5,
            ..FaultSpec::default()
        },
    );
    let mut policy = fast_compute_policy();
    policy.retry.max_attempts = 12;
    let c = compute_client(&sim, policy).await;
    assert_eq!(
        c.add_tags(&vm, &["x".to_string()])
            .await
            .expect("eventually"),
        WriteOutcome::Changed
    );
}

/// A second change to a VM while an operation on it is still running is refused at once
/// with 400 `resourceNotReady` (shared/formats/gce-error-bodies.json); the client retries it,
/// bounded, instead of failing the step for good (issue 9, item 3).
#[tokio::test]
async fn a_change_while_another_operation_runs_is_retried_until_it_is_accepted() {
    let sim = compute_sim(600).await;
    let vm = seed(&sim, "vm-a");
    // Retries that outlast one operation, as the production policy's do (20 s).
    let mut policy = fast_compute_policy();
    policy.retry.base = Duration::from_millis(100);
    policy.retry.max = Duration::from_millis(400);
    policy.retry.max_attempts = 12;
    let c = compute_client(&sim, policy).await;
    let tags = ["k8s-node".to_string()];
    let (tagged, labelled) = tokio::join!(
        c.add_tags(&vm, &tags),
        c.update_metadata(&vm, |m| {
            m.insert("k".into(), "v".into());
        }),
    );
    assert_eq!(tagged.expect("tags"), WriteOutcome::Changed);
    assert_eq!(labelled.expect("metadata"), WriteOutcome::Changed);
    let not_ready = sim
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.status == 400 && !r.injected)
        .count();
    assert!(
        not_ready >= 1,
        "one of the two was refused while the other ran"
    );
    let v = c.get_instance(&vm).await.expect("get").expect("exists");
    assert!(v.tags.contains(&"k8s-node".to_string()));
    assert!(v.metadata.contains_key("k"));
    assert_eq!(metadata_value(&sim, &vm, "k").as_deref(), Some("v"));
}

/// Issue 22: Compute Engine refuses `updateNetworkInterface` on an instance still being
/// created (STAGING) with 400 `resourceNotReady`; the client waits it out (the same retry as for
/// an instance busy with another operation) and the allocation by size goes through once the
/// VM is RUNNING. The refusal is real: with the VM left STAGING the call fails as transient.
#[tokio::test]
async fn an_alias_allocation_while_the_vm_is_staging_is_waited_out() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-boot");
    let set_status = |sim: &sim::compute::ComputeSim, status: &str| {
        sim.tamper(|w| {
            for (k, i) in w.instances.iter_mut() {
                if k.2 == "vm-boot" {
                    i.status = status.to_string();
                }
            }
        });
    };
    set_status(&sim, "STAGING");
    let mut policy = fast_compute_policy();
    policy.retry.base = Duration::from_millis(50);
    policy.retry.max = Duration::from_millis(200);
    policy.retry.max_attempts = 12;
    let c = compute_client(&sim, policy).await;
    let pods_only = ["pods".to_string()];
    let boot = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        set_status(&sim, "RUNNING");
    };
    let (out, ()) = tokio::join!(c.allocate_alias_range(&vm, 24, "pods", &pods_only), boot);
    assert_eq!(out.expect("allocated once RUNNING"), WriteOutcome::Changed);
    let refused = sim
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.method == "instances.updateNetworkInterface" && r.status == 400)
        .count();
    assert!(refused >= 1, "refused while STAGING first");
    let v = sim.instance_json(P, Z, "vm-boot").expect("the VM");
    let aliases = &v["networkInterfaces"][0]["aliasIpRanges"];
    assert_eq!(aliases.as_array().map(Vec::len), Some(1), "{aliases}");

    // Left STAGING: the call gives up as transient (retried by redelivery), never succeeds.
    let other = seed(&sim, "vm-stuck");
    sim.tamper(|w| {
        for (k, i) in w.instances.iter_mut() {
            if k.2 == "vm-stuck" {
                i.status = "STAGING".to_string();
            }
        }
    });
    policy.retry.max_attempts = 3;
    let c = compute_client(&sim, policy).await;
    let e = c
        .allocate_alias_range(&other, 24, "pods", &pods_only)
        .await
        .expect_err("still STAGING");
    assert!(e.is_retryable(), "{e}");
}

/// A permission 403 (legacy reason `forbidden`, `ErrorInfo` `IAM_PERMISSION_DENIED`) is
/// permanent and carries the API's message; it is sent once, never retried.
#[tokio::test]
async fn a_permission_403_is_permanent_with_the_apis_message() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    sim.chaos().set_faults(
        "instances.get",
        FaultSpec {
            error_rate: 1.0,
            errors: vec![InjectedError::PermissionDenied],
            ..FaultSpec::default()
        },
    );
    let err = c.get_instance(&vm).await.expect_err("403");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        matches!(err, ComputeError::Refused { status: 403, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("compute.instances.setTags"),
        "{err}"
    );
    assert_eq!(count(&sim, "instances.get"), 1, "not retried");
}

#[tokio::test]
async fn alias_errors_are_typed_and_permanent() {
    let sim = compute_sim(0).await;
    let a = seed(&sim, "vm-a");
    let b = seed(&sim, "vm-b");
    let c = compute_client(&sim, fast_compute_policy()).await;
    assert_eq!(
        c.set_alias_ranges(&a, &[pods("10.4.1.0/24")])
            .await
            .expect("a"),
        WriteOutcome::Changed
    );
    assert_eq!(
        c.set_alias_ranges(&a, &[pods("10.4.1.0/24")])
            .await
            .expect("a again"),
        WriteOutcome::Unchanged
    );
    let err = c
        .set_alias_ranges(&b, &[pods("10.4.1.0/24")])
        .await
        .expect_err("in use");
    assert!(matches!(err, ComputeError::AliasInUse { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("10.4.1.0/24"),
        "carries the API's message: {err}"
    );
    let err = c
        .set_alias_ranges(&b, &[pods("192.168.0.0/24")])
        .await
        .expect_err("outside");
    assert!(
        matches!(err, ComputeError::Refused { status: 400, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    let v = c.get_instance(&b).await.expect("get").expect("exists");
    assert!(v.nic0.expect("nic").aliases.is_empty());
}

#[tokio::test]
async fn exhausted_range_is_typed() {
    let sim = sim::compute::ComputeSim::start(sim::compute::ComputeConfig {
        op_latency: Duration::ZERO,
        subnets: vec![subnet("10.4.0.0/24")],
        ..Default::default()
    })
    .await
    .expect("sim");
    let a = seed(&sim, "vm-a");
    let b = seed(&sim, "vm-b");
    let c = compute_client(&sim, fast_compute_policy()).await;
    c.set_alias_ranges(&a, &[pods("/24")])
        .await
        .expect("allocated");
    let err = c
        .set_alias_ranges(&b, &[pods("/24")])
        .await
        .expect_err("exhausted");
    assert!(matches!(err, ComputeError::RangeExhausted { .. }), "{err}");
}

#[tokio::test]
async fn operation_wait_returning_early_is_looped_until_done() {
    let sim = sim::compute::ComputeSim::start(sim::compute::ComputeConfig {
        op_latency: Duration::from_millis(900),
        wait_max: Duration::from_millis(200),
        wait_early_return: 1.0,
        subnets: vec![subnet("10.4.0.0/16")],
        ..Default::default()
    })
    .await
    .expect("sim");
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    c.add_tags(&vm, &["t".to_string()]).await.expect("done");
    assert!(
        count(&sim, "zoneOperations.wait") >= 3,
        "wait was called again after early returns"
    );
    let mut policy = fast_compute_policy();
    policy.operation_deadline = Duration::from_millis(300);
    let c = compute_client(&sim, policy).await;
    let err = c
        .add_tags(&vm, &["u".to_string()])
        .await
        .expect_err("deadline");
    assert!(
        matches!(err, ComputeError::OperationTimeout { .. }) && err.is_retryable(),
        "{err}"
    );
}

/// 100 VMs driven concurrently with 20% injected faults on every method (errors and
/// asynchronous operation failures): every VM reaches the requested state, and every
/// effective write is explained — exactly one successful operation per VM and kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_vms_under_twenty_percent_faults() {
    let sim = compute_sim(20).await;
    let vms: Vec<_> = (0..100)
        .map(|i| seed(&sim, &format!("vm-{i:03}")))
        .collect();
    sim.chaos().set_default_faults(FaultSpec::flaky(0.2));
    let c = compute_client(&sim, fast_compute_policy()).await;
    let mut tasks = Vec::new();
    for (i, vm) in vms.iter().cloned().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let alias = [pods(&format!("10.4.{i}.0/24"))];
            // A retryable failure is what a 503 and a redelivery would retry: do the same.
            for _ in 0..6 {
                let r: Result<(), ComputeError> = async {
                    c.add_tags(&vm, &["k8s-node".to_string()]).await?;
                    c.set_alias_ranges(&vm, &alias).await?;
                    c.update_metadata(&vm, |m| {
                        m.insert("nodewire".into(), "wired".into());
                    })
                    .await?;
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(ComputeError::Setup(nodewire::error::Cause::msg("gave up")))
        }));
    }
    for t in tasks {
        t.await
            .expect("join")
            .expect("every VM reaches the requested state");
    }
    sim.chaos().clear_faults();
    for (i, vm) in vms.iter().enumerate() {
        let v = c.get_instance(vm).await.expect("get").expect("exists");
        assert!(v.tags.contains(&"k8s-node".to_string()));
        assert_eq!(
            v.nic0.expect("nic").aliases,
            vec![pods(&format!("10.4.{i}.0/24"))]
        );
        assert_eq!(
            metadata_value(&sim, vm, "nodewire").as_deref(),
            Some("wired")
        );
    }
    let successes: HashMap<(String, String), usize> = sim.with_world(|w| {
        let mut m = HashMap::new();
        for o in w.operations.values().filter(|o| o.error.is_none()) {
            *m.entry((o.target_link.clone(), o.op_type.clone()))
                .or_insert(0) += 1;
        }
        m
    });
    assert_eq!(
        successes.len(),
        300,
        "one successful operation per VM and kind"
    );
    assert!(
        successes.values().all(|n| *n == 1),
        "no effective write beyond the first: {successes:?}"
    );
    let injected = sim.chaos().requests().iter().filter(|r| r.injected).count();
    assert!(injected > 50, "faults were really injected ({injected})");
}

/// The API adds and deletes alias ranges but refuses to update one in a request
/// (<https://cloud.google.com/vpc/docs/configure-alias-ip-ranges>, Limitations): moving nic0
/// to another range is a removal, a fresh read of the fingerprint, then an addition.
#[tokio::test]
async fn moving_to_another_range_removes_then_adds() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    c.set_alias_ranges(&vm, &[pods("10.4.1.0/24")])
        .await
        .expect("set");
    sim.chaos().clear_requests();
    assert_eq!(
        c.set_alias_ranges(&vm, &[pods("10.4.2.0/24")])
            .await
            .expect("moved"),
        WriteOutcome::Changed
    );
    let sent: Vec<serde_json::Value> = sim
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "instances.updateNetworkInterface")
        .map(|r| r.body)
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["aliasIpRanges"], serde_json::json!([]));
    assert_eq!(sent[1]["aliasIpRanges"][0]["ipCidrRange"], "10.4.2.0/24");
    assert_ne!(
        sent[0]["fingerprint"], sent[1]["fingerprint"],
        "the addition carries the fingerprint read after the removal"
    );
    let nic = c
        .get_instance(&vm)
        .await
        .expect("get")
        .expect("exists")
        .nic0
        .expect("nic");
    assert_eq!(nic.aliases, vec![pods("10.4.2.0/24")]);
    // Adding beside a kept range is one request.
    sim.chaos().clear_requests();
    c.set_alias_ranges(&vm, &[pods("10.4.2.0/24"), pods("10.4.3.0/24")])
        .await
        .expect("added");
    assert_eq!(count(&sim, "instances.updateNetworkInterface"), 1);
}

#[tokio::test]
async fn clearing_aliases_sends_an_explicit_empty_list() {
    let sim = compute_sim(0).await;
    let vm = seed(&sim, "vm-a");
    let c = compute_client(&sim, fast_compute_policy()).await;
    c.set_alias_ranges(&vm, &[pods("10.4.1.0/24")])
        .await
        .expect("set");
    assert_eq!(
        c.set_alias_ranges(&vm, &[]).await.expect("clear"),
        WriteOutcome::Changed
    );
    assert!(
        c.get_instance(&vm)
            .await
            .expect("get")
            .expect("exists")
            .nic0
            .expect("nic")
            .aliases
            .is_empty()
    );
    assert_eq!(
        c.set_alias_ranges(&vm, &[]).await.expect("again"),
        WriteOutcome::Unchanged
    );
    let last = sim
        .chaos()
        .requests()
        .into_iter()
        .rfind(|r| r.method == "instances.updateNetworkInterface")
        .expect("logged");
    assert_eq!(last.body["aliasIpRanges"], serde_json::json!([]));
    assert!(last.body["fingerprint"].is_string() && last.query.contains("requestId="));
}

/// The operations the simulator created, per `(instance name, operation type)`.
fn operations(sim: &sim::compute::ComputeSim) -> BTreeMap<(String, String), usize> {
    sim.with_world(|w| {
        let mut out = BTreeMap::new();
        for op in w.operations.values() {
            let name = op
                .target_link
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            *out.entry((name, op.op_type.clone())).or_insert(0) += 1;
        }
        out
    })
}

/// The write applied, the answer lost (issue 9, item 6): the simulator handles half of the
/// mutations and then answers 503 as if the connection had dropped. The client's retry carries
/// the same `requestId`, so Compute Engine hands back the operation it already started and
/// nothing is applied twice: one operation per VM and kind, every VM in its wanted state.
#[tokio::test]
async fn a_lost_answer_is_retried_under_the_same_request_id_and_applied_once() {
    let sim = compute_sim(30).await;
    let lossy = FaultSpec {
        lost_answer_rate: 0.5,
        ..FaultSpec::default()
    };
    for m in [
        "instances.setTags",
        "instances.setMetadata",
        "instances.updateNetworkInterface",
    ] {
        sim.chaos().set_faults(m, lossy.clone());
    }
    let c = compute_client(&sim, fast_compute_policy()).await;
    let vms: Vec<_> = (0..12).map(|i| seed(&sim, &format!("vm-{i:02}"))).collect();
    for (i, vm) in vms.iter().enumerate() {
        c.add_tags(vm, &["k8s-node".to_string()])
            .await
            .expect("tags");
        c.set_alias_ranges(vm, &[pods(&format!("10.4.{i}.0/24"))])
            .await
            .expect("alias");
        c.update_metadata(vm, |m| {
            m.insert("k".into(), "v".into());
        })
        .await
        .expect("metadata");
    }
    let lost = sim
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.injected && r.status == 503)
        .count();
    assert!(lost >= 6, "answers were really lost ({lost})");
    for (i, vm) in vms.iter().enumerate() {
        let v = c.get_instance(vm).await.expect("get").expect("vm");
        assert!(v.tags.contains(&"k8s-node".to_string()));
        assert_eq!(
            v.nic0.expect("nic").aliases,
            vec![pods(&format!("10.4.{i}.0/24"))]
        );
    }
    for ((vm, kind), n) in operations(&sim) {
        assert_eq!(n, 1, "{vm}: {n} {kind} operations");
    }
}

/// An operation longer than the step may wait (issue 9, item 5): the first delivery gives up
/// at its deadline with the operation still running; the redelivered step computes the same
/// change from the same state, sends the same `requestId`, and waits for the operation in
/// flight instead of starting a second one.
#[tokio::test]
async fn a_redelivered_step_waits_for_the_operation_in_flight() {
    let sim = compute_sim(1_500).await;
    let vm = seed(&sim, "vm-slow");
    let c = compute_client(
        &sim,
        nodewire::act::compute::ComputePolicy {
            operation_deadline: Duration::from_millis(400),
            ..fast_compute_policy()
        },
    )
    .await;
    let tags = ["k8s-node".to_string()];
    let first = c.add_tags(&vm, &tags).await;
    assert!(
        matches!(first, Err(ComputeError::OperationTimeout { .. })),
        "{first:?}"
    );
    // Redeliveries, each with the same deadline, until the operation is over.
    let mut outcome = None;
    for _ in 0..10 {
        match c.add_tags(&vm, &tags).await {
            Ok(o) => {
                outcome = Some(o);
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert!(outcome.is_some(), "never finished");
    let rids: std::collections::BTreeSet<String> = sim
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.method == "instances.setTags")
        .filter_map(|r| {
            r.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("requestId=").map(str::to_string))
        })
        .collect();
    assert_eq!(rids.len(), 1, "one requestId for every delivery: {rids:?}");
    assert_eq!(
        operations(&sim).get(&("vm-slow".to_string(), "setTags".to_string())),
        Some(&1)
    );
    assert!(
        c.get_instance(&vm)
            .await
            .expect("get")
            .expect("vm")
            .tags
            .contains(&tags[0])
    );
}

/// Issue 10, item 7: the VM list asks only for the fields the views need (a partial
/// response, `fields=`), so a startup script or an ssh key of every VM is not fetched; the few
/// VMs carrying one of nodewire's bookkeeping keys are read whole for its value.
#[tokio::test]
async fn the_vm_list_asks_only_for_what_the_views_need() {
    let sim = compute_sim(0).await;
    let a = seed(&sim, "vm-a");
    let b = seed(&sim, "vm-b");
    let c = compute_client(&sim, fast_compute_policy()).await;
    c.update_metadata(&b, |m| {
        m.insert(
            nodewire::join::KUBELET_RESTART_METADATA_KEY.into(),
            "2@1800000000".into(),
        );
    })
    .await
    .expect("set");
    sim.chaos().clear_requests();
    let listed = c.list_instances(None).await.expect("list").items;
    assert_eq!(listed.len(), 2);
    let view = |r: &nodewire::names::InstanceRef| {
        listed
            .iter()
            .find(|v| &v.instance == r)
            .expect("listed")
            .clone()
    };
    let va = view(&a);
    assert!(va.metadata.contains_key("startup-script"));
    assert!(va.can_ip_forward && va.nic0.is_some() && !va.labels.is_empty());
    assert_eq!(
        view(&b)
            .metadata
            .get(nodewire::join::KUBELET_RESTART_METADATA_KEY)
            .map(String::as_str),
        Some("2@1800000000"),
        "the bookkeeping value comes from a read of that VM"
    );
    let requests = sim.chaos().requests();
    let list = requests
        .iter()
        .find(|r| r.method == "instances.aggregatedList")
        .expect("listed");
    assert!(list.query.contains("fields="), "{}", list.query);
    assert!(
        !list.response.to_string().contains("#!/bin/sh"),
        "a startup script was listed: {}",
        list.response
    );
    let gets: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "instances.get")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(gets.len(), 1, "only vm-b is read whole: {gets:?}");
    assert!(gets[0].ends_with("/vm-b"));
}
