//! Writes the status of our GatewayClasses, Gateways and HTTPRoutes. Every node computes the
//! same conditions from the same objects, so a write happens only when what is stored differs
//! (`lastTransitionTime` aside, which is kept while a condition's status holds); a Gateway's
//! `status.addresses` gains this node's address and keeps the others'. Writes are conditional
//! on the resourceVersion read; a conflict is retried.
//!
//! A listener whose port this node could not open (another process holds it) is reported with
//! `Accepted: False`, reason `PortUnavailable`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::build::{
    ClassStatus, Condition, GatewayStatus, ListenerStatus, RouteStatus, Statuses, CONTROLLER,
    FEATURES,
};
use super::types::{Gateway, GatewayClass, GrpcRoute, HttpRoute};
use crate::agent::build::ObjKey;

const RETRY: Duration = Duration::from_secs(5);

/// Port errors of this node's router, by port.
pub type PortErrors = BTreeMap<u16, String>;

/// Conditions as stored: the time of the stored condition of the same type and status is kept.
fn conditions(list: &[Condition], generation: i64, current: &Value) -> Value {
    let now = crate::time::now();
    Value::Array(
        list.iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let since = current
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|o| o["type"] == c.kind && o["status"] == status)
                    .and_then(|o| o["lastTransitionTime"].as_str())
                    .map_or_else(|| now.clone(), str::to_string);
                json!({
                    "type": c.kind,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

/// Sets a condition of a listener's (replacing the one of its type).
fn set(list: &mut Vec<Condition>, c: Condition) {
    list.retain(|o| o.kind != c.kind);
    list.push(c);
}

/// A Gateway's status as this node sees it: its listeners' ports may be unavailable here.
fn with_port_errors(gw: &GatewayStatus, errors: &PortErrors) -> GatewayStatus {
    let mut gw = gw.clone();
    for l in gw.listeners.iter_mut() {
        let Some(e) = errors.get(&l.port) else {
            continue;
        };
        let programmed = l
            .conditions
            .iter()
            .any(|c| c.kind == "Programmed" && c.status);
        if !programmed {
            continue;
        }
        set(
            &mut l.conditions,
            Condition {
                kind: "Accepted",
                status: false,
                reason: "PortUnavailable",
                message: e.clone(),
            },
        );
        set(
            &mut l.conditions,
            Condition {
                kind: "Programmed",
                status: false,
                reason: "Invalid",
                message: e.clone(),
            },
        );
    }
    let any = gw.listeners.iter().any(|l| {
        l.conditions
            .iter()
            .any(|c| c.kind == "Programmed" && c.status)
    });
    if !any && !gw.listeners.is_empty() {
        set(
            &mut gw.conditions,
            Condition {
                kind: "Programmed",
                status: false,
                reason: "Invalid",
                message: "no listener is served".into(),
            },
        );
    }
    gw
}

fn listener_json(l: &ListenerStatus, generation: i64, current: &Value) -> Value {
    let stored = current
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["name"] == l.name.as_str())
        .map_or(&Value::Null, |o| &o["conditions"]);
    json!({
        "name": l.name,
        "supportedKinds": l.kinds.iter().map(|(g, k)| json!({"group": g, "kind": k})).collect::<Vec<_>>(),
        "attachedRoutes": l.attached,
        "conditions": conditions(&l.conditions, generation, stored),
    })
}

/// Drops `lastTransitionTime` everywhere, to compare what matters.
fn timeless(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), timeless(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(timeless).collect()),
        other => other.clone(),
    }
}

async fn patch<K>(
    api: &Api<K>,
    name: &str,
    rv: Option<String>,
    status: Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({"metadata": {"resourceVersion": rv}, "status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

async fn write_class(
    client: &kube::Client,
    c: &super::build::ClassStatus,
) -> Result<(), kube::Error> {
    let api: Api<GatewayClass> = Api::all(client.clone());
    let current = api.get_status(&c.name).await?;
    let stored = current.status.clone().unwrap_or_default();
    let want = json!({
        "conditions": conditions(&c.conditions, c.generation, &stored["conditions"]),
        "supportedFeatures": FEATURES.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
    });
    if timeless(&want)
        == timeless(
            &json!({"conditions": stored["conditions"], "supportedFeatures": stored["supportedFeatures"]}),
        )
    {
        return Ok(());
    }
    patch(&api, &c.name, current.metadata.resource_version, want).await
}

async fn write_gateway(
    client: &kube::Client,
    ip: Option<IpAddr>,
    gw: &GatewayStatus,
) -> Result<(), kube::Error> {
    let api: Api<Gateway> = Api::namespaced(client.clone(), &gw.key.0);
    let current = api.get_status(&gw.key.1).await?;
    let stored = current.status.clone().unwrap_or_default();
    let mut addresses: Vec<Value> = stored["addresses"].as_array().cloned().unwrap_or_default();
    if let Some(ip) = ip {
        let ours = json!({"type": "IPAddress", "value": ip.to_string()});
        if !addresses.contains(&ours) {
            addresses.push(ours);
        }
    }
    let want = json!({
        "addresses": addresses,
        "conditions": conditions(&gw.conditions, gw.generation, &stored["conditions"]),
        "listeners": gw.listeners.iter().map(|l| listener_json(l, gw.generation, &stored["listeners"])).collect::<Vec<_>>(),
    });
    let have = json!({"addresses": stored["addresses"].as_array().cloned().unwrap_or_default(), "conditions": stored["conditions"], "listeners": stored["listeners"]});
    if timeless(&want) == timeless(&have) {
        return Ok(());
    }
    patch(&api, &gw.key.1, current.metadata.resource_version, want).await
}

/// A route kind whose status the writer reads and patches.
trait Route:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    fn status(&self) -> Option<&Value>;
}

impl Route for HttpRoute {
    fn status(&self) -> Option<&Value> {
        self.status.as_ref()
    }
}

impl Route for GrpcRoute {
    fn status(&self) -> Option<&Value> {
        self.status.as_ref()
    }
}

async fn write_route(
    client: &kube::Client,
    r: &super::build::RouteStatus,
) -> Result<(), kube::Error> {
    if r.kind == "GRPCRoute" {
        write_route_of::<GrpcRoute>(client, r).await
    } else {
        write_route_of::<HttpRoute>(client, r).await
    }
}

async fn write_route_of<K: Route>(
    client: &kube::Client,
    r: &super::build::RouteStatus,
) -> Result<(), kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), &r.key.0);
    let current = api.get_status(&r.key.1).await?;
    let stored = current.status().cloned().unwrap_or_default();
    let stored_parents: Vec<Value> = stored["parents"].as_array().cloned().unwrap_or_default();
    let (mine, mut others): (Vec<Value>, Vec<Value>) = stored_parents
        .into_iter()
        .partition(|p| p["controllerName"] == CONTROLLER);
    let ours: Vec<Value> = r
        .parents
        .iter()
        .map(|p| {
            let parent_ref = serde_json::to_value(&p.parent).unwrap_or_default();
            let stored = mine
                .iter()
                .find(|m| m["parentRef"] == parent_ref)
                .map_or(&Value::Null, |m| &m["conditions"]);
            json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER,
                "conditions": conditions(&p.conditions, r.generation, stored),
            })
        })
        .collect();
    if timeless(&Value::Array(ours.clone())) == timeless(&Value::Array(mine)) {
        return Ok(());
    }
    others.extend(ours);
    patch(
        &api,
        &r.key.1,
        current.meta().resource_version.clone(),
        json!({"parents": others}),
    )
    .await
}

pub(crate) async fn run(
    client: kube::Client,
    ip: Option<IpAddr>,
    mut statuses: watch::Receiver<Arc<Statuses>>,
    mut ports: watch::Receiver<Arc<PortErrors>>,
) {
    // What was last written for each object: not written again while it holds.
    let mut classes: HashMap<String, ClassStatus> = HashMap::new();
    let mut gateways: HashMap<ObjKey, GatewayStatus> = HashMap::new();
    let mut routes: HashMap<(&'static str, ObjKey), Arc<RouteStatus>> = HashMap::new();
    // The addresses of the statuses in `routes` (which keeps them alive).
    let mut written: std::collections::HashSet<usize> = Default::default();
    loop {
        let st = statuses.borrow_and_update().clone();
        let errors = ports.borrow_and_update().clone();
        let mut failed = false;
        let mut report = |kind: &str, name: String, result: Result<(), kube::Error>| match result {
            Ok(()) => true,
            Err(e) => {
                failed = true;
                tracing::warn!(kind, object = %name, error = %e, "could not write Gateway API status");
                false
            }
        };
        for c in &st.classes {
            if classes.get(&c.name) != Some(c)
                && report(
                    "GatewayClass",
                    c.name.clone(),
                    write_class(&client, c).await,
                )
            {
                classes.insert(c.name.clone(), c.clone());
            }
        }
        for gw in &st.gateways {
            let gw = with_port_errors(gw, &errors);
            if gateways.get(&gw.key) != Some(&gw) {
                let name = format!("{}/{}", gw.key.0, gw.key.1);
                if report("Gateway", name, write_gateway(&client, ip, &gw).await) {
                    gateways.insert(gw.key.clone(), gw);
                }
            }
        }
        for r in &st.routes {
            // A route whose compiled status is the one written is skipped without a lookup.
            if written.contains(&(Arc::as_ptr(r) as usize)) {
                continue;
            }
            let key = (r.kind, r.key.clone());
            let same = routes.get(&key).is_some_and(|w| w == r);
            let name = format!("{}/{}", r.key.0, r.key.1);
            if same || report(r.kind, name, write_route(&client, r).await) {
                if let Some(old) = routes.insert(key, r.clone()) {
                    written.remove(&(Arc::as_ptr(&old) as usize));
                }
                written.insert(Arc::as_ptr(r) as usize);
            }
        }
        // A route no longer ours (or gone) loses our parent entries; a later return writes them
        // again.
        if routes.len() > st.routes.len() {
            let now: std::collections::HashSet<_> =
                st.routes.iter().map(|r| (r.kind, &r.key)).collect();
            let mut released = Vec::new();
            routes.retain(|(kind, key), r| {
                let keep = now.contains(&(*kind, key));
                if !keep {
                    written.remove(&(Arc::as_ptr(r) as usize));
                    released.push(r.clone());
                }
                keep
            });
            for r in released {
                let none = RouteStatus {
                    parents: Vec::new(),
                    ..(*r).clone()
                };
                match write_route(&client, &none).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    result => {
                        let name = format!("{}/{}", r.key.0, r.key.1);
                        report(r.kind, name, result);
                    }
                }
            }
        }
        gateways.retain(|k, _| st.gateways.iter().any(|g| g.key == *k));
        classes.retain(|k, _| st.classes.iter().any(|c| c.name == *k));
        let wait = async {
            tokio::select! {
                c = statuses.changed() => c.is_ok(),
                c = ports.changed() => c.is_ok(),
            }
        };
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                alive = wait => if !alive { return },
            }
        } else if !wait.await {
            return;
        }
    }
}
