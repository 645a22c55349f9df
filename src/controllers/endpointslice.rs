//! The EndpointSlice controller: for every Service with a selector, EndpointSlices listing the
//! matching Pods that have an IP, as kube-controller-manager keeps them.
//!
//! It follows the store's event feed (Services, Pods and its own slices), marks the Services an
//! event touches, and syncs them in small batches. A sync changes only what differs: endpoints
//! stay in the slice they are in, new ones fill slices with room (at most 100 per slice), and a
//! slice is written only when its content changes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::apiserver::error::ApiError;
use crate::apiserver::registry::{
    decode, DeleteOptions, ListOptions, Part, Registry, WriteOptions,
};
use crate::apiserver::resources::{builtin, Builtin, Resource};
use crate::apiserver::selectors::{labels_of, LabelSelector};
use crate::store::{Event, Store};

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
    let labels = labels_of(pod);
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

pub struct Controller {
    registry: Arc<Registry>,
    kinds: Kinds,
}

impl Controller {
    pub fn new(registry: Arc<Registry>) -> Self {
        let kinds = Kinds {
            svc: builtin(Builtin::Service),
            pod: builtin(Builtin::Pod),
            slice: builtin(Builtin::EndpointSlice),
        };
        Controller { registry, kinds }
    }

    fn objects(
        &self,
        r: &Resource,
        ns: Option<&str>,
        labels: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let opts = ListOptions {
            labels: LabelSelector::parse(labels)?,
            ..Default::default()
        };
        let list = self.registry.list(r, ns, &opts)?;
        list.items
            .iter()
            .map(|b| serde_json::from_slice(b).map_err(|e| ApiError::internal(e.to_string())))
            .collect()
    }

    /// The Services an event touches.
    fn affected(&self, ev: &Event, out: &mut BTreeSet<ServiceKey>) {
        let key = &ev.kv.key;
        let objs = [Some(&ev.kv), ev.prev.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|kv| decode(kv).ok());
        if key.starts_with(&self.kinds.svc.prefix()) {
            out.extend(objs.filter_map(|o| name_ns(&o)));
        } else if key.starts_with(&self.kinds.slice.prefix()) {
            for o in objs {
                let managed = o
                    .pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by")
                    .and_then(Value::as_str)
                    == Some(MANAGED_BY);
                if let (true, Some(svc), Some((ns, _))) = (
                    managed,
                    o.pointer("/metadata/labels/kubernetes.io~1service-name")
                        .and_then(Value::as_str),
                    name_ns(&o),
                ) {
                    out.insert((ns, svc.to_string()));
                }
            }
        } else if key.starts_with(&self.kinds.pod.prefix()) {
            let pods: Vec<Value> = objs.collect();
            let Some((ns, _)) = pods.first().and_then(name_ns) else {
                return;
            };
            let Ok(services) = self.objects(self.kinds.svc, Some(&ns), "") else {
                return;
            };
            for svc in services {
                if let Some(sel) = selector(&svc) {
                    if pods.iter().any(|p| selects(&sel, p)) {
                        out.extend(name_ns(&svc));
                    }
                }
            }
        }
    }

    /// Brings one Service's slices to the desired state.
    pub async fn sync(&self, ns: &str, name: &str, trigger: SystemTime) -> Result<(), ApiError> {
        let svc = match self.registry.get(self.kinds.svc, Some(ns), name) {
            Ok(kv) => Some(decode(&kv)?),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let existing = self.objects(
            self.kinds.slice,
            Some(ns),
            &format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"),
        )?;
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
        let pods = self.objects(self.kinds.pod, Some(ns), "")?;
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
        match slice.pointer("/metadata/name").and_then(Value::as_str) {
            None => self
                .registry
                .create(self.kinds.slice, Some(ns), slice, &opts)
                .await
                .map(drop),
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
                    .await
                    .map(drop)
            }
        }
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

    async fn sync_all(&self, keys: impl IntoIterator<Item = ServiceKey>, trigger: SystemTime) {
        for (ns, name) in keys {
            if let Err(e) = self.sync(&ns, &name, trigger).await {
                tracing::warn!(namespace = %ns, service = %name, error = %e, "endpointslice sync failed");
            }
        }
    }

    /// Runs until the store closes: one full sync, then incremental ones.
    pub async fn run(self) {
        let store: Arc<dyn Store> = self.registry.store().clone();
        let mut watch = match store.watch(store.revision()) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "endpointslice controller cannot watch the store");
                return;
            }
        };
        let mut all: HashSet<ServiceKey> = HashSet::new();
        if let Ok(services) = self.objects(self.kinds.svc, None, "") {
            all.extend(services.iter().filter_map(name_ns));
        }
        self.sync_all(all, SystemTime::now()).await;
        loop {
            let mut dirty = BTreeSet::new();
            let first = match watch.live.recv().await {
                Ok(b) => b,
                Err(RecvError::Lagged(_)) => {
                    // Missed events: resync everything.
                    if let Ok(services) = self.objects(self.kinds.svc, None, "") {
                        dirty.extend(services.iter().filter_map(name_ns));
                    }
                    self.sync_all(dirty, SystemTime::now()).await;
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let trigger = SystemTime::now();
            for ev in first.iter() {
                self.affected(ev, &mut dirty);
            }
            let deadline = tokio::time::Instant::now() + BATCH;
            while let Ok(Ok(batch)) = tokio::time::timeout_at(deadline, watch.live.recv()).await {
                for ev in batch.iter() {
                    self.affected(ev, &mut dirty);
                }
            }
            self.sync_all(dirty, trigger).await;
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
