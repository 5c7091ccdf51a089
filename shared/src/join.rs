//! The kubeadm JoinConfiguration nodewire writes into a VM's metadata (`kubeadm-join`), for the
//! node's startup script to pass to `kubeadm join --config`. Pure: no I/O.
//!
//! Every value is written as a double-quoted YAML scalar produced by a JSON string encoder, so
//! no value can break the document's structure.

use crate::config::JoinApi;

/// The metadata key the startup script reads.
pub const JOIN_METADATA_KEY: &str = "kubeadm-join";

/// nodewire's mark on a VM that joined (written when its join metadata is cleared).
pub const JOINED_METADATA_KEY: &str = "nodewire-joined";

/// The metadata key the node-side unit watches: every new value restarts the kubelet, which
/// registers its Node again when it is gone (a running kubelet does not).
pub const KUBELET_RESTART_METADATA_KEY: &str = "nodewire-restart-kubelet";

/// nodewire's count of join tokens minted for a VM that has not joined yet (`COUNT@UNIX`),
/// written with the join configuration and removed with it once the VM joined: it bounds
/// re-minting (see `plan::BootstrapAttempts`).
pub const BOOTSTRAP_ATTEMPTS_METADATA_KEY: &str = "nodewire-bootstrap-attempts";

/// What goes into a JoinConfiguration.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinParams<'a> {
    /// `HOST:PORT` of the API server.
    pub api_server: &'a str,
    /// `id.secret`. Never logged.
    pub token: &'a str,
    /// `sha256:…`.
    pub ca_pin: &'a str,
    /// Equals the instance name.
    pub node_name: &'a str,
    /// `gce://PROJECT/ZONE/NAME`.
    pub provider_id: &'a str,
    /// Key of the NoSchedule taint the node registers with.
    pub taint_key: &'a str,
}

impl std::fmt::Debug for JoinParams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinParams")
            .field("api_server", &self.api_server)
            .field("token", &"[redacted]")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Renders the JoinConfiguration.
pub fn join_configuration(p: &JoinParams<'_>, api: JoinApi) -> String {
    let (version, extra_args) = match api {
        JoinApi::V1beta4 => (
            "v1beta4",
            format!(
                "  kubeletExtraArgs:\n    - name: \"provider-id\"\n      value: {}\n",
                q(p.provider_id)
            ),
        ),
        JoinApi::V1beta3 => (
            "v1beta3",
            format!(
                "  kubeletExtraArgs:\n    provider-id: {}\n",
                q(p.provider_id)
            ),
        ),
    };
    format!(
        "# Written by nodewire for this VM only; the token expires shortly.\n\
         apiVersion: kubeadm.k8s.io/{version}\n\
         kind: JoinConfiguration\n\
         discovery:\n\
         \x20 bootstrapToken:\n\
         \x20   apiServerEndpoint: {api}\n\
         \x20   token: {token}\n\
         \x20   caCertHashes:\n\
         \x20     - {pin}\n\
         nodeRegistration:\n\
         \x20 name: {name}\n\
         {extra_args}\
         \x20 taints:\n\
         \x20   - key: {taint}\n\
         \x20     effect: \"NoSchedule\"\n",
        api = q(p.api_server),
        token = q(p.token),
        pin = q(p.ca_pin),
        name = q(p.node_name),
        taint = q(p.taint_key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> JoinParams<'static> {
        JoinParams {
            api_server: "10.122.16.1:6443",
            token: "abcdef.0123456789abcdef",
            ca_pin: "sha256:9b2e83abf8135cfbfcd47ce023f5c31fe8fc12ec1a87cb12fda3cbbdb24dcfab",
            node_name: "k8s-worker-1",
            provider_id: "gce://example-project/us-central1-a/k8s-worker-1",
            taint_key: "nodewire.io/unwired",
        }
    }

    #[test]
    fn v1beta4_shape() {
        let y = join_configuration(&params(), JoinApi::V1beta4);
        assert!(y.contains("apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\n"));
        assert!(y.contains("    - name: \"provider-id\"\n      value: \"gce://example-project/us-central1-a/k8s-worker-1\"\n"));
        assert!(y.contains("  name: \"k8s-worker-1\"\n"));
        assert!(y.contains("token: \"abcdef.0123456789abcdef\""));
        assert!(y.contains("    - key: \"nodewire.io/unwired\"\n      effect: \"NoSchedule\"\n"));
        assert!(!format!("{:?}", params()).contains("0123456789abcdef"));
    }

    #[test]
    fn v1beta3_shape_and_quoting() {
        let y = join_configuration(&params(), JoinApi::V1beta3);
        assert!(y.contains("apiVersion: kubeadm.k8s.io/v1beta3"));
        assert!(y.contains("  kubeletExtraArgs:\n    provider-id: \"gce://example-project/us-central1-a/k8s-worker-1\"\n"));
        let mut p = params();
        p.node_name = "evil\"\nkind: x";
        let y = join_configuration(&p, JoinApi::V1beta4);
        assert!(y.contains("name: \"evil\\\"\\nkind: x\""), "{y}");
    }
}
