//! How a kind's lists merge ([`ListSchema`]): which lists are maps keyed by a field
//! (`x-kubernetes-list-map-keys`; the `patchMergeKey` of the built-in types), which are sets of
//! scalars; every other list is replaced whole. Each entry of the kinds table carries one; it is
//! the one source for strategic merge patch, server-side apply and managed fields.

/// A path of field names from the object root, list items left out (`spec.containers.ports`).
type FieldPath = Vec<String>;

fn path(dotted: &str) -> FieldPath {
    dotted.split('.').map(str::to_string).collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListSchema {
    keyed: Vec<(FieldPath, String)>,
    sets: Vec<FieldPath>,
}

impl ListSchema {
    /// The lists every object has in its metadata, and `keyed` (dotted path, key field).
    pub fn new<'a>(keyed: impl IntoIterator<Item = (&'a str, &'a str)>) -> ListSchema {
        let keyed = [("metadata.ownerReferences", "uid")]
            .into_iter()
            .chain(keyed)
            .map(|(p, k)| (path(p), k.to_string()))
            .collect();
        ListSchema {
            keyed,
            sets: vec![path("metadata.finalizers")],
        }
    }

    /// The key field of the list at `path`; None for a list that is replaced whole.
    pub fn merge_key(&self, path: &[&str]) -> Option<&str> {
        self.keyed
            .iter()
            .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, k)| k.as_str())
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
        assert_eq!(s.merge_key(&["spec", "ports"]), Some("port"));
        assert_eq!(s.merge_key(&["metadata", "ownerReferences"]), Some("uid"));
        assert_eq!(s.merge_key(&["spec"]), None);
        assert_eq!(s.merge_key(&["x", "spec", "ports"]), None);
        assert!(s.is_set(&["metadata", "finalizers"]));
        assert!(!s.is_set(&["spec", "ports"]));
    }
}
