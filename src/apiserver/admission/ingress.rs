//! Ingress validation (networking.k8s.io/v1), as kube-apiserver: hosts, path types and paths,
//! backends, TLS.

use serde_json::Value;

use switchyard_proxy::router::annotations;

use super::{check, names};
use crate::apiserver::error::FieldError;

const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
/// Sequences kube-apiserver refuses in Exact and Prefix paths.
const BAD_PATH_PARTS: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const BAD_PATH_ENDS: &[&str] = &["/..", "/."];

fn validate_host(field: &str, host: &str, errs: &mut Vec<FieldError>) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        errs.push(FieldError::invalid(
            field,
            host,
            "must be a DNS name, not an IP address",
        ));
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        errs.push(FieldError::invalid(
            field,
            host,
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain",
        ));
        return;
    }
    check(errs, field, host, names::dns1123_subdomain(name));
}

fn validate_backend(field: &str, b: &Value, errs: &mut Vec<FieldError>) {
    match (b.get("service"), b.get("resource")) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            field,
            "",
            "cannot set both resource and service backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            field,
            "",
            "resource or service backend is required",
        )),
        (None, Some(r)) => {
            if r.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                errs.push(FieldError::required(format!("{field}.resource.kind"), ""));
            }
        }
        (Some(s), None) => {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{field}.service.name"), ""));
            } else {
                check(
                    errs,
                    &format!("{field}.service.name"),
                    name,
                    names::dns1035_label(name),
                );
            }
            let pf = format!("{field}.service.port");
            let pname = s
                .pointer("/port/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            let pnum = s
                .pointer("/port/number")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            match (pname, pnum) {
                (Some(_), Some(_)) => errs.push(FieldError::invalid(
                    &pf,
                    "",
                    "cannot set both port name & port number",
                )),
                (None, None) => errs.push(FieldError::invalid(
                    &pf,
                    "",
                    "port name or number is required",
                )),
                (Some(n), None) => check(errs, &format!("{pf}.name"), n, names::iana_svc_name(n)),
                (None, Some(n)) => {
                    if !(1..=65535).contains(&n) {
                        errs.push(FieldError::invalid(
                            format!("{pf}.number"),
                            n,
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
        }
    }
}

pub(super) fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    // Our router's annotations are typed values: a bad one is refused here rather than
    // ignored at the router.
    if let Some(a) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let ours = a
            .iter()
            .filter(|(k, _)| k.starts_with(annotations::PREFIX))
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)));
        if let Err(e) = annotations::parse(ours) {
            errs.push(FieldError::invalid("metadata.annotations", "", e));
        }
    }
    if let Some(c) = obj
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
    {
        check(
            errs,
            "spec.ingressClassName",
            c,
            names::dns1123_subdomain(c),
        );
    }
    if let Some(b) = obj.pointer("/spec/defaultBackend") {
        validate_backend("spec.defaultBackend", b, errs);
    }
    let rules = obj
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if rules.is_empty() && obj.pointer("/spec/defaultBackend").is_none() {
        errs.push(FieldError::invalid(
            "spec",
            "",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(h) = rule
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
        {
            validate_host(&format!("spec.rules[{i}].host"), h, errs);
        }
        let Some(http) = rule.get("http") else {
            continue;
        };
        let paths = http
            .get("paths")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if paths.is_empty() {
            errs.push(FieldError::required(
                format!("spec.rules[{i}].http.paths"),
                "",
            ));
        }
        for (j, p) in paths.iter().enumerate() {
            validate_path(&format!("spec.rules[{i}].http.paths[{j}]"), p, errs);
        }
    }
    validate_tls(obj, errs);
}

/// One HTTP path of a rule: its type, the path for that type, and its backend. `at` is the
/// path's field (`spec.rules[0].http.paths[1]`).
fn validate_path(at: &str, p: &Value, errs: &mut Vec<FieldError>) {
    let f = |s: &str| format!("{at}.{s}");
    let path = p.get("path").and_then(Value::as_str).unwrap_or("");
    match p.get("pathType").and_then(Value::as_str) {
        None => errs.push(FieldError::required(
            f("pathType"),
            "pathType must be specified",
        )),
        Some(t) if !PATH_TYPES.contains(&t) => {
            errs.push(FieldError::not_supported(f("pathType"), t, PATH_TYPES))
        }
        Some("ImplementationSpecific") => {
            if !path.is_empty() && !path.starts_with('/') {
                errs.push(FieldError::invalid(
                    f("path"),
                    path,
                    "must be an absolute path",
                ));
            }
        }
        Some(_) => {
            if !path.starts_with('/') {
                errs.push(FieldError::invalid(
                    f("path"),
                    path,
                    "must be an absolute path",
                ));
            } else if let Some(bad) = BAD_PATH_PARTS.iter().find(|b| path.contains(**b)) {
                errs.push(FieldError::invalid(
                    f("path"),
                    path,
                    format!("must not contain '{bad}'"),
                ));
            } else if let Some(bad) = BAD_PATH_ENDS.iter().find(|b| path.ends_with(**b)) {
                errs.push(FieldError::invalid(
                    f("path"),
                    path,
                    format!("cannot end with '{bad}'"),
                ));
            }
        }
    }
    match p.get("backend") {
        Some(b) => validate_backend(&f("backend"), b, errs),
        None => errs.push(FieldError::required(f("backend"), "")),
    }
}

/// TLS hosts and secret names.
fn validate_tls(obj: &Value, errs: &mut Vec<FieldError>) {
    for (i, tls) in obj
        .pointer("/spec/tls")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .enumerate()
    {
        for (j, h) in tls
            .get("hosts")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .enumerate()
        {
            validate_host(
                &format!("spec.tls[{i}].hosts[{j}]"),
                h.as_str().unwrap_or(""),
                errs,
            );
        }
        if let Some(s) = tls
            .get("secretName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            check(
                errs,
                &format!("spec.tls[{i}].secretName"),
                s,
                names::dns1123_subdomain(s),
            );
        }
    }
}
