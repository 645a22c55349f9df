//! End to end in network namespaces: the server and a node agent (userspace proxy) run in a node
//! namespace, backends and clients are pods; Services are applied with kubectl and reached by
//! ClusterIP from a client pod. Needs root; skips with the reason otherwise.

use std::collections::HashSet;
use std::time::Duration;

use crate::need;
use crate::support::cluster::{cluster_ip, ok, register_pod, start_server};
use crate::support::netns::{Pod, Sandbox};
use crate::support::{bin, eventually};

fn service(name: &str, port: u16, cluster_ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: web}}\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: {port}, targetPort: http}}]\n")
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cluster_ip_from_a_client_pod_with_server_outage() {
    need!(Sandbox);
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let backends: Vec<Pod> = (1..=3).map(|i| sb.pod(&n1, &format!("b{i}"))).collect();
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    let node_kubeconfig = crate::support::node_kubeconfig(d, "n1");
    // The agent's service range is half the server's: ClusterIPs in the other half get no route.
    let agent = sb.spawn(
        &n1.ns,
        &[
            bin(),
            "node",
            "--kubeconfig",
            node_kubeconfig.to_str().unwrap(),
            "--node-name",
            "n1",
            "--service-cidr",
            "10.96.0.0/25",
        ],
    );
    for (i, pod) in backends.iter().enumerate() {
        let name = format!("b{}", i + 1);
        sb.http_backend(pod, 8080, &name);
        register_pod(&n1.ns, d, &name, "n1", pod);
    }
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("web", 80, "10.96.0.10"),
    );
    let url = format!("http://{}/", cluster_ip(&n1.ns, d, "web"));

    // All three backends answer through the ClusterIP, from another pod.
    eventually(Duration::from_secs(30), || {
        (sb.http_get(&client, &url, 15)
            .into_iter()
            .collect::<HashSet<_>>()
            == set(&["b1", "b2", "b3"]))
        .then_some(())
    });

    // A ClusterIP the node lacks is made local (with our route protocol); an external IP anyone
    // can write into a Service is not (a route would take the address from the whole node): it
    // is served only where the node already has it. Nor is a ClusterIP outside the agent's
    // service range.
    let ext = "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  selector: {app: web}\n  clusterIP: 10.96.0.100\n  externalIPs: [203.0.113.53]\n  ports: [{name: http, port: 82, targetPort: http}]\n";
    ok(&n1.ns, d, &["apply", "-f", "-"], ext);
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("outside", 83, "10.96.0.200"),
    );
    let local_routes = |sb: &Sandbox| {
        let out = sb.exec(&n1.ns, &["ip", "route", "show", "table", "local"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(30), || {
        local_routes(&sb)
            .contains("local 10.96.0.100 dev lo proto 211 ")
            .then_some(())
    });
    let routes = local_routes(&sb);
    assert!(!routes.contains("203.0.113.53"), "{routes}");
    assert!(!routes.contains("10.96.0.200"), "{routes}");

    // Removing an endpoint moves traffic off it.
    ok(
        &n1.ns,
        d,
        &["delete", "pod", "b3", "--grace-period=0", "--force"],
        "",
    );
    eventually(Duration::from_secs(30), || {
        (sb.http_get(&client, &url, 12)
            .into_iter()
            .collect::<HashSet<_>>()
            == set(&["b1", "b2"]))
        .then_some(())
    });

    // The API server goes away: routing keeps working on the last snapshot.
    sb.kill(server);
    for answer in sb.http_get(&client, &url, 8) {
        assert!(answer == "b1" || answer == "b2", "{answer}");
    }
    // It comes back: the agent reconnects and follows new changes.
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("web2", 81, "10.96.0.11"),
    );
    let url2 = format!("http://{}:81/", cluster_ip(&n1.ns, d, "web2"));
    eventually(Duration::from_secs(60), || {
        sb.http_get(&client, &url2, 4)
            .iter()
            .any(|a| a == "b1" || a == "b2")
            .then_some(())
    });

    // Deleting the Service closes its port.
    ok(&n1.ns, d, &["delete", "svc", "web"], "");
    eventually(Duration::from_secs(30), || {
        sb.http_get(&client, &url, 3)
            .iter()
            .all(|a| a == "!err")
            .then_some(())
    });

    // An agent killed outright leaves its routes; `--cleanup` removes them, and only them.
    sb.kill(agent);
    assert!(local_routes(&sb).contains("proto 211"));
    let out = sb.exec(&n1.ns, &[bin(), "node", "--cleanup"]);
    assert!(out.status.success(), "{out:?}");
    let routes = local_routes(&sb);
    assert!(!routes.contains("proto 211"), "{routes}");
    assert!(
        routes.contains("127.0.0.1"),
        "the kernel's own routes stay: {routes}"
    );
}

/// A node joins a server on another machine with a bootstrap token and the pinned CA hash, gets
/// its own credential, and serves a ClusterIP to a pod on its node.
#[test]
fn a_node_joins_from_another_machine_and_serves_its_pods() {
    need!(Sandbox);
    let mut sb = Sandbox::new();
    let (n1, n2) = (sb.node("n1", 1), sb.node("n2", 2));
    let (link1, _) = sb.link(&n1, &n2, 1);
    let backend = sb.pod(&n1, "web");
    let client = sb.pod(&n2, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The server listens on every address of n1 and advertises its link address.
    let data = d.to_str().unwrap();
    sb.spawn(
        &n1.ns,
        &[
            bin(),
            "server",
            "--data-dir",
            data,
            "--listen",
            "0.0.0.0:6443",
            "--advertise-address",
            &link1.to_string(),
            "--service-cidr",
            "10.96.0.0/24",
            "--node-certificate-lifetime",
            "20s",
        ],
    );
    eventually(Duration::from_secs(20), || {
        crate::support::cluster::kubectl(&n1.ns, d, &["get", "--raw", "/readyz"], "")
            .0
            .then_some(())
    });
    let admin = format!("{data}/admin.kubeconfig");
    let token_create = |ttl: &str| {
        let out = sb.exec(
            &n1.ns,
            &[
                bin(),
                "token",
                "create",
                "--kubeconfig",
                &admin,
                "--ttl",
                ttl,
            ],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let printed = token_create("24h");
    // One that has expired by the time it is used.
    let expired = token_create("1s");
    let expired = expired.lines().next().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let lines: Vec<&str> = printed.lines().collect();
    let (token, hash) = (lines[0], lines[1]);
    assert!(
        lines[2].contains(&format!("--server https://{link1}:6443")),
        "{printed}"
    );
    let server = format!("https://{link1}:6443");
    let node_dir = d.join("n2-data");
    let join_args = |token: &str, hash: &str| -> Vec<String> {
        [
            bin(),
            "node",
            "--server",
            &server,
            "--token",
            token,
            "--ca-cert-hash",
            hash,
            "--node-name",
            "n2",
            "--data-dir",
            node_dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let join = |token: &str, hash: &str| {
        let args = join_args(token, hash);
        sb.exec(&n2.ns, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // A wrong hash, a wrong or expired token, a token that is not one: one line each, nothing
    // stored.
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    for (t, h, want) in [
        (token, wrong_hash.as_str(), "does not match --ca-cert-hash"),
        ("abcdef.0123456789abcdef", hash, "refused the token"),
        (expired.as_str(), hash, "refused the token"),
        ("not-a-token", hash, "not a bootstrap token"),
    ] {
        let out = join(t, h);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{want}: {err}");
        let errors = err
            .lines()
            .filter(|l| l.starts_with("switchyard: "))
            .count();
        assert_eq!(errors, 1, "one line of error: {err}");
        assert!(!node_dir.join("node.kubeconfig").exists());
    }
    // The real join: the agent runs as system:node:n2.
    let args = join_args(token, hash);
    sb.spawn(&n2.ns, &args.iter().map(String::as_str).collect::<Vec<_>>());
    sb.http_backend(&backend, 8080, "on-n1");
    register_pod(&n1.ns, d, "web", "n1", &backend);
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("web", 80, "10.96.0.10"),
    );
    let url = format!("http://{}/", cluster_ip(&n1.ns, d, "web"));
    eventually(Duration::from_secs(30), || {
        sb.http_get(&client, &url, 3)
            .iter()
            .all(|a| a == "on-n1")
            .then_some(())
    });
    // Its own credential, private, verifying for the advertised address; its Node registered.
    let kc = node_dir.join("node.kubeconfig");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kc).unwrap().permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "the node's kubeconfig is readable by others"
    );
    let who = sb.exec(
        &n2.ns,
        &[
            "kubectl",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "auth",
            "whoami",
        ],
    );
    let who = String::from_utf8_lossy(&who.stdout);
    assert!(
        who.contains("system:node:n2") && who.contains("system:nodes"),
        "{who}"
    );
    let nodes = ok(&n1.ns, d, &["get", "nodes", "-o", "name"], "");
    assert!(nodes.contains("node/n2"), "{nodes}");
    let csrs = ok(&n1.ns, d, &["get", "csr"], "");
    assert!(csrs.contains("Approved"), "{csrs}");

    // The server signs for 20 s here: the running agent renews its credential as itself, and
    // once the first certificate has expired it still follows changes.
    let first = std::fs::read_to_string(node_dir.join("node.crt")).unwrap();
    eventually(Duration::from_secs(40), || {
        let now = std::fs::read_to_string(node_dir.join("node.crt")).unwrap_or_default();
        (now != first && now.contains("BEGIN CERTIFICATE")).then_some(())
    });
    let requestors = ok(
        &n1.ns,
        d,
        &["get", "csr", "-o", "jsonpath={.items[*].spec.username}"],
        "",
    );
    assert!(
        requestors.contains("system:node:n2"),
        "renewed as itself: {requestors}"
    );
    std::thread::sleep(Duration::from_secs(8));
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("web2", 81, "10.96.0.11"),
    );
    let url2 = format!("http://{}:81/", cluster_ip(&n1.ns, d, "web2"));
    eventually(Duration::from_secs(30), || {
        (sb.http_get(&client, &url2, 1) == ["on-n1"]).then_some(())
    });
}
