//! The certificate signing request a node VM sends the `join` service (pull mode): what it may
//! hold and nothing more. Pure: no I/O.
//!
//! The VM makes its own key pair and sends only the request, so its private key never leaves
//! it. nodewire signs nothing itself: it checks the request here, then hands it to the cluster
//! as a `certificates.k8s.io/v1` CertificateSigningRequest for the kubelet client signer and
//! approves it, because it proved which VM asks (its identity token). What is checked:
//!
//! - one PEM block `CERTIFICATE REQUEST`, at most [`MAX_PEM_BYTES`], whose signature verifies
//!   with its own public key (proof that the sender holds the key);
//! - the subject is exactly `CN=system:node:<the VM's name>` and `O=system:nodes`, one of each
//!   and no other attribute — the shape csrapproving's kubelet-client recognizer
//!   (pkg/controller/certificates/approver/sarapprove.go) and the Node authorizer expect;
//! - the key is ECDSA P-256 or P-384, or RSA of 2048 to 4096 bits;
//! - no attribute but an extension request, and in it nothing but a key usage (digital
//!   signature, plus key encipherment for RSA) and an extended key usage of client auth only:
//!   no subject alternative names, no CA constraints, nothing unknown.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

/// The largest request accepted (an RSA-4096 request is about 1.7 KiB of PEM).
pub const MAX_PEM_BYTES: usize = 8 * 1024;

/// The organization every kubelet client certificate names.
pub const NODES_GROUP: &str = "system:nodes";

/// The kind of key a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa(usize),
}

impl KeyKind {
    /// The `spec.usages` of the CertificateSigningRequest for this key, as the kubelet asks
    /// (key encipherment only for RSA keys).
    pub fn usages(self) -> &'static [&'static str] {
        match self {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => &["digital signature", "client auth"],
            KeyKind::Rsa(_) => &["digital signature", "key encipherment", "client auth"],
        }
    }
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCsr {
    /// The request as sent (PEM).
    pub pem: String,
    pub key: KeyKind,
}

/// Why a request was refused. The texts say what to send instead; they never echo the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRefusal {
    #[error("the body must be one PEM CERTIFICATE REQUEST of at most {MAX_PEM_BYTES} bytes")]
    NotPem,
    #[error("the certificate request does not parse as PKCS#10")]
    Malformed,
    #[error("the certificate request's signature does not verify with its own key")]
    BadSignature,
    #[error(
        "the subject must be exactly CN=system:node:{expected},O=system:nodes (the VM's own name, \
         nothing else)"
    )]
    Subject { expected: String },
    #[error("the key must be ECDSA P-256 or P-384, or RSA of 2048 to 4096 bits")]
    Key,
    #[error(
        "the request may ask only for key usage digital signature (and key encipherment with \
         RSA) and extended key usage client auth: {0}"
    )]
    Extension(&'static str),
}

/// Checks `pem_text` as the certificate request of VM `node_name`.
///
/// # Errors
/// [`CsrRefusal`] for the first check that fails.
pub fn check(pem_text: &str, node_name: &str) -> Result<NodeCsr, CsrRefusal> {
    if pem_text.len() > MAX_PEM_BYTES {
        return Err(CsrRefusal::NotPem);
    }
    let blocks = ::pem::parse_many(pem_text).map_err(|_| CsrRefusal::NotPem)?;
    let [block] = blocks.as_slice() else {
        return Err(CsrRefusal::NotPem);
    };
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(CsrRefusal::NotPem);
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(block.contents()).map_err(|_| CsrRefusal::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrRefusal::Malformed);
    }
    let key = key_kind(&csr)?;
    csr.verify_signature()
        .map_err(|_| CsrRefusal::BadSignature)?;
    check_subject(&csr, node_name)?;
    check_attributes(&csr, key)?;
    Ok(NodeCsr {
        pem: pem_text.to_string(),
        key,
    })
}

fn key_kind(csr: &X509CertificationRequest<'_>) -> Result<KeyKind, CsrRefusal> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(CsrRefusal::Key)?;
        return if curve == OID_EC_P256 {
            Ok(KeyKind::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyKind::EcdsaP384)
        } else {
            Err(CsrRefusal::Key)
        };
    }
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrRefusal::Key);
        };
        let bits = rsa.key_size();
        return if (2048..=4096).contains(&bits) {
            Ok(KeyKind::Rsa(bits))
        } else {
            Err(CsrRefusal::Key)
        };
    }
    Err(CsrRefusal::Key)
}

fn check_subject(csr: &X509CertificationRequest<'_>, node_name: &str) -> Result<(), CsrRefusal> {
    let refuse = || CsrRefusal::Subject {
        expected: node_name.to_string(),
    };
    let subject = &csr.certification_request_info.subject;
    let attributes: Vec<_> = subject.iter().flat_map(|rdn| rdn.iter()).collect();
    let cn: Vec<_> = subject.iter_common_name().collect();
    let o: Vec<_> = subject.iter_organization().collect();
    if attributes.len() != 2 || cn.len() != 1 || o.len() != 1 {
        return Err(refuse());
    }
    let want_cn = format!("system:node:{node_name}");
    let cn_ok = cn[0].as_str().is_ok_and(|v| v == want_cn);
    let o_ok = o[0].as_str().is_ok_and(|v| v == NODES_GROUP);
    if cn_ok && o_ok { Ok(()) } else { Err(refuse()) }
}

fn check_attributes(csr: &X509CertificationRequest<'_>, key: KeyKind) -> Result<(), CsrRefusal> {
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            return Err(CsrRefusal::Extension(
                "an attribute other than extensionRequest",
            ));
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(ku) => {
                    let rsa = matches!(key, KeyKind::Rsa(_));
                    let allowed = ku.digital_signature() && (rsa || !ku.key_encipherment());
                    let others = ku.flags
                        & !(x509_parser::extensions::KeyUsage { flags: 0b1 | 0b100 }).flags;
                    if !allowed || others != 0 {
                        return Err(CsrRefusal::Extension("a key usage beyond those"));
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    let only_client = eku.client_auth
                        && !eku.any
                        && !eku.server_auth
                        && !eku.code_signing
                        && !eku.email_protection
                        && !eku.time_stamping
                        && !eku.ocsp_signing
                        && eku.other.is_empty();
                    if !only_client {
                        return Err(CsrRefusal::Extension(
                            "an extended key usage other than client auth",
                        ));
                    }
                }
                ParsedExtension::SubjectAlternativeName(_) => {
                    return Err(CsrRefusal::Extension("a subject alternative name"));
                }
                ParsedExtension::BasicConstraints(_) => {
                    return Err(CsrRefusal::Extension("basic constraints"));
                }
                _ => return Err(CsrRefusal::Extension("another extension")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &rcgen::KeyPair, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> String {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:k8s-a");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        edit(&mut p);
        p.serialize_request(key).expect("csr").pem().expect("pem")
    }

    fn p256() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
    }

    #[test]
    fn a_plain_request_for_the_vms_own_name_passes() {
        let key = p256();
        let pem = request(&key, |_| {});
        let ok = check(&pem, "k8s-a").expect("valid");
        assert_eq!(ok.key, KeyKind::EcdsaP256);
        assert_eq!(ok.key.usages(), ["digital signature", "client auth"]);
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        assert_eq!(
            check(&request(&p384, |_| {}), "k8s-a").map(|c| c.key),
            Ok(KeyKind::EcdsaP384)
        );
        // Client-auth extensions as openssl or the kubelet may add them are fine.
        let with_usages = request(&key, |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        assert!(check(&with_usages, "k8s-a").is_ok());
    }

    #[test]
    fn another_name_or_group_or_anything_more_is_refused() {
        let key = p256();
        let for_b = request(&key, |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "system:node:k8s-b");
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "system:nodes");
        });
        assert!(matches!(
            check(&for_b, "k8s-a"),
            Err(CsrRefusal::Subject { .. })
        ));
        let masters = request(&key, |p| {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "system:masters");
        });
        assert!(matches!(
            check(&masters, "k8s-a"),
            Err(CsrRefusal::Subject { .. })
        ));
        let extra_ou = request(&key, |p| {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, "x");
        });
        assert!(check(&extra_ou, "k8s-a").is_err());
        let san = request(&key, |p| {
            p.subject_alt_names = vec![rcgen::SanType::DnsName(
                "k8s-b".try_into().expect("dns name"),
            )];
        });
        assert_eq!(
            check(&san, "k8s-a"),
            Err(CsrRefusal::Extension("a subject alternative name"))
        );
        let server = request(&key, |p| {
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            ];
        });
        assert!(check(&server, "k8s-a").is_err());
        let ca = request(&key, |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        });
        assert!(check(&ca, "k8s-a").is_err());
        let ca = request(&key, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        });
        assert!(check(&ca, "k8s-a").is_err());
    }

    #[test]
    fn not_a_request_or_a_forged_one_is_refused() {
        assert_eq!(check("", "k8s-a"), Err(CsrRefusal::NotPem));
        assert_eq!(check("hello", "k8s-a"), Err(CsrRefusal::NotPem));
        let key = p256();
        let pem = request(&key, |_| {});
        assert_eq!(
            check(&format!("{pem}{pem}"), "k8s-a"),
            Err(CsrRefusal::NotPem),
            "two blocks"
        );
        let cert = ::pem::encode(&::pem::Pem::new("CERTIFICATE", vec![0x30, 0x00]));
        assert_eq!(check(&cert, "k8s-a"), Err(CsrRefusal::NotPem));
        assert_eq!(
            check(&"A".repeat(MAX_PEM_BYTES + 1), "k8s-a"),
            Err(CsrRefusal::NotPem)
        );
        // A request whose signed part was changed after signing.
        let block = ::pem::parse(&pem).expect("pem");
        let mut der = block.contents().to_vec();
        let i = der
            .windows(5)
            .position(|w| w == b"k8s-a")
            .expect("the name is in the DER");
        der[i + 4] = b'b';
        let forged = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(check(&forged, "k8s-b"), Err(CsrRefusal::BadSignature));
        let garbage = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", vec![1, 2, 3]));
        assert_eq!(check(&garbage, "k8s-a"), Err(CsrRefusal::Malformed));
    }

    #[test]
    fn keys_outside_the_allowed_kinds_are_refused() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        assert_eq!(check(&request(&ed, |_| {}), "k8s-a"), Err(CsrRefusal::Key));
    }

    #[test]
    fn refusals_never_echo_the_request() {
        let key = p256();
        let pem = request(&key, |p| {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "secret-looking-value");
        });
        let e = check(&pem, "k8s-a").expect_err("refused");
        assert!(!e.to_string().contains("secret-looking-value"), "{e}");
    }
}
