//! One kube-rs watcher per kind, all feeding the state task's channel. Watchers relist after a
//! 410 or a reconnect and back off while the API is away.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::gateway::types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};
use super::Update;

/// Drops what the agent never reads and every object carries: its managed fields and kubectl's
/// copy of the last applied object (often the largest parts of an object).
fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A route status reduced to the parents our controller has entries for, each as its JSON
/// text (None without any): a few bytes, where the status as JSON values takes kilobytes. Their
/// conditions are left out, so a status write of ours that changes only those is no change
/// here.
fn our_entries(status: Option<serde_json::Value>) -> Option<serde_json::Value> {
    use serde_json::Value;
    let Value::Array(parents) = status?.get_mut("parents")?.take() else {
        return None;
    };
    let ours: Vec<Value> = parents
        .iter()
        .filter(|p| p["controllerName"] == super::gateway::build::CONTROLLER)
        .map(|p| Value::String(p["parentRef"].to_string()))
        .collect();
    (!ours.is_empty()).then_some(Value::Array(ours))
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a watch failed because the API does not serve the kind (its CRD is not installed)
/// or does not let us read it.
fn absent(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if matches!(s.code, 403 | 404))
}

/// Retries a kind that may not be served yet every two seconds, so a CRD installed later is
/// picked up quickly.
struct Poll;

impl Iterator for Poll {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        Some(std::time::Duration::from_secs(2))
    }
}

impl kube::runtime::utils::Backoff for Poll {
    fn reset(&mut self) {}
}

/// Watches one kind. An `optional` kind (a CRD's) that the API does not serve counts as
/// listed and empty, and is watched again until it is served.
fn spawn<K>(
    client: &kube::Client,
    tx: mpsc::Sender<Update>,
    config: watcher::Config,
    optional: bool,
    wrap: fn(watcher::Event<K>) -> Update,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&Default::default()).to_string();
    tokio::spawn(async move {
        let events = watcher(api, config);
        let mut stream = if optional {
            events.backoff(Poll).boxed()
        } else {
            events.default_backoff().boxed()
        };
        let mut missing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    // Each attempt starts with `Init`: only a listed kind is no longer missing.
                    if !matches!(ev, watcher::Event::Init) {
                        missing = false;
                    }
                    if tx.send(wrap(ev.modify(slim))).await.is_err() {
                        return;
                    }
                }
                Err(e) if optional && absent(&e) => {
                    if !missing {
                        tracing::info!(kind = %kind, error = %e, "kind not served; treated as empty until it is");
                        missing = true;
                        for ev in [watcher::Event::Init, watcher::Event::InitDone] {
                            if tx.send(wrap(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    })
}

/// The watchers of every kind the agent needs; the ingress kinds only when it routes ingress.
pub(super) fn spawn_all(
    client: &kube::Client,
    tx: mpsc::Sender<Update>,
    ingress: bool,
) -> Vec<JoinHandle<()>> {
    let all = watcher::Config::default;
    let mut out = vec![
        spawn::<Service>(client, tx.clone(), all(), false, |e| {
            Update::Services(Box::new(e))
        }),
        spawn::<EndpointSlice>(client, tx.clone(), all(), false, |e| {
            Update::Slices(Box::new(e))
        }),
    ];
    if ingress {
        out.push(spawn::<Ingress>(client, tx.clone(), all(), false, |e| {
            Update::Ingresses(Box::new(e))
        }));
        out.push(spawn::<IngressClass>(
            client,
            tx.clone(),
            all(),
            false,
            |e| Update::Classes(Box::new(e)),
        ));
        // Only TLS Secrets: the agent has no business reading the others.
        let tls = all().fields("type=kubernetes.io/tls");
        out.push(spawn::<Secret>(client, tx.clone(), tls, false, |e| {
            Update::Secrets(Box::new(e))
        }));
        // Namespaces for listeners that admit routes by namespace labels.
        out.push(spawn::<Namespace>(client, tx.clone(), all(), false, |e| {
            Update::Namespaces(Box::new(e))
        }));
        // Gateway API: served only where its CRDs are installed. Their status is not kept (the
        // status writer reads what it replaces), but for a route's entries of ours: a route
        // that is no longer ours has them taken out.
        out.push(spawn::<GatewayClass>(
            client,
            tx.clone(),
            all(),
            true,
            |e| Update::GatewayClasses(Box::new(e.modify(|o| o.status = None))),
        ));
        out.push(spawn::<Gateway>(client, tx.clone(), all(), true, |e| {
            Update::Gateways(Box::new(e.modify(|o| o.status = None)))
        }));
        out.push(spawn::<HttpRoute>(client, tx.clone(), all(), true, |e| {
            Update::HttpRoutes(Box::new(
                e.modify(|o| o.status = our_entries(o.status.take())),
            ))
        }));
        out.push(spawn::<GrpcRoute>(client, tx.clone(), all(), true, |e| {
            Update::GrpcRoutes(Box::new(
                e.modify(|o| o.status = our_entries(o.status.take())),
            ))
        }));
        out.push(spawn::<ReferenceGrant>(client, tx, all(), true, |e| {
            Update::Grants(Box::new(e))
        }));
    }
    out
}
