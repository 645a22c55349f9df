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

#[test]
fn client_on_another_node_reaches_a_pod_across_the_link() {
    need!(Sandbox);
    let mut sb = Sandbox::new();
    let (n1, n2) = (sb.node("n1", 1), sb.node("n2", 2));
    let (link1, _) = sb.link(&n1, &n2, 1);
    let backend = sb.pod(&n1, "web");
    let client = sb.pod(&n2, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The server listens on n1's link address, so n2's agent reaches it (and the certificate
    // names that address).
    start_server(&mut sb, &n1, d, &format!("{link1}:6443"));
    let node_kubeconfig = crate::support::node_kubeconfig(d, "n2");
    sb.spawn(
        &n2.ns,
        &[
            bin(),
            "node",
            "--kubeconfig",
            node_kubeconfig.to_str().unwrap(),
            "--node-name",
            "n2",
        ],
    );
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
    // The Node object of the agent's node was registered with the node credentials.
    let nodes = ok(&n1.ns, d, &["get", "nodes", "-o", "name"], "");
    assert!(nodes.contains("node/n2"), "{nodes}");
}
