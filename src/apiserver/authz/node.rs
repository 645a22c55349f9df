//! The Node rules (kube-apiserver's Node authorizer and NodeRestriction admission, for the kinds
//! we serve). A node, `system:node:NAME`, may:
//! - read what a node agent needs to route and resolve: Services, EndpointSlices, Nodes,
//!   Namespaces, Pods, Ingresses and IngressClasses;
//! - write its own Node (and its status) and its own Lease in `kube-node-lease`, nothing else's;
//! - write the status of Pods bound to it, and no other Pod's;
//! - read a Secret or ConfigMap only when a Pod bound to it references it;
//! - create Events, and CertificateSigningRequests to renew its credential.
//!
//! Anything else (another node's objects, Service status, every Secret) is not its to do, unless
//! RBAC grants it to the node explicitly.

use serde_json::Value;

use super::{Attributes, State};
use crate::apiserver::error::ApiError;

const READ: &[&str] = &["get", "list", "watch"];
const LEASE_NAMESPACE: &str = "kube-node-lease";

fn is(a: &Attributes<'_>, group: &str, resource: &str) -> bool {
    a.path.is_none() && a.group == group && a.resource == resource
}

pub(super) fn allows(state: &State, node: &str, a: &Attributes<'_>) -> bool {
    let read = READ.contains(&a.verb);
    let own = a.name == node;
    if a.path.is_some() {
        return false;
    }
    match (a.group, a.resource, a.subresource) {
        ("", "services" | "namespaces" | "pods", "")
        | ("discovery.k8s.io", "endpointslices", "")
        | ("networking.k8s.io", "ingresses" | "ingressclasses", "")
            if read =>
        {
            true
        }
        ("", "nodes", "") if read => true,
        // Its own Node: created (the name is checked on the object), changed, status.
        ("", "nodes", "") => {
            a.verb == "create" || (own && matches!(a.verb, "update" | "patch" | "delete"))
        }
        ("", "nodes", "status") => own && matches!(a.verb, "get" | "update" | "patch"),
        ("coordination.k8s.io", "leases", "") => {
            a.namespace == Some(LEASE_NAMESPACE)
                && (a.verb == "create"
                    || (own && matches!(a.verb, "get" | "update" | "patch" | "delete" | "watch")))
        }
        ("", "pods", "status") if matches!(a.verb, "get" | "update" | "patch") => {
            let facts = state.facts();
            let key = (a.namespace.unwrap_or("").to_string(), a.name.to_string());
            facts.pods.get(&key).is_some_and(|p| p.node == node)
        }
        ("", kind @ ("secrets" | "configmaps"), "") if a.verb == "get" => {
            let facts = state.facts();
            let ns = a.namespace.unwrap_or("");
            facts.pods.iter().any(|((pns, _), p)| {
                p.node == node
                    && pns == ns
                    && if kind == "secrets" {
                        p.secrets.iter().any(|s| s == a.name)
                    } else {
                        p.configmaps.iter().any(|c| c == a.name)
                    }
            })
        }
        ("" | "events.k8s.io", "events", "") => matches!(a.verb, "create" | "patch" | "update"),
        ("certificates.k8s.io", "certificatesigningrequests", "") => {
            matches!(a.verb, "create" | "get" | "list" | "watch")
        }
        _ => false,
    }
}

/// NodeRestriction for writes by a node: a Node or Lease it creates or changes must be its own.
pub fn admit(node: &str, a: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
    let named = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if (is(a, "", "nodes") || is(a, "coordination.k8s.io", "leases")) && named != node {
        return Err(ApiError::forbidden(format!(
            "node \"{node}\" is not allowed to modify {} \"{named}\"",
            a.resource
        )));
    }
    Ok(())
}
