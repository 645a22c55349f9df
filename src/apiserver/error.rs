//! API errors, rendered as Kubernetes `Status` objects with kube-apiserver's codes, reasons and
//! message shapes.

use serde_json::{json, Value};

use super::resources::Resource;

/// One field-level problem, as `field.Error` in Kubernetes.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FieldErrorKind {
    Required(String),
    Invalid {
        value: Value,
        detail: String,
    },
    NotSupported {
        value: Value,
        /// The values allowed, each as it is written in JSON.
        supported: Vec<String>,
    },
    Duplicate(Value),
    Forbidden(String),
    TooLong(u64),
    TooMany {
        actual: usize,
        max: u64,
    },
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required(detail.into()),
        }
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
                detail: detail.into(),
            },
        }
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let values: Vec<Value> = supported.iter().map(|s| Value::from(*s)).collect();
        Self::not_supported_values(field, value, &values)
    }
    /// As [`FieldError::not_supported`], for allowed values of any JSON type.
    pub fn not_supported_values(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[Value],
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported {
                value: value.into(),
                supported: supported.iter().map(Value::to_string).collect(),
            },
        }
    }
    pub fn too_long(field: impl Into<String>, max: u64) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooLong(max),
        }
    }
    pub fn too_many(field: impl Into<String>, actual: usize, max: u64) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooMany { actual, max },
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(value.into()),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden(detail.into()),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required(_) => "FieldValueRequired",
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::Forbidden(_) => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::TooMany { .. } => "FieldValueTooMany",
        }
    }

    /// The message without the field path, as kube-apiserver puts it in a cause.
    fn body(&self) -> String {
        let with = |head: String, detail: &str| {
            if detail.is_empty() {
                head
            } else {
                format!("{head}: {detail}")
            }
        };
        match &self.kind {
            FieldErrorKind::Required(d) => with("Required value".into(), d),
            FieldErrorKind::Invalid { value, detail } => {
                with(format!("Invalid value: {value}"), detail)
            }
            FieldErrorKind::NotSupported { value, supported } => {
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    supported.join(", ")
                )
            }
            FieldErrorKind::Duplicate(value) => format!("Duplicate value: {value}"),
            FieldErrorKind::Forbidden(d) => with("Forbidden".into(), d),
            FieldErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::TooMany { actual, max } => {
                format!("Too many: {actual}: must have at most {max} items")
            }
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// An error answered to an API client.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    /// The details naming the object an error is about.
    fn about(self, r: &Resource, name: &str) -> Self {
        self.with_details(json!({"name": name, "group": r.group, "kind": r.plural}))
    }

    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.group_resource()),
        )
        .about(r, name)
    }
    /// A path that names no resource the server serves.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn already_exists(r: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.group_resource()),
        )
        .about(r, name)
    }
    pub fn conflict(r: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.group_resource()
            ),
        )
        .about(r, name)
    }
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {joined}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }
    /// A patch that cannot be applied to the object (a JSON patch test or path that fails).
    pub fn unprocessable_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"))
    }
    /// A strategic merge patch of a custom resource (whose schema has no patch strategies).
    pub fn strategic_unsupported() -> Self {
        Self::new(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object for this error, as JSON in kube-apiserver's field order (the order of
    /// the Go types' fields; some clients compare the text).
    pub fn status_json(&self) -> Vec<u8> {
        let details = self.details.as_ref().map(|d| {
            let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
            let causes = d.get("causes").and_then(Value::as_array).map(|cs| {
                cs.iter()
                    .map(|c| StatusCause {
                        reason: c.get("reason").and_then(Value::as_str).unwrap_or_default(),
                        message: c.get("message").and_then(Value::as_str).unwrap_or_default(),
                        field: c.get("field").and_then(Value::as_str).unwrap_or_default(),
                    })
                    .collect()
            });
            StatusDetails {
                name: text("name"),
                group: text("group"),
                kind: text("kind"),
                uid: text("uid"),
                causes,
                retry_after_seconds: d.get("retryAfterSeconds").and_then(Value::as_i64),
            }
        });
        let status = Status {
            kind: "Status",
            api_version: "v1",
            metadata: serde_json::Map::new(),
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details,
            code: self.code,
        };
        serde_json::to_vec(&status).expect("a Status serializes")
    }

    /// The `Status` object for this error, as a value.
    pub fn status(&self) -> Value {
        serde_json::from_slice(&self.status_json()).expect("a Status parses")
    }
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

/// metav1.Status, its fields in the Go type's order, empty ones left out as Go's `omitempty`
/// does.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Map<String, Value>,
    status: &'static str,
    #[serde(skip_serializing_if = "is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<StatusDetails<'a>>,
    code: u16,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDetails<'a> {
    #[serde(skip_serializing_if = "is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    group: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    causes: Option<Vec<StatusCause<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<i64>,
}

#[derive(serde::Serialize)]
struct StatusCause<'a> {
    #[serde(skip_serializing_if = "is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    field: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_matches_kube_apiserver() {
        let one = ApiError::invalid(
            "",
            "Service",
            "web",
            &[FieldError::invalid(
                "spec.ports[0].port",
                0,
                "must be between 1 and 65535, inclusive",
            )],
        );
        assert_eq!(one.message, "Service \"web\" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive");
        assert_eq!(
            one.status()["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
        let two = ApiError::invalid(
            "",
            "Service",
            "web",
            &[
                FieldError::required("spec.ports", ""),
                FieldError::not_supported("spec.type", "Bogus", &["ClusterIP", "NodePort"]),
            ],
        );
        assert_eq!(
            two.message,
            "Service \"web\" is invalid: [spec.ports: Required value, spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"NodePort\"]"
        );
        assert_eq!(two.status()["code"], 422);
    }

    #[test]
    fn status_bodies_read_as_kube_apiserver_writes_them() {
        let r =
            crate::apiserver::resources::builtin(crate::apiserver::resources::Builtin::ConfigMap);
        let body = String::from_utf8(ApiError::not_found(r, "x").status_json()).unwrap();
        assert_eq!(
            body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"configmaps"},"code":404}"#
        );
        let invalid = ApiError::invalid(
            "",
            "Service",
            "web",
            &[FieldError::required("spec.ports", "")],
        );
        let body = String::from_utf8(invalid.status_json()).unwrap();
        assert!(
            body.contains(r#""details":{"name":"web","kind":"Service","causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec.ports"}]},"code":422}"#),
            "{body}"
        );
    }
}
