//! The write path every resource shares: create (409 `AlreadyExists`, `generateName`, the
//! namespace rule) and update (a stale `resourceVersion` is 409 `Conflict`), each defaulting
//! and validating by resource, then stamping the metadata the server owns (`resourceVersion`,
//! `uid`, `creationTimestamp`).

use serde_json::{Value, json};

use super::status::Subject;
use super::{ApiError, Store, events, kind_of, nodes, secrets};

/// The string at a JSON pointer, or `""`.
pub(super) fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// RFC 3339 now, to the second, as the API server writes `creationTimestamp`.
pub(super) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Defaulting, before validation.
fn normalize(resource: &str, obj: &mut Value) {
    match resource {
        "nodes" => nodes::normalize(obj),
        "secrets" => secrets::normalize(obj),
        _ => {}
    }
}

fn validate(
    resource: &str,
    kind: &str,
    name: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let subject = Subject { kind, name };
    match resource {
        "nodes" => nodes::validate(subject, obj, old),
        "secrets" => secrets::validate(subject, obj, old),
        "events" => events::validate(subject, obj),
        _ => Ok(()),
    }
}

/// Sets what the server owns; `old` is the object being replaced.
fn stamp(st: &mut Store, obj: &mut Value, kind: &str, ns: &str, name: &str, old: Option<&Value>) {
    st.resource_version += 1;
    let rv = st.resource_version.to_string();
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["apiVersion"] = json!("v1");
    obj["kind"] = json!(kind);
    let m = &mut obj["metadata"];
    m["name"] = json!(name);
    if !ns.is_empty() {
        m["namespace"] = json!(ns);
    } else if let Some(o) = m.as_object_mut() {
        o.remove("namespace");
    }
    m["resourceVersion"] = json!(rv);
    match old {
        Some(o) => {
            m["uid"] = o["metadata"]["uid"].clone();
            m["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
        }
        None => {
            m["uid"] = json!(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                st.resource_version, st.resource_version
            ));
            m["creationTimestamp"] = json!(now());
        }
    }
}

fn kind(resource: &str) -> Result<&'static str, ApiError> {
    kind_of(resource)
        .map(|(kind, _)| kind)
        .ok_or_else(|| ApiError::bad_request(format!("unknown resource {resource}")))
}

/// Creates `obj` in `ns` (empty for Nodes).
pub(super) fn create(
    st: &mut Store,
    resource: &str,
    ns: &str,
    obj: Value,
) -> Result<Value, ApiError> {
    create_admitted(st, resource, ns, obj, |_| Ok(()))
}

/// [`create`], with `admit(obj)` run where the API server runs validating admission on a
/// create: after the object is fully formed — converted (a Secret's `stringData` folded into
/// `data`), its system fields filled (`uid`, `creationTimestamp`) and validated — and before it
/// is stored (k8s.io/apiserver `registry/generic/registry/store.go`, `Store.Create`:
/// `FillObjectMetaSystemFields`, `rest.BeforeCreate`, then `createValidation`).
pub(super) fn create_admitted(
    st: &mut Store,
    resource: &str,
    ns: &str,
    mut obj: Value,
    admit: impl FnOnce(&Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let kind = kind(resource)?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    let mut name = str_at(&obj, "/metadata/name").to_string();
    if name.is_empty() {
        let prefix = str_at(&obj, "/metadata/generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                kind,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            ));
        }
        name = format!("{prefix}{:05x}", st.resource_version + 1);
    }
    let body_ns = str_at(&obj, "/metadata/namespace");
    if !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if !ns.is_empty() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let key = (resource.to_string(), ns.to_string(), name.clone());
    if st.objects.contains_key(&key) {
        return Err(ApiError::already_exists(resource, &name));
    }
    normalize(resource, &mut obj);
    validate(resource, kind, &name, &obj, None)?;
    stamp(st, &mut obj, kind, ns, &name, None);
    admit(&obj)?;
    st.objects.insert(key, obj.clone());
    Ok(obj)
}

/// Replaces `ns/name` with `obj`; `require_rv`: as a PUT, which must carry a
/// `resourceVersion` (a patch need not).
pub(super) fn update(
    st: &mut Store,
    resource: &str,
    ns: &str,
    name: &str,
    obj: Value,
    require_rv: bool,
) -> Result<Value, ApiError> {
    update_admitted(st, resource, ns, name, obj, require_rv, |_, _| Ok(()))
}

/// [`update`], with `admit(new, old)` run where the API server runs admission on an update:
/// after the resourceVersion precondition and the object's validation, before it is stored
/// (`registry/generic/registry/store.go`: the conflict check, `BeforeUpdate`, then
/// `updateValidation`). A write that lost a race is a 409, whatever admission would say.
pub(super) fn update_admitted(
    st: &mut Store,
    resource: &str,
    ns: &str,
    name: &str,
    mut obj: Value,
    require_rv: bool,
    admit: impl FnOnce(&Value, &Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let kind = kind(resource)?;
    let key = (resource.to_string(), ns.to_string(), name.to_string());
    let old = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let body_name = str_at(&obj, "/metadata/name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let sent_rv = str_at(&obj, "/metadata/resourceVersion").to_string();
    if sent_rv.is_empty() && require_rv {
        return Err(ApiError::invalid(
            kind,
            name,
            "metadata.resourceVersion",
            "FieldValueInvalid",
            "Invalid value: 0x0: must be specified for an update",
        ));
    }
    if !sent_rv.is_empty() && sent_rv != str_at(&old, "/metadata/resourceVersion") {
        return Err(ApiError::conflict(resource, name));
    }
    normalize(resource, &mut obj);
    validate(resource, kind, name, &obj, Some(&old))?;
    admit(&obj, &old)?;
    stamp(st, &mut obj, kind, ns, name, Some(&old));
    st.objects.insert(key, obj.clone());
    Ok(obj)
}
