//! Durability: every write acknowledged to a client survives kill -9 of the server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

use crate::support::{free_port, Server};

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
