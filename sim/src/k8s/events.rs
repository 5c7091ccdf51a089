//! Events (`core/v1`): the involved object's kind and name are required, and an Event lives in
//! its involved object's namespace (`default` for a cluster-scoped object such as a Node).

use serde_json::Value;

use super::ApiError;
use super::objects::str_at;
use super::status::Subject;

pub(super) fn validate(subject: Subject<'_>, obj: &Value) -> Result<(), ApiError> {
    let io_kind = str_at(obj, "/involvedObject/kind");
    let io_name = str_at(obj, "/involvedObject/name");
    if io_kind.is_empty() || io_name.is_empty() {
        return subject.invalid(
            "involvedObject",
            "FieldValueRequired",
            "Required value: involvedObject kind and name are required",
        );
    }
    let io_ns = str_at(obj, "/involvedObject/namespace");
    let ns = str_at(obj, "/metadata/namespace");
    let ok = if io_ns.is_empty() {
        ns.is_empty() || ns == "default"
    } else {
        ns == io_ns
    };
    if !ok {
        return subject.invalid(
            "involvedObject.namespace",
            "FieldValueInvalid",
            &format!("Invalid value: {io_ns:?}: does not match event.namespace"),
        );
    }
    Ok(())
}
