//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`), `/version`, and the
//! `/openapi/v3` documents.
//!
//! The OpenAPI documents describe every path and verb with its group-version-kind and the
//! `fieldValidation` parameter, which is what kubectl reads to decide that the server validates
//! fields itself (so `kubectl apply` sends `fieldValidation=Strict` and needs no client schema).
//! The component schemas carry no group-version-kind on purpose: kubectl then computes apply
//! patches from its built-in types, which know every merge key, instead of from a partial schema.

use serde_json::{json, Map, Value};

use super::resources::{Kinds, Resource};

/// The Kubernetes version whose API we follow.
pub const KUBE_VERSION: (&str, &str) = ("1", "33");

pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": format!("v{}.{}.0-switchyard.{}", KUBE_VERSION.0, KUBE_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// An APIGroup's name, versions and preferred (first served) version.
fn group_entry(kinds: &Kinds, group: &str) -> Option<Value> {
    let versions: Vec<Value> = kinds
        .versions(group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

pub fn api_groups(kinds: &Kinds) -> Value {
    let groups: Vec<Value> = kinds
        .groups()
        .iter()
        .filter_map(|g| group_entry(kinds, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(kinds: &Kinds, group: &str) -> Option<Value> {
    let mut entry = group_entry(kinds, group)?;
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn resource_list(kinds: &Kinds, group: &str, version: &str) -> Option<Value> {
    let all = kinds.all();
    let served: Vec<&Resource> = all
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| &**r)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in &served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        if r.status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// The path under `/openapi/v3/` of each group-version (`api/v1`, `apis/<group>/<version>`),
/// with its group and version.
fn gv_paths(kinds: &Kinds) -> Vec<(String, String, String)> {
    let mut out = vec![("api/v1".to_string(), String::new(), "v1".to_string())];
    for g in kinds.groups() {
        for v in kinds.versions(&g) {
            out.push((format!("apis/{g}/{v}"), g.clone(), v));
        }
    }
    out
}

pub fn openapi_index(kinds: &Kinds) -> Value {
    let mut paths = Map::new();
    for (p, _, _) in gv_paths(kinds) {
        let hash = format!(
            "{:016X}",
            fnv(openapi_gv_doc(kinds, &p)
                .map(|d| d.to_string())
                .unwrap_or_default()
                .as_bytes())
        );
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string"}, "required": location == "path"})
}

fn operation(r: &Resource, verb: &str, action: &str, query: &[&str], body: &[&str]) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let params: Vec<Value> = query.iter().map(|q| param(q, "query")).collect();
    let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
    let mut op = json!({
        "operationId": format!("{verb}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
    });
    if !body.is_empty() {
        let content: Map<String, Value> = body
            .iter()
            .map(|ct| (ct.to_string(), json!({"schema": {"type": "object"}})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn schema_name(r: &Resource) -> String {
    if r.custom.is_some() {
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), r.version, r.kind);
    }
    let g = match r.group.as_str() {
        "" => "io.k8s.api.core".to_string(),
        g => format!("io.k8s.api.{}", g.split('.').next().unwrap_or(g)),
    };
    format!("{g}.{}.{}", r.version, r.kind)
}

const WRITE_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
/// The patches a kind takes: custom kinds have no strategic merge patch (kubectl reads this to
/// choose how `kubectl apply` patches).
fn patch_types(r: &Resource) -> &'static [&'static str] {
    if r.builtin.is_some() {
        PATCH_TYPES
    } else {
        &PATCH_TYPES[..PATCH_TYPES.len() - 1]
    }
}

/// Every patch type; the strategic merge patch last, for [`patch_types`].
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
    "application/strategic-merge-patch+json",
];

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// ObjectMeta's schema, as the schemas of custom kinds refer to it.
fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("A prefix the server uses to generate a unique name when name is not given."),
            "namespace": s("The namespace the object is in; empty for cluster-scoped objects."),
            "uid": s("The unique identity of this object, set by the server."),
            "resourceVersion": s("The version of this object the server holds, for optimistic concurrency and watches."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When the object will be deleted."},
            "labels": map("Map of string keys and values that can be used to organize and categorize objects."),
            "annotations": map("Unstructured key value map stored with a resource."),
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object"}, "description": "Objects this object depends on."},
        },
    })
}

/// The OpenAPI v3 document of one group-version (`api/v1`, `apis/<group>/<version>`).
pub fn openapi_gv_doc(kinds: &Kinds, path: &str) -> Option<Value> {
    let (_, group, version) = gv_paths(kinds).into_iter().find(|(p, _, _)| p == path)?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let all = kinds.all();
    for r in all
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = if r.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("/{path}/{}", r.plural)
        };
        paths.insert(
            base.clone(),
            json!({
                "get": operation(r, "list", "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"], &[]),
                "post": operation(r, "create", "post", WRITE_QUERY, &["application/json", "application/yaml"]),
                "delete": operation(r, "deletecollection", "deletecollection", &["labelSelector", "fieldSelector"], &[]),
            }),
        );
        let item = |sub: &str| format!("{base}/{{name}}{sub}");
        let mut patch_query = WRITE_QUERY.to_vec();
        patch_query.push("force");
        paths.insert(
            item(""),
            json!({
                "get": operation(r, "read", "get", &["pretty"], &[]),
                "put": operation(r, "replace", "put", WRITE_QUERY, &["application/json", "application/yaml"]),
                "patch": operation(r, "patch", "patch", &patch_query, patch_types(r)),
                "delete": operation(r, "delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &[]),
            }),
        );
        if r.status {
            paths.insert(
                item("/status"),
                json!({
                    "get": operation(r, "readStatus", "get", &["pretty"], &[]),
                    "put": operation(r, "replaceStatus", "put", WRITE_QUERY, &["application/json"]),
                    "patch": operation(r, "patchStatus", "patch", &patch_query, patch_types(r)),
                }),
            );
        }
        let schema = match &r.custom {
            Some(v) => {
                let mut s = v.openapi.clone();
                s["x-kubernetes-group-version-kind"] =
                    json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
                if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert("metadata".into(), json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata."}));
                }
                schemas.insert(OBJECT_META.to_string(), object_meta());
                s
            }
            None => json!({
                "type": "object",
                "description": format!("{} ({}). Validated by the server; see the Kubernetes API reference.", r.kind, r.api_version()),
            }),
        };
        schemas.insert(schema_name(r), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
