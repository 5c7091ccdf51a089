//! Secrets: `stringData` folded into `data` as base64, `data` that must be base64, an immutable
//! `type`, and the bootstrap-token format (`bootstrap.kubernetes.io/token`): named
//! `bootstrap-token-<token-id>`, a 16-character `token-secret`, an RFC 3339 `expiration`,
//! boolean usages and `system:bootstrappers:` extra groups.

use base64::Engine as _;
use serde_json::{Value, json};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::objects::str_at;
use super::rbac::Identity;
use super::status::Subject;
use super::{ApiError, Store};

/// `stringData` is written into `data`, base64-encoded, and is not stored itself.
pub(super) fn normalize(obj: &mut Value) {
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        let data = obj
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| json!({})));
        if let Some(Value::Object(d)) = data {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                d.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}

/// A `data` value, decoded.
pub(super) fn secret_value(obj: &Value, key: &str) -> Option<String> {
    let b64 = obj.pointer(&format!("/data/{key}"))?.as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Who a bootstrap token `ID.SECRET` authenticates as: `system:bootstrap:ID` in
/// `system:bootstrappers` and its `auth-extra-groups`, when `bootstrap-token-ID` exists in
/// kube-system with that secret, is not expired and allows authentication
/// (<https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/>).
pub(super) fn bootstrap_identity(st: &Store, id: &str, secret: &str) -> Option<Identity> {
    let obj = st.objects.get(&(
        "secrets".to_string(),
        "kube-system".to_string(),
        format!("bootstrap-token-{id}"),
    ))?;
    if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token")
        || secret_value(obj, "token-id").as_deref() != Some(id)
        || secret_value(obj, "token-secret").as_deref() != Some(secret)
        || secret_value(obj, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    let expired = secret_value(obj, "expiration")
        .and_then(|e| OffsetDateTime::parse(&e, &Rfc3339).ok())
        .is_some_and(|e| e <= OffsetDateTime::now_utc());
    if expired {
        return None;
    }
    let mut groups = vec![
        "system:bootstrappers".to_string(),
        "system:authenticated".to_string(),
    ];
    let extra: Vec<String> = secret_value(obj, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    // An extra group that is not a valid `system:bootstrappers:…` name fails authentication
    // (401), it is not dropped: plugin/pkg/auth/authenticator/token/bootstrap/bootstrap.go
    // returns "not authenticated" when `bootstrapsecretutil.GetGroups` errs, and GetGroups
    // validates each name against `^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$`.
    if !extra.iter().all(|g| bootstrap_group_name_is_valid(g)) {
        return None;
    }
    groups.extend(extra);
    Some(Identity {
        user: format!("system:bootstrap:{id}"),
        groups,
    })
}

/// `^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$` (k8s.io/cluster-bootstrap
/// `token/util.ValidateBootstrapGroupName`).
fn bootstrap_group_name_is_valid(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `old`: the Secret an update replaces.
pub(super) fn validate(
    subject: Subject<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let ty = str_at(obj, "/type");
    if let Some(old) = old
        && str_at(old, "/type") != ty
    {
        return subject.invalid(
            "type",
            "FieldValueInvalid",
            &format!("Invalid value: {ty:?}: field is immutable"),
        );
    }
    for (k, v) in obj
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if v.as_str()
            .is_none_or(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err())
        {
            return subject.invalid(
                &format!("data[{k}]"),
                "FieldValueInvalid",
                "Invalid value: illegal base64 data",
            );
        }
    }
    if ty == "bootstrap.kubernetes.io/token" {
        validate_bootstrap_token(subject, obj)?;
    }
    Ok(())
}

fn validate_bootstrap_token(subject: Subject<'_>, obj: &Value) -> Result<(), ApiError> {
    let name = subject.name;
    let lower_alnum = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let Some(id) = name
        .strip_prefix("bootstrap-token-")
        .filter(|id| lower_alnum(id, 6))
    else {
        return subject.invalid(
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "Invalid value: {name:?}: bootstrap token secrets must be named bootstrap-token-<[a-z0-9]{{6}}>"
            ),
        );
    };
    if secret_value(obj, "token-id").as_deref() != Some(id) {
        return subject.invalid(
            "data[token-id]",
            "FieldValueInvalid",
            "Invalid value: token-id must equal the name's suffix",
        );
    }
    if !secret_value(obj, "token-secret").is_some_and(|s| lower_alnum(&s, 16)) {
        return subject.invalid(
            "data[token-secret]",
            "FieldValueInvalid",
            "Invalid value: token-secret must be 16 characters of [a-z0-9]",
        );
    }
    if let Some(exp) = secret_value(obj, "expiration")
        && time::OffsetDateTime::parse(&exp, &time::format_description::well_known::Rfc3339)
            .is_err()
    {
        return subject.invalid(
            "data[expiration]",
            "FieldValueInvalid",
            &format!("Invalid value: {exp:?}: must be RFC 3339"),
        );
    }
    for usage in ["usage-bootstrap-authentication", "usage-bootstrap-signing"] {
        if let Some(v) = secret_value(obj, usage)
            && v != "true"
            && v != "false"
        {
            return subject.invalid(
                &format!("data[{usage}]"),
                "FieldValueInvalid",
                "Invalid value: must be \"true\" or \"false\"",
            );
        }
    }
    if let Some(groups) = secret_value(obj, "auth-extra-groups")
        && groups
            .split(',')
            .any(|g| !g.trim().starts_with("system:bootstrappers:"))
    {
        return subject.invalid(
            "data[auth-extra-groups]",
            "FieldValueInvalid",
            "Invalid value: groups must start with \"system:bootstrappers:\"",
        );
    }
    Ok(())
}

/// A kubeadm bootstrap-token Secret as nodewire mints them (labelled with the VM and zone it is
/// for), with the test secret `0123456789abcdef`: for seeding drift in tests.
pub fn token_secret(id: &str, vm: &str, zone: &str, expiration: &str) -> Value {
    json!({"metadata": {"name": format!("bootstrap-token-{id}"),
                        "labels": {"nodewire.io/instance": vm, "nodewire.io/zone": zone},
                        "annotations": {"nodewire.io/expiration": expiration}},
           "type": "bootstrap.kubernetes.io/token",
           "stringData": {"token-id": id, "token-secret": "0123456789abcdef", "expiration": expiration,
                          "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                          "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(extra_groups: &str) -> Store {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut st = Store::default();
        st.objects.insert(
            (
                "secrets".into(),
                "kube-system".into(),
                "bootstrap-token-abcdef".into(),
            ),
            json!({"type": "bootstrap.kubernetes.io/token",
                   "data": {"token-id": b("abcdef"), "token-secret": b("0123456789abcdef"),
                            "usage-bootstrap-authentication": b("true"),
                            "expiration": b("2999-01-01T00:00:00Z"),
                            "auth-extra-groups": b(extra_groups)}}),
        );
        st
    }

    /// A bad extra group fails authentication (401), it is not ignored.
    #[test]
    fn an_invalid_extra_group_fails_authentication() {
        let ok = store_with("system:bootstrappers:kubeadm:default-node-token");
        let who = bootstrap_identity(&ok, "abcdef", "0123456789abcdef").expect("authenticates");
        assert!(
            who.groups
                .iter()
                .any(|g| g == "system:bootstrappers:kubeadm:default-node-token")
        );
        for bad in [
            "system:masters",
            "system:bootstrappers:kubeadm:default-node-token,system:masters",
            "system:bootstrappers:",
            "system:bootstrappers:Upper",
            "system:bootstrappers:trailing-",
        ] {
            assert!(
                bootstrap_identity(&store_with(bad), "abcdef", "0123456789abcdef").is_none(),
                "{bad}"
            );
        }
    }
}
