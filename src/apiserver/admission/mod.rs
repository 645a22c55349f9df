//! Admission: defaulting and validation with kube-apiserver's rules for the kinds we serve, and
//! the ClusterIP/NodePort allocation that Service writes need.
//!
//! Objects arrive here already decoded into their k8s-openapi type and back (so field types are
//! right); this module checks values and relations between fields.

pub mod allocator;
mod endpointslice;
mod event;
mod ingress;
pub mod names;
mod pod;
mod rbac;
mod service;

use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::crd;
use super::error::{ApiError, FieldError};
use super::resources::{Builtin, Resource};
use allocator::{IpAllocator, PortAllocator};

/// What the server's flags say about admission.
#[derive(Clone, Debug)]
pub struct Policy {
    pub allow_loopback_endpoints: bool,
}

/// Addresses and ports a write took, or that a stored object holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

impl Claims {
    fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.ports.is_empty()
    }
}

pub struct Allocators {
    pub ips: IpAllocator,
    pub ports: PortAllocator,
}

pub struct Admission {
    policy: Policy,
    allocators: Mutex<Allocators>,
}

/// The result of admitting an update: what it newly took, and what to give back once it is stored.
#[derive(Debug, Default)]
pub struct UpdateClaims {
    pub taken: Claims,
    pub freed: Claims,
}

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The strings of the array at `ptr` (others skipped; none when it is not an array).
pub(crate) fn strings_at(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Appends `problem` as an Invalid error on `field` when there is one.
pub(crate) fn check(errs: &mut Vec<FieldError>, field: &str, value: &str, problem: Option<String>) {
    if let Some(p) = problem {
        errs.push(FieldError::invalid(field, value, p));
    }
}

fn invalid(r: &Resource, obj: &Value, errs: Vec<FieldError>) -> Result<(), ApiError> {
    if errs.is_empty() {
        return Ok(());
    }
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    Err(ApiError::invalid(&r.group, &r.kind, name, &errs))
}

/// RBAC objects' rules and references.
fn rbac_validate(b: Builtin, obj: &Value, errs: &mut Vec<FieldError>) {
    match b {
        Builtin::Role => rbac::validate_rules(obj, false, errs),
        Builtin::ClusterRole => rbac::validate_rules(obj, true, errs),
        Builtin::RoleBinding => rbac::validate_binding(obj, false, errs),
        Builtin::ClusterRoleBinding => rbac::validate_binding(obj, true, errs),
        _ => {}
    }
}

/// The object's size limit for maps of user data (annotations), as kube-apiserver.
const ANNOTATIONS_MAX: usize = 256 * 1024;
/// Secrets and ConfigMaps hold at most 1 MiB.
const DATA_MAX: usize = 1024 * 1024;

fn validate_meta(r: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let problem = match r.builtin {
            Some(Builtin::Service) => names::dns1035_label(name),
            Some(Builtin::Namespace) => names::dns1123_label(name),
            Some(
                Builtin::Role
                | Builtin::ClusterRole
                | Builtin::RoleBinding
                | Builtin::ClusterRoleBinding,
            ) => rbac::path_segment_name(name),
            _ => names::dns1123_subdomain(name),
        };
        check(errs, "metadata.name", name, problem);
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            check(errs, "metadata.labels", k, names::qualified_name(k));
            let v = v.as_str().unwrap_or("");
            check(
                errs,
                &format!("metadata.labels.{k}"),
                v,
                names::label_value(v),
            );
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            check(
                errs,
                "metadata.annotations",
                k,
                names::qualified_name(&k.to_lowercase()),
            );
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                "",
                format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
            ));
        }
    }
    if let Some(fins) = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
    {
        for f in fins.iter().filter_map(Value::as_str) {
            check(errs, "metadata.finalizers", f, names::qualified_name(f));
        }
    }
}

fn validate_data_keys(obj: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    let mut total = 0;
    for field in fields {
        if let Some(m) = obj.get(*field).and_then(Value::as_object) {
            for (k, v) in m {
                let ok = !k.is_empty()
                    && k.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
                if !ok || k == "." || k == ".." {
                    errs.push(FieldError::invalid(
                        format!("{field}[{k}]"),
                        k.as_str(),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
                total += v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > DATA_MAX {
        errs.push(FieldError::invalid(
            "data",
            "",
            format!("Too long: must have at most {DATA_MAX} bytes"),
        ));
    }
}

fn validate_secret(obj: &mut Value, errs: &mut Vec<FieldError>) {
    use base64::Engine;
    // stringData is write-only: it is folded into data, as kube-apiserver does.
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        let data = obj
            .as_object_mut()
            .expect("object")
            .entry("data")
            .or_insert_with(|| json!({}));
        if let Value::Object(d) = data {
            for (k, v) in sd {
                let text = v.as_str().unwrap_or_default();
                d.insert(
                    k,
                    Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
    if obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        obj["type"] = json!("Opaque");
    }
    validate_data_keys(obj, &["data"], errs);
    let needs: &[&str] = match str_at(obj, "/type") {
        Some("kubernetes.io/tls") => &["tls.crt", "tls.key"],
        Some("kubernetes.io/basic-auth") => &[],
        Some("kubernetes.io/dockerconfigjson") => &[".dockerconfigjson"],
        _ => &[],
    };
    for k in needs {
        if obj
            .pointer(&format!("/data/{}", k.replace('/', "~1")))
            .is_none()
        {
            errs.push(FieldError::required(format!("data[{k}]"), ""));
        }
    }
}

fn validate_ingress_class(obj: &Value, errs: &mut Vec<FieldError>) {
    match str_at(obj, "/spec/controller") {
        None | Some("") => errs.push(FieldError::required("spec.controller", "")),
        Some(c) if c.len() > 250 => errs.push(FieldError::invalid(
            "spec.controller",
            c,
            "must be no more than 250 characters",
        )),
        Some(c) => {
            let (domain, _) = c.split_once('/').unwrap_or((c, ""));
            if !c.contains('/') || names::dns1123_subdomain(domain).is_some() {
                errs.push(FieldError::invalid(
                    "spec.controller",
                    c,
                    "must be a domain-prefixed path (such as \"acme.io/foo\")",
                ));
            }
        }
    }
}

fn validate_node(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut cidrs: Vec<&str> = Vec::new();
    cidrs.extend(str_at(obj, "/spec/podCIDR"));
    if let Some(list) = obj.pointer("/spec/podCIDRs").and_then(Value::as_array) {
        cidrs.extend(list.iter().filter_map(Value::as_str));
    }
    for c in cidrs {
        if c.parse::<allocator::Cidr>().is_err() {
            errs.push(FieldError::invalid(
                "spec.podCIDRs",
                c,
                "must be a valid CIDR",
            ));
        }
    }
}

/// A custom object against its CRD version's schema and rules (transition rules against the
/// old object on an update).
fn validate_custom(r: &Resource, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    if let Some(v) = &r.custom {
        v.schema
            .validate(obj, old, &crd::schema::Path::Root(""), errs);
    }
}

/// Fields that may not change once an object has them.
fn immutable(old: &Value, new: &Value, ptr: &str, field: &str, errs: &mut Vec<FieldError>) {
    let (o, n) = (old.pointer(ptr), new.pointer(ptr));
    if o.is_some() && o != n {
        errs.push(FieldError::invalid(
            field,
            n.cloned().unwrap_or(Value::Null),
            "field is immutable",
        ));
    }
}

/// Secrets and ConfigMaps marked `immutable: true` keep their data.
fn validate_immutable_data(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old.get("immutable") == Some(&Value::Bool(true)) {
        for f in ["data", "binaryData", "immutable"] {
            if old.get(f) != new.get(f) {
                errs.push(FieldError::forbidden(
                    f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
}

impl Admission {
    pub fn new(policy: Policy, allocators: Allocators) -> Self {
        Admission {
            policy,
            allocators: Mutex::new(allocators),
        }
    }

    fn allocators(&self) -> std::sync::MutexGuard<'_, Allocators> {
        self.allocators.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Defaults and validates a new object, taking what it needs from the allocators.
    pub fn create(&self, r: &Resource, obj: &mut Value) -> Result<Claims, ApiError> {
        let mut errs = Vec::new();
        validate_meta(r, obj, &mut errs);
        match r.builtin {
            Some(Builtin::Service) => {
                service::default(obj);
                service::validate(obj, &mut errs);
                invalid(r, obj, errs)?;
                let mut a = self.allocators();
                return service::allocate(&mut a, obj, None).map_err(|e| {
                    ApiError::invalid(
                        &r.group,
                        &r.kind,
                        str_at(obj, "/metadata/name").unwrap_or(""),
                        &e,
                    )
                });
            }
            Some(Builtin::Pod) => {
                pod::default(obj);
                pod::validate(obj, &mut errs);
            }
            Some(Builtin::EndpointSlice) => {
                endpointslice::default(obj);
                endpointslice::validate(obj, &self.policy, &mut errs);
            }
            Some(Builtin::Ingress) => ingress::validate(obj, &mut errs),
            Some(Builtin::IngressClass) => validate_ingress_class(obj, &mut errs),
            Some(Builtin::Secret) => validate_secret(obj, &mut errs),
            Some(Builtin::ConfigMap) => validate_data_keys(obj, &["data", "binaryData"], &mut errs),
            Some(Builtin::Node) => validate_node(obj, &mut errs),
            Some(Builtin::Event) => event::validate_core(obj, &mut errs),
            Some(Builtin::EventsV1Event) => event::validate_v1(obj, &mut errs),
            Some(Builtin::CustomResourceDefinition) => crd::admit(obj, None, &mut errs),
            Some(b) => rbac_validate(b, obj, &mut errs),
            None => validate_custom(r, obj, None, &mut errs),
        }
        invalid(r, obj, errs)?;
        Ok(Claims::default())
    }

    /// Defaults and validates an update of `old` to `new`.
    pub fn update(
        &self,
        r: &Resource,
        old: &Value,
        new: &mut Value,
    ) -> Result<UpdateClaims, ApiError> {
        let mut errs = Vec::new();
        validate_meta(r, new, &mut errs);
        match r.builtin {
            Some(Builtin::Service) => {
                service::carry_allocations(old, new);
                service::default(new);
                service::validate(new, &mut errs);
                service::validate_update(old, new, &mut errs);
                invalid(r, new, errs)?;
                let mut a = self.allocators();
                let taken = service::allocate(&mut a, new, Some(old)).map_err(|e| {
                    ApiError::invalid(
                        &r.group,
                        &r.kind,
                        str_at(new, "/metadata/name").unwrap_or(""),
                        &e,
                    )
                })?;
                let held = service::claims(new);
                let freed = service::claims(old);
                let freed = Claims {
                    ips: freed
                        .ips
                        .into_iter()
                        .filter(|i| !held.ips.contains(i))
                        .collect(),
                    ports: freed
                        .ports
                        .into_iter()
                        .filter(|p| !held.ports.contains(p))
                        .collect(),
                };
                return Ok(UpdateClaims { taken, freed });
            }
            Some(Builtin::Pod) => {
                pod::default(new);
                pod::validate(new, &mut errs);
                pod::validate_update(old, new, &mut errs);
            }
            Some(Builtin::EndpointSlice) => {
                endpointslice::default(new);
                endpointslice::validate(new, &self.policy, &mut errs);
                immutable(old, new, "/addressType", "addressType", &mut errs);
            }
            Some(Builtin::Ingress) => ingress::validate(new, &mut errs),
            Some(Builtin::IngressClass) => {
                validate_ingress_class(new, &mut errs);
                immutable(old, new, "/spec/controller", "spec.controller", &mut errs);
            }
            Some(Builtin::Secret) => {
                validate_secret(new, &mut errs);
                immutable(old, new, "/type", "type", &mut errs);
                validate_immutable_data(old, new, &mut errs);
            }
            Some(Builtin::ConfigMap) => {
                validate_data_keys(new, &["data", "binaryData"], &mut errs);
                validate_immutable_data(old, new, &mut errs);
            }
            Some(Builtin::Node) => validate_node(new, &mut errs),
            Some(Builtin::Event) => event::validate_core(new, &mut errs),
            Some(Builtin::EventsV1Event) => event::validate_v1(new, &mut errs),
            Some(b @ (Builtin::RoleBinding | Builtin::ClusterRoleBinding)) => {
                rbac_validate(b, new, &mut errs);
                rbac::validate_binding_update(old, new, &mut errs);
            }
            Some(Builtin::CustomResourceDefinition) => crd::admit(new, Some(old), &mut errs),
            Some(b) => rbac_validate(b, new, &mut errs),
            None => validate_custom(r, new, Some(old), &mut errs),
        }
        invalid(r, new, errs)?;
        Ok(UpdateClaims::default())
    }

    /// Gives back what a failed write took, or what a deleted object held.
    pub fn release(&self, claims: &Claims) {
        if claims.is_empty() {
            return;
        }
        let mut a = self.allocators();
        for ip in &claims.ips {
            a.ips.release(*ip);
        }
        for p in &claims.ports {
            a.ports.release(*p);
        }
    }

    /// What a stored object holds in the allocators (Services only).
    pub fn held(r: &Resource, obj: &Value) -> Claims {
        if r.is(Builtin::Service) {
            service::claims(obj)
        } else {
            Claims::default()
        }
    }

    /// Marks a stored object's addresses and ports as taken (at start, from the store).
    pub fn restore(&self, claims: &Claims) {
        let mut a = self.allocators();
        for ip in &claims.ips {
            let _ = a.ips.allocate(*ip);
        }
        for p in &claims.ports {
            let _ = a.ports.allocate(*p);
        }
    }

    /// The ClusterIP the `kubernetes` Service gets.
    pub fn first_cluster_ip(&self) -> IpAddr {
        self.allocators().ips.first()
    }
}
