//! The REST verbs on every served resource: get, update (PUT, `resourceVersion` required),
//! patch (merge, strategic-merge, JSON patch with `test`, server-side apply as a merge), delete
//! (with `preconditions`), list and create. The node writes the audit pipeline records are
//! published once the request is answered, and a created Node is handed to the IPAM controller.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::admission::{Admission, Attributes};
use super::objects::{create_admitted, str_at, update, update_admitted};
use super::rbac::{self, Identity};
use super::select::list;
use super::{ApiError, Sim, Store, kind_of, patch};
use crate::server::{Call, Malformed, parse_query, run};

/// What a handler answers: a status and the object (or list, or `Status`).
type Outcome = Result<(StatusCode, Value), ApiError>;

/// The object a request is about.
struct Target {
    resource: String,
    ns: String,
    name: String,
}

impl Target {
    fn key(&self) -> (String, String, String) {
        (self.resource.clone(), self.ns.clone(), self.name.clone())
    }

    fn is_node(&self) -> bool {
        self.resource == "nodes"
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.resource, &self.name)
    }

    fn conflict(&self) -> ApiError {
        ApiError::conflict(&self.resource, &self.name)
    }

    fn current(&self, st: &Store) -> Result<Value, ApiError> {
        st.objects
            .get(&self.key())
            .cloned()
            .ok_or_else(|| self.not_found())
    }
}

/// A Node write by nodewire that the audit pipeline records.
struct NodeWrite {
    verb: &'static str,
    name: String,
    request: Option<Value>,
}

impl NodeWrite {
    fn new(verb: &'static str, t: &Target, request: Option<Value>) -> Self {
        Self {
            verb,
            name: t.name.clone(),
            request,
        }
    }

    /// The write, when it gave a Node its podCIDR (`old_cidr` was empty, `out` has one).
    fn pod_cidr(
        verb: &'static str,
        t: &Target,
        old_cidr: &str,
        out: &Value,
        request: impl FnOnce() -> Value,
    ) -> Option<Self> {
        (t.is_node() && old_cidr.is_empty() && !str_at(out, "/spec/podCIDR").is_empty())
            .then(|| Self::new(verb, t, Some(request())))
    }
}

pub(super) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

fn check_resource(resource: &str, namespaced: bool) -> Result<&'static str, ApiError> {
    match kind_of(resource) {
        Some((kind, ns)) if ns == namespaced => Ok(kind),
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({resource})"),
        )),
    }
}

/// A read's answer as the client asked for it: a server-printed `Table` when its `Accept`
/// header asks for one first, the object or list otherwise.
pub(super) fn printed(
    call: &Call,
    resource: &str,
    (status, body): (StatusCode, Value),
) -> (StatusCode, Value) {
    let accept = call.header("accept");
    if super::table::wanted(accept) {
        (status, super::table::render(resource, &body))
    } else if metadata_only(accept) {
        (status, partial_metadata(&body))
    } else {
        (status, body)
    }
}

/// Whether the client asked for metadata only (`as=PartialObjectMetadataList` or
/// `as=PartialObjectMetadata`, group `meta.k8s.io`), as `kubectl get -o name` and kube's
/// `list_metadata` do (<https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables>
/// and the metadata-only form beside it).
fn metadata_only(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.contains("as=PartialObjectMetadata") && first.contains("g=meta.k8s.io")
    })
}

/// An object or a list reduced to `PartialObjectMetadata`: only `metadata` survives — a
/// Secret's data never leaves the server this way.
fn partial_metadata(body: &Value) -> Value {
    let one = |o: &Value| {
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })
    };
    match body.get("items").and_then(Value::as_array) {
        Some(items) => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": body.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "items": items.iter().map(one).collect::<Vec<_>>(),
        }),
        None => one(body),
    }
}

/// Pods are listed and read, never written: the simulated cluster runs none.
fn read_only(resource: &str) -> Result<(), ApiError> {
    if resource == "pods" {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the simulated cluster schedules no Pods: pods are served for get and list only",
        ));
    }
    Ok(())
}

async fn item(sim: Arc<Sim>, call: Call, headers: &HeaderMap, t: Target, body: Bytes) -> Response {
    let verb = match call.method.as_str() {
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "unknown",
    };
    let api_method = format!("{}.{verb}", t.resource);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut written = None;
    let mut actor = None;
    let resp = run(&sim, &api_method, &call, &body, |s| {
        check_resource(&t.resource, !t.ns.is_empty())?;
        let who = s.authorize(&call, verb, &t.resource, &t.ns, &t.name)?;
        let mut st = s.store();
        if verb != "get" {
            read_only(&t.resource)?;
        }
        let (out, write) = match verb {
            "get" => (t.current(&st)?, None),
            "update" => put(&mut st, &s.admission, &who, &t, &body)?,
            "patch" => patch_item(
                &mut st,
                &s.admission,
                &who,
                &t,
                content_type,
                call.uri.query(),
                &body,
            )?,
            "delete" => delete(&mut st, &s.admission, &who, &t, &body)?,
            _ => {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ));
            }
        };
        written = write;
        actor = Some(who);
        if verb != "get" && (t.resource == "secrets" || t.resource == "configmaps") {
            super::controllers::reconcile(&mut st);
        }
        if verb == "get" {
            return Ok(printed(&call, &t.resource, (StatusCode::OK, out)));
        }
        Ok((StatusCode::OK, out))
    })
    .await;
    if let (Some(w), Some(who)) = (written, actor) {
        sim.audit_node(w.verb, &w.name, 200, &who, w.request);
    }
    resp
}

/// Admission of a write to an existing object: NodeRestriction when a kubelet writes a Node
/// (only its own, taints and ownerReferences unchanged after registration), then the
/// ValidatingAdmissionPolicies in force.
fn admit_node_write(
    adm: &Admission,
    who: &Identity,
    verb: &str,
    t: &Target,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    if let Some(node) = who.node_name()
        && t.is_node()
    {
        rbac::node_restriction(node, verb, &t.name, old, new)?;
    }
    adm.admit(&Attributes {
        user: &who.user,
        groups: &who.groups,
        operation: if verb == "delete" { "DELETE" } else { "UPDATE" },
        resource: &t.resource,
        namespace: &t.ns,
        name: &t.name,
        object: new,
        old_object: old,
    })
}

fn put(
    st: &mut Store,
    adm: &Admission,
    who: &Identity,
    t: &Target,
    body: &[u8],
) -> Result<(Value, Option<NodeWrite>), ApiError> {
    let obj = parse_body(body)?;
    // When there is no such object, the update below is refused.
    let old_cidr = st
        .objects
        .get(&t.key())
        .map(|o| str_at(o, "/spec/podCIDR").to_string())
        .unwrap_or_default();
    let out = update_admitted(st, &t.resource, &t.ns, &t.name, obj, true, |new, old| {
        admit_node_write(adm, who, "update", t, Some(old), Some(new))
    })?;
    let write = NodeWrite::pod_cidr(
        "update",
        t,
        &old_cidr,
        &out,
        || json!({"spec": out["spec"].clone()}),
    );
    Ok((out, write))
}

fn patch_item(
    st: &mut Store,
    adm: &Admission,
    who: &Identity,
    t: &Target,
    content_type: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(Value, Option<NodeWrite>), ApiError> {
    let p = parse_body(body)?;
    let old = t.current(st)?;
    let mut obj = old.clone();
    apply_patch(&mut obj, &p, content_type, query)?;
    // A resourceVersion in the patched result is a precondition, checked before admission.
    let patched_rv = str_at(&obj, "/metadata/resourceVersion").to_string();
    if patched_rv != str_at(&old, "/metadata/resourceVersion") {
        return Err(t.conflict());
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let out = update_admitted(st, &t.resource, &t.ns, &t.name, obj, false, |new, _| {
        admit_node_write(adm, who, "patch", t, Some(&old), Some(new))
    })?;
    let write = NodeWrite::pod_cidr("patch", t, str_at(&old, "/spec/podCIDR"), &out, || p);
    Ok((out, write))
}

/// Applies `p` as its media type says.
pub(super) fn apply_patch(
    obj: &mut Value,
    p: &Value,
    content_type: &str,
    query: Option<&str>,
) -> Result<(), ApiError> {
    let rejected = |m: String| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {m}"),
        )
    };
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => patch::merge_patch(obj, p),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge_patch(obj, p).map_err(|e| ApiError::bad_request(e.0))?;
        }
        "application/apply-patch+yaml" => {
            let q = parse_query(query, Malformed::Keep);
            if q.get("fieldManager").is_none_or(|f| f.is_empty()) {
                return Err(ApiError::bad_request(
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                ));
            }
            patch::merge_patch(obj, p);
        }
        "application/json-patch+json" => match patch::json_patch(obj, p) {
            Ok(()) => {}
            Err(patch::JsonPatchError::TestFailed(m) | patch::JsonPatchError::Invalid(m)) => {
                return Err(rejected(m));
            }
        },
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                ),
            ));
        }
    }
    Ok(())
}

fn delete(
    st: &mut Store,
    adm: &Admission,
    who: &Identity,
    t: &Target,
    body: &[u8],
) -> Result<(Value, Option<NodeWrite>), ApiError> {
    let old = t.current(st)?;
    if !body.is_empty() {
        let opts = parse_body(body)?;
        let pre_rv = str_at(&opts, "/preconditions/resourceVersion");
        let pre_uid = str_at(&opts, "/preconditions/uid");
        if (!pre_rv.is_empty() && pre_rv != str_at(&old, "/metadata/resourceVersion"))
            || (!pre_uid.is_empty() && pre_uid != str_at(&old, "/metadata/uid"))
        {
            return Err(t.conflict());
        }
    }
    // Preconditions first, then admission (the storage layer's order on delete).
    admit_node_write(adm, who, "delete", t, Some(&old), None)?;
    st.objects.remove(&t.key());
    st.resource_version += 1;
    let write = t.is_node().then(|| NodeWrite::new("delete", t, None));
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": t.name, "kind": t.resource, "uid": old["metadata"]["uid"]}});
    Ok((status, write))
}

async fn collection(
    sim: Arc<Sim>,
    call: Call,
    resource: String,
    ns: String,
    body: Bytes,
) -> Response {
    let verb = if call.method == Method::POST {
        "create"
    } else {
        "list"
    };
    let api_method = format!("{resource}.{verb}");
    let mut created_node: Option<(String, Value, Identity)> = None;
    let resp = run(&sim, &api_method, &call, &body, |s| -> Outcome {
        let kind = check_resource(&resource, !ns.is_empty())?;
        let who = s.authorize(&call, verb, &resource, &ns, "")?;
        let mut st = s.store();
        if verb == "list" {
            let q = parse_query(call.uri.query(), Malformed::Keep);
            return list(
                &mut st,
                &resource,
                kind,
                (!ns.is_empty()).then_some(ns.as_str()),
                &q,
            )
            .map(|o| printed(&call, &resource, o));
        }
        read_only(&resource)?;
        let obj = parse_body(&body)?;
        if let (Some(node), "nodes") = (who.node_name(), resource.as_str()) {
            rbac::node_restriction(node, "create", str_at(&obj, "/metadata/name"), None, None)?;
        }
        let out = create_admitted(&mut st, &resource, &ns, obj, |formed| {
            s.admission.admit(&Attributes {
                user: &who.user,
                groups: &who.groups,
                operation: "CREATE",
                resource: &resource,
                namespace: &ns,
                name: str_at(formed, "/metadata/name"),
                object: Some(formed),
                old_object: None,
            })
        })?;
        if resource == "secrets" || resource == "configmaps" {
            super::controllers::reconcile(&mut st);
        }
        if resource == "nodes" {
            created_node = Some((str_at(&out, "/metadata/name").to_string(), out.clone(), who));
        }
        Ok((StatusCode::CREATED, out))
    })
    .await;
    if let Some((name, obj, who)) = created_node {
        sim.audit_node("create", &name, 201, &who, Some(obj));
        sim.schedule_ipam(name);
    }
    resp
}

pub(super) async fn node_collection(
    State(sim): State<Arc<Sim>>,
    call: Call,
    body: Bytes,
) -> Response {
    collection(sim, call, "nodes".into(), String::new(), body).await
}

pub(super) async fn node_item(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    call: Call,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t = Target {
        resource: "nodes".into(),
        ns: String::new(),
        name,
    };
    item(sim, call, &headers, t, body).await
}

/// `GET /api/v1/{resource}` for a namespaced resource: the list across every namespace.
pub(super) async fn all_namespaces(
    State(sim): State<Arc<Sim>>,
    Path(resource): Path<String>,
    call: Call,
) -> Response {
    let api_method = format!("{resource}.list");
    run(&sim, &api_method, &call, &[], |s| -> Outcome {
        let kind = check_resource(&resource, true)?;
        s.authorize(&call, "list", &resource, "", "")?;
        let q = parse_query(call.uri.query(), Malformed::Keep);
        list(&mut s.store(), &resource, kind, None, &q).map(|o| printed(&call, &resource, o))
    })
    .await
}

/// `nodes/NAME/status`: what kubelets write. Only `status` changes, whatever else the body
/// says (the status subresource's strategy); authorized as `nodes/status`.
pub(super) async fn node_status(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    call: Call,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verb = match call.method.as_str() {
        "GET" => "get",
        "PUT" => "update",
        _ => "patch",
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let t = Target {
        resource: "nodes".into(),
        ns: String::new(),
        name,
    };
    run(
        &sim,
        &format!("nodes.status.{verb}"),
        &call,
        &body,
        |s| -> Outcome {
            let who = s.authorize(&call, verb, "nodes/status", "", &t.name)?;
            let mut st = s.store();
            let old = t.current(&st)?;
            if verb == "get" {
                return Ok((StatusCode::OK, old));
            }
            let mut obj = old.clone();
            if verb == "update" {
                obj = parse_body(&body)?;
            } else {
                apply_patch(
                    &mut obj,
                    &parse_body(&body)?,
                    &content_type,
                    call.uri.query(),
                )?;
            }
            let mut new = old.clone();
            new["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if let Some(node) = who.node_name() {
                rbac::node_restriction(node, "patch", &t.name, Some(&old), Some(&new))?;
            }
            s.admission.admit(&Attributes {
                user: &who.user,
                groups: &who.groups,
                operation: "UPDATE",
                resource: "nodes/status",
                namespace: "",
                name: &t.name,
                object: Some(&new),
                old_object: Some(&old),
            })?;
            if verb == "update"
                && str_at(&obj, "/metadata/resourceVersion")
                    != str_at(&old, "/metadata/resourceVersion")
            {
                return Err(t.conflict());
            }
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let out = update(&mut st, "nodes", "", &t.name, new, false)?;
            Ok((StatusCode::OK, out))
        },
    )
    .await
}

pub(super) async fn ns_collection(
    State(sim): State<Arc<Sim>>,
    Path((ns, resource)): Path<(String, String)>,
    call: Call,
    body: Bytes,
) -> Response {
    collection(sim, call, resource, ns, body).await
}

pub(super) async fn ns_item(
    State(sim): State<Arc<Sim>>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    call: Call,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t = Target { resource, ns, name };
    item(sim, call, &headers, t, body).await
}
