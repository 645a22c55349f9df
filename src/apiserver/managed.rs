//! Managed fields: which field manager set which fields of an object (`metadata.managedFields`,
//! FieldsV1), as server-side apply needs them.
//!
//! - An ordinary write (create, update, patch) by a manager takes ownership of the fields it
//!   changed, from whoever owned them before.
//! - An apply owns exactly the fields in its configuration. Applying a value different from the
//!   live one to a field another manager owns is a conflict (409), unless forced, in which case
//!   the applier takes the field. Applying the value already there shares the field.
//!
//! A field path is a list of FieldsV1 elements: `f:<name>` for an object field, `k:<json>` for
//! the item of an associative list with that key, and a final `.` for "the item itself".

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::schema::{key_value, ListSchema, Merge};

type Path = Vec<String>;

/// A set of leaf field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    /// The fields an object (or an apply configuration) sets.
    pub fn of(obj: &Value, lists: &ListSchema) -> Self {
        Self::from_v1(&fields_v1(obj, lists))
    }

    pub fn from_v1(v: &Value) -> Self {
        fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(m) = v.as_object() else { return };
            if m.is_empty() && !path.is_empty() {
                out.insert(path.clone());
                return;
            }
            for (k, sub) in m {
                path.push(k.clone());
                if k == "." {
                    out.insert(path.clone());
                } else {
                    walk(sub, path, out);
                }
                path.pop();
            }
        }
        let mut out = BTreeSet::new();
        walk(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    pub fn to_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for el in path {
                node = node
                    .entry(el.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("object");
            }
        }
        Value::Object(root)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn remove_all(&mut self, other: &FieldSet) {
        self.0.retain(|p| !other.0.contains(p));
    }
}

/// The value at a field path (None where the path leads nowhere).
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        if el == "." {
            break;
        }
        if let Some(name) = el.strip_prefix("f:") {
            cur = cur.get(name)?;
        } else if let Some(key) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// `.spec.ports[port=80].targetPort`, as kube-apiserver prints a field in a conflict.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(name) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: FieldSet::from_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            }
        })
        .collect()
}

fn store(obj: &mut Value, list: Vec<Entry>) {
    let out: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": e.fields.to_v1(),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if out.is_empty() {
        obj["metadata"]
            .as_object_mut()
            .expect("object")
            .remove("managedFields");
    } else {
        obj["metadata"]["managedFields"] = Value::Array(out);
    }
}

/// Who is writing, and how.
pub struct Writer<'a> {
    pub manager: &'a str,
    /// How the kind's lists merge (keyed lists are owned item by item).
    pub lists: &'a ListSchema,
    pub api_version: &'a str,
    pub now: &'a str,
    pub subresource: Option<&'a str>,
}

/// Records an ordinary write: `new` (with `old`'s managed fields) gets the manager's ownership
/// of every field that differs from `old`, taken from other managers.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut list = old.map(entries).unwrap_or_default();
    let changed = FieldSet(
        FieldSet::of(new, w.lists)
            .0
            .into_iter()
            .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
            .collect(),
    );
    if changed.is_empty() {
        store(new, list);
        return;
    }
    for e in list.iter_mut() {
        e.fields.remove_all(&changed);
    }
    match list
        .iter_mut()
        .find(|e| e.is(w.manager, "Update") && e.subresource.as_deref() == w.subresource)
    {
        Some(e) => {
            e.fields.0.extend(changed.0);
            e.time = w.now.to_string();
            e.api_version = w.api_version.to_string();
        }
        None => list.push(Entry {
            manager: w.manager.to_string(),
            operation: "Update".into(),
            api_version: w.api_version.to_string(),
            time: w.now.to_string(),
            subresource: w.subresource.map(str::to_string),
            fields: changed,
        }),
    }
    store(new, list);
}

/// The fields `applied` would change that another manager owns; empty when the apply may go
/// ahead. With `force`, ownership of those fields moves to the applier instead.
fn conflicts(
    live: &Value,
    applied: &Value,
    wanted: &FieldSet,
    manager: &str,
) -> Vec<(String, String, Path)> {
    let mut out = Vec::new();
    for e in entries(live).iter().filter(|e| !e.is(manager, "Apply")) {
        for p in wanted.0.intersection(&e.fields.0) {
            // A list item or map with fields of its own (`.` in the set) only says it exists:
            // its fields conflict or not, it does not.
            let parent = p.last().is_some_and(|l| l == ".");
            // The applier's own earlier updates are not conflicts.
            if !parent && e.manager != manager && value_at(applied, p) != value_at(live, p) {
                out.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    out
}

fn conflict_error(list: &[(String, String, Path)]) -> ApiError {
    let n = list.len();
    let message = if n == 1 {
        let (m, v, p) = &list[0];
        format!(
            "Apply failed with 1 conflict: conflict with \"{m}\" using {v}: {}",
            display(p)
        )
    } else {
        let lines: Vec<String> = list
            .iter()
            .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {}", display(p)))
            .collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = list
        .iter()
        .map(|(m, v, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": display(p)}))
        .collect();
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

/// Checks an apply against the live object and updates `result`'s managed fields: the applier's
/// Apply entry becomes exactly the applied fields; with `force`, other managers lose them.
pub fn record_apply(
    live: Option<&Value>,
    applied: &Value,
    result: &mut Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<(), ApiError> {
    let wanted = FieldSet::of(applied, w.lists);
    let mut list = live.map(entries).unwrap_or_default();
    if let Some(live) = live {
        let found = conflicts(live, applied, &wanted, w.manager);
        if !found.is_empty() && !force {
            return Err(conflict_error(&found));
        }
        if force {
            for e in list.iter_mut().filter(|e| e.manager != w.manager) {
                e.fields.remove_all(&wanted);
            }
        }
    }
    list.retain(|e| !e.is(w.manager, "Apply"));
    list.push(Entry {
        manager: w.manager.to_string(),
        operation: "Apply".into(),
        api_version: w.api_version.to_string(),
        time: w.now.to_string(),
        subresource: w.subresource.map(str::to_string),
        fields: wanted,
    });
    store(result, list);
    Ok(())
}

/// The fields the manager applied last time, if it ever applied.
pub fn applied_by(live: &Value, manager: &str) -> Option<Value> {
    entries(live)
        .into_iter()
        .find(|e| e.is(manager, "Apply"))
        .map(|e| e.fields.to_v1())
}

/// The FieldsV1 set of an applied configuration: every field it sets, lists with a merge key as
/// `k:{"key":value}` entries.
pub fn fields_v1(obj: &Value, lists: &ListSchema) -> Value {
    fn walk(v: &Value, path: &mut Vec<String>, lists: &ListSchema) -> Value {
        let mut out = Map::new();
        let Some(m) = v.as_object() else {
            return Value::Object(out);
        };
        for (k, child) in m {
            if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                continue;
            }
            if path.len() == 1
                && path[0] == "metadata"
                && !matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            {
                continue;
            }
            path.push(k.clone());
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let entry = match (child, lists.keys(&p, Merge::Apply)) {
                (Value::Object(_), _) => walk(child, path, lists),
                (Value::Array(items), Some(keys)) => {
                    let mut lm = Map::new();
                    for item in items {
                        let id: Option<Map<String, Value>> = keys
                            .iter()
                            .map(|k| Some((k.to_string(), key_value(item, k)?)))
                            .collect();
                        if let Some(id) = id {
                            let mut e = walk(item, path, lists)
                                .as_object()
                                .cloned()
                                .unwrap_or_default();
                            e.insert(".".into(), json!({}));
                            lm.insert(format!("k:{}", Value::Object(id)), Value::Object(e));
                        }
                    }
                    Value::Object(lm)
                }
                _ => json!({}),
            };
            path.pop();
            // Metadata is owned field by field: one with only system fields (a name) is nobody's.
            if path.is_empty() && k == "metadata" && entry.as_object().is_some_and(Map::is_empty) {
                continue;
            }
            out.insert(format!("f:{k}"), entry);
        }
        Value::Object(out)
    }
    walk(obj, &mut Vec::new(), lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apiserver::resources::{builtin, Builtin};

    fn service_lists() -> &'static ListSchema {
        &builtin(Builtin::Service).lists
    }

    /// A writer of Services.
    fn w0() -> Writer<'static> {
        Writer {
            manager: "kubectl-edit",
            lists: service_lists(),
            api_version: "v1",
            now: "t1",
            subresource: None,
        }
    }

    #[test]
    fn field_sets_round_trip() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80, "targetPort": 8080}], "type": "ClusterIP"}});
        let set = FieldSet::of(&obj, service_lists());
        assert_eq!(FieldSet::from_v1(&set.to_v1()), set);
        let paths: Vec<String> = set.0.iter().map(|p| display(p)).collect();
        assert!(
            paths.contains(&".spec.ports[port=80,protocol=\"TCP\"].targetPort".to_string()),
            "{paths:?}"
        );
        assert_eq!(
            value_at(
                &obj,
                &[
                    "f:spec".into(),
                    "f:ports".into(),
                    "k:{\"port\":80}".into(),
                    "f:targetPort".into()
                ]
            ),
            Some(&json!(8080))
        );
    }

    #[test]
    fn metadata_with_only_a_name_is_nobodys() {
        let obj = json!({"metadata": {"name": "x", "namespace": "ns"}, "data": {"k": "v"}});
        assert_eq!(
            fields_v1(&obj, &ListSchema::default()),
            json!({"f:data": {"f:k": {}}})
        );
        let labelled = json!({"metadata": {"name": "x", "labels": {"a": "1"}}});
        assert_eq!(
            fields_v1(&labelled, &ListSchema::default()),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}})
        );
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let old = json!({"data": {"x": "1", "y": "2"}});
        let mut created = old.clone();
        record_update(
            None,
            &mut created,
            &Writer {
                manager: "creator",
                ..w0()
            },
        );
        let mut edited = created.clone();
        edited["data"]["x"] = json!("9");
        record_update(Some(&created), &mut edited, &w0());
        let e = entries(&edited);
        let owner = |field: &str| {
            e.iter()
                .find(|e| {
                    e.fields
                        .0
                        .contains(&vec!["f:data".to_string(), format!("f:{field}")])
                })
                .map(|e| e.manager.clone())
        };
        assert_eq!(owner("x").as_deref(), Some("kubectl-edit"));
        assert_eq!(owner("y").as_deref(), Some("creator"));
    }

    #[test]
    fn apply_conflicts_unless_forced_or_equal() {
        let mut live = json!({"data": {"x": "1"}});
        record_update(
            None,
            &mut live,
            &Writer {
                manager: "kubectl-client-side-apply",
                ..w0()
            },
        );
        let same = json!({"data": {"x": "1"}});
        let mut out = same.clone();
        record_apply(
            Some(&live),
            &same,
            &mut out,
            &Writer {
                manager: "kubectl",
                ..w0()
            },
            false,
        )
        .unwrap();
        let different = json!({"data": {"x": "2"}});
        let err = record_apply(
            Some(&live),
            &different,
            &mut different.clone(),
            &Writer {
                manager: "kubectl",
                ..w0()
            },
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.x");
        let mut forced = different.clone();
        record_apply(
            Some(&live),
            &different,
            &mut forced,
            &Writer {
                manager: "kubectl",
                ..w0()
            },
            true,
        )
        .unwrap();
        let e = entries(&forced);
        assert_eq!(e.len(), 1, "the old owner lost its only field: {e:?}");
        assert_eq!(e[0].manager, "kubectl");
    }
}
