//! The kinds CustomResourceDefinitions add: installed in the kinds table once a CRD is stored
//! (and again at start), refused before the write when they would clash with a kind served
//! already, and torn down when a deleted CRD's objects are gone.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    decode, meta_str, store_error, DeleteOptions, How, ListOptions, Part, Registry, WriteOptions,
};
use crate::apiserver::crd::{self, CLEANUP_FINALIZER};
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::resources::{self, Builtin, KindError, Resource};
use crate::store::RangeRequest;

fn crds() -> &'static Arc<resources::Resource> {
    resources::builtin(Builtin::CustomResourceDefinition)
}

/// The `scale` subresource of a custom kind (404 for a kind without one).
fn scale_of(r: &Resource) -> Result<&crd::Scale, ApiError> {
    r.custom
        .as_ref()
        .and_then(|v| v.scale.as_ref())
        .ok_or_else(ApiError::no_route)
}

impl Registry {
    /// Refuses a CRD whose kinds another served kind already has (checked before it is stored).
    pub(super) fn check_crd(&self, obj: &Value) -> Result<(), ApiError> {
        let served = crd::served(obj);
        let Some(first) = served.first() else {
            return Ok(());
        };
        let clash = self.kinds.clash(&first.group, &first.plural, &served);
        match clash {
            Some(s) => Err(ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                meta_str(obj, "name").unwrap_or_default(),
                &[FieldError::invalid(
                    if s.kind == first.kind {
                        "spec.names.kind"
                    } else {
                        "spec.names.plural"
                    },
                    if s.kind == first.kind {
                        &first.kind
                    } else {
                        &first.plural
                    }
                    .as_str(),
                    format!("is already in use by {}", s.group_resource()),
                )],
            )),
            None => Ok(()),
        }
    }

    /// Serves what the stored CRD `name` defines now (nothing, once it is gone). Reads the
    /// store rather than trusting the caller's copy, under a lock, so that concurrent writes of
    /// one CRD leave the table as the last of them says.
    pub(super) fn sync_crd(&self, name: &str) {
        let _one_at_a_time = self.crd_sync.lock().unwrap_or_else(|p| p.into_inner());
        let (kv, _) = self.store.get(&crds().key(None, name));
        let Some((group, plural)) = name.split_once('.').map(|(p, g)| (g, p)) else {
            return;
        };
        match kv.as_ref().and_then(|kv| decode(kv).ok()) {
            Some(obj) => {
                if let Err(KindError::Taken(what)) =
                    self.kinds.install(group, plural, crd::served(&obj))
                {
                    tracing::warn!(
                        crd = name,
                        taken = what,
                        "a CRD's kind clashes with one served already; not served"
                    );
                }
            }
            None => self.kinds.remove(group, plural),
        }
    }

    /// Serves the kinds of every stored CRD, and takes up the cleanup of those being deleted
    /// (at start).
    pub fn restore_crds(self: &Arc<Self>) -> Result<(), ApiError> {
        let all = self
            .store
            .range(&RangeRequest {
                prefix: &crds().prefix(),
                ..Default::default()
            })
            .map_err(store_error)?;
        for kv in &all.kvs {
            let obj = decode(kv)?;
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            self.sync_crd(&name);
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                self.finalize_crd(name, meta_str(&obj, "uid").unwrap_or_default().to_string());
            }
        }
        Ok(())
    }

    /// Deletes every object of a deleted CRD (each one waits for its own finalizers), then
    /// removes the CRD's cleanup finalizer, which lets it go.
    pub(super) fn finalize_crd(self: &Arc<Self>, name: String, uid: String) {
        let me = self.clone();
        tokio::spawn(async move {
            me.sync_crd(&name);
            let now = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            let mut pause = Duration::from_millis(50);
            loop {
                let current = me.store.get(&crds().key(None, &name)).0;
                let Some(obj) = current.as_ref().and_then(|kv| decode(kv).ok()) else {
                    return;
                };
                if meta_str(&obj, "uid") != Some(uid.as_str()) {
                    return;
                }
                let Some(r) = crd::stored(&obj).map(Arc::new) else {
                    break;
                };
                let list = match me.list(&r, None, &ListOptions::default()) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(crd = name, error = %e, "listing a deleted CRD's objects");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                if list.items.is_empty() {
                    break;
                }
                for item in list.items {
                    let Ok(o) = serde_json::from_slice::<Value>(&item) else {
                        continue;
                    };
                    let (ns, n) = (
                        meta_str(&o, "namespace"),
                        meta_str(&o, "name").unwrap_or_default(),
                    );
                    if let Err(e) = me.delete(&r, ns, n, &now).await {
                        tracing::debug!(crd = name, object = n, error = %e, "CRD cleanup");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            me.release(&crds().key(None, &name), &uid, "CRD finalization", |obj| {
                if let Some(f) = obj
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|x| x != &json!(CLEANUP_FINALIZER));
                }
            })
            .await;
            me.sync_crd(&name);
        });
    }

    /// The Scale of a custom object (its `scale` subresource).
    pub fn read_scale(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        Ok(scale_of(r)?.read(&decode(&self.get(r, ns, name)?)?))
    }

    /// Changes the replicas of a custom object through its `scale` subresource: `change`
    /// gets the current Scale and returns the one wanted (its resourceVersion, if any, a
    /// precondition); the answer is the Scale after the write.
    pub async fn update_scale(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &WriteOptions,
        mut change: impl FnMut(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let scale = scale_of(r)?;
        let how = How {
            part: Part::Main,
            applied: false,
        };
        let written = self
            .guaranteed_update(r, ns, name, how, opts, |old| {
                let Some(old) = old else { return Ok(None) };
                let wanted = change(&scale.read(old))?;
                let replicas = wanted
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        &[FieldError::invalid(
                            "spec.replicas",
                            replicas,
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut obj = old.clone();
                scale.write(&mut obj, replicas);
                match wanted
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                {
                    Some(rv) if !rv.is_empty() => obj["metadata"]["resourceVersion"] = json!(rv),
                    _ => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove("resourceVersion");
                        }
                    }
                }
                Ok(Some(obj))
            })
            .await?;
        let obj: Value = serde_json::from_slice(&written.object)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(scale.read(&obj))
    }
}
