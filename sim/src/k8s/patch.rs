//! Patch application as the API server does it: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch with the list strategies of the served kinds.

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

/// How a list merges in a strategic merge patch: the `patchStrategy` / `patchMergeKey` tags of
/// the k8s.io/api Go types. A list without a strategy is replaced whole — `spec.taints` is one
/// (`NodeSpec.Taints` has no patch strategy), so `kubectl taint … key-` sends the full new list
/// and the server takes it as it is.
enum ListMerge {
    Replace,
    /// A list of scalars merged as a set (`patchStrategy:"merge"` on `[]string`).
    Primitive,
    /// Elements matched by this field (`patchStrategy:"merge" patchMergeKey:"…"`).
    ByKey(&'static str),
}

fn list_strategy(path: &[&str]) -> ListMerge {
    match path {
        ["metadata", "finalizers"] | ["spec", "podCIDRs"] => ListMerge::Primitive,
        ["metadata", "ownerReferences"] => ListMerge::ByKey("uid"),
        ["status", "conditions" | "addresses"] => ListMerge::ByKey("type"),
        ["status", "volumesAttached"] => ListMerge::ByKey("name"),
        _ => ListMerge::Replace,
    }
}

/// Why a strategic merge patch did not apply (the API answers 400 or 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategicPatchError(pub String);

/// Strategic merge patch (<https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md>)
/// for the objects served: maps merge, `null` deletes, lists follow the schema's patch strategies (`list_strategy`);
/// `$patch: replace|delete` on maps and keyed elements, `$deleteFromPrimitiveList/<field>` and
/// the ordering hint `$setElementOrder/<field>` (accepted, order not enforced) are honoured.
///
/// # Errors
/// An unknown `$patch` directive, or a keyed element without its key.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), StrategicPatchError> {
    let mut out = target.clone();
    smp_value(&mut out, patch, &mut Vec::new())?;
    *target = out;
    Ok(())
}

fn smp_value<'a>(
    target: &mut Value,
    patch: &'a Value,
    path: &mut Vec<&'a str>,
) -> Result<(), StrategicPatchError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        None => {}
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => {
            return Err(StrategicPatchError(format!(
                "unknown patch type: {other:?}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(l)) = t.get_mut(field) {
                l.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.as_str());
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        match v {
            Value::Array(items) => smp_list(slot, items, path)?,
            _ => {
                smp_value(slot, v, path)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
        }
        path.pop();
    }
    Ok(())
}

fn smp_list<'a>(
    slot: &mut Value,
    items: &'a [Value],
    path: &mut Vec<&'a str>,
) -> Result<(), StrategicPatchError> {
    let replace_all = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    let strategy = if replace_all {
        ListMerge::Replace
    } else {
        list_strategy(path)
    };
    let current = slot.as_array().cloned().unwrap_or_default();
    let merged = match strategy {
        ListMerge::Replace => items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect(),
        ListMerge::Primitive => {
            let mut l = current;
            for i in items {
                if !l.contains(i) {
                    l.push(i.clone());
                }
            }
            l
        }
        ListMerge::ByKey(key) => {
            let mut l = current;
            for i in items {
                let Some(id) = i.get(key) else {
                    return Err(StrategicPatchError(format!(
                        "map: {i} does not contain declared merge key: {key}"
                    )));
                };
                let at = l.iter().position(|x| x.get(key) == Some(id));
                let delete = i.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(n), true) => {
                        l.remove(n);
                    }
                    (None, true) => {}
                    (Some(n), false) => smp_value(&mut l[n], i, path)?,
                    (None, false) => l.push(i.clone()),
                }
            }
            l
        }
    };
    *slot = Value::Array(merged);
    Ok(())
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

    /// `NodeSpec.Taints` has no patch strategy: the patch's list replaces the Node's (what
    /// `kubectl taint` relies on to remove one), while `status.conditions` merge by `type`.
    #[test]
    fn strategic_lists_follow_the_schema() {
        let mut v = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]}});
        strategic_merge_patch(
            &mut v,
            &json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "$patch": "delete"}]}}),
        )
        .expect("applies");
        assert_eq!(
            v,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        );
        strategic_merge_patch(
            &mut v,
            &json!({"spec": {"podCIDRs": ["10.0.0.0/24"], "taints": null}}),
        )
        .expect("applies");
        assert_eq!(v["spec"], json!({"podCIDRs": ["10.0.0.0/24"]}));
        assert!(
            strategic_merge_patch(
                &mut v,
                &json!({"status": {"conditions": [{"status": "True"}]}})
            )
            .is_err(),
            "a keyed element without its key"
        );
        assert!(strategic_merge_patch(&mut v, &json!({"spec": {"$patch": "sideways"}})).is_err());
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
