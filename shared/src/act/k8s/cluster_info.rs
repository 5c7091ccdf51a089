//! OBSERVE, Kubernetes side: what a joining node needs to trust the API server — the
//! `cluster-info` ConfigMap's server and CA, and the CA's public-key pin
//! (`sha256:` of the SubjectPublicKeyInfo, as `kubeadm join --discovery-token-ca-cert-hash`
//! takes it), computed by a small DER walker.

use base64::Engine as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use sha2::Digest as _;

use super::Kube;
use super::error::{Class, KubeError, fail};

/// What a joining node needs to trust the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server endpoint as published (`https://HOST:PORT`).
    pub server: String,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo (kubeadm's discovery-token-ca-cert-hash).
    pub ca_pin: String,
    /// The CA certificate(s) as published (PEM), for a discovery kubeconfig.
    pub ca_pem: String,
}

/// Parses the kubeconfig published in `cluster-info` and computes the CA pin.
///
/// # Errors
/// [`KubeError::ClusterInfo`] when it has no cluster, server or usable CA.
pub fn cluster_info_from_kubeconfig(text: &str) -> Result<ClusterInfo, KubeError> {
    let kc = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| KubeError::ClusterInfo(format!("data.kubeconfig: {e}")))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| KubeError::ClusterInfo("data.kubeconfig has no cluster".into()))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| KubeError::ClusterInfo("the cluster has no server".into()))?;
    let ca_b64 = cluster.certificate_authority_data.clone().ok_or_else(|| {
        KubeError::ClusterInfo("the cluster has no certificate-authority-data".into())
    })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .map_err(|e| KubeError::ClusterInfo(format!("certificate-authority-data: {e}")))?;
    let pem =
        String::from_utf8(pem).map_err(|_| KubeError::ClusterInfo("CA is not PEM text".into()))?;
    Ok(ClusterInfo {
        server,
        ca_pin: ca_pin(&pem).map_err(KubeError::ClusterInfo)?,
        ca_pem: pem,
    })
}

/// kubeadm's `discovery-token-ca-cert-hash`: `sha256:` + hex SHA-256 of the first certificate's
/// DER-encoded SubjectPublicKeyInfo.
///
/// # Errors
/// A message when the PEM holds no parseable certificate.
pub fn ca_pin(pem_text: &str) -> Result<String, String> {
    let block = ::pem::parse_many(pem_text)
        .map_err(|e| format!("CA PEM: {e}"))?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or("CA PEM has no CERTIFICATE block")?;
    let spki = spki_der(block.contents()).ok_or("the CA certificate is not valid DER")?;
    let digest = sha2::Sha256::digest(spki);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// One DER element: tag, the whole element, its content, and what follows it.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Splits the first DER element off `input`.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..], &input[end..]))
}

/// The SubjectPublicKeyInfo element of an X.509 certificate (RFC 5280 §4.1):
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
fn spki_der(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert_body, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, _, tbs, _) = tlv(cert_body)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, subject
    for expected in [0x02u8, 0x30, 0x30, 0x30, 0x30] {
        let (tag, _, _, after) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (0x30, spki, _, _) = tlv(rest)? else {
        return None;
    };
    Some(spki)
}

impl Kube {
    /// Reads `kube-public/cluster-info` and computes the CA pin.
    ///
    /// # Errors
    /// [`KubeError::ClusterInfo`] when it is missing or malformed.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, KubeError> {
        const CALL: &str = "configmaps.get";
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), "kube-public");
        let cm = match self.retrying(CALL, || cms.get("cluster-info")).await {
            Ok(cm) => cm,
            Err(Class::Fail(KubeError::NotFound { .. })) => {
                return Err(KubeError::ClusterInfo(
                    "kube-public/cluster-info does not exist".into(),
                ));
            }
            Err(c) => return Err(fail(CALL, c)),
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("kubeconfig"))
            .ok_or_else(|| KubeError::ClusterInfo("no data.kubeconfig".into()))?;
        cluster_info_from_kubeconfig(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::fixture_text as fixture;

    #[test]
    fn ca_pin_matches_openssl_for_rsa_and_ec() {
        for (crt, pin) in [
            ("test-ca.crt", "test-ca.pin"),
            ("test-ca-ec.crt", "test-ca-ec.pin"),
        ] {
            let expected = format!("sha256:{}", fixture(pin).trim());
            assert_eq!(ca_pin(&fixture(crt)).expect("pin"), expected, "{crt}");
        }
        assert!(ca_pin("not pem").is_err());
        assert!(ca_pin("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn cluster_info_kubeconfig() {
        let ca = base64::engine::general_purpose::STANDARD.encode(fixture("test-ca.crt"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.128.0.2:6443\n    certificate-authority-data: {ca}\ncontexts: []\nusers: []\n"
        );
        let ci = cluster_info_from_kubeconfig(&text).expect("parses");
        assert_eq!(ci.server, "https://10.128.0.2:6443");
        assert_eq!(
            ci.ca_pin,
            format!("sha256:{}", fixture("test-ca.pin").trim())
        );
        assert!(
            cluster_info_from_kubeconfig("apiVersion: v1\nkind: Config\nclusters: []\n").is_err()
        );
    }
}
