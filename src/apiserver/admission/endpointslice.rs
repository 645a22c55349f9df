//! EndpointSlice defaulting and validation (discovery.k8s.io/v1), including kube-apiserver's
//! refusal of loopback and link-local endpoint addresses, which `--allow-loopback-endpoints`
//! lifts for loopback so local processes can back Services on one machine.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::{check, names, Policy};
use crate::apiserver::error::FieldError;

const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;

pub(super) fn default(obj: &mut Value) {
    if let Some(Value::Array(ports)) = obj.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
            p.entry("name").or_insert(json!(""));
        }
    }
}

fn check_ip(ty: &str, s: &str, policy: &Policy) -> Option<String> {
    let ip: IpAddr = match s.parse() {
        Ok(ip) => ip,
        Err(_) => return Some(format!("must be a valid {ty} address")),
    };
    if (ty == "IPv4") != ip.is_ipv4() {
        return Some(format!("must be a valid {ty} address"));
    }
    if ip.is_unspecified() {
        return Some("may not be unspecified (0.0.0.0)".into());
    }
    if ip.is_loopback() && !policy.allow_loopback_endpoints {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let link_local = match ip {
        IpAddr::V4(v) => v.is_link_local() || v.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v) => {
            (v.segments()[0] & 0xffc0) == 0xfe80 || (v.segments()[0] & 0xff0f) == 0xff02
        }
    };
    link_local.then(|| "may not be in the link-local range (169.254.0.0/16, fe80::/10)".into())
}

pub(super) fn validate(obj: &Value, policy: &Policy, errs: &mut Vec<FieldError>) {
    let ty = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    if ty.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("addressType", ty, ADDRESS_TYPES));
    }
    let endpoints = obj
        .get("endpoints")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if endpoints.len() > MAX_ENDPOINTS {
        errs.push(FieldError::invalid(
            "endpoints",
            endpoints.len(),
            format!("must have at most {MAX_ENDPOINTS} items"),
        ));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let addrs = ep
            .get("addresses")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if addrs.is_empty() {
            errs.push(FieldError::required(
                format!("endpoints[{i}].addresses"),
                "must contain at least 1 address",
            ));
        } else if addrs.len() > MAX_ADDRESSES {
            errs.push(FieldError::invalid(
                format!("endpoints[{i}].addresses"),
                addrs.len(),
                format!("must have at most {MAX_ADDRESSES} items"),
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            let s = a.as_str().unwrap_or("");
            let field = format!("endpoints[{i}].addresses[{j}]");
            let problem = match ty {
                "FQDN" => names::dns1123_subdomain(s),
                "IPv4" | "IPv6" => check_ip(ty, s, policy),
                _ => None,
            };
            check(errs, &field, s, problem);
        }
        if let Some(h) = ep.get("hostname").and_then(Value::as_str) {
            check(
                errs,
                &format!("endpoints[{i}].hostname"),
                h,
                names::dns1123_label(h),
            );
        }
        if let Some(n) = ep.get("nodeName").and_then(Value::as_str) {
            check(
                errs,
                &format!("endpoints[{i}].nodeName"),
                n,
                names::dns1123_subdomain(n),
            );
        }
    }
    let mut seen = HashSet::new();
    for (i, p) in obj
        .get("ports")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .enumerate()
    {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() {
            check(
                errs,
                &format!("ports[{i}].name"),
                name,
                names::dns1123_label(name),
            );
        }
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(format!("ports[{i}].name"), name));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            errs.push(FieldError::not_supported(
                format!("ports[{i}].protocol"),
                proto,
                PROTOCOLS,
            ));
        }
        if let Some(port) = p.get("port").and_then(Value::as_i64) {
            if !(0..=65535).contains(&port) {
                errs.push(FieldError::invalid(
                    format!("ports[{i}].port"),
                    port,
                    "must be between 0 and 65535, inclusive",
                ));
            }
        }
    }
}
