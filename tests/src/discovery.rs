//! The Compute Engine v1 discovery document (the subset in `tests/data/compute.v1.subset.json`,
//! cut from the one the google-api-python-client wheel ships; see `tests/data/trim_discovery.py`)
//! as a checker of JSON bodies: every field must be one the schema names, of the type it names
//! — `int64`/`uint64` as JSON strings, `int32`/`uint32` as numbers, maps through
//! `additionalProperties`, nested objects through `$ref`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One API method: the schemas of its request and response bodies.
#[derive(Debug, Clone)]
pub struct Method {
    pub http_method: String,
    pub request: Option<String>,
    pub response: Option<String>,
}

/// The document.
#[derive(Debug)]
pub struct Discovery {
    pub methods: BTreeMap<String, Method>,
    schemas: Map<String, Value>,
}

impl Discovery {
    /// The vendored subset.
    ///
    /// # Panics
    /// When the vendored file does not parse (a broken checkout).
    pub fn compute_v1() -> Self {
        let doc: Value = serde_json::from_str(include_str!("../data/compute.v1.subset.json"))
            .expect("tests/data/compute.v1.subset.json parses");
        let methods = doc["methods"]
            .as_object()
            .expect("methods")
            .iter()
            .map(|(k, m)| {
                let s = |f: &str| m[f].as_str().map(str::to_string);
                (
                    k.clone(),
                    Method {
                        http_method: s("httpMethod").unwrap_or_default(),
                        request: s("request"),
                        response: s("response"),
                    },
                )
            })
            .collect();
        let schemas = doc["schemas"].as_object().cloned().expect("schemas");
        Self { methods, schemas }
    }

    /// Every way `v` departs from schema `name`, as `path: problem`.
    pub fn check(&self, name: &str, v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check_ref(name, v, "$", &mut out);
        out
    }

    fn check_ref(&self, name: &str, v: &Value, path: &str, out: &mut Vec<String>) {
        match self.schemas.get(name) {
            Some(s) => self.check_spec(s, v, path, out),
            None => out.push(format!(
                "{path}: schema {name} is not in the vendored subset"
            )),
        }
    }

    fn check_spec(&self, spec: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(r) = spec.get("$ref").and_then(Value::as_str) {
            return self.check_ref(r, v, path, out);
        }
        let ty = spec.get("type").and_then(Value::as_str).unwrap_or("any");
        let format = spec.get("format").and_then(Value::as_str).unwrap_or("");
        let ok = match (ty, v) {
            ("any", _) => true,
            (_, Value::Null) => false,
            ("string", Value::String(_)) | ("boolean", Value::Bool(_)) => true,
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            ("array", Value::Array(items)) => {
                if let Some(item) = spec.get("items") {
                    for (i, x) in items.iter().enumerate() {
                        self.check_spec(item, x, &format!("{path}[{i}]"), out);
                    }
                }
                true
            }
            ("object", Value::Object(m)) => {
                let props = spec.get("properties").and_then(Value::as_object);
                let extra = spec.get("additionalProperties");
                for (k, x) in m {
                    let p = format!("{path}.{k}");
                    match (props.and_then(|p| p.get(k)), extra) {
                        (Some(s), _) | (None, Some(s)) => self.check_spec(s, x, &p, out),
                        (None, None) => out.push(format!("{p}: no such field")),
                    }
                }
                true
            }
            _ => false,
        };
        if !ok {
            let want = if format.is_empty() {
                ty.to_string()
            } else {
                format!("{ty} ({format})")
            };
            out.push(format!("{path}: {v} is not a {want}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_checker_refuses_what_the_schema_does_not_allow() {
        let d = Discovery::compute_v1();
        assert!(
            d.check("AliasIpRange", &json!({"ipCidrRange": "10.0.0.0/24"}))
                .is_empty()
        );
        assert_eq!(
            d.check("AliasIpRange", &json!({"ipCidr": "10.0.0.0/24"})),
            ["$.ipCidr: no such field"]
        );
        // uint64 is a JSON string in Google's REST encoding.
        assert!(!d.check("Instance", &json!({"id": 7})).is_empty());
        assert!(
            d.check("Instance", &json!({"id": "7", "labels": {"a": "b"}}))
                .is_empty()
        );
        assert!(!d.check("Instance", &json!({"labels": {"a": 1}})).is_empty());
        assert!(
            !d.check(
                "Instance",
                &json!({"networkInterfaces": [{"aliasIpRanges": [{"x": 1}]}]})
            )
            .is_empty()
        );
        assert!(d.methods.contains_key("instances.updateNetworkInterface"));
    }
}
