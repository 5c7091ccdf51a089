//! Process setup: the chain's configuration (step functions, the drift sweep, the CLI) —
//! the node subnet, the pod range, node tags, join tokens and the JoinConfiguration version.

use std::time::Duration;

use super::{ConfigError, Source, err, parse_secs};
use crate::names::echo;

/// Which kubeadm JoinConfiguration version `bootstrap` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinApi {
    /// `kubeadm.k8s.io/v1beta4` (kubeadm 1.31+): `kubeletExtraArgs` is a list of name/value.
    V1beta4,
    /// `kubeadm.k8s.io/v1beta3`: `kubeletExtraArgs` is a map.
    V1beta3,
}

/// What the step functions (the chain) need besides [`Config`](super::Config).
/// How a node VM gets its JoinConfiguration (`NODEWIRE_JOIN_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinMode {
    /// `pull` (the default): the VM asks the `join` service with its instance identity token;
    /// `bootstrap` writes no secret into metadata.
    #[default]
    Pull,
    /// `metadata`: `bootstrap` mints the token and writes the JoinConfiguration into the VM's
    /// metadata (`kubeadm-join`), for images that cannot call out.
    Metadata,
}

impl JoinMode {
    /// `NODEWIRE_JOIN_MODE`, `pull` when unset.
    ///
    /// # Errors
    /// [`ConfigError`] for any other value.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        match src.get("NODEWIRE_JOIN_MODE").as_deref() {
            None | Some("pull") => Ok(JoinMode::Pull),
            Some("metadata") => Ok(JoinMode::Metadata),
            Some(other) => Err(err(
                "NODEWIRE_JOIN_MODE",
                format!("{:?}: pull or metadata", echo(other)),
            )),
        }
    }

    /// The variable's value.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinMode::Pull => "pull",
            JoinMode::Metadata => "metadata",
        }
    }
}

/// Which comes first, the VM's alias range or the Node's podCIDR (`NODEWIRE_RANGE_ORDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RangeOrder {
    /// `cluster-first` (the default): kube-controller-manager assigns the Node's podCIDR when
    /// it registers (`--allocate-node-cidrs`); nodewire then gives the VM that range as its
    /// alias (the reference procedure's order).
    #[default]
    ClusterFirst,
    /// `alias-first`: while the VM boots, `bootstrap` has Compute Engine allocate a `/24` of
    /// the pod range as its alias (by size: an atomic allocation); when the Node registers,
    /// nodewire copies that range into its podCIDR. kube-controller-manager must run with
    /// `--allocate-node-cidrs=false` (two allocators give two Nodes the same range).
    AliasFirst,
}

impl RangeOrder {
    /// `NODEWIRE_RANGE_ORDER`, `cluster-first` when unset.
    ///
    /// # Errors
    /// [`ConfigError`] for any other value.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        match src.get("NODEWIRE_RANGE_ORDER").as_deref() {
            None | Some("cluster-first") => Ok(RangeOrder::ClusterFirst),
            Some("alias-first") => Ok(RangeOrder::AliasFirst),
            Some(other) => Err(err(
                "NODEWIRE_RANGE_ORDER",
                format!("{:?}: cluster-first or alias-first", echo(other)),
            )),
        }
    }

    /// The variable's value.
    pub fn as_str(self) -> &'static str {
        match self {
            RangeOrder::ClusterFirst => "cluster-first",
            RangeOrder::AliasFirst => "alias-first",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    pub join_mode: JoinMode,
    /// `NODEWIRE_RANGE_ORDER`: see [`RangeOrder`].
    pub range_order: RangeOrder,
    /// `NODEWIRE_SUBNET` = `REGION/NAME`: nic0 of every node VM is on it.
    pub subnet: (String, String),
    /// The secondary ranges of Pod IPs, in the order they are used: `NODEWIRE_POD_RANGE_NAME`
    /// (default `pods`) with its CIDR `NODEWIRE_POD_RANGE`, then
    /// `NODEWIRE_ADDITIONAL_POD_RANGES` (`NAME=CIDR,…`, alias-first only). podCIDRs outside
    /// all of them are refused.
    pub pod_ranges: crate::names::PodRanges,
    /// `NODEWIRE_NODE_TAGS` (comma-separated): network tags every node VM gets.
    pub node_tags: Vec<String>,
    /// `NODEWIRE_TOKEN_TTL_SECS` (default 900): lifetime of a join token.
    pub token_ttl: Duration,
    /// `NODEWIRE_JOIN_API_VERSION` (`v1beta4` default, or `v1beta3`).
    pub join_api: JoinApi,
    /// `NODEWIRE_API_SERVER_ENDPOINT` (`HOST:PORT`); default: the server in cluster-info.
    pub api_server_endpoint: Option<String>,
    /// `NODEWIRE_TOKEN_GROUPS` (default kubeadm's default node group).
    pub token_groups: String,
    /// `NODEWIRE_NODE_SERVICE_ACCOUNTS` (comma-separated emails): when set, only VMs running as
    /// one of them get a join token.
    pub node_service_accounts: std::collections::BTreeSet<String>,
    /// `NODEWIRE_SWEEP_COOLDOWN_SECS` (default 900), `NODEWIRE_SWEEP_MAX_STEPS` (default
    /// 1000), `NODEWIRE_SWEEP_LOCK_SECS` (default 600): the drift sweep's bounds.
    pub sweep: SweepLimits,
}

impl ChainConfig {
    /// Parses the chain's variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or invalid.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let subnet_raw = src.get("NODEWIRE_SUBNET").ok_or_else(|| {
            err(
                "NODEWIRE_SUBNET",
                "is required: REGION/NAME of the node subnet",
            )
        })?;
        let subnet = match subnet_raw.split_once('/') {
            Some((r, n))
                if crate::names::validate_region(r).is_ok()
                    && crate::names::validate_gce_name("subnet", n).is_ok() =>
            {
                (r.to_string(), n.to_string())
            }
            _ => {
                return Err(err(
                    "NODEWIRE_SUBNET",
                    format!("{:?} is not REGION/NAME", echo(&subnet_raw)),
                ));
            }
        };
        let pod_range_name = src
            .get("NODEWIRE_POD_RANGE_NAME")
            .unwrap_or_else(|| "pods".into());
        crate::names::validate_gce_name("range name", &pod_range_name)
            .map_err(|e| err("NODEWIRE_POD_RANGE_NAME", e.to_string()))?;
        let pod_range = src
            .get("NODEWIRE_POD_RANGE")
            .ok_or_else(|| {
                err(
                    "NODEWIRE_POD_RANGE",
                    "is required: the CIDR of the pod secondary range",
                )
            })?
            .parse()
            .map_err(|e: crate::names::NameError| err("NODEWIRE_POD_RANGE", e.to_string()))?;
        let pod_ranges = pod_ranges(src, pod_range_name, pod_range)?;
        let tags_raw = src.get("NODEWIRE_NODE_TAGS").ok_or_else(|| {
            err(
                "NODEWIRE_NODE_TAGS",
                "is required: the network tag(s) of node VMs",
            )
        })?;
        let node_tags: Vec<String> = tags_raw
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if node_tags.is_empty() {
            return Err(err("NODEWIRE_NODE_TAGS", "names no tag"));
        }
        for t in &node_tags {
            crate::names::validate_gce_name("tag", t)
                .map_err(|e| err("NODEWIRE_NODE_TAGS", e.to_string()))?;
        }
        let token_ttl = parse_secs(src, "NODEWIRE_TOKEN_TTL_SECS", Duration::from_secs(900))?;
        let join_api = match src.get("NODEWIRE_JOIN_API_VERSION").as_deref() {
            None | Some("v1beta4") => JoinApi::V1beta4,
            Some("v1beta3") => JoinApi::V1beta3,
            Some(other) => {
                return Err(err(
                    "NODEWIRE_JOIN_API_VERSION",
                    format!("{:?}: v1beta4 or v1beta3", echo(other)),
                ));
            }
        };
        let join_mode = JoinMode::from_source(src)?;
        let range_order = RangeOrder::from_source(src)?;
        // kube-controller-manager's range allocator takes one IPv4 `--cluster-cidr`: in the
        // cluster-first order it allocates from the first range only, so more are refused.
        if range_order == RangeOrder::ClusterFirst && pod_ranges.len() > 1 {
            return Err(err(
                "NODEWIRE_ADDITIONAL_POD_RANGES",
                "needs NODEWIRE_RANGE_ORDER=alias-first: in the cluster-first order \
                 kube-controller-manager allocates podCIDRs from one range only",
            ));
        }
        let api_server_endpoint = src.get("NODEWIRE_API_SERVER_ENDPOINT");
        if let Some(e) = &api_server_endpoint {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok()
            });
            if !ok {
                return Err(err(
                    "NODEWIRE_API_SERVER_ENDPOINT",
                    format!("{:?} is not HOST:PORT", echo(e)),
                ));
            }
        }
        let token_groups = src
            .get("NODEWIRE_TOKEN_GROUPS")
            .unwrap_or_else(|| "system:bootstrappers:kubeadm:default-node-token".into());
        if token_groups
            .split(',')
            .any(|g| !g.starts_with("system:bootstrappers:"))
        {
            return Err(err(
                "NODEWIRE_TOKEN_GROUPS",
                "every group must start with system:bootstrappers:",
            ));
        }
        let defaults = SweepLimits::default();
        let max_steps: usize =
            super::parse_var(src, "NODEWIRE_SWEEP_MAX_STEPS", defaults.max_steps)?;
        if !(1..=100_000).contains(&max_steps) {
            return Err(err(
                "NODEWIRE_SWEEP_MAX_STEPS",
                "must be between 1 and 100000",
            ));
        }
        let sweep = SweepLimits {
            cooldown: parse_secs(src, "NODEWIRE_SWEEP_COOLDOWN_SECS", defaults.cooldown)?,
            max_steps,
            hold: parse_secs(src, "NODEWIRE_SWEEP_LOCK_SECS", defaults.hold)?,
        };
        let node_service_accounts: std::collections::BTreeSet<String> = src
            .get("NODEWIRE_NODE_SERVICE_ACCOUNTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(bad) = node_service_accounts
            .iter()
            .find(|s| !s.contains('@') || s.len() > 254)
        {
            return Err(err(
                "NODEWIRE_NODE_SERVICE_ACCOUNTS",
                format!("{:?} is not a service account email", echo(bad)),
            ));
        }
        Ok(Self {
            join_mode,
            range_order,
            node_service_accounts,
            sweep,
            subnet,
            pod_ranges,
            node_tags,
            token_ttl,
            join_api,
            api_server_endpoint,
            token_groups,
        })
    }
}

/// The first pod range and `NODEWIRE_ADDITIONAL_POD_RANGES` (`NAME=CIDR,NAME=CIDR`).
fn pod_ranges(
    src: &impl Source,
    first_name: String,
    first: crate::names::Cidr,
) -> Result<crate::names::PodRanges, ConfigError> {
    const VAR: &str = "NODEWIRE_ADDITIONAL_POD_RANGES";
    let mut ranges = vec![crate::names::PodRange {
        name: first_name,
        cidr: first,
    }];
    let raw = src.get(VAR).unwrap_or_default();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, cidr)) = item.split_once('=') else {
            return Err(err(VAR, format!("{:?} is not NAME=CIDR", echo(item))));
        };
        crate::names::validate_gce_name("range name", name.trim())
            .map_err(|e| err(VAR, e.to_string()))?;
        let cidr: crate::names::Cidr = cidr
            .trim()
            .parse()
            .map_err(|e: crate::names::NameError| err(VAR, e.to_string()))?;
        if cidr.prefix_len() > crate::names::NODE_MASK {
            return Err(err(
                VAR,
                format!(
                    "{name}'s {cidr} is smaller than one /{} podCIDR",
                    crate::names::NODE_MASK
                ),
            ));
        }
        ranges.push(crate::names::PodRange {
            name: name.trim().to_string(),
            cidr,
        });
    }
    crate::names::PodRanges::new(ranges).map_err(|e| err(VAR, e))
}

/// The drift sweep's bounds (`NODEWIRE_SWEEP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepLimits {
    /// A VM the sweep published a step for is not restarted again before this has passed.
    pub cooldown: std::time::Duration,
    /// Steps published per run at most; the rest wait for the next run.
    pub max_steps: usize,
    /// How long a sweep holds its lock at most (a crashed sweep's lock expires).
    pub hold: std::time::Duration,
}

impl Default for SweepLimits {
    fn default() -> Self {
        Self {
            cooldown: std::time::Duration::from_secs(900),
            max_steps: 1000,
            hold: std::time::Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn chain_config() {
        let mut m = BTreeMap::from([
            ("NODEWIRE_SUBNET", "asia-southeast1/k8s-nodes"),
            ("NODEWIRE_POD_RANGE", "192.168.16.0/21"),
            ("NODEWIRE_NODE_TAGS", "k8s-node, k8s-cluster-demo"),
        ]);
        let c = ChainConfig::from_source(&m).expect("valid");
        assert_eq!(
            c.subnet,
            ("asia-southeast1".to_string(), "k8s-nodes".to_string())
        );
        assert_eq!(c.node_tags, vec!["k8s-node", "k8s-cluster-demo"]);
        assert_eq!(c.token_ttl, Duration::from_secs(900));
        assert_eq!(c.join_api, JoinApi::V1beta4);
        for (var, bad) in [
            ("NODEWIRE_SUBNET", "k8s-nodes"),
            ("NODEWIRE_POD_RANGE", "192.168.16.1/21"),
            ("NODEWIRE_NODE_TAGS", "Bad_Tag"),
            ("NODEWIRE_JOIN_API_VERSION", "v1"),
            ("NODEWIRE_API_SERVER_ENDPOINT", "https://x"),
            ("NODEWIRE_TOKEN_GROUPS", "system:masters"),
        ] {
            let mut m2 = m.clone();
            m2.insert(var, bad);
            assert_eq!(ChainConfig::from_source(&m2).expect_err(var).var, var);
        }
        assert_eq!(c.pod_ranges.names(), vec!["pods"]);
        // Additional ranges, in order, only in the alias-first order.
        let mut m3 = m.clone();
        m3.insert(
            "NODEWIRE_ADDITIONAL_POD_RANGES",
            " pods-b=10.8.0.0/16, pods-c=10.9.0.0/24",
        );
        assert_eq!(
            ChainConfig::from_source(&m3)
                .expect_err("cluster-first")
                .var,
            "NODEWIRE_ADDITIONAL_POD_RANGES"
        );
        m3.insert("NODEWIRE_RANGE_ORDER", "alias-first");
        let c3 = ChainConfig::from_source(&m3).expect("alias-first");
        assert_eq!(c3.pod_ranges.names(), vec!["pods", "pods-b", "pods-c"]);
        for bad in [
            "pods-b",                                // no CIDR
            "pods-b=10.8.0.1/16",                    // host bits
            "pods=10.8.0.0/16",                      // the first range's name again
            "pods-b=192.168.20.0/22",                // inside the first range
            "pods-b=10.8.0.0/16,pods-c=10.8.4.0/22", // overlapping each other
            "pods-b=10.8.0.0/25",                    // smaller than one podCIDR
            "Pods_B=10.8.0.0/16",                    // not a range name
        ] {
            m3.insert("NODEWIRE_ADDITIONAL_POD_RANGES", bad);
            assert_eq!(
                ChainConfig::from_source(&m3).expect_err(bad).var,
                "NODEWIRE_ADDITIONAL_POD_RANGES",
                "{bad}"
            );
        }
        m.remove("NODEWIRE_POD_RANGE");
        assert_eq!(
            ChainConfig::from_source(&m).expect_err("missing").var,
            "NODEWIRE_POD_RANGE"
        );
    }
}
