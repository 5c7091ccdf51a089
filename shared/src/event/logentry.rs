//! Cloud Logging `LogEntry` wire types, as a Logging sink publishes them and as Eventarc
//! delivers them. Only the fields nodewire reads are typed; everything else is ignored, and
//! every field is optional so that a foreign entry decodes and can then be refused with a
//! reason instead of a serde error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Cloud Logging entry (subset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LogEntry {
    pub log_name: Option<String>,
    pub insert_id: Option<String>,
    pub severity: Option<String>,
    pub timestamp: Option<String>,
    pub resource: Option<MonitoredResource>,
    pub labels: BTreeMap<String, String>,
    pub operation: Option<LogOperation>,
    pub proto_payload: Option<AuditLog>,
    pub json_payload: Option<serde_json::Value>,
}

/// `resource` of a LogEntry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitoredResource {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// `operation` of a LogEntry: long-running Compute methods log a `first` and a `last` entry
/// that share the id; `bulkInsert` logs one entry per VM with both set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogOperation {
    pub id: Option<String>,
    pub producer: Option<String>,
    pub first: Option<bool>,
    pub last: Option<bool>,
}

/// `protoPayload` of type `google.cloud.audit.AuditLog` (subset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuditLog {
    #[serde(rename = "@type")]
    pub type_: Option<String>,
    pub service_name: Option<String>,
    pub method_name: Option<String>,
    pub resource_name: Option<String>,
    pub status: Option<RpcStatus>,
    pub authentication_info: Option<AuthenticationInfo>,
    pub request: Option<serde_json::Value>,
    pub response: Option<serde_json::Value>,
}

/// `protoPayload.authenticationInfo`: who made the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthenticationInfo {
    pub principal_email: Option<String>,
}

/// The `@type` of a Cloud Audit Log payload.
pub const AUDIT_LOG_TYPE: &str = "type.googleapis.com/google.cloud.audit.AuditLog";

/// `google.rpc.Status` as written in audit logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcStatus {
    pub code: Option<i64>,
    pub message: Option<String>,
}

impl RpcStatus {
    /// True when the status reports a failure (`code` present and not 0 = OK).
    pub fn is_error(&self) -> bool {
        self.code.is_some_and(|c| c != 0)
    }
}

/// The log id of Admin Activity audit logs, URL-encoded as it appears in `logName`
/// (<https://cloud.google.com/logging/docs/audit#log-names>), which Google Cloud services
/// write. (Whether `entries.write` refuses this name to others is not documented; nodewire does
/// not rely on it: a Compute entry only starts a step, which reads the VM from Compute.)
pub const ADMIN_ACTIVITY_LOG_ID: &str = "cloudaudit.googleapis.com%2Factivity";

impl LogEntry {
    /// The project of `logName` (`projects/P/logs/ID`) and its log id, when it has that form.
    pub fn log_project_and_id(&self) -> Option<(&str, &str)> {
        let rest = self.log_name.as_deref()?.strip_prefix("projects/")?;
        let (project, id) = rest.split_once("/logs/")?;
        (!project.is_empty() && !project.contains('/') && !id.is_empty()).then_some((project, id))
    }

    /// `resource.labels[key]`, if present and non-empty.
    pub fn resource_label(&self, key: &str) -> Option<&str> {
        self.resource
            .as_ref()
            .and_then(|r| r.labels.get(key))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `resource.type`, or "" when absent.
    pub fn resource_type(&self) -> &str {
        self.resource
            .as_ref()
            .and_then(|r| r.type_.as_deref())
            .unwrap_or("")
    }

    /// True when the entry reports a failed operation: `severity` ERROR or worse, or a
    /// non-OK `protoPayload.status`.
    pub fn reports_failure(&self) -> Option<String> {
        if let Some(status) = self.proto_payload.as_ref().and_then(|p| p.status.as_ref())
            && status.is_error()
        {
            return Some(format!(
                "status code {}: {}",
                status.code.unwrap_or_default(),
                crate::names::echo(status.message.as_deref().unwrap_or(""))
            ));
        }
        match self.severity.as_deref() {
            Some(s @ ("ERROR" | "CRITICAL" | "ALERT" | "EMERGENCY")) => {
                Some(format!("severity {s}"))
            }
            _ => None,
        }
    }
}
