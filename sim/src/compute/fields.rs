//! Partial responses: the standard `fields` query parameter of Google APIs
//! (<https://cloud.google.com/compute/docs/api/how-tos/performance#partial-response>): a
//! comma-separated list of field paths, `/` into a nested field, `(…)` for sub-selections of
//! an object or of every element of an array, `*` for every key of a map. An unknown field is
//! simply absent from the answer; a malformed selection is a 400.

use serde_json::{Map, Value};

/// One selection: a path, and an optional sub-selection at its end.
#[derive(Debug, Clone, PartialEq)]
struct Selection {
    path: Vec<String>,
    sub: Option<Vec<Selection>>,
}

/// Parses a `fields` value.
///
/// # Errors
/// Why the selection is malformed.
fn parse(text: &str) -> Result<Vec<Selection>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let list = parse_list(&chars, &mut at, 0)?;
    if at != chars.len() {
        return Err(format!("unexpected '{}' at {at}", chars[at]));
    }
    Ok(list)
}

fn parse_list(c: &[char], at: &mut usize, depth: usize) -> Result<Vec<Selection>, String> {
    if depth > 16 {
        return Err("nested too deeply".into());
    }
    let mut out = vec![parse_selection(c, at, depth)?];
    while *at < c.len() && c[*at] == ',' {
        *at += 1;
        out.push(parse_selection(c, at, depth)?);
    }
    Ok(out)
}

fn parse_selection(c: &[char], at: &mut usize, depth: usize) -> Result<Selection, String> {
    let mut path = Vec::new();
    loop {
        let start = *at;
        while *at < c.len() && (c[*at].is_ascii_alphanumeric() || c[*at] == '_' || c[*at] == '*') {
            *at += 1;
        }
        let name: String = c[start..*at].iter().collect();
        if name.is_empty() || (name.contains('*') && name != "*") {
            return Err(format!("expected a field name at {start}"));
        }
        path.push(name);
        if *at < c.len() && c[*at] == '/' {
            *at += 1;
            continue;
        }
        break;
    }
    let sub = if *at < c.len() && c[*at] == '(' {
        *at += 1;
        let list = parse_list(c, at, depth + 1)?;
        if *at >= c.len() || c[*at] != ')' {
            return Err("unbalanced parentheses".into());
        }
        *at += 1;
        Some(list)
    } else {
        None
    };
    Ok(Selection { path, sub })
}

fn apply(v: &Value, path: &[String], sub: Option<&[Selection]>) -> Option<Value> {
    if let Value::Array(items) = v {
        return Some(Value::Array(
            items.iter().filter_map(|x| apply(x, path, sub)).collect(),
        ));
    }
    let Some((first, rest)) = path.split_first() else {
        return Some(match sub {
            Some(s) => select_all(v, s),
            None => v.clone(),
        });
    };
    let Value::Object(m) = v else {
        return None;
    };
    let mut out = Map::new();
    if first == "*" {
        for (k, x) in m {
            if let Some(r) = apply(x, rest, sub) {
                out.insert(k.clone(), r);
            }
        }
    } else if let Some(x) = m.get(first)
        && let Some(r) = apply(x, rest, sub)
    {
        out.insert(first.clone(), r);
    }
    Some(Value::Object(out))
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (x, y) in a.iter_mut().zip(b) {
                merge(x, y);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn select_all(v: &Value, list: &[Selection]) -> Value {
    let mut out = Value::Object(Map::new());
    for s in list {
        if let Some(r) = apply(v, &s.path, s.sub.as_deref()) {
            merge(&mut out, r);
        }
    }
    out
}

/// The partial response of `body` for the `fields` value, or why the value is malformed.
///
/// # Errors
/// The parse error.
pub fn partial(body: &Value, fields: &str) -> Result<Value, String> {
    Ok(select_all(body, &parse(fields)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selections() {
        let body = json!({
            "kind": "compute#instanceAggregatedList",
            "nextPageToken": "t",
            "items": {
                "zones/a": {"instances": [
                    {"name": "x", "zone": "a", "metadata": {"fingerprint": "f", "items": [{"key": "k", "value": "secret"}]}},
                    {"name": "y", "zone": "a"}
                ]},
                "zones/b": {"warning": {"code": "UNREACHABLE", "message": "m"}}
            }
        });
        let p = partial(
            &body,
            "nextPageToken,items/*/warning/code,items/*/instances(name,metadata/items/key)",
        )
        .expect("valid");
        assert_eq!(
            p,
            json!({
                "nextPageToken": "t",
                "items": {
                    "zones/a": {"instances": [
                        {"name": "x", "metadata": {"items": [{"key": "k"}]}},
                        {"name": "y"}
                    ]},
                    "zones/b": {"warning": {"code": "UNREACHABLE"}}
                }
            })
        );
        for bad in ["", "a,", "a(b", "a)", "a//b", "a*b", "a b"] {
            assert!(partial(&body, bad).is_err(), "{bad:?}");
        }
    }
}
