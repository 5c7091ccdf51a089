//! `nodewire sandbox`: the whole system on this machine, no cloud account. Starts the
//! simulators, every function, the VM agent and Pub/Sub (the real emulator when installed,
//! otherwise the embedded in-process bus), creates VMs, shows each one moving to "wired",
//! introduces drift (a stripped tag, a removed alias, a Node deleted with its event lost),
//! shows the sweep healing it, and ends with a summary table.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nodewire::names::Cidr;
use serde::Serialize;
use sim::stack::{BusChoice, Latency, Stack, StackOptions};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// How many VMs to create.
    #[arg(long, default_value_t = 5)]
    vms: usize,
    /// Probability (0–1) of an injected fault on every simulated API call.
    #[arg(long, default_value_t = 0.0)]
    faults: f64,
    /// Keep everything running at the end (Ctrl-C stops), to use `nodewire status` and
    /// `nodewire replay` against it from another terminal.
    #[arg(long)]
    keep_running: bool,
    /// Use the embedded in-process bus even when the Pub/Sub emulator is installed.
    #[arg(long)]
    in_process: bool,
    /// The pod secondary range (one /24 per node).
    #[arg(long, default_value = "192.168.16.0/21")]
    pods_range: Cidr,
    /// Give up when the VMs are not wired (or the drift not healed) within this many seconds
    /// (default: 60, or 300 with `--latency realistic`).
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// The simulated world's pace: `fast` (milliseconds) or `realistic` (Compute operations
    /// of seconds, NIC updates of 12 s, VMs booting for 20 s, audit entries delivered after
    /// 5 s, kubelets Ready after 15 s and reporting every 10 s).
    #[arg(long, default_value = "fast")]
    latency: Latency,
    /// Who picks a node's pod range: `alias-first` (the default, as Terraform's: Compute
    /// Engine allocates the VM's /24 while it boots; nodewire copies it into the Node's
    /// podCIDR; the node IPAM is off) or `cluster-first` (kube-controller-manager, then the
    /// VM's alias follows).
    #[arg(long, default_value = "alias-first", value_parser = parse_range_order)]
    range_order: nodewire::config::RangeOrder,
}

fn parse_range_order(s: &str) -> Result<nodewire::config::RangeOrder, String> {
    match s {
        "cluster-first" => Ok(nodewire::config::RangeOrder::ClusterFirst),
        "alias-first" => Ok(nodewire::config::RangeOrder::AliasFirst),
        other => Err(format!("{other:?}: cluster-first or alias-first")),
    }
}

const ZONES: [&str; 3] = [
    "asia-southeast1-a",
    "asia-southeast1-b",
    "asia-southeast1-c",
];

fn vm(i: usize) -> (String, &'static str) {
    (format!("sandbox-vm-{}", i + 1), ZONES[i % ZONES.len()])
}

#[derive(Debug, Serialize)]
struct Summary {
    bus: &'static str,
    vms: usize,
    wired: usize,
    seconds_to_wired: f64,
    drift_found: usize,
    drift_steps: usize,
    healed: bool,
    seconds_to_heal: f64,
    nodes: Vec<BTreeMap<String, String>>,
}

/// A VM's progress, from the simulators' state.
fn phase(s: &Stack, zone: &str, name: &str) -> &'static str {
    if s.wired(zone, name).is_ok() {
        return "wired";
    }
    let Some(node) = s.k8s.object("nodes", "", name) else {
        let md = s
            .compute
            .instance_json(&s.opts.project, zone, name)
            .is_some_and(|v| {
                v["metadata"]["items"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|i| i["key"] == "kubeadm-join"))
            });
        return if md { "bootstrapped" } else { "created" };
    };
    if node.pointer("/spec/podCIDR").is_none() {
        "joined"
    } else {
        "wiring"
    }
}

fn bar(done: usize, total: usize) -> String {
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    )
}

async fn watch(s: &Stack, n: usize, timeout: Duration, started: Instant, names: &[usize]) -> bool {
    let mut last: BTreeMap<usize, &'static str> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    loop {
        let mut wired = 0;
        for &i in names {
            let (name, zone) = vm(i);
            let p = phase(s, zone, &name);
            if last.get(&i) != Some(&p) {
                println!(
                    "  {:>6.1}s  {name:<16} {p}",
                    started.elapsed().as_secs_f64()
                );
                last.insert(i, p);
            }
            if p == "wired" {
                wired += 1;
            }
        }
        if wired == names.len() {
            println!("  {}", bar(wired, n.min(names.len())));
            return true;
        }
        if Instant::now() >= deadline {
            println!("  {}", bar(wired, names.len()));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the sandbox.
///
/// # Errors
/// When the stack cannot start.
pub async fn run(a: SandboxArgs, json: bool) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&a.faults) {
        anyhow::bail!("--faults must be between 0 and 1");
    }
    let capacity = 1usize << (24u8.saturating_sub(a.pods_range.prefix_len())).min(20);
    if a.vms == 0 || a.vms > capacity {
        anyhow::bail!(
            "--vms must be between 1 and {capacity} (one /24 of {} per node); pass a larger --pods-range",
            a.pods_range
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let bus = if !a.in_process && sim::emulator::is_installed() {
        BusChoice::Emulator
    } else {
        BusChoice::InProcess
    };
    let bus_name = match bus {
        BusChoice::Emulator => "the Pub/Sub emulator",
        BusChoice::InProcess => {
            "the embedded in-process bus (no emulator installed, or --in-process)"
        }
    };
    println!(
        "nodewire sandbox: {} VM(s), faults {:.0}%, Pub/Sub: {bus_name}, range order: {}",
        a.vms,
        a.faults * 100.0,
        a.range_order.as_str()
    );
    let started = Instant::now();
    let timeout_secs = a.timeout_secs.unwrap_or(match a.latency {
        Latency::Fast => 60,
        Latency::Realistic => 300,
    });
    let stack = Stack::start(
        a.latency.apply(StackOptions {
            bus,
            faults: a.faults,
            project: "example-project".into(),
            other_project: None,
            region: "asia-southeast1".into(),
            nodes_range: "10.122.16.0/21"
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            pods_range: a.pods_range,
            range_order: a.range_order,
            services_range: "172.16.16.0/21"
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            ..StackOptions::default()
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "  started in {:.1}s: Compute {}  Kubernetes {}",
        started.elapsed().as_secs_f64(),
        stack.compute.endpoint(),
        stack.k8s.endpoint()
    );

    println!(
        "\n1. creating {} VM(s) with instances.insert; the chain wires them:",
        a.vms
    );
    let t0 = Instant::now();
    for i in 0..a.vms {
        let (name, zone) = vm(i);
        stack
            .insert_vm(
                &stack.opts.project.clone(),
                zone,
                &name,
                &[("cluster", "demo")],
                true,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let all: Vec<usize> = (0..a.vms).collect();
    let timeout = Duration::from_secs(timeout_secs);
    let wired_ok = watch(&stack, a.vms, timeout, t0, &all).await;
    let seconds_to_wired = t0.elapsed().as_secs_f64();
    if !wired_ok {
        println!("not every VM was wired within {timeout_secs}s");
    }

    println!(
        "\n2. drift: a tag stripped, an alias removed, a Node deleted with its audit event lost"
    );
    let p = stack.opts.project.clone();
    let drifted: Vec<usize> = (0..a.vms.min(3)).collect();
    for &i in &drifted {
        let (name, zone) = vm(i);
        let key = (p.clone(), zone.to_string(), name.clone());
        match i {
            0 => stack.compute.tamper(|w| {
                if let Some(v) = w.instances.get_mut(&key) {
                    v.tags.retain(|t| t != "k8s-node");
                }
            }),
            1 => stack.compute.tamper(|w| {
                if let Some(v) = w.instances.get_mut(&key) {
                    v.nics[0].aliases.clear();
                }
            }),
            _ => {
                let _ = stack.k8s.forget("nodes", "", &name);
            }
        }
    }
    let t1 = Instant::now();
    let report = stack.sweep(false).await.map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "\n3. the drift sweep found {} drifted aspect(s) and published {} step(s):",
        report.total(),
        report.steps
    );
    crate::status::print_report(&report);
    let healed = watch(&stack, drifted.len(), timeout, t1, &drifted).await;
    let seconds_to_heal = t1.elapsed().as_secs_f64();
    let after = stack.sweep(true).await.map_err(|e| anyhow::anyhow!(e))?;
    if after.total() > 0 && !json {
        println!("\nstill drifted after healing:");
        crate::status::print_report(&after);
    }

    let mut nodes = Vec::new();
    let mut wired = 0;
    for i in 0..a.vms {
        let (name, zone) = vm(i);
        let state = stack.wired(zone, &name);
        if state.is_ok() {
            wired += 1;
        }
        nodes.push(BTreeMap::from([
            ("vm".to_string(), name.clone()),
            ("zone".to_string(), zone.to_string()),
            ("pod_cidr".to_string(), state.clone().unwrap_or_default()),
            (
                "state".to_string(),
                state.map_or_else(|e| format!("not wired: {e}"), |_| "wired".to_string()),
            ),
        ]));
    }
    let ok = wired_ok && healed && wired == a.vms && after.total() == 0;
    let summary = Summary {
        bus: match bus {
            BusChoice::Emulator => "emulator",
            BusChoice::InProcess => "in-process",
        },
        vms: a.vms,
        wired,
        seconds_to_wired,
        drift_found: report.total(),
        drift_steps: report.steps,
        healed: healed && after.total() == 0,
        seconds_to_heal,
        nodes,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        println!("\n4. summary");
        println!(
            "{:<16} {:<20} {:<18} STATE",
            "VM", "ZONE", "POD CIDR (= ALIAS)"
        );
        for n in &summary.nodes {
            println!(
                "{:<16} {:<20} {:<18} {}",
                n["vm"], n["zone"], n["pod_cidr"], n["state"]
            );
        }
        println!(
            "\n{wired}/{} wired in {:.1}s; drift: {} found, {} step(s), {} in {:.1}s; remaining drift: {}",
            a.vms,
            seconds_to_wired,
            summary.drift_found,
            summary.drift_steps,
            if summary.healed {
                "healed"
            } else {
                "NOT healed"
            },
            seconds_to_heal,
            after.total()
        );
        println!("sandbox: {}", if ok { "OK" } else { "FAILED" });
    }
    let mut clients_dir = None;
    if a.keep_running {
        println!(
            "\nStill running (Ctrl-C stops). To use the CLI against it from another terminal:"
        );
        for (k, v) in stack.env() {
            println!("  export {k}={v}");
        }
        println!("  nodewire status");
        let dir = std::env::temp_dir().join(format!("nodewire-sandbox-{}", std::process::id()));
        let lines = write_client_configs(&stack, &dir)?;
        println!(
            "\nTo point gcloud and kubectl at it (configuration of their own under {}):",
            dir.display()
        );
        for l in lines {
            println!("  {l}");
        }
        println!("ready: the sandbox keeps running");
        clients_dir = Some(dir);
        nodewire::shutdown::signal().await;
    }
    stack.stop().await;
    if let Some(dir) = clients_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Writes a gcloud configuration directory (the Compute endpoint overridden to the simulator,
/// an access-token file, the project, no prompts and no update checks) and a kubeconfig for
/// the Kubernetes simulator under `dir`, and returns the lines a person types to use them.
///
/// # Errors
/// When the files cannot be written.
pub fn write_client_configs(stack: &Stack, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    let gcloud = dir.join("gcloud");
    let conf = gcloud.join("configurations");
    std::fs::create_dir_all(&conf).with_context(|| format!("creating {}", conf.display()))?;
    let token = gcloud.join("access-token");
    // The Compute simulator takes any bearer token; gcloud needs one to send.
    std::fs::write(&token, "sandbox-access-token\n")?;
    std::fs::write(gcloud.join("active_config"), "default")?;
    std::fs::write(
        conf.join("config_default"),
        format!(
            "[core]\nproject = {project}\ndisable_usage_reporting = true\ndisable_prompts = true\n\
             [auth]\naccess_token_file = {token}\n\
             [api_endpoint_overrides]\ncompute = {compute}/compute/v1/\n\
             [component_manager]\ndisable_update_check = true\n",
            project = stack.opts.project,
            token = token.display(),
            compute = stack.compute.endpoint(),
        ),
    )?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: sandbox-admin\n  user:\n    token: {token}\n\
             contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox-admin\n\
             current-context: sandbox\n",
            // kubectl sends the token only over TLS: the HTTPS front, trusted by its PEM.
            server = stack.k8s_tls.endpoint(),
            ca = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                stack.k8s_tls.ca_pem()
            ),
            token = stack.k8s.admin_token(),
        ),
    )?;
    Ok(vec![
        format!("export CLOUDSDK_CONFIG={}", gcloud.display()),
        format!("export KUBECONFIG={}", kubeconfig.display()),
        "gcloud compute instances list".to_string(),
        "kubectl get nodes".to_string(),
    ])
}
