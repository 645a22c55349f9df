//! Authorization: whether a user may do what a request asks. Members of `system:masters` may do
//! everything; a node (`system:node:NAME` in `system:nodes`) is decided by the Node rules
//! ([`node`]) first; everyone is then decided by RBAC ([`rbac`]). What is not allowed is
//! forbidden, with kube-apiserver's message.
//!
//! [`State`] is what the decisions read, kept current by one task that follows the store:
//! the RBAC index (rebuilt when an RBAC object changes), and the facts the Node rules and token
//! authentication need (pods per node and what they reference, ServiceAccount uids, bootstrap
//! tokens).

pub mod bootstrap;
pub mod node;
pub mod rbac;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::auth::User;
use super::error::ApiError;
use super::resources::{builtin, Builtin, Resource};
use crate::store::{EventKind, RangeRequest, Store};

/// What a request asks, as RBAC sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub user: &'a User,
    pub verb: &'a str,
    pub namespace: Option<&'a str>,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
    /// A non-resource request's path (`/api`, `/version`, ...).
    pub path: Option<&'a str>,
}

impl Attributes<'_> {
    /// kube-apiserver's message for a request that is not allowed.
    pub fn forbidden(&self) -> ApiError {
        let user = &self.user.name;
        if let Some(path) = self.path {
            return ApiError::forbidden(format!(
                "forbidden: User \"{user}\" cannot {} path \"{path}\"",
                self.verb
            ));
        }
        let gr = if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let what = if self.subresource.is_empty() {
            format!("resource \"{}\"", self.resource)
        } else {
            format!("resource \"{}/{}\"", self.resource, self.subresource)
        };
        let scope = match self.namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        let named = if self.name.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", self.name)
        };
        ApiError::forbidden(format!(
            "{gr}{named} is forbidden: User \"{user}\" cannot {} {what} in API group \"{}\"{scope}",
            self.verb, self.group
        ))
    }
}

/// What a pod on a node references, for the Node rules.
#[derive(Clone, Debug, Default)]
struct PodFacts {
    node: String,
    secrets: Vec<String>,
    configmaps: Vec<String>,
}

/// Facts that change with ordinary objects (not RBAC ones).
#[derive(Default)]
struct Facts {
    /// (namespace, name) -> what the pod references.
    pods: HashMap<(String, String), PodFacts>,
    /// namespace -> name -> uid of every ServiceAccount (looked up without allocating).
    service_accounts: HashMap<String, HashMap<String, String>>,
    /// token id -> the bootstrap token Secret.
    bootstrap: HashMap<String, Value>,
}

pub struct State {
    rbac: ArcSwap<rbac::Index>,
    facts: RwLock<Facts>,
}

fn decode(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

fn objects(store: &dyn Store, r: &Resource) -> Vec<Value> {
    let prefix = r.prefix();
    store
        .range(&RangeRequest {
            prefix: &prefix,
            ..Default::default()
        })
        .map(|res| res.kvs.iter().filter_map(|kv| decode(&kv.value)).collect())
        .unwrap_or_default()
}

fn meta(o: &Value, k: &str) -> String {
    o.pointer(&format!("/metadata/{k}"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The Secrets and ConfigMaps a pod references (volumes, env, envFrom, image pull secrets).
fn pod_facts(pod: &Value) -> PodFacts {
    let mut f = PodFacts {
        node: pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        ..Default::default()
    };
    let mut walk = |v: &Value| {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("secretName", Value::String(s)) => f.secrets.push(s.clone()),
                            ("secret" | "secretRef" | "secretKeyRef", Value::Object(o)) => {
                                if let Some(n) = o
                                    .get("name")
                                    .or(o.get("secretName"))
                                    .and_then(Value::as_str)
                                {
                                    f.secrets.push(n.to_string());
                                }
                                stack.push(x);
                            }
                            (
                                "configMap" | "configMapRef" | "configMapKeyRef",
                                Value::Object(o),
                            ) => {
                                if let Some(n) = o.get("name").and_then(Value::as_str) {
                                    f.configmaps.push(n.to_string());
                                }
                                stack.push(x);
                            }
                            _ => stack.push(x),
                        }
                    }
                }
                Value::Array(a) => stack.extend(a.iter()),
                _ => {}
            }
        }
    };
    if let Some(spec) = pod.get("spec") {
        walk(spec);
    }
    for s in pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = s.get("name").and_then(Value::as_str) {
            f.secrets.push(n.to_string());
        }
    }
    f
}

/// The kinds whose objects authorization keeps facts of (the Node rules' pods, bound tokens'
/// ServiceAccounts and Secrets).
fn fact_kinds() -> [&'static Arc<Resource>; 3] {
    [
        builtin(Builtin::Pod),
        builtin(Builtin::ServiceAccount),
        builtin(Builtin::Secret),
    ]
}

fn rbac_kinds() -> [&'static Arc<Resource>; 4] {
    [
        builtin(Builtin::Role),
        builtin(Builtin::ClusterRole),
        builtin(Builtin::RoleBinding),
        builtin(Builtin::ClusterRoleBinding),
    ]
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State {
            rbac: ArcSwap::from_pointee(rbac::Index::default()),
            facts: RwLock::new(Facts::default()),
        })
    }

    fn facts(&self) -> std::sync::RwLockReadGuard<'_, Facts> {
        self.facts.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the RBAC index from the store.
    pub fn reload_rbac(&self, store: &dyn Store) {
        let [role, cluster_role, binding, cluster_binding] = rbac_kinds();
        let o = rbac::Objects {
            roles: objects(store, role),
            cluster_roles: objects(store, cluster_role),
            role_bindings: objects(store, binding),
            cluster_role_bindings: objects(store, cluster_binding),
        };
        self.rbac.store(Arc::new(rbac::Index::build(&o)));
    }

    fn apply(&self, key: &str, value: Option<&Value>) {
        let pods = builtin(Builtin::Pod).prefix();
        let sas = builtin(Builtin::ServiceAccount).prefix();
        let secrets = builtin(Builtin::Secret).prefix();
        let mut facts = self.facts.write().unwrap_or_else(|p| p.into_inner());
        let ns_name = |rest: &str| {
            rest.split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        };
        if let Some(k) = key.strip_prefix(&pods).and_then(ns_name) {
            match value {
                Some(v) => {
                    facts.pods.insert(k, pod_facts(v));
                }
                None => {
                    facts.pods.remove(&k);
                }
            }
        } else if let Some((ns, name)) = key.strip_prefix(&sas).and_then(ns_name) {
            let in_ns = facts.service_accounts.entry(ns).or_default();
            match value {
                Some(v) => {
                    in_ns.insert(name, meta(v, "uid"));
                }
                None => {
                    in_ns.remove(&name);
                }
            }
        } else if let Some(id) = key
            .strip_prefix(&secrets)
            .and_then(|r| r.strip_prefix("kube-system/bootstrap-token-"))
        {
            match value {
                Some(v) => {
                    facts.bootstrap.insert(id.to_string(), v.clone());
                }
                None => {
                    facts.bootstrap.remove(id);
                }
            }
        }
    }

    fn load_facts(&self, store: &dyn Store) {
        for r in fact_kinds() {
            let prefix = r.prefix();
            let Ok(res) = store.range(&RangeRequest {
                prefix: &prefix,
                ..Default::default()
            }) else {
                continue;
            };
            for kv in &res.kvs {
                if let Some(v) = decode(&kv.value) {
                    self.apply(&kv.key, Some(&v));
                }
            }
        }
    }

    /// Follows the store: loads everything once, then applies each change.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let rbac_prefixes: Vec<String> = rbac_kinds().iter().map(|r| r.prefix()).collect();
        let fact_prefixes: Vec<String> = fact_kinds().iter().map(|r| r.prefix()).collect();
        loop {
            let mut watch = match store.watch(store.revision()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "authorization cannot watch the store");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.reload_rbac(store.as_ref());
            self.load_facts(store.as_ref());
            'follow: loop {
                let mut batches = match watch.live.recv().await {
                    Ok(b) => vec![b],
                    // Missed changes: load everything again.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                };
                // Whatever else has arrived is taken too, so a burst of RBAC writes costs one
                // rebuild of the index, not one each.
                loop {
                    match watch.live.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Lagged(_)) => break 'follow,
                        Err(TryRecvError::Closed) => return,
                    }
                }
                let mut rbac_changed = false;
                for ev in batches.iter().flat_map(|b| b.iter()) {
                    let key = ev.kv.key.as_str();
                    if rbac_prefixes.iter().any(|p| key.starts_with(p)) {
                        rbac_changed = true;
                        continue;
                    }
                    // Only the kinds decisions read are decoded.
                    if !fact_prefixes.iter().any(|p| key.starts_with(p)) {
                        continue;
                    }
                    let value = match ev.kind {
                        EventKind::Put => decode(&ev.kv.value),
                        EventKind::Delete => None,
                    };
                    self.apply(key, value.as_ref());
                }
                if rbac_changed {
                    self.reload_rbac(store.as_ref());
                }
            }
        }
    }

    /// Whether `a` is allowed.
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        if a.user.is_master() {
            return true;
        }
        if let Some(node) = a.user.node_name() {
            if node::allows(self, node, a) {
                return true;
            }
        }
        self.rbac.load().allows(a)
    }

    /// Allowed, or kube-apiserver's 403.
    pub fn authorize(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        if self.allows(a) {
            Ok(())
        } else {
            Err(a.forbidden())
        }
    }

    /// Nobody grants what they do not hold: `rules` must be covered by what `a`'s user may do in
    /// `a`'s namespace (or cluster-wide).
    pub fn covers(&self, a: &Attributes<'_>, rules: &[rbac::Rule]) -> Result<(), String> {
        if a.user.is_master() {
            return Ok(());
        }
        self.rbac.load().covers(a, rules)
    }

    /// The uid of the ServiceAccount `ns/name`, while it exists.
    pub fn service_account_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.facts().service_accounts.get(ns)?.get(name).cloned()
    }

    /// The bootstrap token Secret for token id `id`.
    pub fn bootstrap_secret(&self, id: &str) -> Option<Value> {
        self.facts().bootstrap.get(id).cloned()
    }
}
