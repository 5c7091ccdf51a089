//! The least-privilege table as data: for every function, the IAM permissions of its Compute
//! calls, its Kubernetes access, and the topics it publishes to. `docs/operations.md` shows the
//! same table for people; the deployment contract test (`tests/tests/deployment.rs`) holds the
//! Terraform's custom roles, Pub/Sub grants and `infra/k8s/nodewire-rbac.yaml` to it, and checks
//! the documentation's rows against it.
//!
//! Every function may also publish to the dead-letter topic, and every function that runs as
//! nodewire's Kubernetes ServiceAccount may create Warning Events (after a `nodes get` for the
//! Node's uid); those are listed once, in [`EVERY_FUNCTION`], not per row. The `join` service
//! runs as its own ServiceAccount ([`JOIN_SERVICE_ACCOUNT`]) with exactly its row.

use crate::config::ServiceKind;

/// nodewire's Kubernetes ServiceAccount (in `kube-system`): every function but `join`.
pub const SERVICE_ACCOUNT: &str = "nodewire";

/// The `join` service's own Kubernetes ServiceAccount (in `kube-system`).
pub const JOIN_SERVICE_ACCOUNT: &str = "nodewire-join";

/// One Kubernetes grant: verbs on a resource (of the core group, or `certificates.k8s.io` for
/// CertificateSigningRequests and signers), in a namespace or cluster-wide, optionally limited
/// to one object name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeGrant {
    /// `None`: cluster-scoped (Nodes).
    pub namespace: Option<&'static str>,
    /// Plural resource name.
    pub resource: &'static str,
    /// `resourceNames` restriction, if any.
    pub name: Option<&'static str>,
    /// The verbs.
    pub verbs: &'static [&'static str],
}

/// What one function may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    /// The function (= binary, crate and Cloud Run service suffix).
    pub function: &'static str,
    /// How it starts (which variables it needs).
    pub kind: ServiceKind,
    /// Where its deliveries come from: a step topic id without the prefix, `gce-audit`,
    /// `k8s-audit`, or `scheduler`.
    pub source: Source,
    /// IAM permissions of its Compute calls, sorted.
    pub compute: &'static [&'static str],
    /// Whether a `compute.instances.setMetadata` on a node VM also needs
    /// `iam.serviceAccounts.actAs` on the nodes' service account (Compute Engine's IAM
    /// documentation requires it for VMs that run as a service account).
    pub acts_as_node_account: bool,
    /// Its Kubernetes access, beyond [`EVERY_FUNCTION`].
    pub kube: &'static [KubeGrant],
    /// Step topics it publishes to (step names, plus `node-wired`), beyond the dead-letter topic.
    pub publishes: &'static [&'static str],
}

impl Grants {
    /// The Kubernetes ServiceAccount it runs as.
    pub fn service_account(&self) -> &'static str {
        if self.source == Source::NodeVms {
            JOIN_SERVICE_ACCOUNT
        } else {
            SERVICE_ACCOUNT
        }
    }

    /// Everything its ServiceAccount is granted on its behalf: its row, plus
    /// [`EVERY_FUNCTION`] for nodewire's account (the join service's account holds its row only).
    pub fn all_kube(&self) -> Vec<KubeGrant> {
        let mut out = self.kube.to_vec();
        if self.service_account() == SERVICE_ACCOUNT {
            out.extend_from_slice(EVERY_FUNCTION);
        }
        out
    }
}

/// Writing a CSR's Approved (or Denied) condition through its approval subresource.
const CSR_APPROVAL: KubeGrant = KubeGrant {
    namespace: None,
    resource: "certificatesigningrequests/approval",
    name: None,
    verbs: &["patch"],
};

/// The CertificateApproval admission plugin's check: approval for the kubelet client signer
/// only.
const KUBELET_SIGNER_APPROVE: KubeGrant = KubeGrant {
    namespace: None,
    resource: "signers",
    name: Some(KUBELET_CLIENT_SIGNER),
    verbs: &["approve"],
};

/// Metadata mode only (`infra/k8s/nodewire-rbac-metadata-mode.yaml`, which the control plane
/// applies in that mode and deletes in pull mode): [`METADATA_MODE_FUNCTIONS`] decide the
/// kubelets' CSRs made with nodewire's bootstrap tokens (they also list the tokens, which
/// nodewire's account may in both modes).
pub const METADATA_MODE_GRANTS: &[KubeGrant] = &[
    KubeGrant {
        namespace: None,
        resource: "certificatesigningrequests",
        name: None,
        verbs: &["list"],
    },
    CSR_APPROVAL,
    KUBELET_SIGNER_APPROVE,
    TOKENS_LIST,
];

/// The functions that use [`METADATA_MODE_GRANTS`]: `node-events` on a CSR's audit entry, the
/// sweep for CSRs whose entry was lost.
pub const METADATA_MODE_FUNCTIONS: &[&str] = &["node-events", "drift-sweep"];

/// The kubelet client signer, the only one the join service may approve for.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Where a function's deliveries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Compute audit sink's topic (`NODEWIRE_GCE_AUDIT_TOPIC`).
    GceAudit,
    /// The Kubernetes audit sink's topic (`NODEWIRE_K8S_AUDIT_TOPIC`).
    K8sAudit,
    /// A step topic (`{NODEWIRE_TOPIC_PREFIX}{step}`).
    Step(&'static str),
    /// Cloud Scheduler's HTTP target.
    Scheduler,
    /// Node VMs call it over HTTP with their instance identity token (`join`); no
    /// subscription.
    NodeVms,
}

/// Node writes: providerID, the instance record, the taint, and (alias-first) the podCIDR.
const NODES_PATCH: KubeGrant = KubeGrant {
    namespace: None,
    resource: "nodes",
    name: None,
    verbs: &["patch"],
};

/// The Node's `NetworkUnavailable` condition set to `False` (issue 22), a `nodes/status` patch;
/// the admission policy `nodewire-node-status` allows nothing else there.
const NODE_STATUS_PATCH: KubeGrant = KubeGrant {
    namespace: None,
    resource: "nodes/status",
    name: None,
    verbs: &["patch"],
};

const NODES_GET: KubeGrant = KubeGrant {
    namespace: None,
    resource: "nodes",
    name: None,
    verbs: &["get"],
};

/// What every function may do besides its row: create Warning Events about Nodes (they live
/// in `default`) after reading the Node for its uid.
pub const EVERY_FUNCTION: &[KubeGrant] = &[
    NODES_GET,
    KubeGrant {
        namespace: Some("default"),
        resource: "events",
        name: None,
        verbs: &["create"],
    },
];

const TOKENS_LIST: KubeGrant = KubeGrant {
    namespace: Some("kube-system"),
    resource: "secrets",
    name: None,
    verbs: &["list"],
};

/// Reading `kube-public/cluster-info` (the API server's address and CA for a JoinConfiguration).
const CLUSTER_INFO_GET: KubeGrant = KubeGrant {
    namespace: Some("kube-public"),
    resource: "configmaps",
    name: Some("cluster-info"),
    verbs: &["get"],
};

const TOKENS_DELETE: KubeGrant = KubeGrant {
    namespace: Some("kube-system"),
    resource: "secrets",
    name: None,
    verbs: &["delete"],
};

/// The steps after a bootstrap: the first open aspect, never the step itself
/// (`plan::next_step`).
const CHAIN_STEPS: &[&str] = &["assign-alias", "tag-instance", "provider-id", "finalize"];

/// The table, one row per function under `functions/`.
pub const TABLE: &[Grants] = &[
    Grants {
        function: "instance-events",
        kind: ServiceKind::Router,
        source: Source::GceAudit,
        compute: &[],
        acts_as_node_account: false,
        kube: &[],
        publishes: &["bootstrap", "decommission"],
    },
    Grants {
        function: "node-events",
        kind: ServiceKind::NodeRouter,
        source: Source::K8sAudit,
        compute: &["compute.instances.list"],
        acts_as_node_account: false,
        kube: &[],
        publishes: &["assign-alias", "release-alias"],
    },
    Grants {
        function: "bootstrap",
        kind: ServiceKind::Chain,
        source: Source::Step("bootstrap"),
        // updateNetworkInterface and subnetworks.use: the alias-first order's allocation of
        // the VM's range while it boots (granted in both orders).
        compute: &[
            "compute.instances.get",
            "compute.instances.setMetadata",
            "compute.instances.setTags",
            "compute.instances.updateNetworkInterface",
            "compute.subnetworks.use",
            "compute.zoneOperations.get",
        ],
        acts_as_node_account: true,
        kube: &[
            TOKENS_LIST,
            KubeGrant {
                namespace: Some("kube-system"),
                resource: "secrets",
                name: None,
                verbs: &["create", "delete"],
            },
            CLUSTER_INFO_GET,
        ],
        publishes: CHAIN_STEPS,
    },
    Grants {
        function: "assign-alias",
        kind: ServiceKind::Chain,
        source: Source::Step("assign-alias"),
        compute: &[
            "compute.instances.get",
            "compute.instances.list",
            "compute.instances.updateNetworkInterface",
            "compute.subnetworks.use",
            "compute.zoneOperations.get",
        ],
        acts_as_node_account: false,
        // nodes patch: the alias-first order's podCIDR write.
        kube: &[TOKENS_LIST, TOKENS_DELETE, NODES_PATCH],
        // bootstrap: alias-first, a Node registered before its VM's range was allocated.
        publishes: &["bootstrap", "tag-instance", "provider-id", "finalize"],
    },
    Grants {
        function: "tag-instance",
        kind: ServiceKind::Chain,
        source: Source::Step("tag-instance"),
        compute: &[
            "compute.instances.get",
            "compute.instances.setTags",
            "compute.zoneOperations.get",
        ],
        acts_as_node_account: false,
        kube: &[],
        publishes: &["assign-alias", "provider-id", "finalize"],
    },
    Grants {
        function: "provider-id",
        kind: ServiceKind::Chain,
        source: Source::Step("provider-id"),
        compute: &["compute.instances.get"],
        acts_as_node_account: false,
        kube: &[NODES_PATCH],
        publishes: &["assign-alias", "tag-instance", "finalize"],
    },
    Grants {
        function: "finalize",
        kind: ServiceKind::Chain,
        source: Source::Step("finalize"),
        compute: &[
            "compute.instances.get",
            "compute.instances.setMetadata",
            "compute.zoneOperations.get",
        ],
        acts_as_node_account: true,
        kube: &[TOKENS_LIST, TOKENS_DELETE, NODES_PATCH, NODE_STATUS_PATCH],
        // Back to the first open aspect when not wired (`plan_finalize`), or announce.
        publishes: &["assign-alias", "tag-instance", "provider-id", "node-wired"],
    },
    Grants {
        function: "join",
        kind: ServiceKind::Chain,
        source: Source::NodeVms,
        compute: &["compute.instances.get"],
        acts_as_node_account: false,
        // Its own ServiceAccount: the VM's Node (none yet, or the one it reports), cluster-info
        // for the discovery kubeconfig, and the VM's certificate request made into a CSR,
        // listed (replays, the rate limit), read until signed and approved — for the kubelet
        // client signer only. No Secrets.
        kube: &[
            NODES_GET,
            CLUSTER_INFO_GET,
            KubeGrant {
                namespace: None,
                resource: "certificatesigningrequests",
                name: None,
                verbs: &["create", "get", "list"],
            },
            CSR_APPROVAL,
            KUBELET_SIGNER_APPROVE,
        ],
        // The VM's report of its join starts the chain after registration at once.
        publishes: &["assign-alias"],
    },
    Grants {
        function: "release-alias",
        kind: ServiceKind::Chain,
        source: Source::Step("release-alias"),
        compute: &[
            "compute.instances.get",
            "compute.instances.updateNetworkInterface",
            "compute.zoneOperations.get",
        ],
        acts_as_node_account: false,
        kube: &[],
        publishes: &["bootstrap"],
    },
    Grants {
        function: "decommission",
        kind: ServiceKind::Chain,
        source: Source::Step("decommission"),
        compute: &["compute.instances.get"],
        acts_as_node_account: false,
        kube: &[
            TOKENS_LIST,
            TOKENS_DELETE,
            KubeGrant {
                namespace: None,
                resource: "nodes",
                name: None,
                verbs: &["delete"],
            },
        ],
        publishes: &[],
    },
    Grants {
        function: "drift-sweep",
        kind: ServiceKind::Chain,
        source: Source::Scheduler,
        compute: &["compute.instances.get", "compute.instances.list"],
        acts_as_node_account: false,
        kube: &[
            KubeGrant {
                namespace: None,
                resource: "nodes",
                name: None,
                verbs: &["list"],
            },
            TOKENS_LIST,
            KubeGrant {
                namespace: Some("kube-system"),
                resource: "configmaps",
                name: Some("nodewire-sweep"),
                verbs: &["get", "update"],
            },
            KubeGrant {
                namespace: Some("kube-system"),
                resource: "configmaps",
                name: None,
                verbs: &["create"],
            },
        ],
        publishes: &[
            "bootstrap",
            "assign-alias",
            "tag-instance",
            "provider-id",
            "finalize",
            "release-alias",
            "decommission",
        ],
    },
];

/// The row of `function`.
pub fn of(function: &str) -> Option<&'static Grants> {
    TABLE.iter().find(|g| g.function == function)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unique_and_sorted_within() {
        let mut names: Vec<_> = TABLE.iter().map(|g| g.function).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len());
        for g in TABLE {
            let mut sorted = g.compute.to_vec();
            sorted.sort_unstable();
            assert_eq!(
                sorted, g.compute,
                "{}: keep the permissions sorted",
                g.function
            );
            assert_eq!(
                g.acts_as_node_account,
                g.compute.contains(&"compute.instances.setMetadata"),
                "{}: setMetadata on a VM with a service account needs actAs",
                g.function
            );
        }
    }
}
