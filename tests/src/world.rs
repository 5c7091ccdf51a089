//! The whole system on loopback for the end-to-end and sweep tests: a thin, panicking wrapper
//! over [`sim::stack::Stack`] on the real Pub/Sub emulator.

use std::ops::Deref;

use sim::emulator::Emulator;
use sim::stack::{BusChoice, Stack, StackOptions};

/// A project with no business with this cluster (for "another project: untouched").
pub const OTHER_PROJECT: &str = "other-project";
/// The pod range of the test cluster.
pub const POD_RANGE: &str = "10.4.0.0/16";
/// The test cluster's node tag.
pub const NODE_TAG: &str = "k8s-node";

/// Options of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOptions {
    /// Probability of an injected fault on every method of both simulators.
    pub faults: f64,
    /// Publish every step message twice.
    pub duplicate_steps: bool,
    /// `NODEWIRE_INSTANCE_PREFIX` of every function.
    pub name_prefix: Option<&'static str>,
    /// The RBAC manifests the Kubernetes simulator enforces instead of the shipped ones.
    pub rbac_manifests: Option<&'static str>,
    /// `NODEWIRE_JOIN_MODE=metadata` instead of the default pull mode.
    pub metadata_mode: bool,
}

/// Everything running, on the emulator.
#[derive(Debug)]
pub struct World(pub Stack);

impl Deref for World {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl World {
    /// The writes nodewire made, as `METHOD PATH`: Compute requests other than GET and
    /// operation polls; Kubernetes requests other than GET, without the kubelets' status
    /// updates, Events, and the sweep's lock (`kube-system` ConfigMaps).
    pub fn writes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .compute
            .chaos()
            .requests()
            .into_iter()
            .filter(|r| r.http_method != "GET" && !r.method.starts_with("zoneOperations"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        out.extend(
            self.k8s
                .chaos()
                .requests()
                .into_iter()
                .filter(|r| {
                    r.http_method != "GET"
                        && !r.method.starts_with("nodes.status.")
                        && !r.method.starts_with("events.")
                        && !r
                            .path
                            .starts_with("/api/v1/namespaces/kube-system/configmaps")
                })
                .map(|r| format!("{} {}", r.method, r.path)),
        );
        out
    }

    /// Starts everything; fails the test (never skips) when a part cannot start.
    pub async fn start(o: WorldOptions) -> Self {
        let opts = StackOptions {
            bus: BusChoice::Emulator,
            faults: o.faults,
            duplicate_steps: o.duplicate_steps,
            name_prefix: o.name_prefix.map(str::to_string),
            rbac_manifests: o.rbac_manifests.map(|m| vec![m.to_string()]),
            join_mode: if o.metadata_mode {
                nodewire::config::JoinMode::Metadata
            } else {
                nodewire::config::JoinMode::Pull
            },
            ..StackOptions::default()
        };
        match Stack::start(opts).await {
            Ok(s) => World(s),
            Err(e) => panic!("the end-to-end stack did not start: {e}"),
        }
    }

    /// The emulator.
    pub fn emu(&self) -> &Emulator {
        self.0.emu.as_ref().expect("started on the emulator")
    }

    /// [`Stack::insert_vm`]; fails the test when the simulator keeps refusing.
    pub async fn insert_vm(&self, p: &str, z: &str, n: &str, l: &[(&str, &str)], fwd: bool) {
        let done = self.0.insert_vm(p, z, n, l, fwd).await;
        done.expect("instances.insert");
    }

    pub async fn delete_vm(&self, zone: &str, name: &str) {
        self.0
            .delete_vm(zone, name)
            .await
            .expect("instances.delete");
    }

    pub async fn delete_node(&self, name: &str) {
        self.0.delete_node(name).await.expect("delete node");
    }

    pub async fn sweep(&self, dry_run: bool) -> nodewire::sweep::Report {
        self.0.sweep(dry_run).await.expect("sweep")
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }
}
