//! `nodewire`: the operator's command line. Replays events, runs the drift sweep, shows the
//! state of each node, and runs the whole system locally (`nodewire sandbox`).
//!
//! Every command reads the same environment as the functions (`NODEWIRE_PROJECT`,
//! `PUBSUB_EMULATOR_HOST`, `NODEWIRE_COMPUTE_ENDPOINT`, `NODEWIRE_KUBE_API_URL`, …), so it works
//! against Google's APIs with Application Default Credentials or against the emulator and the
//! simulators unchanged.
//!
//! Exit codes: 0 success; 1 failure; 2 usage error; 3 some input was skipped (replay) or the
//! sandbox did not converge; 64 configuration error.

mod replay;
mod sandbox;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use nodewire::act::deps::ChainDeps;
use nodewire::config::Config;
use nodewire::event::Step;

#[derive(Debug, Parser)]
#[command(
    name = "nodewire",
    version,
    about = "Operate nodewire: replay events, sweep drift, show status, run the local sandbox"
)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Republish logged events, dead-lettered messages, or a step for one VM.
    Replay(ReplayArgs),
    /// Run the drift sweep from this workstation and print the drift table.
    Sweep {
        /// Report only; publish no step.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show, for one node/VM or all, each aspect of "wired" and what is missing.
    Status {
        /// A VM (= Node) name; all when omitted.
        name: Option<String>,
    },
    /// Run everything on this machine with no cloud account and show VMs becoming wired nodes.
    Sandbox(sandbox::SandboxArgs),
}

#[derive(Debug, Args)]
#[group(skip)]
#[command(group = clap::ArgGroup::new("source").required(true).multiple(false).args(["file", "dead_letter", "instance"]))]
struct ReplayArgs {
    /// A LogEntry, a JSON array of them, or `gcloud logging read --format=json` output.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A dead-letter subscription to pull from.
    #[arg(long, value_name = "SUBSCRIPTION")]
    dead_letter: Option<String>,
    /// `projects/P/zones/Z/instances/N`: enqueue a step for this VM.
    #[arg(long)]
    instance: Option<String>,
    /// With --instance: the step (default: the first one the planner says is missing).
    #[arg(long, requires = "instance")]
    step: Option<String>,
    /// With --dead-letter: republish the messages whose reason, instance or data contain TEXT.
    #[arg(long, value_name = "TEXT", requires = "dead_letter")]
    filter: Option<String>,
    /// With --dead-letter: republish every message.
    #[arg(long, requires = "dead_letter", conflicts_with = "filter")]
    all: bool,
    /// With --dead-letter: stop after this many seconds without a message.
    #[arg(long, default_value_t = 3, requires = "dead_letter")]
    quiet_secs: u64,
    /// With --dead-letter: look at this many messages at most.
    #[arg(long, default_value_t = 1000, requires = "dead_letter", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max: u64,
    /// Show what would be published; publish and acknowledge nothing.
    #[arg(long)]
    dry_run: bool,
}

fn config() -> Config {
    nodewire::startup::config_or_exit("nodewire")
}

/// The chain's clients, as the step functions build them (exit 64 on a bad configuration).
async fn deps_with_clients() -> anyhow::Result<ChainDeps> {
    let cfg = config();
    let chain = nodewire::startup::chain_config_or_exit("nodewire", &cfg);
    Ok(nodewire::startup::connect_chain(cfg, chain).await?)
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("nodewire: serializing the output failed: {e}"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay(a) => replay_cmd(a, cli.json).await,
        Command::Sweep { dry_run } => {
            let deps = deps_with_clients().await?;
            let report =
                nodewire::sweep::run(&deps, dry_run, &nodewire::trace::TraceContext::new_root())
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            deps.base.bus.flush().await;
            if cli.json {
                print_json(&report);
            } else {
                status::print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { name } => {
            let deps = deps_with_clients().await?;
            let rows = status::collect(&deps, name.as_deref()).await?;
            if name.is_some() && rows.is_empty() {
                eprintln!("nodewire: no VM or Node named {}", name.unwrap_or_default());
                return Ok(ExitCode::from(1));
            }
            if cli.json {
                print_json(&rows);
            } else {
                status::print_rows(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(a) => sandbox::run(a, cli.json).await,
    }
}

async fn replay_cmd(a: ReplayArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = config();
    if let Some(path) = &a.file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let entries = replay::entries(&text).with_context(|| format!("{}", path.display()))?;
        let bus = nodewire::bus::PubSubBus::connect(&cfg.pubsub).await?;
        let summary = replay::from_file(&bus, &cfg, &entries, a.dry_run).await;
        if json {
            print_json(&summary);
        } else {
            for p in &summary.published {
                println!("published  {p}");
            }
            for s in &summary.skipped {
                println!("skipped    {s}");
            }
            for f in &summary.failed {
                println!("FAILED     {f}");
            }
        }
        return Ok(if !summary.failed.is_empty() {
            ExitCode::from(1)
        } else if !summary.skipped.is_empty() {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        });
    }
    if let Some(sub) = &a.dead_letter {
        let bus = nodewire::bus::PubSubBus::connect(&cfg.pubsub).await?;
        let dls = replay::dead_letters(
            &cfg,
            &bus,
            sub,
            a.filter.as_deref(),
            a.all,
            a.dry_run,
            Duration::from_secs(a.quiet_secs),
            usize::try_from(a.max).unwrap_or(usize::MAX),
        )
        .await?;
        if json {
            print_json(&dls);
        } else {
            println!(
                "{:<20} {:<10} {:<60} REASON",
                "MESSAGE", "ACTION", "INSTANCE"
            );
            for d in &dls {
                let action = match (&d.republished_to, d.chosen, &d.refused) {
                    (Some(_), _, _) => "republished",
                    (None, true, Some(_)) => "refused",
                    (None, true, None) if a.dry_run => "would send",
                    (None, _, _) => "kept",
                };
                let why_not = d
                    .refused
                    .as_deref()
                    .map(|w| format!(" (cannot be republished: {w})"))
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<10} {:<60} {}{why_not}",
                    d.message_id, action, d.instance, d.reason
                );
            }
            if !a.all && a.filter.is_none() {
                println!(
                    "\n{} message(s) shown; none republished (use --all or --filter TEXT).",
                    dls.len()
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let instance = a.instance.unwrap_or_default();
    let deps = deps_with_clients().await?;
    // Refused before anything is published, with or without --step: a step for a VM that is
    // not nodewire's would be ignored by the step function anyway.
    let obs = status::observe_ours(&deps, &instance).await?;
    let step = match &a.step {
        Some(s) => s
            .parse::<Step>()
            .map_err(|e| anyhow::anyhow!("--step: {e}"))?,
        None => match status::first_step(&obs, &deps.plan) {
            Some(s) => s,
            None => {
                println!(
                    "{instance} is wired (or waiting for its kubelet); nothing to replay. Pass --step to force one."
                );
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    let msg = replay::step_message(&instance, step)?;
    if a.dry_run {
        println!("would publish {step} for {instance}");
    } else {
        let id = deps
            .base
            .publish_step(&msg, &nodewire::trace::TraceContext::new_root())
            .await?;
        deps.base.bus.flush().await;
        println!("published {step} for {instance} (message {id})");
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Sandbox(_)) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodewire: {e:#}");
            ExitCode::from(1)
        }
    }
}
