//! ConfigMaps carry no rules of their own; this is kubeadm's `kube-public/cluster-info`, the
//! ConfigMap a joining node reads to find the API server and its CA.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{ApiError, K8sSim};

impl K8sSim {
    /// Publishes `kube-public/cluster-info` as kubeadm does: a kubeconfig naming the API server
    /// `https://{host}:6443` and the cluster CA (PEM).
    ///
    /// # Errors
    /// The API error the create answered.
    pub fn publish_cluster_info(&self, host: &str, ca_pem: &str) -> Result<Value, ApiError> {
        self.publish_cluster_info_as(host, ca_pem)
    }

    /// Seeds `cluster-info` with the API server on the first address of the node range (where
    /// a control-plane VM would be) and `ca_pem`.
    ///
    /// # Errors
    /// The API error the create answered.
    pub fn publish_cluster_info_in(
        &self,
        nodes: nodewire::names::Cidr,
        ca_pem: &str,
    ) -> Result<Value, ApiError> {
        let host = nodes
            .net()
            .hosts()
            .next()
            .map(|h| h.to_string())
            .unwrap_or_default();
        self.publish_cluster_info_as(&host, ca_pem)
    }

    fn publish_cluster_info_as(&self, host: &str, ca_pem: &str) -> Result<Value, ApiError> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://{host}:6443\n    certificate-authority-data: {}\ncontexts: []\nusers: []\n",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        );
        self.seed(
            "configmaps",
            "kube-public",
            json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig}}),
        )
    }
}
