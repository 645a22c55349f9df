//! Real consumers of `switchyard server`: kube-proxy, built from `k8s.io/kubernetes` by
//! `bench/peers/build.sh`, in iptables and nftables mode, with a token of a ServiceAccount bound
//! to `system:node-proxier`, programs ClusterIPs and NodePorts that pods in network namespaces
//! reach.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::cluster::{kubectl, ok, register_pod, start_server, web_service};
use crate::support::eventually;
use crate::support::netns::Sandbox;
use crate::support::traffic::{answers, set};

/// A process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where kube-proxy was built, if the test command built it.
fn kube_proxy() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("SWITCHYARD_PEERS_BIN").ok()?).join("kube-proxy");
    p.exists().then_some(p)
}

fn kube_proxy_serves_switchyard_server(mode: &str) {
    crate::need!(Iptables);
    let Some(kube_proxy) = kube_proxy() else {
        crate::support::skip(
            "kube-proxy is not built (scripts/test builds it with bench/peers/build.sh)",
        );
        return;
    };
    let mut sb = Sandbox::new();
    let n1 = sb.node("kp1", 1);
    let backend = sb.pod(&n1, "w1");
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    // The Node as kubelet registers it (kube-proxy reads its address), and kube-proxy's own
    // identity: a ServiceAccount bound to system:node-proxier.
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: kp1}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: kube-proxy, namespace: kube-system}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: kube-proxy}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}\nsubjects: [{kind: ServiceAccount, name: kube-proxy, namespace: kube-system}]\n",
    );
    ok(
        &n1.ns,
        d,
        &[
            "patch",
            "node",
            "kp1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"addresses":[{"type":"InternalIP","address":"10.244.1.1"}]}}"#,
        ],
        "",
    );
    let token = ok(
        &n1.ns,
        d,
        &["create", "token", "kube-proxy", "-n", "kube-system"],
        "",
    );
    let admin = std::fs::read_to_string(d.join("admin.kubeconfig")).unwrap();
    let mut kc: serde_json::Value = serde_yaml::from_str(&admin).unwrap();
    kc["users"][0]["user"] = serde_json::json!({"token": token.trim()});
    let kubeconfig = d.join("kube-proxy.kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();

    sb.http_backend(&backend, 8080, "w1");
    register_pod(&n1.ns, d, "w1", "kp1", &backend);
    let ip = web_service(&n1.ns, d);
    ok(
        &n1.ns,
        d,
        &[
            "patch",
            "svc",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"type":"NodePort","ports":[{"name":"http","port":80,"targetPort":"http","nodePort":30080}]}}"#,
        ],
        "",
    );
    let log = d.join("kube-proxy.log");
    let _proxy = KillOnDrop(
        sb.command(
            &n1.ns,
            &[
                kube_proxy.to_str().unwrap(),
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--hostname-override",
                "kp1",
                "--proxy-mode",
                mode,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--metrics-bind-address",
                "127.0.0.1:10249",
                "--healthz-bind-address",
                "127.0.0.1:10256",
                // Leave the kernel's conntrack settings alone.
                "--conntrack-max-per-core",
                "0",
                "--conntrack-tcp-timeout-established",
                "0",
                "--conntrack-tcp-timeout-close-wait",
                "0",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let served = |url: &str| answers(&sb, &client, url, 3) == set(&["w1"]);
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    };
    for url in [
        format!("http://{ip}/"),
        "http://10.244.1.1:30080/".to_string(),
    ] {
        let start = std::time::Instant::now();
        while !served(&url) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kube-proxy ({mode}) never served {url}; its log:\n{}",
                tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // A second endpoint is picked up.
    let second = sb.pod(&n1, "w2");
    sb.http_backend(&second, 8080, "w2");
    register_pod(&n1.ns, d, "w2", "kp1", &second);
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &format!("http://{ip}/"), 20) == set(&["w1", "w2"])).then_some(())
    });
    // kube-proxy's own Event (events.k8s.io/v1, sent as protobuf) is served, also as core/v1.
    eventually(Duration::from_secs(30), || {
        let (_, out, _) = kubectl(
            &n1.ns,
            d,
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                "involvedObject.name=kp1",
            ],
            "",
        );
        out.contains("Starting").then_some(())
    });
}

#[test]
fn real_kube_proxy_in_iptables_mode_serves_switchyard_server() {
    kube_proxy_serves_switchyard_server("iptables");
}

#[test]
fn real_kube_proxy_in_nftables_mode_serves_switchyard_server() {
    kube_proxy_serves_switchyard_server("nftables");
}
