//! Starts the Compute Engine and Kubernetes API simulators on fixed loopback ports so a person
//! can poke them with curl, or point nodewire's functions at them.
//!
//! ```text
//! cargo run -p nodewire-sim -- --compute-port 8091 --k8s-port 8092
//! curl -s localhost:8091/compute/v1/projects/example-project/aggregated/instances
//! curl -s -H "Authorization: Bearer $ADMIN_TOKEN" localhost:8092/api/v1/nodes   # printed at start
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nodewire::names::Cidr;
use sim::audit::AuditSink;
use sim::compute::{ComputeConfig, ComputeSim, SubnetSpec};
use sim::k8s::{IpamConfig, K8sConfig, K8sSim};

/// The CA whose pin the simulated cluster publishes in kube-public/cluster-info (public
/// certificate only; nothing verifies signatures in the simulation).
const TEST_CA: &str = include_str!("../../../shared/fixtures/test-ca.crt");

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Compute Engine and Kubernetes API simulators on 127.0.0.1"
)]
struct Args {
    /// Port of the Compute Engine simulator.
    #[arg(long, default_value_t = 8091)]
    compute_port: u16,
    /// Port of the Kubernetes API server simulator.
    #[arg(long, default_value_t = 8092)]
    k8s_port: u16,
    /// Project of the simulated VMs.
    #[arg(long, default_value = "example-project")]
    project: String,
    /// Region of the node subnet.
    #[arg(long, default_value = "asia-southeast1")]
    region: String,
    /// Node subnet name.
    #[arg(long, default_value = "k8s-nodes")]
    subnet: String,
    /// Node subnet primary range.
    #[arg(long, default_value = "10.122.16.0/21")]
    nodes_range: Cidr,
    /// Secondary range "pods" (also the cluster CIDR the simulated IPAM allocates /24s from).
    #[arg(long, default_value = "192.168.16.0/21")]
    pods_range: Cidr,
    /// Secondary range "services".
    #[arg(long, default_value = "172.16.16.0/21")]
    services_range: Cidr,
    /// From an accepted Compute mutation to DONE.
    #[arg(long, default_value_t = 200)]
    op_latency_ms: u64,
    /// From Node creation to the IPAM controller's podCIDR patch.
    #[arg(long, default_value_t = 500)]
    ipam_delay_ms: u64,
    /// Publish audit entries to this Pub/Sub emulator (HOST:PORT).
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pubsub_emulator: Option<String>,
    /// Topic id for Compute audit entries.
    #[arg(long, default_value = "gce-audit")]
    gce_audit_topic: String,
    /// Topic id for Kubernetes audit entries.
    #[arg(long, default_value = "k8s-audit")]
    k8s_audit_topic: String,
    /// Seed of the fault injector's random source.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let a = Args::parse();
    let sinks = match &a.pubsub_emulator {
        None => None,
        Some(host) => {
            let cfg = nodewire::config::PubSubConfig {
                project: a.project.clone(),
                emulator_endpoint: Some(format!("http://{host}")),
                topic_prefix: String::new(),
                dead_letter_topic: String::new(),
                publish_timeout: Duration::from_secs(10),
                gce_audit_topic: String::new(),
                k8s_audit_topic: String::new(),
            };
            let bus: Arc<dyn nodewire::bus::Bus> =
                Arc::new(nodewire::bus::PubSubBus::connect(&cfg).await?);
            Some((
                AuditSink {
                    bus: bus.clone(),
                    topic: format!("projects/{}/topics/{}", a.project, a.gce_audit_topic),
                    delay: std::time::Duration::ZERO,
                },
                AuditSink {
                    bus,
                    topic: format!("projects/{}/topics/{}", a.project, a.k8s_audit_topic),
                    delay: std::time::Duration::ZERO,
                },
            ))
        }
    };
    let compute_listener = tokio::net::TcpListener::bind(("127.0.0.1", a.compute_port)).await?;
    let k8s_listener = tokio::net::TcpListener::bind(("127.0.0.1", a.k8s_port)).await?;
    let compute = ComputeSim::start_on(
        compute_listener,
        ComputeConfig {
            seed: a.seed,
            op_latency: Duration::from_millis(a.op_latency_ms),
            subnets: vec![SubnetSpec {
                name: a.subnet.clone(),
                ..SubnetSpec::node_subnet(
                    &a.project,
                    &a.region,
                    a.nodes_range,
                    a.pods_range,
                    a.services_range,
                )
            }],
            audit: sinks.as_ref().map(|s| s.0.clone()),
            ..ComputeConfig::default()
        },
    )?;
    let k8s = K8sSim::start_on(
        k8s_listener,
        K8sConfig {
            seed: a.seed,
            ipam: Some(IpamConfig {
                cluster_cidr: a.pods_range,
                node_mask: 24,
                delay: Duration::from_millis(a.ipam_delay_ms),
            }),
            audit: sinks.map(|s| s.1),
            audit_project: a.project.clone(),
            audit_zone: format!("{}-a", a.region),
            ..K8sConfig::default()
        },
    )?;
    k8s.publish_cluster_info_in(a.nodes_range, TEST_CA)
        .map_err(|e| anyhow::anyhow!("seeding cluster-info: {}", e.message))?;
    println!(
        "Compute Engine simulator: {}  (project {}, subnet {}/{})",
        compute.endpoint(),
        a.project,
        a.region,
        a.subnet
    );
    println!("Kubernetes API simulator: {}", k8s.endpoint());
    println!(
        "  bearer tokens: admin (system:masters) {}  nodewire (kube-system/nodewire) {}",
        k8s.admin_token(),
        k8s.nodewire_token()
    );
    println!("Press Ctrl-C to stop.");
    nodewire::shutdown::signal().await;
    Ok(())
}
