//! The ingress router end to end: `switchyard up`, Ingresses applied through the API, real
//! clients (curl for HTTP/1.1, HTTP/2 and TLS; hyper; tokio-tungstenite for WebSocket) and
//! backends in the test process on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{eventually, eventually_async, Up};

/// An HTTP backend (HTTP/1.1 and h2c) that answers with what it saw, as JSON. `/slow` waits
/// three seconds first.
pub(crate) async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        if req.uri().path().starts_with("/slow") {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let body = serde_json::json!({
                            "backend": name,
                            "path": req.uri().path(),
                            "version": format!("{:?}", req.version()),
                            "host": req.uri().authority().map(|a| a.to_string()).unwrap_or_else(|| h("host")),
                            "xff": h("x-forwarded-for"),
                            "xfp": h("x-forwarded-proto"),
                            "xfh": h("x-forwarded-host"),
                            "xfport": h("x-forwarded-port"),
                            "rid": h("x-request-id"),
                            "secret": h("x-hop"),
                            "fwd": h("forwarded"),
                            "xri": h("x-real-ip"),
                            "upgrade": h("upgrade"),
                            "method": req.method().as_str(),
                            "query": req.uri().query().unwrap_or(""),
                            "headers": all_headers(req.headers()),
                        });
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            body.to_string(),
                        ))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Every header a request carried, repeated ones joined with `,`.
fn all_headers(h: &http::HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = Default::default();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes());
        out.entry(k.as_str().to_string())
            .and_modify(|s| {
                s.push(',');
                s.push_str(&v)
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// A WebSocket echo server.
pub(crate) async fn ws_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn service(name: &str, app_protocol: Option<&str>) -> Service {
    let mut port = serde_json::json!({"name": "http", "port": 80});
    if let Some(p) = app_protocol {
        port["appProtocol"] = p.into();
    }
    serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "spec": {"ports": [port]}}),
    )
    .unwrap()
}

fn slice(service: &str, backends: &[SocketAddr]) -> EndpointSlice {
    let port = backends.first().map_or(1, |b| b.port());
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": backends.iter().map(|b| serde_json::json!({"addresses": [b.ip().to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// A Service whose endpoints all listen on one port of distinct loopback addresses is not
/// possible here (backends share 127.0.0.1), so each Service gets one backend and one slice.
pub(crate) async fn expose(
    client: &kube::Client,
    name: &str,
    backend: Option<SocketAddr>,
    app: Option<&str>,
) {
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service(name, app))
        .await
        .unwrap();
    let eps: Vec<SocketAddr> = backend.into_iter().collect();
    slices
        .create(&PostParams::default(), &slice(name, &eps))
        .await
        .unwrap();
}

pub(crate) async fn apply_ingress(client: &kube::Client, v: serde_json::Value) {
    let api: Api<Ingress> = Api::namespaced(client.clone(), "default");
    let ing: Ingress = serde_json::from_value(v).unwrap();
    let name = ing.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&ing),
    )
    .await
    .unwrap();
}

/// The addresses an Ingress's status lists.
pub(crate) fn lb_ips(i: Ingress) -> Vec<String> {
    i.status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

pub(crate) fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
    serde_json::json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

/// `curl` with `args`; returns (HTTP status, body, headers).
pub(crate) fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).to_lowercase(),
    )
}

pub(crate) fn get(up: &Up, host: &str, path: &str) -> (u16, String, String) {
    curl(&[
        "-H",
        &format!("Host: {host}"),
        &format!("http://127.0.0.1:{}{path}", up.http),
    ])
}

/// Which backend answered, or the status when it was not a 200.
pub(crate) fn who(up: &Up, host: &str, path: &str) -> String {
    let (code, body, _) = get(up, host, path);
    if code != 200 {
        return code.to_string();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["backend"].as_str().unwrap_or("?").to_string()
}

pub(crate) async fn wait_for(up: &Up, host: &str, path: &str, want: &str) {
    let (host, path, want) = (host.to_string(), path.to_string(), want.to_string());
    eventually_async(Duration::from_secs(20), || {
        let got = who(up, &host, &path);
        let ok = got == want;
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_hosts_paths_backends_and_errors() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let h2 = backend("h2").await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    expose(&client, "a", Some(a), None).await;
    expose(&client, "b", Some(b), None).await;
    expose(&client, "c", Some(c), None).await;
    expose(&client, "h2", Some(h2), Some("kubernetes.io/h2c")).await;
    expose(&client, "empty", None, None).await;
    expose(&client, "refused", Some(refused), None).await;
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "main", "annotations": {"switchyard.io/response-timeout": "1s"}},
        "spec": {"rules": [
            {"host": "shop.example", "http": {"paths": [
                path("/foo", "Exact", "a"), path("/foo", "Prefix", "b"), path("/", "Prefix", "c"),
                path("/empty", "Prefix", "empty"), path("/refused", "Prefix", "refused"),
                path("/slow", "Prefix", "a"), path("/h2", "Prefix", "h2")]}},
            {"host": "*.wild.example", "http": {"paths": [path("/", "Prefix", "a")]}},
        ]},
    }))
    .await;
    // An Ingress of another controller's class is not ours.
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "foreign"},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "foreign.example", "http": {"paths": [path("/", "Prefix", "a")]}}]},
    }))
    .await;
    wait_for(&up, "shop.example", "/foo", "a").await;
    // Exact beats Prefix on the same path; Prefix is element-wise; the host ignores case and
    // port.
    assert_eq!(who(&up, "shop.example", "/foo/"), "b");
    assert_eq!(who(&up, "SHOP.example:8080", "/foo/bar"), "b");
    assert_eq!(who(&up, "shop.example", "/foobar"), "c");
    assert_eq!(who(&up, "x.wild.example", "/any"), "a");
    assert_eq!(
        who(&up, "y.x.wild.example", "/any"),
        "404",
        "a wildcard matches one label"
    );
    assert_eq!(who(&up, "wild.example", "/"), "404");
    assert_eq!(who(&up, "foreign.example", "/"), "404");

    // Headers: Host preserved, X-Forwarded-* set by the router (not taken from the client),
    // a client's request id kept, hop-by-hop headers dropped.
    let (code, body, headers) = curl(&[
        "-H",
        "Host: shop.example",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Request-Id: req-42",
        "-H",
        "Connection: x-hop",
        "-H",
        "X-Hop: secret",
        &format!("http://127.0.0.1:{}/foo", up.http),
    ]);
    assert_eq!(code, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["xff"], "127.0.0.1");
    assert_eq!(seen["xfp"], "http");
    assert_eq!(seen["xfh"], "shop.example");
    assert_eq!(seen["xfport"], up.http.to_string());
    assert_eq!(seen["rid"], "req-42");
    assert_eq!(
        seen["secret"], "",
        "a header named in Connection is hop-by-hop"
    );
    assert!(headers.contains("x-request-id: req-42"), "{headers}");
    let (_, body, _) = get(&up, "shop.example", "/foo");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rid = seen["rid"].as_str().unwrap().to_string();
    assert_eq!(rid.len(), 32, "a request id is generated");
    assert!(rid
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let (_, body, _) = get(&up, "shop.example", "/foo");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(again["rid"].as_str(), Some(rid.as_str()), "one per request");

    // h2c upstream when the Service port's appProtocol says so.
    let (code, body, _) = get(&up, "shop.example", "/h2");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\":\"HTTP/2.0\""), "{body}");

    // 503 without endpoints, 502 when the upstream refuses, 504 when it is too slow; each
    // body says which.
    let (code, body, _) = get(&up, "shop.example", "/empty");
    assert_eq!(
        (code, body.contains("no ready endpoint")),
        (503, true),
        "{body}"
    );
    let (code, body, _) = get(&up, "shop.example", "/refused");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("accepted a connection"), "{body}");
    let (code, body, _) = get(&up, "shop.example", "/slow");
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert_eq!(who(&up, "nohost.example", "/"), "404");

    // A defaultBackend catches what no rule matches.
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "fallback"},
            "spec": {"defaultBackend": {"service": {"name": "c", "port": {"number": 80}}}},
        }),
    )
    .await;
    wait_for(&up, "nohost.example", "/", "c").await;

    // Our Ingresses get the node's address in their status; the foreign one is left alone.
    let api: Api<Ingress> = Api::namespaced(client.clone(), "default");
    eventually_async(Duration::from_secs(20), || async {
        let ips = lb_ips(api.get("main").await.ok()?);
        (ips == ["127.0.0.1"]).then_some(())
    })
    .await;
    assert!(lb_ips(api.get("foreign").await.unwrap()).is_empty());

    // A bad annotation value is refused by the API with a clear error.
    let bad: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bad", "annotations": {"switchyard.io/connect-timeout": "soon"}},
        "spec": {"defaultBackend": {"service": {"name": "c", "port": {"number": 80}}}},
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        err.to_string().contains("switchyard.io/connect-timeout"),
        "{err}"
    );

    // Metrics per ingress, service and status.
    let (_, metrics, _) = curl(&[&format!("http://127.0.0.1:{}/metrics", up.metrics)]);
    assert!(
        metrics.contains("switchyard_ingress_requests_total{namespace=\"default\",ingress=\"main\",service=\"empty:http\",status=\"503\"} 1"),
        "{metrics}"
    );
}

/// A self-signed certificate for `host`, as (cert PEM, key PEM).
pub(crate) fn cert(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn tls_secret(name: &str, (crt, key): &(String, String)) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": crt, "tls.key": key},
    }))
    .unwrap()
}

/// curl over TLS to `host`, trusting only `ca`; returns (status, HTTP version, body).
fn tls_get(up: &Up, host: &str, ca: &str, extra: &[&str]) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", up.https)])
        .arg("--cacert")
        .arg(&ca_file)
        .args(extra)
        .arg(format!("https://{host}:{}/", up.https))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, version) = s.split_once(' ').unwrap_or(("0", ""));
    (code.parse().unwrap_or(0), version.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_by_sni_with_rotation_http2_and_redirect() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    expose(&client, "a", Some(backend("a").await), None).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let (one, two) = (cert("one.example"), cert("two.example"));
    secrets
        .create(&PostParams::default(), &tls_secret("one", &one))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &tls_secret("two", &two))
        .await
        .unwrap();
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "tls"},
        "spec": {
            "tls": [{"hosts": ["one.example"], "secretName": "one"}, {"hosts": ["two.example"], "secretName": "two"}],
            "rules": [
                {"host": "one.example", "http": {"paths": [path("/", "Prefix", "a")]}},
                {"host": "two.example", "http": {"paths": [path("/", "Prefix", "a")]}},
            ]},
    }))
    .await;
    eventually_async(Duration::from_secs(20), || async {
        (tls_get(&up, "one.example", &one.0, &[]).0 == 200).then_some(())
    })
    .await;
    // Each name gets its own certificate: the other's does not verify.
    assert_eq!(tls_get(&up, "two.example", &two.0, &[]).0, 200);
    assert_eq!(tls_get(&up, "two.example", &one.0, &[]).0, 0);
    // HTTP/2 through ALPN, HTTP/1.1 when asked.
    assert_eq!(
        tls_get(&up, "one.example", &one.0, &["--http2"]),
        (200, "2".into())
    );
    assert_eq!(
        tls_get(&up, "one.example", &one.0, &["--http1.1"]),
        (200, "1.1".into())
    );
    // A name without a certificate gets the default one, which no client trusts.
    assert_eq!(tls_get(&up, "three.example", &one.0, &[]).0, 0);
    let (code, _) = tls_get(&up, "three.example", "", &["-k"]);
    assert_eq!(code, 404);
    // Plain HTTP to a TLS host is redirected.
    let (code, _, headers) = get(&up, "one.example", "/x?y=1");
    assert_eq!(code, 308);
    assert!(
        headers.contains(&format!("location: https://one.example:{}/x?y=1", up.https)),
        "{headers}"
    );

    // Rotation: the Secret changes, the served certificate follows without a restart.
    let rotated = cert("one.example");
    let patch = serde_json::json!({"stringData": {"tls.crt": rotated.0, "tls.key": rotated.1}});
    secrets
        .patch("one", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually_async(Duration::from_secs(20), || async {
        (tls_get(&up, "one.example", &rotated.0, &[]).0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        tls_get(&up, "one.example", &one.0, &[]).0,
        0,
        "the old certificate is gone"
    );
}

/// One request over a kept-alive hyper connection; Ok(status).
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> Result<u16, String> {
    let req = http::Request::get("/load")
        .header("host", "load.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_fail_no_request_and_keep_websockets() {
    let up = Up::start(&["--ingress-access-log", "false"], false);
    let client = up.client().await;
    let (a, b) = (backend("a").await, backend("b").await);
    expose(&client, "a", Some(a), None).await;
    expose(&client, "b", Some(b), None).await;
    expose(&client, "ws", Some(ws_backend().await), None).await;
    let rules = |extra: Vec<serde_json::Value>| {
        let mut paths = vec![path("/load", "Prefix", "a"), path("/ws", "Prefix", "ws")];
        paths.extend(extra);
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "live"},
            "spec": {"rules": [{"host": "load.example", "http": {"paths": paths}}]},
        })
    };
    apply_ingress(&client, rules(vec![])).await;
    wait_for(&up, "load.example", "/load", "a").await;

    // A WebSocket through the router.
    let tcp = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://load.example:{}/ws", up.http), tcp)
            .await
            .expect("websocket handshake through the router");
    assert_eq!(resp.status(), 101);
    ws.send("before".into()).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "before"
    );

    // Constant load from 8 kept-alive connections while the configuration changes.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, port) = (stop.clone(), ok.clone(), up.http);
        workers.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            // The first failure ends the worker: a closed connection fails every later request
            // at once, and collecting those would only grow.
            while !stop.load(Ordering::Relaxed) {
                match send(&mut sender).await {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return Some(format!("{other:?}")),
                }
            }
            None
        }));
    }
    // Change the rules, move the load to another Service and back, and add endpoints.
    for i in 0..6 {
        let svc = if i % 2 == 0 { "b" } else { "a" };
        let mut doc = rules(vec![path(&format!("/extra{i}"), "Prefix", "b")]);
        doc["spec"]["rules"][0]["http"]["paths"][0] = path("/load", "Prefix", svc);
        apply_ingress(&client, doc).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let c = backend("c").await;
    let mut s = slice("a", &[c]);
    s.metadata.name = Some("a-2".into());
    slices.create(&PostParams::default(), &s).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // The WebSocket opened before the changes still works.
    ws.send("after".into()).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_oversized_headers_are_refused() {
    let up = Up::start(&["--ingress-header-timeout", "1s"], false);
    // Slowloris: a request line and half a header, then nothing.
    let mut slow = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the router closes a connection whose headers never end"
    );
    // A TLS handshake that never starts is dropped too.
    let mut idle = TcpStream::connect(("127.0.0.1", up.https)).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the router closes a connection that never says hello"
    );
    // An HTTP/2 connection without an open stream is told to go away after as long.
    let tcp = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://x/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 404);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the router closes an idle HTTP/2 connection");

    // Oversized headers: 431, and the router keeps serving.
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let (code, _, _) = curl(&["-H", &big, &format!("http://127.0.0.1:{}/", up.http)]);
    assert_eq!(code, 431);
    let (code, _, _) = curl(&[&format!("http://127.0.0.1:{}/", up.http)]);
    assert_eq!(code, 404);
}

/// Every row of the path-matching examples in the Kubernetes Ingress documentation, each row an
/// Ingress host of its own, requested with curl through the router. A rule is named by its
/// path type and path; "404" is "no match".
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_documentation_path_examples() {
    type Row = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let rows: &[Row] = &[
        (&[("Prefix", "/")], "/any/path", "Prefix /"),
        (&[("Exact", "/foo")], "/foo", "Exact /foo"),
        (&[("Exact", "/foo")], "/bar", "404"),
        (&[("Exact", "/foo")], "/foo/", "404"),
        (&[("Exact", "/foo/")], "/foo", "404"),
        (&[("Prefix", "/foo")], "/foo", "Prefix /foo"),
        (&[("Prefix", "/foo")], "/foo/", "Prefix /foo"),
        (&[("Prefix", "/foo/")], "/foo", "Prefix /foo/"),
        (&[("Prefix", "/foo/")], "/foo/", "Prefix /foo/"),
        (&[("Prefix", "/aaa/bb")], "/aaa/bbb", "404"),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb", "Prefix /aaa/bbb"),
        (&[("Prefix", "/aaa/bbb/")], "/aaa/bbb", "Prefix /aaa/bbb/"),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/", "Prefix /aaa/bbb"),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", "Prefix /aaa/bbb"),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", "404"),
        (
            &[("Prefix", "/"), ("Prefix", "/aaa")],
            "/aaa/ccc",
            "Prefix /aaa",
        ),
        (
            &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
            "/aaa/bbb",
            "Prefix /aaa/bbb",
        ),
        (
            &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
            "/ccc",
            "Prefix /",
        ),
        (&[("Prefix", "/aaa")], "/ccc", "404"),
        (
            &[("Prefix", "/foo"), ("Exact", "/foo")],
            "/foo",
            "Exact /foo",
        ),
    ];
    let up = Up::start(&["--ingress-access-log", "false"], false);
    let client = up.client().await;
    // One Service per distinct rule, whose backend answers with the rule's name.
    let mut services: Vec<&'static str> = Vec::new();
    for (rules, _, _) in rows {
        for (kind, path) in *rules {
            let name: &'static str = Box::leak(format!("{kind} {path}").into_boxed_str());
            if !services.contains(&name) {
                expose(
                    &client,
                    &format!("rule-{}", services.len()),
                    Some(backend(name).await),
                    None,
                )
                .await;
                services.push(name);
            }
        }
    }
    let host_rules: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (rules, _, _))| {
            let paths: Vec<serde_json::Value> = rules
                .iter()
                .map(|(kind, p)| {
                    let svc = services
                        .iter()
                        .position(|s| *s == format!("{kind} {p}"))
                        .unwrap();
                    path(p, kind, &format!("rule-{svc}"))
                })
                .collect();
            serde_json::json!({"host": format!("row{i}.example"), "http": {"paths": paths}})
        })
        .collect();
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "docs"},
            "spec": {"rules": host_rules},
        }),
    )
    .await;
    wait_for(&up, "row0.example", "/any/path", "Prefix /").await;
    for (i, (rules, request, want)) in rows.iter().enumerate() {
        assert_eq!(
            who(&up, &format!("row{i}.example"), request),
            *want,
            "rules {rules:?}, request {request}"
        );
    }
}

/// Core/v1 Events about one object, as `kubectl describe` selects them: (type, reason, message).
async fn events_about(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    events
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_records_events_for_what_it_cannot_serve() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    // The agent says it started, on its Node.
    eventually_async(Duration::from_secs(20), || async {
        let evs = events_about(&client, "default", "Node", "test-node").await;
        evs.iter()
            .any(|(t, r, _)| t == "Normal" && r == "Starting")
            .then_some(())
    })
    .await;
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "broken"},
        "spec": {
            "tls": [{"hosts": ["b.example"], "secretName": "nowhere"}],
            "rules": [{"host": "b.example", "http": {"paths": [path("/", "Prefix", "absent")]}}]},
    }))
    .await;
    let evs = eventually_async(Duration::from_secs(20), || async {
        let evs = events_about(&client, "default", "Ingress", "broken").await;
        (evs.len() >= 2).then_some(evs)
    })
    .await;
    let has = |reason: &str, text: &str| {
        evs.iter()
            .any(|(t, r, m)| t == "Warning" && r == reason && m.contains(text))
    };
    assert!(
        has("InvalidTLSSecret", "default/nowhere does not exist"),
        "{evs:?}"
    );
    assert!(
        has("ServiceNotFound", "default/absent does not exist"),
        "{evs:?}"
    );
    // kubectl describe shows them.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .args(["describe", "ingress", "broken"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("InvalidTLSSecret") && text.contains("switchyard.io/node-agent"),
        "{text}"
    );
    // The same problem is not recorded again while it lasts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events_about(&client, "default", "Ingress", "broken")
            .await
            .len(),
        evs.len()
    );
}

/// The access log's lines for the requests with these ids, once all are there.
fn access_lines(up: &Up, ids: &[&str]) -> Vec<String> {
    eventually(Duration::from_secs(10), || {
        let log = up.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("switchyard::access"))
            .filter(|l| ids.iter().any(|id| l.contains(id)))
            .map(str::to_string)
            .collect();
        (lines.len() == ids.len()).then_some(lines)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_names_each_request_in_the_log_format() {
    for json in [false, true] {
        let up = Up::start(if json { &["--log-format", "json"] } else { &[] }, false);
        let client = up.client().await;
        expose(&client, "web", Some(backend("a").await), None).await;
        apply_ingress(
            &client,
            serde_json::json!({"metadata": {"name": "shop"}, "spec": {"rules": [
                {"host": "shop.example", "http": {"paths": [path("/", "Prefix", "web")]}}]}}),
        )
        .await;
        wait_for(&up, "shop.example", "/", "a").await;
        let url = format!("http://127.0.0.1:{}/cart/../items?page=2", up.http);
        let served = curl(&[
            "--path-as-is",
            "-H",
            "Host: Shop.Example",
            "-H",
            "X-Request-Id: served\"1",
            &url,
        ]);
        assert_eq!(served.0, 200);
        let missed = curl(&[
            "-H",
            "Host: nowhere.example",
            "-H",
            "X-Request-Id: missed-1",
            &url,
        ]);
        assert_eq!(missed.0, 404);
        let lines = access_lines(&up, &["served", "missed-1"]);
        if json {
            let fields: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .inspect(|v| {
                    assert_eq!(v["level"], "INFO");
                    assert_eq!(v["target"], "switchyard::access");
                    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
                })
                .map(|v| v["fields"].clone())
                .collect();
            let served = fields.iter().find(|f| f["status"] == 200).unwrap();
            assert_eq!(served["request_id"], "served\"1");
            assert_eq!(served["method"], "GET");
            assert_eq!(served["host"], "shop.example");
            assert_eq!(served["path"], "/items");
            assert_eq!(served["ingress"], "default/shop");
            assert_eq!(served["service"], "web:http");
            assert_eq!(served["version"], "HTTP/1.1");
            assert!(served["upstream"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"));
            assert!(served["duration_us"].is_u64());
            let missed = fields.iter().find(|f| f["status"] == 404).unwrap();
            assert_eq!(missed["upstream"], "-");
            assert_eq!(missed["ingress"], "");
        } else {
            let served = lines.iter().find(|l| l.contains("status=200")).unwrap();
            for part in [
                "INFO switchyard::access: request client=127.0.0.1:",
                " method=GET host=shop.example path=/items version=HTTP/1.1 status=200 upstream=127.0.0.1:",
                " ingress=default/shop service=\"web:http\" request_id=\"served\\\"1\" duration_us=",
            ] {
                assert!(served.contains(part), "{part:?} not in {served:?}");
            }
            let missed = lines.iter().find(|l| l.contains("status=404")).unwrap();
            assert!(
                missed.contains(" upstream=- ingress= service=\"\""),
                "{missed}"
            );
            // The lines of a stopping agent are written before it exits.
            let mut up = up;
            let last = curl(&[
                "-H",
                "Host: shop.example",
                "-H",
                "X-Request-Id: last-1",
                &url,
            ]);
            assert_eq!(last.0, 200);
            assert!(up.terminate().success());
            assert!(up.log().contains("request_id=\"last-1\""));
        }
    }
}

/// A backend that writes its answers by hand, so their framing is exactly what the test says:
/// `/length` (5 bytes), `/chunked` (two chunks and trailers, one of them not announced),
/// `/nocontent` (204), `/stall` (never: the flag is set when the router closes the connection),
/// `/early` (answered at once, its body never read); a request with a body gets it back.
async fn framing_backend() -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    buf.drain(..end);
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    if target == "/early" {
                        // Answered before the body is read, and the body never is: as HTTP/1.1
                        // has it, the connection is not kept for another request.
                        let early = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly";
                        let _ = s.write_all(early.as_bytes()).await;
                        std::future::pending::<()>().await;
                    }
                    if target == "/early-full" {
                        // The same, after the body has filled the sockets on its way, and
                        // without saying that the connection is done.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let early = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";
                        let _ = s.write_all(early.as_bytes()).await;
                        std::future::pending::<()>().await;
                    }
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < length {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..length).collect();
                    if target == "/stall" {
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    let answer = if length > 0 {
                        let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n")
                            .into_bytes();
                        a.extend_from_slice(&body);
                        a
                    } else if target == "/chunked" {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                          5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\nx-unannounced: 1\r\n\r\n"
                            .to_vec()
                    } else if target == "/nocontent" {
                        b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
                    } else if target == "/ids" {
                        // Fields the router replaces or keeps, as a backend may write them.
                        b"HTTP/1.1 200 OK\r\nX-Request-ID: upstream-1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                            .to_vec()
                    } else {
                        let body = if head.starts_with("head ") {
                            ""
                        } else {
                            "hello"
                        };
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}").into_bytes()
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, dropped)
}

/// Writes `requests` on one connection at once and reads until the router closes it.
async fn exchange(up: &Up, requests: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the router closes the connection after Connection: close")
        .unwrap();
    String::from_utf8_lossy(&got).to_lowercase()
}

/// The answers in `text`, each from its status line to the next.
fn answers(text: &str) -> Vec<&str> {
    let starts: Vec<usize> = text.match_indices("http/1.").map(|(i, _)| i).collect();
    let mut ends = starts[1..].to_vec();
    ends.push(text.len());
    starts.iter().zip(ends).map(|(&s, e)| &text[s..e]).collect()
}

/// `switchyard up` routing `framing.example` to a [`framing_backend`] (answering by then), and
/// the backend's flag.
async fn framing_up() -> (Up, Arc<AtomicBool>) {
    let up = Up::start(&[], false);
    let client = up.client().await;
    let (backend, stall_dropped) = framing_backend().await;
    expose(&client, "framing", Some(backend), None).await;
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "framing"},
        "spec": {"rules": [{"host": "framing.example", "http": {"paths": [path("/", "Prefix", "framing")]}}]},
    }))
    .await;
    eventually_async(Duration::from_secs(20), || {
        let ok = get(&up, "framing.example", "/length").1 == "hello";
        async move { ok.then_some(()) }
    })
    .await;
    (up, stall_dropped)
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_framing_pipelining_and_keep_alive() {
    let (up, stall_dropped) = framing_up().await;

    // Five requests written at once on one connection, the last asking to close.
    let r = |method: &str, path: &str, extra: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: framing.example\r\n{extra}\r\n")
    };
    let text = exchange(
        &up,
        [
            r("GET", "/length", ""),
            r("HEAD", "/length", ""),
            r("GET", "/chunked", ""),
            r("GET", "/nocontent", "Connection: keep-alive\r\n"),
            r("GET", "/length", "Connection: close\r\n"),
        ]
        .concat()
        .as_bytes(),
    )
    .await;
    let a = answers(&text);
    assert_eq!(a.len(), 5, "{text}");
    assert!(a[0].starts_with("http/1.1 200 ok\r\n"), "{}", a[0]);
    assert!(a[0].contains("\r\ncontent-length: 5\r\n") && a[0].contains("\r\ndate: "));
    assert!(a[0].ends_with("\r\n\r\nhello"), "{}", a[0]);
    // HEAD: the length of what a GET would get, and no body.
    assert!(
        a[1].contains("\r\ncontent-length: 5\r\n") && a[1].ends_with("\r\n\r\n"),
        "{}",
        a[1]
    );
    // Chunked on, with the announced trailer only.
    assert!(
        a[2].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        a[2]
    );
    assert!(!a[2].contains("content-length"), "{}", a[2]);
    let body = a[2].split_once("\r\n\r\n").unwrap().1;
    assert!(body.contains("hello") && body.contains(" world"), "{body}");
    assert!(body.ends_with("0\r\nx-sum: 11\r\n\r\n"), "{body}");
    assert!(!body.contains("x-unannounced"), "{body}");
    assert!(a[3].starts_with("http/1.1 204 no content\r\n"), "{}", a[3]);
    assert!(
        !a[3].contains("content-length") && a[3].ends_with("\r\n\r\n"),
        "{}",
        a[3]
    );
    assert!(
        a[4].contains("\r\nconnection: close\r\n") && a[4].ends_with("hello"),
        "{}",
        a[4]
    );

    // An upstream's request id is replaced and its Date kept, one of each, whoever writes
    // the answer (the router's own HTTP/1.1 server, or hyper's for HTTP/1.0).
    let text = exchange(
        &up,
        [
            r("GET", "/ids", "X-Request-Id: client-7\r\n"),
            "GET /ids HTTP/1.0\r\nHost: framing.example\r\nX-Request-Id: client-8\r\n\r\n"
                .to_string(),
        ]
        .concat()
        .as_bytes(),
    )
    .await;
    let a = answers(&text);
    assert_eq!(a.len(), 2, "{text}");
    for (answer, id) in a.iter().zip(["client-7", "client-8"]) {
        let count = |name: &str| answer.matches(&format!("\r\n{name}: ")).count();
        assert_eq!((count("x-request-id"), count("date")), (1, 1), "{answer}");
        assert!(
            answer.contains(&format!("\r\nx-request-id: {id}\r\n")),
            "{answer}"
        );
        assert!(
            answer.contains("\r\ndate: mon, 01 jan 2024 00:00:00 gmt\r\n"),
            "{answer}"
        );
        assert!(
            !answer.contains("keep-alive") && answer.ends_with("\r\n\r\nok"),
            "{answer}"
        );
    }

    // A request with a body after a plain one on the same connection, then HTTP/1.0.
    let text = exchange(
        &up,
        [
            r("GET", "/length", ""),
            r("POST", "/echo", "Content-Length: 4\r\n") + "ping",
            "GET /length HTTP/1.0\r\nHost: framing.example\r\n\r\n".to_string(),
        ]
        .concat()
        .as_bytes(),
    )
    .await;
    let a = answers(&text);
    assert_eq!(a.len(), 3, "{text}");
    assert!(a[0].ends_with("hello") && a[1].ends_with("ping"), "{text}");
    assert!(
        a[2].starts_with("http/1.0 200") && a[2].ends_with("hello"),
        "{}",
        a[2]
    );

    // A target that is not UTF-8 is a 400 and the end of the connection.
    let text = exchange(&up, b"GET /\xff HTTP/1.1\r\nHost: framing.example\r\n\r\n").await;
    assert!(text.starts_with("http/1.1 400 "), "{text}");
    // A head that httparse refuses goes to hyper, which answers 400 too.
    let text = exchange(&up, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").await;
    assert!(text.starts_with("http/1.1 400 "), "{text}");

    // A client that goes away while the backend has not answered takes its request with it:
    // the router closes the upstream connection (long before its 60 s response timeout).
    let mut s = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    s.write_all(r("GET", "/stall", "").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    eventually_async(Duration::from_secs(10), || {
        let done = stall_dropped.load(Ordering::SeqCst);
        async move { done.then_some(()) }
    })
    .await;
}

/// One request on an HTTP/2 connection (`send`) with `body`; its status, fields, body and
/// trailers.
/// A cleartext HTTP/2 connection (prior knowledge) to the router's plain port, from hyper's
/// client, for request bodies of type `B`.
pub(crate) async fn h2c<B>(up: &Up) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_request(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://framing.example{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        parts.status.as_u16(),
        parts.headers,
        collected.to_bytes(),
        trailers,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_bodies_trailers_resets_and_prior_knowledge() {
    let (up, stall_dropped) = framing_up().await;

    // Cleartext HTTP/2 with prior knowledge, on the plain port.
    let mut send = h2c(&up).await;

    let (status, headers, body, _) = h2_request(&mut send, "GET", "/length", vec![]).await;
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
    assert_eq!(headers["content-length"], "5");
    assert!(headers.contains_key("date") && headers.contains_key("x-request-id"));
    let (status, headers, body, _) = h2_request(&mut send, "HEAD", "/length", vec![]).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], "5");
    let (status, _, body, _) = h2_request(&mut send, "GET", "/nocontent", vec![]).await;
    assert_eq!((status, body.len()), (204, 0));

    // A chunked upstream answer arrives whole, its trailer as HTTP/2 trailers.
    let (status, headers, body, trailers) = h2_request(&mut send, "GET", "/chunked", vec![]).await;
    assert_eq!((status, &body[..]), (200, &b"hello world"[..]));
    assert!(!headers.contains_key("transfer-encoding"));
    let trailers = trailers.expect("the answer's trailers");
    assert_eq!(trailers["x-sum"], "11");

    // A body larger than the windows both ways (1 MiB the router grants, 64 KiB the client's
    // default stream window): it goes up and comes back whole.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let echoed = h2_request(&mut send, "POST", "/echo", big.clone());
    let (status, headers, body, _) = tokio::time::timeout(Duration::from_secs(30), echoed)
        .await
        .expect("the body went up and came back in time");
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], big.len().to_string().as_str());
    assert!(body[..] == big[..], "the echoed body differs");

    // Uploads that the upstream answers without reading: once answered, the rest of each body
    // gives its share of the connection's window back, so a body afterwards still goes through
    // (left unread, a few of them would hold the whole window).
    let uploads = (0..8).map(|_| {
        let (mut send, big) = (send.clone(), big.clone());
        async move { h2_request(&mut send, "POST", "/early", big).await }
    });
    for (status, _, body, _) in futures::future::join_all(uploads).await {
        assert_eq!((status, &body[..]), (200, &b"early"[..]));
    }
    let echoed = h2_request(&mut send, "POST", "/echo", b"after".to_vec());
    let (status, _, body, _) = tokio::time::timeout(Duration::from_secs(10), echoed)
        .await
        .expect("a body after unread ones went through");
    assert_eq!((status, &body[..]), (200, &b"after"[..]));

    // An upload answered while its upstream connection is stuck in the middle of it: that
    // connection is closed, not pooled for the next request to wait on.
    let stuck = h2_request(&mut send, "POST", "/early-full", vec![0; 64 << 20]);
    let (status, _, body, _) = tokio::time::timeout(Duration::from_secs(20), stuck)
        .await
        .expect("the early answer in time");
    assert_eq!((status, &body[..]), (200, &b"early"[..]));
    let echoed = h2_request(&mut send, "POST", "/echo", b"again".to_vec());
    let (status, _, body, _) = tokio::time::timeout(Duration::from_secs(10), echoed)
        .await
        .expect("a body after a stuck upload went through");
    assert_eq!((status, &body[..]), (200, &b"again"[..]));

    // A tunnel is not made.
    let (status, _, _, _) = h2_request(&mut send, "CONNECT", "", vec![]).await;
    assert_eq!(status, 405);

    // A stream the client resets takes its upstream exchange with it; the connection goes on.
    let stalled = h2_request(&mut send, "GET", "/stall", vec![]);
    assert!(tokio::time::timeout(Duration::from_millis(300), stalled)
        .await
        .is_err());
    eventually_async(Duration::from_secs(10), || {
        let done = stall_dropped.load(Ordering::SeqCst);
        async move { done.then_some(()) }
    })
    .await;
    let (status, _, body, _) = h2_request(&mut send, "GET", "/length", vec![]).await;
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
}

/// An h2c upstream that answers `early` to every request at once and tells, for each request
/// body, whether it broke off (true: the stream was reset) or ended (false).
async fn early_h2c() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            let broke = loop {
                                match body.frame().await {
                                    Some(Ok(_)) => continue,
                                    Some(Err(_)) => break true,
                                    None => break false,
                                }
                            };
                            let _ = tx.send(broke);
                        });
                        let early = Full::new(Bytes::from_static(b"early"));
                        Ok::<_, Infallible>(http::Response::new(early))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_bodies_answered_early_end_at_an_h2c_upstream() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    let (addr, mut bodies) = early_h2c().await;
    expose(&client, "early", Some(addr), Some("kubernetes.io/h2c")).await;
    apply_ingress(&client, serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "early"},
        "spec": {"rules": [{"host": "early.example", "http": {"paths": [path("/", "Prefix", "early")]}}]},
    }))
    .await;
    eventually_async(Duration::from_secs(20), || async {
        let (code, body, _) = curl(&[
            "-H",
            "Host: early.example",
            &format!("http://127.0.0.1:{}/", up.http),
        ]);
        (code == 200 && body == "early").then_some(())
    })
    .await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), bodies.recv()).await {}

    // An HTTP/2 client sends the first part of a body and no more; the upstream answers at
    // once. Once the router has answered, the rest of the client's body is of no use: the
    // upstream's copy of it must end (reset), not wait for ever.
    type Never = futures::stream::Pending<Result<hyper::body::Frame<Bytes>, Infallible>>;
    let first = futures::stream::iter([Ok(hyper::body::Frame::data(Bytes::from_static(b"first")))]);
    let body = http_body_util::StreamBody::new(first.chain(futures::stream::pending() as Never));
    let mut send = h2c(&up).await;
    let req = http::Request::post("http://early.example/")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&answer[..], b"early");
    let broke = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("the upstream's copy of the body ended");
    assert_eq!(broke, Some(true), "the upstream's copy broke off");
}
