//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` has as its
//! `rules` the union of the rules of every ClusterRole its selectors match, written back as
//! kube-controller-manager's clusterrole-aggregation controller does, so `kubectl get
//! clusterrole view -o yaml` shows what `view` grants. (Authorization does not wait for it: the
//! RBAC index aggregates on its own.)

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Feed, Follower};
use crate::apiserver::authz::rbac::{aggregated, Rule};
use crate::apiserver::registry::{Part, Registry, WriteOptions};
use crate::apiserver::resources::{builtin, Builtin};
use crate::store::RangeRequest;

/// Writes every aggregated ClusterRole's rules that differ from what they aggregate.
pub async fn sync(registry: &Registry) {
    let r = builtin(Builtin::ClusterRole);
    let prefix = r.prefix();
    let Ok(all) = registry.store().range(&RangeRequest {
        prefix: &prefix,
        ..Default::default()
    }) else {
        return;
    };
    let roles: Vec<Value> = all
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    for role in &roles {
        let Some(rules) = aggregated(role, &roles) else {
            continue;
        };
        let have: Vec<Rule> = role
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Rule::from_json).collect())
            .unwrap_or_default();
        if have == rules {
            continue;
        }
        let name = role
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut next = role.clone();
        next["rules"] = json!(rules.iter().map(Rule::to_json).collect::<Vec<_>>());
        if let Err(e) = registry
            .update(r, None, name, next, Part::Main, &WriteOptions::default())
            .await
        {
            tracing::debug!(clusterrole = name, error = %e, "writing aggregated rules");
        }
    }
}

pub async fn run(registry: Arc<Registry>) {
    let prefix = builtin(Builtin::ClusterRole).prefix();
    let mut feed = Follower::new(registry.store().clone(), "clusterrole-aggregation");
    while let Some(next) = feed.next().await {
        let changed = match next {
            Feed::Resync => true,
            Feed::Batch(batch) => batch.iter().any(|ev| ev.kv.key.starts_with(&prefix)),
        };
        if changed {
            sync(&registry).await;
        }
    }
}
