//! The kernel proxy modes end to end: node agents with `--proxy-mode iptables` (NAT rules) or
//! `--proxy-mode nftables` (tables of their own) program their node namespaces; pods reach
//! Services with real traffic. Every test runs in both modes. Needs root, the iptables package
//! and nft; skips with the reason otherwise.

use std::path::Path;
use std::time::Duration;

use crate::need;
use crate::support::cluster::{cluster_ip, ok, register_pod, start_server, web_service};
use crate::support::netns::{Node, Pod, Sandbox};
use crate::support::traffic::{answers, last_answer, load, service, set, udp_client};
use crate::support::{bin, eventually};

/// A node agent in a kernel proxy mode (`iptables` or `nftables`).
fn agent(sb: &mut Sandbox, node: &Node, name: &str, dir: &Path, mode: &str) -> usize {
    let kubeconfig = crate::support::node_kubeconfig(dir, name);
    sb.spawn(
        &node.ns,
        &[
            bin(),
            "node",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            name,
            "--proxy-mode",
            mode,
            "--cluster-cidr",
            "10.244.0.0/16",
        ],
    )
}

fn node_port(ns: &str, dir: &Path, name: &str) -> String {
    ok(
        ns,
        dir,
        &[
            "get",
            "svc",
            name,
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
        "",
    )
}

/// The node's own network stack, as a client.
fn node_itself(node: &Node) -> Pod {
    Pod {
        ns: node.ns.clone(),
        ip: node.gateway,
    }
}

#[test]
fn iptables_serves_cluster_ips_node_ports_and_traffic_policies_across_two_nodes() {
    need!(Iptables);
    serves_cluster_ips_node_ports_and_traffic_policies_across_two_nodes("iptables");
}

#[test]
fn nftables_serves_cluster_ips_node_ports_and_traffic_policies_across_two_nodes() {
    need!(Nftables);
    serves_cluster_ips_node_ports_and_traffic_policies_across_two_nodes("nftables");
}

fn serves_cluster_ips_node_ports_and_traffic_policies_across_two_nodes(mode: &str) {
    let mut sb = Sandbox::new();
    let (n1, n2) = (sb.node("n1", 1), sb.node("n2", 2));
    let (link1, link2) = sb.link(&n1, &n2, 1);
    let a = sb.pod(&n1, "a");
    let b = sb.pod(&n2, "b");
    let client = sb.pod(&n2, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, &format!("{link1}:6443"));
    // Node processes reach ClusterIPs through a route for the service range (on a real node,
    // the default route).
    for n in [&n1, &n2] {
        let out = sb.exec(&n.ns, &["ip", "route", "add", "10.96.0.0/24", "dev", "br0"]);
        assert!(out.status.success());
    }
    agent(&mut sb, &n1, "n1", d, mode);
    agent(&mut sb, &n2, "n2", d, mode);
    sb.http_backend(&a, 8080, "a");
    sb.http_backend(&b, 8080, "b");
    register_pod(&n1.ns, d, "a", "n1", &a);
    register_pod(&n1.ns, d, "b", "n2", &b);
    let manifests = [
        service("web", "app: web", ""),
        service("only-b", "pod: b", "  type: NodePort\n"),
        service(
            "local",
            "app: web",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
        ),
        service("itp", "app: web", "  internalTrafficPolicy: Local\n"),
        service("sticky", "app: web", "  sessionAffinity: ClientIP\n"),
        service("empty", "pod: nobody", ""),
        service("ext", "pod: a", "  externalIPs: [192.0.2.10]\n"),
    ];
    ok(&n1.ns, d, &["apply", "-f", "-"], &manifests.join("---\n"));
    let web = cluster_ip(&n1.ns, d, "web");
    let url = format!("http://{web}/");

    // ClusterIP from a pod on n2: both endpoints, one of them across the link.
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &url, 16) == set(&["a", "b"])).then_some(())
    });
    // From the node itself (OUTPUT), and from pod a to itself through the service (hairpin).
    assert!(answers(&sb, &node_itself(&n2), &url, 8).is_subset(&set(&["a", "b"])));
    eventually(Duration::from_secs(10), || {
        let got = answers(&sb, &a, &url, 12);
        assert!(got.is_subset(&set(&["a", "b"])), "hairpin failed: {got:?}");
        got.contains("a").then_some(())
    });

    // NodePort on n1 to the pod on n2: masqueraded so the reply comes back through n1.
    let np = node_port(&n1.ns, d, "only-b");
    let url_np = format!("http://{link1}:{np}/");
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, &url_np, 4) == set(&["b"])).then_some(())
    });
    // externalTrafficPolicy Local: each node sends NodePort traffic only to its own pod.
    let np = node_port(&n1.ns, d, "local");
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, &format!("http://{link1}:{np}/"), 6) == set(&["a"])).then_some(())
    });
    assert_eq!(
        answers(&sb, &client, &format!("http://{link2}:{np}/"), 6),
        set(&["b"])
    );
    // internalTrafficPolicy Local: the client on n2 only reaches b.
    let itp = format!("http://{}/", cluster_ip(&n1.ns, d, "itp"));
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, &itp, 8) == set(&["b"])).then_some(())
    });
    // ClientIP affinity: one client, one backend.
    let sticky = format!("http://{}/", cluster_ip(&n1.ns, d, "sticky"));
    eventually(Duration::from_secs(20), || {
        (sb.http_get(&client, &sticky, 1) != ["!err"]).then_some(())
    });
    assert_eq!(answers(&sb, &client, &sticky, 12).len(), 1);
    // No endpoints: refused at once rather than a timeout.
    let empty = cluster_ip(&n1.ns, d, "empty");
    eventually(Duration::from_secs(20), || {
        (sb.connect(&client.ns, &empty, 80) == "refused").then_some(())
    });
    // An external IP, and a load-balancer IP written into the status.
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, "http://192.0.2.10/", 3) == set(&["a"])).then_some(())
    });
    ok(
        &n1.ns,
        d,
        &[
            "patch",
            "svc",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.20"}]}}}"#,
        ],
        "",
    );
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, "http://192.0.2.20/", 12) == set(&["a", "b"])).then_some(())
    });

    // nftables: another table's drop is final whatever our table says (kube-proxy's nftables
    // mode leaves the host firewall to the admin too).
    if mode == "nftables" {
        return;
    }
    // A host whose FORWARD policy drops: our rules let through what they DNATed, and nothing
    // another tool DNATed. The other tool's port forward to pod a works while FORWARD accepts.
    let foreign = format!("http://{link1}:9090/");
    let dnat = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "9090",
        "-j",
        "DNAT",
        "--to-destination",
    ];
    let to = format!("{}:8080", a.ip);
    let out = sb.exec(&n1.ns, &[&dnat[..], &[to.as_str()]].concat());
    assert!(out.status.success());
    assert_eq!(sb.http_get(&client, &foreign, 1), ["a"]);
    let out = sb.exec(&n1.ns, &["iptables", "-P", "FORWARD", "DROP"]);
    assert!(out.status.success());
    assert_eq!(
        sb.http_get(&client, &foreign, 1),
        ["!err"],
        "another tool's DNATed flow was accepted past the FORWARD policy"
    );
    // Ours: a NodePort masqueraded to n2, and one kept local under externalTrafficPolicy Local.
    assert_eq!(answers(&sb, &client, &url_np, 4), set(&["b"]));
    assert_eq!(
        answers(&sb, &client, &format!("http://{link1}:{np}/"), 4),
        set(&["a"])
    );
}

#[test]
fn iptables_udp_flows_move_off_a_removed_endpoint() {
    need!(Iptables);
    udp_flows_move_off_a_removed_endpoint("iptables");
}

#[test]
fn nftables_udp_flows_move_off_a_removed_endpoint() {
    need!(Nftables);
    udp_flows_move_off_a_removed_endpoint("nftables");
}

fn udp_flows_move_off_a_removed_endpoint(mode: &str) {
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let (u1, u2) = (sb.pod(&n1, "u1"), sb.pod(&n1, "u2"));
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    agent(&mut sb, &n1, "n1", d, mode);
    sb.udp_backend(&u1, 5300, "u1");
    sb.udp_backend(&u2, 5300, "u2");
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  selector: {app: web}\n  ports: [{name: udp, port: 53, protocol: UDP, targetPort: udp}]\n";
    ok(&n1.ns, d, &["apply", "-f", "-"], svc);
    let ip = cluster_ip(&n1.ns, d, "dns");

    // The client starts while the service has no endpoints, and keeps its one socket (one
    // conntrack entry) through everything below.
    let log = d.join("udp.log");
    udp_client(&mut sb, &client, &ip, 53, &log);
    std::thread::sleep(Duration::from_millis(500));
    register_pod(&n1.ns, d, "u1", "n1", &u1);
    eventually(Duration::from_secs(20), || {
        (last_answer(&log) == "u1").then_some(())
    });
    // u1 stops being an endpoint but keeps answering: only a cleared conntrack entry moves
    // the flow (otherwise it stays on u1 while the client keeps sending).
    register_pod(&n1.ns, d, "u2", "n1", &u2);
    ok(
        &n1.ns,
        d,
        &["delete", "pod", "u1", "--grace-period=0", "--force"],
        "",
    );
    eventually(Duration::from_secs(20), || {
        (last_answer(&log) == "u2").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_answer(&log), "u2");
}

/// What the kernel has of the agent's rules: iptables-save, or the nftables ruleset.
fn saved_rules(sb: &Sandbox, node: &Node, mode: &str) -> String {
    let cmd: &[&str] = if mode == "nftables" {
        &["nft", "list", "ruleset"]
    } else {
        &["iptables-save"]
    };
    String::from_utf8_lossy(&sb.exec(&node.ns, cmd).stdout).into_owned()
}

#[test]
fn iptables_agent_restarts_under_load_and_cleans_up() {
    need!(Iptables);
    agent_restarts_under_load_and_cleans_up("iptables");
}

#[test]
fn nftables_agent_restarts_under_load_and_cleans_up() {
    need!(Nftables);
    agent_restarts_under_load_and_cleans_up("nftables");
}

fn agent_restarts_under_load_and_cleans_up(mode: &str) {
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let backends: Vec<Pod> = (1..=2).map(|i| sb.pod(&n1, &format!("w{i}"))).collect();
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    let first = agent(&mut sb, &n1, "n1", d, mode);
    for (i, pod) in backends.iter().enumerate() {
        let name = format!("w{}", i + 1);
        sb.http_backend(pod, 8080, &name);
        register_pod(&n1.ns, d, &name, "n1", pod);
    }
    let ip = web_service(&n1.ns, d);
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &format!("http://{ip}/"), 10) == set(&["w1", "w2"])).then_some(())
    });

    // Kill the agent (no chance to tidy up) and start another while connections keep coming.
    let running = load(&sb, &client, &ip, 8);
    std::thread::sleep(Duration::from_secs(2));
    sb.kill(first);
    std::thread::sleep(Duration::from_secs(1));
    let second = agent(&mut sb, &n1, "n1", d, mode);
    let healthy = || {
        let out = sb.exec(&n1.ns, &["curl", "-sf", "http://127.0.0.1:10249/healthz"]);
        out.status.success().then_some(())
    };
    eventually(Duration::from_secs(20), healthy);
    let (good, failed) = running.join().unwrap();
    assert_eq!(failed, 0, "{failed} connections failed ({good} succeeded)");
    assert!(good > 50, "only {good} connections in 8 s");
    let rules = saved_rules(&sb, &n1, mode);
    if mode == "nftables" {
        // One table per family, each with its jumps from prerouting and output.
        assert_eq!(rules.matches("table ip switchyard").count(), 1, "{rules}");
        assert_eq!(rules.matches("table ip6 switchyard").count(), 1, "{rules}");
        assert_eq!(rules.matches("jump services").count(), 4, "{rules}");
    } else {
        assert_eq!(
            rules.matches("-j SY-SERVICES").count(),
            2,
            "one jump each from PREROUTING and OUTPUT"
        );
    }

    // --cleanup removes everything the agent made, and only that.
    sb.kill(second);
    let out = sb.exec(&n1.ns, &[bin(), "node", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = saved_rules(&sb, &n1, mode);
    assert!(
        !rules.contains("SY-") && !rules.contains("switchyard"),
        "{rules}"
    );
    let flows = sb.exec(&n1.ns, &["conntrack", "-L", "-d", &ip]);
    let listed = String::from_utf8_lossy(&flows.stdout);
    assert!(!listed.contains(&ip), "conntrack entries left: {listed}");
    assert_ne!(sb.connect(&client.ns, &ip, 80), "ok");
}
