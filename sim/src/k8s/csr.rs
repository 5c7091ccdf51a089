//! `certificates.k8s.io/v1` CertificateSigningRequests, and the two kube-controller-manager
//! controllers that act on them, as upstream does (paths in kubernetes/kubernetes):
//!
//! - **The API** (`pkg/apis/certificates/validation/validation.go`,
//!   `pkg/registry/certificates/certificates/strategy.go`): on create the request must be a PEM
//!   `CERTIFICATE REQUEST` whose signature verifies, with at least one known usage and no
//!   duplicate, a `domain/path` signer name other than `kubernetes.io/legacy-unknown`, and
//!   `expirationSeconds` of at least 600 when set. The subject is **not** compared with the
//!   signer there. `spec.username`, `spec.groups` (and `uid`, `extra`) are overwritten with the
//!   requester's, and any status sent is dropped.
//! - **csrapproving** (`pkg/controller/certificates/approver/sarapprove.go`): for signer
//!   `kubernetes.io/kube-apiserver-client-kubelet`, a CSR whose subject has O exactly
//!   `system:nodes`, a CN `system:node:*`, no SANs, and usages exactly {digital signature,
//!   client auth} or {digital signature, key encipherment, client auth} is approved when a
//!   SubjectAccessReview allows its requester `create` on `certificatesigningrequests/
//!   selfnodeclient` (only when the requester's username is the CN) or `…/nodeclient`. The
//!   `nodeclient` rule never compares the CN with the requester.
//! - **csrsigning** (`pkg/controller/certificates/signer/signer.go`): an Approved (not Denied,
//!   not Failed) CSR of that signer gets a certificate from the cluster CA: the CSR's subject,
//!   `spec.usages`, valid from 5 minutes ago for a year, or `expirationSeconds` when shorter.
//!
//! - **The approval subresource** (`…/{name}/approval`, strategy.go's `csrApprovalStrategy`,
//!   validation.go's `ValidateCertificateSigningRequestApprovalUpdate`, and the
//!   `CertificateApproval` admission plugin, plugin/pkg/admission/certificates/approval): the
//!   requester needs `update` (or `patch`) on `certificatesigningrequests/approval` **and**
//!   `approve` on `signers` named the CSR's signer (or `DOMAIN/*`,
//!   plugin/pkg/admission/certificates/util.go); only `status.conditions` is taken from the
//!   update; condition types are unique, Approved and Denied exclusive and `True`, and an
//!   Approved or Denied condition cannot be removed.
//!
//! Deviations: the controllers run right after a CSR is created, not on an informer's schedule;
//! a CSR carrying an extension the parser does not know (rcgen reads SANs, key usages, extended
//! key usages and basic constraints) is refused as unparseable.

use base64::Engine as _;
use serde_json::{Value, json};
use x509_parser::prelude::FromDer as _;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{Method, StatusCode};

use super::objects::str_at;
use super::rbac::{Identity, Policy, Request};
use super::status::ApiError;
use super::{Sim, lock};
use crate::server::{self, Call};

const RESOURCE: &str = "certificatesigningrequests";

/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// `certificates.k8s.io/v1`'s KeyUsage values (validation.go `allValidUsages`).
const USAGES: [&str; 23] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn invalid(name: &str, field: &str, reason: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(
        "CertificateSigningRequest",
        name,
        field,
        reason,
        &message.into(),
    )
}

/// What a CSR asks for, read from its PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    /// DNS, IP, email or URI names.
    pub sans: usize,
    /// The request as rcgen reads it, for the signer.
    params_pem: String,
}

/// Parses `spec.request` (base64 of a PEM CSR) and verifies its signature.
fn requested(obj: &Value) -> Result<Requested, String> {
    let b64 = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("Required value")?;
    let pem_bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not base64: {e}"))?;
    let pem_text = String::from_utf8(pem_bytes).map_err(|_| "not a PEM block".to_string())?;
    let block = ::pem::parse(&pem_text).map_err(|e| format!("{e}"))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    // Parses and verifies the request's signature.
    rcgen::CertificateSigningRequestParams::from_pem(&pem_text)
        .map_err(|e| format!("the certificate request does not verify: {e}"))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(block.contents())
            .map_err(|e| format!("{e}"))?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_string).unwrap_or_default()
    };
    let mut sans = 0;
    if let Some(exts) = csr.requested_extensions() {
        for e in exts {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) = e {
                sans += s.general_names.len();
            }
        }
    }
    Ok(Requested {
        common_name: subject.iter_common_name().next().map(text),
        organizations: subject.iter_organization().map(text).collect(),
        sans,
        params_pem: pem_text,
    })
}

/// The API server's create: validation, then the requester recorded (PrepareForCreate).
pub(super) fn prepare_create(obj: &mut Value, who: &Identity) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    let name = str_at(obj, "/metadata/name").to_string();
    if name.is_empty() && str_at(obj, "/metadata/generateName").is_empty() {
        return Err(invalid(
            "",
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        ));
    }
    requested(obj).map_err(|e| invalid(&name, "spec.request", "FieldValueInvalid", e))?;
    let usages: Vec<&str> = obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if usages.is_empty() {
        return Err(invalid(
            &name,
            "spec.usages",
            "FieldValueRequired",
            "Required value",
        ));
    }
    for (i, u) in usages.iter().enumerate() {
        if !USAGES.contains(u) {
            return Err(invalid(
                &name,
                &format!("spec.usages[{i}]"),
                "FieldValueNotSupported",
                format!("Unsupported value: {u:?}"),
            ));
        }
        if usages[..i].contains(u) {
            return Err(invalid(
                &name,
                &format!("spec.usages[{i}]"),
                "FieldValueDuplicate",
                format!("Duplicate value: {u:?}"),
            ));
        }
    }
    let signer = str_at(obj, "/spec/signerName");
    let signer_ok = signer
        .split_once('/')
        .is_some_and(|(d, p)| d.contains('.') && !p.is_empty() && !p.contains('/'));
    if !signer_ok || signer == "kubernetes.io/legacy-unknown" {
        return Err(invalid(
            &name,
            "spec.signerName",
            "FieldValueInvalid",
            format!(
                "{signer:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'"
            ),
        ));
    }
    if let Some(e) = obj.pointer("/spec/expirationSeconds")
        && e.as_i64().is_none_or(|s| s < 600)
    {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            "FieldValueInvalid",
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    obj["apiVersion"] = json!("certificates.k8s.io/v1");
    obj["kind"] = json!("CertificateSigningRequest");
    obj["spec"]["username"] = json!(who.user);
    obj["spec"]["groups"] = json!(who.groups);
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    Ok(())
}

fn condition(obj: &Value, kind: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|x| x["type"] == kind))
}

fn add_condition(obj: &mut Value, kind: &str, reason: &str, message: &str) {
    let now = super::objects::now();
    let c = json!({"type": kind, "status": "True", "reason": reason, "message": message,
                   "lastUpdateTime": now, "lastTransitionTime": now});
    match obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        Some(list) => list.push(c),
        None => obj["status"] = json!({"conditions": [c]}),
    }
}

/// sarapprove.go's recognizers' common part for the kubelet client signer.
fn kubelet_client_ok(obj: &Value, r: &Requested) -> bool {
    let mut usages: Vec<&str> = obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    usages.sort_unstable();
    let ok_usages = usages == ["client auth", "digital signature"]
        || usages == ["client auth", "digital signature", "key encipherment"];
    str_at(obj, "/spec/signerName") == KUBELET_CLIENT_SIGNER
        && r.organizations == ["system:nodes"]
        && r.common_name
            .as_deref()
            .is_some_and(|cn| cn.starts_with("system:node:"))
        && r.sans == 0
        && ok_usages
}

/// csrapproving: approves the pending kubelet client CSRs its SubjectAccessReviews allow.
pub(super) fn approve(obj: &mut Value, policy: &Policy) {
    if condition(obj, "Approved") || condition(obj, "Denied") {
        return;
    }
    let Ok(r) = requested(obj) else { return };
    if !kubelet_client_ok(obj, &r) {
        return;
    }
    let requester = Identity {
        user: str_at(obj, "/spec/username").to_string(),
        groups: obj
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let may = |sub: &str| {
        policy.allows(
            &requester,
            &Request {
                verb: "create",
                resource: &format!("certificatesigningrequests/{sub}"),
                namespace: "",
                name: "",
            },
        )
    };
    let own = r.common_name.as_deref() == Some(requester.user.as_str());
    if own && may("selfnodeclient") {
        add_condition(
            obj,
            "Approved",
            "AutoApproved",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        );
    } else if may("nodeclient") {
        add_condition(
            obj,
            "Approved",
            "AutoApproved",
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        );
    }
}

/// The cluster CA that csrsigning signs with.
pub struct ClusterCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA (`CN=kubernetes`, as kubeadm names it).
    ///
    /// # Errors
    /// When the key or the certificate cannot be made.
    pub fn generate() -> Result<Self, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// csrsigning: an Approved, not Denied or Failed kubelet client CSR without a certificate gets
/// one; one that fails the signer's own checks is marked Failed.
pub(super) fn sign(obj: &mut Value, ca: &ClusterCa) {
    if !condition(obj, "Approved")
        || condition(obj, "Denied")
        || condition(obj, "Failed")
        || str_at(obj, "/spec/signerName") != KUBELET_CLIENT_SIGNER
        || !str_at(obj, "/status/certificate").is_empty()
    {
        return;
    }
    let Ok(r) = requested(obj) else { return };
    if !kubelet_client_ok(obj, &r) {
        add_condition(
            obj,
            "Failed",
            "SignerValidationFailure",
            "invalid kubelet client certificate request",
        );
        return;
    }
    let Ok(mut csr) = rcgen::CertificateSigningRequestParams::from_pem(&r.params_pem) else {
        return;
    };
    // signer.go: the lifetime is the cluster signing duration (a year), or the CSR's
    // expirationSeconds when shorter (never under 10 minutes); 5 minutes of backdating, also
    // taken off the end for lifetimes of 8 hours or more.
    let now = time::OffsetDateTime::now_utc();
    let year = time::Duration::days(365);
    let ttl = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map_or(year, |s| time::Duration::seconds(s.max(600)).min(year));
    let skew = time::Duration::minutes(5);
    csr.params.not_before = now - skew;
    csr.params.not_after = if ttl >= time::Duration::hours(8) {
        now + ttl - skew
    } else {
        now + ttl
    };
    csr.params.is_ca = rcgen::IsCa::ExplicitNoCa;
    // The key usages are the CSR's spec.usages (the extended one: client auth).
    csr.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let usages = obj.pointer("/spec/usages").and_then(Value::as_array);
    if usages.is_some_and(|u| u.iter().any(|x| x == "key encipherment")) {
        csr.params
            .key_usages
            .push(rcgen::KeyUsagePurpose::KeyEncipherment);
    }
    csr.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if let Ok(cert) = csr.signed_by(&ca.issuer) {
        obj["status"]["certificate"] =
            json!(base64::engine::general_purpose::STANDARD.encode(cert.pem()));
    }
}

fn key(name: &str) -> (String, String, String) {
    (RESOURCE.to_string(), String::new(), name.to_string())
}

/// `POST` (create) and `GET` (list) `/apis/certificates.k8s.io/v1/certificatesigningrequests`.
pub(super) async fn collection(State(sim): State<Arc<Sim>>, call: Call, body: Bytes) -> Response {
    let create = call.method == Method::POST;
    let verb = if create { "create" } else { "list" };
    let mut created: Option<(String, Identity)> = None;
    let resp = server::run(&sim, &format!("{RESOURCE}.{verb}"), &call, &body, |s| {
        let who = s.authorize(&call, verb, RESOURCE, "", "")?;
        let mut st = s.store();
        if !create {
            // Label and field selectors, limit and continue, as for every list.
            let q = server::parse_query(call.uri.query(), server::Malformed::Keep);
            let (status, mut body) =
                super::select::list(&mut st, RESOURCE, "CertificateSigningRequest", None, &q)?;
            body["apiVersion"] = json!("certificates.k8s.io/v1");
            return Ok::<_, ApiError>(super::rest::printed(&call, RESOURCE, (status, body)));
        }
        let mut obj = super::rest::parse_body(&body)?;
        prepare_create(&mut obj, &who)?;
        let mut name = str_at(&obj, "/metadata/name").to_string();
        if name.is_empty() {
            name = format!(
                "{}{:05x}",
                str_at(&obj, "/metadata/generateName"),
                st.resource_version + 1
            );
        }
        if st.objects.contains_key(&key(&name)) {
            return Err(ApiError::already_exists(RESOURCE, &name));
        }
        st.resource_version += 1;
        let rv = st.resource_version;
        let m = &mut obj["metadata"];
        m["name"] = json!(name);
        m["resourceVersion"] = json!(rv.to_string());
        m["uid"] = json!(format!("{rv:08x}-0000-4000-8000-{rv:012x}"));
        m["creationTimestamp"] = json!(super::objects::now());
        st.objects.insert(key(&name), obj.clone());
        created = Some((name, who));
        Ok((StatusCode::CREATED, obj))
    })
    .await;
    if let Some((name, who)) = created {
        // The audit entry of the create (nodewire's policy logs CSR creates at Metadata).
        sim.audit_csr_create(&who);
        // kube-controller-manager's controllers see the new CSR and act on it.
        let sim = sim.clone();
        tokio::spawn(async move { sim.certificate_controllers(&name) });
    }
    resp
}

/// `GET /apis/certificates.k8s.io/v1/certificatesigningrequests/{name}`.
pub(super) async fn item(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    call: Call,
    body: Bytes,
) -> Response {
    server::run(&sim, &format!("{RESOURCE}.get"), &call, &body, |s| {
        s.authorize(&call, "get", RESOURCE, "", &name)?;
        let st = s.store();
        st.objects
            .get(&key(&name))
            .cloned()
            .map(|o| (StatusCode::OK, o))
            .ok_or_else(|| ApiError::not_found(RESOURCE, &name))
    })
    .await
}

/// `IsAuthorizedForSignerName`: `verb` on `signers` named `signer`, or on `DOMAIN/*`.
fn may_for_signer(policy: &Policy, who: &Identity, verb: &str, signer: &str) -> bool {
    let wildcard = signer
        .split_once('/')
        .map(|(d, _)| format!("{d}/*"))
        .unwrap_or_default();
    [signer, wildcard.as_str()].iter().any(|name| {
        !name.is_empty()
            && policy.allows(
                who,
                &Request {
                    verb,
                    resource: "signers",
                    namespace: "",
                    name,
                },
            )
    })
}

/// validation.go's checks on the conditions an approval update leaves, against the old ones.
fn validate_approval(name: &str, old: &Value, conditions: &Value) -> Result<(), ApiError> {
    let bad = |i: usize, field: &str, reason: &str, m: String| {
        invalid(name, &format!("status.conditions[{i}].{field}"), reason, m)
    };
    let list = match conditions {
        Value::Null => Vec::new(),
        Value::Array(l) => l.clone(),
        _ => {
            return Err(invalid(
                name,
                "status.conditions",
                "FieldValueInvalid",
                "must be a list",
            ));
        }
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let kind = c["type"].as_str().unwrap_or_default().to_string();
        if kind.is_empty() {
            return Err(bad(
                i,
                "type",
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        if seen.contains(&kind) {
            return Err(bad(
                i,
                "type",
                "FieldValueDuplicate",
                format!("Duplicate value: {kind:?}"),
            ));
        }
        let status = c["status"].as_str().unwrap_or_default();
        if matches!(kind.as_str(), "Approved" | "Denied") && status != "True" {
            return Err(bad(
                i,
                "status",
                "FieldValueNotSupported",
                format!("Unsupported value: {status:?}: supported values: \"True\""),
            ));
        }
        seen.push(kind);
    }
    if seen.iter().any(|k| k == "Approved") && seen.iter().any(|k| k == "Denied") {
        return Err(invalid(
            name,
            "status.conditions",
            "FieldValueInvalid",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    for kept in ["Approved", "Denied"] {
        if condition(old, kept) && !seen.iter().any(|k| k == kept) {
            return Err(invalid(
                name,
                "status.conditions",
                "FieldValueForbidden",
                format!("updates may not remove a condition of type {kept:?}"),
            ));
        }
    }
    Ok(())
}

/// `GET`, `PUT` and `PATCH` `/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval`.
pub(super) async fn approval(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    call: Call,
    body: Bytes,
) -> Response {
    let verb = match call.method {
        Method::GET => "get",
        Method::PUT => "update",
        _ => "patch",
    };
    let mut changed = false;
    let resp = server::run(
        &sim,
        &format!("{RESOURCE}.approval.{verb}"),
        &call,
        &body,
        |s| {
            let who = s.authorize(
                &call,
                verb,
                "certificatesigningrequests/approval",
                "",
                &name,
            )?;
            let mut st = s.store();
            let old = st
                .objects
                .get(&key(&name))
                .cloned()
                .ok_or_else(|| ApiError::not_found(RESOURCE, &name))?;
            if verb == "get" {
                return Ok::<_, ApiError>((StatusCode::OK, old));
            }
            let new = if verb == "update" {
                let new = super::rest::parse_body(&body)?;
                let rv = str_at(&new, "/metadata/resourceVersion");
                if !rv.is_empty() && rv != str_at(&old, "/metadata/resourceVersion") {
                    return Err(ApiError::conflict(RESOURCE, &name));
                }
                new
            } else {
                let p = super::rest::parse_body(&body)?;
                let mut new = old.clone();
                super::rest::apply_patch(
                    &mut new,
                    &p,
                    call.header("content-type"),
                    call.uri.query(),
                )?;
                new
            };
            // The CertificateApproval admission plugin.
            let signer = str_at(&old, "/spec/signerName").to_string();
            if !may_for_signer(&s.policy, &who, "approve", &signer) {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "certificatesigningrequests.certificates.k8s.io {name:?} is forbidden: \
                         user not permitted to approve requests with signerName {signer:?}"
                    ),
                ));
            }
            let conditions = new
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(Value::Null);
            validate_approval(&name, &old, &conditions)?;
            // Only the conditions are taken from the update.
            let mut obj = old;
            obj["status"]["conditions"] = if conditions.is_null() {
                json!([])
            } else {
                conditions
            };
            st.resource_version += 1;
            obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
            st.objects.insert(key(&name), obj.clone());
            changed = true;
            Ok((StatusCode::OK, obj))
        },
    )
    .await;
    if changed {
        // csrsigning sees the approved CSR.
        let sim = sim.clone();
        tokio::spawn(async move { sim.certificate_controllers(&name) });
    }
    resp
}

impl Sim {
    /// csrapproving, then csrsigning, on one CSR.
    fn certificate_controllers(&self, name: &str) {
        let mut st = self.store();
        let Some(obj) = st.objects.get_mut(&key(name)) else {
            return;
        };
        approve(obj, &self.policy);
        if let Some(ca) = lock(&self.ca).as_ref() {
            sign(obj, ca);
        }
        st.resource_version += 1;
        let rv = st.resource_version;
        if let Some(o) = st.objects.get_mut(&key(name)) {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        let pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    fn csr(req: &str, usages: Value, signer: &str) -> Value {
        json!({"metadata": {"generateName": "csr-"},
               "spec": {"request": req, "usages": usages, "signerName": signer}})
    }

    fn create(mut obj: Value) -> Result<Value, String> {
        let who = Identity::new("system:bootstrap:abcdef", &["system:bootstrappers"]);
        prepare_create(&mut obj, &who).map_err(|e| e.message)?;
        Ok(obj)
    }

    /// The approval subresource: the CertificateApproval admission plugin lets only who may
    /// `approve` the CSR's signer (by name or `DOMAIN/*`), and validation.go's condition rules.
    #[test]
    fn approval_needs_the_signer_and_keeps_its_conditions() {
        let policy = Policy::load(&[super::super::rbac::NODEWIRE_RBAC]).expect("rbac");
        let join = Identity::service_account("kube-system", "nodewire-join");
        let nodewire = Identity::service_account("kube-system", "nodewire");
        assert!(may_for_signer(
            &policy,
            &join,
            "approve",
            KUBELET_CLIENT_SIGNER
        ));
        assert!(!may_for_signer(
            &policy,
            &join,
            "approve",
            "kubernetes.io/kube-apiserver-client"
        ));
        assert!(!may_for_signer(
            &policy,
            &join,
            "sign",
            KUBELET_CLIENT_SIGNER
        ));
        assert!(!may_for_signer(
            &policy,
            &nodewire,
            "approve",
            KUBELET_CLIENT_SIGNER
        ));
        let admin = Policy::load(&[r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: approver}
rules:
  - {apiGroups: [certificates.k8s.io], resources: [signers], resourceNames: ["kubernetes.io/*"], verbs: [approve]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: approver}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: approver}
subjects:
  - {kind: User, name: someone}
"#])
        .expect("rbac");
        let someone = Identity::new("someone", &["system:authenticated"]);
        assert!(
            may_for_signer(&admin, &someone, "approve", "kubernetes.io/anything"),
            "DOMAIN/* covers the domain's signers"
        );
        assert!(!may_for_signer(
            &admin,
            &someone,
            "approve",
            "example.com/x"
        ));

        let pending = json!({"status": {}});
        let approved = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        let ok = |c: Value| validate_approval("n", &pending, &c);
        assert!(ok(json!([{"type": "Approved", "status": "True", "reason": "R"}])).is_ok());
        assert!(ok(json!([{"type": "Approved", "status": "False"}])).is_err());
        assert!(
            ok(json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]))
                .is_err()
        );
        assert!(
            ok(json!([{"type": "Approved", "status": "True"}, {"type": "Approved", "status": "True"}]))
                .is_err()
        );
        assert!(ok(json!([{"status": "True"}])).is_err(), "no type");
        assert!(
            validate_approval("n", &approved, &json!([])).is_err(),
            "an Approved condition is never removed"
        );
    }

    /// validation.go's create checks, and the requester recorded by the API server.
    #[test]
    fn create_validates_as_the_api_server_does() {
        let ok = request("system:node:n", &["system:nodes"]);
        let usages = json!(["digital signature", "client auth"]);
        let made = create(csr(&ok, usages.clone(), KUBELET_CLIENT_SIGNER)).expect("valid");
        assert_eq!(made["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(made["kind"], "CertificateSigningRequest");
        // The subject is not the API server's business, only the controllers'.
        let masters = request("system:node:n", &["system:masters"]);
        assert!(create(csr(&masters, usages.clone(), KUBELET_CLIENT_SIGNER)).is_ok());
        let refused = [
            (
                "not PEM",
                csr("bm90IHBlbQ==", usages.clone(), KUBELET_CLIENT_SIGNER),
            ),
            ("no usage", csr(&ok, json!([]), KUBELET_CLIENT_SIGNER)),
            (
                "unknown usage",
                csr(&ok, json!(["client auth", "root"]), KUBELET_CLIENT_SIGNER),
            ),
            (
                "duplicate usage",
                csr(
                    &ok,
                    json!(["client auth", "client auth"]),
                    KUBELET_CLIENT_SIGNER,
                ),
            ),
            (
                "legacy signer",
                csr(&ok, usages.clone(), "kubernetes.io/legacy-unknown"),
            ),
            ("no signer", csr(&ok, usages.clone(), "")),
        ];
        for (what, obj) in refused {
            assert!(create(obj).is_err(), "{what}");
        }
        let mut short = csr(&ok, usages.clone(), KUBELET_CLIENT_SIGNER);
        short["spec"]["expirationSeconds"] = json!(599);
        assert!(create(short).is_err(), "expirationSeconds < 600");
        // A request whose signature does not verify: another key's CSR with its body changed.
        let tampered = {
            let pem = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(&ok)
                    .expect("b64"),
            )
            .expect("utf8");
            let block = ::pem::parse(&pem).expect("pem");
            let mut der = block.contents().to_vec();
            // Flip a byte inside the subject (the signed part).
            if let Some(i) = der.windows(4).position(|w| w == b"node") {
                der[i] = b'm';
            }
            let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
            base64::engine::general_purpose::STANDARD.encode(pem)
        };
        assert!(
            create(csr(&tampered, usages, KUBELET_CLIENT_SIGNER)).is_err(),
            "a signature that does not verify"
        );
    }
}
