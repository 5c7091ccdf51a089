//! The simulator's answers and the clients' requests conform to the Compute Engine v1
//! discovery document (issue 9, item 9): the whole system runs — VMs inserted, wired, swept,
//! drift healed (which moves an alias: remove, then add), one VM deleted — and every Compute
//! request of the run, and every successful answer, is checked against the schema its method
//! names (field names and types; `tests/src/discovery.rs`).

use std::time::Duration;

use integration_tests::discovery::Discovery;
use integration_tests::simfix::P;
use integration_tests::world::{World, WorldOptions};

const ZONE: &str = "us-central1-a";

#[tokio::test]
async fn every_compute_body_of_a_run_matches_the_discovery_document() {
    let d = Discovery::compute_v1();
    let w = World::start(WorldOptions::default()).await;
    for vm in ["conf-1", "conf-2"] {
        w.insert_vm(P, ZONE, vm, &[("cluster", "demo")], true).await;
    }
    let wired = w
        .wait_until(Duration::from_secs(60), |w| {
            ["conf-1", "conf-2"]
                .iter()
                .all(|v| w.wired(ZONE, v).is_ok())
        })
        .await;
    assert!(wired, "not wired: {:?}", w.wired(ZONE, "conf-1"));
    // Drift: conf-1's alias moved by hand to another block; the sweep heals it.
    w.compute.tamper(|world| {
        if let Some(i) =
            world
                .instances
                .get_mut(&(P.to_string(), ZONE.to_string(), "conf-1".to_string()))
        {
            i.nics[0].aliases[0].cidr = "10.4.250.0/24".parse().expect("cidr");
        }
    });
    w.sweep(false).await;
    let healed = w
        .wait_until(Duration::from_secs(60), |w| w.wired(ZONE, "conf-1").is_ok())
        .await;
    assert!(healed, "{:?}", w.wired(ZONE, "conf-1"));
    w.delete_vm(ZONE, "conf-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut problems = Vec::new();
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    for r in w.compute.chaos().requests() {
        let Some(m) = d.methods.get(&r.method) else {
            problems.push(format!(
                "{}: not a method of the discovery document",
                r.method
            ));
            continue;
        };
        if m.http_method != r.http_method {
            problems.push(format!(
                "{}: sent as {}, the API takes {}",
                r.method, r.http_method, m.http_method
            ));
        }
        if let Some(schema) = &m.request
            && !r.body.is_null()
        {
            problems.extend(
                d.check(schema, &r.body)
                    .into_iter()
                    .map(|p| format!("{} request ({schema}) {p}", r.method)),
            );
        }
        if (200..300).contains(&r.status)
            && let Some(schema) = &m.response
        {
            problems.extend(
                d.check(schema, &r.response)
                    .into_iter()
                    .map(|p| format!("{} response ({schema}) {p}", r.method)),
            );
        }
        *checked.entry(r.method.clone()).or_insert(0) += 1;
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for m in [
        "instances.insert",
        "instances.get",
        "instances.aggregatedList",
        "instances.setTags",
        "instances.setMetadata",
        "instances.updateNetworkInterface",
        "instances.delete",
        "zoneOperations.wait",
    ] {
        assert!(checked.contains_key(m), "the run made no {m}: {checked:?}");
    }
    w.stop().await;
}
