//! The node IPAM controller, as kube-controller-manager's RangeAllocator runs it: some time
//! after a Node is created without a podCIDR, it patches in the first free
//! `--node-cidr-mask-size` block of `--cluster-cidr` (logging `CIDRNotAvailable` when there is
//! none), and the audit pipeline records the patch as the node controller's.

use std::sync::Arc;
use std::time::Duration;

use nodewire::names::Cidr;
use serde_json::{Value, json};

use super::objects::{str_at, update};
use super::{Sim, patch};
use crate::blocks::first_free;

/// The node IPAM controller's settings.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// `--cluster-cidr`.
    pub cluster_cidr: Cidr,
    /// `--node-cidr-mask-size` (24).
    pub node_mask: u8,
    /// From Node creation to the podCIDR patch.
    pub delay: Duration,
}

impl Sim {
    /// Runs the node IPAM controller for a new Node after the configured delay.
    pub(super) fn schedule_ipam(self: &Arc<Self>, name: String) {
        let Some(ipam) = self.config.ipam.clone() else {
            return;
        };
        let sim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ipam.delay).await;
            if let Some(patch) = sim.assign_pod_cidr(&ipam, &name) {
                sim.audit_node(
                    "patch",
                    &name,
                    200,
                    // kube-controller-manager with --use-service-account-credentials
                    // (kubeadm's default) runs the node IPAM controller as this account.
                    &super::rbac::Identity::service_account("kube-system", "node-controller"),
                    Some(patch),
                );
            }
        });
    }

    /// Patches a free block into the Node's podCIDR(s) if it still has none; the patch sent.
    fn assign_pod_cidr(&self, ipam: &IpamConfig, name: &str) -> Option<Value> {
        let mut st = self.store();
        let key = ("nodes".to_string(), String::new(), name.to_string());
        let node = st.objects.get(&key).cloned()?;
        if !str_at(&node, "/spec/podCIDR").is_empty() {
            return None;
        }
        let used: Vec<Cidr> = st
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == "nodes")
            .filter_map(|(_, n)| str_at(n, "/spec/podCIDR").parse::<Cidr>().ok())
            .collect();
        let Some(cidr) = first_free(ipam.cluster_cidr, ipam.node_mask, &used) else {
            tracing::warn!(node = %name, "simulated IPAM: no CIDR available (CIDRNotAvailable)");
            return None;
        };
        let mut updated = node.clone();
        let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
        patch::merge_patch(&mut updated, &patch);
        if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        match update(&mut st, "nodes", "", name, updated, false) {
            Ok(_) => Some(patch),
            Err(e) => {
                tracing::warn!(node = %name, error = %e.message, "simulated IPAM: patch refused");
                None
            }
        }
    }
}
