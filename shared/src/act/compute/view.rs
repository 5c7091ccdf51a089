//! OBSERVE, Compute side: the small views the client reduces API objects to.

use std::collections::{BTreeMap, BTreeSet};

use google_cloud_compute_v1::model;

use crate::names::{Cidr, InstanceRef};

/// An alias IP range as nodewire sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRange {
    /// As the API returns it (`10.4.1.0/24`).
    pub cidr: String,
    pub range_name: Option<String>,
}

/// A VM's first network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicView {
    pub name: String,
    /// Subnetwork self link.
    pub subnetwork: String,
    pub network_ip: Option<String>,
    pub aliases: Vec<AliasRange>,
}

/// What nodewire keeps of a VM's metadata: which keys exist, and the values of its own two
/// small bookkeeping keys only. No other value — the join token in `kubeadm-join`, ssh keys,
/// startup scripts — is kept in a view (issue 10, item 4); writes read the metadata afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataView {
    keys: BTreeSet<String>,
    values: BTreeMap<String, String>,
}

impl MetadataView {
    /// The keys whose values are kept.
    pub const KEPT: [&'static str; 2] = [
        crate::join::KUBELET_RESTART_METADATA_KEY,
        crate::join::BOOTSTRAP_ATTEMPTS_METADATA_KEY,
    ];
    /// A kept value longer than this is cut (they are `COUNT@UNIX`).
    const MAX_VALUE: usize = 64;

    /// Reduces `(key, value)` items.
    pub fn from_items<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut m = Self::default();
        for (k, v) in items {
            m.keys.insert(k.to_string());
            if Self::KEPT.contains(&k) {
                m.values
                    .insert(k.to_string(), crate::text::shorten(v, Self::MAX_VALUE));
            }
        }
        m
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// The value of one of the [`Self::KEPT`] keys.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.values.get(key)
    }
}

/// The facts nodewire reads from a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance: InstanceRef,
    pub id: Option<u64>,
    /// `creationTimestamp`, Unix seconds.
    pub created: Option<i64>,
    pub status: String,
    pub can_ip_forward: bool,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub metadata: MetadataView,
    pub nic0: Option<NicView>,
    /// The emails of the service accounts the VM runs as (`serviceAccounts[].email`).
    pub service_accounts: Vec<String>,
}

impl InstanceView {
    pub(super) fn from_model(project: &str, zone_hint: &str, i: &model::Instance) -> Option<Self> {
        let name = i.name.clone()?;
        let zone = i
            .zone
            .as_deref()
            .and_then(|z| z.rsplit('/').next())
            .unwrap_or(zone_hint)
            .to_string();
        let instance = InstanceRef::new(project, zone, name).ok()?;
        let nic0 = i.network_interfaces.first().map(|n| NicView {
            name: n.name.clone().unwrap_or_else(|| "nic0".into()),
            subnetwork: n.subnetwork.clone().unwrap_or_default(),
            network_ip: n.network_ip.clone(),
            aliases: n
                .alias_ip_ranges
                .iter()
                .map(|a| AliasRange {
                    cidr: a.ip_cidr_range.clone().unwrap_or_default(),
                    range_name: a.subnetwork_range_name.clone(),
                })
                .collect(),
        });
        Some(Self {
            instance,
            id: i.id,
            created: i.creation_timestamp.as_deref().and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| t.unix_timestamp())
            }),
            status: i
                .status
                .as_ref()
                .and_then(|s| s.name())
                .unwrap_or("UNKNOWN")
                .to_string(),
            can_ip_forward: i.can_ip_forward.unwrap_or(false),
            tags: i.tags.as_ref().map(|t| t.items.clone()).unwrap_or_default(),
            labels: i
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metadata: i
                .metadata
                .as_ref()
                .map(|m| {
                    MetadataView::from_items(m.items.iter().filter_map(|it| {
                        Some((it.key.as_deref()?, it.value.as_deref().unwrap_or_default()))
                    }))
                })
                .unwrap_or_default(),
            nic0,
            service_accounts: i
                .service_accounts
                .iter()
                .filter_map(|sa| sa.email.clone())
                .collect(),
        })
    }
}

/// A subnetwork's ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetView {
    pub self_link: String,
    pub ip_cidr_range: Option<Cidr>,
    /// `(rangeName, range)`.
    pub secondary: Vec<(String, Cidr)>,
}
