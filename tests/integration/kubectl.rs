//! kubectl flows: apply (create, re-apply, multi-document, directory), get in its output formats,
//! label/annotate/patch, server-side apply, describe, delete, get --raw, get -w, and the
//! EndpointSlice controller and allocators as kubectl users see them.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, node_kubeconfig, Server};

/// A Service, a Pod and an Ingress as the Kubernetes documentation shows them.
const DOCS_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
";
const DOCS_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: nginx
  labels:
    app.kubernetes.io/name: MyApp
spec:
  containers:
  - name: nginx
    image: nginx:1.14.2
    ports:
    - containerPort: 80
";
const DOCS_INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  ingressClassName: nginx-example
  rules:
  - http:
      paths:
      - path: /testpath
        pathType: Prefix
        backend:
          service:
            name: test
            port:
              number: 80
";

#[test]
fn apply_directory_reapply_and_change() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        format!("{DOCS_SERVICE}---\n{DOCS_POD}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ingress.yaml"), DOCS_INGRESS).unwrap();
    let d = dir.path().to_str().unwrap();
    let out = s.ok(&["apply", "-f", d]);
    for want in [
        "service/my-service created",
        "pod/nginx created",
        "ingress.networking.k8s.io/minimal-ingress created",
    ] {
        assert!(out.contains(want), "{out}");
    }
    let out = s.ok(&["apply", "-f", d]);
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    let svc = s.json(&["get", "svc", "my-service"]);
    let rv = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10."));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9376);
    assert_eq!(svc["metadata"]["generation"], 1);

    std::fs::write(
        dir.path().join("app.yaml"),
        format!(
            "{}---\n{DOCS_POD}",
            DOCS_SERVICE.replace("port: 80", "port: 8080")
        ),
    )
    .unwrap();
    let out = s.ok(&["apply", "-f", d]);
    assert!(out.contains("service/my-service configured"), "{out}");
    let svc2 = s.json(&["get", "svc", "my-service"]);
    assert_eq!(
        svc2["spec"]["ports"].as_array().unwrap().len(),
        1,
        "the old port must be gone: {svc2}"
    );
    assert_eq!(svc2["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        svc2["spec"]["clusterIP"], svc["spec"]["clusterIP"],
        "ClusterIP kept across apply"
    );
    assert_eq!(svc2["metadata"]["generation"], 2);
    assert_ne!(svc2["metadata"]["resourceVersion"].as_str().unwrap(), rv);
    let ing = s.json(&["get", "ingress", "minimal-ingress"]);
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["pathType"],
        "Prefix"
    );
}

#[test]
fn get_output_formats_and_selectors() {
    let s = Server::start(&[]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &format!("{DOCS_SERVICE}---\n{DOCS_POD}"),
    );
    let table = s.ok(&["get", "svc"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(
        table.contains("my-service") && table.contains("80/TCP"),
        "{table}"
    );
    let wide = s.ok(&["get", "svc", "-o", "wide"]);
    assert!(
        wide.contains("SELECTOR") && wide.contains("app.kubernetes.io/name=MyApp"),
        "{wide}"
    );
    let yaml = s.ok(&["get", "svc", "my-service", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("clusterIP:"),
        "{yaml}"
    );
    s.ok(&["label", "pod", "nginx", "tier=front"]);
    let names = s.ok(&[
        "get",
        "pods",
        "-l",
        "tier in (front,back),app.kubernetes.io/name",
        "-o",
        "name",
    ]);
    assert_eq!(names.trim(), "pod/nginx");
    let none = s.ok(&["get", "pods", "-l", "tier!=front", "-o", "name"]);
    assert_eq!(none.trim(), "");
    let all = s.ok(&["get", "svc", "-A"]);
    assert!(
        all.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all}"
    );
    assert!(
        all.contains("kubernetes") && all.contains("my-service"),
        "{all}"
    );
    let raw: Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/services?limit=1",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "ServiceList");
    assert_eq!(raw["items"].as_array().unwrap().len(), 1);
    assert!(raw["metadata"]["continue"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let version: Value = serde_json::from_str(&s.ok(&["get", "--raw", "/version"])).unwrap();
    assert_eq!(version["major"], "1");
}

#[test]
fn label_annotate_and_every_patch_type() {
    let s = Server::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], DOCS_SERVICE);
    s.ok(&["label", "svc", "my-service", "tier=web"]);
    s.ok(&["annotate", "svc", "my-service", "owner=team-a"]);
    s.ok(&[
        "patch",
        "svc",
        "my-service",
        "--type=merge",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    s.ok(&[
        "patch",
        "svc",
        "my-service",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/env","value":"prod"}]"#,
    ]);
    // Strategic merge: ports merge by port number instead of replacing the list.
    s.ok(&["patch", "svc", "my-service", "-p", r#"{"spec":{"ports":[{"name":"extra","port":9000,"protocol":"TCP"},{"name":"main","port":80,"protocol":"TCP"}]}}"#]);
    let svc = s.json(&["get", "svc", "my-service"]);
    assert_eq!(svc["metadata"]["labels"]["tier"], "web");
    assert_eq!(svc["metadata"]["labels"]["env"], "prod");
    assert_eq!(svc["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(svc["spec"]["sessionAffinity"], "ClientIP");
    assert_eq!(
        svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports.contains(&80) && ports.contains(&9000));
    let kept = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 80)
        .unwrap();
    assert_eq!(
        kept["targetPort"], 9376,
        "strategic merge keeps the fields it does not name"
    );
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "svc",
        "my-service",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/type","value":"NodePort"}]"#,
    ]);
    assert!(!ok && err.contains("cannot be applied"), "{err}");
}

#[test]
fn server_side_apply_owns_and_prunes_fields() {
    let s = Server::start(&[]);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {a: \"1\"}\ndata:\n  x: \"1\"\n  y: \"2\"\n";
    let out = s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(out.contains("serverside-applied"), "{out}");
    // Another manager adds a key; the applier later drops one of its own.
    s.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"z":"3"}}"#,
    ]);
    s.ok_stdin(
        &["apply", "--server-side", "-f", "-"],
        &cm.replace("  y: \"2\"\n", ""),
    );
    let got = s.json(&["get", "cm", "settings", "--show-managed-fields"]);
    assert_eq!(got["data"], serde_json::json!({"x": "1", "z": "3"}));
    let managers: Vec<&str> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
}

#[test]
fn server_side_apply_conflicts_with_other_managers() {
    let s = Server::start(&[]);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n  owner: ssa\n";
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    // Another manager changes the field: it now owns it.
    s.ok(&[
        "patch",
        "cm",
        "shared",
        "--type=merge",
        "-p",
        r#"{"data":{"owner":"patched"}}"#,
    ]);
    let (ok, _, err) = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(
        !ok && err.contains("conflict with \"kubectl-patch\"") && err.contains(".data.owner"),
        "{err}"
    );
    assert_eq!(
        s.json(&["get", "cm", "shared"])["data"]["owner"],
        "patched",
        "a refused apply changes nothing"
    );
    s.ok_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        cm,
    );
    let got = s.json(&["get", "cm", "shared", "--show-managed-fields"]);
    assert_eq!(got["data"]["owner"], "ssa");
    let owners: Vec<&str> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(
        owners,
        ["kubectl"],
        "forcing takes the field from kubectl-patch"
    );
}

#[test]
fn describe_delete_and_watch() {
    let s = Server::start(&[]);
    let mut w = s
        .kubectl_cmd(&["get", "svc", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut wout = w.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = wout.read_to_string(&mut buf);
        buf
    });
    s.ok_stdin(&["apply", "-f", "-"], DOCS_SERVICE);
    s.ok(&["label", "svc", "my-service", "x=y"]);
    let d = s.ok(&["describe", "svc", "my-service"]);
    assert!(
        d.contains("Name:") && d.contains("my-service") && d.contains("TargetPort:"),
        "{d}"
    );
    let out = s.ok(&["delete", "svc", "my-service"]);
    assert!(out.contains("\"my-service\" deleted"), "{out}");
    let (ok, _, err) = s.kubectl(&["get", "svc", "my-service"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    w.kill().unwrap();
    w.wait().unwrap();
    let seen = reader.join().unwrap();
    for ev in ["ADDED", "MODIFIED", "DELETED"] {
        assert!(
            seen.lines()
                .any(|l| l.starts_with(ev) && l.contains("my-service")),
            "no {ev} in:\n{seen}"
        );
    }
}

#[test]
fn endpointslices_follow_pods() {
    let s = Server::start(&[]);
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n";
    s.ok_stdin(&["apply", "-f", "-"], svc);
    for (i, ready) in [(1, true), (2, true), (3, false)] {
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, labels: {{app: web}}}}\nspec:\n  nodeName: node-a\n  containers: [{{name: c, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]\n");
        s.ok_stdin(&["apply", "-f", "-"], &pod);
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"10.244.0.{i}","podIPs":[{{"ip":"10.244.0.{i}"}}],"conditions":[{{"type":"Ready","status":"{}"}}]}}}}"#,
            if ready { "True" } else { "False" }
        );
        s.ok(&[
            "patch",
            "pod",
            &format!("web-{i}"),
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
    let slices = eventually(Duration::from_secs(10), || {
        let l = s.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        let eps = l["items"][0]["endpoints"].as_array().map_or(0, Vec::len);
        (eps == 3).then_some(l)
    });
    let slice = &slices["items"][0];
    assert_eq!(slices["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        slice["ports"][0]["port"], 8080,
        "named targetPort resolved against the container port"
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    let ready = |addr: &str| {
        slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["addresses"][0] == addr)
            .unwrap()["conditions"]["ready"]
            .clone()
    };
    assert_eq!(ready("10.244.0.1"), true);
    assert_eq!(ready("10.244.0.3"), false);
    assert_eq!(slice["endpoints"][0]["nodeName"], "node-a");
    // Deleting a pod (no grace period) takes its endpoint away.
    s.ok(&["delete", "pod", "web-2", "--grace-period=0", "--force"]);
    eventually(Duration::from_secs(10), || {
        let l = s.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        let addrs: Vec<String> = l["items"][0]["endpoints"]
            .as_array()?
            .iter()
            .map(|e| e["addresses"][0].as_str().unwrap().to_string())
            .collect();
        (!addrs.contains(&"10.244.0.2".to_string()) && addrs.len() == 2).then_some(())
    });
    // Deleting the Service takes its slices away.
    s.ok(&["delete", "svc", "web"]);
    eventually(Duration::from_secs(10), || {
        s.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ])["items"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
}

#[test]
fn allocation_rules() {
    let s = Server::start(&[
        "--service-cidr",
        "10.100.0.0/24",
        "--node-port-range",
        "30000-30010",
    ]);
    let np = "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30005}]\n";
    s.ok_stdin(&["apply", "-f", "-"], np);
    let svc = s.json(&["get", "svc", "np"]);
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10.100.0."));
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30005);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], &np.replace("name: np", "name: np2"));
    assert!(
        !ok && err.contains("provided port is already allocated"),
        "{err}"
    );
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "-f", "-"],
        &np.replace("name: np", "name: np3")
            .replace("30005", "31000"),
    );
    assert!(!ok && err.contains("valid range"), "{err}");
    let fixed = "apiVersion: v1\nkind: Service\nmetadata: {name: fixed}\nspec:\n  clusterIP: 10.100.0.50\n  ports: [{port: 80}]\n";
    s.ok_stdin(&["apply", "-f", "-"], fixed);
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "-f", "-"],
        &fixed.replace("name: fixed", "name: fixed2"),
    );
    assert!(
        !ok && err.contains("provided IP is already allocated"),
        "{err}"
    );
    let (ok, _, err) = s.kubectl_stdin(
        &["apply", "-f", "-"],
        &fixed
            .replace("name: fixed", "name: outside")
            .replace("10.100.0.50", "10.200.0.1"),
    );
    assert!(!ok && err.contains("valid range"), "{err}");
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "svc",
        "fixed",
        "-p",
        r#"{"spec":{"clusterIP":"10.100.0.51","clusterIPs":["10.100.0.51"]}}"#,
    ]);
    assert!(!ok && err.contains("may not change once set"), "{err}");
    // Deleting frees the address and the port for reuse.
    s.ok(&["delete", "svc", "fixed", "np"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &fixed.replace("name: fixed", "name: fixed2"),
    );
    s.ok_stdin(&["apply", "-f", "-"], &np.replace("name: np", "name: np2"));
    let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec:\n  clusterIP: None\n  selector: {app: db}\n";
    s.ok_stdin(&["apply", "-f", "-"], headless);
    assert_eq!(
        s.json(&["get", "svc", "h"])["spec"]["clusterIPs"],
        serde_json::json!(["None"])
    );
    let ext = "apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec:\n  type: ExternalName\n  externalName: db.example.com\n";
    s.ok_stdin(&["apply", "-f", "-"], ext);
    assert!(s.json(&["get", "svc", "e"])["spec"]
        .get("clusterIP")
        .is_none());
}

#[test]
fn finalizers_and_namespace_lifecycle() {
    let s = Server::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\ndata: {a: b}\n");
    s.ok(&["delete", "cm", "held", "--wait=false"]);
    let cm = s.json(&["get", "cm", "held"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "{cm}");
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/more"}]"#,
    ]);
    assert!(!ok && err.contains("no new finalizers"), "{err}");
    s.ok(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let (ok, _, err) = s.kubectl(&["get", "cm", "held"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    let (ok, _, err) = s.kubectl_stdin(&["apply", "-n", "nowhere", "-f", "-"], DOCS_SERVICE);
    assert!(
        !ok && err.contains("namespaces \"nowhere\" not found"),
        "{err}"
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
    );
    s.ok_stdin(&["apply", "-n", "team", "-f", "-"], DOCS_SERVICE);
    s.ok(&["delete", "namespace", "team", "--timeout=20s"]);
    let (ok, _, _) = s.kubectl(&["get", "ns", "team"]);
    assert!(!ok, "namespace still there");
    let (ok, out, _) = s.kubectl(&["get", "svc", "-A", "-o", "name"]);
    assert!(ok && !out.contains("my-service"), "{out}");
    let (ok, _, err) = s.kubectl(&["delete", "ns", "default"]);
    assert!(!ok && err.contains("may not be deleted"), "{err}");
}

#[test]
fn a_node_credential_is_held_to_the_node_rules() {
    let s = Server::start(&[]);
    let kc = node_kubeconfig(s.dir.path(), "node-a");
    let kc = kc.to_str().unwrap();
    let as_node = |args: &[&str]| {
        let mut a = vec!["--kubeconfig", kc];
        a.extend(args);
        s.kubectl(&a)
    };
    let as_node_stdin = |args: &[&str], stdin: &str| {
        let mut a = vec!["--kubeconfig", kc];
        a.extend(args);
        s.kubectl_stdin(&a, stdin)
    };
    let (ok, out, _) = as_node(&["auth", "whoami", "-o", "json"]);
    assert!(
        ok && out.contains("system:node:node-a") && out.contains("system:nodes"),
        "{out}"
    );
    // Reads what an agent needs; writes no Service, no Service status.
    let (ok, out, _) = as_node(&["get", "svc"]);
    assert!(ok && out.contains("kubernetes"), "{out}");
    let (ok, _, err) = as_node(&["delete", "svc", "kubernetes"]);
    assert!(
        !ok && err.contains(r#"User "system:node:node-a" cannot delete resource "services" in API group "" in the namespace "default""#),
        "{err}"
    );
    let (ok, _, err) = as_node_stdin(&["apply", "-f", "-"], DOCS_SERVICE);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let status = r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.66"}]}}}"#;
    let (ok, _, err) = as_node(&[
        "patch",
        "svc",
        "kubernetes",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    // Its own Node and Lease; not another node's.
    let node = |n: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\nstatus:\n  conditions: [{{type: Ready, status: \"True\"}}]\n")
    };
    let (ok, _, err) = as_node_stdin(&["apply", "--server-side", "-f", "-"], &node("node-a"));
    assert!(ok, "{err}");
    let (ok, _, err) = as_node_stdin(&["apply", "--server-side", "-f", "-"], &node("node-b"));
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let lease = |n: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {n}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {n}, leaseDurationSeconds: 40}}\n")
    };
    let (ok, _, err) = as_node_stdin(&["apply", "--server-side", "-f", "-"], &lease("node-a"));
    assert!(ok, "{err}");
    let (ok, _, err) = as_node_stdin(&["apply", "--server-side", "-f", "-"], &lease("node-b"));
    assert!(!ok && err.contains("Forbidden"), "{err}");
    s.ok_stdin(&["apply", "-f", "-"], &node("node-b"));
    let (ok, _, err) = as_node(&["delete", "node", "node-b"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let (ok, _, err) = as_node(&["label", "node", "node-b", "x=y"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    // Secrets and ConfigMaps only through a Pod bound to it; Pod status only of its own Pods.
    s.ok(&["create", "secret", "generic", "mine", "--from-literal=a=1"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "theirs",
        "--from-literal=a=1",
    ]);
    s.ok(&["create", "configmap", "cfg", "--from-literal=a=1"]);
    let pod = |name: &str, node: &str, secret: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: i, envFrom: [{{configMapRef: {{name: cfg}}}}]}}]\n  volumes: [{{name: s, secret: {{secretName: {secret}}}}}]\n")
    };
    s.ok_stdin(&["apply", "-f", "-"], &pod("here", "node-a", "mine"));
    s.ok_stdin(&["apply", "-f", "-"], &pod("there", "node-b", "theirs"));
    eventually(Duration::from_secs(10), || {
        as_node(&["get", "secret", "mine"]).0.then_some(())
    });
    assert!(as_node(&["get", "configmap", "cfg"]).0);
    let (ok, _, err) = as_node(&["get", "secret", "theirs"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let (ok, _, err) = as_node(&["get", "secrets"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let ready = r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#;
    let (ok, _, err) = as_node(&[
        "patch",
        "pod",
        "here",
        "--subresource=status",
        "--type=merge",
        "-p",
        ready,
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_node(&[
        "patch",
        "pod",
        "there",
        "--subresource=status",
        "--type=merge",
        "-p",
        ready,
    ]);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    // A credential nobody issued.
    let (ok, _, err) = s.kubectl(&["--token", "not-a-token", "get", "svc"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
}

#[test]
fn service_accounts_rbac_and_no_escalation() {
    let s = Server::start(&[]);
    s.ok(&["create", "namespace", "a"]);
    s.ok(&["create", "namespace", "b"]);
    // Every namespace gets its default ServiceAccount.
    eventually(Duration::from_secs(5), || {
        s.kubectl(&["get", "sa", "default", "-n", "b"])
            .0
            .then_some(())
    });
    s.ok(&["create", "serviceaccount", "app", "-n", "a"]);
    s.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "a",
        "--verb=get,list,watch",
        "--resource=services",
    ]);
    s.ok(&[
        "create",
        "role",
        "role-maker",
        "-n",
        "a",
        "--verb=create,get",
        "--resource=roles,rolebindings",
    ]);
    for role in ["reader", "role-maker"] {
        s.ok(&[
            "create",
            "rolebinding",
            role,
            "-n",
            "a",
            &format!("--role={role}"),
            "--serviceaccount=a:app",
        ]);
    }
    s.ok(&[
        "create",
        "rolebinding",
        "devs-read",
        "-n",
        "b",
        "--role=reader",
        "--group=devs",
    ]);
    s.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "b",
        "--verb=list",
        "--resource=services",
    ]);
    let token = s.ok(&["create", "token", "app", "-n", "a", "--duration=10m"]);
    let token = token.trim();
    let as_app = |args: &[&str]| {
        let mut a = vec!["--token", token];
        a.extend(args);
        s.kubectl(&a)
    };
    // Who it is.
    let (ok, out, err) = as_app(&["auth", "whoami"]);
    assert!(ok, "{err}");
    for want in [
        "system:serviceaccount:a:app",
        "system:serviceaccounts",
        "system:serviceaccounts:a",
        "system:authenticated",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    // The can-i matrix, for itself and, impersonated, by the admin.
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend(args);
        let (_, out, _) = s.kubectl(&a);
        out.trim().to_string()
    };
    let can_app = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend(args);
        let (_, out, _) = as_app(&a);
        out.trim().to_string()
    };
    assert_eq!(can_app(&["list", "services", "-n", "a"]), "yes");
    assert_eq!(can_app(&["get", "services/web", "-n", "a"]), "yes");
    assert_eq!(can_app(&["list", "services", "-n", "b"]), "no");
    assert_eq!(can_app(&["create", "services", "-n", "a"]), "no");
    assert_eq!(can_app(&["list", "secrets", "-n", "a"]), "no");
    assert_eq!(can_app(&["create", "roles", "-n", "a"]), "yes");
    let sa = "--as=system:serviceaccount:a:app";
    assert_eq!(can(&["list", "services", "-n", "a", sa]), "yes");
    assert_eq!(can(&["list", "services", "-n", "b", sa]), "no");
    assert_eq!(
        can(&["list", "services", "-n", "b", "--as=bob", "--as-group=devs"]),
        "yes"
    );
    assert_eq!(
        can(&["get", "services", "-n", "b", "--as=bob", "--as-group=devs"]),
        "no"
    );
    assert_eq!(can(&["list", "services", "-n", "b", "--as=bob"]), "no");
    assert_eq!(can(&["delete", "nodes", "--as=bob"]), "no");
    assert_eq!(can(&["delete", "nodes"]), "yes");
    // Requests: allowed, and 403 with kube-apiserver's message.
    assert!(as_app(&["get", "svc", "-n", "a"]).0);
    let (ok, _, err) = as_app(&["get", "svc", "-n", "b"]);
    assert!(
        !ok && err.contains(r#"User "system:serviceaccount:a:app" cannot list resource "services" in API group "" in the namespace "b""#),
        "{err}"
    );
    // Only the admin impersonates.
    let (ok, _, err) = as_app(&["get", "svc", "-n", "a", "--as=system:admin"]);
    assert!(!ok && err.contains("impersonate"), "{err}");
    // Nobody grants what they do not hold.
    let (ok, _, err) = as_app(&[
        "create",
        "role",
        "more",
        "-n",
        "a",
        "--verb=get",
        "--resource=secrets",
    ]);
    assert!(!ok && err.contains("not currently held"), "{err}");
    assert!(
        as_app(&[
            "create",
            "role",
            "same",
            "-n",
            "a",
            "--verb=get",
            "--resource=services"
        ])
        .0
    );
    let (ok, _, err) = as_app(&[
        "create",
        "rolebinding",
        "root",
        "-n",
        "a",
        "--clusterrole=cluster-admin",
        "--serviceaccount=a:app",
    ]);
    assert!(!ok && err.contains("not currently held"), "{err}");
    assert!(!s.kubectl(&["get", "rolebinding", "root", "-n", "a"]).0);
    // Aggregation: a ClusterRole labelled for `view` adds to it.
    s.ok(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        "a",
        "--clusterrole=view",
        "--user=carol",
    ]);
    assert_eq!(can(&["get", "secrets", "-n", "a", "--as=carol"]), "no");
    s.ok(&[
        "create",
        "clusterrole",
        "secret-viewer",
        "--verb=get",
        "--resource=secrets",
    ]);
    s.ok(&[
        "label",
        "clusterrole",
        "secret-viewer",
        "rbac.authorization.k8s.io/aggregate-to-view=true",
    ]);
    eventually(Duration::from_secs(5), || {
        (can(&["get", "secrets", "-n", "a", "--as=carol"]) == "yes").then_some(())
    });
    // And `view` shows the rules it aggregated.
    eventually(Duration::from_secs(5), || {
        let rules = s.ok(&[
            "get",
            "clusterrole",
            "view",
            "-o",
            "jsonpath={.rules[*].resources}",
        ]);
        (rules.contains("secrets") && rules.contains("endpointslices")).then_some(())
    });
    // Bad input: invalid rules, unknown accounts, malformed tokens change nothing.
    let bad_role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad, namespace: a}\nrules: [{apiGroups: [\"\"], resources: [pods]}]\n";
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], bad_role);
    assert!(!ok && err.contains("verbs"), "{err}");
    assert!(!s.kubectl(&["get", "role", "bad", "-n", "a"]).0);
    let (ok, _, err) = s.kubectl(&["create", "token", "nobody", "-n", "a"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = s.kubectl(&["create", "token", "app", "-n", "a", "--duration=1m"]);
    assert!(!ok && err.contains("10 minutes"), "{err}");
    for junk in [
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "abcdef.0123456789abcdef",
        &format!("{token}x"),
    ] {
        let (ok, _, err) = s.kubectl(&["--token", junk, "get", "svc", "-n", "a"]);
        assert!(!ok && err.contains("Unauthorized"), "{err}");
    }
    // A deleted ServiceAccount's tokens stop working.
    s.ok(&["delete", "serviceaccount", "app", "-n", "a"]);
    eventually(Duration::from_secs(5), || {
        let (ok, _, err) = as_app(&["get", "svc", "-n", "a"]);
        (!ok && err.contains("Unauthorized")).then_some(())
    });
}

/// kubectl's generators build objects themselves and send them as Kubernetes protobuf.
#[test]
fn kubectl_create_generators() {
    let s = Server::start(&[]);
    s.ok(&["create", "namespace", "demo"]);
    s.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
        "-n",
        "demo",
    ]);
    s.ok(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=81:8081",
        "--node-port=30081",
    ]);
    s.ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name",
        "db.example.com",
    ]);
    s.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cr3t",
    ]);
    s.ok(&[
        "create",
        "ingress",
        "ing",
        "--class=switchyard",
        "--rule=foo.example.com/api*=web:8080,tls=foo-tls",
    ]);
    s.ok(&[
        "run",
        "pod1",
        "--image=nginx:1.27",
        "--port=80",
        "--labels=app=pod1",
    ]);

    let web = s.json(&["get", "svc", "web", "-n", "demo"]);
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(web["spec"]["selector"]["app"], "web");
    assert!(web["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10."));
    assert_eq!(
        s.json(&["get", "svc", "np"])["spec"]["ports"][0]["nodePort"],
        30081
    );
    assert_eq!(
        s.json(&["get", "svc", "ext"])["spec"]["externalName"],
        "db.example.com"
    );
    assert_eq!(
        s.json(&["get", "cm", "cfg"])["data"],
        serde_json::json!({"a": "1", "b": "2"})
    );
    let pw = s.json(&["get", "secret", "pw"]);
    assert_eq!(pw["data"]["password"], base64_of("s3cr3t"));
    assert_eq!(pw["type"], "Opaque");
    let ing = s.json(&["get", "ingress", "ing"]);
    let path = &ing["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(ing["spec"]["rules"][0]["host"], "foo.example.com");
    assert_eq!(
        (path["path"].as_str(), path["pathType"].as_str()),
        (Some("/api"), Some("Prefix"))
    );
    assert_eq!(path["backend"]["service"]["port"]["number"], 8080);
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "foo-tls");
    let pod = s.json(&["get", "pod", "pod1"]);
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    // Validation applies to protobuf bodies as to JSON ones.
    let (ok, _, err) = s.kubectl(&["create", "service", "clusterip", "Bad_Name", "--tcp=80"]);
    assert!(!ok && err.contains("Invalid"), "{err}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Server-side apply keys ports by port and protocol, as the Kubernetes types declare them: a
/// Service with 53/UDP and 53/TCP (every cluster DNS Service) applies again and again, and an
/// apply that drops one port removes just that one.
#[test]
fn server_side_apply_keys_ports_by_port_and_protocol() {
    let s = Server::start(&[]);
    let both = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]\n";
    for _ in 0..2 {
        s.ok_stdin(&["apply", "--server-side", "-f", "-"], both);
    }
    let ports = s.jsonpath("svc", "dns", "{.spec.ports[*].protocol}");
    assert_eq!(ports, "UDP TCP");
    let keys = s.jsonpath(
        "svc",
        "dns",
        "{.metadata.managedFields[0].fieldsV1.f:spec.f:ports}",
    );
    assert!(
        keys.contains("port") && keys.contains("protocol") && keys.contains("UDP"),
        "managed fields key ports by port and protocol: {keys}"
    );
    let udp_only = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  ports: [{name: dns, port: 53, protocol: UDP}]\n";
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], udp_only);
    let ports = s.jsonpath("svc", "dns", "{.spec.ports[*].protocol}");
    assert_eq!(ports, "UDP");
    // A strategic merge patch still matches ports by port alone, as kube's patchMergeKey.
    s.ok(&[
        "patch",
        "svc",
        "dns",
        "-p",
        r#"{"spec":{"ports":[{"port":53,"name":"renamed"}]}}"#,
    ]);
    let names = s.jsonpath("svc", "dns", "{.spec.ports[*].name}");
    assert_eq!(names, "renamed");
}

/// `kubectl create` then `kubectl apply --server-side` of the same values: no conflict, and the
/// applier co-owns the fields (a second apply changes nothing).
#[test]
fn apply_after_create_co_owns_without_conflict() {
    let s = Server::start(&[]);
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, labels: {a: b}}\ndata: {x: \"1\"}\n";
    s.ok_stdin(&["create", "-f", "-"], cm);
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    let managers = s.jsonpath("cm", "c", "{.metadata.managedFields[*].manager}");
    assert_eq!(managers, "kubectl-create kubectl");
    let rv = s.jsonpath("cm", "c", "{.metadata.resourceVersion}");
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    let again = s.jsonpath("cm", "c", "{.metadata.resourceVersion}");
    assert_eq!(rv, again, "a repeated apply is not a write");
}
