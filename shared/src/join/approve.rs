//! Metadata mode (issue 20, item 2): the kubelet's TLS bootstrap with a bootstrap token that
//! nodewire minted for one VM. The control plane deletes kubeadm's
//! `kubeadm:node-autoapprove-bootstrap` binding, so kube-controller-manager approves no CSR
//! made with a bootstrap token (its `nodeclient` rule would approve any Node name:
//! pkg/controller/certificates/approver/sarapprove.go); nodewire decides them instead, and
//! approves one only when its subject names the VM the token was minted for:
//! `spec.username` (`system:bootstrap:ID`, set by the API server from the authenticated
//! token) → Secret `kube-system/bootstrap-token-ID` → its `nodewire.io/instance` label.
//!
//! Pure: the decision is made here, the reads and the write in `handlers::node_events`.

use std::collections::BTreeSet;

use super::csr::{CsrRefusal, check};

/// A pending kubelet-client CSR, as read from the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Pending<'a> {
    /// `spec.username`: who created it, as the API server authenticated them.
    pub username: &'a str,
    /// `spec.request` (PEM text).
    pub request_pem: &'a str,
    /// `spec.usages`.
    pub usages: &'a [String],
}

/// One of nodewire's bootstrap tokens, from its Secret's name and labels (never its secret).
#[derive(Debug, Clone, Copy)]
pub struct Minted<'a> {
    pub id: &'a str,
    /// Label `nodewire.io/instance`: the VM it was minted for.
    pub instance: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub instance_id: Option<&'a str>,
}

/// Reason on an Approved condition nodewire writes in metadata mode.
pub const APPROVED_REASON: &str = "NodewireBootstrapTokenInstance";

/// Reason on a Denied condition: the request names another Node than the token's VM.
pub const DENIED_OTHER_NODE: &str = "NodewireOtherNode";

/// Reason on a Denied condition: the request is not a kubelet client request nodewire signs.
pub const DENIED_INVALID: &str = "NodewireInvalidRequest";

/// What to do with one pending CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token was minted for VM `node` and the request is `CN=system:node:<node>`.
    Approve { node: String, message: String },
    /// A nodewire token asked for something it may not have.
    Deny {
        reason: &'static str,
        message: String,
    },
    /// Not nodewire's to decide (another bootstrap token, or one already revoked): left
    /// pending, for a person (`kubectl certificate approve`) or kube-controller-manager's
    /// cleaner, which removes pending CSRs after a day.
    Leave(String),
}

/// The token id of `system:bootstrap:ID` (six lowercase letters or digits, as
/// k8s.io/cluster-bootstrap/token/api defines it).
pub fn token_id(username: &str) -> Option<&str> {
    username
        .strip_prefix("system:bootstrap:")
        .filter(|id| id.len() == 6)
        .filter(|id| {
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Decides `csr` against nodewire's bootstrap tokens (`tokens`, as listed: metadata only).
pub fn judge(csr: &Pending<'_>, tokens: &[Minted<'_>]) -> Verdict {
    let Some(id) = token_id(csr.username) else {
        return Verdict::Leave(format!(
            "made by {}, not by a bootstrap token",
            crate::text::echo(csr.username)
        ));
    };
    let Some(token) = tokens.iter().find(|t| t.id == id) else {
        return Verdict::Leave(format!(
            "bootstrap token {id} is not one of nodewire's (or it was revoked)"
        ));
    };
    let Some(vm) = token.instance else {
        return Verdict::Leave(format!("bootstrap token {id} names no VM"));
    };
    let key = match check(csr.request_pem, vm) {
        Ok(c) => c.key,
        Err(CsrRefusal::Subject { .. }) => {
            return Verdict::Deny {
                reason: DENIED_OTHER_NODE,
                message: format!(
                    "bootstrap token {id} was minted for VM {vm}; the request is not for \
                     CN=system:node:{vm},O=system:nodes"
                ),
            };
        }
        Err(e) => {
            return Verdict::Deny {
                reason: DENIED_INVALID,
                message: format!("bootstrap token {id} (VM {vm}): {e}"),
            };
        }
    };
    // The usages the kubelet asks for, exactly (pkg/apis/certificates/helpers.go,
    // ValidateKubeletClientCSR: digital signature and client auth, plus key encipherment for
    // RSA keys).
    let asked: BTreeSet<&str> = csr.usages.iter().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = key.usages().iter().copied().collect();
    if asked != wanted || asked.len() != csr.usages.len() {
        return Verdict::Deny {
            reason: DENIED_INVALID,
            message: format!(
                "bootstrap token {id} (VM {vm}): the usages must be exactly {}",
                key.usages().join(", ")
            ),
        };
    }
    let zone = token.zone.unwrap_or("?");
    let instance_id = token.instance_id.unwrap_or("?");
    Verdict::Approve {
        node: vm.to_string(),
        message: format!(
            "bootstrap token {id} was minted by nodewire for VM {vm} (zone {zone}, instance id \
             {instance_id}), the Node this request names"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, org: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params
            .serialize_request(&key)
            .expect("a CSR")
            .pem()
            .expect("PEM")
    }

    /// Judges a CSR of `user` with `pem` and `usages`.
    fn judged(user: &str, pem: &str, usages: &[&str], tokens: &[Minted<'_>]) -> Verdict {
        let usages: Vec<String> = usages.iter().map(|u| (*u).to_string()).collect();
        judge(
            &Pending {
                username: user,
                request_pem: pem,
                usages: &usages,
            },
            tokens,
        )
    }

    fn token<'a>(id: &'a str, vm: Option<&'a str>) -> Minted<'a> {
        Minted {
            id,
            instance: vm,
            zone: Some("us-central1-a"),
            instance_id: Some("1234"),
        }
    }

    const KUBELET: [&str; 2] = ["digital signature", "client auth"];

    #[test]
    fn the_tokens_own_vm_is_approved_and_no_other() {
        let tokens = [
            token("abc123", Some("k8s-a")),
            token("def456", Some("k8s-b")),
        ];
        let own = request("system:node:k8s-a", "system:nodes");
        assert!(matches!(
            judged("system:bootstrap:abc123", &own, &KUBELET, &tokens),
            Verdict::Approve { node, .. } if node == "k8s-a"
        ));
        // The attack of issue 20: a token minted for k8s-a asking for k8s-b's Node.
        let theirs = request("system:node:k8s-b", "system:nodes");
        assert!(matches!(
            judged("system:bootstrap:abc123", &theirs, &KUBELET, &tokens),
            Verdict::Deny {
                reason: DENIED_OTHER_NODE,
                ..
            }
        ));
        // Not a node's subject at all.
        let masters = request("system:node:k8s-a", "system:masters");
        assert!(matches!(
            judged("system:bootstrap:abc123", &masters, &KUBELET, &tokens),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn usages_must_be_the_kubelets() {
        let tokens = [token("abc123", Some("k8s-a"))];
        let pem = request("system:node:k8s-a", "system:nodes");
        for usages in [
            &["digital signature", "client auth", "server auth"][..],
            &["client auth"][..],
            &["digital signature", "client auth", "client auth"][..],
            // Key encipherment is the RSA kubelet's; this key is ECDSA.
            &["digital signature", "key encipherment", "client auth"][..],
        ] {
            let v = judged("system:bootstrap:abc123", &pem, usages, &tokens);
            assert!(
                matches!(
                    v,
                    Verdict::Deny {
                        reason: DENIED_INVALID,
                        ..
                    }
                ),
                "{usages:?}: {v:?}"
            );
        }
    }

    #[test]
    fn what_is_not_nodewires_is_left_alone() {
        let tokens = [token("abc123", Some("k8s-a")), token("zzz999", None)];
        let pem = request("system:node:k8s-a", "system:nodes");
        for user in [
            // An operator's own token, or one nodewire already revoked.
            "system:bootstrap:ffffff",
            // A Node renewing (kube-controller-manager's selfnodeclient decides it).
            "system:node:k8s-a",
            // Not a token id.
            "system:bootstrap:ABC123",
            "system:bootstrap:abc12",
            // A nodewire token without its VM.
            "system:bootstrap:zzz999",
        ] {
            let v = judged(user, &pem, &KUBELET, &tokens);
            assert!(matches!(v, Verdict::Leave(_)), "{user}: {v:?}");
        }
    }
}
