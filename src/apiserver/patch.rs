//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch with the
//! merge keys of the types we serve, and server-side apply.
//!
//! Server-side apply here merges the applied configuration like a strategic merge (associative
//! lists by their list-map keys — ports by port and protocol — other lists replaced), records what each manager applied in
//! `metadata.managedFields` (FieldsV1), and removes fields a manager applied before and no longer
//! applies. It does not detect conflicts between managers.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::managed::{self, fields_v1};
use super::schema::{key_value, same_item, ListSchema, Merge};

/// The patch formats, by request content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// A patch as a request carries it.
#[derive(Clone, Debug)]
pub struct Patch {
    pub ty: PatchType,
    pub body: Value,
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn smp_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    lists: &ListSchema,
    how: Merge,
) -> Result<(), ApiError> {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *orig = strip_directives(&Value::Object(patch.clone()))
            .as_object()
            .cloned()
            .unwrap_or_default();
        return Ok(());
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (orig.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Null => {
                orig.remove(k);
            }
            Value::Object(pm) if pm.get("$patch").and_then(Value::as_str) == Some("delete") => {
                orig.remove(k);
            }
            Value::Object(pm) => match orig.get_mut(k) {
                Some(Value::Object(om)) => smp_map(om, pm, path, lists, how)?,
                _ => {
                    orig.insert(k.clone(), strip_directives(v));
                }
            },
            Value::Array(pl) => {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                if let Some(keys) = lists.keys(&p, how) {
                    let mut list = match orig.remove(k) {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    smp_list(&mut list, pl, &keys, path, lists, how)?;
                    orig.insert(k.clone(), Value::Array(list));
                } else if lists.is_set(&p) {
                    let list = orig.entry(k.clone()).or_insert_with(|| json!([]));
                    if let Value::Array(a) = list {
                        for x in pl {
                            if !a.contains(x) {
                                a.push(x.clone());
                            }
                        }
                    }
                } else {
                    orig.insert(k.clone(), strip_directives(v));
                }
            }
            other => {
                orig.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    // `$setElementOrder/<list>` gives the order of a merged list.
    for (k, v) in patch {
        if let (Some(field), Value::Array(order)) = (k.strip_prefix("$setElementOrder/"), v) {
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                let rank = |item: &Value| {
                    order
                        .iter()
                        .position(|o| {
                            o == item
                                || (o.is_object()
                                    && o.as_object().is_some_and(|om| {
                                        om.iter().all(|(ok, ov)| item.get(ok) == Some(ov))
                                    }))
                        })
                        .unwrap_or(usize::MAX)
                };
                list.sort_by_key(rank);
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        orig.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(())
}

fn smp_list(
    orig: &mut Vec<Value>,
    patch: &[Value],
    keys: &[&str],
    path: &mut Vec<String>,
    lists: &ListSchema,
    how: Merge,
) -> Result<(), ApiError> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(());
    }
    for item in patch {
        let Some(pm) = item.as_object() else {
            orig.push(item.clone());
            continue;
        };
        if let Some(missing) = keys.iter().find(|k| key_value(item, k).is_none()) {
            return Err(ApiError::bad_request(format!(
                "map: {item} does not contain declared merge key: {missing}"
            )));
        }
        let pos = orig.iter().position(|o| same_item(o, item, keys));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            orig.retain(|o| !same_item(o, item, keys));
            continue;
        }
        match pos.and_then(|i| orig[i].as_object_mut()) {
            Some(om) => smp_map(om, pm, path, lists, how)?,
            None => orig.push(strip_directives(item)),
        }
    }
    Ok(())
}

/// Applies a strategic merge patch; `lists` says how the kind's lists merge.
pub fn strategic(lists: &ListSchema, orig: &Value, patch: &Value) -> Result<Value, ApiError> {
    merge_lists(lists, orig, patch, Merge::Strategic)
}

/// A strategic merge with the lists keyed for `how`.
fn merge_lists(
    lists: &ListSchema,
    orig: &Value,
    patch: &Value,
    how: Merge,
) -> Result<Value, ApiError> {
    let (Some(o), Some(p)) = (orig.as_object(), patch.as_object()) else {
        return Err(ApiError::bad_request(
            "a strategic merge patch must be a JSON object",
        ));
    };
    let mut out = o.clone();
    smp_map(&mut out, p, &mut Vec::new(), lists, how)?;
    Ok(Value::Object(out))
}

/// Applies a JSON merge patch.
pub fn merge(orig: &Value, patch: &Value) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let mut out = orig.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Applies a JSON patch.
pub fn json(orig: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut out = orig.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| {
        ApiError::unprocessable_patch(format!("the JSON patch cannot be applied: {e}"))
    })?;
    Ok(out)
}

/// Removes from `live` what `old` (a FieldsV1 set) holds and `new` does not.
fn prune(
    live: &mut Value,
    old: &Value,
    new: Option<&Value>,
    path: &mut Vec<String>,
    lists: &ListSchema,
) {
    let (Some(om), Some(lm)) = (old.as_object(), live.as_object_mut()) else {
        return;
    };
    for (k, osub) in om {
        let nsub = new.and_then(|n| n.get(k));
        if let Some(field) = k.strip_prefix("f:") {
            match nsub {
                None => {
                    lm.remove(field);
                }
                Some(n) => {
                    path.push(field.to_string());
                    if let Some(child) = lm.get_mut(field) {
                        if child.is_array() {
                            prune_list(child, osub, n, path, lists);
                        } else {
                            prune(child, osub, Some(n), path, lists);
                        }
                    }
                    path.pop();
                }
            }
        }
    }
}

fn prune_list(
    list: &mut Value,
    old: &Value,
    new: &Value,
    path: &mut Vec<String>,
    lists: &ListSchema,
) {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let (Some(keys), Some(items), Some(om)) = (
        lists.keys(&p, Merge::Apply),
        list.as_array_mut(),
        old.as_object(),
    ) else {
        return;
    };
    for (k, osub) in om {
        let Some(kv) = k
            .strip_prefix("k:")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        else {
            continue;
        };
        match new.get(k) {
            None => items.retain(|i| !same_item(i, &kv, &keys)),
            Some(n) => {
                if let Some(item) = items.iter_mut().find(|i| same_item(i, &kv, &keys)) {
                    prune(item, osub, Some(n), path, lists);
                }
            }
        }
    }
}

/// Server-side apply of `applied` onto `live` (None when the object does not exist): fields the
/// manager applied before and no longer applies are removed, then the configuration is merged in.
/// Ownership and conflicts are [`managed::record_apply`]'s.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    writer: &managed::Writer<'_>,
    force: bool,
) -> Result<Value, ApiError> {
    if !applied.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    let mut out = match live {
        None => applied.clone(),
        Some(live) => {
            let mut base = live.clone();
            if let Some(prev) = managed::applied_by(live, writer.manager) {
                let now = fields_v1(applied, writer.lists);
                prune(&mut base, &prev, Some(&now), &mut Vec::new(), writer.lists);
            }
            merge_lists(writer.lists, &base, applied, Merge::Apply)?
        }
    };
    managed::record_apply(live, applied, &mut out, writer, force)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apiserver::resources::{builtin, Builtin};

    fn service_lists() -> &'static ListSchema {
        &builtin(Builtin::Service).lists
    }

    fn w(manager: &str) -> managed::Writer<'_> {
        managed::Writer {
            manager,
            lists: service_lists(),
            api_version: "v1",
            now: "t",
            subresource: None,
        }
    }

    #[test]
    fn strategic_merges_lists_by_key_and_honours_directives() {
        let svc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "selector": {"app": "web"}}});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}, {"port": 8080}],
                     "ports": [{"port": 80, "targetPort": 8080}, {"port": 8080, "name": "alt"}, {"port": 443, "$patch": "delete"}]}});
        let out = strategic(service_lists(), &svc, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 8080, "name": "alt"}])
        );
        let replaced = strategic(
            service_lists(),
            &svc,
            &json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}}),
        )
        .unwrap();
        assert_eq!(replaced["spec"]["ports"], json!([{"port": 1}]));
        assert!(strategic(
            service_lists(),
            &svc,
            &json!({"spec": {"ports": [{"name": "nokey"}]}})
        )
        .is_err());
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let live = apply(None, &first, &w("kubectl"), false).unwrap();
        assert_eq!(
            live["metadata"]["managedFields"][0]["fieldsV1"]["f:data"],
            json!({"f:x": {}, "f:y": {}})
        );
        let mut live2 = live.clone();
        // Another writer adds a field the manager never applied: it must survive.
        live2["data"]["z"] = json!("3");
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "9"}});
        let out = apply(Some(&live2), &second, &w("kubectl"), false).unwrap();
        assert_eq!(out["data"], json!({"x": "9", "z": "3"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            out["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn apply_prunes_associative_list_items() {
        let first =
            json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]}});
        let live = apply(None, &first, &w("m"), false).unwrap();
        let out = apply(
            Some(&live),
            &json!({"spec": {"ports": [{"port": 81, "name": "b"}]}}),
            &w("m"),
            false,
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"], json!([{"port": 81, "name": "b"}]));
    }
}
