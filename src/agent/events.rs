//! Events the agent records where kube-proxy and ingress controllers record them: the agent
//! starting on its Node, proxy rules it cannot program (on the Node), and Ingresses it cannot
//! serve as written (on the Ingress, with the reason). Written as events.k8s.io/v1 Events, which
//! `kubectl describe` shows.
//!
//! An event is recorded when a problem appears or changes, not on every retry; recording never
//! waits on the API server (a full queue drops the event, with a log line).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder as KubeRecorder, Reporter};
use tokio::sync::{mpsc, watch};

use super::build::ObjKey;
use super::routes::{Problem, Served};

/// Events waiting to be written.
const QUEUE: usize = 256;
/// Who the events name as their reporter.
pub const CONTROLLER: &str = "switchyard.io/node-agent";

/// Hands events to a task that writes them.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(ObjectReference, Event)>,
}

impl Recorder {
    pub fn spawn(client: kube::Client, node: &str) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node.to_string()),
        };
        let recorder = KubeRecorder::new(client, reporter);
        tokio::spawn(async move {
            while let Some((reference, event)) = rx.recv().await {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::debug!(reason = %event.reason, error = %e, "event not recorded");
                }
            }
        });
        Recorder { tx }
    }

    pub fn record(
        &self,
        reference: ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if self.tx.try_send((reference, event)).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

pub fn node_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.to_string()),
        // As kubelet and kube-proxy reference their Node: by name, standing in for the uid.
        uid: Some(node.to_string()),
        ..Default::default()
    }
}

fn ingress_ref(s: &Served) -> ObjectReference {
    ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("Ingress".into()),
        namespace: Some(s.key.0.clone()),
        name: Some(s.key.1.clone()),
        uid: Some(s.uid.clone()),
        ..Default::default()
    }
}

/// Records a Warning for each problem an Ingress of ours has that it did not have before.
pub async fn ingress_problems(recorder: Recorder, mut served: watch::Receiver<Arc<Vec<Served>>>) {
    // What was last recorded for each Ingress (by uid, so a re-created one starts afresh).
    let mut recorded: HashMap<(ObjKey, String), Vec<Problem>> = HashMap::new();
    loop {
        let list = served.borrow_and_update().clone();
        let mut now = HashMap::new();
        for s in list.iter().filter(|s| s.ours) {
            let key = (s.key.clone(), s.uid.clone());
            let before = recorded.get(&key);
            for p in &s.problems {
                if before.is_none_or(|b| !b.contains(p)) {
                    recorder.record(ingress_ref(s), true, &p.reason, "Sync", p.message.clone());
                }
            }
            if !s.problems.is_empty() {
                now.insert(key, s.problems.clone());
            }
        }
        recorded = now;
        if served.changed().await.is_err() {
            return;
        }
    }
}
