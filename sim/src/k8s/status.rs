//! The API server's failures: `Status` bodies exactly in the API's shape (`kind: Status`,
//! `status: Failure`, `reason`, `code`, and `details` naming the object).

use serde_json::{Value, json};

use crate::server::Answer;

/// A Kubernetes `Status` failure.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// A failure about one object, which the details name.
    fn about(code: u16, reason: &'static str, resource: &str, name: &str, message: String) -> Self {
        Self::new(code, reason, message).with_details(json!({"name": name, "kind": resource}))
    }

    pub(super) fn not_found(resource: &str, name: &str) -> Self {
        Self::about(
            404,
            "NotFound",
            resource,
            name,
            format!("{resource} \"{name}\" not found"),
        )
    }

    pub(super) fn already_exists(resource: &str, name: &str) -> Self {
        Self::about(
            409,
            "AlreadyExists",
            resource,
            name,
            format!("{resource} \"{name}\" already exists"),
        )
    }

    pub(super) fn conflict(resource: &str, name: &str) -> Self {
        Self::about(
            409,
            "Conflict",
            resource,
            name,
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
    }

    /// 422 `Invalid`, with the one field at fault as the cause.
    pub(super) fn invalid(
        kind: &str,
        name: &str,
        field: &str,
        cause_reason: &str,
        message: &str,
    ) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {message}"),
        )
        .with_details(json!({
            "name": name, "kind": kind,
            "causes": [{"reason": cause_reason, "message": message, "field": field}]
        }))
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(super) fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    fn body(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// The object a validation is about, to refuse its fields with 422 `Invalid`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subject<'a> {
    pub(super) kind: &'a str,
    pub(super) name: &'a str,
}

impl Subject<'_> {
    /// Refuses `field`, with `cause_reason` (`FieldValueInvalid`, …) and the API's message.
    pub(super) fn invalid<T>(
        self,
        field: &str,
        cause_reason: &str,
        message: &str,
    ) -> Result<T, ApiError> {
        Err(ApiError::invalid(
            self.kind,
            self.name,
            field,
            cause_reason,
            message,
        ))
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Self {
        Answer::with_code(e.code, e.body())
    }
}
