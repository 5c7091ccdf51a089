//! Patch application as the API server does it: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and the strategic merge patch subset nodewire's objects need.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch for the fields nodewire touches: like a merge patch, except that
/// `spec.taints` merges by `key` (with `$patch: delete` elements removing), as the Node schema
/// declares for taints.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    let taints_patch = patch
        .get_mut("spec")
        .and_then(|s| s.as_object_mut())
        .and_then(|s| s.remove("taints"));
    merge_patch(target, &patch);
    if let Some(Value::Array(items)) = taints_patch {
        let current = target
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut merged = current;
        for item in items {
            let key = item.get("key").cloned();
            let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
            merged.retain(|t| t.get("key") != key.as_ref());
            if !delete {
                merged.push(item);
            }
        }
        if let Some(spec) = target.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("taints".into(), Value::Array(merged));
        }
    } else if let Some(Value::Null) = taints_patch
        && let Some(spec) = target.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.remove("taints");
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("missing path segment {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| format!("invalid array index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("array index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {t:?}")),
        };
    }
    Ok(cur)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    doc.pointer(path)
        .ok_or_else(|| format!("path {path:?} does not exist"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = split(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i > a.len() {
                return Err(format!("array index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add at {path:?}")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = split(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("array index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove {path:?}")),
    }
}

/// Why a JSON patch did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonPatchError {
    /// A `test` operation failed (the API answers 422).
    TestFailed(String),
    /// The patch is malformed or a path does not exist.
    Invalid(String),
}

/// RFC 6902, applied atomically (on a copy).
///
/// # Errors
/// [`JsonPatchError`] naming the failing operation.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), JsonPatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| JsonPatchError::Invalid("a JSON patch must be an array".into()))?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let inv =
            |e: String| JsonPatchError::Invalid(format!("operation {i} ({name} {path}): {e}"));
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| inv("missing value".into()))
        };
        match name {
            "add" => add(&mut doc, path, value()?).map_err(inv)?,
            "remove" => {
                remove(&mut doc, path).map_err(inv)?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(inv)?;
                add(&mut doc, path, value()?).map_err(inv)?;
            }
            "test" => {
                let want = value()?;
                let got = get(&doc, path).map_err(|e| JsonPatchError::TestFailed(e.clone()))?;
                if *got != want {
                    return Err(JsonPatchError::TestFailed(format!(
                        "testing value {path} failed"
                    )));
                }
            }
            "move" | "copy" => {
                let from = op.get("from").and_then(Value::as_str).unwrap_or_default();
                let v = if name == "move" {
                    remove(&mut doc, from).map_err(inv)?
                } else {
                    get(&doc, from).map_err(inv)?.clone()
                };
                add(&mut doc, path, v).map_err(inv)?;
            }
            other => return Err(inv(format!("unknown operation {other:?}"))),
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(
            &mut v,
            &json!({"b": {"c": null, "e": 4}, "l": [3], "z": "x"}),
        );
        assert_eq!(
            v,
            json!({"a": 1, "b": {"d": 3, "e": 4}, "l": [3], "z": "x"})
        );
    }

    #[test]
    fn strategic_taints_by_key() {
        let mut v = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]}});
        strategic_merge_patch(
            &mut v,
            &json!({"spec": {"taints": [{"key": "c", "effect": "NoExecute"}, {"key": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(
            v,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}, {"key": "c", "effect": "NoExecute"}]}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut v =
            json!({"metadata": {"resourceVersion": "5"}, "spec": {"taints": [{"key": "a"}]}});
        json_patch(
            &mut v,
            &json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                {"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                {"op": "remove", "path": "/spec/taints/0"},
                {"op": "add", "path": "/spec/providerID", "value": "gce://p/z/n"},
            ]),
        )
        .expect("applies");
        assert_eq!(v["spec"]["taints"], json!([{"key": "b"}]));
        let before = v.clone();
        let err = json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/spec/x", "value": 1},
                {"op": "test", "path": "/metadata/resourceVersion", "value": "4"},
            ]),
        )
        .expect_err("test fails");
        assert!(matches!(err, JsonPatchError::TestFailed(_)));
        assert_eq!(v, before, "atomic: nothing applied");
        assert!(matches!(
            json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])),
            Err(JsonPatchError::Invalid(_))
        ));
    }
}
