//! How a kind's lists merge ([`ListSchema`]): which lists are maps keyed by a field
//! (`x-kubernetes-list-map-keys`; the `patchMergeKey` of the built-in types), which are sets of
//! scalars; every other list is replaced whole. Each entry of the kinds table carries one; it is
//! the one source for strategic merge patch, server-side apply and managed fields.

use serde_json::Value;

/// A path of field names from the object root, list items left out (`spec.containers.ports`).
type FieldPath = Vec<String>;

fn path(dotted: &str) -> FieldPath {
    dotted.split('.').map(str::to_string).collect()
}

/// Which merge a list is keyed for: a strategic merge patch matches items by the type's
/// `patchMergeKey` alone; server-side apply and managed fields by its
/// `x-kubernetes-list-map-keys`, which for ports add the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    Strategic,
    Apply,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListSchema {
    keyed: Vec<(FieldPath, Vec<String>)>,
    sets: Vec<FieldPath>,
}

/// A list item's value for a key field; the schema's default when the item leaves it out (a
/// port's protocol is TCP).
pub fn key_value(item: &Value, key: &str) -> Option<Value> {
    match item.get(key) {
        Some(v) => Some(v.clone()),
        None if key == "protocol" => Some(Value::String("TCP".into())),
        None => None,
    }
}

/// Whether two list items have the same keys.
pub fn same_item(a: &Value, b: &Value, keys: &[&str]) -> bool {
    keys.iter().all(|k| key_value(a, k) == key_value(b, k))
}

impl ListSchema {
    /// The lists every object has in its metadata, and `keyed` (dotted path, key field).
    pub fn new<'a>(keyed: impl IntoIterator<Item = (&'a str, &'a str)>) -> ListSchema {
        let keyed = [("metadata.ownerReferences", "uid")]
            .into_iter()
            .chain(keyed)
            .map(|(p, k)| (path(p), vec![k.to_string()]))
            .collect();
        ListSchema {
            keyed,
            sets: vec![path("metadata.finalizers")],
        }
    }

    /// The lists of a kind defined by a schema: map lists with their keys, and sets (paths
    /// of field names, list items left out), besides those every object's metadata has.
    pub fn from_schema(keyed: Vec<(FieldPath, Vec<String>)>, sets: Vec<FieldPath>) -> ListSchema {
        let mut out = ListSchema::new([]);
        out.keyed.extend(keyed);
        out.sets.extend(sets);
        out
    }

    /// The key fields of the list at `path` for `how`; None for a list that is replaced whole.
    /// A list keyed by a port number is keyed by port and protocol for apply, as the
    /// Kubernetes types declare it (`x-kubernetes-list-map-keys: [port, protocol]`).
    pub fn keys(&self, path: &[&str], how: Merge) -> Option<Vec<&str>> {
        let keys = self
            .keyed
            .iter()
            .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, k)| k)?;
        Some(match (how, keys.as_slice()) {
            (Merge::Apply, [key]) if key == "port" || key == "containerPort" => {
                vec![key.as_str(), "protocol"]
            }
            _ => keys.iter().map(String::as_str).collect(),
        })
    }

    /// Whether the list at `path` is a set of scalars.
    pub fn is_set(&self, path: &[&str]) -> bool {
        self.sets
            .iter()
            .any(|p| p.iter().map(String::as_str).eq(path.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_exact_path_and_metadata_lists_everywhere() {
        let s = ListSchema::new([("spec.ports", "port")]);
        let keys = |p: &[&str], how| s.keys(p, how);
        assert_eq!(
            keys(&["spec", "ports"], Merge::Strategic),
            Some(vec!["port"])
        );
        assert_eq!(
            keys(&["spec", "ports"], Merge::Apply),
            Some(vec!["port", "protocol"])
        );
        assert_eq!(
            keys(&["metadata", "ownerReferences"], Merge::Apply),
            Some(vec!["uid"])
        );
        assert_eq!(keys(&["spec"], Merge::Strategic), None);
        assert_eq!(keys(&["x", "spec", "ports"], Merge::Strategic), None);
        let (udp, tcp) = (
            serde_json::json!({"port": 53, "protocol": "UDP"}),
            serde_json::json!({"port": 53}),
        );
        assert!(!same_item(&udp, &tcp, &["port", "protocol"]));
        assert!(same_item(&udp, &tcp, &["port"]));
        assert!(s.is_set(&["metadata", "finalizers"]));
        assert!(!s.is_set(&["spec", "ports"]));
    }
}
