//! Events: each one disappears a time (`--event-ttl`) after its last write, as kube-apiserver's
//! etcd leases do it; and every events.k8s.io/v1 Event is also served as a core/v1 Event (kube
//! serves one storage in both forms; here the newer form is converted into the older one), so
//! `kubectl get events` and `kubectl describe` show what the newer recorders write.
//!
//! The expiry of an Event read back at start is its latest time plus the TTL, so deletions
//! resume after a restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::{Follower, Reactor};
use crate::apiserver::error::ApiError;
use crate::apiserver::registry::{decode, DeleteOptions, Part, Registry, WriteOptions};
use crate::apiserver::resources::{builtin, Builtin, Resource};
use crate::store::{EventKind, KeyValue, RangeRequest};

/// The manager named in the core copies' managed fields.
const MIRROR: &str = "switchyard-event-mirror";

/// events.k8s.io/v1 field -> core/v1 field, for the fields that are renamed.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];
/// Fields both forms share.
const SHARED: &[&str] = &[
    "action",
    "eventTime",
    "reason",
    "related",
    "reportingInstance",
    "series",
    "type",
];

/// The core/v1 form of an events.k8s.io/v1 Event.
pub fn to_core(v1: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    let mut meta = Map::new();
    for f in ["name", "namespace", "labels", "annotations"] {
        if let Some(v) = v1.pointer(&format!("/metadata/{f}")) {
            meta.insert(f.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    for (from, to) in RENAMED {
        if let Some(v) = v1.get(*from).filter(|v| !v.is_null()) {
            out.insert((*to).into(), v.clone());
        }
    }
    for f in SHARED {
        if let Some(v) = v1.get(*f).filter(|v| !v.is_null()) {
            out.insert((*f).into(), v.clone());
        }
    }
    if !out.contains_key("involvedObject") {
        out.insert("involvedObject".into(), json!({}));
    }
    Value::Object(out)
}

/// The latest time an Event says it was written.
fn last_written(ev: &Value) -> Option<SystemTime> {
    [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/deprecatedLastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|p| ev.pointer(p).and_then(Value::as_str))
    .filter_map(crate::time::parse)
    .max()
}

/// When each stored Event expires, soonest first.
#[derive(Default)]
struct Expiries {
    queue: BTreeSet<(SystemTime, String)>,
    by_key: HashMap<String, SystemTime>,
}

impl Expiries {
    fn set(&mut self, key: &str, at: SystemTime) {
        if let Some(old) = self.by_key.insert(key.to_string(), at) {
            self.queue.remove(&(old, key.to_string()));
        }
        self.queue.insert((at, key.to_string()));
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            self.queue.remove(&(old, key.to_string()));
        }
    }

    fn next(&self) -> Option<SystemTime> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The keys due by `now`, taken out.
    fn due(&mut self, now: SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.queue.first() {
            if *t > now {
                break;
            }
            let (_, key) = self.queue.pop_first().expect("not empty");
            self.by_key.remove(&key);
            out.push(key);
        }
        out
    }
}

struct Controller {
    registry: Arc<Registry>,
    ttl: Duration,
    core: &'static Arc<Resource>,
    v1: &'static Arc<Resource>,
    expiries: Expiries,
}

/// (namespace, name) of an Event's store key under `r`.
fn ns_name<'a>(r: &Resource, key: &'a str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(r.prefix().as_str())?.split_once('/')
}

impl Controller {
    fn kind_of(&self, key: &str) -> Option<&'static Arc<Resource>> {
        [self.core, self.v1]
            .into_iter()
            .find(|r| key.starts_with(&r.prefix()))
    }

    fn resync(&mut self) {
        self.expiries = Expiries::default();
        for r in [self.core, self.v1] {
            let Ok(all) = self.registry.store().range(&RangeRequest {
                prefix: &r.prefix(),
                ..Default::default()
            }) else {
                continue;
            };
            for kv in &all.kvs {
                let last = decode(kv)
                    .ok()
                    .and_then(|o| last_written(&o))
                    .unwrap_or_else(SystemTime::now);
                self.expiries.set(&kv.key, last + self.ttl);
            }
        }
    }

    /// Writes the core/v1 copy of an events.k8s.io/v1 Event.
    async fn mirror(&self, kv: &KeyValue) -> Result<(), ApiError> {
        let Some((ns, name)) = ns_name(self.v1, &kv.key) else {
            return Ok(());
        };
        let core = to_core(&decode(kv)?);
        let opts = WriteOptions {
            field_manager: Some(MIRROR.into()),
            ..Default::default()
        };
        match self
            .registry
            .update(self.core, Some(ns), name, core.clone(), Part::Main, &opts)
            .await
        {
            Err(e) if e.code == 404 => self
                .registry
                .create(self.core, Some(ns), core, &opts)
                .await
                .map(drop),
            other => other.map(drop),
        }
    }

    async fn delete(&self, r: &Arc<Resource>, key: &str) {
        let Some((ns, name)) = ns_name(r, key) else {
            return;
        };
        match self
            .registry
            .delete(r, Some(ns), name, &DeleteOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => tracing::warn!(event = key, error = %e, "event cleanup failed"),
        }
    }

    async fn handle(&mut self, ev: &crate::store::Event) {
        let Some(r) = self.kind_of(&ev.kv.key) else {
            return;
        };
        match ev.kind {
            EventKind::Put => self.expiries.set(&ev.kv.key, SystemTime::now() + self.ttl),
            EventKind::Delete => self.expiries.remove(&ev.kv.key),
        }
        if !Arc::ptr_eq(r, self.v1) {
            return;
        }
        match ev.kind {
            EventKind::Put => {
                if let Err(e) = self.mirror(&ev.kv).await {
                    tracing::warn!(event = %ev.kv.key, error = %e, "cannot serve an events.k8s.io/v1 Event as core/v1");
                }
            }
            EventKind::Delete => {
                if let Some((ns, name)) = ns_name(self.v1, &ev.kv.key) {
                    let key = self.core.key(Some(ns), name);
                    self.delete(self.core, &key).await;
                }
            }
        }
    }

    async fn expire(&mut self) {
        for key in self.expiries.due(SystemTime::now()) {
            if let Some(r) = self.kind_of(&key) {
                self.delete(r, &key).await;
            }
        }
    }
}

impl Reactor for Controller {
    async fn resync(&mut self) {
        Controller::resync(self);
    }

    async fn event(&mut self, ev: &crate::store::Event) {
        self.handle(ev).await;
    }

    fn wait(&self) -> Option<Duration> {
        self.expiries
            .next()
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
    }

    async fn timer(&mut self) {
        self.expire().await;
    }

    async fn settle(&mut self) {}
}

/// Runs until the store closes.
pub async fn run(registry: Arc<Registry>, ttl: Duration) {
    let follower = Follower::new(registry.store().clone(), "events");
    let c = Controller {
        registry,
        ttl,
        core: builtin(Builtin::Event),
        v1: builtin(Builtin::EventsV1Event),
        expiries: Expiries::default(),
    };
    super::drive(follower, c).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_events_convert_to_core() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "ns", "uid": "u", "resourceVersion": "5"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "c", "reportingInstance": "i",
            "action": "Sync", "reason": "Failed", "note": "it broke", "type": "Warning",
            "regarding": {"kind": "Service", "namespace": "ns", "name": "s"},
            "deprecatedCount": 3, "series": null});
        let core = to_core(&v1);
        assert_eq!(
            core,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "ns"},
                "eventTime": "2026-01-01T00:00:00.000000Z", "reportingComponent": "c", "reportingInstance": "i",
                "action": "Sync", "reason": "Failed", "message": "it broke", "type": "Warning",
                "involvedObject": {"kind": "Service", "namespace": "ns", "name": "s"}, "count": 3})
        );
    }

    #[test]
    fn expiries_come_due_in_order_and_move_with_writes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut e = Expiries::default();
        e.set("a", t0 + Duration::from_secs(5));
        e.set("b", t0 + Duration::from_secs(1));
        e.set("c", t0 + Duration::from_secs(3));
        // A later write moves "b" back.
        e.set("b", t0 + Duration::from_secs(10));
        e.remove("c");
        assert_eq!(e.next(), Some(t0 + Duration::from_secs(5)));
        assert!(e.due(t0).is_empty());
        assert_eq!(e.due(t0 + Duration::from_secs(6)), ["a"]);
        assert_eq!(e.due(t0 + Duration::from_secs(60)), ["b"]);
        assert_eq!(e.next(), None);
    }

    #[test]
    fn the_latest_time_counts() {
        let ev = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "lastTimestamp": "2026-01-01T00:10:00Z", "series": {"lastObservedTime": "2026-01-01T00:20:00.000000Z"}});
        assert_eq!(
            last_written(&ev),
            crate::time::parse("2026-01-01T00:20:00Z")
        );
    }
}
