//! Against a real kube-apiserver (and etcd), built from their Go modules by
//! `bench/peers/build.sh`: the deploy/ manifests are accepted, and the node agent, with a token of
//! the deploy ServiceAccount, serves Services, DNS and Ingresses of the real API in a
//! network-namespace node with pods.

use std::path::Path;
use std::time::Duration;

use crate::support::cluster;
use crate::support::kube_apiserver::{peers, KubeApiserver};
use crate::support::netns::{Node, Sandbox};
use crate::support::{bin, eventually, Server};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn deploy(file: &str) -> String {
    std::fs::read_to_string(Path::new(DEPLOY).join(file)).unwrap()
}

/// The peers, or the reason this test cannot run (it skips, or fails under CI).
fn need_peers() -> Option<std::path::PathBuf> {
    let p = peers();
    if p.is_none() {
        crate::support::skip(
            "kube-apiserver and etcd are not built (scripts/test builds them with bench/peers/build.sh and sets SWITCHYARD_PEERS_BIN)",
        );
    }
    p
}

#[test]
fn deploy_is_accepted_by_a_real_kube_apiserver() {
    let Some(peers) = need_peers() else { return };
    let k = KubeApiserver::start(&peers, None);
    for f in ["00-namespace.yaml", "01-rbac.yaml", "02-config.yaml"] {
        let (ok, out, err) = k.kubectl_stdin(&["apply", "-f", "-"], &deploy(f));
        assert!(ok, "{f}: {err}{out}");
    }
    // No kubelet runs here: the DaemonSet is validated and admitted, not stored.
    let (ok, out, err) = k.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        &deploy("03-daemonset.yaml"),
    );
    assert!(ok, "DaemonSet: {err}{out}");
    assert!(
        out.contains("daemonset.apps/switchyard-node created (server dry run)"),
        "{out}"
    );
    // The overlay that replaces kube-proxy and CoreDNS applies over it: the ConfigMap takes the
    // base's place, and the DaemonSet patch (on a stored DaemonSet: nothing runs it here) adds
    // the node's address and the DNS Service to what the base has.
    let (ok, out, err) = k.kubectl_stdin(&["apply", "-f", "-"], &deploy("03-daemonset.yaml"));
    assert!(ok, "{err}{out}");
    let (ok, out, err) = k.kubectl_stdin(
        &["apply", "-f", "-"],
        &deploy("replace-kube-proxy-coredns/10-config.yaml"),
    );
    assert!(ok, "{err}{out}");
    let patch = Path::new(DEPLOY).join("replace-kube-proxy-coredns/daemonset.patch");
    k.ok(&[
        "-n",
        "switchyard-system",
        "patch",
        "daemonset",
        "switchyard-node",
        "--patch-file",
        patch.to_str().unwrap(),
    ]);
    let ds: serde_json::Value = serde_json::from_str(&k.ok(&[
        "-n",
        "switchyard-system",
        "get",
        "daemonset",
        "switchyard-node",
        "-o",
        "json",
    ]))
    .unwrap();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--dns-listen=$(HOST_IP):53")
            && args.contains(&"--dns-service=$(DNS_SERVICE)"),
        "{args:?}"
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in [
        "NODE_NAME",
        "PROXY_MODE",
        "HOST_IP",
        "DNS_SERVICE",
        "KUBERNETES_SERVICE_HOST",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }
    // The deploy ClusterRole is the one `switchyard server` makes for its node agents.
    let rules = |out: String| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["rules"].clone()
    };
    let theirs = rules(k.ok(&["get", "clusterrole", "switchyard:node-agent", "-o", "json"]));
    let s = Server::start(&[]);
    let ours = rules(s.ok(&["get", "clusterrole", "switchyard:node-agent", "-o", "json"]));
    assert_eq!(theirs, ours);
}

/// The API server an agent test runs against, inside the sandbox node's namespace.
enum Api {
    Kube(KubeApiserver),
    Ours {
        ns: String,
        dir: tempfile::TempDir,
        handle: usize,
    },
}

impl Api {
    fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        match self {
            Api::Kube(k) => k.kubectl_stdin(args, stdin),
            Api::Ours { ns, dir, .. } => cluster::kubectl(ns, dir.path(), args, stdin),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_stdin(args, "");
        assert!(ok, "kubectl {args:?}: {err}{out}");
        out
    }

    /// Restarts the API server: every watch ends.
    fn restart(&mut self, sb: &mut Sandbox, node: &Node) {
        match self {
            Api::Kube(k) => k.restart(),
            Api::Ours { dir, handle, .. } => {
                sb.kill(*handle);
                *handle = cluster::start_server(sb, node, dir.path(), "127.0.0.1:6443");
            }
        }
    }

    /// A kubeconfig whose user is `token`.
    fn kubeconfig_for(&self, token: &str) -> std::path::PathBuf {
        match self {
            Api::Kube(k) => k.write_kubeconfig("agent.kubeconfig", token),
            Api::Ours { dir, .. } => {
                let path = dir.path().join("agent.kubeconfig");
                let admin = std::fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
                let mut kc: serde_json::Value = serde_yaml::from_str(&admin).unwrap();
                kc["users"][0]["user"] = serde_json::json!({"token": token});
                std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
                path
            }
        }
    }
}

#[test]
fn the_agent_serves_a_real_kube_apiserver_with_its_service_account() {
    let Some(peers) = need_peers() else { return };
    crate::need!(Iptables);
    agent_serves(|_, node| Api::Kube(KubeApiserver::start(&peers, Some((&node.ns, "10.244.1.1")))));
}

/// The same, against `switchyard server`.
#[test]
fn the_agent_serves_switchyard_server_with_the_deploy_service_account() {
    crate::need!(Iptables);
    agent_serves(|sb, node| {
        let dir = tempfile::tempdir().unwrap();
        let handle = cluster::start_server(sb, node, dir.path(), "127.0.0.1:6443");
        Api::Ours {
            ns: node.ns.clone(),
            dir,
            handle,
        }
    });
}

/// The node agent, as deploy/ installs it (its ServiceAccount's token, its ClusterRole), in a
/// node namespace with pods: ClusterIP and NodePort traffic, cluster DNS at the kube-dns
/// Service's IP, Ingress routing and status, and a Service deleted while it was not watching
/// going away.
fn agent_serves(start: impl FnOnce(&mut Sandbox, &Node) -> Api) {
    let mut sb = Sandbox::new();
    let node = sb.node("kn1", 1);
    let client = sb.pod(&node, "client");
    let web = sb.pod(&node, "web");
    sb.http_backend(&web, 8080, "web-1");
    let mut api = start(&mut sb, &node);
    for f in ["00-namespace.yaml", "01-rbac.yaml", "02-config.yaml"] {
        let (ok, out, err) = api.kubectl_stdin(&["apply", "-f", "-"], &deploy(f));
        assert!(ok, "{f}: {err}{out}");
    }
    let token = api.ok(&[
        "create",
        "token",
        "switchyard-node",
        "-n",
        "switchyard-system",
        "--duration=1h",
    ]);
    let kubeconfig = api.kubeconfig_for(token.trim());
    // A selector-less Service with an EndpointSlice written by the test (no
    // kube-controller-manager runs with the real kube-apiserver; the managed-by label keeps our
    // server's controller off it), an IngressClass of ours and an Ingress.
    let objects = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: tests.switchyard.io}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}, nodeName: kn1}}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: switchyard-test}}\nspec: {{controller: switchyard.io/ingress-controller}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: default}}\nspec:\n  ingressClassName: switchyard-test\n  rules: [{{host: web.example, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]\n",
        web.ip
    );
    let (ok, out, err) = api.kubectl_stdin(&["apply", "-f", "-"], &objects);
    assert!(ok, "{err}{out}");
    let cluster_ip = api
        .ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_string();

    let kc = kubeconfig.to_str().unwrap();
    let agent = sb.spawn(
        &node.ns,
        &[
            bin(),
            "node",
            "--kubeconfig",
            kc,
            "--node-name",
            "kn1",
            "--proxy-mode",
            "iptables",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/24",
            "--dns-listen",
            "10.244.1.1:53",
            "--dns-service",
            "kube-system/kube-dns",
            "--ingress-http",
            "127.0.0.1:18080",
            "--ingress-https",
            "127.0.0.1:18443",
            "--ingress-status-address",
            "10.244.1.1",
        ],
    );
    // ClusterIP and NodePort traffic from a pod reaches the endpoint.
    for url in [
        format!("http://{cluster_ip}/"),
        "http://10.244.1.1:30080/".to_string(),
    ] {
        eventually(Duration::from_secs(30), || {
            (sb.http_get(&client, &url, 1) == ["web-1"]).then_some(())
        });
    }
    // Cluster DNS answers from the API's Services, at the kube-dns Service's IP, which the agent
    // serves itself (`--dns-service`): a pod resolves as it would with CoreDNS.
    let dig = |sb: &Sandbox, name: &str| {
        let out = sb.exec(
            &client.ns,
            &["dig", "+short", "+tries=1", "@10.96.0.10", name],
        );
        let out2 = sb.exec(&client.ns, &["dig", "+short", "+tcp", "@10.96.0.10", name]);
        assert_eq!(out.stdout, out2.stdout, "UDP and TCP answer alike");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    eventually(Duration::from_secs(10), || {
        (dig(&sb, "web.default.svc.cluster.local") == cluster_ip).then_some(())
    });
    // The Ingress is routed, and its status written back.
    eventually(Duration::from_secs(10), || {
        let routed = sb.exec(
            &node.ns,
            &[
                "curl",
                "-s",
                "-H",
                "Host: web.example",
                "http://127.0.0.1:18080/",
            ],
        );
        (String::from_utf8_lossy(&routed.stdout) == "web-1").then_some(())
    });
    eventually(Duration::from_secs(20), || {
        let ip = api.ok(&[
            "get",
            "ingress",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]);
        (ip.trim() == "10.244.1.1").then_some(())
    });
    // A Service deleted while the agent is stopped and its API server restarts (every watch
    // ends; kube-apiserver's watch cache starts afresh, so the agent's resume gets 410 and it
    // relists; switchyard server resumes it from its kept history) goes: no more traffic, no
    // more name.
    let agent_pid = sb.pid(agent).to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &agent_pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    api.ok(&["delete", "svc", "web"]);
    api.restart(&mut sb, &node);
    signal("-CONT");
    eventually(Duration::from_secs(20), || {
        (sb.connect(&client.ns, &cluster_ip, 80) != "ok").then_some(())
    });
    eventually(Duration::from_secs(10), || {
        dig(&sb, "web.default.svc.cluster.local")
            .is_empty()
            .then_some(())
    });
}
