//! The garbage collector: objects whose owners (`metadata.ownerReferences`) are gone are
//! deleted, with kube's propagation policies —
//! - Background: the owner goes at once; its dependents follow;
//! - Foreground: the owner waits (deletionTimestamp and the `foregroundDeletion` finalizer) until
//!   every dependent that blocks its deletion (`blockOwnerDeletion`) is gone;
//! - Orphan: the owner waits (the `orphan` finalizer) until its dependents no longer name it.
//!
//! It follows the store's event feed and keeps a graph of who owns what (only objects that have
//! owners are in it). Everything it acts on is in the store — owner references, finalizers,
//! deletion timestamps — so after a restart it reads the graph back and takes up where it was.
//! An owner counts as present only if an object of its kind and name with its uid exists, as
//! kube-controller-manager checks it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Follower, Reactor};
use crate::apiserver::error::ApiError;
use crate::apiserver::registry::{
    decode, DeleteOptions, Part, Propagation, Registry, WriteOptions, FOREGROUND_FINALIZER,
    ORPHAN_FINALIZER,
};
use crate::apiserver::resources::Resource;
use crate::store::{Event, EventKind, KeyValue, RangeRequest};

/// Who the collector's writes are recorded as.
const MANAGER: &str = "generic-garbage-collector";
/// How long a failed item waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// One owner reference, as the graph keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OwnerRef {
    uid: String,
    block: bool,
}

fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(OwnerRef {
                uid: r.get("uid")?.as_str()?.to_string(),
                block: r.get("blockOwnerDeletion") == Some(&Value::Bool(true)),
            })
        })
        .collect()
}

fn uid_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn being_deleted(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether a stored value may concern the collector, without decoding it.
fn mentions(value: &[u8], what: &str) -> bool {
    std::str::from_utf8(value).is_ok_and(|s| s.contains(what))
}

/// Who owns what: only objects with owner references are in it.
#[derive(Default)]
struct Graph {
    /// dependent key -> its owners.
    owners: HashMap<String, Vec<OwnerRef>>,
    /// owner uid -> dependent keys.
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Records `key`'s owners; says whether they changed.
    fn set(&mut self, key: &str, refs: Vec<OwnerRef>) -> bool {
        if self.owners.get(key) == Some(&refs)
            || (refs.is_empty() && !self.owners.contains_key(key))
        {
            return false;
        }
        self.remove(key);
        for r in &refs {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(key.to_string());
        }
        if !refs.is_empty() {
            self.owners.insert(key.to_string(), refs);
        }
        true
    }

    /// Forgets `key`; returns the owners it had.
    fn remove(&mut self, key: &str) -> Vec<OwnerRef> {
        let refs = self.owners.remove(key).unwrap_or_default();
        for r in &refs {
            if let Some(d) = self.dependents.get_mut(&r.uid) {
                d.remove(key);
                if d.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        refs
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Dependents of `uid` that block its deletion.
    fn blocking(&self, uid: &str) -> usize {
        self.dependents.get(uid).map_or(0, |d| {
            d.iter()
                .filter(|k| {
                    self.owners
                        .get(*k)
                        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid && r.block))
                })
                .count()
        })
    }
}

/// What became of an owner.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// It exists and is not waiting for its dependents to go.
    Solid,
    /// It exists and waits for its dependents (Foreground deletion).
    Waiting,
    /// No object of its kind and name has its uid.
    Absent,
    /// Its kind is not served: nothing can be said.
    Unknown,
}

struct Collector {
    registry: Arc<Registry>,
    graph: Graph,
    /// Keys to look at.
    queue: BTreeSet<String>,
    /// Keys whose handling failed, tried again after [`RETRY`].
    retry: BTreeSet<String>,
    /// Owners waiting on their dependents: uid -> key.
    waiting: HashMap<String, String>,
}

/// Where a store key belongs: its kind, namespace and name.
fn locate(kinds: &[Arc<Resource>], key: &str) -> Option<(Arc<Resource>, Option<String>, String)> {
    let r = kinds
        .iter()
        .filter(|r| key.starts_with(&r.prefix()))
        .max_by_key(|r| r.prefix().len())?;
    let rest = &key[r.prefix().len()..];
    let (ns, name) = if r.namespaced {
        let (ns, name) = rest.split_once('/')?;
        (Some(ns.to_string()), name)
    } else {
        (None, rest)
    };
    Some((r.clone(), ns, name.to_string()))
}

impl Collector {
    fn kinds(&self) -> Arc<Vec<Arc<Resource>>> {
        self.registry.kinds().all()
    }

    fn resync(&mut self) {
        self.graph = Graph::default();
        self.waiting.clear();
        let all = match self.registry.store().range(&RangeRequest {
            prefix: "/registry/",
            ..Default::default()
        }) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "garbage collector cannot read the store");
                return;
            }
        };
        for kv in &all.kvs {
            self.observe_put(kv);
        }
    }

    /// Takes a written object into the graph and queues it if it needs attention.
    fn observe_put(&mut self, kv: &KeyValue) {
        let owned = mentions(&kv.value, "\"ownerReferences\"");
        let holds = mentions(&kv.value, FOREGROUND_FINALIZER)
            || mentions(&kv.value, &format!("\"{ORPHAN_FINALIZER}\""));
        if !owned && !holds && !self.graph.owners.contains_key(&kv.key) {
            return;
        }
        let Ok(obj) = decode(kv) else { return };
        if self.graph.set(&kv.key, owner_refs(&obj)) && self.graph.owners.contains_key(&kv.key) {
            self.queue.insert(kv.key.clone());
        }
        if being_deleted(&obj)
            && (has_finalizer(&obj, FOREGROUND_FINALIZER) || has_finalizer(&obj, ORPHAN_FINALIZER))
        {
            self.queue.insert(kv.key.clone());
        }
        self.wake_owners_of(&kv.key);
    }

    fn observe(&mut self, ev: &Event) {
        match ev.kind {
            EventKind::Put => self.observe_put(&ev.kv),
            EventKind::Delete => {
                self.wake_owners_of(&ev.kv.key);
                self.graph.remove(&ev.kv.key);
                if let Some(uid) = decode(&ev.kv).ok().as_ref().and_then(uid_of) {
                    self.waiting.remove(uid);
                    self.queue.extend(self.graph.dependents_of(uid));
                }
            }
        }
    }

    /// A dependent changed: owners waiting on their dependents look again.
    fn wake_owners_of(&mut self, key: &str) {
        for r in self.graph.owners.get(key).into_iter().flatten() {
            if let Some(owner) = self.waiting.get(&r.uid) {
                self.queue.insert(owner.clone());
            }
        }
    }

    /// What became of the owner `r` of an object in namespace `ns`.
    fn owner(&self, ns: Option<&str>, r: &Value) -> Owner {
        let (Some(api_version), Some(kind), Some(name), Some(uid)) = (
            r.get("apiVersion").and_then(Value::as_str),
            r.get("kind").and_then(Value::as_str),
            r.get("name").and_then(Value::as_str),
            r.get("uid").and_then(Value::as_str),
        ) else {
            return Owner::Unknown;
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kinds = self.kinds();
        let Some(res) = kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.kind == kind)
            .or_else(|| kinds.iter().find(|k| k.group == group && k.kind == kind))
        else {
            return Owner::Unknown;
        };
        // A cluster-scoped object cannot be owned by a namespaced one.
        if res.namespaced && ns.is_none() {
            return Owner::Absent;
        }
        let Some(kv) = self.registry.store().get(&res.key(ns, name)).0 else {
            return Owner::Absent;
        };
        match decode(&kv) {
            Ok(o) if uid_of(&o) == Some(uid) => {
                if being_deleted(&o) && has_finalizer(&o, FOREGROUND_FINALIZER) {
                    Owner::Waiting
                } else {
                    Owner::Solid
                }
            }
            _ => Owner::Absent,
        }
    }

    /// Reads, changes and writes an object back (compare-and-swap), unless it is gone or is
    /// another object by now; `change` says whether it changed anything.
    async fn edit(
        &self,
        key: &str,
        uid: &str,
        change: impl Fn(&mut Value) -> bool,
    ) -> Result<(), ApiError> {
        let kinds = self.kinds();
        let Some((r, ns, name)) = locate(&kinds, key) else {
            return Ok(());
        };
        let opts = WriteOptions {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        loop {
            let Some(kv) = self.registry.store().get(key).0 else {
                return Ok(());
            };
            let mut obj = decode(&kv)?;
            if uid_of(&obj) != Some(uid) || !change(&mut obj) {
                return Ok(());
            }
            match self
                .registry
                .update(&r, ns.as_deref(), &name, obj, Part::Main, &opts)
                .await
            {
                Err(e) if e.code == 409 => continue,
                Err(e) if e.code == 404 => return Ok(()),
                other => return other.map(drop),
            }
        }
    }

    async fn delete(&self, key: &str, uid: &str, propagation: Propagation) -> Result<(), ApiError> {
        let kinds = self.kinds();
        let Some((r, ns, name)) = locate(&kinds, key) else {
            return Ok(());
        };
        let opts = DeleteOptions {
            uid: Some(uid.to_string()),
            propagation,
            ..Default::default()
        };
        match self.registry.delete(&r, ns.as_deref(), &name, &opts).await {
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            other => other.map(drop),
        }
    }

    /// Looks at one object: as an owner being deleted, then as a dependent.
    async fn attend(&mut self, key: &str) -> Result<(), ApiError> {
        let Some(kv) = self.registry.store().get(key).0 else {
            return Ok(());
        };
        let obj = decode(&kv)?;
        let Some(uid) = uid_of(&obj).map(str::to_string) else {
            return Ok(());
        };
        if being_deleted(&obj) && has_finalizer(&obj, ORPHAN_FINALIZER) {
            for dep in self.graph.dependents_of(&uid) {
                let dep_uid = self.registry.store().get(&dep).0.and_then(|kv| {
                    decode(&kv)
                        .ok()
                        .and_then(|o| uid_of(&o).map(str::to_string))
                });
                if let Some(dep_uid) = dep_uid {
                    self.edit(&dep, &dep_uid, |o| drop_owner(o, &uid)).await?;
                }
            }
            self.edit(key, &uid, |o| drop_finalizer(o, ORPHAN_FINALIZER))
                .await?;
        } else if being_deleted(&obj) && has_finalizer(&obj, FOREGROUND_FINALIZER) {
            self.waiting.insert(uid.clone(), key.to_string());
            for dep in self.graph.dependents_of(&uid) {
                self.queue.insert(dep);
            }
            if self.graph.blocking(&uid) == 0 {
                self.edit(key, &uid, |o| drop_finalizer(o, FOREGROUND_FINALIZER))
                    .await?;
                self.waiting.remove(&uid);
            }
        }
        self.attend_dependent(key, &obj, &uid).await
    }

    /// A dependent whose owners are all gone is deleted; references to owners that are gone are
    /// dropped while another owner stays.
    async fn attend_dependent(&self, key: &str, obj: &Value, uid: &str) -> Result<(), ApiError> {
        let refs = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let (mut solid, mut waiting, mut gone) = (0, Vec::new(), Vec::new());
        for r in &refs {
            let owner_uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
            match self.owner(ns, r) {
                Owner::Solid | Owner::Unknown => solid += 1,
                Owner::Waiting => waiting.push(owner_uid.to_string()),
                Owner::Absent => gone.push(owner_uid.to_string()),
            }
        }
        if solid > 0 {
            if gone.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            let drop: Vec<String> = gone.into_iter().chain(waiting).collect();
            return self
                .edit(key, uid, |o| drop.iter().any(|d| drop_owner(o, d)))
                .await;
        }
        if being_deleted(obj) {
            return Ok(());
        }
        // Owners waiting on their dependents have this one go first, and its own dependents
        // before it.
        let propagation = if !waiting.is_empty() && !self.graph.dependents_of(uid).is_empty() {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        self.delete(key, uid, propagation).await
    }

    async fn work(&mut self) {
        while let Some(key) = self.queue.pop_first() {
            if let Err(e) = self.attend(&key).await {
                tracing::warn!(object = %key, error = %e, "garbage collection failed; retrying");
                self.retry.insert(key);
            }
        }
    }
}

/// Drops the items of the metadata list `field` that `unwanted` picks (and the field, once
/// empty, as kube-apiserver omits empty lists); says whether any went.
fn drop_from(obj: &mut Value, field: &str, unwanted: impl Fn(&Value) -> bool) -> bool {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(list) = meta.get_mut(field).and_then(Value::as_array_mut) else {
        return false;
    };
    let before = list.len();
    list.retain(|x| !unwanted(x));
    let changed = before != list.len();
    if list.is_empty() {
        meta.remove(field);
    }
    changed
}

/// Drops the reference to owner `uid`; says whether there was one.
fn drop_owner(obj: &mut Value, uid: &str) -> bool {
    drop_from(obj, "ownerReferences", |r| {
        r.get("uid").and_then(Value::as_str) == Some(uid)
    })
}

fn drop_finalizer(obj: &mut Value, f: &str) -> bool {
    drop_from(obj, "finalizers", |x| x == f)
}

impl Reactor for Collector {
    async fn resync(&mut self) {
        Collector::resync(self);
    }

    async fn event(&mut self, ev: &Event) {
        self.observe(ev);
    }

    fn wait(&self) -> Option<Duration> {
        (!self.retry.is_empty()).then_some(RETRY)
    }

    async fn timer(&mut self) {
        let again = std::mem::take(&mut self.retry);
        self.queue.extend(again);
    }

    async fn settle(&mut self) {
        self.work().await;
    }
}

/// Runs until the store closes.
pub async fn run(registry: Arc<Registry>) {
    let follower = Follower::new(registry.store().clone(), "garbage-collector");
    let c = Collector {
        registry,
        graph: Graph::default(),
        queue: BTreeSet::new(),
        retry: BTreeSet::new(),
        waiting: HashMap::new(),
    };
    super::drive(follower, c).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refs(uids: &[(&str, bool)]) -> Vec<OwnerRef> {
        uids.iter()
            .map(|(u, b)| OwnerRef {
                uid: u.to_string(),
                block: *b,
            })
            .collect()
    }

    #[test]
    fn graph_tracks_owners_and_blocking_dependents() {
        let mut g = Graph::default();
        assert!(g.set("/a", refs(&[("o1", true)])));
        assert!(!g.set("/a", refs(&[("o1", true)])), "no change");
        assert!(g.set("/b", refs(&[("o1", false), ("o2", true)])));
        assert!(!g.set("/c", Vec::new()), "objects without owners stay out");
        assert_eq!(g.dependents_of("o1"), ["/a", "/b"]);
        assert_eq!(g.blocking("o1"), 1);
        assert_eq!(g.blocking("o2"), 1);
        assert_eq!(g.remove("/a"), refs(&[("o1", true)]));
        assert_eq!(g.blocking("o1"), 0);
        assert!(g.set("/b", Vec::new()));
        assert!(g.dependents.is_empty() && g.owners.is_empty());
    }

    #[test]
    fn owner_references_and_finalizers_are_dropped() {
        let mut o = json!({"metadata": {"finalizers": ["orphan", "x"], "ownerReferences": [{"uid": "a"}, {"uid": "b"}]}});
        assert!(drop_owner(&mut o, "a"));
        assert!(!drop_owner(&mut o, "a"));
        assert!(drop_finalizer(&mut o, "orphan"));
        assert_eq!(
            o,
            json!({"metadata": {"finalizers": ["x"], "ownerReferences": [{"uid": "b"}]}})
        );
        assert!(drop_owner(&mut o, "b"));
        assert_eq!(o, json!({"metadata": {"finalizers": ["x"]}}));
    }
}
