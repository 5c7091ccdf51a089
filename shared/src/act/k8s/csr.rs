//! ACT, Kubernetes side: the pull-mode node credential. A node VM's certificate request, once
//! the `join` service proved which VM sent it, becomes a `certificates.k8s.io/v1`
//! CertificateSigningRequest for the kubelet client signer; nodewire approves it (the cluster
//! signs it: kube-controller-manager's csrsigning) and reads the certificate back.
//!
//! Each CSR carries the VM's name and zone as labels and the instance id and the identity
//! token's digest and issue time as annotations, so every instance of the `join` service can
//! refuse a replayed identity token and count a VM's recent credentials from the cluster alone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::error::{KubeError, fail};
use super::{
    FIELD_MANAGER, IdentityRecord, Kube, TOKEN_IDENTITY_DIGEST_ANNOTATION,
    TOKEN_IDENTITY_IAT_ANNOTATION, TOKEN_INSTANCE_ID_LABEL, TOKEN_INSTANCE_LABEL, TOKEN_ZONE_LABEL,
};
use crate::names::InstanceRef;

/// The signer of kubelet client certificates (kube-controller-manager signs them with the
/// cluster CA).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// The reason nodewire writes on the Approved condition.
pub const APPROVAL_REASON: &str = "NodewireInstanceIdentity";

/// What nodewire reads of one of its CSRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRecord {
    pub name: String,
    pub zone: Option<String>,
    /// The numeric instance id it was made for.
    pub instance_id: Option<String>,
    pub identity: Option<IdentityRecord>,
    /// Seconds since the epoch.
    pub created: Option<i64>,
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrDecision {
    Approve,
    Deny,
}

/// A kubelet-client CSR nobody has decided yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCsr {
    pub name: String,
    /// `spec.username`: who created it, as the API server authenticated them.
    pub username: String,
    /// `spec.request` (PEM text; lossy if it is not UTF-8, which the checks then refuse).
    pub request_pem: String,
    pub usages: Vec<String>,
}

impl Kube {
    fn csrs(&self) -> Api<CertificateSigningRequest> {
        Api::all(self.client.clone())
    }

    /// Creates the CSR for `vm`'s verified request: signer [`KUBELET_CLIENT_SIGNER`], the
    /// given usages, a lifetime of `ttl` (at least the API's 10 minutes), the VM's labels and
    /// the identity token's record. Returns its name.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn create_node_csr(
        &self,
        vm: &InstanceRef,
        instance_id: &str,
        request_pem: &str,
        usages: &[&str],
        ttl: Duration,
        identity: &IdentityRecord,
    ) -> Result<String, KubeError> {
        const CALL: &str = "certificatesigningrequests.create";
        let mut labels = BTreeMap::from([
            (TOKEN_INSTANCE_LABEL.to_string(), vm.name().to_string()),
            (TOKEN_ZONE_LABEL.to_string(), vm.zone().to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                FIELD_MANAGER.to_string(),
            ),
        ]);
        if instance_id.bytes().all(|b| b.is_ascii_digit()) && instance_id.len() <= 20 {
            labels.insert(TOKEN_INSTANCE_ID_LABEL.to_string(), instance_id.to_string());
        }
        let obj = CertificateSigningRequest {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("nodewire-{}-", vm.name())),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (
                        TOKEN_IDENTITY_DIGEST_ANNOTATION.to_string(),
                        identity.digest.clone(),
                    ),
                    (
                        TOKEN_IDENTITY_IAT_ANNOTATION.to_string(),
                        identity.issued_at.to_string(),
                    ),
                ])),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(request_pem.as_bytes().to_vec()),
                signer_name: KUBELET_CLIENT_SIGNER.into(),
                usages: Some(usages.iter().map(|u| (*u).to_string()).collect()),
                expiration_seconds: Some(i32::try_from(ttl.as_secs().max(600)).unwrap_or(i32::MAX)),
                ..Default::default()
            },
            status: None,
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let api = self.csrs();
        let made = self
            .retrying(CALL, || api.create(&pp, &obj))
            .await
            .map_err(|c| fail(CALL, c))?;
        made.metadata.name.ok_or_else(|| KubeError::Invalid {
            call: CALL,
            message: "the created CSR has no name".into(),
        })
    }

    /// Approves CSR `name` through its approval subresource, with `message` saying why.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn approve_csr(&self, name: &str, message: &str) -> Result<(), KubeError> {
        self.decide_csr(name, CsrDecision::Approve, APPROVAL_REASON, message)
            .await
    }

    /// Writes `decision` on CSR `name` through its approval subresource (the one condition
    /// nodewire sets), with `reason` and `message` saying why.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn decide_csr(
        &self,
        name: &str,
        decision: CsrDecision,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        const CALL: &str = "certificatesigningrequests.approval.patch";
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let kind = match decision {
            CsrDecision::Approve => "Approved",
            CsrDecision::Deny => "Denied",
        };
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": kind, "status": "True", "reason": reason,
            "message": message, "lastUpdateTime": now}]}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let api = self.csrs();
        let patch = Patch::Merge(&patch);
        self.retrying(CALL, || api.patch_approval(name, &pp, &patch))
            .await
            .map(|_| ())
            .map_err(|c| fail(CALL, c))
    }

    /// Waits up to `within` for the signer to issue CSR `name`'s certificate (PEM), reading it
    /// every `every`. `Ok(None)` when it is still unsigned; an error when it was denied or
    /// the signer failed it.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn wait_for_certificate(
        &self,
        name: &str,
        within: Duration,
        every: Duration,
    ) -> Result<Option<String>, KubeError> {
        const CALL: &str = "certificatesigningrequests.get";
        let api = self.csrs();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let csr = self
                .retrying(CALL, || api.get(name))
                .await
                .map_err(|c| fail(CALL, c))?;
            let status = csr.status.unwrap_or_default();
            if let Some(bad) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            {
                return Err(KubeError::Refused {
                    call: CALL,
                    code: 200,
                    reason: bad.type_.clone(),
                    message: bad.reason.clone().unwrap_or_default(),
                });
            }
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                return String::from_utf8(cert.0)
                    .map(Some)
                    .map_err(|_| KubeError::Invalid {
                        call: CALL,
                        message: "the issued certificate is not PEM text".into(),
                    });
            }
            if tokio::time::Instant::now() + every > deadline {
                return Ok(None);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// CSR `name`'s request (PEM) and whether it carries an Approved condition; `None` when it
    /// is gone.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn node_csr(&self, name: &str) -> Result<Option<(String, bool)>, KubeError> {
        const CALL: &str = "certificatesigningrequests.get";
        let api = self.csrs();
        let got = self
            .retrying(CALL, || api.get_opt(name))
            .await
            .map_err(|c| fail(CALL, c))?;
        Ok(got.map(|c| {
            let approved = c
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|x| x.type_ == "Approved" && x.status == "True");
            (
                String::from_utf8_lossy(&c.spec.request.0).into_owned(),
                approved,
            )
        }))
    }

    /// The kubelet-client CSRs (signer [`KUBELET_CLIENT_SIGNER`], a field selector the API
    /// server supports for CSRs) with neither an Approved, a Denied nor a Failed condition,
    /// made by a bootstrap token (`spec.username` `system:bootstrap:…`).
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn pending_bootstrap_csrs(&self) -> Result<Vec<PendingCsr>, KubeError> {
        const CALL: &str = "certificatesigningrequests.list";
        let lp = ListParams::default()
            .fields(&format!("spec.signerName={KUBELET_CLIENT_SIGNER}"))
            .limit(500);
        let api = self.csrs();
        let mut out = Vec::new();
        let mut lp = lp;
        // Pages of 500; a cluster has at most a few hundred pending at once, but the list
        // continues until the API server says it is complete.
        for _ in 0..100 {
            let list = self
                .retrying(CALL, || api.list(&lp))
                .await
                .map_err(|c| fail(CALL, c))?;
            for c in list.items {
                let decided = c
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|x| {
                        matches!(x.type_.as_str(), "Approved" | "Denied" | "Failed")
                            && x.status == "True"
                    });
                let username = c.spec.username.clone().unwrap_or_default();
                if decided
                    || c.spec.signer_name != KUBELET_CLIENT_SIGNER
                    || !username.starts_with("system:bootstrap:")
                {
                    continue;
                }
                out.push(PendingCsr {
                    name: c.metadata.name.clone().unwrap_or_default(),
                    username,
                    request_pem: String::from_utf8_lossy(&c.spec.request.0).into_owned(),
                    usages: c.spec.usages.clone().unwrap_or_default(),
                });
            }
            match list.metadata.continue_.filter(|t| !t.is_empty()) {
                Some(t) => lp = lp.continue_token(&t),
                None => return Ok(out),
            }
        }
        Err(KubeError::Invalid {
            call: CALL,
            message: "the CSR list did not end after 100 pages".into(),
        })
    }

    /// nodewire's CSRs for the VM named `instance_name` (metadata only).
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_node_csrs(&self, instance_name: &str) -> Result<Vec<CsrRecord>, KubeError> {
        const CALL: &str = "certificatesigningrequests.list";
        let lp = ListParams::default()
            .labels(&format!("{TOKEN_INSTANCE_LABEL}={instance_name}"))
            .limit(500);
        let api = self.csrs();
        let list = self
            .retrying(CALL, || api.list_metadata(&lp))
            .await
            .map_err(|c| fail(CALL, c))?;
        Ok(list
            .items
            .into_iter()
            .map(|m| {
                let meta = m.metadata;
                let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
                let annotation =
                    |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
                CsrRecord {
                    name: meta.name.clone().unwrap_or_default(),
                    zone: label(TOKEN_ZONE_LABEL),
                    instance_id: label(TOKEN_INSTANCE_ID_LABEL),
                    identity: match (
                        annotation(TOKEN_IDENTITY_DIGEST_ANNOTATION),
                        annotation(TOKEN_IDENTITY_IAT_ANNOTATION).and_then(|v| v.parse().ok()),
                    ) {
                        (Some(digest), Some(issued_at)) => {
                            Some(IdentityRecord { digest, issued_at })
                        }
                        _ => None,
                    },
                    created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
                }
            })
            .collect())
    }
}
