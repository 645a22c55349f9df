//! The node agent with the userspace proxy, end to end on loopback: `switchyard up` (run as an
//! unprivileged user when the tests run as root), and `server` + `node` as separate processes
//! for static stability. Backends are TCP and UDP servers in the test process on 127.0.0.1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::support::{bin, eventually_async, free_port, node_kubeconfig, Server, Up};

/// Above 1024, so that an unprivileged proxy can listen on it.
pub(crate) const SERVICE_PORT: u16 = 8080;

/// A TCP backend that answers every connection with its name.
async fn tcp_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    addr
}

/// A UDP backend that answers every datagram with its name and the datagram.
async fn udp_backend(name: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let reply = [name.as_bytes(), b":", &buf[..n]].concat();
            let _ = s.send_to(&reply, peer).await;
        }
    });
    addr
}

/// Connects and reads what the backend says; None when refused or reset.
async fn ask(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    (!out.is_empty()).then_some(out)
}

async fn answers(addr: SocketAddr, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        if let Some(a) = ask(addr).await {
            seen.insert(a);
        }
    }
    seen
}

pub(crate) fn service(name: &str, proto: &str, affinity: bool) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "p", "port": SERVICE_PORT, "protocol": proto}], "sessionAffinity": if affinity { "ClientIP" } else { "None" }},
    }))
    .unwrap()
}

/// A slice for one backend: the backends share 127.0.0.1 with different ports, so each needs
/// its own slice (a slice's ports apply to all its endpoints).
fn slice(service: &str, i: usize, proto: &str, backend: SocketAddr) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{service}-{i}"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": backend.port(), "protocol": proto}],
        "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}],
    }))
    .unwrap()
}

/// Each backend is 127.0.0.1 with its own port: one EndpointSlice per backend.
pub(crate) async fn set_backends(
    api: &Api<EndpointSlice>,
    service: &str,
    proto: &str,
    backends: &[SocketAddr],
) {
    let existing = api
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("kubernetes.io/service-name={service}")),
        )
        .await
        .unwrap();
    for s in existing.items {
        api.delete(&s.metadata.name.unwrap(), &DeleteParams::default())
            .await
            .unwrap();
    }
    for (i, b) in backends.iter().enumerate() {
        api.create(&PostParams::default(), &slice(service, i, proto, *b))
            .await
            .unwrap();
    }
}

async fn cluster_ip(api: &Api<Service>, name: &str) -> SocketAddr {
    let svc = api.get(name).await.unwrap();
    SocketAddr::new(
        svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap(),
        SERVICE_PORT,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_cluster_ips_and_follows_endpoint_changes() {
    let up = Up::start(&[], true);
    let client = up.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let backends = [
        tcp_backend("a").await,
        tcp_backend("b").await,
        tcp_backend("c").await,
    ];
    svcs.create(&PostParams::default(), &service("web", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "web", "TCP", &backends).await;
    let vip = cluster_ip(&svcs, "web").await;
    assert!(
        vip.ip().is_loopback(),
        "up picks a loopback service CIDR: {vip}"
    );
    let all: HashSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    eventually_async(Duration::from_secs(15), || async {
        (answers(vip, 12).await == all).then_some(())
    })
    .await;

    // Removing an endpoint moves traffic off it.
    set_backends(&slices, "web", "TCP", &backends[..2]).await;
    let two: HashSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    eventually_async(Duration::from_secs(15), || async {
        (answers(vip, 12).await == two).then_some(())
    })
    .await;

    // No endpoints: connections are refused at once (reset), not left hanging.
    set_backends(&slices, "web", "TCP", &[]).await;
    eventually_async(Duration::from_secs(15), || async {
        ask(vip).await.is_none().then_some(())
    })
    .await;

    // ClientIP affinity keeps a client on one endpoint.
    svcs.create(&PostParams::default(), &service("sticky", "TCP", true))
        .await
        .unwrap();
    set_backends(&slices, "sticky", "TCP", &backends).await;
    let sticky = cluster_ip(&svcs, "sticky").await;
    eventually_async(Duration::from_secs(15), || async { ask(sticky).await }).await;
    assert_eq!(answers(sticky, 10).await.len(), 1);

    // UDP, with replies from the ClusterIP.
    svcs.create(&PostParams::default(), &service("dns", "UDP", false))
        .await
        .unwrap();
    let u = udp_backend("u1").await;
    set_backends(&slices, "dns", "UDP", &[u]).await;
    let uvip = cluster_ip(&svcs, "dns").await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = eventually_async(Duration::from_secs(15), || async {
        sock.send_to(b"ping", uvip).await.ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .await;
    assert_eq!(reply, ("u1:ping".to_string(), uvip));

    // Deleting the Service closes its port.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually_async(Duration::from_secs(15), || async {
        TcpStream::connect(vip).await.is_err().then_some(())
    })
    .await;

    // Metrics and health, with kube-proxy's names.
    let metrics = crate::support::http_get(up.metrics, "/metrics").await;
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("kubeproxy_network_programming_duration_seconds_count"));
    assert!(crate::support::http_get(up.metrics, "/healthz")
        .await
        .contains("lastUpdated"));
    let _ = up.api;
}

/// A plain HTTP/1.0 GET on loopback.
/// A Service `web` whose one backend answers `answer`; returns its ClusterIP once the node
/// serves it.
async fn serve_web(client: &kube::Client, answer: &'static str) -> SocketAddr {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let b = tcp_backend(answer).await;
    svcs.create(&PostParams::default(), &service("web", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "web", "TCP", &[b]).await;
    let vip = cluster_ip(&svcs, "web").await;
    let got = eventually_async(Duration::from_secs(15), || async { ask(vip).await }).await;
    assert_eq!(got, answer);
    vip
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_survives_the_api_server_going_away() {
    let port = free_port();
    let mut server = Server::start_at(
        port,
        &[
            "--allow-loopback-endpoints",
            "--service-cidr",
            "127.11.0.0/16",
        ],
    );
    let metrics = free_port();
    let node = Command::new(bin())
        .args(["node", "--kubeconfig"])
        .arg(node_kubeconfig(server.dir.path(), "n1"))
        .args([
            "--node-name",
            "n1",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop, also when an assertion fails.
    let _node = KillOnDrop(node);
    let vip = serve_web(&server.client().await, "kept").await;

    // The API server dies: the node keeps serving what it had.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for _ in 0..5 {
        assert_eq!(ask(vip).await.as_deref(), Some("kept"));
    }
    // It comes back: the node resumes following changes.
    server.crash_and_restart(&[
        "--allow-loopback-endpoints",
        "--service-cidr",
        "127.11.0.0/16",
    ]);
    let client = server.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let b2 = tcp_backend("new").await;
    svcs.create(&PostParams::default(), &service("after", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "after", "TCP", &[b2]).await;
    let vip2 = cluster_ip(&svcs, "after").await;
    eventually_async(Duration::from_secs(60), || async { ask(vip2).await }).await;
    // The node registered itself and renews its lease with the node credentials.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(server.client().await, "kube-node-lease");
    let holder = eventually_async(Duration::from_secs(30), || async {
        leases.get("n1").await.ok()?.spec?.holder_identity
    })
    .await;
    assert_eq!(holder, "n1");
}

/// Whether something listens on TCP `port` at 127.0.0.1 only (true), on every address (false),
/// or not at all (None), from /proc/net/tcp.
fn tcp_listener(port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let suffix = format!(":{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (local, state) = (f.get(1)?, f.get(3)?);
        (*state == "0A" && local.ends_with(&suffix)).then(|| local.starts_with("0100007F"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn services_of_another_proxy_are_left_alone_and_up_keeps_node_ports_local() {
    let up = Up::start(&[], true);
    let client = up.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let labelled = |name: &str, label: &str| -> Service {
        let mut s = service(name, "TCP", false);
        s.metadata.labels = Some([(label.to_string(), "other".to_string())].into());
        s
    };
    for (name, svc) in [
        (
            "theirs",
            labelled("theirs", "service.kubernetes.io/service-proxy-name"),
        ),
        (
            "headless-label",
            labelled("headless-label", "service.kubernetes.io/headless"),
        ),
    ] {
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        set_backends(&slices, name, "TCP", &[tcp_backend("x").await]).await;
    }
    // Created last, served once the agent has seen the two above.
    let mut np = service("mine", "TCP", false);
    np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    svcs.create(&PostParams::default(), &np).await.unwrap();
    set_backends(&slices, "mine", "TCP", &[tcp_backend("mine").await]).await;
    let vip = cluster_ip(&svcs, "mine").await;
    eventually_async(Duration::from_secs(15), || async {
        (ask(vip).await.as_deref() == Some("mine")).then_some(())
    })
    .await;
    for name in ["theirs", "headless-label"] {
        let vip = cluster_ip(&svcs, name).await;
        assert_eq!(ask(vip).await, None, "{name} was proxied");
    }
    // `up` accepts loopback endpoints, so its NodePorts listen on loopback only.
    let node_port = svcs.get("mine").await.unwrap().spec.unwrap().ports.unwrap()[0]
        .node_port
        .unwrap() as u16;
    assert_eq!(tcp_listener(node_port), Some(true), "NodePort {node_port}");
    assert_eq!(
        ask(SocketAddr::from(([127, 0, 0, 1], node_port)))
            .await
            .as_deref(),
        Some("mine")
    );
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    // A soft limit well below the hard one, as many service managers and shells set it.
    let dir = tempfile::tempdir().unwrap();
    let script = "ulimit -Sn 256 && exec \"$@\"";
    let mut child = Command::new("sh")
        .args([
            "-c",
            script,
            "sh",
            bin(),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limits = || std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let max_open = |text: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .skip(3)
            .take(2)
            .map(str::to_string)
            .collect()
    };
    // Once the server has written its kubeconfig, it is past the limit and its log line.
    let kubeconfig = dir.path().join("data/admin.kubeconfig");
    for _ in 0..100 {
        if kubeconfig.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = max_open(&limits());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(seen[0], seen[1], "soft limit not raised: {seen:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("open-file limit"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_registered_by_a_kubelet_keeps_its_lease_to_the_kubelet() {
    let port = free_port();
    let server = Server::start_at(port, &["--allow-loopback-endpoints"]);
    let client = server.client().await;
    // The kubelet registered this node; the agent joins it.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = serde_json::json!({"metadata": {"name": "kubelet-node"}});
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node).unwrap(),
        )
        .await
        .unwrap();
    let spawn = |name: &str| {
        let child = Command::new(bin())
            .args(["node", "--kubeconfig"])
            .arg(node_kubeconfig(server.dir.path(), name))
            .args(["--node-name", name, "--metrics-listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let _theirs = spawn("kubelet-node");
    let _ours = spawn("agent-node");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    // The node the agent registered is its own: it renews that Lease...
    eventually_async(Duration::from_secs(30), || async {
        leases.get("agent-node").await.ok().map(|_| ())
    })
    .await;
    // ...and not the kubelet's, which would hide a dead kubelet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(leases.get_opt("kubelet-node").await.unwrap().is_none());
    let labels = nodes.get("kubelet-node").await.unwrap().metadata.labels;
    assert!(
        labels.unwrap_or_default().is_empty(),
        "the kubelet's Node was changed"
    );
}

/// A TCP backend that echoes what it reads until the connection closes.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A UDP backend that answers every datagram with the source port it came from.
async fn port_backend() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(peer.port().to_string().as_bytes(), peer).await;
        }
    });
    addr
}

/// A connection through the proxy that has exchanged a byte with the backend; None when the
/// proxy refused it.
async fn held(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"x").await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(1)) => Some(s),
        _ => None,
    }
}

/// Which source port the backend saw for a datagram from `client`.
async fn flow_port(client: &UdpSocket, vip: SocketAddr) -> String {
    client.send_to(b"?", vip).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut b))
        .await
        .expect("a UDP answer through the proxy")
        .unwrap();
    String::from_utf8_lossy(&b[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn userspace_connections_are_capped_idle_ones_closed_and_udp_flows_bounded() {
    let up = Up::start(
        &[
            "--userspace-max-connections",
            "3",
            "--userspace-max-udp-flows",
            "2",
        ],
        true,
    );
    let client = up.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let echo = echo_backend().await;
    svcs.create(&PostParams::default(), &service("held", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "held", "TCP", &[echo]).await;
    svcs.create(&PostParams::default(), &service("flows", "UDP", false))
        .await
        .unwrap();
    set_backends(&slices, "flows", "UDP", &[port_backend().await]).await;
    let vip = cluster_ip(&svcs, "held").await;
    let first = eventually_async(Duration::from_secs(20), || held(vip)).await;

    // Three connections at most: the fourth is refused while they are held, and a slot freed
    // by a closed one is taken again.
    let second = held(vip).await.expect("the second connection");
    let _third = held(vip).await.expect("the third connection");
    assert!(held(vip).await.is_none(), "a fourth connection got through");
    drop(second);
    eventually_async(Duration::from_secs(10), || held(vip)).await;
    drop(first);

    // UDP: two flows at most; a third client ends the oldest flow, whose client then gets a
    // new one (a new source port at the backend). The newest flow is kept.
    let vip = cluster_ip(&svcs, "flows").await;
    let clients: Vec<UdpSocket> = futures::future::join_all(
        (0..3).map(|_| async { UdpSocket::bind("127.0.0.1:0").await.unwrap() }),
    )
    .await;
    let c1 = eventually_async(Duration::from_secs(20), || async {
        clients[0].send_to(b"?", vip).await.ok()?;
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_millis(500), clients[0].recv(&mut b))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&b[..n]).into_owned())
    })
    .await;
    assert_eq!(flow_port(&clients[0], vip).await, c1, "one flow per client");
    let _c2 = flow_port(&clients[1], vip).await;
    let c3 = flow_port(&clients[2], vip).await;
    assert_ne!(
        flow_port(&clients[0], vip).await,
        c1,
        "the oldest flow was kept"
    );
    assert_eq!(
        flow_port(&clients[2], vip).await,
        c3,
        "the newest flow was ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn userspace_closes_idle_connections() {
    let up = Up::start(&["--userspace-idle-timeout", "2s"], true);
    let client = up.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service("idle", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "idle", "TCP", &[echo_backend().await]).await;
    let vip = cluster_ip(&svcs, "idle").await;
    let mut conn = eventually_async(Duration::from_secs(20), || held(vip)).await;
    // Bytes keep it open...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(conn.read(&mut b).await.unwrap(), 1, "closed while in use");
    }
    // ...and a connection idle for the timeout is closed by the proxy.
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut b)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection stayed open: {read:?}"
    );
}

/// The agent as a ServiceAccount bound to the `switchyard:node-agent` ClusterRole, and nothing
/// else: it proxies, routes Ingresses and writes their status; the account can do no more.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_as_a_service_account_with_its_cluster_role() {
    let server = Server::start(&[
        "--allow-loopback-endpoints",
        "--service-cidr",
        "127.12.0.0/16",
    ]);
    server.ok(&[
        "create",
        "serviceaccount",
        "switchyard-node",
        "-n",
        "kube-system",
    ]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "switchyard-node",
        "--clusterrole=switchyard:node-agent",
        "--serviceaccount=kube-system:switchyard-node",
    ]);
    let token = server.ok(&[
        "create",
        "token",
        "switchyard-node",
        "-n",
        "kube-system",
        "--duration=1h",
    ]);
    let admin = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let line = admin
        .lines()
        .find(|l| l.trim().starts_with("token: "))
        .unwrap();
    let sa_kubeconfig = server.dir.path().join("sa.kubeconfig");
    std::fs::write(
        &sa_kubeconfig,
        admin.replace(line, &format!("    token: {}", token.trim())),
    )
    .unwrap();
    // `RESOURCE/SUBRESOURCE` is asked with --subresource (kubectl reads a slash as a name).
    let as_sa = |verb: &str, what: &str| {
        let (what, sub) = what.split_once('/').unwrap_or((what, ""));
        let sub = format!("--subresource={sub}");
        let kc = sa_kubeconfig.to_str().unwrap();
        let mut args = vec!["--kubeconfig", kc, "auth", "can-i", verb, what, "-A"];
        if !sub.ends_with('=') {
            args.push(&sub);
        }
        let (_, out, _) = server.kubectl(&args);
        out.trim().to_string()
    };
    // Least privilege: what it needs, and nothing to change the cluster with.
    assert_eq!(as_sa("watch", "endpointslices.discovery.k8s.io"), "yes");
    assert_eq!(as_sa("patch", "ingresses/status"), "yes");
    assert_eq!(as_sa("patch", "ingresses"), "no");
    assert_eq!(as_sa("update", "services/status"), "no");
    assert_eq!(as_sa("create", "pods"), "no");
    assert_eq!(as_sa("delete", "services"), "no");
    assert_eq!(as_sa("create", "clusterrolebindings"), "no");

    let (http, metrics) = (free_port(), free_port());
    let node = Command::new(bin())
        .args(["node", "--kubeconfig"])
        .arg(&sa_kubeconfig)
        .args([
            "--node-name",
            "n1",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ])
        .args([
            "--ingress-http",
            &format!("127.0.0.1:{http}"),
            "--ingress-status-address",
            "192.0.2.9",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = KillOnDrop(node);
    serve_web(&server.client().await, "as-sa").await;
    // An Ingress of its class gets the agent's address in its status.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: switchyard, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}\nspec: {controller: switchyard.io/ingress-controller}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: site}\nspec:\n  rules: [{host: site.example, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}]}}]\n",
    );
    eventually_async(Duration::from_secs(20), || async {
        let (_, out, _) = server.kubectl(&[
            "get",
            "ingress",
            "site",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]);
        (out.trim() == "192.0.2.9").then_some(())
    })
    .await;
}
