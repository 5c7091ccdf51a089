//! The node side of credentials, as kubeadm and the kubelet do it (paths in
//! kubernetes/kubernetes):
//!
//! - **The kubelet's TLS bootstrap** (`pkg/kubelet/certificate/bootstrap/bootstrap.go`): with
//!   its bootstrap credential (a bootstrap token, or the client certificate of a discovery
//!   kubeconfig) the kubelet makes a **new ECDSA P-256 key of its own**
//!   (`client-go/util/keyutil`), posts a CSR for `CN=system:node:NAME, O=system:nodes`, signer
//!   `kubernetes.io/kube-apiserver-client-kubelet`, usages digital signature and client auth,
//!   and waits for the certificate; the bootstrap credential's key is never reused. Approval is
//!   the cluster's business (csrapproving, or whoever may approve that signer).
//! - **A client-certificate connection** ([`ApiClient::with_certificate`]): HTTPS to the
//!   simulator's TLS front, presenting the certificate and proving the key in the handshake;
//!   the API server's x509 authenticator makes the CN the user and the O values the groups.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The kubelet client signer.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Where client certificates authenticate: the simulator's HTTPS front and the certificate it
/// serves (what a node's TLS client trusts for it).
#[derive(Debug, Clone)]
pub struct K8sTls {
    pub endpoint: String,
    pub server_ca_pem: String,
}

/// A client of the simulated API server with one credential.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Bearer-token requests over HTTPS to `tls`.
    ///
    /// # Errors
    /// When the server CA cannot be used.
    pub fn bearer(tls: &K8sTls, token: &str) -> Result<Self, String> {
        Self::over_tls(tls, None, Some(token.to_string()))
    }

    /// HTTPS to `tls` presenting `cert_pem` with `key_pem` (PKCS#8).
    ///
    /// # Errors
    /// When the certificate, key or server CA cannot be used.
    pub fn with_certificate(tls: &K8sTls, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let identity = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())
            .map_err(|e| format!("the client certificate or key is unusable: {e}"))?;
        Self::over_tls(tls, Some(identity), None)
    }

    fn over_tls(
        tls: &K8sTls,
        identity: Option<reqwest::Identity>,
        bearer: Option<String>,
    ) -> Result<Self, String> {
        let ca = reqwest::Certificate::from_pem(tls.server_ca_pem.as_bytes())
            .map_err(|e| format!("the server CA is unusable: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(10));
        if let Some(i) = identity {
            builder = builder.identity(i);
        }
        let http = builder
            .build()
            .map_err(|e| format!("the TLS client: {e}"))?;
        Ok(Self {
            http,
            base: tls.endpoint.clone(),
            bearer,
        })
    }

    /// A request to `path` (starting with `/`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.bearer {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// A key pair and a certificate request for `CN=system:node:NAME, O=system:nodes`, as the
/// kubelet (and nodewire's node startup script) make them: ECDSA P-256.
///
/// # Errors
/// When the key or the request cannot be made.
pub fn node_key_and_request(node: &str) -> Result<(rcgen::KeyPair, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("key: {e}"))?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = p
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("certificate request: {e}"))?;
    Ok((key, pem))
}

/// Where a kubelet's TLS bootstrap ended.
#[derive(Debug)]
pub enum Bootstrap {
    /// The signed certificate, with the kubelet's own key: its credential from now on.
    Issued(ApiClient),
    /// Not approved or not signed within the wait (the kubelet keeps waiting; kubeadm's
    /// TLS-bootstrap timeout ends the join).
    Pending(String),
    /// The API refused the request, or the CSR was denied or failed.
    Refused(String),
}

/// The kubelet's TLS bootstrap with credential `bootstrap` for Node `node`: a new key, a CSR,
/// and the wait for its certificate (reading it every `poll`, at most `wait`).
pub async fn tls_bootstrap(
    bootstrap: &ApiClient,
    tls: &K8sTls,
    node: &str,
    wait: Duration,
    poll: Duration,
) -> Bootstrap {
    let (key, pem) = match node_key_and_request(node) {
        Ok(k) => k,
        Err(e) => return Bootstrap::Refused(e),
    };
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
            "signerName": KUBELET_CLIENT_SIGNER,
            "usages": ["digital signature", "client auth"],
        },
    });
    let collection = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let started = Instant::now();
    // The kubelet retries a request the API server could not take (429, 5xx, no answer) until
    // its bootstrap gives up; anything else is an answer.
    let created = loop {
        let why = match bootstrap
            .request(reqwest::Method::POST, collection)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                format!("posting the CSR: HTTP {}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let created: Value = r.json().await.unwrap_or_default();
                if status.as_u16() != 201 {
                    let why = created["message"].as_str().unwrap_or_default();
                    return Bootstrap::Refused(format!(
                        "the CSR was refused: HTTP {status}: {why}"
                    ));
                }
                break created;
            }
            Err(e) => format!("posting the CSR: {e}"),
        };
        if started.elapsed() >= wait {
            return Bootstrap::Pending(why);
        }
        tokio::time::sleep(poll).await;
    };
    let name = created["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    loop {
        let got: Value = match bootstrap
            .request(reqwest::Method::GET, &format!("{collection}/{name}"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => Value::Null,
        };
        let conditions = got
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(c) = conditions
            .iter()
            .find(|c| c["type"] == "Denied" || c["type"] == "Failed")
        {
            return Bootstrap::Refused(format!(
                "certificate request {name} was {}: {}",
                c["type"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default()
            ));
        }
        let cert = got
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if let Some(cert) = cert.filter(|c| !c.is_empty()) {
            return match ApiClient::with_certificate(tls, &cert, &key.serialize_pem()) {
                Ok(c) => Bootstrap::Issued(c),
                Err(e) => Bootstrap::Refused(e),
            };
        }
        if started.elapsed() >= wait {
            let approved = conditions.iter().any(|c| c["type"] == "Approved");
            return Bootstrap::Pending(format!(
                "certificate request {name} is {} after {:?}",
                if approved {
                    "approved but not signed"
                } else {
                    "not approved"
                },
                wait
            ));
        }
        tokio::time::sleep(poll).await;
    }
}
