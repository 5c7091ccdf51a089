//! The reference procedure's own commands — `gcloud` and `kubectl`, clients nobody here wrote —
//! against `nodewire sandbox --keep-running`, configured only from the lines the sandbox
//! prints. A VM created with `gcloud compute instances create … --can-ip-forward` becomes a
//! wired node; the refusals the real services make (an alias range changed in place, a
//! providerID changed) come back to the real clients as errors.
//!
//! Needs `gcloud` (the Cloud SDK, also the Pub/Sub emulator's home) and `kubectl` on PATH;
//! `.ci/run` installs kubectl from Debian's packages when it is missing. Missing tools fail the
//! test, they never skip it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ZONE: &str = "asia-southeast1-a";
const VM: &str = "gcloud-node-1";

/// The sandbox child; interrupted (so that it stops the emulator and removes its files) when
/// the test ends, however it ends.
struct Sandbox {
    child: Child,
    env: BTreeMap<String, String>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

/// Starts the sandbox and reads what it prints until it says it keeps running; the
/// `export K=V` lines become the clients' environment.
fn start_sandbox() -> Sandbox {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodewire"))
        .args([
            "sandbox",
            "--vms",
            "1",
            "--keep-running",
            "--timeout-secs",
            "90",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nodewire sandbox starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut sandbox = Sandbox {
        child,
        env: BTreeMap::new(),
    };
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => panic!(
                "the sandbox did not say it keeps running; it printed:\n{}",
                printed.join("\n")
            ),
        };
        if let Some((k, v)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|kv| kv.split_once('='))
        {
            sandbox.env.insert(k.to_string(), v.to_string());
        }
        let ready = line.starts_with("ready:");
        printed.push(line);
        if ready {
            break;
        }
    }
    for k in ["CLOUDSDK_CONFIG", "KUBECONFIG"] {
        assert!(
            sandbox.env.contains_key(k),
            "the sandbox printed no `export {k}=…`:\n{}",
            printed.join("\n")
        );
    }
    sandbox
}

fn run(s: &Sandbox, tool: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("CLOUDSDK_CONFIG", &s.env["CLOUDSDK_CONFIG"])
        .env("KUBECONFIG", &s.env["KUBECONFIG"])
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
    cmd.output().unwrap_or_else(|e| {
        panic!("{tool} must be installed (it is the check on the simulators): {e}")
    })
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and requires success; the trimmed stdout.
fn ok(s: &Sandbox, tool: &str, args: &[&str]) -> String {
    let o = run(s, tool, args);
    assert!(o.status.success(), "{tool} {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs and requires a refusal whose output mentions `needle`.
fn refused(s: &Sandbox, tool: &str, args: &[&str], needle: &str) {
    let o = run(s, tool, args);
    assert!(
        !o.status.success(),
        "{tool} {args:?} was accepted: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(needle),
        "{tool} {args:?}: expected {needle:?} in {}",
        text(&o)
    );
}

/// `gcloud compute instances describe VM --format=value(FIELD)`.
fn describe(s: &Sandbox, field: &str) -> String {
    let format = format!("--format=value({field})");
    ok(
        s,
        "gcloud",
        &[
            "compute",
            "instances",
            "describe",
            VM,
            "--zone",
            ZONE,
            &format,
        ],
    )
}

const ALIAS: &str = "networkInterfaces[0].aliasIpRanges[0].ipCidrRange";

#[test]
fn gcloud_and_kubectl_run_the_reference_procedure_against_the_sandbox() {
    let s = start_sandbox();
    let zone = ["--zone", ZONE];

    // The VM as the reference procedure creates it: IP forwarding, on the node subnet, with
    // the selector label, running as the node service account. nodewire does the rest.
    let create = [
        "compute",
        "instances",
        "create",
        VM,
        "--zone",
        ZONE,
        "--can-ip-forward",
        "--subnet",
        "k8s-nodes",
        "--labels",
        "cluster=demo",
        // Pull mode: the join service admits VMs that run as the node service account.
        "--service-account",
        "k8s-nodes@example-project.iam.gserviceaccount.com",
        "--scopes",
        "userinfo-email",
    ];
    ok(&s, "gcloud", &create);
    let wanted_provider = format!("gce://example-project/{ZONE}/{VM}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (pod_cidr, alias) = loop {
        let cidr = run(
            &s,
            "kubectl",
            &["get", "node", VM, "-o", "jsonpath={.spec.podCIDR}"],
        );
        let alias = describe(&s, ALIAS);
        let taints = run(
            &s,
            "kubectl",
            &["get", "node", VM, "-o", "jsonpath={.spec.taints}"],
        );
        let provider = run(
            &s,
            "kubectl",
            &["get", "node", VM, "-o", "jsonpath={.spec.providerID}"],
        );
        let cidr = String::from_utf8_lossy(&cidr.stdout).trim().to_string();
        let wired = cidr.len() > 8
            && alias == cidr
            && String::from_utf8_lossy(&provider.stdout).trim() == wanted_provider
            && !String::from_utf8_lossy(&taints.stdout).contains("nodewire");
        if wired {
            break (cidr, alias);
        }
        assert!(
            Instant::now() < deadline,
            "{VM} not wired within 90 s: podCIDR {cidr:?}, alias {alias:?}, providerID {}, taints {}",
            text(&provider),
            text(&taints)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(pod_cidr, alias);

    // gcloud sees what nodewire did, the way an operator checks it.
    let tags = describe(&s, "tags.items");
    assert!(tags.contains("k8s-node"), "tags: {tags}");
    ok(
        &s,
        "gcloud",
        &[
            "compute",
            "instances",
            "add-tags",
            VM,
            "--zone",
            ZONE,
            "--tags",
            "web",
        ],
    );
    let tags = describe(&s, "tags.items");
    assert!(
        tags.contains("k8s-node") && tags.contains("web"),
        "tags: {tags}"
    );

    // An alias range is added or deleted, never updated in place (Compute Engine docs,
    // "Configuring alias IP ranges", Limitations).
    let other = if pod_cidr.starts_with("192.168.23.") {
        "192.168.22.0/24"
    } else {
        "192.168.23.0/24"
    };
    let mut update = vec!["compute", "instances", "network-interfaces", "update", VM];
    update.extend(zone);
    let aliases = format!("--aliases=pods:{other}");
    update.push(&aliases);
    refused(&s, "gcloud", &update, "cannot be updated");
    let alias_after = describe(&s, ALIAS);
    assert_eq!(alias_after, pod_cidr, "the refused update changed nothing");

    // kubectl: discovery, tables, jsonpath, patch, describe with nodewire's Events.
    let nodes = ok(&s, "kubectl", &["get", "nodes"]);
    assert!(nodes.starts_with("NAME") && nodes.contains(VM), "{nodes}");
    refused(
        &s,
        "kubectl",
        &[
            "patch",
            "node",
            VM,
            "-p",
            &format!("{{\"spec\":{{\"providerID\":\"gce://example-project/{ZONE}/elsewhere\"}}}}"),
        ],
        "may not change providerID",
    );
    let same = ok(
        &s,
        "kubectl",
        &[
            "patch",
            "node",
            VM,
            "-p",
            &format!("{{\"spec\":{{\"providerID\":\"{wanted_provider}\"}}}}"),
        ],
    );
    assert!(same.contains("patched"), "{same}");
    let described = ok(&s, "kubectl", &["describe", "node", VM]);
    assert!(
        described.contains("NodeWired") && described.contains(&wanted_provider),
        "kubectl describe node shows nodewire's Event and the providerID:\n{described}"
    );
    let events = ok(&s, "kubectl", &["get", "events"]);
    assert!(
        events.contains("NodeWired") && events.contains(&format!("node/{VM}")),
        "{events}"
    );
    ok(&s, "kubectl", &["get", "secrets", "-n", "kube-system"]);
    let taint = ok(
        &s,
        "kubectl",
        &["taint", "node", VM, "maintenance=yes:NoSchedule"],
    );
    assert!(taint.contains("tainted"), "{taint}");
    ok(
        &s,
        "kubectl",
        &["taint", "node", VM, "maintenance:NoSchedule-"],
    );
    let taints = ok(
        &s,
        "kubectl",
        &["get", "node", VM, "-o", "jsonpath={.spec.taints}"],
    );
    assert!(
        !taints.contains("maintenance"),
        "kubectl taint … - removed it: {taints}"
    );

    // Issue 21: the VM recreated by hand under its name (what a managed instance group's
    // autohealing does). The wired Node records the instance; the new instance gets a new Node.
    let old_id = describe(&s, "id");
    let jsonpath = |field: &str| {
        String::from_utf8_lossy(
            &run(
                &s,
                "kubectl",
                &["get", "node", VM, "-o", &format!("jsonpath={{{field}}}")],
            )
            .stdout,
        )
        .trim()
        .to_string()
    };
    let recorded = ".metadata.annotations.nodewire\\.io/instance-id";
    assert_eq!(jsonpath(recorded), old_id, "the Node records its instance");
    let old_uid = jsonpath(".metadata.uid");
    ok(
        &s,
        "gcloud",
        &[
            "compute",
            "instances",
            "delete",
            VM,
            "--zone",
            ZONE,
            "--quiet",
        ],
    );
    ok(&s, "gcloud", &create);
    let new_id = describe(&s, "id");
    assert_ne!(new_id, old_id, "a recreated VM is a new instance");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let uid = jsonpath(".metadata.uid");
        let alias = describe(&s, ALIAS);
        let cidr = jsonpath(".spec.podCIDR");
        let taints = jsonpath(".spec.taints");
        if !uid.is_empty()
            && uid != old_uid
            && jsonpath(recorded) == new_id
            && !cidr.is_empty()
            && alias == cidr
            && !taints.contains("nodewire")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recreated {VM} is not wired with a new Node within 120 s: uid {uid:?} (was \
             {old_uid}), recorded {:?}, podCIDR {cidr:?}, alias {alias:?}, taints {taints}",
            jsonpath(recorded)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The same instance stopped and started (issue 21, item 3): the same id, the same Node.
    let uid = jsonpath(".metadata.uid");
    ok(
        &s,
        "gcloud",
        &["compute", "instances", "stop", VM, "--zone", ZONE],
    );
    assert_eq!(describe(&s, "status"), "TERMINATED");
    ok(
        &s,
        "gcloud",
        &["compute", "instances", "start", VM, "--zone", ZONE],
    );
    assert_eq!(describe(&s, "status"), "RUNNING");
    assert_eq!(
        describe(&s, "id"),
        new_id,
        "a started VM is the same instance"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jsonpath(".metadata.uid"), uid, "its Node is kept");
    assert_eq!(jsonpath(recorded), new_id);

    // A VM asking Compute Engine for a /24 of the pod range at creation (issue 22: what an
    // instance template of the alias-first order asks for). Not labelled for nodewire: only the
    // allocation is checked, gcloud's `aliases=RANGE:/24` syntax against the simulator.
    ok(
        &s,
        "gcloud",
        &[
            "compute",
            "instances",
            "create",
            "sized-alias-1",
            "--zone",
            ZONE,
            "--network-interface",
            "subnet=k8s-nodes,aliases=pods:/24",
        ],
    );
    let sized = ok(
        &s,
        "gcloud",
        &[
            "compute",
            "instances",
            "describe",
            "sized-alias-1",
            "--zone",
            ZONE,
            "--format=value(networkInterfaces[0].aliasIpRanges[0].ipCidrRange,networkInterfaces[0].aliasIpRanges[0].subnetworkRangeName)",
        ],
    );
    let (range, name) = sized
        .split_once(char::is_whitespace)
        .unwrap_or((&sized, ""));
    let range: nodewire::names::Cidr = range
        .parse()
        .unwrap_or_else(|e| panic!("{sized:?}: not a range: {e}"));
    assert_eq!((range.prefix_len(), name.trim()), (24, "pods"), "{sized}");
    assert_ne!(
        range.to_string(),
        describe(&s, ALIAS),
        "a block no other VM holds"
    );

    // Suspended and resumed: the same instance, the same Node. gcloud waits for each
    // operation; a second suspend is refused as Compute Engine refuses it.
    ok(
        &s,
        "gcloud",
        &["compute", "instances", "suspend", VM, "--zone", ZONE],
    );
    assert_eq!(describe(&s, "status"), "SUSPENDED");
    refused(
        &s,
        "gcloud",
        &["compute", "instances", "suspend", VM, "--zone", ZONE],
        "already suspended",
    );
    ok(
        &s,
        "gcloud",
        &["compute", "instances", "resume", VM, "--zone", ZONE],
    );
    assert_eq!(describe(&s, "status"), "RUNNING");
    assert_eq!(
        describe(&s, "id"),
        new_id,
        "a resumed VM is the same instance"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jsonpath(".metadata.uid"), uid, "its Node is kept");
    assert_eq!(jsonpath(recorded), new_id);
    drop(s);
}
