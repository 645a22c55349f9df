//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`), `/version`, and the
//! `/openapi/v3` documents.
//!
//! The OpenAPI documents describe every path and verb with its group-version-kind and the
//! `fieldValidation` parameter, which is what kubectl reads to decide that the server validates
//! fields itself (so `kubectl apply` sends `fieldValidation=Strict` and needs no client schema).
//! The component schemas carry no group-version-kind on purpose: kubectl then computes apply
//! patches from its built-in types, which know every merge key, instead of from a partial schema.

use serde_json::{json, Map, Value};

use super::resources::{self, Resource, RESOURCES};

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

pub fn api_groups() -> Value {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Option<Value> {
    resources::groups().contains(&group).then(|| {
        let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
    })
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

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
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

/// The path under `/openapi/v3/` of each group-version: `api/v1`, `apis/<group>/v1`.
fn gv_paths() -> Vec<(String, &'static str)> {
    let mut out = vec![("api/v1".to_string(), "")];
    for g in resources::groups() {
        out.push((format!("apis/{g}/v1"), g));
    }
    out
}

pub fn openapi_index() -> Value {
    let mut paths = Map::new();
    for (p, _) in gv_paths() {
        let hash = format!(
            "{:016X}",
            fnv(openapi_gv_doc(&p)
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
    let g = match r.group {
        "" => "io.k8s.api.core.v1".to_string(),
        g => format!("io.k8s.api.{}.v1", g.split('.').next().unwrap_or(g)),
    };
    format!("{g}.{}", r.kind)
}

const WRITE_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// The OpenAPI v3 document of one group-version (`api/v1`, `apis/<group>/v1`).
pub fn openapi_gv_doc(path: &str) -> Option<Value> {
    let (_, group) = gv_paths().into_iter().find(|(p, _)| p == path)?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
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
                "patch": operation(r, "patch", "patch", &patch_query, PATCH_TYPES),
                "delete": operation(r, "delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &[]),
            }),
        );
        if r.status {
            paths.insert(
                item("/status"),
                json!({
                    "get": operation(r, "readStatus", "get", &["pretty"], &[]),
                    "put": operation(r, "replaceStatus", "put", WRITE_QUERY, &["application/json"]),
                    "patch": operation(r, "patchStatus", "patch", &patch_query, PATCH_TYPES),
                }),
            );
        }
        schemas.insert(
            schema_name(r),
            json!({
                "type": "object",
                "description": format!("{} ({}). Validated by the server; see the Kubernetes API reference.", r.kind, r.api_version()),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
