//! Defaults that depend on other objects, and the objects the server makes at start: the
//! default IngressClass.

use serde_json::{json, Value};

use super::{decode, meta_str, Registry, WriteOptions};
use crate::apiserver::error::ApiError;
use crate::apiserver::resources::{self, Builtin, Resource};
use crate::store::RangeRequest;

impl Registry {
    /// The IngressClass marked default, newest first, for Ingresses that name none.
    pub(super) fn default_ingress_class(&self) -> Option<String> {
        let ic = resources::builtin(Builtin::IngressClass);
        let all = self
            .store
            .range(&RangeRequest {
                prefix: &ic.prefix(),
                ..Default::default()
            })
            .ok()?;
        all.kvs
            .iter()
            .filter_map(|kv| decode(kv).ok())
            .filter(|o| {
                o.pointer("/metadata/annotations/ingressclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
            })
            .max_by_key(|o| meta_str(o, "creationTimestamp").unwrap_or("").to_string())
            .and_then(|o| meta_str(&o, "name").map(str::to_string))
    }

    /// Creates the IngressClass `switchyard`, marked default, unless it exists.
    pub async fn ensure_default_ingress_class(&self) -> Result<(), ApiError> {
        let class = json!({
            "metadata": {"name": "switchyard", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "switchyard.io/ingress-controller"},
        });
        self.ensure(resources::builtin(Builtin::IngressClass), None, class)
            .await
    }

    /// Creates an object unless it exists (bootstrap objects at start).
    pub async fn ensure(&self, r: &Resource, ns: Option<&str>, obj: Value) -> Result<(), ApiError> {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if self.store.get(&r.key(ns, &name)).0.is_some() {
            return Ok(());
        }
        match self.create(r, ns, obj, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
