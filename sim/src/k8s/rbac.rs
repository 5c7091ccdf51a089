//! Authentication and authorization as kube-apiserver does them with
//! `--authorization-mode=Node,RBAC` and the NodeRestriction admission plugin (kubeadm's
//! defaults).
//!
//! - **Authentication**: a bearer token is an issued token (the cluster admin, a service
//!   account, a node credential) or a bootstrap token `ID.SECRET` checked against its Secret
//!   (present, unexpired, `usage-bootstrap-authentication: "true"`), which authenticates as
//!   `system:bootstrap:ID` in `system:bootstrappers` plus its `auth-extra-groups`
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/>). An unknown
//!   token is 401; no token is `system:anonymous` in `system:unauthenticated`.
//! - **Authorization**: the Node authorizer for `system:node:NAME` in `system:nodes`
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/node/>), then RBAC over
//!   Role/ClusterRole/RoleBinding/ClusterRoleBinding objects loaded from manifests — nodewire's
//!   own, `infra/k8s/nodewire-rbac.yaml`, plus the few defaults a kubeadm cluster has
//!   (system:masters, discovery for the authenticated, cluster-info for the anonymous).
//! - **NodeRestriction**: a node may create and modify only its own Node, and may not change
//!   its taints or ownerReferences after registration
//!   (<https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#noderestriction>).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::ApiError;

/// nodewire's RBAC manifests as shipped; the simulator enforces them unless a test passes others.
pub const NODEWIRE_RBAC: &str = include_str!("../../../infra/k8s/nodewire-rbac.yaml");

/// What the control plane applies besides [`NODEWIRE_RBAC`] in metadata mode: node-events
/// decides the kubelets' CSRs made with nodewire's bootstrap tokens.
pub const NODEWIRE_RBAC_METADATA_MODE: &str =
    include_str!("../../../infra/k8s/nodewire-rbac-metadata-mode.yaml");

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(user: &str, groups: &[&str]) -> Self {
        Self {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_string()).collect(),
        }
    }

    fn anonymous() -> Self {
        Self::new("system:anonymous", &["system:unauthenticated"])
    }

    /// A service account's identity, as its token authenticates.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::new(
            &format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
                "system:authenticated",
            ],
        )
    }

    /// A kubelet's identity once its client certificate is issued.
    pub fn node(name: &str) -> Self {
        Self::new(
            &format!("system:node:{name}"),
            &["system:nodes", "system:authenticated"],
        )
    }

    /// The node's name, when this is a node identity.
    pub fn node_name(&self) -> Option<&str> {
        self.user
            .strip_prefix("system:node:")
            .filter(|_| self.groups.iter().any(|g| g == "system:nodes"))
    }

    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// What a request wants to do, as an authorizer sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    /// Empty for cluster-scoped resources and cluster-wide lists.
    pub namespace: &'a str,
    /// Empty for collections.
    pub name: &'a str,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

/// One manifest document (only the fields RBAC reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    subjects: Vec<Subject>,
    role_ref: Option<RoleRef>,
}

/// The RBAC objects in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `(namespace, name)` → rules; the namespace is empty for ClusterRoles.
    roles: HashMap<(String, String), Vec<Rule>>,
    /// `(namespace of the binding or empty, role ref kind, role name, subjects)`.
    bindings: Vec<(String, RoleRef, Vec<Subject>)>,
    /// The bindings' names, in the same order.
    binding_names: Vec<String>,
}

/// The defaults every kubeadm cluster has that matter here: cluster-info readable by anyone
/// (kubeadm's `kubeadm:bootstrap-signer-clusterinfo` Role, bound to `system:anonymous`).
const KUBEADM_DEFAULTS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: "kubeadm:bootstrap-signer-clusterinfo", namespace: kube-public}
rules:
  - {apiGroups: [""], resources: [configmaps], resourceNames: [cluster-info], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: "kubeadm:bootstrap-signer-clusterinfo", namespace: kube-public}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "kubeadm:bootstrap-signer-clusterinfo"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:anonymous"}
---
# The API server's bootstrap ClusterRoles for certificate signing requests
# (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go) ...
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:node-bootstrapper"}
rules:
  - {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [create, get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}
rules:
  - {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/nodeclient], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}
rules:
  - {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/selfnodeclient], verbs: [create]}
---
# ... and what `kubeadm init` binds to them
# (cmd/kubeadm/app/phases/bootstraptoken/node/tlsbootstrap.go): bootstrap tokens may post CSRs
# and have node-client CSRs auto-approved — for any node name: csrapproving's nodeclient rule
# never compares the name with the requester (the exposure of issue 20) — and Nodes may renew
# their own client certificates.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:kubelet-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
# kubeadm join reads the Node of its name with its bootstrap credential before the kubelet
# starts (tlsbootstrap.go AllowBootstrapTokensToGetNodes).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kubeadm:get-nodes"}
rules:
  - {apiGroups: [""], resources: [nodes], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:get-nodes"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kubeadm:get-nodes"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-certificate-rotation"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}
"#;

/// The API group of a resource the simulator serves (subresources included).
pub fn api_group(resource: &str) -> &'static str {
    match resource.split('/').next().unwrap_or(resource) {
        "certificatesigningrequests" | "signers" => "certificates.k8s.io",
        _ => "",
    }
}

impl Policy {
    /// The kubeadm defaults plus `manifests` (multi-document YAML; kinds other than the four
    /// RBAC ones, such as the ServiceAccount, are skipped).
    ///
    /// # Errors
    /// A manifest that does not parse, or a binding without `roleRef`.
    pub fn load(manifests: &[&str]) -> Result<Self, String> {
        let mut p = Self::default();
        for text in std::iter::once(KUBEADM_DEFAULTS).chain(manifests.iter().copied()) {
            let docs: Vec<Doc> =
                serde_saphyr::from_multiple(text).map_err(|e| format!("RBAC manifest: {e}"))?;
            for d in docs {
                match d.kind.as_str() {
                    "ClusterRole" => {
                        p.roles.insert((String::new(), d.metadata.name), d.rules);
                    }
                    "Role" => {
                        p.roles
                            .insert((d.metadata.namespace, d.metadata.name), d.rules);
                    }
                    "ClusterRoleBinding" | "RoleBinding" => {
                        let r = d.role_ref.ok_or_else(|| {
                            format!("{} {} has no roleRef", d.kind, d.metadata.name)
                        })?;
                        let ns = if d.kind == "RoleBinding" {
                            d.metadata.namespace
                        } else {
                            String::new()
                        };
                        p.bindings.push((ns, r, d.subjects));
                        p.binding_names.push(d.metadata.name);
                    }
                    _ => {}
                }
            }
        }
        Ok(p)
    }

    /// The policy with the ClusterRoleBindings named in `names` deleted (what a control-plane
    /// script's `kubectl delete clusterrolebinding` leaves).
    pub fn without_cluster_role_bindings(mut self, names: &[String]) -> Self {
        let mut keep = Vec::new();
        let mut keep_names = Vec::new();
        for (b, n) in self.bindings.into_iter().zip(self.binding_names) {
            if !(b.0.is_empty() && names.contains(&n)) {
                keep.push(b);
                keep_names.push(n);
            }
        }
        self.bindings = keep;
        self.binding_names = keep_names;
        self
    }

    fn subject_matches(s: &Subject, who: &Identity) -> bool {
        match s.kind.as_str() {
            "User" => s.name == who.user,
            "Group" => who.in_group(&s.name),
            "ServiceAccount" => {
                who.user == format!("system:serviceaccount:{}:{}", s.namespace, s.name)
            }
            _ => false,
        }
    }

    fn rule_allows(r: &Rule, req: &Request<'_>) -> bool {
        let any = |l: &[String], x: &str| l.iter().any(|v| v == "*" || v == x);
        any(&r.api_groups, api_group(req.resource))
            && any(&r.resources, req.resource)
            && any(&r.verbs, req.verb)
            // resourceNames restrict requests about one named object; a list or a create
            // names none and is not allowed by such a rule.
            && (r.resource_names.is_empty()
                || (!req.name.is_empty() && r.resource_names.iter().any(|n| n == req.name)))
    }

    fn rbac_allows(&self, who: &Identity, req: &Request<'_>) -> bool {
        self.bindings.iter().any(|(bns, role_ref, subjects)| {
            // A RoleBinding grants only in its namespace; a ClusterRoleBinding everywhere.
            if !bns.is_empty() && bns != req.namespace {
                return false;
            }
            if !subjects.iter().any(|s| Self::subject_matches(s, who)) {
                return false;
            }
            let role_ns = if role_ref.kind == "Role" {
                bns.clone()
            } else {
                String::new()
            };
            self.roles
                .get(&(role_ns, role_ref.name.clone()))
                .is_some_and(|rules| rules.iter().any(|r| Self::rule_allows(r, req)))
        })
    }

    /// The Node authorizer's grants to a kubelet (no Pods run here, so none of its
    /// pod-derived access to Secrets or ConfigMaps applies).
    fn node_allows(req: &Request<'_>) -> bool {
        match req.resource {
            "nodes" | "nodes/status" => matches!(
                req.verb,
                "get" | "list" | "watch" | "create" | "update" | "patch" | "delete"
            ),
            "events" => matches!(req.verb, "create" | "update" | "patch"),
            // The Node authorizer allows what bootstrappolicy's NodeRules allow for the
            // resources it has no graph for (pkg/auth/authorizer/node/node_authorizer.go,
            // `rbac.RulesAllow(attrs, r.nodeRules...)`): a kubelet posts and reads its CSRs.
            "certificatesigningrequests" => {
                matches!(req.verb, "create" | "get" | "list" | "watch")
            }
            _ => false,
        }
    }

    /// Whether `who` may do `req`.
    pub fn allows(&self, who: &Identity, req: &Request<'_>) -> bool {
        if who.in_group("system:masters") {
            return true;
        }
        if who.node_name().is_some() && Self::node_allows(req) {
            return true;
        }
        self.rbac_allows(who, req)
    }
}

/// kube-apiserver's 403 text.
pub fn forbidden(who: &Identity, req: &Request<'_>) -> ApiError {
    let what = if req.name.is_empty() {
        req.resource.to_string()
    } else {
        format!("{} {:?}", req.resource, req.name)
    };
    let scope = if req.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", req.namespace)
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            who.user,
            req.verb,
            req.resource,
            api_group(req.resource)
        ),
    )
}

/// The 401 kube-apiserver answers for a token it does not know.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// Issued bearer tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: HashMap<String, Identity>,
}

impl Tokens {
    pub fn issue(&mut self, token: String, who: Identity) {
        self.issued.insert(token, who);
    }

    /// Who a request's `Authorization` header says it is.
    ///
    /// # Errors
    /// 401 for a token that is neither issued nor a valid bootstrap token.
    pub fn authenticate(
        &self,
        authorization: &str,
        bootstrap: impl Fn(&str, &str) -> Option<Identity>,
    ) -> Result<Identity, ApiError> {
        if authorization.is_empty() {
            return Ok(Identity::anonymous());
        }
        let Some(token) = authorization
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err(unauthorized());
        };
        if let Some(who) = self.issued.get(token) {
            return Ok(who.clone());
        }
        if let Some((id, secret)) = token.split_once('.')
            && let Some(who) = bootstrap(id, secret)
        {
            return Ok(who);
        }
        Err(unauthorized())
    }
}

/// NodeRestriction for a node identity writing Nodes: only its own, and after registration
/// neither its taints nor its ownerReferences.
///
/// # Errors
/// 403 with the admission plugin's message.
pub fn node_restriction(
    node: &str,
    verb: &str,
    target: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let deny = |m: String| {
        ApiError::new(
            403,
            "Forbidden",
            format!("nodes {target:?} is forbidden: {m}"),
        )
    };
    if target != node {
        return Err(deny(format!(
            "node {node:?} is not allowed to modify node {target:?}"
        )));
    }
    if verb == "create" || verb == "delete" {
        return Ok(());
    }
    if let (Some(old), Some(new)) = (old, new) {
        if old.pointer("/spec/taints") != new.pointer("/spec/taints") {
            return Err(deny(format!(
                "node {node:?} is not allowed to modify taints"
            )));
        }
        if old.pointer("/metadata/ownerReferences") != new.pointer("/metadata/ownerReferences") {
            return Err(deny(format!(
                "node {node:?} is not allowed to modify ownerReferences"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(verb: &'a str, resource: &'a str, ns: &'a str, name: &'a str) -> Request<'a> {
        Request {
            verb,
            resource,
            namespace: ns,
            name,
        }
    }

    #[test]
    fn the_shipped_manifests_grant_exactly_their_verbs() {
        let p = Policy::load(&[NODEWIRE_RBAC]).expect("parses");
        let nw = Identity::service_account("kube-system", "nodewire");
        for ok in [
            req("get", "nodes", "", "n1"),
            req("list", "nodes", "", ""),
            req("patch", "nodes", "", "n1"),
            req("delete", "nodes", "", "n1"),
            req("create", "secrets", "kube-system", ""),
            req("list", "secrets", "kube-system", ""),
            req("delete", "secrets", "kube-system", "bootstrap-token-abcdef"),
            req("get", "configmaps", "kube-public", "cluster-info"),
            req("create", "events", "default", ""),
        ] {
            assert!(p.allows(&nw, &ok), "{ok:?}");
        }
        for no in [
            req("create", "nodes", "", ""),
            req("update", "nodes", "", "n1"),
            req("get", "secrets", "kube-system", "bootstrap-token-abcdef"),
            req("list", "secrets", "default", ""),
            req("list", "secrets", "", ""),
            req("get", "configmaps", "kube-public", "other"),
            req("get", "configmaps", "kube-system", "cluster-info"),
            req("create", "events", "kube-system", ""),
        ] {
            assert!(!p.allows(&nw, &no), "{no:?}");
        }
        // Anyone may read cluster-info (kubeadm's binding for system:anonymous); nothing else.
        let anon = Identity::anonymous();
        assert!(p.allows(
            &anon,
            &req("get", "configmaps", "kube-public", "cluster-info")
        ));
        assert!(!p.allows(&anon, &req("list", "nodes", "", "")));
        // A node: Nodes and Events only (NodeRestriction narrows Nodes further).
        let n = Identity::node("n1");
        assert!(p.allows(&n, &req("create", "nodes", "", "")));
        assert!(!p.allows(&n, &req("list", "secrets", "kube-system", "")));
    }

    #[test]
    fn node_restriction_keeps_a_node_to_itself() {
        let old = serde_json::json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let untainted = serde_json::json!({"spec": {}});
        assert!(node_restriction("n1", "create", "n1", None, None).is_ok());
        assert!(node_restriction("n1", "create", "n2", None, None).is_err());
        assert!(node_restriction("n1", "patch", "n1", Some(&old), Some(&old)).is_ok());
        let e = node_restriction("n1", "patch", "n1", Some(&old), Some(&untainted))
            .expect_err("taints");
        assert!(e.message.contains("not allowed to modify taints"), "{e:?}");
    }

    #[test]
    fn tokens_authenticate_or_401() {
        let mut t = Tokens::default();
        t.issue("abc".into(), Identity::node("n1"));
        let none = |_: &str, _: &str| None;
        assert_eq!(
            t.authenticate("Bearer abc", none).expect("known").user,
            "system:node:n1"
        );
        assert_eq!(
            t.authenticate("", none).expect("anonymous").user,
            "system:anonymous"
        );
        assert_eq!(
            t.authenticate("Bearer nope", none)
                .expect_err("unknown")
                .code,
            401
        );
        assert_eq!(
            t.authenticate("Basic eA==", none).expect_err("scheme").code,
            401
        );
        let boot = |id: &str, s: &str| {
            (id == "abcdef" && s == "0123456789abcdef")
                .then(|| Identity::new("system:bootstrap:abcdef", &["system:bootstrappers"]))
        };
        assert!(
            t.authenticate("Bearer abcdef.0123456789abcdef", boot)
                .is_ok()
        );
        assert!(
            t.authenticate("Bearer abcdef.0123456789abcdeX", boot)
                .is_err()
        );
    }
}
