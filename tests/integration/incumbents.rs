//! Real consumers of `switchyard server`, built by `bench/peers/build.sh`:
//! - kube-proxy (`k8s.io/kubernetes`), in iptables and nftables mode, with a token of a
//!   ServiceAccount bound to `system:node-proxier`, programs ClusterIPs and NodePorts that pods in
//!   network namespaces reach;
//! - CoreDNS (`github.com/coredns/coredns`) with its `kubernetes` plugin, with a token of a
//!   ServiceAccount bound to the role its deployment installs, answers the cluster zone exactly
//!   as the node agent's DNS does from the same API.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::cluster::{kubectl, ok, register_pod, start_server, web_service};
use crate::support::netns::Sandbox;
use crate::support::traffic::{answers, set};
use crate::support::{eventually, free_port, Up};

/// A process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the test command built peer `name`, if it did.
fn peer(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("SWITCHYARD_PEERS_BIN").ok()?).join(name);
    p.exists().then_some(p)
}

fn kube_proxy_serves_switchyard_server(mode: &str) {
    crate::need!(Iptables);
    let Some(kube_proxy) = peer("kube-proxy") else {
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

/// kubectl as the admin of `admin` (a kubeconfig); its output, which must be a success.
fn admin_ok(admin: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(admin).args(args);
    let (good, out, err) = crate::support::run_with_stdin(&mut cmd, stdin);
    assert!(good, "kubectl {args:?}: {err}");
    out
}

/// A kubeconfig for `account` in kube-system (a token from TokenRequest), next to `admin`.
fn service_account_kubeconfig(admin: &std::path::Path, account: &str) -> PathBuf {
    let token = admin_ok(
        admin,
        &["create", "token", account, "-n", "kube-system"],
        "",
    );
    let mut kc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    kc["users"][0]["user"] = serde_json::json!({"token": token.trim()});
    let path = admin.with_file_name(format!("{account}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// What a DNS server said to one question: the rcode and the answer section as sorted
/// (name, type, data) triples, TTLs left out.
fn said(port: u16, question: &[&str]) -> (String, Vec<(String, String, String)>) {
    let out = crate::dns::dig(port, question);
    let mut a = crate::dns::answers(&out);
    a.sort();
    (crate::dns::status(&out), a)
}

#[test]
fn real_coredns_answers_the_cluster_zone_as_switchyard_dns_does() {
    let Some(coredns) = peer("coredns") else {
        crate::support::skip(
            "CoreDNS is not built (scripts/test builds it with bench/peers/build.sh)",
        );
        return;
    };
    // Names outside the cluster are never asked; a closed port keeps any forward on loopback.
    let closed = free_port().to_string();
    let up = Up::start(
        &[
            "--dns-upstream",
            &format!("127.0.0.1:{closed}"),
            "--dns-pod-records",
        ],
        true,
    );
    let admin = up.kubeconfig();
    let dir = admin.parent().unwrap().to_path_buf();
    let apply = |yaml: &str| {
        admin_ok(&admin, &["apply", "-f", "-"], yaml);
    };
    // CoreDNS's identity: the ClusterRole its deployment installs (list and watch of
    // EndpointSlices, Services, Pods and Namespaces), and nothing more.
    apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: coredns, namespace: kube-system}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: system:coredns}\nrules:\n- {apiGroups: [\"\"], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}\n- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: system:coredns}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}\nsubjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]\n",
    );
    let kubeconfig = service_account_kubeconfig(&admin, "coredns");
    // A ClusterIP Service with a TCP and a UDP port, a headless one with hostnames and a not
    // ready endpoint, an ExternalName pointing into the cluster.
    apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports:\n  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec:\n  clusterIP: None\n  ports: [{name: sql, port: 5432}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: sql, port: 5432, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.0.5], hostname: db-0, conditions: {ready: true}}\n- {addresses: [10.244.0.6], conditions: {ready: true}}\n- {addresses: [10.244.0.7], hostname: db-2, conditions: {ready: false}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: default}\nspec: {type: ExternalName, externalName: web.default.svc.cluster.local}\n",
    );
    let ip = admin_ok(
        &admin,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
        "",
    );

    let port = free_port();
    let ready = free_port();
    let corefile = dir.join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:{port} {{\n  bind 127.0.0.1\n  errors\n  ready 127.0.0.1:{ready}\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n    kubeconfig {}\n    pods insecure\n  }}\n}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let log = dir.join("coredns.log");
    let _coredns = KillOnDrop(
        std::process::Command::new(&coredns)
            .arg("-conf")
            .arg(&corefile)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let tail = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    while said(port, &["web.default.svc.cluster.local", "A"])
        .1
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "CoreDNS never answered from switchyard's API; its log:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eventually(Duration::from_secs(20), || {
        (!said(up.dns, &["db.default.svc.cluster.local", "A"])
            .1
            .is_empty())
        .then_some(())
    });

    let ptr = format!(
        "{}.in-addr.arpa",
        ip.split('.').rev().collect::<Vec<_>>().join(".")
    );
    let questions: &[&[&str]] = &[
        &["web.default.svc.cluster.local", "A"],
        &["WeB.DeFault.svc.cluster.local", "A"],
        &["web.default.svc.cluster.local", "AAAA"],
        &["web.default.svc.cluster.local", "MX"],
        &["web.default.svc.cluster.local", "SRV"],
        &["_http._tcp.web.default.svc.cluster.local", "SRV"],
        &["_dns._udp.web.default.svc.cluster.local", "SRV"],
        &["_http._udp.web.default.svc.cluster.local", "SRV"],
        &[&ptr, "PTR"],
        &["db.default.svc.cluster.local", "A"],
        &["db-0.db.default.svc.cluster.local", "A"],
        &["db-2.db.default.svc.cluster.local", "A"],
        &["_sql._tcp.db.default.svc.cluster.local", "SRV"],
        &["5.0.244.10.in-addr.arpa", "PTR"],
        &["ext.default.svc.cluster.local", "A"],
        &["ext.default.svc.cluster.local", "CNAME"],
        &["nope.default.svc.cluster.local", "A"],
        &["web.nowhere.svc.cluster.local", "A"],
        &["x.web.default.svc.cluster.local", "A"],
        &["10-1-2-3.default.pod.cluster.local", "A"],
        &["dns-version.cluster.local", "TXT"],
    ];
    let differences = |questions: &[&[&str]]| -> Vec<String> {
        questions
            .iter()
            .filter_map(|q| {
                let (theirs, ours) = (said(port, q), said(up.dns, q));
                (theirs != ours).then(|| format!("{q:?}: CoreDNS {theirs:?}, switchyard {ours:?}"))
            })
            .collect()
    };
    let diff = differences(questions);
    assert!(diff.is_empty(), "the answers differ:\n{}", diff.join("\n"));
    // Both follow the API: a new Service and a new endpoint appear, a deleted Service goes.
    apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: default}\nspec:\n  ports: [{name: http, port: 8080}]\n",
    );
    admin_ok(
        &admin,
        &[
            "patch",
            "endpointslice",
            "db-1",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/endpoints/-","value":{"addresses":["10.244.0.8"],"hostname":"db-3","conditions":{"ready":true}}}]"#,
        ],
        "",
    );
    admin_ok(&admin, &["delete", "service", "ext"], "");
    let after: &[&[&str]] = &[
        &["late.default.svc.cluster.local", "A"],
        &["db.default.svc.cluster.local", "A"],
        &["db-3.db.default.svc.cluster.local", "A"],
        &["ext.default.svc.cluster.local", "A"],
    ];
    eventually(Duration::from_secs(20), || {
        let late = said(port, after[0]);
        let db3 = said(port, after[2]);
        let gone = said(port, after[3]);
        (late.1.len() == 1 && db3.1.len() == 1 && gone.0 == "NXDOMAIN").then_some(())
    });
    eventually(Duration::from_secs(20), || {
        differences(after).is_empty().then_some(())
    });
}
