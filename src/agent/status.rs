//! Writes the node's address into `status.loadBalancer.ingress` of the Ingresses the router
//! serves, keeping the addresses other nodes wrote, and removes it from Ingresses the router no
//! longer serves (another class, or a restart after a change). A write is conditional on the
//! resourceVersion it read, so two nodes never overwrite each other; a conflict is retried on
//! the next change. Status writes do not rebuild the route table, so the task remembers what it
//! wrote (or removed) instead of waiting to see it in the list it is given.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;

use super::routes::{lists, Served};

/// Retry interval after a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// Lists `ip` in the Ingress's status (`ours`), or takes it out.
async fn write(client: &kube::Client, ip: IpAddr, served: &Served) -> Result<(), kube::Error> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), &served.key.0);
    let current = api.get_status(&served.key.1).await?;
    let mut ingress: Vec<serde_json::Value> = current
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| serde_json::to_value(i).unwrap_or_default())
        .collect();
    let is_ip = |i: &serde_json::Value| i["ip"].as_str().and_then(|s| s.parse().ok()) == Some(ip);
    match (served.ours, ingress.iter().any(is_ip)) {
        (true, true) | (false, false) => return Ok(()),
        (true, false) => ingress.push(serde_json::json!({"ip": ip.to_string()})),
        (false, true) => ingress.retain(|i| !is_ip(i)),
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "status": {"loadBalancer": {"ingress": ingress}},
    });
    api.patch_status(
        &served.key.1,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

pub(super) async fn run(
    client: kube::Client,
    ip: IpAddr,
    mut served: watch::Receiver<Arc<Vec<Served>>>,
) {
    // What was written: (Ingress, uid, whether our address is now listed).
    let mut written: HashSet<(super::build::ObjKey, String, bool)> = HashSet::new();
    loop {
        let list = served.borrow_and_update().clone();
        let current: HashSet<_> = list
            .iter()
            .map(|s| (s.key.clone(), s.uid.clone(), s.ours))
            .collect();
        written.retain(|w| current.contains(w));
        let mut failed = false;
        for s in list.iter().filter(|s| lists(s, ip) != s.ours) {
            let done = (s.key.clone(), s.uid.clone(), s.ours);
            if written.contains(&done) {
                continue;
            }
            match write(&client, ip, s).await {
                Ok(()) => {
                    written.insert(done);
                    tracing::debug!(ingress = %format!("{}/{}", s.key.0, s.key.1), %ip, listed = s.ours, "ingress status written")
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(ingress = %format!("{}/{}", s.key.0, s.key.1), error = %e, "could not write ingress status")
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                changed = served.changed() => if changed.is_err() { return },
            }
        } else if served.changed().await.is_err() {
            return;
        }
    }
}
