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

/// A small tmpfs of the test's own, unmounted (and its mount point removed) when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    /// Fills what is left of it; returns the file that holds the space.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&chunk[..1]);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A full disk: writes fail fast with a clear Status, /readyz says not ready, nothing
/// acknowledged is lost, and once space is back the store writes again by itself.
#[test]
fn a_full_disk_fails_writes_clearly_and_recovers_by_itself() {
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        crate::support::skip("mounting a tmpfs needs root");
        return;
    }
    let disk = Tmpfs::mount("24m");
    let s = Server::start_in(
        tempfile::tempdir_in(disk.0.path()).unwrap(),
        free_port(),
        &[],
    );
    for i in 0..20 {
        s.ok(&[
            "create",
            "configmap",
            &format!("before-{i}"),
            "--from-literal=a=b",
        ]);
    }
    let filler = disk.fill();
    // Writes until one fails (redb may have room left in its file for a few).
    let mut acked = Vec::new();
    let err = (0..2000)
        .find_map(|i| {
            let name = format!("during-{i}");
            let data = format!("--from-literal=a={}", "x".repeat(4096));
            match s.kubectl(&["create", "configmap", &name, &data]) {
                (true, _, _) => {
                    acked.push(name);
                    None
                }
                (false, _, err) => Some(err),
            }
        })
        .expect("a write fails on a full disk");
    assert!(err.contains("the store cannot write"), "{err}");
    // Every later write fails at once, with the same clear reason; reads go on.
    let (ok, _, err) = s.kubectl(&["create", "configmap", "refused", "--from-literal=a=b"]);
    assert!(!ok && err.contains("the store cannot write"), "{err}");
    assert!(s.kubectl(&["get", "configmap", "before-0"]).0);
    let (ok, out, err) = s.kubectl(&["get", "--raw", "/readyz"]);
    assert!(!ok, "ready while the store cannot write: {out}");
    assert!(
        err.contains("ServiceUnavailable") || err.contains("503"),
        "{err}"
    );
    assert_eq!(s.kubectl(&["get", "--raw", "/livez"]).1, "ok");

    // Space comes back: writes work again without a restart.
    std::fs::remove_file(filler).unwrap();
    eventually(Duration::from_secs(20), || {
        (s.kubectl(&["get", "--raw", "/readyz"]).1 == "ok").then_some(())
    });
    s.ok(&["create", "configmap", "after", "--from-literal=a=b"]);
    let names = s.ok(&["get", "configmap", "-o", "name"]);
    for n in acked
        .iter()
        .chain([&"after".to_string(), &"before-19".to_string()])
    {
        assert!(names.contains(&format!("configmap/{n}\n")), "{n} lost");
    }
    assert!(!names.contains("configmap/refused"));
}
