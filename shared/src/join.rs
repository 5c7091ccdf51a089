//! What a node VM is given to join: the kubeadm JoinConfiguration (written into its metadata,
//! `kubeadm-join`, in metadata mode; answered by the `join` service in pull mode) and, in pull
//! mode, the discovery kubeconfig holding the client certificate the cluster signed for the VM's
//! own key. Pure: no I/O.
//!
//! Every value is written as a double-quoted YAML scalar produced by a JSON string encoder, so
//! no value can break the document's structure.

pub mod approve;
pub mod csr;

use base64::Engine as _;

use crate::config::JoinApi;

/// Where the pull-mode startup script keeps the key pair it made for its join (mode 0600, in
/// its own 0700 directory, outside `/etc/kubernetes/pki`, which `kubeadm reset` empties between
/// tries); the discovery kubeconfig names it, so the key never leaves the VM.
pub const BOOTSTRAP_KEY_PATH: &str = "/var/lib/nodewire/startup/bootstrap-client.key";

/// Where the pull-mode startup script writes the discovery kubeconfig it was answered.
pub const DISCOVERY_KUBECONFIG_PATH: &str = "/etc/kubernetes/nodewire-discovery.conf";

/// The line between the two documents of a pull-mode answer (the kubeconfig first, then the
/// JoinConfiguration).
pub const ANSWER_SEPARATOR: &str = "---\n";

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

/// How kubeadm finds and trusts the cluster, and with which credential the kubelet makes its
/// own certificate request.
#[derive(Clone, PartialEq, Eq)]
pub enum Discovery<'a> {
    /// Metadata mode: a bootstrap token, the API server and the CA's pin.
    Token {
        /// `HOST:PORT` of the API server.
        api_server: &'a str,
        /// `id.secret`. Never logged.
        token: &'a str,
        /// `sha256:…`.
        ca_pin: &'a str,
    },
    /// Pull mode: the discovery kubeconfig at [`DISCOVERY_KUBECONFIG_PATH`] (the cluster's CA,
    /// its server and the VM's client certificate; kubeadm uses that credential for the
    /// kubelet's TLS bootstrap when no `tlsBootstrapToken` is given).
    File,
}

/// What goes into a JoinConfiguration.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinParams<'a> {
    pub discovery: Discovery<'a>,
    /// Equals the instance name.
    pub node_name: &'a str,
    /// `gce://PROJECT/ZONE/NAME`.
    pub provider_id: &'a str,
    /// Key of the NoSchedule taint the node registers with.
    pub taint_key: &'a str,
}

impl std::fmt::Debug for JoinParams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let discovery = match &self.discovery {
            Discovery::Token { api_server, .. } => format!("token [redacted] for {api_server}"),
            Discovery::File => format!("file {DISCOVERY_KUBECONFIG_PATH}"),
        };
        f.debug_struct("JoinParams")
            .field("discovery", &discovery)
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
    let discovery = match &p.discovery {
        Discovery::Token {
            api_server,
            token,
            ca_pin,
        } => format!(
            "# Written by nodewire for this VM only; the token expires shortly.\n\
             apiVersion: kubeadm.k8s.io/{version}\n\
             kind: JoinConfiguration\n\
             discovery:\n\
             \x20 bootstrapToken:\n\
             \x20   apiServerEndpoint: {api}\n\
             \x20   token: {token}\n\
             \x20   caCertHashes:\n\
             \x20     - {pin}\n",
            api = q(api_server),
            token = q(token),
            pin = q(ca_pin),
        ),
        Discovery::File => format!(
            "# Written by nodewire for this VM only: the discovery file holds the client\n\
             # certificate the cluster signed for this VM's own key.\n\
             apiVersion: kubeadm.k8s.io/{version}\n\
             kind: JoinConfiguration\n\
             discovery:\n\
             \x20 file:\n\
             \x20   kubeConfigPath: {path}\n",
            path = q(DISCOVERY_KUBECONFIG_PATH),
        ),
    };
    format!(
        "{discovery}\
         nodeRegistration:\n\
         \x20 name: {name}\n\
         {extra_args}\
         \x20 taints:\n\
         \x20   - key: {taint}\n\
         \x20     effect: \"NoSchedule\"\n",
        name = q(p.node_name),
        taint = q(p.taint_key),
    )
}

/// The discovery kubeconfig of a pull-mode join: the cluster (server, CA) and, as its one user,
/// the client certificate signed for the VM, whose key is the file the VM made
/// ([`BOOTSTRAP_KEY_PATH`]). It holds no secret: the key is not in it.
pub fn discovery_kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, node_name: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = format!("system:node:{node_name}");
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         \x20 - name: \"kubernetes\"\n\
         \x20   cluster:\n\
         \x20     server: {server}\n\
         \x20     certificate-authority-data: {ca}\n\
         users:\n\
         \x20 - name: {user}\n\
         \x20   user:\n\
         \x20     client-certificate-data: {cert}\n\
         \x20     client-key: {key}\n\
         contexts:\n\
         \x20 - name: \"nodewire-bootstrap\"\n\
         \x20   context:\n\
         \x20     cluster: \"kubernetes\"\n\
         \x20     user: {user}\n\
         current-context: \"nodewire-bootstrap\"\n",
        server = q(server),
        ca = q(&b64(ca_pem)),
        cert = q(&b64(cert_pem)),
        key = q(BOOTSTRAP_KEY_PATH),
        user = q(&user),
    )
}

/// A pull-mode answer: the discovery kubeconfig, [`ANSWER_SEPARATOR`], the JoinConfiguration.
pub fn pull_answer(kubeconfig: &str, join_configuration: &str) -> String {
    format!("{kubeconfig}{ANSWER_SEPARATOR}{join_configuration}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> JoinParams<'static> {
        JoinParams {
            discovery: Discovery::Token {
                api_server: "10.122.16.1:6443",
                token: "abcdef.0123456789abcdef",
                ca_pin: "sha256:9b2e83abf8135cfbfcd47ce023f5c31fe8fc12ec1a87cb12fda3cbbdb24dcfab",
            },
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

    #[test]
    fn file_discovery_names_the_kubeconfig_and_no_token() {
        let mut p = params();
        p.discovery = Discovery::File;
        let y = join_configuration(&p, JoinApi::V1beta4);
        assert!(y.contains(
            "discovery:\n  file:\n    kubeConfigPath: \"/etc/kubernetes/nodewire-discovery.conf\"\n"
        ));
        assert!(!y.contains("token") && !y.contains("bootstrapToken"), "{y}");
        assert!(y.contains("  name: \"k8s-worker-1\"\n"));
    }

    #[test]
    fn the_discovery_kubeconfig_parses_and_holds_no_key() {
        let kc = discovery_kubeconfig(
            "https://10.0.0.2:6443",
            "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n",
            "k8s-a",
        );
        let parsed = kube::config::Kubeconfig::from_yaml(&kc).expect("a kubeconfig");
        assert_eq!(
            parsed.current_context.as_deref(),
            Some("nodewire-bootstrap")
        );
        let user = parsed.auth_infos[0].auth_info.clone().expect("user");
        assert_eq!(parsed.auth_infos[0].name, "system:node:k8s-a");
        assert_eq!(user.client_key.as_deref(), Some(BOOTSTRAP_KEY_PATH));
        assert!(user.client_key_data.is_none());
        assert!(user.client_certificate_data.is_some());
        let cluster = parsed.clusters[0].cluster.clone().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.2:6443"));
        let answer = pull_answer(&kc, "kind: JoinConfiguration\n");
        assert_eq!(answer.matches(ANSWER_SEPARATOR).count(), 1);
    }
}
