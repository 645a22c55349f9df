//! One kube-rs watcher per kind, all feeding the state task's channel. Watchers relist after a
//! 410 or a reconnect and back off while the API is away.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Update;

fn spawn<K>(
    client: &kube::Client,
    tx: mpsc::Sender<Update>,
    wrap: fn(watcher::Event<K>) -> Update,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&Default::default()).to_string();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
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

pub(super) fn spawn_all(client: &kube::Client, tx: mpsc::Sender<Update>) -> Vec<JoinHandle<()>> {
    vec![
        spawn::<Service>(client, tx.clone(), |e| Update::Services(Box::new(e))),
        spawn::<EndpointSlice>(client, tx, |e| Update::Slices(Box::new(e))),
    ]
}
