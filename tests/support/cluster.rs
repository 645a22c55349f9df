//! A cluster in network namespaces: the server and kubectl run inside a node namespace, with
//! the admin kubeconfig in the test's data directory; pods are registered the way a kubelet
//! would report them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::netns::{Node, Pod, Sandbox};
use super::{bin, eventually};

/// kubectl run inside a namespace (where the server's loopback address is reachable).
pub fn kubectl(ns: &str, dir: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "kubectl", "--kubeconfig"])
        .arg(dir.join("admin.kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("kubectl-cache"))
        .args(args);
    super::run_with_stdin(&mut cmd, stdin)
}

pub fn ok(ns: &str, dir: &Path, args: &[&str], stdin: &str) -> String {
    let (ok, out, err) = kubectl(ns, dir, args, stdin);
    assert!(ok, "kubectl {args:?}: {err}{out}");
    out
}

pub fn start_server(sb: &mut Sandbox, node: &Node, dir: &Path, listen: &str) -> usize {
    let d = dir.to_str().unwrap();
    let h = sb.spawn(
        &node.ns,
        &[
            bin(),
            "server",
            "--data-dir",
            d,
            "--listen",
            listen,
            "--service-cidr",
            "10.96.0.0/24",
        ],
    );
    eventually(Duration::from_secs(20), || {
        kubectl(&node.ns, dir, &["get", "--raw", "/readyz"], "")
            .0
            .then_some(())
    });
    h
}

/// A Pod labelled `app: web` and `pod: <name>`, with a port named `http` (8080) and one named
/// `udp` (5300/UDP).
fn pod_manifest(name: &str, node: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web, pod: {name}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: web, image: web, ports: [{{name: http, containerPort: 8080}}, {{name: udp, containerPort: 5300, protocol: UDP}}]}}]\n")
}

/// Registers a pod-namespace backend as a Pod object, with the status a kubelet would write.
pub fn register_pod(ns: &str, dir: &Path, name: &str, node: &str, pod: &Pod) {
    ok(ns, dir, &["apply", "-f", "-"], &pod_manifest(name, node));
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{}","podIPs":[{{"ip":"{}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#,
        pod.ip, pod.ip
    );
    ok(
        ns,
        dir,
        &[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        "",
    );
}

pub fn cluster_ip(ns: &str, dir: &Path, name: &str) -> String {
    ok(
        ns,
        dir,
        &["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"],
        "",
    )
}

/// Applies the `web` Service (pods labelled `app: web`, port 80 to their `http` port); its
/// ClusterIP.
pub fn web_service(ns: &str, dir: &Path) -> String {
    ok(
        ns,
        dir,
        &["apply", "-f", "-"],
        &super::traffic::service("web", "app: web", ""),
    );
    cluster_ip(ns, dir, "web")
}
