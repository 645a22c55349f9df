//! Pod defaulting and validation: the parts of kube-apiserver's rules that networking depends on
//! (containers, ports, names) and the rule that a Pod's spec barely changes after creation.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{check, names};
use crate::apiserver::error::FieldError;

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn default_container(c: &mut serde_json::Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let tag = image.rsplit('/').next().unwrap_or("");
    let latest = !tag.contains(':') || tag.ends_with(":latest");
    let digest = image.contains('@');
    let policy = if latest && !digest {
        "Always"
    } else {
        "IfNotPresent"
    };
    c.entry("imagePullPolicy").or_insert(json!(policy));
    c.entry("terminationMessagePath")
        .or_insert(json!("/dev/termination-log"));
    c.entry("terminationMessagePolicy").or_insert(json!("File"));
    c.entry("resources").or_insert(json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
        }
    }
}

pub(super) fn default(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = obj["spec"].as_object_mut().expect("object");
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    spec.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec.entry("securityContext").or_insert(json!({}));
    spec.entry("enableServiceLinks").or_insert(json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            cs.iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(default_container);
        }
    }
}

pub(super) fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut seen = HashSet::new();
    for list in ["initContainers", "containers"] {
        let Some(cs) = obj
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, c) in cs.iter().enumerate() {
            let f = |s: &str| format!("spec.{list}[{i}].{s}");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(f("name"), ""));
            } else {
                check(errs, &f("name"), name, names::dns1123_label(name));
                if !seen.insert(name.to_string()) {
                    errs.push(FieldError::duplicate(f("name"), name));
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                errs.push(FieldError::required(f("image"), ""));
            }
            let mut port_names = HashSet::new();
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .enumerate()
            {
                let pf = |s: &str| format!("spec.{list}[{i}].ports[{j}].{s}");
                let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    errs.push(FieldError::invalid(
                        pf("containerPort"),
                        cp,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(hp) = p.get("hostPort").and_then(Value::as_i64) {
                    if !(0..=65535).contains(&hp) {
                        errs.push(FieldError::invalid(
                            pf("hostPort"),
                            hp,
                            "must be between 0 and 65535, inclusive",
                        ));
                    }
                }
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                if !PROTOCOLS.contains(&proto) {
                    errs.push(FieldError::not_supported(pf("protocol"), proto, PROTOCOLS));
                }
                if let Some(n) = p.get("name").and_then(Value::as_str) {
                    check(errs, &pf("name"), n, names::iana_svc_name(n));
                    if !port_names.insert(n) {
                        errs.push(FieldError::duplicate(pf("name"), n));
                    }
                }
            }
        }
    }
    for (ptr, field) in [
        ("/spec/hostname", "spec.hostname"),
        ("/spec/subdomain", "spec.subdomain"),
    ] {
        if let Some(v) = obj.pointer(ptr).and_then(Value::as_str) {
            check(errs, field, v, names::dns1123_label(v));
        }
    }
    if let Some(n) = obj.pointer("/spec/nodeName").and_then(Value::as_str) {
        check(errs, "spec.nodeName", n, names::dns1123_subdomain(n));
    }
    if let Some(ips) = obj.pointer("/status/podIPs").and_then(Value::as_array) {
        for (i, ip) in ips.iter().enumerate() {
            let s = ip.get("ip").and_then(Value::as_str).unwrap_or("");
            if s.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("status.podIPs[{i}].ip"),
                    s,
                    "must be a valid IP address",
                ));
            }
        }
    }
    if let Some(s) = obj.pointer("/status/podIP").and_then(Value::as_str) {
        if s.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                "status.podIP",
                s,
                "must be a valid IP address",
            ));
        }
    }
}

/// The spec of a Pod may change only in its images, activeDeadlineSeconds and tolerations.
pub(super) fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let strip = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = s.get_mut(list) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
        }
        s
    };
    if strip(old) != strip(new) {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)",
        ));
    }
}
