//! One kube-rs watcher per kind, all feeding the state task's channel. Watchers relist after a
//! 410 or a reconnect and back off while the API is away.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Update;

fn spawn<K>(
    client: &kube::Client,
    tx: mpsc::Sender<Update>,
    config: watcher::Config,
    wrap: fn(watcher::Event<K>) -> Update,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&Default::default()).to_string();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).await.is_err() {
                        return;
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
        spawn::<Service>(client, tx.clone(), all(), |e| Update::Services(Box::new(e))),
        spawn::<EndpointSlice>(client, tx.clone(), all(), |e| Update::Slices(Box::new(e))),
    ];
    if ingress {
        out.push(spawn::<Ingress>(client, tx.clone(), all(), |e| {
            Update::Ingresses(Box::new(e))
        }));
        out.push(spawn::<IngressClass>(client, tx.clone(), all(), |e| {
            Update::Classes(Box::new(e))
        }));
        // Only TLS Secrets: the agent has no business reading the others.
        let tls = all().fields("type=kubernetes.io/tls");
        out.push(spawn::<Secret>(client, tx, tls, |e| {
            Update::Secrets(Box::new(e))
        }));
    }
    out
}
