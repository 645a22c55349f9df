//! The node's own objects: its Node (registered if missing) and its Lease in `kube-node-lease`,
//! renewed on a timer. Both are best effort: with credentials that may not write them, the agent
//! says so once and keeps working read-only. Only a Node the agent registered itself (labelled
//! so) is its own: on a node that a kubelet registered, the kubelet renews the Lease, and an
//! agent that renewed it too would hide a dead kubelet — so the agent leaves both alone.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};

const LEASE_DURATION: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const MANAGER: &str = "switchyard-node";
/// The label on a Node the agent registered, whose value is [`MANAGER`].
const REGISTERED_BY: &str = "switchyard.io/registered-by";

/// Whose the Node is.
enum Registration {
    /// Registered by a node agent of ours: it renews the Lease.
    Ours,
    /// Registered by someone else (a kubelet): not ours to renew.
    Theirs,
    /// The API does not let us write it.
    ReadOnly,
}

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 || s.code == 401)
}

/// Creates the Node if it does not exist, and says whose it is.
async fn register(client: &kube::Client, name: &str) -> Result<Registration, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(node) = nodes.get_opt(name).await? {
        let ours = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REGISTERED_BY))
            .is_some_and(|v| v == MANAGER);
        return Ok(if ours {
            Registration::Ours
        } else {
            Registration::Theirs
        });
    }
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": std::env::consts::OS, REGISTERED_BY: MANAGER}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "SwitchyardReady",
                                   "message": "switchyard node agent is running", "lastHeartbeatTime": crate::time::now()}]},
    }))
    .expect("a valid Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(Registration::Ours),
        Err(e) if forbidden(&e) => Ok(Registration::ReadOnly),
        // Registered by someone else meanwhile: look again.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(kube::Error::Api(s)),
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
            Ok(Registration::Ours) => break,
            Ok(Registration::Theirs) => {
                tracing::info!(node = %name, "the Node was registered by another agent (a kubelet): leaving it and its Lease alone");
                return;
            }
            Ok(Registration::ReadOnly) => {
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
