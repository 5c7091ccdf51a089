//! The Compute Engine simulator's state: instances, subnetworks, operations, and their JSON in
//! the v1 REST shape.

use std::collections::BTreeMap;

use base64::Engine as _;
use nodewire::names::Cidr;
use serde_json::{Value, json};

/// Prefix of every self link.
pub const API: &str = "https://www.googleapis.com/compute/v1/";

/// A fingerprint: 8 bytes, written as URL-safe base64 as GCE does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    pub fn encode(self) -> String {
        base64::engine::general_purpose::URL_SAFE.encode(self.0.to_be_bytes())
    }

    /// Parses a fingerprint as clients send it (URL-safe or standard base64).
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
            .ok()?;
        let arr: [u8; 8] = bytes.try_into().ok()?;
        Some(Self(u64::from_be_bytes(arr)))
    }
}

/// A subnetwork with its secondary ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    pub project: String,
    pub region: String,
    pub name: String,
    /// Network name (global, same project).
    pub network: String,
    pub ip_cidr_range: Cidr,
    /// `(rangeName, range)`.
    pub secondary: Vec<(String, Cidr)>,
}

impl SubnetSpec {
    /// The node subnet `k8s-nodes` of network `k8s-vpc` with its `pods` and `services`
    /// secondary ranges.
    pub fn node_subnet(
        project: &str,
        region: &str,
        nodes: Cidr,
        pods: Cidr,
        services: Cidr,
    ) -> Self {
        Self {
            project: project.into(),
            region: region.into(),
            name: "k8s-nodes".into(),
            network: "k8s-vpc".into(),
            ip_cidr_range: nodes,
            secondary: vec![("pods".into(), pods), ("services".into(), services)],
        }
    }

    pub fn self_link(&self) -> String {
        format!(
            "{API}projects/{}/regions/{}/subnetworks/{}",
            self.project, self.region, self.name
        )
    }

    pub fn network_link(&self) -> String {
        format!(
            "{API}projects/{}/global/networks/{}",
            self.project, self.network
        )
    }

    pub fn range(&self, name: &str) -> Option<Cidr> {
        self.secondary
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }

    pub fn to_json(&self, fingerprint: Fingerprint) -> Value {
        json!({
            "kind": "compute#subnetwork",
            "id": "1",
            "name": self.name,
            "network": self.network_link(),
            "region": format!("{API}projects/{}/regions/{}", self.project, self.region),
            "ipCidrRange": self.ip_cidr_range.to_string(),
            "gatewayAddress": self.ip_cidr_range.net().hosts().next().map(|a| a.to_string()),
            "secondaryIpRanges": self.secondary.iter().map(|(n, c)| json!({"rangeName": n, "ipCidrRange": c.to_string()})).collect::<Vec<_>>(),
            "fingerprint": fingerprint.encode(),
            "stackType": "IPV4_ONLY",
            "selfLink": self.self_link(),
        })
    }
}

/// An alias IP range on a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub cidr: Cidr,
    pub range_name: Option<String>,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// `(project, region, name)` of the subnetwork.
    pub subnet: (String, String, String),
    pub network_link: String,
    pub network_ip: std::net::Ipv4Addr,
    pub aliases: Vec<Alias>,
    pub fingerprint: Fingerprint,
}

/// A VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub id: u64,
    pub created: String,
    pub machine_type: String,
    pub status: String,
    pub can_ip_forward: bool,
    pub tags: Vec<String>,
    pub tags_fp: Fingerprint,
    pub labels: BTreeMap<String, String>,
    pub labels_fp: Fingerprint,
    pub metadata: Vec<(String, String)>,
    pub metadata_fp: Fingerprint,
    pub nics: Vec<Nic>,
    /// The emails of the service accounts it runs as (at most one, as the API allows).
    pub service_accounts: Vec<String>,
}

impl Instance {
    pub fn self_link(&self) -> String {
        format!(
            "{API}projects/{}/zones/{}/instances/{}",
            self.project, self.zone, self.name
        )
    }

    pub fn to_json(&self) -> Value {
        let mut tags = json!({"fingerprint": self.tags_fp.encode()});
        if !self.tags.is_empty() {
            tags["items"] = json!(self.tags);
        }
        let mut metadata =
            json!({"kind": "compute#metadata", "fingerprint": self.metadata_fp.encode()});
        if !self.metadata.is_empty() {
            metadata["items"] = Value::Array(
                self.metadata
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect(),
            );
        }
        let nics: Vec<Value> = self
            .nics
            .iter()
            .map(|n| {
                let mut v = json!({
                    "kind": "compute#networkInterface",
                    "name": n.name,
                    "network": n.network_link,
                    "subnetwork": format!("{API}projects/{}/regions/{}/subnetworks/{}", n.subnet.0, n.subnet.1, n.subnet.2),
                    "networkIP": n.network_ip.to_string(),
                    "stackType": "IPV4_ONLY",
                    "fingerprint": n.fingerprint.encode(),
                });
                if !n.aliases.is_empty() {
                    v["aliasIpRanges"] = Value::Array(
                        n.aliases
                            .iter()
                            .map(|a| {
                                let mut r = json!({"ipCidrRange": a.cidr.to_string()});
                                if let Some(name) = &a.range_name {
                                    r["subnetworkRangeName"] = json!(name);
                                }
                                r
                            })
                            .collect(),
                    );
                }
                v
            })
            .collect();
        let mut v = json!({
            "kind": "compute#instance",
            "id": self.id.to_string(),
            "creationTimestamp": self.created,
            "name": self.name,
            "zone": format!("{API}projects/{}/zones/{}", self.project, self.zone),
            "machineType": format!("{API}projects/{}/zones/{}/machineTypes/{}", self.project, self.zone, self.machine_type),
            "status": self.status,
            "canIpForward": self.can_ip_forward,
            "tags": tags,
            "metadata": metadata,
            "networkInterfaces": nics,
            "labelFingerprint": self.labels_fp.encode(),
            "selfLink": self.self_link(),
        });
        if !self.labels.is_empty() {
            v["labels"] = json!(self.labels);
        }
        if !self.service_accounts.is_empty() {
            v["serviceAccounts"] = Value::Array(
                self.service_accounts
                    .iter()
                    .map(|e| json!({"email": e, "scopes": ["https://www.googleapis.com/auth/userinfo.email"]}))
                    .collect(),
            );
        }
        v
    }
}

/// Status of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Pending,
    Running,
    Done,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Pending => "PENDING",
            OpStatus::Running => "RUNNING",
            OpStatus::Done => "DONE",
        }
    }
}

/// An asynchronous failure, as written in `error.errors[]` of a DONE operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: &'static str,
    pub message: String,
    pub http_status: u16,
    pub http_message: &'static str,
}

impl OpError {
    pub fn condition_not_met(what: &str) -> Self {
        Self {
            code: "CONDITION_NOT_MET",
            message: format!("Supplied fingerprint does not match current {what} fingerprint."),
            http_status: 412,
            http_message: "PRECONDITION FAILED",
        }
    }
    pub fn ip_in_use(cidr: &Cidr) -> Self {
        Self {
            code: "IP_IN_USE_BY_ANOTHER_RESOURCE",
            message: format!("IP '{cidr}' is already being used by another resource."),
            http_status: 400,
            http_message: "BAD REQUEST",
        }
    }
    pub fn exhausted(subnet: &str, range: &str) -> Self {
        Self {
            code: "IP_SPACE_EXHAUSTED",
            message: format!("IP space of '{subnet}' secondary range '{range}' is exhausted."),
            http_status: 400,
            http_message: "BAD REQUEST",
        }
    }
    pub fn internal() -> Self {
        Self {
            code: "INTERNAL_ERROR",
            message: "Internal error. Please try again or contact Google Support.".into(),
            http_status: 503,
            http_message: "SERVICE UNAVAILABLE",
        }
    }
    pub fn not_found(link: &str) -> Self {
        Self {
            code: "RESOURCE_NOT_FOUND",
            message: format!("The resource '{link}' was not found"),
            http_status: 404,
            http_message: "NOT FOUND",
        }
    }
}

/// A zonal operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub id: u64,
    pub op_type: String,
    pub target_link: String,
    pub target_id: u64,
    pub status: OpStatus,
    pub insert_time: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub client_operation_id: Option<String>,
    pub error: Option<OpError>,
}

impl Operation {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "compute#operation",
            "id": self.id.to_string(),
            "name": self.name,
            "zone": format!("{API}projects/{}/zones/{}", self.project, self.zone),
            "operationType": self.op_type,
            "targetLink": self.target_link,
            "targetId": self.target_id.to_string(),
            "status": self.status.as_str(),
            "user": "nodewire-sim@example.iam.gserviceaccount.com",
            "progress": if self.status == OpStatus::Done { 100 } else { 0 },
            "insertTime": self.insert_time,
            "selfLink": format!("{API}projects/{}/zones/{}/operations/{}", self.project, self.zone, self.name),
        });
        if let Some(t) = &self.start_time {
            v["startTime"] = json!(t);
        }
        if let Some(t) = &self.end_time {
            v["endTime"] = json!(t);
        }
        if let Some(c) = &self.client_operation_id {
            v["clientOperationId"] = json!(c);
        }
        if let Some(e) = &self.error {
            v["error"] = json!({"errors": [{"code": e.code, "message": e.message}]});
            v["httpErrorStatusCode"] = json!(e.http_status);
            v["httpErrorMessage"] = json!(e.http_message);
        }
        v
    }
}

/// Google's JSON error body: `error.code`, `error.message`, the legacy `error.errors[]`
/// (`reason`, `domain`, `message`), and — for quota and permission errors — the canonical
/// `error.status` and `error.details[]` with a `google.rpc.ErrorInfo` whose `reason` is an
/// UPPER_SNAKE_CASE `google.api.ErrorReason` (`RATE_LIMIT_EXCEEDED`, `IAM_PERMISSION_DENIED`),
/// as Google APIs answer them (API design guide, "Errors": <https://cloud.google.com/apis/design/errors>;
/// googleapis `google/api/error_reason.proto`). A client that reads only one of the two shapes
/// misclassifies: google-cloud-gax exposes `details[]` when present and falls back to
/// `errors[]` only when it is absent.
pub fn error_body(code: u16, reason: &str, message: &str) -> Value {
    let domain = if reason == "rateLimitExceeded" {
        "usageLimits"
    } else {
        "global"
    };
    let mut err = json!({"message": message, "domain": domain, "reason": reason});
    if reason == "conditionNotMet" {
        err["location"] = json!("If-Match");
        err["locationType"] = json!("header");
    }
    let mut body = json!({"error": {"code": code, "message": message, "errors": [err]}});
    let info = |reason: &str, metadata: Value| {
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
               "domain": "googleapis.com", "metadata": metadata})
    };
    let canonical = match (code, reason) {
        (403 | 429, "rateLimitExceeded") => Some((
            if code == 429 {
                "RESOURCE_EXHAUSTED"
            } else {
                "PERMISSION_DENIED"
            },
            info(
                "RATE_LIMIT_EXCEEDED",
                json!({"service": "compute.googleapis.com",
                       "quota_metric": "compute.googleapis.com/default",
                       "quota_limit": "defaultPerMinutePerProject"}),
            ),
        )),
        (403, "forbidden") => Some((
            "PERMISSION_DENIED",
            info(
                "IAM_PERMISSION_DENIED",
                json!({"service": "compute.googleapis.com"}),
            ),
        )),
        _ => None,
    };
    if let Some((status, detail)) = canonical {
        body["error"]["status"] = json!(status);
        body["error"]["details"] = json!([detail]);
    }
    body
}

/// RFC 3339 now, with milliseconds, as GCE writes times.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
