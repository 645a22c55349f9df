//! Durability: every write acknowledged to a client survives kill -9 of the server, and so does
//! what a deletion left to do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

use crate::support::{eventually, free_port, Server};

#[tokio::test]
async fn acknowledged_creates_survive_kill_9() {
    let mut s = Server::start_at(free_port(), &[]);
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (cms, acked) = (cms.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let obj: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": format!("w{w}-{i}")}, "data": {"i": i.to_string()}})).unwrap();
                match cms.create(&PostParams::default(), &obj).await {
                    Ok(o) => acked.lock().unwrap().push(o.metadata.name.unwrap()),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the stream of creates run, then kill the server in the middle of it.
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.crash_and_restart(&[]);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acked = acked.lock().unwrap().clone();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let stored: std::collections::HashSet<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(acked.len() >= 200);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// What a deletion left to do survives a kill -9: a namespace stays Terminating until its content
/// is gone (and then goes), a pod in its grace period goes when the period ends.
#[test]
fn deletions_resume_after_a_restart() {
    let mut s = Server::start_at(free_port(), &[]);
    s.ok(&["create", "namespace", "gone"]);
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: gone, finalizers: [example.com/hold]}\ndata: {a: \"1\"}\n";
    s.ok_stdin(&["apply", "-f", "-"], held);
    s.ok(&["delete", "namespace", "gone", "--wait=false"]);
    assert_eq!(
        s.jsonpath("namespace", "gone", "{.status.phase}"),
        "Terminating"
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: slow}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 3\n  containers: [{name: c, image: i}]\n";
    s.ok_stdin(&["apply", "-f", "-"], pod);
    s.ok(&["delete", "pod", "slow", "--wait=false"]);
    assert!(s.kubectl(&["get", "pod", "slow"]).0, "in its grace period");
    s.crash_and_restart(&[]);
    eventually(Duration::from_secs(20), || {
        (!s.kubectl(&["get", "pod", "slow"]).0).then_some(())
    });
    // Still Terminating while the ConfigMap's finalizer holds; gone once it is released.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.jsonpath("namespace", "gone", "{.status.phase}"),
        "Terminating"
    );
    s.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "gone",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(Duration::from_secs(20), || {
        (!s.kubectl(&["get", "namespace", "gone"]).0).then_some(())
    });
}
