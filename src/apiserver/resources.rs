//! The kinds the server serves: one table ([`Kinds`]), read by routing, discovery, OpenAPI,
//! storage, admission and printing, that can gain and lose kinds while the server runs. Each entry
//! says what the server needs to know of a kind — names, scope, subresources, how its objects
//! are decoded — and, for the kinds built in, which built-in strategy ([`Builtin`]) defaults,
//! validates and prints it. A kind added at run time has no built-in strategy and is handled
//! generically.

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, ServiceCIDR};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::schema::ListSchema;

/// Decodes an object of the kind and encodes it back: the object as the server stores it, and
/// the paths of fields the kind does not know.
pub type Normalize = Arc<dyn Fn(Value) -> Result<(Value, Vec<String>), String> + Send + Sync>;

/// The kinds built into the server, each with its own strategy for defaults, validation and
/// printing (matched exhaustively wherever one differs from another).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    Namespace,
    Service,
    Pod,
    Node,
    Secret,
    ConfigMap,
    EndpointSlice,
    Ingress,
    IngressClass,
    Lease,
    ServiceAccount,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
    CertificateSigningRequest,
    /// core/v1 Event, as the older event recorders write them and `kubectl describe` reads them.
    Event,
    /// events.k8s.io/v1 Event, as the newer recorders write them.
    EventsV1Event,
    /// The ranges ClusterIPs come from (kube-proxy watches them).
    ServiceCIDR,
    CustomResourceDefinition,
}

/// One served kind.
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: the main resource ignores status, `/status` changes only it.
    pub status: bool,
    /// Writes to the spec bump `metadata.generation`.
    pub generation: bool,
    /// How its lists merge.
    pub lists: ListSchema,
    pub normalize: Normalize,
    /// The built-in strategy; `None` for a kind added at run time.
    pub builtin: Option<Builtin>,
    /// The schema, columns and state of a kind a CustomResourceDefinition serves.
    pub custom: Option<Arc<super::crd::Version>>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Resource({}/{} {})",
            self.group, self.version, self.plural
        )
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix for all objects of this resource.
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The store key prefix for one namespace (or all, for cluster-scoped resources).
    pub fn scope_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.scope_prefix(namespace))
    }

    /// "services" or "ingresses.networking.k8s.io": how errors name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is the built-in kind `b`.
    pub fn is(&self, b: Builtin) -> bool {
        self.builtin == Some(b)
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(
    input: Value,
) -> Result<(Value, Vec<String>), String> {
    let typed: K = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
    let output = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &output, "", &mut unknown);
    Ok((output, unknown))
}

/// Paths present (and not null) in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Each built-in kind: its type (for decoding), group, plural, short names, categories, scope,
/// status subresource, generation, and its keyed lists (the types' `patchMergeKey`s).
macro_rules! builtin {
    ($b:ident, $group:expr, $plural:expr, short: $short:expr, cat: $cat:expr, ns: $ns:expr, status: $status:expr, generation: $gen:expr, lists: $lists:expr) => {
        Resource {
            group: $group.to_string(),
            version: "v1".to_string(),
            kind: stringify!($b).to_string(),
            plural: $plural.to_string(),
            singular: stringify!($b).to_ascii_lowercase(),
            namespaced: $ns,
            short_names: strings($short),
            categories: strings($cat),
            status: $status,
            generation: $gen,
            lists: ListSchema::new($lists.iter().copied()),
            normalize: Arc::new(roundtrip::<$b>),
            builtin: Some(Builtin::$b),
            custom: None,
        }
    };
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

type Keyed = &'static [(&'static str, &'static str)];
const RBAC: &str = "rbac.authorization.k8s.io";
const NONE: Keyed = &[];
const CONDITIONS: Keyed = &[("status.conditions", "type")];
const POD_LISTS: Keyed = &[
    ("spec.containers", "name"),
    ("spec.initContainers", "name"),
    ("spec.ephemeralContainers", "name"),
    ("spec.volumes", "name"),
    ("spec.imagePullSecrets", "name"),
    ("spec.resourceClaims", "name"),
    ("spec.schedulingGates", "name"),
    ("spec.hostAliases", "ip"),
    ("spec.containers.ports", "containerPort"),
    ("spec.initContainers.ports", "containerPort"),
    ("spec.containers.env", "name"),
    ("spec.initContainers.env", "name"),
    ("spec.containers.volumeMounts", "mountPath"),
    ("spec.initContainers.volumeMounts", "mountPath"),
    ("spec.containers.volumeDevices", "devicePath"),
    ("spec.initContainers.volumeDevices", "devicePath"),
    ("status.podIPs", "ip"),
    ("status.conditions", "type"),
];

/// The built-in kinds, in discovery order.
static BUILTINS: LazyLock<Vec<Arc<Resource>>> = LazyLock::new(|| {
    [
        builtin!(Namespace, "", "namespaces", short: &["ns"], cat: &[], ns: false, status: true, generation: false, lists: CONDITIONS),
        builtin!(Service, "", "services", short: &["svc"], cat: &["all"], ns: true, status: true, generation: true,
            lists: &[("spec.ports", "port"), ("status.conditions", "type")]),
        builtin!(Pod, "", "pods", short: &["po"], cat: &["all"], ns: true, status: true, generation: false, lists: POD_LISTS),
        builtin!(Node, "", "nodes", short: &["no"], cat: &[], ns: false, status: true, generation: false,
            lists: &[("status.addresses", "type"), ("status.conditions", "type")]),
        builtin!(Secret, "", "secrets", short: &[], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        builtin!(ConfigMap, "", "configmaps", short: &["cm"], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        builtin!(EndpointSlice, "discovery.k8s.io", "endpointslices", short: &[], cat: &[], ns: true, status: false, generation: true, lists: NONE),
        builtin!(Ingress, "networking.k8s.io", "ingresses", short: &["ing"], cat: &[], ns: true, status: true, generation: true, lists: NONE),
        builtin!(IngressClass, "networking.k8s.io", "ingressclasses", short: &[], cat: &[], ns: false, status: false, generation: true, lists: NONE),
        builtin!(Lease, "coordination.k8s.io", "leases", short: &[], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        builtin!(ServiceAccount, "", "serviceaccounts", short: &["sa"], cat: &[], ns: true, status: false, generation: false,
            lists: &[("secrets", "name"), ("imagePullSecrets", "name")]),
        builtin!(Role, RBAC, "roles", short: &[], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        builtin!(ClusterRole, RBAC, "clusterroles", short: &[], cat: &[], ns: false, status: false, generation: false, lists: NONE),
        builtin!(RoleBinding, RBAC, "rolebindings", short: &[], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        builtin!(ClusterRoleBinding, RBAC, "clusterrolebindings", short: &[], cat: &[], ns: false, status: false, generation: false, lists: NONE),
        builtin!(CertificateSigningRequest, "certificates.k8s.io", "certificatesigningrequests", short: &["csr"], cat: &[], ns: false, status: true, generation: false,
            lists: &[("status.conditions", "type")]),
        builtin!(Event, "", "events", short: &["ev"], cat: &[], ns: true, status: false, generation: false, lists: NONE),
        Resource {
            singular: "servicecidr".to_string(),
            ..builtin!(ServiceCIDR, "networking.k8s.io", "servicecidrs", short: &[], cat: &[], ns: false, status: true, generation: true, lists: CONDITIONS)
        },
        Resource {
            singular: "customresourcedefinition".to_string(),
            ..builtin!(CustomResourceDefinition, "apiextensions.k8s.io", "customresourcedefinitions", short: &["crd", "crds"], cat: &["api-extensions"], ns: false, status: true, generation: true,
                lists: &[("status.conditions", "type")])
        },
        Resource {
            kind: "Event".to_string(),
            singular: "event".to_string(),
            normalize: Arc::new(roundtrip::<k8s_openapi::api::events::v1::Event>),
            builtin: Some(Builtin::EventsV1Event),
            ..builtin!(Event, "events.k8s.io", "events", short: &["ev"], cat: &[], ns: true, status: false, generation: false, lists: NONE)
        },
    ]
    .into_iter()
    .map(Arc::new)
    .collect()
});

/// The table entry of a built-in kind (the same in every server).
pub fn builtin(b: Builtin) -> &'static Arc<Resource> {
    BUILTINS
        .iter()
        .find(|r| r.builtin == Some(b))
        .expect("every built-in kind is in the table")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KindError {
    #[error("{0} is already served")]
    Taken(String),
}

/// Whether `s` was added at run time as the kind `group`/`plural`.
fn added_as(s: &Resource, group: &str, plural: &str) -> bool {
    s.builtin.is_none() && s.group == group && s.plural == plural
}

fn clash<'a>(
    served: &[Arc<Resource>],
    group: &str,
    plural: &str,
    versions: impl Iterator<Item = &'a Resource> + Clone,
) -> Option<Arc<Resource>> {
    served
        .iter()
        .filter(|s| !added_as(s, group, plural))
        .find(|s| {
            versions
                .clone()
                .any(|v| s.group == v.group && (s.plural == v.plural || s.kind == v.kind))
        })
        .cloned()
}

/// The kinds one server serves: the built-ins and those added while it runs. Readers get a
/// consistent snapshot without locks; changes replace it whole.
pub struct Kinds {
    served: ArcSwap<Vec<Arc<Resource>>>,
}

impl Default for Kinds {
    fn default() -> Self {
        Kinds {
            served: ArcSwap::from_pointee(BUILTINS.clone()),
        }
    }
}

impl Kinds {
    /// Every kind served now, built-ins first.
    pub fn all(&self) -> Arc<Vec<Arc<Resource>>> {
        self.served.load_full()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.served
            .load()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The API groups served (not the core group), in discovery order.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.served.load().iter() {
            if !r.group.is_empty() && !out.contains(&r.group) {
                out.push(r.group.clone());
            }
        }
        out
    }

    /// The versions `group` is served in, in the order they were added (the first preferred).
    pub fn versions(&self, group: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.served.load().iter().filter(|r| r.group == group) {
            if !out.contains(&r.version) {
                out.push(r.version.clone());
            }
        }
        out
    }

    /// The kind served now that `versions` (of the kind `group`/`plural`) would clash with:
    /// another kind of the group with their plural or kind.
    pub fn clash(&self, group: &str, plural: &str, versions: &[Resource]) -> Option<Arc<Resource>> {
        clash(&self.served.load(), group, plural, versions.iter())
    }

    /// Serves `versions` as the kind `group`/`plural`, in place of what was served under that
    /// name before (one change: readers see the old versions or the new ones); refused when
    /// it would clash with another kind.
    pub fn install(
        &self,
        group: &str,
        plural: &str,
        versions: Vec<Resource>,
    ) -> Result<(), KindError> {
        let versions: Vec<Arc<Resource>> = versions.into_iter().map(Arc::new).collect();
        let mut result = Ok(());
        self.served.rcu(|served| {
            if let Some(s) = clash(served, group, plural, versions.iter().map(|v| &**v)) {
                result = Err(KindError::Taken(s.group_resource()));
                return (**served).clone();
            }
            result = Ok(());
            let mut next: Vec<Arc<Resource>> = served
                .iter()
                .filter(|s| !added_as(s, group, plural))
                .cloned()
                .collect();
            next.extend(versions.iter().cloned());
            next
        });
        result
    }

    /// Stops serving the kind added as `group`/`plural` (every version); built-ins stay.
    pub fn remove(&self, group: &str, plural: &str) {
        self.served.rcu(|served| {
            served
                .iter()
                .filter(|s| s.builtin.is_some() || s.group != group || s.plural != plural)
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_reports_unknown_fields_and_type_errors() {
        let svc = builtin(Builtin::Service);
        let (out, unknown) = (svc.normalize)(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "bogus": 1},
            "spec": {"ports": [{"port": 80, "nope": true}], "selector": {"app": "x"}}
        }))
        .unwrap();
        assert_eq!(unknown, ["metadata.bogus", "spec.ports[0].nope"]);
        assert!(out["metadata"].get("bogus").is_none());
        assert_eq!(out["spec"]["selector"]["app"], "x");
        let err = (svc.normalize)(json!({"metadata": {"name": "a"}, "spec": {"ports": "80"}}))
            .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }

    fn custom(kind: &str, plural: &str) -> Resource {
        Resource {
            group: "example.com".into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            namespaced: true,
            short_names: Vec::new(),
            categories: Vec::new(),
            status: false,
            generation: true,
            lists: ListSchema::default(),
            normalize: Arc::new(|v| Ok((v, Vec::new()))),
            builtin: None,
            custom: None,
        }
    }

    #[test]
    fn kinds_are_added_and_removed_at_run_time() {
        let kinds = Kinds::default();
        let before = kinds.all();
        assert!(kinds.find("example.com", "v1", "widgets").is_none());
        kinds
            .install("example.com", "widgets", vec![custom("Widget", "widgets")])
            .unwrap();
        assert_eq!(
            kinds.find("example.com", "v1", "widgets").unwrap().kind,
            "Widget"
        );
        assert_eq!(
            kinds.groups().last().map(String::as_str),
            Some("example.com")
        );
        // A reader's snapshot does not change under it.
        assert_eq!(before.len() + 1, kinds.all().len());
        assert!(before.iter().all(|r| r.builtin.is_some()));
        // Installing again replaces (a second version now); the count grows by that one.
        let mut v2 = custom("Widget", "widgets");
        v2.version = "v2".into();
        kinds
            .install(
                "example.com",
                "widgets",
                vec![custom("Widget", "widgets"), v2],
            )
            .unwrap();
        assert_eq!(kinds.versions("example.com"), ["v1", "v2"]);
        assert_eq!(before.len() + 2, kinds.all().len());
        // Another kind under the same plural or kind name is refused.
        let err = kinds
            .install("example.com", "gadgets", vec![custom("Widget", "gadgets")])
            .unwrap_err();
        assert_eq!(err, KindError::Taken("widgets.example.com".into()));
        assert!(kinds
            .clash("example.com", "gadgets", &[custom("Widget", "gadgets")])
            .is_some());
        assert!(kinds
            .clash("example.com", "widgets", &[custom("Widget", "widgets")])
            .is_none());
        // A built-in's name in its own group is taken.
        let mut ing = custom("Ingress", "ingresses");
        ing.group = "networking.k8s.io".into();
        assert!(kinds
            .install("networking.k8s.io", "ingresses", vec![ing])
            .is_err());
        kinds.remove("example.com", "widgets");
        assert!(kinds.find("example.com", "v1", "widgets").is_none());
        assert!(!kinds.groups().contains(&"example.com".to_string()));
        // Built-ins cannot be removed.
        kinds.remove("", "services");
        assert!(kinds.find("", "v1", "services").is_some());
    }
}
