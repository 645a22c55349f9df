//! The ClusterRoles and ClusterRoleBindings every cluster starts with, as kube-apiserver's RBAC
//! bootstrap makes them (for the kinds we serve): `cluster-admin`, the aggregated `admin`, `edit`
//! and `view`, discovery and self-review for every authenticated user, `system:node-proxier`
//! (kube-proxy's role), `system:node-bootstrapper`, and `switchyard:node-agent`, what the node
//! agent needs beyond a node's own rights (Ingress and Gateway API status, TLS Secrets, Events).

use serde_json::{json, Value};

const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";
const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];

fn role(name: &str, labels: Value, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn aggregated(name: &str, to: &str) -> Value {
    let mut r = role(
        name,
        json!({"kubernetes.io/bootstrapping": "rbac-defaults"}),
        json!([]),
    );
    r["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE}{to}"): "true"}}]});
    r
}

fn aggregate_to(targets: &[&str]) -> Value {
    let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for t in targets {
        labels[format!("{AGGREGATE}{t}")] = json!("true");
    }
    labels
}

fn binding(name: &str, role: &str, subject: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject],
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let defaults = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    vec![
        role(
            "cluster-admin",
            defaults.clone(),
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
        ),
        aggregated("admin", "admin"),
        aggregated("edit", "edit"),
        aggregated("view", "view"),
        role(
            "system:aggregate-to-view",
            aggregate_to(&["admin", "edit", "view"]),
            json!([
                {"apiGroups": [""], "resources": ["configmaps", "endpoints", "events", "pods", "pods/status", "services", "services/status", "serviceaccounts"], "verbs": READ},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": READ},
                {"apiGroups": [""], "resources": ["namespaces", "namespaces/status"], "verbs": READ},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status"], "verbs": READ},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": READ},
            ]),
        ),
        role(
            "system:aggregate-to-edit",
            aggregate_to(&["admin", "edit"]),
            json!([
                {"apiGroups": [""], "resources": ["configmaps", "endpoints", "pods", "services", "secrets", "serviceaccounts"], "verbs": WRITE},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},
                {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": WRITE},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": WRITE},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE},
            ]),
        ),
        role(
            "system:aggregate-to-admin",
            aggregate_to(&["admin"]),
            json!([
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]},
            ]),
        ),
        role(
            "system:discovery",
            defaults.clone(),
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/", "/openapi", "/openapi/*"], "verbs": ["get"]}]),
        ),
        role(
            "system:basic-user",
            defaults.clone(),
            json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ]),
        ),
        role(
            "system:node-proxier",
            defaults.clone(),
            json!([
                {"apiGroups": [""], "resources": ["endpoints", "services"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": READ},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                {"apiGroups": ["networking.k8s.io"], "resources": ["servicecidrs"], "verbs": ["list", "watch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
        ),
        role(
            "system:node-bootstrapper",
            defaults.clone(),
            json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]}]),
        ),
        role(
            "switchyard:node-agent",
            json!({"app.kubernetes.io/name": "switchyard"}),
            json!([
                {"apiGroups": [""], "resources": ["services", "nodes", "namespaces"], "verbs": READ},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"], "verbs": READ},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["get", "update", "patch"]},
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants"], "verbs": READ},
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status", "grpcroutes/status"], "verbs": ["get", "update", "patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", group("system:masters")),
        binding(
            "system:discovery",
            "system:discovery",
            group("system:authenticated"),
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            group("system:authenticated"),
        ),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            group("system:bootstrappers"),
        ),
    ]
}
