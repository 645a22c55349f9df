//! Validation of RBAC objects, as kube-apiserver's: every rule has verbs, and either resources
//! (with API groups) or non-resource URLs (those only in a ClusterRole); a binding refers to a
//! Role or ClusterRole (a ClusterRoleBinding only to a ClusterRole) and names what it binds; the
//! role a binding refers to never changes.

use serde_json::Value;

use super::FieldError;

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn validate_rules(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
    for (i, r) in list(obj, "rules").iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if list(r, "verbs").is_empty() {
            errs.push(FieldError::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = !list(r, "nonResourceURLs").is_empty();
        let resources = !list(r, "resources").is_empty();
        if urls && !cluster {
            errs.push(FieldError::invalid(
                at("nonResourceURLs"),
                "",
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if urls && resources {
            errs.push(FieldError::invalid(
                at("nonResourceURLs"),
                "",
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        if !urls && !resources {
            errs.push(FieldError::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
        if resources && list(r, "apiGroups").is_empty() {
            errs.push(FieldError::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
    }
}

pub(super) fn validate_binding(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
    let kind = obj
        .pointer("/roleRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let allowed: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    if !allowed.contains(&kind) {
        errs.push(FieldError::not_supported("roleRef.kind", kind, allowed));
    }
    let group = obj
        .pointer("/roleRef/apiGroup")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group != "rbac.authorization.k8s.io" {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            group,
            &["rbac.authorization.k8s.io"],
        ));
    }
    if obj
        .pointer("/roleRef/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for (i, s) in list(obj, "subjects").iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "User" | "Group" | "ServiceAccount") {
            errs.push(FieldError::not_supported(
                at("kind"),
                kind,
                &["ServiceAccount", "User", "Group"],
            ));
        }
        if s.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(at("name"), ""));
        }
        if kind == "ServiceAccount"
            && cluster
            && s.get("namespace")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(at("namespace"), ""));
        }
    }
}

pub(super) fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old.get("roleRef") != new.get("roleRef") {
        errs.push(FieldError::invalid("roleRef", "", "cannot change roleRef"));
    }
}

/// RBAC object names are path segments (`system:node-proxier` is one).
pub(super) fn path_segment_name(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    name.contains(['/', '%'])
        .then(|| "may not contain '/' or '%'".to_string())
}
