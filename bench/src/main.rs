//! nodewire's benchmark binary (the per-delivery overhead is a criterion bench):
//!
//! ```text
//! cargo build --release -p instance-events -p nodewire-bench
//! target/release/nodewire-bench cold-start     # exec → first delivery; RSS after 1,000
//! target/release/nodewire-bench sweep          # 1,000 / 5,000 / 15,000 nodes, converged and 1% drift
//! target/release/nodewire-bench chain          # insert → wired, 1 VM and 100 VMs at once
//! target/release/nodewire-bench chain --vms 0 --latency realistic --join-mode metadata
//! target/release/nodewire-bench join-latency   # identity token → JoinConfiguration, p50/p99
//! target/release/nodewire-bench push-probe     # the Pub/Sub emulator's push delivery
//! ```

mod push_probe;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use nodewire_bench::{
    P, ZONES, deps, peak_rss_kib, peak_rss_kib_of, reset_peak_rss, wired_cluster,
};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "nodewire benchmarks (release build recommended)")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A fresh instance-events process: exec to first successful delivery; peak RSS after 1,000.
    ColdStart {
        /// The function binary.
        #[arg(long, default_value = "target/release/instance-events")]
        binary: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 1000)]
        deliveries: usize,
    },
    /// The drift sweep at several cluster sizes, converged and with 1% drift.
    Sweep {
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
        sizes: Vec<usize>,
    },
    /// The whole chain on the emulator: insert → wired.
    Chain {
        #[arg(long, default_value_t = 100)]
        vms: usize,
        /// The simulated world's pace: `fast` or `realistic` (see `sim::stack::Latency`).
        #[arg(long, default_value = "fast")]
        latency: sim::stack::Latency,
        /// `pull` (the default) or `metadata` (`NODEWIRE_JOIN_MODE`).
        #[arg(long, default_value = "pull")]
        join_mode: String,
        /// `emulator` (the default: the Pub/Sub emulator's push delivery, at most two
        /// deliveries in flight per subscription, see `push-probe`) or `in-process` (push
        /// delivery as Pub/Sub documents it: concurrent, the retry policy honoured).
        #[arg(long, default_value = "emulator")]
        bus: String,
        /// `cluster-first` (the default) or `alias-first` (`NODEWIRE_RANGE_ORDER`).
        #[arg(long, default_value = "cluster-first")]
        range_order: String,
        /// Alias-first, several pod ranges: `pods` is one /24 that another VM holds, `pods-b`
        /// a /16 (NODEWIRE_ADDITIONAL_POD_RANGES). The lone VM pays the refused allocation in
        /// `pods`; the VMs after it go to `pods-b` at once (a full range is tried last).
        #[arg(long)]
        first_range_full: bool,
    },
    /// The join service at the realistic pace: a VM's identity token → its JoinConfiguration.
    JoinLatency {
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// The Pub/Sub emulator's push delivery against an endpoint of our own: retry policy,
    /// deliveries in flight, behaviour after 503s.
    PushProbe,
}

fn envelope(data: &[u8], id: usize) -> String {
    json!({"subscription": "projects/example-project/subscriptions/bench",
           "message": {"data": base64::engine::general_purpose::STANDARD.encode(data), "messageId": id.to_string(),
                       "publishTime": "2030-01-01T00:00:00Z"}})
    .to_string()
}

async fn cold_start(binary: &str, runs: usize, deliveries: usize) -> anyhow::Result<()> {
    if !std::path::Path::new(binary).is_file() {
        bail!("{binary} not found: cargo build --release -p instance-events");
    }
    let emu = sim::emulator::Emulator::start(P).await?;
    emu.create_topic("nodewire-bootstrap").await?;
    let audit = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/gce-insert-last.json"),
    )?;
    let http = reqwest::Client::new();
    let mut starts = Vec::new();
    for run in 0..runs {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(binary)
            .env("PORT", port.to_string())
            .env("NODEWIRE_PROJECT", P)
            .env("PUBSUB_EMULATOR_HOST", emu.host())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the function")?;
        let url = format!("http://127.0.0.1:{port}/");
        loop {
            let ok = http
                .post(&url)
                .body(envelope(&audit, run))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 204);
            if ok {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no successful delivery within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        starts.push(t0.elapsed());
        if run + 1 == runs {
            let pid = child.id().unwrap_or_default();
            let rss_first = peak_rss_kib_of(pid).unwrap_or_default();
            let t1 = Instant::now();
            for i in 0..deliveries {
                let r = http
                    .post(&url)
                    .body(envelope(&audit, 1000 + i))
                    .send()
                    .await?;
                if r.status().as_u16() != 204 {
                    bail!("delivery {i}: HTTP {}", r.status());
                }
            }
            let took = t1.elapsed();
            let rss = peak_rss_kib_of(pid).unwrap_or_default();
            println!(
                "| peak RSS after the first delivery | {:.1} MiB |",
                rss_first as f64 / 1024.0
            );
            println!(
                "| peak RSS after {deliveries} more deliveries | {:.1} MiB |",
                rss as f64 / 1024.0
            );
            println!(
                "| {deliveries} sequential deliveries (each publishes to the emulator) | {:.2} s ({:.2} ms each) |",
                took.as_secs_f64(),
                took.as_secs_f64() * 1000.0 / deliveries as f64
            );
        }
        let _ = child.kill().await;
    }
    starts.sort();
    println!(
        "| exec → first successful delivery, {runs} runs | min {:.0} ms, median {:.0} ms, max {:.0} ms |",
        starts[0].as_secs_f64() * 1000.0,
        starts[starts.len() / 2].as_secs_f64() * 1000.0,
        starts[starts.len() - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn sweep(sizes: &[usize]) -> anyhow::Result<()> {
    println!(
        "| nodes | drift | wall time | list calls (compute / nodes / secrets) | findings | steps | peak RSS growth |"
    );
    println!("|---:|---|---:|---|---:|---:|---:|");
    for &n in sizes {
        let (compute, k8s) = wired_cluster(n).await;
        let d = deps(&compute, &k8s, "drift-sweep").await;
        for drift in [false, true] {
            if drift {
                compute.tamper(|w| {
                    for (i, inst) in w.instances.values_mut().enumerate() {
                        if i % 100 == 0 {
                            inst.tags.clear();
                        }
                    }
                });
            }
            let before = peak_rss_kib().unwrap_or_default();
            reset_peak_rss();
            let base = peak_rss_kib().unwrap_or(before);
            let t = Instant::now();
            let report =
                nodewire::sweep::run(&d, false, &nodewire::trace::TraceContext::new_root())
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            let took = t.elapsed();
            let peak = peak_rss_kib().unwrap_or_default();
            let calls = &report.api_calls;
            println!(
                "| {n} | {} | {:.2} s | {} / {} / {} | {} | {} | {:.1} MiB |",
                if drift { "1%" } else { "none" },
                took.as_secs_f64(),
                calls.get("compute.instances.aggregatedList").unwrap_or(&0),
                calls.get("k8s.nodes.list").unwrap_or(&0),
                calls.get("k8s.secrets.list").unwrap_or(&0),
                report.total(),
                report.steps,
                peak.saturating_sub(base) as f64 / 1024.0
            );
        }
    }
    Ok(())
}

async fn chain(
    vms: usize,
    latency: sim::stack::Latency,
    join_mode: &str,
    bus: &str,
    range_order: &str,
    first_range_full: bool,
) -> anyhow::Result<()> {
    let range_order = match range_order {
        "cluster-first" => nodewire::config::RangeOrder::ClusterFirst,
        "alias-first" => nodewire::config::RangeOrder::AliasFirst,
        other => bail!("--range-order {other:?}: cluster-first or alias-first"),
    };
    let join_mode = match join_mode {
        "pull" => nodewire::config::JoinMode::Pull,
        "metadata" => nodewire::config::JoinMode::Metadata,
        other => bail!("--join-mode {other:?}: pull or metadata"),
    };
    let bus_choice = match bus {
        "emulator" => sim::stack::BusChoice::Emulator,
        "in-process" => sim::stack::BusChoice::InProcess,
        other => bail!("--bus {other:?}: emulator or in-process"),
    };
    if first_range_full && range_order != nodewire::config::RangeOrder::AliasFirst {
        bail!("--first-range-full needs --range-order alias-first");
    }
    let mut opts = sim::stack::StackOptions {
        join_mode,
        bus: bus_choice,
        range_order,
        ..sim::stack::StackOptions::default()
    };
    if first_range_full {
        opts.pods_range = "10.4.0.0/24".parse()?;
        opts.extra_pod_ranges = vec![("pods-b".into(), "10.8.0.0/16".parse()?)];
    }
    let stack = sim::stack::Stack::start(latency.apply(opts))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "join mode: {}; push delivery: {bus}; range order: {}; first pod range full: {first_range_full}",
        join_mode.as_str(),
        range_order.as_str()
    );
    if first_range_full {
        // Another team's VM on the subnet holds the only block of `pods`.
        stack
            .insert_vm_asking(
                P,
                ZONES[0],
                "holder",
                &[("cluster", "other")],
                true,
                Some("/24"),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let t = Instant::now();
        while stack
            .compute
            .instance_json(P, ZONES[0], "holder")
            .and_then(|v| v.pointer("/networkInterfaces/0/aliasIpRanges/0").cloned())
            .is_none()
        {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the holder VM got no range");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let bound = match latency {
        sim::stack::Latency::Fast => Duration::from_secs(60),
        sim::stack::Latency::Realistic => Duration::from_secs(600),
    };
    let t = Instant::now();
    stack
        .insert_vm(P, ZONES[0], "bench-single", &[("cluster", "demo")], true)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    // The milestones, polled every 50 ms from the simulators' state.
    let (mut running, mut registered, mut untainted, mut wired) = (None, None, None, None);
    while wired.is_none() && t.elapsed() < bound {
        let now = t.elapsed();
        if running.is_none()
            && stack
                .compute
                .instance_json(P, ZONES[0], "bench-single")
                .is_some_and(|v| v["status"] == "RUNNING")
        {
            running = Some(now);
        }
        let node = stack.k8s.object("nodes", "", "bench-single");
        if registered.is_none() && node.is_some() {
            registered = Some(now);
        }
        let tainted = |n: &serde_json::Value| {
            n.pointer("/spec/taints")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t["key"] == nodewire::names::UNWIRED_TAINT))
        };
        if untainted.is_none() && node.as_ref().is_some_and(|n| !tainted(n)) {
            untainted = Some(now);
        }
        if stack.wired(ZONES[0], "bench-single").is_ok() {
            wired = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (Some(running), Some(registered), Some(untainted), Some(wired)) =
        (running, registered, untainted, wired)
    else {
        bail!("the single VM was not wired within {bound:?}");
    };
    let s = |d: Duration| d.as_secs_f64();
    println!("| 1 VM: instances.insert → RUNNING | {:.2} s |", s(running));
    println!(
        "| 1 VM: instances.insert → Node registered | {:.2} s |",
        s(registered)
    );
    println!(
        "| 1 VM: Node registered → untainted | {:.2} s |",
        s(untainted.saturating_sub(registered))
    );
    println!(
        "| 1 VM: untainted → wired (join metadata cleared) | {:.2} s |",
        s(wired.saturating_sub(untainted))
    );
    println!("| 1 VM: instances.insert → wired | {:.2} s |", s(wired));
    let before = retries(&stack);
    println!("| 1 VM: deliveries answered 503 (redelivery asked) | {before} |");
    if vms == 0 {
        stack.stop().await;
        return Ok(());
    }
    let t = Instant::now();
    for i in 0..vms {
        stack
            .insert_vm(
                P,
                ZONES[i % 2],
                &format!("bench-{i:03}"),
                &[("cluster", "demo")],
                true,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let mut wired_at: BTreeMap<usize, Duration> = BTreeMap::new();
    while wired_at.len() < vms && t.elapsed() < bound {
        for i in 0..vms {
            if !wired_at.contains_key(&i)
                && stack.wired(ZONES[i % 2], &format!("bench-{i:03}")).is_ok()
            {
                wired_at.insert(i, t.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times: Vec<Duration> = wired_at.values().copied().collect();
    times.sort();
    if times.len() < vms {
        bail!("only {} of {vms} VMs wired within {bound:?}", times.len());
    }
    println!(
        "| {vms} VMs inserted at once → all wired | {:.2} s (median VM {:.2} s, first {:.2} s) |",
        times[vms - 1].as_secs_f64(),
        times[vms / 2].as_secs_f64(),
        times[0].as_secs_f64()
    );
    println!(
        "| {vms} VMs: deliveries answered 503 | {} |",
        retries(&stack) - before
    );
    for (name, a) in stack.answers() {
        println!("  {name}: {a:?}");
    }
    stack.stop().await;
    Ok(())
}

/// Deliveries the step and event functions answered 503 so far (Pub/Sub redelivers them; the
/// `join` service's 503s are answers to VMs, not counted).
fn retries(stack: &sim::stack::Stack) -> usize {
    stack
        .answers()
        .iter()
        .filter(|(name, _)| name.as_str() != "join")
        .map(|(_, a)| a.get(&503).copied().unwrap_or(0))
        .sum()
}

/// The `join` service under the realistic profile: `requests` VMs (seeded RUNNING, their
/// startup scripts idle) each ask the metadata server for an identity token and POST it, 20 at
/// a time, as VMs of a group booting together do. The time is the VM's: from asking for the
/// token to holding the JoinConfiguration.
async fn join_latency(requests: usize) -> anyhow::Result<()> {
    let opts = sim::stack::Latency::Realistic.apply(sim::stack::StackOptions {
        join_delay: Duration::from_secs(24 * 3600),
        ..sim::stack::StackOptions::default()
    });
    let stack = sim::stack::Stack::start(opts)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    for i in 0..requests {
        stack
            .compute
            .seed_instance(sim::compute::InstanceSeed::node_vm(
                P,
                "us-central1",
                ZONES[0],
                &format!("join-{i:04}"),
            ))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let join_url = stack
        .env()
        .get("NODEWIRE_JOIN_URL")
        .cloned()
        .context("the stack's join URL")?;
    let metadata_url = stack.metadata.url();
    let http = reqwest::Client::new();
    let mut times: Vec<Duration> = Vec::with_capacity(requests);
    for batch in (0..requests).collect::<Vec<_>>().chunks(20) {
        let mut tasks = Vec::new();
        for &i in batch {
            let (http, join_url, metadata_url) =
                (http.clone(), join_url.clone(), metadata_url.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let token = http
                    .get(format!(
                        "{metadata_url}/instance/service-accounts/default/identity"
                    ))
                    .query(&[("audience", sim::stack::JOIN_AUDIENCE), ("format", "full")])
                    .header("Metadata-Flavor", "Google")
                    .header(
                        sim::metadata::INSTANCE_HEADER,
                        format!("{P}/{}/join-{i:04}", ZONES[0]),
                    )
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await?;
                // The VM's own key pair and certificate request, as node.sh makes them (the
                // key stays with the VM; its making is part of the VM's time).
                let (_key, csr) = sim::kubelet_cert::node_key_and_request(&format!("join-{i:04}"))
                    .map_err(|e| anyhow::anyhow!(e))?;
                let r = http
                    .post(format!("{join_url}/v1/join"))
                    .bearer_auth(token)
                    .body(csr)
                    .send()
                    .await?;
                let status = r.status();
                let body = r.text().await?;
                anyhow::ensure!(status.as_u16() == 200, "HTTP {status}: {body}");
                anyhow::ensure!(
                    body.contains("kind: JoinConfiguration"),
                    "not a JoinConfiguration"
                );
                Ok::<Duration, anyhow::Error>(t.elapsed())
            }));
        }
        for t in tasks {
            times.push(t.await.context("a request task")??);
        }
    }
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "| {requests} VMs, 20 at a time: identity token and CSR → signed credential and JoinConfiguration | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    stack.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::ColdStart {
            binary,
            runs,
            deliveries,
        } => cold_start(&binary, runs.max(1), deliveries).await,
        Cmd::Sweep { sizes } => sweep(&sizes).await,
        Cmd::Chain {
            vms,
            latency,
            join_mode,
            bus,
            range_order,
            first_range_full,
        } => {
            chain(
                vms,
                latency,
                &join_mode,
                &bus,
                &range_order,
                first_range_full,
            )
            .await
        }
        Cmd::JoinLatency { requests } => join_latency(requests.max(1)).await,
        Cmd::PushProbe => push_probe::probe().await,
    }
}
