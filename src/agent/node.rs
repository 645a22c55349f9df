//! The node's own objects: its Node (registered if missing) and its Lease in `kube-node-lease`,
//! renewed on a timer. Both are best effort: with credentials that may not write them, the agent
//! says so once and keeps working read-only.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};

const LEASE_DURATION: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const MANAGER: &str = "switchyard-node";

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 || s.code == 401)
}

/// Creates the Node if it does not exist. Returns false when the API does not let us write it.
async fn register(client: &kube::Client, name: &str) -> Result<bool, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await?.is_some() {
        return Ok(true);
    }
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": std::env::consts::OS}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "SwitchyardReady",
                                   "message": "switchyard node agent is running", "lastHeartbeatTime": crate::time::now()}]},
    }))
    .expect("a valid Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(true),
        Err(e) if forbidden(&e) => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(true),
        Err(e) => Err(e),
    }
}

async fn renew(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": crate::time::now_micro()},
    });
    leases
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await
        .map(drop)
}

/// Registers the node and renews its Lease until the task is dropped.
pub async fn run(client: kube::Client, name: String) {
    // A failed registration is retried soon, then less often.
    let mut retry = Duration::from_secs(1);
    loop {
        match register(&client, &name).await {
            Ok(true) => break,
            Ok(false) => {
                tracing::warn!(node = %name, "not allowed to register the Node; continuing read-only");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, retry_in = ?retry, "registering the Node; will retry");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RENEW_EVERY);
            }
        }
    }
    loop {
        match renew(&client, &name).await {
            Ok(()) => {}
            Err(e) if forbidden(&e) => {
                tracing::warn!(node = %name, "not allowed to renew the node Lease; continuing read-only");
                return;
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "renewing the node Lease"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}
