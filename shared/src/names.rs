//! Validated identifiers: GCE resource names, zones, project ids, instance references and
//! IPv4 CIDRs. Pure: no I/O. Everything that reaches a client or a topic name passes through
//! here first, so a hostile payload can never smuggle `/`, `..` or an oversized string into a
//! request path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The taint that keeps Pods off a node until it is wired: registered with it by nodewire's
/// JoinConfiguration, lifted by `finalize`.
pub const UNWIRED_TAINT: &str = "nodewire.io/unwired";

/// True for `http://` URLs whose host is a loopback address (the only place plain HTTP is
/// allowed).
pub fn is_loopback_http(url: &str) -> bool {
    // Parsed, not cut by hand: in `http://[::1]@host/` the host is `host` (the rest is
    // userinfo), and a URL with userinfo is not a loopback address however it starts.
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    if uri.scheme_str() != Some("http") || authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// True for `https://` URLs, and for `http://` ones on a loopback address: the one rule for
/// every endpoint nodewire is configured with (API server, Compute, JWKS).
pub fn is_https_or_loopback_http(url: &str) -> bool {
    url.starts_with("https://") || is_loopback_http(url)
}

/// Why an identifier was refused. The offending value is included, shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid {kind} {value:?}: {why}")]
    Invalid {
        kind: &'static str,
        value: String,
        why: &'static str,
    },
}

fn invalid(kind: &'static str, value: &str, why: &'static str) -> NameError {
    NameError::Invalid {
        kind,
        value: echo(value),
        why,
    }
}

/// A Node whose `spec.providerID` already names another VM. The field cannot change once set
/// (kube-apiserver refuses it), so the only fix is to delete the Node and let the kubelet
/// register again. The one definition, used by the planner and the Kubernetes client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Node {node} has spec.providerID {current:?}, not {wanted:?}; providerID cannot change once set \
     — delete the Node and let the kubelet register again"
)]
pub struct ProviderIdConflict {
    pub node: String,
    pub current: String,
    pub wanted: String,
}

/// A subnetwork as a VM's nic0 names it, parsed once from its self link
/// (`https://www.googleapis.com/compute/v1/projects/P/regions/R/subnetworks/N`, or the same
/// without scheme and host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRef {
    pub project: String,
    pub region: String,
    pub name: String,
}

impl SubnetRef {
    /// `None` when `link` is not a subnetwork link.
    pub fn from_link(link: &str) -> Option<Self> {
        let path = link.split_once("/projects/").map_or(link, |(_, p)| p);
        let path = path.strip_prefix("projects/").unwrap_or(path);
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (
                Some(project),
                Some("regions"),
                Some(region),
                Some("subnetworks"),
                Some(name),
                None,
            ) if !project.is_empty() && !region.is_empty() && !name.is_empty() => Some(Self {
                project: project.to_string(),
                region: region.to_string(),
                name: name.to_string(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for SubnetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/regions/{}/subnetworks/{}",
            self.project, self.region, self.name
        )
    }
}

/// A `gce://` providerID that does not name a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderIdError {
    #[error("spec.providerID {0:?} is not gce://PROJECT/ZONE/NAME")]
    Shape(String),
    #[error(transparent)]
    Invalid(NameError),
}

pub use crate::text::echo;

/// RFC 1035 label as Compute Engine uses it for instance names: `[a-z]([-a-z0-9]*[a-z0-9])?`,
/// at most 63 characters.
pub fn validate_gce_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(invalid(kind, value, "must not be empty"));
    }
    if bytes.len() > 63 {
        return Err(invalid(kind, value, "longer than 63 characters"));
    }
    if !bytes[0].is_ascii_lowercase() {
        return Err(invalid(kind, value, "must start with a lowercase letter"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(invalid(
            kind,
            value,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err(invalid(kind, value, "must not end with '-'"));
    }
    Ok(())
}

/// A Compute Engine zone such as `us-central1-a` or `asia-southeast1-b`.
pub fn validate_zone(value: &str) -> Result<(), NameError> {
    const KIND: &str = "zone";
    validate_gce_name(KIND, value)?;
    // REGION-LETTER where REGION is `area-locationN`.
    let Some((region, suffix)) = value.rsplit_once('-') else {
        return Err(invalid(
            KIND,
            value,
            "expected REGION-X, e.g. us-central1-a",
        ));
    };
    if suffix.len() != 1 || !suffix.as_bytes()[0].is_ascii_lowercase() {
        return Err(invalid(KIND, value, "must end in '-' and one letter"));
    }
    validate_region(region).map_err(|_| invalid(KIND, value, "region part is not valid"))
}

/// A Compute Engine region such as `us-central1`.
pub fn validate_region(value: &str) -> Result<(), NameError> {
    const KIND: &str = "region";
    validate_gce_name(KIND, value)?;
    let Some((area, location)) = value.split_once('-') else {
        return Err(invalid(
            KIND,
            value,
            "expected AREA-LOCATIONn, e.g. us-central1",
        ));
    };
    let ok = !area.is_empty()
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && location.bytes().last().is_some_and(|b| b.is_ascii_digit())
        && location
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "expected AREA-LOCATIONn, e.g. us-central1",
        ))
    }
}

/// A Google Cloud project id: 6–30 characters, lowercase letters, digits and hyphens, starting
/// with a letter, not ending with a hyphen. A legacy domain-scoped id (`example.com:proj`) is
/// accepted too.
pub fn validate_project_id(value: &str) -> Result<(), NameError> {
    const KIND: &str = "project id";
    let id = match value.rsplit_once(':') {
        Some((domain, id)) => {
            let domain_ok = !domain.is_empty()
                && domain.len() <= 63
                && domain.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                })
                && !domain.contains("..");
            if !domain_ok {
                return Err(invalid(KIND, value, "domain prefix is not valid"));
            }
            id
        }
        None => value,
    };
    if !(6..=30).contains(&id.len()) {
        return Err(invalid(KIND, value, "must be 6 to 30 characters"));
    }
    validate_gce_name(KIND, id).map_err(|_| {
        invalid(
            KIND,
            value,
            "lowercase letters, digits and '-', starting with a letter",
        )
    })
}

/// A Kubernetes Node name (DNS subdomain, RFC 1123, ≤ 253). nodewire's node names equal
/// instance names, so in practice they are RFC 1035 labels; this accepts what the API accepts.
pub fn validate_node_name(value: &str) -> Result<(), NameError> {
    const KIND: &str = "node name";
    if value.is_empty() || value.len() > 253 {
        return Err(invalid(KIND, value, "must be 1 to 253 characters"));
    }
    for label in value.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !ok {
            return Err(invalid(
                KIND,
                value,
                "must be lowercase RFC 1123 labels separated by '.'",
            ));
        }
    }
    Ok(())
}

/// One VM, by project, zone and name: the key of every chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawInstanceRef", into = "RawInstanceRef")]
pub struct InstanceRef {
    project: String,
    zone: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
struct RawInstanceRef {
    project: String,
    zone: String,
    name: String,
}

impl TryFrom<RawInstanceRef> for InstanceRef {
    type Error = NameError;
    fn try_from(raw: RawInstanceRef) -> Result<Self, Self::Error> {
        InstanceRef::new(raw.project, raw.zone, raw.name)
    }
}

impl From<InstanceRef> for RawInstanceRef {
    fn from(r: InstanceRef) -> Self {
        RawInstanceRef {
            project: r.project,
            zone: r.zone,
            name: r.name,
        }
    }
}

impl InstanceRef {
    /// Validates all three parts.
    ///
    /// # Errors
    /// [`NameError`] naming the first part that is not valid.
    pub fn new(
        project: impl Into<String>,
        zone: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, NameError> {
        let (project, zone, name) = (project.into(), zone.into(), name.into());
        validate_project_id(&project)?;
        validate_zone(&zone)?;
        validate_gce_name("instance name", &name)?;
        Ok(Self {
            project,
            zone,
            name,
        })
    }

    pub fn project(&self) -> &str {
        &self.project
    }
    pub fn zone(&self) -> &str {
        &self.zone
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PROJECT/ZONE/NAME`: the Pub/Sub ordering key of this VM's steps.
    pub fn ordering_key(&self) -> String {
        format!("{}/{}/{}", self.project, self.zone, self.name)
    }

    /// `gce://PROJECT/ZONE/NAME`: the Node's `spec.providerID`.
    pub fn provider_id(&self) -> String {
        format!("gce://{}/{}/{}", self.project, self.zone, self.name)
    }

    /// The VM a `spec.providerID` names; the inverse of [`InstanceRef::provider_id`].
    /// `Ok(None)` for another provider's id (not `gce://`), which is not malformed.
    ///
    /// # Errors
    /// [`ProviderIdError`] for a `gce://` id that is not `gce://PROJECT/ZONE/NAME` with valid
    /// parts.
    pub fn from_provider_id(pid: &str) -> Result<Option<Self>, ProviderIdError> {
        let Some(path) = pid.strip_prefix("gce://") else {
            return Ok(None);
        };
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(z), Some(n), None) => Self::new(p, z, n)
                .map(Some)
                .map_err(ProviderIdError::Invalid),
            _ => Err(ProviderIdError::Shape(echo(pid))),
        }
    }

    /// The region of the zone (`us-central1-a` → `us-central1`).
    pub fn region(&self) -> &str {
        self.zone
            .rsplit_once('-')
            .map_or(self.zone.as_str(), |(r, _)| r)
    }
}

impl fmt::Display for InstanceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/zones/{}/instances/{}",
            self.project, self.zone, self.name
        )
    }
}

impl FromStr for InstanceRef {
    type Err = NameError;
    /// Parses `projects/P/zones/Z/instances/N`, optionally behind a
    /// `https://www.googleapis.com/compute/v1/` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s
            .split_once("/compute/v1/")
            .or_else(|| s.split_once("/compute/beta/"))
            .map_or(s, |(_, p)| p);
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["projects", p, "zones", z, "instances", n] => InstanceRef::new(*p, *z, *n),
            _ => Err(invalid(
                "instance path",
                s,
                "expected projects/PROJECT/zones/ZONE/instances/NAME",
            )),
        }
    }
}

/// An IPv4 CIDR block in canonical form (host bits zero), e.g. `10.4.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(ipnet::Ipv4Net);

impl Cidr {
    pub fn net(&self) -> ipnet::Ipv4Net {
        self.0
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    /// True when `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }
    /// True when the two blocks share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
}

impl FromStr for Cidr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "CIDR";
        if s.len() > 18 {
            return Err(invalid(KIND, s, "too long for an IPv4 CIDR"));
        }
        let net: ipnet::Ipv4Net = s
            .parse()
            .map_err(|_| invalid(KIND, s, "expected an IPv4 block such as 10.4.1.0/24"))?;
        if net.trunc() != net {
            return Err(invalid(KIND, s, "host bits are set"));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The size of a Node's pod range: kube-controller-manager's `--node-cidr-mask-size` default
/// for IPv4, which the alias-first order allocates.
pub const NODE_MASK: u8 = 24;

/// One secondary range of the node subnet that Pod IPs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRange {
    /// Its `rangeName` on the subnet.
    pub name: String,
    pub cidr: Cidr,
}

/// The pod ranges in the order they are used: the first (`NODEWIRE_POD_RANGE_NAME`,
/// `NODEWIRE_POD_RANGE`), then the additional ones (`NODEWIRE_ADDITIONAL_POD_RANGES`), as
/// GKE's additional pod ranges. Never empty; names distinct; blocks disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRanges(Vec<PodRange>);

/// At most this many pod ranges (a subnet holds up to 170 secondary ranges; nodewire's list is
/// walked on every allocation, so it is kept short).
pub const MAX_POD_RANGES: usize = 30;

impl PodRanges {
    /// # Errors
    /// A message saying which range is empty, repeated, overlapping or too many.
    pub fn new(ranges: Vec<PodRange>) -> Result<Self, String> {
        if ranges.is_empty() {
            return Err("no pod range".into());
        }
        if ranges.len() > MAX_POD_RANGES {
            return Err(format!(
                "{} pod ranges; at most {MAX_POD_RANGES}",
                ranges.len()
            ));
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[..i] {
                if a.name == b.name {
                    return Err(format!("the range name {} is given twice", a.name));
                }
                if a.cidr.overlaps(&b.cidr) {
                    return Err(format!(
                        "{} ({}) overlaps {} ({})",
                        a.name, a.cidr, b.name, b.cidr
                    ));
                }
            }
        }
        Ok(Self(ranges))
    }

    /// One range.
    pub fn single(name: impl Into<String>, cidr: Cidr) -> Self {
        Self(vec![PodRange {
            name: name.into(),
            cidr,
        }])
    }

    /// The first range (kube-controller-manager's `--cluster-cidr` in the cluster-first order).
    pub fn first(&self) -> &PodRange {
        // `new` and `single` never build an empty list.
        &self.0[0]
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PodRange> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The range that holds all of `block`.
    pub fn containing(&self, block: &Cidr) -> Option<&PodRange> {
        self.0.iter().find(|r| r.cidr.contains(block))
    }

    /// True when `name` is one of the ranges' names.
    pub fn has_name(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.name == name)
    }

    /// True when `block` shares an address with any range.
    pub fn overlaps(&self, block: &Cidr) -> bool {
        self.0.iter().any(|r| r.cidr.overlaps(block))
    }

    /// The names in order.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|r| r.name.clone()).collect()
    }
}

impl fmt::Display for PodRanges {
    /// `pods (10.4.0.0/16), pods-b (10.8.0.0/16)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({})", r.name, r.cidr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gce_names() {
        for ok in ["a", "k8s-worker-1", &"a".repeat(63)] {
            assert!(validate_gce_name("n", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Abc",
            "abc-",
            "a/b",
            "..",
            "a..b",
            "a_b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(validate_gce_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zones_regions_projects() {
        assert!(validate_zone("us-central1-a").is_ok());
        assert!(validate_zone("asia-southeast1-b").is_ok());
        assert!(validate_zone("northamerica-northeast1-c").is_ok());
        for bad in [
            "us-central1",
            "us-central1-",
            "us-central1-ab",
            "central1-a",
            "a/b-c1-d",
            "",
        ] {
            assert!(validate_zone(bad).is_err(), "{bad}");
        }
        assert!(validate_region("asia-southeast1").is_ok());
        assert!(validate_region("us").is_err());
        assert!(validate_project_id("example-project").is_ok());
        assert!(validate_project_id("example.com:my-project").is_ok());
        for bad in [
            "short",
            "123456789",
            "Example-project",
            "proj-",
            "a/../etc",
            &"p".repeat(31),
        ] {
            assert!(validate_project_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ref_round_trip() {
        let r: InstanceRef = "projects/example-project/zones/us-central1-a/instances/k8s-worker-1"
            .parse()
            .expect("valid path");
        assert_eq!(
            r.ordering_key(),
            "example-project/us-central1-a/k8s-worker-1"
        );
        assert_eq!(
            r.provider_id(),
            "gce://example-project/us-central1-a/k8s-worker-1"
        );
        assert_eq!(
            InstanceRef::from_provider_id(&r.provider_id()),
            Ok(Some(r.clone()))
        );
        assert_eq!(
            InstanceRef::from_provider_id("aws:///us-east-1a/i-1"),
            Ok(None)
        );
        let s = SubnetRef::from_link(
            "https://www.googleapis.com/compute/v1/projects/p-1/regions/us-central1/subnetworks/k8s-nodes",
        )
        .expect("link");
        assert_eq!(
            (s.project.as_str(), s.region.as_str(), s.name.as_str()),
            ("p-1", "us-central1", "k8s-nodes")
        );
        assert_eq!(SubnetRef::from_link(&s.to_string()), Some(s));
        for bad in [
            "",
            "regions/r/subnetworks/n",
            "projects/p/regions/r/subnetworks",
            "projects/p/global/networks/n",
        ] {
            assert_eq!(SubnetRef::from_link(bad), None, "{bad}");
        }
        for bad in [
            "gce://p/z",
            "gce://p/z/n/x",
            "gce://example-project/../../x",
        ] {
            assert!(InstanceRef::from_provider_id(bad).is_err(), "{bad}");
        }
        assert_eq!(r.region(), "us-central1");
        let full: InstanceRef = format!("https://www.googleapis.com/compute/v1/{r}")
            .parse()
            .expect("self link");
        assert_eq!(full, r);
        let json = serde_json::to_string(&r).expect("serialize");
        let back: InstanceRef = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
        let bad = r#"{"project":"example-project","zone":"us-central1-a","name":"../x"}"#;
        assert!(serde_json::from_str::<InstanceRef>(bad).is_err());
        assert!("projects/p/zones/z".parse::<InstanceRef>().is_err());
    }

    #[test]
    fn cidrs() {
        let a: Cidr = "10.4.1.0/24".parse().expect("valid");
        let b: Cidr = "10.4.0.0/16".parse().expect("valid");
        let c: Cidr = "10.5.0.0/24".parse().expect("valid");
        assert!(b.contains(&a) && !a.contains(&b));
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        for bad in [
            "10.4.1.1/24",
            "10.4.1.0",
            "10.4.1.0/33",
            "::1/128",
            "x",
            "10.4.1.0/24 ",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let long = "1".repeat(10_000);
        let err = long.parse::<Cidr>().expect_err("too long");
        assert!(
            err.to_string().len() < 200,
            "error echoes a shortened value"
        );
    }

    #[test]
    fn loopback_detection() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:443/x",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback_http(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:6443",
            "https://127.0.0.1",
            "http://example.com",
            "http://127.0.0.1.evil.com",
            "http://[::1]@example.com/",
            "http://127.0.0.1@example.com:6443",
            "http://localhost@10.0.0.1",
            "http://",
        ] {
            assert!(!is_loopback_http(bad), "{bad}");
        }
    }
}
