//! The EndpointSlice controller: for every Service with a selector, EndpointSlices listing the
//! matching Pods that have an IP, as kube-controller-manager keeps them.
//!
//! It follows the store's event feed (Services, Pods and its own slices), marks the Services an
//! event touches, and syncs them in small batches. An index (each Service's selector, each Pod's
//! labels, its slices by Service) makes an event cost the Services of its namespace and a sync
//! read only the Pods its Service selects. A failed sync is tried again with backoff, and every
//! Service is synced again every five minutes. A sync changes only what differs: endpoints
//! stay in the slice they are in, new ones fill slices with room (at most 100 per slice), and a
//! slice is written only when its content changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::{Feed, Follower};
use crate::apiserver::error::ApiError;
use crate::apiserver::registry::{decode, DeleteOptions, Part, Registry, WriteOptions};
use crate::apiserver::resources::{builtin, Builtin, Resource};
use crate::apiserver::selectors::labels_of;
use crate::store::{Event, EventKind, RangeRequest};

pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// When the change that caused a slice write happened; node agents measure from it.
const MAX_PER_SLICE: usize = 100;
/// Events that arrive within this window are synced together.
const BATCH: Duration = Duration::from_millis(10);

type ServiceKey = (String, String);

struct Kinds {
    svc: &'static Arc<Resource>,
    pod: &'static Arc<Resource>,
    slice: &'static Arc<Resource>,
}

fn name_ns(obj: &Value) -> Option<ServiceKey> {
    Some((
        obj.pointer("/metadata/namespace")?.as_str()?.to_string(),
        obj.pointer("/metadata/name")?.as_str()?.to_string(),
    ))
}

fn selector(svc: &Value) -> Option<BTreeMap<String, String>> {
    let sel = svc.pointer("/spec/selector")?.as_object()?;
    if sel.is_empty() {
        return None;
    }
    Some(
        sel.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

fn selects(sel: &BTreeMap<String, String>, pod: &Value) -> bool {
    matches(sel, &labels_of(pod))
}

fn matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Resolves a Service port's targetPort against a Pod's container ports.
fn resolve_port(target: Option<&Value>, port: i64, protocol: &str, pod: &Value) -> Option<i64> {
    match target {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|p| {
                p.get("name").and_then(Value::as_str) == Some(name)
                    && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
        _ => Some(port),
    }
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True"))
            })
        })
}

/// The endpoint for one address of a Pod.
fn endpoint(svc: &Value, pod: &Value, address: &str) -> Value {
    let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
    let publish = svc.pointer("/spec/publishNotReadyAddresses") == Some(&Value::Bool(true));
    let serving = publish || pod_ready(pod);
    let ready = serving && !terminating;
    let mut ep = json!({
        "addresses": [address],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": {
            "kind": "Pod",
            "namespace": pod.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
            "name": pod.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "uid": pod.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        },
    });
    if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
        ep["nodeName"] = json!(n);
    }
    let headless = svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let svc_name = svc.pointer("/metadata/name").and_then(Value::as_str);
    if headless && pod.pointer("/spec/subdomain").and_then(Value::as_str) == svc_name {
        if let Some(h) = pod.pointer("/spec/hostname").and_then(Value::as_str) {
            ep["hostname"] = json!(h);
        }
    }
    ep
}

fn pod_ips(pod: &Value) -> Vec<String> {
    let mut ips: Vec<String> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("ip").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(
            pod.pointer("/status/podIP")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
    }
    ips
}

/// A group of endpoints that share an address type and resolved ports (as JSON text): one or
/// more slices.
type GroupKey = (String, String);

fn group_ports(group: &GroupKey) -> Value {
    serde_json::from_str(&group.1).unwrap_or(json!([]))
}

/// The endpoints a Service should have, grouped; address -> endpoint within each group.
fn desired(svc: &Value, pods: &[Value]) -> BTreeMap<GroupKey, BTreeMap<String, Value>> {
    let mut out: BTreeMap<GroupKey, BTreeMap<String, Value>> = BTreeMap::new();
    let Some(sel) = selector(svc) else { return out };
    let svc_ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for pod in pods {
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if !selects(&sel, pod) || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|p| {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                let resolved = resolve_port(p.get("targetPort"), port, proto, pod)?;
                let mut ep = json!({"name": p.get("name").and_then(Value::as_str).unwrap_or(""), "protocol": proto, "port": resolved});
                if let Some(ap) = p.get("appProtocol") {
                    ep["appProtocol"] = ap.clone();
                }
                Some(ep)
            })
            .collect();
        for ip in pod_ips(pod) {
            let ty = if ip.contains(':') { "IPv6" } else { "IPv4" };
            out.entry((ty.to_string(), Value::Array(ports.clone()).to_string()))
                .or_default()
                .insert(ip.clone(), endpoint(svc, pod, &ip));
        }
    }
    out
}

fn slice_object(
    svc: &Value,
    name: Option<&str>,
    ty: &str,
    ports: &Value,
    endpoints: Vec<Value>,
    trigger: SystemTime,
) -> Value {
    let (ns, svc_name) = name_ns(svc).unwrap_or_default();
    let mut labels = svc
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), json!(svc_name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let mut meta = json!({
        "namespace": ns,
        "labels": labels,
        "annotations": {crate::conventions::TRIGGER_TIME_ANNOTATION: crate::time::rfc3339_micros(trigger)},
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "Service", "name": svc_name,
            "uid": svc.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            "controller": true, "blockOwnerDeletion": true,
        }],
    });
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{svc_name}-")),
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": ty, "ports": ports, "endpoints": endpoints})
}

/// The part of a slice the controller decides, to compare desired and stored slices.
fn content(slice: &Value) -> Value {
    json!({
        "labels": slice.pointer("/metadata/labels"),
        "addressType": slice.get("addressType"),
        "ports": slice.get("ports").cloned().unwrap_or(json!([])),
        "endpoints": slice.get("endpoints").cloned().unwrap_or(json!([])),
    })
}

/// Objects of one namespace, each with a map of labels (a Pod's labels, or a Service's
/// selector), found by label.
#[derive(Default)]
struct ByLabel {
    maps: HashMap<String, BTreeMap<String, String>>,
    /// (key, value) -> the names whose map holds it.
    by_pair: HashMap<(String, String), HashSet<String>>,
}

impl ByLabel {
    fn insert(&mut self, name: &str, map: BTreeMap<String, String>) {
        self.remove(name);
        for pair in &map {
            self.by_pair
                .entry((pair.0.clone(), pair.1.clone()))
                .or_default()
                .insert(name.to_string());
        }
        self.maps.insert(name.to_string(), map);
    }

    fn remove(&mut self, name: &str) {
        let Some(map) = self.maps.remove(name) else {
            return;
        };
        for pair in map {
            if let Some(names) = self.by_pair.get_mut(&pair) {
                names.remove(name);
                if names.is_empty() {
                    self.by_pair.remove(&pair);
                }
            }
        }
    }

    /// The names whose map holds every pair of `sel` (the Pods a selector selects): the
    /// rarest pair's names, checked.
    fn holding(&self, sel: &BTreeMap<String, String>) -> Vec<&String> {
        let rarest = sel
            .iter()
            .map(|(k, v)| self.by_pair.get(&(k.clone(), v.clone())))
            .min_by_key(|names| names.map_or(0, HashSet::len));
        match rarest {
            Some(Some(names)) => names
                .iter()
                .filter(|n| self.maps.get(*n).is_some_and(|m| matches(sel, m)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The names whose map `labels` holds entirely (the selectors that select a Pod): those
    /// sharing a pair with it, checked.
    fn held_by(&self, labels: &BTreeMap<String, String>) -> HashSet<&String> {
        labels
            .iter()
            .filter_map(|(k, v)| self.by_pair.get(&(k.clone(), v.clone())))
            .flatten()
            .filter(|n| self.maps.get(*n).is_some_and(|sel| matches(sel, labels)))
            .collect()
    }
}

/// What the controller knows of the cluster without reading the store: enough to tell which
/// Services an event touches and which objects a sync reads.
#[derive(Default)]
struct Index {
    /// namespace -> the selectors of the Services this controller manages.
    services: HashMap<String, ByLabel>,
    /// namespace -> the labels of its Pods.
    pods: HashMap<String, ByLabel>,
    /// (namespace, Service) -> the names of the slices this controller manages for it.
    slices: HashMap<ServiceKey, BTreeSet<String>>,
}

/// A Service's managed slice: the Service it belongs to.
fn managed_slice(obj: &Value) -> Option<ServiceKey> {
    let labels = obj.pointer("/metadata/labels")?;
    if labels.get(MANAGED_BY_LABEL).and_then(Value::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let svc = labels.get(SERVICE_NAME_LABEL)?.as_str()?;
    Some((name_ns(obj)?.0, svc.to_string()))
}

/// Removes `name` from namespace `ns` of a per-namespace index (and the namespace, once empty).
fn forget(m: &mut HashMap<String, ByLabel>, ns: &str, name: &str) {
    if let Some(inner) = m.get_mut(ns) {
        inner.remove(name);
        if inner.maps.is_empty() {
            m.remove(ns);
        }
    }
}

/// Failed syncs wait this long first, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Every Service is synced again this often, whatever the events said.
const RESYNC: Duration = Duration::from_secs(300);

pub struct Controller {
    registry: Arc<Registry>,
    kinds: Kinds,
    index: Index,
    /// Services whose last sync failed: when to try again, and the backoff after that.
    retry: HashMap<ServiceKey, (Instant, Duration)>,
    /// Slices this controller wrote, by store key, with the revision of the write: their events
    /// need no sync (anyone else's change to a slice does).
    own: std::sync::Mutex<HashMap<String, i64>>,
}

impl Controller {
    pub fn new(registry: Arc<Registry>) -> Self {
        let kinds = Kinds {
            svc: builtin(Builtin::Service),
            pod: builtin(Builtin::Pod),
            slice: builtin(Builtin::EndpointSlice),
        };
        Controller {
            registry,
            kinds,
            index: Index::default(),
            retry: HashMap::new(),
            own: Default::default(),
        }
    }

    fn read(&self, key: &str) -> Option<Value> {
        self.registry
            .store()
            .get(key)
            .0
            .and_then(|kv| decode(&kv).ok())
    }

    /// Reads every Service, Pod and slice into the index; returns every Service.
    fn rebuild(&mut self) -> Vec<ServiceKey> {
        self.index = Index::default();
        self.own.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for r in [self.kinds.svc, self.kinds.pod, self.kinds.slice] {
            let Ok(all) = self.registry.store().range(&RangeRequest {
                prefix: &r.prefix(),
                ..Default::default()
            }) else {
                tracing::error!("endpointslice controller cannot read the store");
                continue;
            };
            for kv in &all.kvs {
                if let Ok(obj) = decode(kv) {
                    self.index_put(r, &obj);
                }
            }
        }
        // Every Service, managed or not (one that is not may have slices to delete).
        let services = self.registry.store().range(&RangeRequest {
            prefix: &self.kinds.svc.prefix(),
            ..Default::default()
        });
        services
            .map(|all| {
                all.kvs
                    .iter()
                    .filter_map(|kv| decode(kv).ok().as_ref().and_then(name_ns))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn index_put(&mut self, r: &Resource, obj: &Value) {
        let Some((ns, name)) = name_ns(obj) else {
            return;
        };
        if std::ptr::eq(r, &**self.kinds.svc) {
            let sel = selector(obj).filter(|_| {
                obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
            });
            if let Some(sel) = sel {
                self.index
                    .services
                    .entry(ns)
                    .or_default()
                    .insert(&name, sel);
            }
        } else if std::ptr::eq(r, &**self.kinds.pod) {
            self.index
                .pods
                .entry(ns)
                .or_default()
                .insert(&name, labels_of(obj));
        } else if let Some(svc) = managed_slice(obj) {
            self.index.slices.entry(svc).or_default().insert(name);
        }
    }

    fn index_delete(&mut self, r: &Resource, obj: &Value) {
        let Some((ns, name)) = name_ns(obj) else {
            return;
        };
        if std::ptr::eq(r, &**self.kinds.svc) {
            forget(&mut self.index.services, &ns, &name);
        } else if std::ptr::eq(r, &**self.kinds.pod) {
            forget(&mut self.index.pods, &ns, &name);
        } else if let Some(svc) = managed_slice(obj) {
            if let Some(names) = self.index.slices.get_mut(&svc) {
                names.remove(&name);
                if names.is_empty() {
                    self.index.slices.remove(&svc);
                }
            }
        }
    }

    /// Takes one store event into the index, noting the Services it touches.
    fn observe(&mut self, ev: &Event, out: &mut BTreeSet<ServiceKey>) {
        let key = &ev.kv.key;
        let Some(r) = [self.kinds.svc, self.kinds.pod, self.kinds.slice]
            .into_iter()
            .find(|r| key.starts_with(&r.prefix()))
        else {
            return;
        };
        let new = (ev.kind == EventKind::Put)
            .then(|| decode(&ev.kv).ok())
            .flatten();
        let old = ev.prev.as_ref().and_then(|p| decode(p).ok());
        if std::ptr::eq(&**r, &**self.kinds.svc) {
            out.extend(new.iter().chain(old.iter()).filter_map(name_ns));
        } else if std::ptr::eq(&**r, &**self.kinds.slice) {
            let ours = self
                .own
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key)
                == Some(ev.kv.mod_revision);
            if !ours {
                out.extend(new.iter().chain(old.iter()).filter_map(managed_slice));
            }
        } else if let Some((ns, _)) = new.as_ref().or(old.as_ref()).and_then(name_ns) {
            // The Services of its namespace that select the Pod as it was or as it is.
            if let Some(svcs) = self.index.services.get(&ns) {
                for labels in new.iter().chain(old.iter()).map(labels_of) {
                    out.extend(
                        svcs.held_by(&labels)
                            .into_iter()
                            .map(|n| (ns.clone(), n.clone())),
                    );
                }
            }
        }
        if let Some(o) = &old {
            self.index_delete(r, o);
        }
        if let Some(n) = &new {
            self.index_put(r, n);
        }
    }

    /// Brings one Service's slices to the desired state.
    pub async fn sync(&self, ns: &str, name: &str, trigger: SystemTime) -> Result<(), ApiError> {
        let svc = self.read(&self.kinds.svc.key(Some(ns), name));
        let slice_names = self
            .index
            .slices
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        let existing: Vec<Value> = slice_names
            .iter()
            .filter_map(|n| self.read(&self.kinds.slice.key(Some(ns), n)))
            .collect();
        let managed = svc.as_ref().is_some_and(|s| {
            selector(s).is_some()
                && s.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
        });
        let Some(svc) = svc.filter(|_| managed) else {
            for s in &existing {
                self.delete_slice(ns, s).await?;
            }
            return Ok(());
        };
        let sel = selector(&svc).unwrap_or_default();
        let pods: Vec<Value> = self
            .index
            .pods
            .get(ns)
            .map(|pods| pods.holding(&sel))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pod| self.read(&self.kinds.pod.key(Some(ns), pod)))
            .collect();
        let mut want = desired(&svc, &pods);
        let mut writes: Vec<Value> = Vec::new();
        let mut unused: Vec<&Value> = Vec::new();
        let mut kept = 0usize;
        // Endpoints stay in the slice they are in.
        let mut room: Vec<(GroupKey, Value)> = Vec::new();
        for s in &existing {
            let group: GroupKey = (
                s.get("addressType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                s.get("ports").cloned().unwrap_or(json!([])).to_string(),
            );
            let Some(eps) = want.get_mut(&group) else {
                unused.push(s);
                continue;
            };
            let mut mine = Vec::new();
            for ep in s
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(addr) = ep.pointer("/addresses/0").and_then(Value::as_str) {
                    if let Some(new) = eps.remove(addr) {
                        mine.push(new);
                    }
                }
            }
            if mine.is_empty() {
                unused.push(s);
                continue;
            }
            kept += 1;
            let name = s.pointer("/metadata/name").and_then(Value::as_str);
            let updated = slice_object(&svc, name, &group.0, &group_ports(&group), mine, trigger);
            room.push((group, updated));
        }
        // New endpoints fill slices with room, then reused or new slices.
        for (group, eps) in want {
            for (_, ep) in eps {
                match room.iter_mut().find(|(g, s)| {
                    *g == group
                        && s["endpoints"]
                            .as_array()
                            .is_some_and(|a| a.len() < MAX_PER_SLICE)
                }) {
                    Some((_, s)) => s["endpoints"].as_array_mut().expect("array").push(ep),
                    None => {
                        let reuse = unused.pop().and_then(|u| {
                            u.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        });
                        room.push((
                            group.clone(),
                            slice_object(
                                &svc,
                                reuse.as_deref(),
                                &group.0,
                                &group_ports(&group),
                                vec![ep],
                                trigger,
                            ),
                        ));
                        kept += 1;
                    }
                }
            }
        }
        writes.extend(room.into_iter().map(|(_, s)| s));
        // A Service with no endpoints keeps one empty placeholder slice.
        if kept == 0 {
            let reuse = unused.pop().and_then(|u| {
                u.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            writes.push(slice_object(
                &svc,
                reuse.as_deref(),
                "IPv4",
                &json!([]),
                Vec::new(),
                trigger,
            ));
        }
        for s in unused {
            self.delete_slice(ns, s).await?;
        }
        for w in writes {
            self.write_slice(ns, &existing, w).await?;
        }
        Ok(())
    }

    async fn write_slice(
        &self,
        ns: &str,
        existing: &[Value],
        slice: Value,
    ) -> Result<(), ApiError> {
        let opts = WriteOptions::default();
        let written = match slice.pointer("/metadata/name").and_then(Value::as_str) {
            None => {
                self.registry
                    .create(self.kinds.slice, Some(ns), slice, &opts)
                    .await?
            }
            Some(name) => {
                let current = existing
                    .iter()
                    .find(|e| e.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
                if current.is_some_and(|c| content(c) == content(&slice)) {
                    return Ok(());
                }
                self.registry
                    .update(
                        self.kinds.slice,
                        Some(ns),
                        name,
                        slice.clone(),
                        Part::Main,
                        &opts,
                    )
                    .await?
            }
        };
        let stored: Value = serde_json::from_slice(&written.object)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let name = stored.pointer("/metadata/name").and_then(Value::as_str);
        let rev = stored
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok());
        if let (Some(name), Some(rev)) = (name, rev) {
            self.own
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.kinds.slice.key(Some(ns), name), rev);
        }
        Ok(())
    }

    async fn delete_slice(&self, ns: &str, slice: &Value) -> Result<(), ApiError> {
        let Some(name) = slice.pointer("/metadata/name").and_then(Value::as_str) else {
            return Ok(());
        };
        match self
            .registry
            .delete(self.kinds.slice, Some(ns), name, &DeleteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Syncs `keys`; a failure is tried again later, with backoff.
    async fn sync_all(&mut self, keys: impl IntoIterator<Item = ServiceKey>, trigger: SystemTime) {
        for key in keys {
            match self.sync(&key.0, &key.1, trigger).await {
                Ok(()) => {
                    self.retry.remove(&key);
                }
                Err(e) => {
                    let backoff = self
                        .retry
                        .get(&key)
                        .map_or(FIRST_BACKOFF, |(_, b)| (*b * 2).min(MAX_BACKOFF));
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %e, retry_in = ?backoff, "endpointslice sync failed");
                    self.retry.insert(key, (Instant::now() + backoff, backoff));
                }
            }
        }
    }

    /// Runs until the store closes: a full sync, then incremental ones; failed syncs are retried
    /// with backoff, and every Service is synced again every [`RESYNC`].
    pub async fn run(mut self) {
        let mut feed = Follower::new(self.registry.store().clone(), "endpointslice");
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            let next_retry = self.retry.values().map(|(at, _)| *at).min();
            let retry_in = next_retry
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(RESYNC);
            let mut dirty = BTreeSet::new();
            // When the change that starts this round arrived (slices carry it for the agents).
            let mut trigger = None;
            tokio::select! {
                next = feed.next() => match next {
                    None => return,
                    Some(Feed::Resync) => dirty.extend(self.rebuild()),
                    Some(Feed::Batch(first)) => {
                        trigger = Some(SystemTime::now());
                        for ev in first.iter() {
                            self.observe(ev, &mut dirty);
                        }
                        // Events that follow at once are synced together.
                        let deadline = tokio::time::Instant::now() + BATCH;
                        while let Ok(Some(Feed::Batch(batch))) =
                            tokio::time::timeout_at(deadline, feed.next()).await
                        {
                            for ev in batch.iter() {
                                self.observe(ev, &mut dirty);
                            }
                        }
                    }
                },
                _ = tokio::time::sleep(retry_in), if next_retry.is_some() => {
                    let now = Instant::now();
                    dirty.extend(self.retry.iter().filter(|(_, (at, _))| *at <= now).map(|(k, _)| k.clone()));
                }
                _ = resync.tick() => dirty.extend(self.rebuild()),
            }
            self.sync_all(dirty, trigger.unwrap_or_else(SystemTime::now))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": name, "labels": labels},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
               "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn desired_endpoints_resolve_named_ports_and_conditions() {
        let svc = json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "h", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        let pods = vec![
            pod("a", "10.0.0.1", true, json!({"app": "web"})),
            pod("b", "10.0.0.2", false, json!({"app": "web"})),
            pod("c", "10.0.0.3", true, json!({"app": "other"})),
        ];
        let d = desired(&svc, &pods);
        assert_eq!(d.len(), 1);
        let ((ty, ports), eps) = d.into_iter().next().unwrap();
        assert_eq!(ty, "IPv4");
        assert_eq!(
            serde_json::from_str::<Value>(&ports).unwrap(),
            json!([{"name": "h", "protocol": "TCP", "port": 8080}])
        );
        assert_eq!(eps.keys().collect::<Vec<_>>(), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            eps["10.0.0.1"]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(eps["10.0.0.2"]["conditions"]["ready"], false);
        assert_eq!(eps["10.0.0.1"]["nodeName"], "n1");
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn objects_are_found_by_label() {
        let mut pods = ByLabel::default();
        pods.insert("a", map(&[("app", "web"), ("tier", "1")]));
        pods.insert("b", map(&[("app", "web")]));
        pods.insert("c", map(&[("app", "db"), ("tier", "1")]));
        let names = |sel: &[(&str, &str)]| {
            let mut n: Vec<String> = pods.holding(&map(sel)).into_iter().cloned().collect();
            n.sort();
            n
        };
        assert_eq!(names(&[("app", "web")]), ["a", "b"]);
        assert_eq!(names(&[("app", "web"), ("tier", "1")]), ["a"]);
        assert!(names(&[("app", "none")]).is_empty());
        // A re-labelled Pod moves; a removed one is gone from every pair.
        pods.insert("b", map(&[("app", "db")]));
        pods.remove("a");
        assert!(pods.holding(&map(&[("app", "web")])).is_empty());
        assert_eq!(pods.by_pair.len(), 2);

        let mut selectors = ByLabel::default();
        selectors.insert("web", map(&[("app", "web")]));
        selectors.insert("web-1", map(&[("app", "web"), ("tier", "1")]));
        selectors.insert("db", map(&[("app", "db")]));
        let mut held: Vec<&String> = selectors
            .held_by(&map(&[("app", "web"), ("tier", "1"), ("x", "y")]))
            .into_iter()
            .collect();
        held.sort();
        assert_eq!(held, ["web", "web-1"]);
    }

    #[test]
    fn publish_not_ready_and_terminating() {
        let svc = json!({"metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": {"app": "db"}, "ports": [{"port": 5432, "protocol": "TCP"}]}});
        let mut p = pod("db-0", "10.0.0.9", false, json!({"app": "db"}));
        p["spec"]["hostname"] = json!("db-0");
        p["spec"]["subdomain"] = json!("db");
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let d = desired(&svc, &[p]);
        let eps = d.values().next().unwrap();
        assert_eq!(
            eps["10.0.0.9"]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(eps["10.0.0.9"]["hostname"], "db-0");
    }
}
