//! The ServiceAccount controller: every namespace has a `default` ServiceAccount, made as soon as
//! the namespace appears (and again if it is deleted while the namespace lives), as
//! kube-controller-manager's serviceaccount controller keeps it.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Feed, Follower};
use crate::apiserver::registry::Registry;
use crate::apiserver::resources::{builtin, Builtin};
use crate::store::{EventKind, RangeRequest};

const DEFAULT: &str = "default";

fn active(ns: &Value) -> bool {
    ns.pointer("/metadata/deletionTimestamp").is_none()
}

async fn ensure(registry: &Registry, ns: &str) {
    let sa = json!({"metadata": {"name": DEFAULT, "namespace": ns}});
    if let Err(e) = registry
        .ensure(builtin(Builtin::ServiceAccount), Some(ns), sa)
        .await
    {
        // A namespace being deleted refuses new objects; anything else is worth a line.
        tracing::debug!(namespace = ns, error = %e, "default ServiceAccount not made");
    }
}

pub async fn run(registry: Arc<Registry>) {
    let store = registry.store().clone();
    let ns_prefix = builtin(Builtin::Namespace).prefix();
    let sa_prefix = builtin(Builtin::ServiceAccount).prefix();
    let mut feed = Follower::new(store.clone(), "serviceaccount");
    while let Some(next) = feed.next().await {
        let batch = match next {
            Feed::Resync => {
                if let Ok(all) = store.range(&RangeRequest {
                    prefix: &ns_prefix,
                    ..Default::default()
                }) {
                    for kv in &all.kvs {
                        let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                        if active(&v) {
                            ensure(&registry, &kv.key[ns_prefix.len()..]).await;
                        }
                    }
                }
                continue;
            }
            Feed::Batch(b) => b,
        };
        for ev in batch.iter() {
            let key = ev.kv.key.as_str();
            if let Some(ns) = key.strip_prefix(&ns_prefix) {
                let v: Value = serde_json::from_slice(&ev.kv.value).unwrap_or(Value::Null);
                if ev.kind == EventKind::Put && ev.prev.is_none() && active(&v) {
                    ensure(&registry, ns).await;
                }
            } else if let Some(ns) = key
                .strip_prefix(&sa_prefix)
                .and_then(|rest| rest.strip_suffix("/default"))
            {
                if ev.kind != EventKind::Delete {
                    continue;
                }
                let live = registry
                    .get(builtin(Builtin::Namespace), None, ns)
                    .ok()
                    .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                    .is_some_and(|v| active(&v));
                if live {
                    ensure(&registry, ns).await;
                }
            }
        }
    }
}
