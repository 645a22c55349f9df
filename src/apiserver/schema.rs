//! What the schemas of the served types say about their lists: which lists are maps keyed by a
//! field (the `patchMergeKey`s) and which merge as sets. One source for strategic merge patch,
//! server-side apply and managed fields.

/// The merge key of a list, by its path of field names from the object root; None for lists that
/// are replaced whole. These are the `patchMergeKey`s of the Kubernetes types we serve.
pub fn merge_key(path: &[&str]) -> Option<&'static str> {
    let last2 = if path.len() >= 2 {
        [path[path.len() - 2], path[path.len() - 1]]
    } else {
        ["", path.last().copied().unwrap_or("")]
    };
    Some(match (path, last2) {
        (["metadata", "ownerReferences"], _) => "uid",
        (["spec", "ports"], _) => "port",
        (["spec", "containers" | "initContainers" | "ephemeralContainers"], _) => "name",
        (["spec", "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"], _) => {
            "name"
        }
        (["spec", "hostAliases"], _) => "ip",
        (["spec", "containers" | "initContainers", "ports"], _) => "containerPort",
        (["spec", "containers" | "initContainers", "env"], _) => "name",
        (["spec", "containers" | "initContainers", "volumeMounts"], _) => "mountPath",
        (["spec", "containers" | "initContainers", "volumeDevices"], _) => "devicePath",
        (["status", "podIPs"], _) => "ip",
        (["status", "addresses"], _) => "type",
        (_, ["status", "conditions"]) => "type",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets.
pub fn is_set_list(path: &[&str]) -> bool {
    matches!(path, ["metadata", "finalizers"])
}
