//! CustomResourceDefinitions (apiextensions.k8s.io/v1): a CRD is checked and defaulted here
//! ([`admit`]), and once stored, each of its served versions becomes an entry of the kinds
//! table ([`served`]) with its structural schema ([`schema`]), CEL rules ([`cel`]) and printer
//! columns ([`jsonpath`]) compiled once. Its objects are then handled like any other kind's by
//! the registry: the entry's `normalize` prunes and defaults them, admission validates them.
//!
//! Versions convert with the `None` strategy: an object is stored as written and read through
//! any served version with that version's `apiVersion` ([`present`]).

pub mod cel;
mod eval;
mod format;
pub mod jsonpath;
pub mod schema;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::admission::names;
use super::error::FieldError;
use super::resources::Resource;
use super::schema::ListSchema;
use jsonpath::JsonPath;
use schema::{ListType, Schema};

/// Holds a CRD while its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Groups that belong to the Kubernetes project need this annotation (its API review).
const APPROVAL: &str = "api-approved.kubernetes.io";

/// A printer column (`additionalPrinterColumns`).
#[derive(Debug)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub path: JsonPath,
}

/// What the server keeps of one served version of a CRD.
#[derive(Debug)]
pub struct Version {
    pub schema: Schema,
    /// The `openAPIV3Schema` as written, for `/openapi/v3`.
    pub openapi: Value,
    pub columns: Vec<Column>,
    /// Where the `scale` subresource reads and writes replicas, if the version has it.
    pub scale: Option<Scale>,
    /// The kind of its lists (`spec.names.listKind`).
    pub list_kind: String,
    /// The CRD serves other versions too: objects read through this one get its apiVersion.
    pub multi: bool,
    /// The CRD is being deleted: its objects are deleted and no new ones are made.
    pub terminating: bool,
}

/// A `scale` subresource: JSON pointers to the replica counts and the label selector.
#[derive(Debug)]
pub struct Scale {
    spec: String,
    status: String,
    selector: Option<String>,
}

/// `.spec.replicas` as a JSON pointer.
fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

impl Scale {
    fn of(v: &Value) -> Option<Scale> {
        let s = v.pointer("/subresources/scale")?;
        Some(Scale {
            spec: pointer(str_at(s, "/specReplicasPath")),
            status: pointer(str_at(s, "/statusReplicasPath")),
            selector: s
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(pointer),
        })
    }

    /// The autoscaling/v1 Scale of a custom object.
    pub fn read(&self, obj: &Value) -> Value {
        let meta = &obj["metadata"];
        let mut status =
            json!({"replicas": obj.pointer(&self.status).and_then(Value::as_i64).unwrap_or(0)});
        if let Some(sel) = self
            .selector
            .as_deref()
            .and_then(|p| obj.pointer(p))
            .and_then(Value::as_str)
        {
            status["selector"] = json!(sel);
        }
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj.pointer(&self.spec).and_then(Value::as_i64).unwrap_or(0)},
            "status": status,
        })
    }

    /// Writes the replicas a Scale asks for into the object (creating the parents it lacks).
    pub fn write(&self, obj: &mut Value, replicas: i64) {
        let mut cur = obj;
        let parts: Vec<&str> = self.spec.trim_start_matches('/').split('/').collect();
        for (n, p) in parts.iter().enumerate() {
            if !cur.is_object() {
                *cur = json!({});
            }
            let m = cur.as_object_mut().expect("made an object above");
            if n + 1 == parts.len() {
                m.insert(p.to_string(), json!(replicas));
                return;
            }
            cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
        }
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    super::admission::strings_at(v, ptr)
}

/// Defaults and validates a CRD (and its change from `old`), and sets the status an accepted
/// CRD has: its accepted names, `NamesAccepted` and `Established`, its stored versions.
pub fn admit(obj: &mut Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    default(obj);
    let group = str_at(obj, "/spec/group").to_string();
    let plural = str_at(obj, "/spec/names/plural").to_string();
    let name = str_at(obj, "/metadata/name");
    if name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group.as_str(),
            "should be a domain with at least one dot",
        ));
    } else if let Some(p) = names::dns1123_subdomain(&group) {
        errs.push(FieldError::invalid("spec.group", group.as_str(), p));
    }
    let protected = group.ends_with(".k8s.io")
        || group.ends_with(".kubernetes.io")
        || group == "k8s.io"
        || group == "kubernetes.io";
    if protected && str_at(obj, &format!("/metadata/annotations/{APPROVAL}")).is_empty() {
        errs.push(FieldError::required(
            format!("metadata.annotations[{APPROVAL}]"),
            format!("protected groups must have approval annotation \"{APPROVAL}\", see https://github.com/kubernetes/enhancements/pull/1111"),
        ));
    }
    validate_names(obj, errs);
    match str_at(obj, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errs.push(FieldError::required("spec.scope", "")),
        other => errs.push(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    if let Some(old) = old {
        for (ptr, field) in [
            ("/spec/scope", "spec.scope"),
            ("/spec/group", "spec.group"),
            ("/spec/names/plural", "spec.names.plural"),
        ] {
            if old.pointer(ptr) != obj.pointer(ptr) {
                errs.push(FieldError::invalid(
                    field,
                    obj.pointer(ptr).cloned().unwrap_or(Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
    match str_at(obj, "/spec/conversion/strategy") {
        "None" => {}
        "Webhook" => errs.push(FieldError::forbidden(
            "spec.conversion.strategy",
            "conversion webhooks are not supported by this server: use the None strategy",
        )),
        other => errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            other,
            &["None", "Webhook"],
        )),
    }
    let versions = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!([]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage: Vec<&str> = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .filter_map(|v| v["name"].as_str())
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    for (n, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{n}]");
        let vname = str_at(v, "/name");
        if let Some(p) = names::dns1035_label(vname) {
            errs.push(FieldError::invalid(format!("{path}.name"), vname, p));
        }
        if versions[..n].iter().any(|o| str_at(o, "/name") == vname) {
            errs.push(FieldError::duplicate(format!("{path}.name"), vname));
        }
        compile_version(v, &path, errs);
    }
    if errs.is_empty() {
        set_status(obj, old, storage.first().copied().unwrap_or(""));
    }
}

fn default(obj: &mut Value) {
    let kind = str_at(obj, "/spec/names/kind").to_string();
    if let Some(names) = obj
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        if names
            .get("singular")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
            && !kind.is_empty()
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if obj.pointer("/spec/conversion/strategy").is_none() {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("conversion".into(), json!({"strategy": "None"}));
        }
    }
}

fn validate_names(obj: &Value, errs: &mut Vec<FieldError>) {
    let plural = str_at(obj, "/spec/names/plural");
    let kind = str_at(obj, "/spec/names/kind");
    for (field, value) in [
        ("plural", plural),
        ("singular", str_at(obj, "/spec/names/singular")),
    ] {
        if value.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if let Some(p) = names::dns1035_label(value) {
            errs.push(FieldError::invalid(format!("spec.names.{field}"), value, p));
        }
    }
    for (field, value) in [
        ("kind", kind),
        ("listKind", str_at(obj, "/spec/names/listKind")),
    ] {
        if value.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if names::dns1035_label(&value.to_lowercase()).is_some() {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                value,
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        }
    }
    if kind == str_at(obj, "/spec/names/listKind") {
        errs.push(FieldError::invalid(
            "spec.names.listKind",
            kind,
            "kind and listKind cannot be the same",
        ));
    }
    for (n, s) in strings(obj, "/spec/names/shortNames").iter().enumerate() {
        if let Some(p) = names::dns1035_label(s) {
            errs.push(FieldError::invalid(
                format!("spec.names.shortNames[{n}]"),
                s.as_str(),
                p,
            ));
        }
    }
}

/// Compiles one version's schema, subresources and columns (errors reported under `path`).
fn compile_version(v: &Value, path: &str, errs: &mut Vec<FieldError>) -> (Schema, Vec<Column>) {
    let schema = match v.pointer("/schema/openAPIV3Schema") {
        Some(s) => Schema::compile(s, &format!("{path}.schema.openAPIV3Schema"), errs),
        None => {
            errs.push(FieldError::required(
                format!("{path}.schema.openAPIV3Schema"),
                "schemas are required",
            ));
            Schema::any()
        }
    };
    if let Some(scale) = v.pointer("/subresources/scale") {
        for (field, prefix) in [
            ("specReplicasPath", ".spec."),
            ("statusReplicasPath", ".status."),
        ] {
            let p = str_at(scale, &format!("/{field}"));
            if !p.starts_with(prefix) {
                errs.push(FieldError::invalid(
                    format!("{path}.subresources.scale.{field}"),
                    p,
                    format!(
                        "should be a json path under {}",
                        prefix.trim_end_matches('.')
                    ),
                ));
            }
        }
    }
    let mut columns = Vec::new();
    if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
        for (n, c) in cols.iter().enumerate() {
            let cpath = format!("{path}.additionalPrinterColumns[{n}]");
            let name = str_at(c, "/name");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{cpath}.name"), ""));
            }
            let ty = str_at(c, "/type");
            if !["integer", "number", "string", "boolean", "date"].contains(&ty) {
                errs.push(FieldError::not_supported(
                    format!("{cpath}.type"),
                    ty,
                    &["boolean", "date", "integer", "number", "string"],
                ));
            }
            let priority = c.get("priority").and_then(Value::as_i64).unwrap_or(0);
            if priority < 0 {
                errs.push(FieldError::invalid(
                    format!("{cpath}.priority"),
                    priority,
                    "must be greater than or equal to 0",
                ));
            }
            match JsonPath::parse(str_at(c, "/jsonPath")) {
                Ok(p) => columns.push(Column {
                    name: name.to_string(),
                    ty: ty.to_string(),
                    format: str_at(c, "/format").to_string(),
                    description: str_at(c, "/description").to_string(),
                    priority,
                    path: p,
                }),
                Err(e) => errs.push(FieldError::invalid(
                    format!("{cpath}.jsonPath"),
                    str_at(c, "/jsonPath"),
                    e,
                )),
            }
        }
    }
    (schema, columns)
}

fn condition(ty: &str, reason: &str, message: &str, old: Option<&Value>, now: &str) -> Value {
    let since = old
        .and_then(|o| o.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty && c["status"] == "True"))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastTransitionTime": since})
}

fn set_status(obj: &mut Value, old: Option<&Value>, storage: &str) {
    let now = crate::time::now();
    let mut stored = old
        .map(|o| strings(o, "/status/storedVersions"))
        .unwrap_or_default();
    if !storage.is_empty() && !stored.iter().any(|s| s == storage) {
        stored.push(storage.to_string());
    }
    let mut conditions = vec![
        condition(
            "NamesAccepted",
            "NoConflicts",
            "no conflicts found",
            old,
            &now,
        ),
        condition(
            "Established",
            "InitialNamesAccepted",
            "the initial names have been accepted",
            old,
            &now,
        ),
    ];
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        conditions.push(condition(
            "Terminating",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            old,
            &now,
        ));
    }
    obj["status"] = json!({
        "acceptedNames": obj["spec"]["names"].clone(),
        "conditions": conditions,
        "storedVersions": stored,
    });
    if old.is_none() {
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        let fins = meta.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(f) = fins
            .as_array_mut()
            .filter(|f| !f.contains(&json!(CLEANUP_FINALIZER)))
        {
            f.push(json!(CLEANUP_FINALIZER));
        }
    }
}

/// Marks a CRD being deleted: `Terminating` while its objects are deleted.
pub fn mark_terminating(obj: &mut Value) {
    let now = crate::time::now();
    let c = condition(
        "Terminating",
        "InstanceDeletionInProgress",
        "CustomResource deletion is in progress",
        None,
        &now,
    );
    if let Some(list) = obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        list.retain(|x| x["type"] != "Terminating");
        list.push(c);
    }
}

/// How the kind's lists merge, from the schema's list types.
fn lists(schema: &Schema) -> ListSchema {
    fn walk(
        s: &Schema,
        path: &mut Vec<String>,
        keyed: &mut Vec<(Vec<String>, Vec<String>)>,
        sets: &mut Vec<Vec<String>>,
    ) {
        match &s.list {
            ListType::Map(keys) => keyed.push((path.clone(), keys.clone())),
            ListType::Set => sets.push(path.clone()),
            ListType::Atomic => {}
        }
        if let Some(i) = &s.items {
            walk(i, path, keyed, sets);
        }
        for (k, p) in &s.properties {
            path.push(k.clone());
            walk(p, path, keyed, sets);
            path.pop();
        }
    }
    let (mut keyed, mut sets) = (Vec::new(), Vec::new());
    walk(schema, &mut Vec::new(), &mut keyed, &mut sets);
    ListSchema::from_schema(keyed, sets)
}

/// The kinds table entries of a stored CRD: one per served version.
pub fn served(crd: &Value) -> Vec<Resource> {
    entries(crd, "served")
}

/// The entry of a CRD's storage version, served or not: what its stored objects are read
/// through when they are cleaned up.
pub fn stored(crd: &Value) -> Option<Resource> {
    entries(crd, "storage").pop()
}

/// Kinds table entries for the versions of a CRD whose `flag` is true.
fn entries(crd: &Value, flag: &str) -> Vec<Resource> {
    let terminating = crd.pointer("/metadata/deletionTimestamp").is_some();
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let served: Vec<&Value> = versions.iter().filter(|v| v[flag] == json!(true)).collect();
    let multi = served.len() > 1;
    served
        .iter()
        .map(|v| {
            let mut ignored = Vec::new();
            let (schema, columns) = compile_version(v, "", &mut ignored);
            let version = Arc::new(Version {
                schema,
                openapi: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or(json!({})),
                columns,
                scale: Scale::of(v),
                list_kind: str_at(crd, "/spec/names/listKind").to_string(),
                multi,
                terminating,
            });
            resource(
                crd,
                str_at(v, "/name"),
                v.pointer("/subresources/status").is_some(),
                version,
            )
        })
        .collect()
}

fn resource(crd: &Value, version: &str, status: bool, v: Arc<Version>) -> Resource {
    let normalize_with = v.clone();
    Resource {
        group: str_at(crd, "/spec/group").to_string(),
        version: version.to_string(),
        kind: str_at(crd, "/spec/names/kind").to_string(),
        plural: str_at(crd, "/spec/names/plural").to_string(),
        singular: str_at(crd, "/spec/names/singular").to_string(),
        namespaced: str_at(crd, "/spec/scope") == "Namespaced",
        short_names: strings(crd, "/spec/names/shortNames"),
        categories: strings(crd, "/spec/names/categories"),
        status,
        generation: true,
        lists: lists(&v.schema),
        normalize: Arc::new(move |obj| normalize(&normalize_with, obj)),
        builtin: None,
        custom: Some(v),
    }
}

/// Decodes a custom object: metadata as ObjectMeta, unknown fields pruned (and reported),
/// defaults applied.
fn normalize(v: &Version, mut obj: Value) -> Result<(Value, Vec<String>), String> {
    let mut unknown = Vec::new();
    if let Some(meta) = obj.get_mut("metadata") {
        let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(meta.clone()).map_err(|e| format!("metadata: {e}"))?;
        let clean = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        if let (Some(i), Some(o)) = (meta.as_object(), clean.as_object()) {
            unknown.extend(
                i.keys()
                    .filter(|k| !o.contains_key(*k) && !i[*k].is_null())
                    .map(|k| format!("metadata.{k}")),
            );
        }
        *meta = clean;
    }
    v.schema.prune(&mut obj, "", true, &mut unknown);
    v.schema.apply_defaults(&mut obj);
    unknown.sort();
    Ok((obj, unknown))
}

/// Whether objects read through `r` may carry another version's apiVersion.
fn multi(r: &Resource) -> bool {
    r.custom.as_ref().is_some_and(|v| v.multi)
}

/// A stored object as `r` serves it: with `r`'s apiVersion when the CRD serves several
/// versions.
pub fn present_value(r: &Resource, obj: &mut Value) {
    if multi(r) {
        obj["apiVersion"] = json!(r.api_version());
    }
}

/// [`present_value`] on stored bytes, copied only when the apiVersion differs.
pub fn present(r: &Resource, b: Bytes) -> Bytes {
    if !multi(r) {
        return b;
    }
    // Stored objects begin with their apiVersion (keys are written in order).
    if b.starts_with(format!("{{\"apiVersion\":\"{}\"", r.api_version()).as_bytes()) {
        return b;
    }
    match serde_json::from_slice::<Value>(&b) {
        Ok(mut obj) => {
            present_value(r, &mut obj);
            Bytes::from(serde_json::to_vec(&obj).expect("a JSON value serializes"))
        }
        Err(_) => b,
    }
}
