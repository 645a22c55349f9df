//! Delete: preconditions, finalizers, graceful deletion of pods bound to a node, and namespace
//! lifecycle (a deleted namespace turns Terminating, its content goes, then it goes).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{
    decode, encoder, meta_str, parse_rv, store_error, DeleteOptions, ListOptions, Registry,
};
use crate::apiserver::admission::Admission;
use crate::apiserver::error::ApiError;
use crate::apiserver::resources::{self, Builtin, Resource};
use crate::store::{Op, Precondition, StoreError};
use crate::time::rfc3339;

/// Namespaces kube-apiserver refuses to delete.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

impl Registry {
    /// DELETE: removes the object, or marks it for deletion while finalizers remain (and, for a
    /// namespace, deletes its content first).
    pub fn delete<'a>(
        self: &'a Arc<Self>,
        r: &'a Arc<Resource>,
        ns: Option<&'a str>,
        name: &'a str,
        opts: &'a DeleteOptions,
    ) -> BoxFuture<'a, Result<Bytes, ApiError>> {
        Box::pin(self.delete_inner(r, ns, name, opts))
    }

    async fn delete_inner(
        self: &Arc<Self>,
        r: &Arc<Resource>,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Bytes, ApiError> {
        if r.is(Builtin::Namespace) && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let key = r.key(ns, name);
        loop {
            let kv = self.get(r, ns, name)?;
            let mut obj = decode(&kv)?;
            if let Some(uid) = &opts.uid {
                let have = meta_str(&obj, "uid").unwrap_or_default();
                if uid != have {
                    return Err(ApiError::conflict(r, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if parse_rv(rv)? != kv.mod_revision {
                    return Err(ApiError::conflict(r, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision)));
                }
            }
            if opts.dry_run {
                return Ok(kv.value);
            }
            // Foreground and Orphan deletion hold the object with their finalizer while the
            // garbage collector sees to its dependents.
            if let Some(f) = opts.propagation.finalizer() {
                if obj.pointer("/metadata/deletionTimestamp").is_none() {
                    let meta = obj["metadata"]
                        .as_object_mut()
                        .expect("stored objects have metadata");
                    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                    if let Some(a) = list.as_array_mut().filter(|a| !a.contains(&json!(f))) {
                        a.push(json!(f));
                    }
                }
            }
            let finalizers = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let graceful = r.is(Builtin::Pod)
                && obj.pointer("/spec/nodeName").is_some()
                && opts
                    .grace_period_seconds
                    .or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(0)
                    > 0;
            if r.is(Builtin::Namespace) || finalizers || graceful {
                if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(kv.value);
                }
                let grace = if graceful {
                    opts.grace_period_seconds
                        .or_else(|| {
                            obj.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                obj["metadata"]["deletionTimestamp"] = json!(rfc3339(
                    SystemTime::now() + Duration::from_secs(grace as u64)
                ));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if r.is(Builtin::Namespace) {
                    obj["status"]["phase"] = json!("Terminating");
                }
                if r.is(Builtin::CustomResourceDefinition) {
                    crate::apiserver::crd::mark_terminating(&mut obj);
                }
                match self
                    .store
                    .txn(vec![Op::Put {
                        key: key.clone(),
                        precondition: Precondition::ModRevision(kv.mod_revision),
                        value: encoder(obj),
                    }])
                    .await
                {
                    Ok(mut kvs) => {
                        let uid = meta_str(&decode(&kvs[0])?, "uid")
                            .unwrap_or_default()
                            .to_string();
                        if r.is(Builtin::Namespace) {
                            let (me, name) = (self.clone(), name.to_string());
                            tokio::spawn(async move { me.finalize_namespace(&name, &uid).await });
                        } else if r.is(Builtin::CustomResourceDefinition) {
                            self.finalize_crd(name.to_string(), uid);
                        } else if graceful && !finalizers {
                            self.delete_after_grace(r, ns, name, uid, grace);
                        }
                        return Ok(kvs.remove(0).value);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_error(e)),
                }
            }
            let tombstone = encoder(obj.clone());
            match self
                .store
                .txn(vec![Op::Delete {
                    key: key.clone(),
                    precondition: Precondition::ModRevision(kv.mod_revision),
                    tombstone,
                }])
                .await
            {
                Ok(mut kvs) => {
                    self.admission.release(&Admission::held(r, &obj));
                    if r.is(Builtin::CustomResourceDefinition) {
                        self.sync_crd(name);
                    }
                    return Ok(kvs.remove(0).value);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// No kubelet confirms a pod's graceful deletion here: the server does, once the grace
    /// period is over (and only if the pod is still the one that was deleted).
    fn delete_after_grace(
        self: &Arc<Self>,
        r: &Arc<Resource>,
        ns: Option<&str>,
        name: &str,
        uid: String,
        grace: i64,
    ) {
        let (me, r) = (self.clone(), r.clone());
        let (ns, name) = (ns.map(str::to_string), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace as u64)).await;
            let opts = DeleteOptions {
                grace_period_seconds: Some(0),
                uid: Some(uid),
                ..Default::default()
            };
            let _ = me.delete(&r, ns.as_deref(), &name, &opts).await;
        });
    }

    /// Takes up, after a restart, what deletions left to do: terminating namespaces are
    /// finalized, pods in their grace period are deleted when it ends.
    pub fn resume_deletions(self: &Arc<Self>) -> Result<(), ApiError> {
        for (kind, ns_scoped) in [(Builtin::Namespace, false), (Builtin::Pod, true)] {
            let r = resources::builtin(kind);
            let all = self
                .store
                .range(&crate::store::RangeRequest {
                    prefix: &r.prefix(),
                    ..Default::default()
                })
                .map_err(store_error)?;
            for kv in &all.kvs {
                let obj = decode(kv)?;
                let Some(when) = meta_str(&obj, "deletionTimestamp") else {
                    continue;
                };
                let name = meta_str(&obj, "name").unwrap_or_default().to_string();
                let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
                if !ns_scoped {
                    let me = self.clone();
                    tokio::spawn(async move { me.finalize_namespace(&name, &uid).await });
                    continue;
                }
                let finalizers = obj
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    continue;
                }
                let left = crate::time::parse(when)
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                let ns = meta_str(&obj, "namespace").map(str::to_string);
                self.delete_after_grace(r, ns.as_deref(), &name, uid, left);
            }
        }
        Ok(())
    }

    /// Lets a deleted object (still the one with `uid`) go once the server's own work on it is
    /// done: `done` takes the server's hold off it; it is written back while other finalizers
    /// remain, deleted otherwise. Retried on conflicts.
    pub(super) async fn release(
        &self,
        key: &str,
        uid: &str,
        what: &'static str,
        mut done: impl FnMut(&mut Value),
    ) {
        loop {
            let (Some(kv), _) = self.store.get(key) else {
                return;
            };
            let Ok(mut obj) = decode(&kv) else { return };
            if meta_str(&obj, "uid") != Some(uid) {
                return;
            }
            done(&mut obj);
            let precondition = Precondition::ModRevision(kv.mod_revision);
            let held = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let op = if held {
                Op::Put {
                    key: key.to_string(),
                    precondition,
                    value: encoder(obj),
                }
            } else {
                Op::Delete {
                    key: key.to_string(),
                    precondition,
                    tombstone: encoder(obj),
                }
            };
            match self.store.txn(vec![op]).await {
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(key, error = %e, "{what}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(_) => return,
            }
        }
    }

    /// Deletes everything in a terminating namespace, then the namespace itself — never before
    /// it is empty, however long that takes (an object with finalizers waits for them).
    async fn finalize_namespace(self: Arc<Self>, name: &str, uid: &str) {
        let now_opts = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let nsr = resources::builtin(Builtin::Namespace);
        let mut pause = Duration::from_millis(200);
        loop {
            // The namespace is gone, or another one has its name: nothing left to do.
            let current = self.store.get(&nsr.key(None, name)).0;
            if current
                .as_ref()
                .and_then(|kv| decode(kv).ok())
                .is_none_or(|o| meta_str(&o, "uid") != Some(uid))
            {
                return;
            }
            let mut left = 0;
            for r in self.kinds.all().iter().filter(|r| r.namespaced) {
                let Ok(list) = self.list(r, Some(name), &ListOptions::default()) else {
                    continue;
                };
                for item in list.items {
                    left += 1;
                    let Ok(obj) = serde_json::from_slice::<Value>(&item) else {
                        continue;
                    };
                    if let Some(n) = meta_str(&obj, "name") {
                        if let Err(e) = self.delete(r, Some(name), n, &now_opts).await {
                            tracing::debug!(namespace = name, object = n, error = %e, "namespace cleanup");
                        }
                    }
                }
            }
            if left == 0 {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        // The namespace's own finalizer is done; it goes now, or when the last of its metadata
        // finalizers is removed.
        self.release(&nsr.key(None, name), uid, "namespace finalization", |obj| {
            obj["spec"]["finalizers"] = json!([]);
        })
        .await;
    }
}
