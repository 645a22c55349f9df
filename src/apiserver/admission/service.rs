//! Service defaulting, validation and ClusterIP/NodePort allocation, as kube-apiserver's
//! service registry does them.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::allocator::AllocError;
use super::{check, names, str_at, Allocators, Claims};
use crate::apiserver::error::FieldError;

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn svc_type(obj: &Value) -> &str {
    str_at(obj, "/spec/type").unwrap_or("ClusterIP")
}

fn needs_cluster_ip(obj: &Value) -> bool {
    svc_type(obj) != "ExternalName"
}

fn needs_node_ports(obj: &Value) -> bool {
    matches!(svc_type(obj), "NodePort" | "LoadBalancer")
        && !(svc_type(obj) == "LoadBalancer"
            && obj.pointer("/spec/allocateLoadBalancerNodePorts") == Some(&Value::Bool(false)))
}

fn needs_health_check_port(obj: &Value) -> bool {
    svc_type(obj) == "LoadBalancer" && str_at(obj, "/spec/externalTrafficPolicy") == Some("Local")
}

fn is_headless(obj: &Value) -> bool {
    crate::conventions::is_headless(str_at(obj, "/spec/clusterIP"))
}

fn ports(obj: &Value) -> &[Value] {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn default(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let ty = svc_type(obj).to_string();
    let spec = obj["spec"].as_object_mut().expect("object");
    spec.entry("type").or_insert(json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        let cfg = spec.entry("sessionAffinityConfig").or_insert(json!({}));
        if cfg.pointer("/clientIP/timeoutSeconds").is_none() {
            cfg["clientIP"] = json!({"timeoutSeconds": 10800});
        }
    }
    if ty != "ExternalName" {
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    let external = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    if external {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
            let empty = matches!(p.get("targetPort"), None | Some(Value::Null))
                || p.get("targetPort") == Some(&json!(0))
                || p.get("targetPort") == Some(&json!(""));
            if empty {
                if let Some(port) = p.get("port").cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({"loadBalancer": {}});
    }
}

/// Validates a Service as kube-apiserver does: its type and cluster IP, ports, selector, session
/// affinity and external traffic.
pub(super) fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let ty = svc_type(obj);
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, TYPES));
    }
    let cluster_ip = str_at(obj, "/spec/clusterIP").unwrap_or("");
    if ty == "ExternalName" {
        match str_at(obj, "/spec/externalName") {
            None | Some("") => errs.push(FieldError::required("spec.externalName", "")),
            Some(n) => {
                let trimmed = n.strip_suffix('.').unwrap_or(n);
                check(
                    errs,
                    "spec.externalName",
                    n,
                    names::dns1123_subdomain(trimmed),
                );
            }
        }
    } else if ports(obj).is_empty() && cluster_ip != "None" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if !cluster_ip.is_empty() && cluster_ip != "None" && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            cluster_ip,
            "must be empty, 'None', or a valid IP address",
        ));
    }
    if cluster_ip == "None" && matches!(ty, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            "None",
            format!("may not be set to 'None' for {ty} services"),
        ));
    }
    validate_ports(obj, ty, errs);
    validate_selector(obj, errs);
    validate_affinity(obj, errs);
    validate_external(obj, ty, errs);
}

/// Names (required when there are several, unique), port numbers, protocols, target ports, and
/// node ports (only for types that have them, unique per protocol).
fn validate_ports(obj: &Value, ty: &str, errs: &mut Vec<FieldError>) {
    let multi = ports(obj).len() > 1;
    let mut names_seen = HashSet::new();
    let mut port_proto = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports(obj).iter().enumerate() {
        let f = |s: &str| format!("spec.ports[{i}].{s}");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            if multi {
                errs.push(FieldError::required(f("name"), ""));
            }
        } else {
            check(errs, &f("name"), name, names::dns1123_label(name));
            if !names_seen.insert(name) {
                errs.push(FieldError::duplicate(f("name"), name));
            }
        }
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                f("port"),
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            errs.push(FieldError::not_supported(f("protocol"), proto, PROTOCOLS));
        }
        if !port_proto.insert((port, proto)) {
            errs.push(FieldError::duplicate(
                f(""),
                json!({"port": port, "protocol": proto}),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errs.push(FieldError::invalid(
                        f("targetPort"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            Some(Value::String(s)) => check(errs, &f("targetPort"), s, names::iana_svc_name(s)),
            _ => {}
        }
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                errs.push(FieldError::forbidden(
                    f("nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !(1..=65535).contains(&np) {
                errs.push(FieldError::invalid(
                    f("nodePort"),
                    np,
                    "must be between 1 and 65535, inclusive",
                ));
            } else if !node_ports.insert((np, proto)) {
                errs.push(FieldError::duplicate(f("nodePort"), np));
            }
        }
    }
}

fn validate_selector(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(sel) = obj.pointer("/spec/selector").and_then(Value::as_object) {
        for (k, v) in sel {
            check(errs, "spec.selector", k, names::qualified_name(k));
            let v = v.as_str().unwrap_or("");
            check(
                errs,
                &format!("spec.selector.{k}"),
                v,
                names::label_value(v),
            );
        }
    }
}

fn validate_affinity(obj: &Value, errs: &mut Vec<FieldError>) {
    let affinity = str_at(obj, "/spec/sessionAffinity").unwrap_or("None");
    if !["None", "ClientIP"].contains(&affinity) {
        errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            affinity,
            &["ClientIP", "None"],
        ));
    }
    if let Some(t) = obj
        .pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
        .and_then(Value::as_i64)
    {
        if affinity != "ClientIP" {
            errs.push(FieldError::forbidden(
                "spec.sessionAffinityConfig",
                "must not be set when `sessionAffinity` is None",
            ));
        } else if !(1..=86400).contains(&t) {
            errs.push(FieldError::invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                t,
                "must be greater than 0 and less than 86400",
            ));
        }
    }
}

/// External IPs and the traffic policies.
fn validate_external(obj: &Value, ty: &str, errs: &mut Vec<FieldError>) {
    if let Some(ips) = obj.pointer("/spec/externalIPs").and_then(Value::as_array) {
        for (i, ip) in ips.iter().enumerate() {
            let s = ip.as_str().unwrap_or("");
            if s.parse::<IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("spec.externalIPs[{i}]"),
                    s,
                    "must be a valid IP address",
                ));
            }
        }
    }
    for (ptr, field) in [
        ("/spec/internalTrafficPolicy", "spec.internalTrafficPolicy"),
        ("/spec/externalTrafficPolicy", "spec.externalTrafficPolicy"),
    ] {
        if let Some(v) = str_at(obj, ptr) {
            if !["Cluster", "Local"].contains(&v) {
                errs.push(FieldError::not_supported(field, v, &["Cluster", "Local"]));
            }
        }
    }
    if str_at(obj, "/spec/externalTrafficPolicy").is_some()
        && !matches!(ty, "NodePort" | "LoadBalancer")
        && obj
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::invalid(
            "spec.externalTrafficPolicy",
            str_at(obj, "/spec/externalTrafficPolicy").unwrap_or(""),
            "may only be set for externally-accessible services",
        ));
    }
}

/// On update, what the client left empty keeps what the Service was given (kube-apiserver's
/// `patchAllocatedValues`), and what the new type no longer uses is dropped if the client did not
/// change it (`dropTypeDependentFields`).
pub(super) fn carry_allocations(old: &Value, new: &mut Value) {
    if needs_cluster_ip(old)
        && needs_cluster_ip(new)
        && str_at(new, "/spec/clusterIP").unwrap_or("").is_empty()
    {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                new["spec"][f] = v.clone();
            }
        }
    }
    if needs_cluster_ip(old) && !needs_cluster_ip(new) {
        let spec = new["spec"].as_object_mut().expect("object");
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(f) == old.pointer(&format!("/spec/{f}")) {
                spec.remove(f);
            }
        }
    }
    let old_ports: Vec<(i64, String, i64)> = ports(old)
        .iter()
        .filter_map(|p| {
            let np = p.get("nodePort")?.as_i64()?;
            Some((
                p.get("port")?.as_i64()?,
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
                np,
            ))
        })
        .collect();
    let keep = needs_node_ports(new);
    if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            let old_np = old_ports
                .iter()
                .find(|(op, opr, _)| *op == port && *opr == proto)
                .map(|o| o.2);
            let cur = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            match (keep, cur, old_np) {
                (true, None, Some(np)) => {
                    p.insert("nodePort".into(), json!(np));
                }
                (false, Some(c), Some(np)) if c == np => {
                    p.remove("nodePort");
                }
                _ => {}
            }
        }
    }
    let hc = old.pointer("/spec/healthCheckNodePort").cloned();
    if needs_health_check_port(new) && new.pointer("/spec/healthCheckNodePort").is_none() {
        if let Some(hc) = hc {
            new["spec"]["healthCheckNodePort"] = hc;
        }
    } else if !needs_health_check_port(new)
        && new.pointer("/spec/healthCheckNodePort") == hc.as_ref()
    {
        if let Some(spec) = new["spec"].as_object_mut() {
            spec.remove("healthCheckNodePort");
        }
    }
}

pub(super) fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if needs_cluster_ip(old) && needs_cluster_ip(new) {
        let (o, n) = (
            str_at(old, "/spec/clusterIP"),
            str_at(new, "/spec/clusterIP"),
        );
        if o != n {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                n.unwrap_or(""),
                "may not change once set",
            ));
        }
    }
}

fn alloc_error(field: &str, value: impl Into<Value>, e: AllocError) -> FieldError {
    let value = value.into();
    match e {
        AllocError::IpTaken | AllocError::OutOfRange(_) => FieldError::invalid(
            field,
            value.clone(),
            format!(
                "failed to allocate IP {}: {e}",
                value.as_str().unwrap_or_default()
            ),
        ),
        AllocError::PortTaken | AllocError::PortOutOfRange(_) => {
            FieldError::invalid(field, value, e.to_string())
        }
        AllocError::Full => FieldError::invalid(
            field,
            value,
            "range is full: no free addresses or ports remain",
        ),
    }
}

/// Takes the ClusterIP and NodePorts the Service needs and writes them into it. On update
/// (`old` given) what the old object already holds is not taken again. On error nothing is kept.
pub(super) fn allocate(
    a: &mut Allocators,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<Claims, Vec<FieldError>> {
    let held = old.map(claims).unwrap_or_default();
    let mut taken = Claims::default();
    let result = allocate_into(a, obj, &held, &mut taken);
    if result.is_err() {
        for ip in &taken.ips {
            a.ips.release(*ip);
        }
        for p in &taken.ports {
            a.ports.release(*p);
        }
    }
    result.map(|()| taken)
}

/// The ClusterIP: a requested one (unless the Service already holds it) or the next free one,
/// in the cluster's single family.
fn allocate_cluster_ip(
    a: &mut Allocators,
    obj: &mut Value,
    held: &Claims,
    taken: &mut Claims,
) -> Result<(), Vec<FieldError>> {
    let family = if a.ips.cidr().addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    if !needs_cluster_ip(obj) {
        return Ok(());
    }
    if let Some(fams) = obj.pointer("/spec/ipFamilies").and_then(Value::as_array) {
        for (i, f) in fams.iter().enumerate() {
            if f.as_str() != Some(family) {
                return Err(vec![FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    f.clone(),
                    "not configured on this cluster",
                )]);
            }
        }
    }
    let requested = str_at(obj, "/spec/clusterIP").unwrap_or("").to_string();
    let ip = match requested.as_str() {
        "None" => "None".to_string(),
        "" => {
            let ip = a
                .ips
                .allocate_next()
                .map_err(|e| vec![alloc_error("spec.clusterIPs", "", e)])?;
            taken.ips.push(ip);
            ip.to_string()
        }
        s => {
            let ip: IpAddr = s.parse().map_err(|_| {
                vec![FieldError::invalid(
                    "spec.clusterIPs[0]",
                    s,
                    "must be a valid IP address",
                )]
            })?;
            if !held.ips.contains(&ip) {
                a.ips
                    .allocate(ip)
                    .map_err(|e| vec![alloc_error("spec.clusterIPs[0]", s, e)])?;
                taken.ips.push(ip);
            }
            ip.to_string()
        }
    };
    let spec = &mut obj["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    spec["ipFamilies"] = json!([family]);
    spec["ipFamilyPolicy"] = json!("SingleStack");
    Ok(())
}

/// Every port's NodePort: a requested one (unless held, or already taken for the same port
/// number over another protocol) or the next free one.
fn allocate_node_ports(
    a: &mut Allocators,
    obj: &mut Value,
    held: &Claims,
    taken: &mut Claims,
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut mine: Vec<u16> = Vec::new();
    if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
        for (i, p) in ports.iter_mut().enumerate() {
            let want = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            match want {
                None => match a.ports.allocate_next() {
                    Ok(n) => {
                        taken.ports.push(n);
                        mine.push(n);
                        p["nodePort"] = json!(n);
                    }
                    Err(e) => errs.push(alloc_error(&format!("spec.ports[{i}].nodePort"), 0, e)),
                },
                Some(n) => {
                    let n = n as u16;
                    // The same node port may serve one port number over several protocols.
                    if held.ports.contains(&n) || mine.contains(&n) {
                        continue;
                    }
                    match a.ports.allocate(n) {
                        Ok(()) => {
                            taken.ports.push(n);
                            mine.push(n);
                        }
                        Err(e) => {
                            errs.push(alloc_error(&format!("spec.ports[{i}].nodePort"), n, e))
                        }
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn allocate_into(
    a: &mut Allocators,
    obj: &mut Value,
    held: &Claims,
    taken: &mut Claims,
) -> Result<(), Vec<FieldError>> {
    allocate_cluster_ip(a, obj, held, taken)?;
    if needs_node_ports(obj) {
        allocate_node_ports(a, obj, held, taken)?;
    }
    if needs_health_check_port(obj) {
        match obj
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
        {
            Some(n) if held.ports.contains(&(n as u16)) => {}
            Some(n) => {
                a.ports
                    .allocate(n as u16)
                    .map_err(|e| vec![alloc_error("spec.healthCheckNodePort", n, e)])?;
                taken.ports.push(n as u16);
            }
            None => {
                let n = a
                    .ports
                    .allocate_next()
                    .map_err(|e| vec![alloc_error("spec.healthCheckNodePort", 0, e)])?;
                taken.ports.push(n);
                obj["spec"]["healthCheckNodePort"] = json!(n);
            }
        }
    }
    Ok(())
}

/// The ClusterIP and node ports a stored Service holds.
pub(super) fn claims(obj: &Value) -> Claims {
    let mut c = Claims::default();
    if needs_cluster_ip(obj) && !is_headless(obj) {
        c.ips
            .extend(str_at(obj, "/spec/clusterIP").and_then(|s| s.parse::<IpAddr>().ok()));
    }
    for p in ports(obj) {
        if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
            if n > 0 && !c.ports.contains(&(n as u16)) {
                c.ports.push(n as u16);
            }
        }
    }
    if let Some(n) = obj
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
    {
        c.ports.push(n as u16);
    }
    c
}
