//! ACT, Kubernetes side: kubeadm bootstrap tokens (Secrets of type
//! `bootstrap.kubernetes.io/token` in `kube-system`), minted from a CSPRNG, listed by the VM
//! they were minted for, revoked. The secret half never reaches Debug output or logs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, PostParams};
use rand::Rng as _;

use super::error::{Class, KubeError, fail};
use super::{
    FIELD_MANAGER, Kube, TOKEN_EXPIRATION_ANNOTATION, TOKEN_INSTANCE_ID_LABEL,
    TOKEN_INSTANCE_LABEL, TOKEN_ZONE_LABEL, WriteOutcome,
};
use crate::act::toolkit::Listed;
use crate::names::InstanceRef;

/// A bootstrap token's secret part. Never printed: `Debug` is redacted and there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

/// A freshly minted bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part (`[a-z0-9]{6}`), also the Secret's name suffix.
    pub id: String,
    secret: TokenSecret,
    /// RFC 3339.
    pub expiration: String,
}

impl BootstrapToken {
    /// `id.secret`, for the JoinConfiguration. The caller must not log it.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret.0)
    }
}

/// A bootstrap-token Secret as listed (no secret part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token id (the Secret is `bootstrap-token-ID`).
    pub id: String,
    /// The VM it was minted for (label `nodewire.io/instance`).
    pub instance: Option<String>,
    /// That VM's zone (label `nodewire.io/zone`).
    pub zone: Option<String>,
    /// That VM's numeric id (label `nodewire.io/instance-id`), when it was known at minting.
    pub instance_id: Option<String>,
    /// RFC 3339, as kubeadm writes it.
    pub expiration: Option<String>,
    /// Minted by the `join` service: the identity token it was minted for.
    pub identity: Option<IdentityRecord>,
}

/// Which instance identity token a bootstrap token was minted for: its SHA-256 (hex) and its
/// `iat`. Not a secret: the digest cannot be turned back into the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub digest: String,
    pub issued_at: i64,
}

/// Annotation: [`IdentityRecord::digest`].
pub const TOKEN_IDENTITY_DIGEST_ANNOTATION: &str = "nodewire.io/identity-sha256";
/// Annotation: [`IdentityRecord::issued_at`].
pub const TOKEN_IDENTITY_IAT_ANNOTATION: &str = "nodewire.io/identity-iat";

impl TokenInfo {
    /// The public facts of a bootstrap-token Secret from its metadata alone: id (its name),
    /// VM, zone, instance id (labels), expiration (annotation; a token without one counts as
    /// expired). `None` for other Secrets.
    fn from_metadata(s: &kube::core::PartialObjectMeta<Secret>) -> Option<Self> {
        let label = |k: &str| s.metadata.labels.as_ref().and_then(|l| l.get(k).cloned());
        let annotation = |k: &str| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k).cloned())
        };
        let id = s
            .metadata
            .name
            .as_deref()?
            .strip_prefix("bootstrap-token-")?;
        Some(TokenInfo {
            id: id.to_string(),
            instance: label(TOKEN_INSTANCE_LABEL),
            zone: label(TOKEN_ZONE_LABEL),
            instance_id: label(TOKEN_INSTANCE_ID_LABEL),
            expiration: annotation(TOKEN_EXPIRATION_ANNOTATION),
            identity: match (
                annotation(TOKEN_IDENTITY_DIGEST_ANNOTATION),
                annotation(TOKEN_IDENTITY_IAT_ANNOTATION).and_then(|v| v.parse().ok()),
            ) {
                (Some(digest), Some(issued_at)) => Some(IdentityRecord { digest, issued_at }),
                _ => None,
            },
        })
    }
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(n: usize) -> String {
    // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the operating system).
    let mut rng = rand::rng();
    (0..n)
        .map(|_| LOWER_ALNUM[rng.random_range(0..LOWER_ALNUM.len())] as char)
        .collect()
}

impl Kube {
    /// Mints a bootstrap token for one VM: a `bootstrap-token-<id>` Secret in `kube-system`
    /// with a fresh id and secret from a CSPRNG, an expiration `ttl` from now, the
    /// authentication and signing usages, `auth-extra-groups`, a description naming the
    /// instance id, and the label [`TOKEN_INSTANCE_LABEL`].
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn create_bootstrap_token(
        &self,
        instance: &InstanceRef,
        instance_id: Option<&str>,
        ttl: Duration,
        extra_groups: &str,
    ) -> Result<BootstrapToken, KubeError> {
        self.mint(instance, instance_id, ttl, extra_groups).await
    }

    async fn mint(
        &self,
        instance: &InstanceRef,
        instance_id: Option<&str>,
        ttl: Duration,
        extra_groups: &str,
    ) -> Result<BootstrapToken, KubeError> {
        const CALL: &str = "secrets.create";
        let expiration = (time::OffsetDateTime::now_utc() + ttl)
            .replace_nanosecond(0)
            .map_err(|e| KubeError::Setup(crate::error::Cause::new(e)))?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| KubeError::Setup(crate::error::Cause::new(e)))?;
        for _ in 0..5 {
            let id = random_string(6);
            let secret = random_string(16);
            let data = BTreeMap::from([
                ("token-id".to_string(), id.clone()),
                ("token-secret".to_string(), secret.clone()),
                ("expiration".to_string(), expiration.clone()),
                (
                    "usage-bootstrap-authentication".to_string(),
                    "true".to_string(),
                ),
                ("usage-bootstrap-signing".to_string(), "true".to_string()),
                ("auth-extra-groups".to_string(), extra_groups.to_string()),
                (
                    "description".to_string(),
                    format!(
                        "nodewire join token for {} (instance {})",
                        instance.name(),
                        instance_id.unwrap_or("unknown")
                    ),
                ),
            ]);
            let obj = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("bootstrap-token-{id}")),
                    namespace: Some("kube-system".into()),
                    labels: Some(
                        BTreeMap::from([
                            (
                                TOKEN_INSTANCE_LABEL.to_string(),
                                instance.name().to_string(),
                            ),
                            (TOKEN_ZONE_LABEL.to_string(), instance.zone().to_string()),
                            (
                                "app.kubernetes.io/managed-by".to_string(),
                                FIELD_MANAGER.to_string(),
                            ),
                        ])
                        .into_iter()
                        .chain(
                            instance_id
                                .filter(|i| i.bytes().all(|b| b.is_ascii_digit()) && i.len() <= 20)
                                .map(|i| (TOKEN_INSTANCE_ID_LABEL.to_string(), i.to_string())),
                        )
                        .collect(),
                    ),
                    annotations: Some(BTreeMap::from([(
                        TOKEN_EXPIRATION_ANNOTATION.to_string(),
                        expiration.clone(),
                    )])),
                    ..Default::default()
                },
                type_: Some("bootstrap.kubernetes.io/token".into()),
                string_data: Some(data),
                ..Default::default()
            };
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match self.retrying(CALL, || self.secrets.create(&pp, &obj)).await {
                Ok(_) => {
                    return Ok(BootstrapToken {
                        id,
                        secret: TokenSecret(secret),
                        expiration,
                    });
                }
                Err(Class::Fail(KubeError::Refused { code: 409, .. })) => continue, // id collision
                Err(c) => return Err(fail(CALL, c)),
            }
        }
        Err(KubeError::Transient {
            call: CALL,
            attempts: 5,
            message: "token id collided five times".into(),
        })
    }

    /// nodewire's bootstrap tokens, optionally only those of one VM.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_bootstrap_tokens(
        &self,
        instance_name: Option<&str>,
    ) -> Result<Listed<TokenInfo>, KubeError> {
        let selector = match instance_name {
            Some(n) => format!("{TOKEN_INSTANCE_LABEL}={n}"),
            None => TOKEN_INSTANCE_LABEL.to_string(),
        };
        // Metadata only: no token secret (nor any other Secret's data) is ever read back.
        let lp = ListParams::default().labels(&selector).limit(500);
        self.list_all_metadata("secrets.list", &self.secrets, lp, TokenInfo::from_metadata)
            .await
    }

    /// Deletes a bootstrap token; `Unchanged` when it was already gone.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn delete_bootstrap_token(&self, id: &str) -> Result<WriteOutcome, KubeError> {
        const CALL: &str = "secrets.delete";
        let name = format!("bootstrap-token-{id}");
        let dp = DeleteParams::default();
        match self
            .retrying(CALL, || self.secrets.delete(&name, &dp))
            .await
        {
            Ok(_) => Ok(WriteOutcome::Changed),
            Err(Class::Fail(KubeError::NotFound { .. })) => Ok(WriteOutcome::Unchanged),
            Err(c) => Err(fail(CALL, c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_well_formed_and_redacted() {
        let id = random_string(6);
        assert!(id.len() == 6 && id.bytes().all(|b| LOWER_ALNUM.contains(&b)));
        let t = BootstrapToken {
            id: "abcdef".into(),
            secret: TokenSecret("0123456789abcdef".into()),
            expiration: "2030-01-01T00:00:00Z".into(),
        };
        assert_eq!(t.expose(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}
