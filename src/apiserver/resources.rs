//! The resources the server serves: one table, read by routing, discovery, OpenAPI and storage.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Decodes into the typed k8s-openapi object and back: the object as Kubernetes writes it, and
/// the paths of fields the type does not know.
pub type Normalize = fn(Value) -> Result<(Value, Vec<String>), String>;

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main resource ignores status, `/status` changes only it.
    pub status: bool,
    /// Writes to the spec bump `metadata.generation`.
    pub generation: bool,
    pub normalize: Normalize,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix for all objects of this resource.
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The store key prefix for one namespace (or all, for cluster-scoped resources).
    pub fn scope_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.scope_prefix(namespace))
    }

    /// "services" or "ingresses.networking.k8s.io": how errors name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(
    input: Value,
) -> Result<(Value, Vec<String>), String> {
    let typed: K = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
    let output = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &output, "", &mut unknown);
    Ok((output, unknown))
}

/// Paths present (and not null) in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

macro_rules! resource {
    ($ty:ty, $group:expr, $kind:expr, $plural:expr, $singular:expr, ns: $ns:expr, short: $short:expr, cat: $cat:expr, status: $status:expr, generation: $gen:expr) => {
        Resource {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            status: $status,
            generation: $gen,
            normalize: roundtrip::<$ty>,
        }
    };
}

pub static RESOURCES: &[Resource] = &[
    resource!(Namespace, "", "Namespace", "namespaces", "namespace", ns: false, short: &["ns"], cat: &[], status: true, generation: false),
    resource!(Service, "", "Service", "services", "service", ns: true, short: &["svc"], cat: &["all"], status: true, generation: true),
    resource!(Pod, "", "Pod", "pods", "pod", ns: true, short: &["po"], cat: &["all"], status: true, generation: false),
    resource!(Node, "", "Node", "nodes", "node", ns: false, short: &["no"], cat: &[], status: true, generation: false),
    resource!(Secret, "", "Secret", "secrets", "secret", ns: true, short: &[], cat: &[], status: false, generation: false),
    resource!(ConfigMap, "", "ConfigMap", "configmaps", "configmap", ns: true, short: &["cm"], cat: &[], status: false, generation: false),
    resource!(EndpointSlice, "discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice", ns: true, short: &[], cat: &[], status: false, generation: true),
    resource!(Ingress, "networking.k8s.io", "Ingress", "ingresses", "ingress", ns: true, short: &["ing"], cat: &[], status: true, generation: true),
    resource!(IngressClass, "networking.k8s.io", "IngressClass", "ingressclasses", "ingressclass", ns: false, short: &[], cat: &[], status: false, generation: true),
    resource!(Lease, "coordination.k8s.io", "Lease", "leases", "lease", ns: true, short: &[], cat: &[], status: false, generation: false),
];

/// The API groups served, in discovery order, with their one version.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kind: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect("served kind")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_reports_unknown_fields_and_type_errors() {
        let svc = by_kind("Service");
        let (out, unknown) = (svc.normalize)(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "bogus": 1},
            "spec": {"ports": [{"port": 80, "nope": true}], "selector": {"app": "x"}}
        }))
        .unwrap();
        assert_eq!(unknown, ["metadata.bogus", "spec.ports[0].nope"]);
        assert!(out["metadata"].get("bogus").is_none());
        assert_eq!(out["spec"]["selector"]["app"], "x");
        let err = (svc.normalize)(json!({"metadata": {"name": "a"}, "spec": {"ports": "80"}}))
            .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }
}
