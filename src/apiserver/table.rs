//! Server-side printing: `meta.k8s.io/v1` Tables with kube-apiserver's columns for each kind, as
//! `kubectl get` asks for them (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::crd::Column as PrinterColumn;
use super::resources::{Builtin, Resource};

/// (name, type, priority): priority 1 columns show with `-o wide`.
type Column = (&'static str, &'static str, u8);

fn columns(kind: Option<Builtin>) -> &'static [Column] {
    match kind {
        Some(Builtin::Namespace) => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::Service) => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        Some(Builtin::Pod) => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        Some(Builtin::Node) => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
        ],
        Some(Builtin::Secret) => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::ConfigMap) => &[
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::EndpointSlice) => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::Ingress) => &[
            ("Name", "string", 0),
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::IngressClass) => &[
            ("Name", "string", 0),
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::Lease) => &[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        Some(Builtin::CustomResourceDefinition) => {
            &[("Name", "string", 0), ("Created At", "date", 0)]
        }
        Some(Builtin::CertificateSigningRequest) => &[
            ("Name", "string", 0),
            ("Age", "string", 0),
            ("SignerName", "string", 0),
            ("Requestor", "string", 0),
            ("RequestedDuration", "string", 0),
            ("Condition", "string", 0),
        ],
        Some(Builtin::Event | Builtin::EventsV1Event) => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ],
        _ => &[("Name", "string", 0), ("Age", "string", 0)],
    }
}

/// kube's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if d / 365 < 8 {
        format!("{}y{}d", d / 365, d % 365)
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value) -> String {
    since(s(obj, "/metadata/creationTimestamp"))
}

/// How long ago a time was, as kubectl prints it.
fn since(time: &str) -> String {
    match crate::time::parse(time) {
        Some(t) => match SystemTime::now().duration_since(t) {
            Ok(d) => human_duration(d.as_secs() as i64),
            Err(_) => human_duration(-1),
        },
        None => "<unknown>".into(),
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn or_none(v: String) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v
    }
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn lb_addresses(obj: &Value) -> Vec<String> {
    arr(obj, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .or_else(|| i.get("hostname"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let ty = s(obj, "/spec/type");
    let cluster_ip = or_none(s(obj, "/spec/clusterIP").to_string());
    let mut external: Vec<String> = arr(obj, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let external = match ty {
        "LoadBalancer" => {
            external.extend(lb_addresses(obj));
            if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            }
        }
        "ExternalName" => s(obj, "/spec/externalName").to_string(),
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = arr(obj, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let selector: Vec<String> = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(age(obj)),
        json!(or_none(selector.join(","))),
    ]
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let statuses = arr(obj, "/status/containerStatuses");
    let total = arr(obj, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut status = if s(obj, "/status/reason").is_empty() {
        s(obj, "/status/phase").to_string()
    } else {
        s(obj, "/status/reason").to_string()
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(obj)),
        json!(or_none(s(obj, "/status/podIP").to_string())),
        json!(or_none(s(obj, "/spec/nodeName").to_string())),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let ready = arr(obj, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let addr = |t: &str| {
        or_none(
            arr(obj, "/status/addresses")
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) == Some(t))
                .filter_map(|a| a.get("address").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(","),
        )
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(obj)),
        json!(s(obj, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
    ]
}

fn endpointslice_cells(obj: &Value) -> Vec<Value> {
    let ports: Vec<String> = arr(obj, "/ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_i64))
        .map(|p| p.to_string())
        .collect();
    let addrs: Vec<&str> = arr(obj, "/endpoints")
        .iter()
        .flat_map(|e| arr(e, "/addresses"))
        .filter_map(Value::as_str)
        .collect();
    let endpoints = if addrs.is_empty() {
        "<unset>".to_string()
    } else if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    let ports = if ports.is_empty() {
        "<unset>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(s(obj, "/addressType")),
        json!(ports),
        json!(endpoints),
        json!(age(obj)),
    ]
}

fn ingress_cells(obj: &Value) -> Vec<Value> {
    let hosts: Vec<&str> = arr(obj, "/spec/rules")
        .iter()
        .filter_map(|r| r.get("host").and_then(Value::as_str))
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else {
        hosts.join(",")
    };
    let ports = if arr(obj, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        json!(or_none(s(obj, "/spec/ingressClassName").to_string())),
        json!(hosts),
        json!(lb_addresses(obj).join(",")),
        json!(ports),
        json!(age(obj)),
    ]
}

/// kubectl's CSR columns: the conditions joined (Pending when there are none, `Issued` added
/// once a certificate is there).
fn csr_cells(obj: &Value) -> Vec<Value> {
    let mut conditions: Vec<&str> = arr(obj, "/status/conditions")
        .iter()
        .filter_map(|c| c.get("type").and_then(Value::as_str))
        .collect();
    if conditions.is_empty() {
        conditions.push("Pending");
    }
    if obj
        .pointer("/status/certificate")
        .is_some_and(|c| !c.is_null())
    {
        conditions.push("Issued");
    }
    let duration = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map_or_else(|| "<none>".to_string(), human_duration);
    vec![
        json!(age(obj)),
        json!(s(obj, "/spec/signerName")),
        json!(s(obj, "/spec/username")),
        json!(duration),
        json!(conditions.join(",")),
    ]
}

/// The first of `ptrs` that is set (a core/v1 field or its events.k8s.io/v1 name).
fn first<'a>(obj: &'a Value, ptrs: &[&str]) -> &'a str {
    ptrs.iter()
        .map(|p| s(obj, p))
        .find(|v| !v.is_empty())
        .unwrap_or("")
}

/// kubectl's event row: when, what, about which object, from whom; read from either form.
fn event_cells(obj: &Value) -> Vec<Value> {
    let last = first(
        obj,
        &[
            "/series/lastObservedTime",
            "/lastTimestamp",
            "/deprecatedLastTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ],
    );
    let first_seen = first(
        obj,
        &[
            "/firstTimestamp",
            "/deprecatedFirstTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ],
    );
    let about = |f: &str| {
        first(
            obj,
            &[&format!("/involvedObject/{f}"), &format!("/regarding/{f}")],
        )
    };
    let source = [
        first(
            obj,
            &[
                "/source/component",
                "/deprecatedSource/component",
                "/reportingComponent",
                "/reportingController",
            ],
        ),
        first(obj, &["/source/host", "/deprecatedSource/host"]),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    let count = obj
        .pointer("/series/count")
        .or_else(|| obj.get("count"))
        .or_else(|| obj.get("deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    vec![
        json!(since(last)),
        json!(s(obj, "/type")),
        json!(s(obj, "/reason")),
        json!(format!(
            "{}/{}",
            about("kind").to_ascii_lowercase(),
            about("name")
        )),
        json!(about("fieldPath")),
        json!(source),
        json!(first(obj, &["/message", "/note"]).trim()),
        json!(since(first_seen)),
        json!(count.to_string()),
        json!(s(obj, "/metadata/name")),
    ]
}

fn count(obj: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

/// The cells after the name.
fn cells(kind: Option<Builtin>, obj: &Value) -> Vec<Value> {
    match kind {
        Some(Builtin::Namespace) => vec![json!(s(obj, "/status/phase")), json!(age(obj))],
        Some(Builtin::Service) => service_cells(obj),
        Some(Builtin::Pod) => pod_cells(obj),
        Some(Builtin::Node) => node_cells(obj),
        Some(Builtin::Secret) => vec![
            json!(s(obj, "/type")),
            json!(count(obj, &["data"])),
            json!(age(obj)),
        ],
        Some(Builtin::ConfigMap) => {
            vec![json!(count(obj, &["data", "binaryData"])), json!(age(obj))]
        }
        Some(Builtin::EndpointSlice) => endpointslice_cells(obj),
        Some(Builtin::Ingress) => ingress_cells(obj),
        Some(Builtin::IngressClass) => vec![
            json!(s(obj, "/spec/controller")),
            json!("<none>"),
            json!(age(obj)),
        ],
        Some(Builtin::Lease) => vec![
            json!(or_none(s(obj, "/spec/holderIdentity").to_string())),
            json!(age(obj)),
        ],
        Some(Builtin::CertificateSigningRequest) => csr_cells(obj),
        Some(Builtin::Event | Builtin::EventsV1Event) => event_cells(obj),
        // kubectl prints the creation time itself, not an age.
        Some(Builtin::CustomResourceDefinition) => {
            vec![json!(s(obj, "/metadata/creationTimestamp"))]
        }
        _ => vec![json!(age(obj))],
    }
}

/// Whether the table rows carry the whole object, only its metadata, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The cells of a custom kind's printer columns: JSONPath results, dates as ages.
fn custom_cells(columns: &[PrinterColumn], obj: &Value) -> Vec<Value> {
    columns
        .iter()
        .map(|c| match c.path.cell(obj) {
            Value::String(t) if c.ty == "date" => json!(since(&t)),
            other => other,
        })
        .collect()
}

fn row(r: &Resource, obj: &Value, include: IncludeObject) -> Value {
    // Most kinds print their name first; those that do not place it among their cells.
    let mut c = Vec::new();
    match r.custom.as_deref() {
        Some(v) if !v.columns.is_empty() => {
            c.push(json!(s(obj, "/metadata/name")));
            c.extend(custom_cells(&v.columns, obj));
        }
        _ => {
            if columns(r.builtin).first().is_some_and(|c| c.0 == "Name") {
                c.push(json!(s(obj, "/metadata/name")));
            }
            c.extend(cells(r.builtin, obj));
        }
    }
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    json!({"cells": c, "object": object})
}

/// A Table of objects; `metadata` is the list metadata (resourceVersion, continue).
pub fn table(r: &Resource, objs: &[Value], metadata: Value, include: IncludeObject) -> Value {
    let name = || json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0});
    let defs: Vec<Value> = match r.custom.as_deref() {
        Some(v) if !v.columns.is_empty() => std::iter::once(name())
            .chain(v.columns.iter().map(|c| {
                json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})
            }))
            .collect(),
        _ => columns(r.builtin)
            .iter()
            .map(|(name, ty, prio)| {
                let format = if *name == "Name" { "name" } else { "" };
                json!({"name": name, "type": ty, "format": format, "description": "", "priority": prio})
            })
            .collect(),
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": objs.iter().map(|o| row(r, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtin;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(86400 * 3 + 3600), "3d1h");
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let t = table(
            builtin(Builtin::Service),
            &[svc],
            json!({}),
            IncludeObject::Metadata,
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[2], "10.96.0.10");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
        assert_eq!(cells[6], "app=web");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            cells.as_array().unwrap().len()
        );
    }
}
