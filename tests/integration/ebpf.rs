//! The eBPF proxy end to end: node agents with `--proxy-mode ebpf` attach the socket programs to
//! the sandbox's own cgroup, in which every pod process runs; pods reach Services with real
//! traffic. Needs root, a kernel with BTF and the iptables package (the NodePort half); skips
//! with the reason otherwise.

use std::path::Path;
use std::time::Duration;

use crate::need;
use crate::support::cluster::{cluster_ip, ok, register_pod, start_server, web_service};
use crate::support::netns::{Node, Pod, Sandbox};
use crate::support::traffic::{answers, last_answer, load, service, set, udp_client};
use crate::support::{bin, eventually};

/// The agent's arguments in eBPF mode, attached to the sandbox's cgroup.
fn agent_args(sb: &mut Sandbox, name: &str, dir: &Path) -> Vec<String> {
    let cg = sb.cgroup();
    let kubeconfig = crate::support::node_kubeconfig(dir, name);
    [
        bin(),
        "node",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        name,
        "--proxy-mode",
        "ebpf",
        "--cgroup-path",
        cg.path.to_str().unwrap(),
        "--bpf-pin-path",
        cg.pins.to_str().unwrap(),
        "--cluster-cidr",
        "10.244.0.0/16",
    ]
    .map(str::to_string)
    .to_vec()
}

fn agent(sb: &mut Sandbox, node: &Node, name: &str, dir: &Path) -> usize {
    let args = agent_args(sb, name, dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.spawn(&node.ns, &args)
}

fn healthy(sb: &Sandbox, node: &Node) -> Option<()> {
    let out = sb.exec(&node.ns, &["curl", "-sf", "http://127.0.0.1:10249/healthz"]);
    out.status.success().then_some(())
}

/// What bpftool lists as attached to a cgroup.
fn attached(cgroup: &Path) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool cgroup show {}",
        cgroup.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` with python3 in `pod`; its stdout, trimmed.
fn python(sb: &Sandbox, pod: &Pod, script: &str) -> String {
    let out = sb.exec(&pod.ns, &["python3", "-c", script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ebpf_translates_cluster_ips_at_the_socket() {
    need!(Ebpf);
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let (a, b) = (sb.pod(&n1, "a"), sb.pod(&n1, "b"));
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");

    // A cgroup that is not cgroup v2 is refused with what to do instead.
    let mut args = agent_args(&mut sb, "n1", d);
    let i = args.iter().position(|a| a == "--cgroup-path").unwrap();
    args[i + 1] = d.to_str().unwrap().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = sb.exec(&n1.ns, &args);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("not a cgroup v2 directory") && err.contains("--proxy-mode iptables"),
        "{err}"
    );

    agent(&mut sb, &n1, "n1", d);
    for (pod, name) in [(&a, "a"), (&b, "b")] {
        sb.http_backend(pod, 8080, name);
        sb.udp_backend(pod, 5300, name);
        register_pod(&n1.ns, d, name, "n1", pod);
    }
    let dns = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  selector: {app: web}\n  ports: [{name: udp, port: 53, protocol: UDP, targetPort: udp}]\n";
    let manifests = [
        service("web", "app: web", ""),
        service("sticky", "app: web", "  sessionAffinity: ClientIP\n"),
        service("empty", "pod: nobody", ""),
        service("only-b", "pod: b", "  type: NodePort\n"),
        dns.to_string(),
    ];
    ok(&n1.ns, d, &["apply", "-f", "-"], &manifests.join("---\n"));
    let web = cluster_ip(&n1.ns, d, "web");
    let url = format!("http://{web}/");
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &url, 16) == set(&["a", "b"])).then_some(())
    });

    // The application sees the ClusterIP it dialled, not the pod it reached.
    let peer = python(
        &sb,
        &client,
        &format!("import socket\ns = socket.create_connection(('{web}', 80), timeout=2)\nprint('%s:%d' % s.getpeername())"),
    );
    assert_eq!(peer, format!("{web}:80"));

    // UDP, unconnected: each datagram is translated, and the answer comes from the ClusterIP.
    let ip = cluster_ip(&n1.ns, d, "dns");
    let got = python(
        &sb,
        &client,
        &format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\nseen = set()\nfor _ in range(16):\n    s.sendto(b'q', ('{ip}', 53))\n    data, src = s.recvfrom(512)\n    seen.add('%s<%s:%d' % (data.decode(), src[0], src[1]))\nprint(' '.join(sorted(seen)))"),
    );
    assert_eq!(got, format!("a<{ip}:53 b<{ip}:53"));
    // UDP, connected.
    let got = python(
        &sb,
        &client,
        &format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect(('{ip}', 53))\ns.send(b'q')\nprint(s.recv(512).decode(), '%s:%d' % s.getpeername())"),
    );
    assert!(
        got == format!("a {ip}:53") || got == format!("b {ip}:53"),
        "{got}"
    );

    // ClientIP affinity: one client, one backend.
    let sticky = format!("http://{}/", cluster_ip(&n1.ns, d, "sticky"));
    eventually(Duration::from_secs(20), || {
        (sb.http_get(&client, &sticky, 1) != ["!err"]).then_some(())
    });
    assert_eq!(answers(&sb, &client, &sticky, 12).len(), 1);
    // No endpoints: refused at once.
    let empty = cluster_ip(&n1.ns, d, "empty");
    eventually(Duration::from_secs(20), || {
        (sb.connect(&client.ns, &empty, 80) == "refused").then_some(())
    });
    // A NodePort is served by the iptables half.
    let np = ok(
        &n1.ns,
        d,
        &[
            "get",
            "svc",
            "only-b",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
        "",
    );
    let url_np = format!("http://{}:{np}/", n1.gateway);
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, &url_np, 4) == set(&["b"])).then_some(())
    });
}

#[test]
fn ebpf_udp_sockets_move_off_a_removed_backend() {
    need!(Ebpf);
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let (u1, u2) = (sb.pod(&n1, "u1"), sb.pod(&n1, "u2"));
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    agent(&mut sb, &n1, "n1", d);
    sb.udp_backend(&u1, 5300, "u1");
    sb.udp_backend(&u2, 5300, "u2");
    register_pod(&n1.ns, d, "u1", "n1", &u1);
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  selector: {app: web}\n  ports: [{name: udp, port: 53, protocol: UDP, targetPort: udp}]\n";
    ok(&n1.ns, d, &["apply", "-f", "-"], svc);
    let ip = cluster_ip(&n1.ns, d, "dns");

    // Wait until the service works before the client connects its one socket.
    eventually(Duration::from_secs(20), || {
        let got = python(&sb, &client, &format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(0.5)\ntry:\n    s.sendto(b'q', ('{ip}', 53)); print(s.recvfrom(64)[0].decode())\nexcept OSError: pass"));
        (got == "u1").then_some(())
    });
    let log = d.join("udp.log");
    udp_client(&mut sb, &client, &ip, 53, &log);
    eventually(Duration::from_secs(10), || {
        (last_answer(&log) == "u1").then_some(())
    });
    // u1 stops being an endpoint but keeps answering: only a destroyed socket moves the
    // client (a connected socket's send() passes no hook).
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
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("!reset"),
        "the socket was never aborted:\n{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_answer(&log), "u2");
}

#[test]
fn ebpf_churn_and_restart_lose_no_connection_and_cleanup_leaves_nothing() {
    need!(Ebpf);
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let pods: Vec<Pod> = (1..=3).map(|i| sb.pod(&n1, &format!("w{i}"))).collect();
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    let first = agent(&mut sb, &n1, "n1", d);
    for (i, pod) in pods.iter().enumerate() {
        sb.http_backend(pod, 8080, &format!("w{}", i + 1));
    }
    for i in [1, 2] {
        register_pod(&n1.ns, d, &format!("w{i}"), "n1", &pods[i - 1]);
    }
    let ip = web_service(&n1.ns, d);
    let url = format!("http://{ip}/");
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &url, 10) == set(&["w1", "w2"])).then_some(())
    });

    // Under a steady stream of new connections: w3 joins, w1 leaves, and the agent is killed
    // (no chance to tidy up) and replaced.
    let running = load(&sb, &client, &ip, 10);
    std::thread::sleep(Duration::from_secs(1));
    register_pod(&n1.ns, d, "w3", "n1", &pods[2]);
    ok(
        &n1.ns,
        d,
        &["delete", "pod", "w1", "--grace-period=0", "--force"],
        "",
    );
    eventually(Duration::from_secs(20), || {
        (answers(&sb, &client, &url, 12) == set(&["w2", "w3"])).then_some(())
    });
    sb.kill(first);
    std::thread::sleep(Duration::from_secs(1));
    let second = agent(&mut sb, &n1, "n1", d);
    eventually(Duration::from_secs(20), || healthy(&sb, &n1));
    let (good, failed) = running.join().unwrap();
    assert_eq!(failed, 0, "{failed} connections failed ({good} succeeded)");
    assert!(good > 50, "only {good} connections in 10 s");
    // The restarted agent adopted the maps: still exactly w2 and w3.
    assert_eq!(answers(&sb, &client, &url, 12), set(&["w2", "w3"]));

    // --cleanup unpins everything: programs detached, maps freed.
    let cg = sb.cgroup();
    sb.kill(second);
    let out = sb.exec(
        &n1.ns,
        &[
            bin(),
            "node",
            "--cleanup",
            "--bpf-pin-path",
            cg.pins.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cg.pins.exists(), "pins left in {}", cg.pins.display());
    let listed = attached(&cg.path);
    assert!(!listed.contains("sy_"), "still attached:\n{listed}");
    assert_ne!(sb.connect(&client.ns, &ip, 80), "ok");
}

/// A pure cgroup v2 host, as the agent sees it: in a mount and cgroup namespace of its own, the
/// only cgroup mount is cgroup2 at `/sys/fs/cgroup`, whose root is the sandbox's cgroup (the
/// namespace's root). With default `--cgroup-path` and `--bpf-pin-path`, the agent finds that
/// mount in /proc/self/mountinfo, mounts a bpffs at /sys/fs/bpf (private to its namespace, gone
/// with it) and translates the pods' connects.
#[test]
fn ebpf_starts_with_default_flags_on_a_pure_cgroup_v2_host() {
    need!(Ebpf);
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let (a, client) = (sb.pod(&n1, "a"), sb.pod(&n1, "client"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    let cg = sb.cgroup();
    // `ip netns exec` gave the agent a fresh /sys, without the host's cgroup mounts; the
    // sandbox's own cgroup2 mount under /tmp is unmounted too, so /sys/fs/cgroup is the only one.
    let sandbox_mount = cg.path.parent().unwrap().to_str().unwrap().to_string();
    let kubeconfig = crate::support::node_kubeconfig(d, "n1");
    let setup = "umount \"$0\" && mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"";
    let args = [
        "unshare",
        "--cgroup",
        "--mount",
        "sh",
        "-c",
        setup,
        &sandbox_mount,
        bin(),
        "node",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "n1",
        "--proxy-mode",
        "ebpf",
    ];
    sb.spawn(&n1.ns, &args);
    sb.http_backend(&a, 8080, "a");
    register_pod(&n1.ns, d, "a", "n1", &a);
    let url = format!("http://{}/", web_service(&n1.ns, d));
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &url, 4) == set(&["a"])).then_some(())
    });
    // The programs sit on the sandbox's cgroup: the root of the agent's cgroup namespace.
    let listed = attached(&cg.path);
    assert!(listed.contains("sy_connect4"), "not attached:\n{listed}");
}
