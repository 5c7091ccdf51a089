//! Compute Engine audit entries → [`InstanceEvent`]. Pure: no I/O.
//!
//! What counts: the **final** entry (`operation.last`) of a **successful** `instances.insert`,
//! `instances.bulkInsert` (per-VM entry) or `instances.delete`, under any API version prefix
//! (`v1.`, `beta.`, `alpha.`, none), **written by Google to the Admin Activity audit log**
//! (`logName` `projects/P/logs/cloudaudit.googleapis.com%2Factivity`, a Cloud Audit Log
//! payload, `resource.type` `gce_instance`, and one project throughout: the log's, the
//! resource labels' and the `resourceName`'s — which for VMs of a managed instance group
//! carries the project *number*). An entry of any other log (which anything with
//! `logging.logEntries.create` can write) is [`InstanceEvent::Ignored`] with the reason, as is
//! everything else; malformed identifiers are a [`DecodeError`].

use super::logentry::{ADMIN_ACTIVITY_LOG_ID, AUDIT_LOG_TYPE, LogEntry};
use super::{Decode, DecodeError};
use crate::names::{InstanceRef, NameError, echo, validate_zone};

/// What a Compute Engine audit entry means to nodewire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// A VM now exists.
    Created(InstanceChange),
    /// A VM is gone.
    Deleted(InstanceChange),
    /// Not something nodewire acts on; the reason says why.
    Ignored(String),
}

/// The VM an entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceChange {
    pub instance: InstanceRef,
    /// The VM's numeric id (`resource.labels.instance_id`), its stable key across re-creation.
    pub instance_id: Option<u64>,
    /// The audit operation id, used as the cause of the chain.
    pub operation_id: Option<String>,
    /// The entry's timestamp, as written.
    pub timestamp: Option<String>,
    /// The normalized method (`compute.instances.insert`, …).
    pub method: &'static str,
}

enum Kind {
    Create(&'static str),
    Delete(&'static str),
}

/// Strips the API version prefix of a Compute method name and classifies it.
fn classify_method(method: &str) -> Option<Kind> {
    let bare = ["v1.", "beta.", "alpha."]
        .iter()
        .find_map(|p| method.strip_prefix(p))
        .unwrap_or(method);
    match bare {
        "compute.instances.insert" => Some(Kind::Create("compute.instances.insert")),
        "compute.instances.bulkInsert" => Some(Kind::Create("compute.instances.bulkInsert")),
        "compute.instances.delete" => Some(Kind::Delete("compute.instances.delete")),
        _ => None,
    }
}

impl Decode for InstanceEvent {
    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let entry: LogEntry = super::parse_json(data, "Cloud Logging LogEntry")?;
        Self::from_entry(&entry)
    }
}

impl InstanceEvent {
    /// Interprets one LogEntry.
    ///
    /// # Errors
    /// [`DecodeError`] when the entry is a Compute instance entry we would act on but its
    /// identifiers are missing or malformed.
    pub fn from_entry(entry: &LogEntry) -> Result<Self, DecodeError> {
        let Some(audit) = entry.proto_payload.as_ref() else {
            return Ok(Self::Ignored(
                "not a Cloud Audit Log entry (no protoPayload)".into(),
            ));
        };
        // Google Cloud writes the Admin Activity log: an entry of another log may be anyone's.
        let Some((log_project, log_id)) = entry.log_project_and_id() else {
            return Ok(Self::Ignored(format!(
                "logName {:?} is not projects/P/logs/ID",
                echo(entry.log_name.as_deref().unwrap_or(""))
            )));
        };
        if log_id != ADMIN_ACTIVITY_LOG_ID {
            return Ok(Self::Ignored(format!(
                "log {:?} is not the Admin Activity audit log ({ADMIN_ACTIVITY_LOG_ID})",
                echo(log_id)
            )));
        }
        if audit.type_.as_deref() != Some(AUDIT_LOG_TYPE) {
            return Ok(Self::Ignored(format!(
                "protoPayload @type {:?} is not {AUDIT_LOG_TYPE}",
                echo(audit.type_.as_deref().unwrap_or(""))
            )));
        }
        if let Some(p) = entry.resource_label("project_id")
            && p != log_project
        {
            return Ok(Self::Ignored(format!(
                "resource.labels.project_id {:?} is not the log's project {:?}",
                echo(p),
                echo(log_project)
            )));
        }
        let service = audit.service_name.as_deref().unwrap_or("");
        if service != "compute.googleapis.com" {
            return Ok(Self::Ignored(format!(
                "entry of service {:?}, not compute.googleapis.com",
                echo(service)
            )));
        }
        let method = audit.method_name.as_deref().unwrap_or("");
        let Some(kind) = classify_method(method) else {
            return Ok(Self::Ignored(format!(
                "method {:?} is not an instance insert/delete",
                echo(method)
            )));
        };
        let last = entry
            .operation
            .as_ref()
            .and_then(|o| o.last)
            .unwrap_or(false);
        if !last {
            return Ok(Self::Ignored(
                "not the final entry of the operation (operation.last is not true)".into(),
            ));
        }
        if let Some(why) = entry.reports_failure() {
            return Ok(Self::Ignored(format!("the operation failed ({why})")));
        }
        let rtype = entry.resource_type();
        if rtype != "gce_instance" {
            return Ok(Self::Ignored(format!(
                "resource type {:?} is not gce_instance (e.g. the bulkInsert summary entry)",
                echo(rtype)
            )));
        }
        let change = Self::change(entry, audit.resource_name.as_deref(), &kind)?;
        Ok(match kind {
            Kind::Create(_) => Self::Created(change),
            Kind::Delete(_) => Self::Deleted(change),
        })
    }

    fn change(
        entry: &LogEntry,
        resource_name: Option<&str>,
        kind: &Kind,
    ) -> Result<InstanceChange, DecodeError> {
        let method = match kind {
            Kind::Create(m) | Kind::Delete(m) => *m,
        };
        let resource_name = resource_name
            .ok_or_else(|| DecodeError::Shape("protoPayload.resourceName is missing".into()))?;
        // projects/{project id or number}/zones/{zone}/instances/{name}
        let parts: Vec<&str> = resource_name.split('/').collect();
        let ["projects", rn_project, "zones", rn_zone, "instances", name] = parts.as_slice() else {
            return Err(DecodeError::Shape(format!(
                "protoPayload.resourceName {:?} is not projects/P/zones/Z/instances/NAME",
                echo(resource_name)
            )));
        };
        // The project id comes from the resource labels: for VMs created by a managed instance
        // group, resourceName carries the project *number*.
        let project = match entry.resource_label("project_id") {
            Some(p) => p,
            None if !rn_project.bytes().all(|b| b.is_ascii_digit()) => rn_project,
            None => {
                return Err(DecodeError::Shape(
                    "resource.labels.project_id is missing and resourceName has a project number"
                        .into(),
                ));
            }
        };
        // resourceName names the same project by id, or by number (managed instance groups).
        if *rn_project != project && !rn_project.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::Shape(format!(
                "resourceName project {:?} disagrees with resource.labels.project_id {:?}",
                echo(rn_project),
                echo(project)
            )));
        }
        let zone = entry.resource_label("zone").unwrap_or(rn_zone);
        validate_zone(zone).map_err(DecodeError::Invalid)?;
        if zone != *rn_zone {
            return Err(DecodeError::Shape(format!(
                "resource.labels.zone {:?} disagrees with resourceName zone {:?}",
                echo(zone),
                echo(rn_zone)
            )));
        }
        let instance = InstanceRef::new(project, zone, *name).map_err(DecodeError::Invalid)?;
        let instance_id = match entry.resource_label("instance_id") {
            None => None,
            Some(id) => Some(id.parse::<u64>().map_err(|_| {
                DecodeError::Invalid(NameError::Invalid {
                    kind: "instance id",
                    value: echo(id),
                    why: "must be a decimal number",
                })
            })?),
        };
        Ok(InstanceChange {
            instance,
            instance_id,
            operation_id: entry.operation.as_ref().and_then(|o| o.id.clone()),
            timestamp: entry.timestamp.clone(),
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_json as fixture;
    use serde_json::{Value, json};

    fn decode_value(v: &Value) -> Result<InstanceEvent, DecodeError> {
        InstanceEvent::decode(v.to_string().as_bytes())
    }

    fn last_entry() -> Value {
        fixture("gce-insert-last.json")
    }

    /// serde quotes the offending value in its error; non-ASCII text there must be shortened
    /// on a character boundary (cutting at a byte index used to panic before the adapter's
    /// panic guard, and Pub/Sub redelivered forever).
    #[test]
    fn non_ascii_in_a_wrongly_typed_field_is_a_clear_permanent_error() {
        for pad in 0..4 {
            let mut e = last_entry();
            e["operation"]["last"] = json!(format!("{}{}", "x".repeat(pad), "€😀".repeat(80)));
            match decode_value(&e) {
                Err(DecodeError::Json(m)) => {
                    assert!(m.contains("invalid type"), "{m}");
                    assert!(m.len() < 300, "{}", m.len());
                }
                other => panic!("pad {pad}: {other:?}"),
            }
        }
    }

    #[test]
    fn insert_last_is_created() {
        let ev = InstanceEvent::decode(fixture("gce-insert-last.json").to_string().as_bytes())
            .expect("decodes");
        let InstanceEvent::Created(c) = ev else {
            panic!("expected Created, got {ev:?}")
        };
        assert_eq!(
            c.instance.to_string(),
            "projects/example-project/zones/us-central1-a/instances/k8s-worker-1"
        );
        assert_eq!(c.instance_id, Some(2_525_602_744_967_966_726));
        assert_eq!(
            c.operation_id.as_deref(),
            Some("operation-1732021993132-62743cba4d27a-d29b55ba-2cd69d6a")
        );
        assert_eq!(c.method, "compute.instances.insert");
    }

    #[test]
    fn insert_first_is_ignored() {
        let ev = decode_value(&fixture("gce-insert-first.json")).expect("decodes");
        assert!(
            matches!(ev, InstanceEvent::Ignored(ref r) if r.contains("final entry")),
            "{ev:?}"
        );
    }

    #[test]
    fn delete_first_ignored_and_last_is_deleted() {
        let mut first = fixture("gce-delete-first.json");
        assert!(matches!(
            decode_value(&first),
            Ok(InstanceEvent::Ignored(_))
        ));
        first["operation"] = json!({"id": "op-1", "last": true});
        let ev = decode_value(&first).expect("decodes");
        let InstanceEvent::Deleted(c) = ev else {
            panic!("expected Deleted, got {ev:?}")
        };
        assert_eq!(c.instance.name(), "k8s-worker-1");
        assert_eq!(c.method, "compute.instances.delete");
    }

    #[test]
    fn method_prefixes() {
        for (m, created) in [
            ("v1.compute.instances.insert", true),
            ("beta.compute.instances.insert", true),
            ("compute.instances.insert", true),
            ("alpha.compute.instances.insert", true),
            ("v1.compute.instances.bulkInsert", true),
            ("beta.compute.instances.bulkInsert", true),
            ("v1.compute.instances.delete", false),
            ("compute.instances.delete", false),
        ] {
            let mut e = last_entry();
            e["protoPayload"]["methodName"] = json!(m);
            let ev = decode_value(&e).expect("decodes");
            assert_eq!(
                matches!(ev, InstanceEvent::Created(_)),
                created,
                "{m}: {ev:?}"
            );
            assert_eq!(
                matches!(ev, InstanceEvent::Deleted(_)),
                !created,
                "{m}: {ev:?}"
            );
        }
        for m in [
            "v1.compute.instances.setTags",
            "v1.compute.disks.insert",
            "v2.compute.instances.insert",
            "",
        ] {
            let mut e = last_entry();
            e["protoPayload"]["methodName"] = json!(m);
            assert!(
                matches!(decode_value(&e), Ok(InstanceEvent::Ignored(_))),
                "{m}"
            );
        }
    }

    #[test]
    fn bulk_insert_entries() {
        // The summary entry names no instance and has resource type audited_resource.
        let mut summary = last_entry();
        summary["protoPayload"]["methodName"] = json!("v1.compute.instances.bulkInsert");
        summary["protoPayload"]["resourceName"] =
            json!("projects/example-project/zones/us-central1-a/instances");
        summary["resource"] = json!({"type": "audited_resource", "labels": {"project_id": "example-project", "service": "compute.googleapis.com", "method": "v1.compute.instances.bulkInsert"}});
        summary["operation"] = json!({"id": "op-bulk", "first": true});
        assert!(matches!(
            decode_value(&summary),
            Ok(InstanceEvent::Ignored(_))
        ));
        summary["operation"]["last"] = json!(true);
        let ev = decode_value(&summary).expect("decodes");
        assert!(
            matches!(ev, InstanceEvent::Ignored(ref r) if r.contains("audited_resource")),
            "{ev:?}"
        );
        // Per-VM entries carry first and last both true.
        let mut per_vm = last_entry();
        per_vm["protoPayload"]["methodName"] = json!("v1.compute.instances.bulkInsert");
        per_vm["protoPayload"]["resourceName"] =
            json!("projects/example-project/zones/us-central1-a/instances/bulk-7");
        per_vm["operation"] = json!({"id": "op-bulk", "first": true, "last": true});
        let ev = decode_value(&per_vm).expect("decodes");
        assert!(
            matches!(ev, InstanceEvent::Created(ref c) if c.instance.name() == "bulk-7" && c.method == "compute.instances.bulkInsert"),
            "{ev:?}"
        );
    }

    #[test]
    fn managed_instance_group_project_number() {
        let mut e = last_entry();
        e["protoPayload"]["resourceName"] =
            json!("projects/123456789012/zones/us-central1-a/instances/workers-abcd");
        e["protoPayload"]["authenticationInfo"]["principalEmail"] =
            json!("123456789012@cloudservices.gserviceaccount.com");
        let ev = decode_value(&e).expect("decodes");
        let InstanceEvent::Created(c) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(c.instance.project(), "example-project");
        assert_eq!(c.instance.name(), "workers-abcd");
        // Without the label there is no way to learn the project id: refuse, do not guess.
        e["resource"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("project_id");
        assert!(matches!(decode_value(&e), Err(DecodeError::Shape(_))));
    }

    #[test]
    fn failed_operations_are_ignored() {
        let mut e = last_entry();
        e["severity"] = json!("ERROR");
        e["protoPayload"]["status"] = json!({"code": 8, "message": "QUOTA_EXCEEDED"});
        let ev = decode_value(&e).expect("decodes");
        assert!(
            matches!(ev, InstanceEvent::Ignored(ref r) if r.contains("failed") && r.contains("QUOTA")),
            "{ev:?}"
        );
        let mut e = last_entry();
        e["protoPayload"]["status"] = json!({"code": 0});
        assert!(matches!(decode_value(&e), Ok(InstanceEvent::Created(_))));
        let mut e = last_entry();
        e["severity"] = json!("ERROR");
        assert!(matches!(decode_value(&e), Ok(InstanceEvent::Ignored(_))));
    }

    #[test]
    fn other_services_and_shapes_are_ignored() {
        let k8s = fixture("opsagent-k8s-audit-logentry.json");
        assert!(matches!(decode_value(&k8s), Ok(InstanceEvent::Ignored(_))));
        let mut e = last_entry();
        e["protoPayload"]["serviceName"] = json!("storage.googleapis.com");
        assert!(
            matches!(decode_value(&e), Ok(InstanceEvent::Ignored(ref r)) if r.contains("storage"))
        );
        assert!(matches!(
            decode_value(&json!({})),
            Ok(InstanceEvent::Ignored(_))
        ));
    }

    #[test]
    fn hostile_input() {
        assert!(matches!(
            InstanceEvent::decode(b"{\"protoPayload\": {"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            InstanceEvent::decode(b"not json"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            InstanceEvent::decode(b"[1,2]"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            InstanceEvent::decode(b""),
            Err(DecodeError::Json(_))
        ));
        let mut e = last_entry();
        e["operation"]["last"] = json!("yes");
        assert!(matches!(decode_value(&e), Err(DecodeError::Json(_))));
        for bad in [
            "projects/example-project/zones/us-central1-a/instances/../etc",
            "projects/example-project/zones/us-central1-a/instances/a/b",
            "projects/example-project/zones/us-central1-a/instances/UPPER",
            "projects/example-project/zones/us-central1-a/instances/",
        ] {
            let mut e = last_entry();
            e["protoPayload"]["resourceName"] = json!(bad);
            assert!(decode_value(&e).is_err(), "{bad}");
        }
        let mut e = last_entry();
        e["protoPayload"]["resourceName"] = json!(format!(
            "projects/example-project/zones/us-central1-a/instances/{}",
            "a".repeat(1_000_000)
        ));
        let err = decode_value(&e).expect_err("too long");
        assert!(err.to_string().len() < 300, "error message stays short");
        let mut e = last_entry();
        e["resource"]["labels"]["zone"] = json!("us-east1-b");
        assert!(matches!(decode_value(&e), Err(DecodeError::Shape(_))));
        let mut e = last_entry();
        e["resource"]["labels"]["instance_id"] = json!("12ab");
        assert!(matches!(decode_value(&e), Err(DecodeError::Invalid(_))));
        // A project label that is not the log's project: not acted on.
        let mut e = last_entry();
        e["resource"]["labels"]["project_id"] = json!("../../evil");
        assert!(matches!(decode_value(&e), Ok(InstanceEvent::Ignored(_))));
    }

    /// Issue 10, item 2: only the Admin Activity audit log counts. Anything with
    /// `logging.logEntries.create` (a pod through its node's service account, say) can write an
    /// entry of the same shape to another log; Google Cloud services write the
    /// `cloudaudit.googleapis.com` logs (<https://cloud.google.com/logging/docs/audit#log-names>); and whatever reaches the
    /// topic only starts a step that reads the VM from Compute.
    #[test]
    fn only_googles_admin_activity_entries_count() {
        assert!(matches!(
            decode_value(&last_entry()),
            Ok(InstanceEvent::Created(_))
        ));
        let forged_logs = [
            json!("projects/example-project/logs/my-app"),
            json!("projects/example-project/logs/cloudaudit.googleapis.com%2Fdata_access"),
            json!("projects/example-project/logs/cloudaudit.googleapis.com%2Factivity-copy"),
            json!("projects/other-project/logs/cloudaudit.googleapis.com%2Factivity"),
            json!("organizations/1/logs/cloudaudit.googleapis.com%2Factivity"),
            json!(null),
        ];
        for log in forged_logs {
            let mut e = last_entry();
            e["logName"] = log.clone();
            assert!(
                matches!(decode_value(&e), Ok(InstanceEvent::Ignored(_))),
                "{log}"
            );
        }
        let mut e = last_entry();
        e["protoPayload"]["@type"] = json!("type.googleapis.com/my.Fake");
        assert!(matches!(decode_value(&e), Ok(InstanceEvent::Ignored(_))));
        // resourceName in another project than the labels: refused.
        let mut e = last_entry();
        e["protoPayload"]["resourceName"] =
            json!("projects/other-project/zones/us-central1-a/instances/k8s-worker-1");
        assert!(matches!(decode_value(&e), Err(DecodeError::Shape(_))));
        // A project number (managed instance groups) is consistent with any id.
        let mut e = last_entry();
        e["protoPayload"]["resourceName"] =
            json!("projects/123456789012/zones/us-central1-a/instances/k8s-worker-1");
        assert!(matches!(decode_value(&e), Ok(InstanceEvent::Created(_))));
    }
}
