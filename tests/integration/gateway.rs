//! Gateway API end to end: `switchyard up`, the official Gateway API CRDs, GatewayClass, Gateway
//! and HTTPRoute objects applied with kubectl, and real clients (curl, tokio-tungstenite) against
//! backends in the test process. Written from the definitions of the Gateway API conformance
//! tests (HTTPRoute matching, filters, redirects, rewrites, weights, timeouts, references and
//! their status reasons, listener isolation, HTTPS listeners).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;

use super::ingress::{backend, cert, curl, expose, ws_backend};
use crate::support::{eventually, eventually_async, free_port, run_with_stdin, Up};

/// `switchyard up` with the Gateway API CRDs installed; None (skipped) without the CRDs.
fn up_with_crds() -> Option<Up> {
    let Some(files) = super::crd::gateway_api_crds() else {
        crate::support::skip("SWITCHYARD_GATEWAY_API_CRDS is not set (scripts/test sets it)");
        return None;
    };
    let up = Up::start(&[], false);
    let mut args = vec!["apply".to_string(), "--server-side".to_string()];
    for f in &files {
        args.extend(["-f".to_string(), f.to_string_lossy().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&up, &args, "");
    ok(
        &up,
        &[
            "wait",
            "--for",
            "condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        "",
    );
    Some(up)
}

fn kubectl(up: &Up, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(up.kubeconfig()).args(args);
    run_with_stdin(&mut cmd, stdin)
}

fn ok(up: &Up, args: &[&str], stdin: &str) -> String {
    let (done, out, err) = kubectl(up, args, stdin);
    assert!(done, "kubectl {args:?} failed: {err}\n{stdin}");
    out
}

fn apply(up: &Up, yaml: &str) {
    ok(up, &["apply", "-f", "-"], yaml);
}

fn status(up: &Up, kind: &str, ns: &str, name: &str) -> Value {
    let out = ok(up, &["get", kind, name, "-n", ns, "-o", "json"], "");
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

/// The condition `kind` of a status's `conditions` as (status, reason).
fn condition(conditions: &Value, kind: &str) -> Option<(String, String)> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

/// Waits until a route's (only) parent of ours reports `kind` with `want` (status, reason).
fn wait_route(up: &Up, ns: &str, name: &str, kind: &str, want: (&str, &str)) -> Value {
    eventually(Duration::from_secs(30), || {
        let st = status(up, "httproute", ns, name);
        let parent = st["parents"].get(0)?.clone();
        let got = condition(&parent["conditions"], kind)?;
        (got.0 == want.0 && got.1 == want.1).then_some(parent)
    })
}

/// A request to the Gateway listener on `port`: (status, body as JSON when it is, headers).
fn request(port: u16, host: &str, path: &str, extra: &[&str]) -> (u16, Value, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let host = format!("Host: {host}");
    let mut args = vec!["-H", host.as_str()];
    args.extend(extra);
    args.push(&url);
    let (code, body, headers) = curl(&args);
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        headers,
    )
}

/// Which backend answered (or the status code).
fn who(port: u16, host: &str, path: &str, extra: &[&str]) -> String {
    let (code, body, _) = request(port, host, path, extra);
    if code != 200 {
        return code.to_string();
    }
    body["backend"].as_str().unwrap_or("?").to_string()
}

fn wait_who(port: u16, host: &str, path: &str, want: &str) {
    eventually(Duration::from_secs(30), || {
        (who(port, host, path, &[]) == want).then_some(())
    });
}

const CLASS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: switchyard}
spec: {controllerName: switchyard.io/gateway-controller}
";

#[tokio::test(flavor = "multi_thread")]
async fn http_routes_match_filter_split_and_report() {
    let Some(up) = up_with_crds() else { return };
    let client = up.client().await;
    for (svc, name) in [("v1", "v1"), ("v2", "v2")] {
        let addr = backend(name).await;
        expose(&client, svc, Some(addr), None).await;
    }
    apply(&up, CLASS);
    let class = eventually(Duration::from_secs(30), || {
        let st = status(&up, "gatewayclass", "default", "switchyard");
        (condition(&st["conditions"], "Accepted")? == ("True".into(), "Accepted".into()))
            .then_some(st)
    });
    let features: Vec<&str> = class["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    for f in [
        "Gateway",
        "HTTPRoute",
        "HTTPRouteQueryParamMatching",
        "HTTPRouteRequestMirror",
        "HTTPRouteRequestPercentageMirror",
        "HTTPRouteBackendRequestHeaderModification",
        "ReferenceGrant",
    ] {
        assert!(features.contains(&f), "{features:?}");
    }
    let mut sorted = features.clone();
    sorted.sort();
    assert_eq!(features, sorted, "supportedFeatures are sorted");
    let (port, open_port) = (free_port(), free_port());
    apply(
        &up,
        &format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: switchyard
  listeners:
  - {{name: web, port: {port}, protocol: HTTP, hostname: '*.example.com'}}
  - name: open
    port: {open_port}
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: All}}}}
"
        ),
    );
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: main, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [match.example.com]
  rules:
  - backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /p}}]
    backendRefs: [{name: v2, port: 80}]
  - matches:
    - headers: [{name: X-Env, value: canary}]
    - queryParams: [{name: animal, value: whale}]
    - {path: {type: PathPrefix, value: /m}, method: POST}
    - {path: {type: RegularExpression, value: '/re/[0-9]+'}}
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set}]
        add: [{name: X-Add, value: added}]
        remove: [X-Gone]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Answer, value: present}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: secure.example, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, port: 8080}
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: v1, port: 80, weight: 1}, {name: v2, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs: [{name: v1, port: 80, weight: 0}, {name: v2, port: 80, weight: 5}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ['https://www.foo.com', 'https://*.bar.com']
        allowCredentials: true
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1]
        exposeHeaders: [x-header-3]
        maxAge: 3600
    backendRefs: [{name: v1, port: 80}]
",
    );
    wait_route(&up, "default", "main", "Accepted", ("True", "Accepted"));
    wait_route(
        &up,
        "default",
        "main",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    let h = "match.example.com";
    wait_who(port, h, "/", "v1");
    // Paths: Exact and PathPrefix (element-wise), RegularExpression on the whole path.
    assert_eq!(who(port, h, "/exact", &[]), "v2");
    assert_eq!(who(port, h, "/exact/more", &[]), "v1");
    assert_eq!(who(port, h, "/p/x", &[]), "v2");
    assert_eq!(who(port, h, "/px", &[]), "v1");
    assert_eq!(who(port, h, "/re/42", &[]), "v2");
    assert_eq!(who(port, h, "/re/4x", &[]), "v1");
    // Headers, query parameters and methods.
    assert_eq!(who(port, h, "/", &["-H", "x-env: canary"]), "v2");
    assert_eq!(who(port, h, "/", &["-H", "X-Env: prod"]), "v1");
    assert_eq!(who(port, h, "/?animal=whale", &[]), "v2");
    assert_eq!(who(port, h, "/?animal=dolphin", &[]), "v1");
    assert_eq!(who(port, h, "/m", &["-X", "POST"]), "v2");
    assert_eq!(who(port, h, "/m", &[]), "v1");
    // The listener's hostname and the route's: other hosts are not served here.
    assert_eq!(who(port, "other.example.com", "/", &[]), "404");
    // Header filters, both ways.
    let (code, body, headers) = request(
        port,
        h,
        "/hdr",
        &["-H", "X-Gone: x", "-H", "X-Add: mine", "-H", "X-Set: mine"],
    );
    assert_eq!(code, 200);
    let seen = &body["headers"];
    assert_eq!(seen["x-set"], "set");
    assert_eq!(seen["x-add"], "mine,added");
    assert!(seen.get("x-gone").is_none(), "{seen}");
    assert!(headers.contains("x-answer: present"), "{headers}");
    // Rewrites: the backend sees the new host and path.
    let (_, body, _) = request(port, h, "/prefix/one/two?q=1", &[]);
    assert_eq!(
        (body["host"].as_str(), body["path"].as_str()),
        (Some("rewritten.example"), Some("/one/two"))
    );
    assert_eq!(body["query"], "q=1");
    assert_eq!(body["headers"]["x-forwarded-host"], h);
    let (_, body, _) = request(port, h, "/full/anything", &[]);
    assert_eq!(body["path"], "/replaced");
    // Redirects.
    let (code, _, headers) = request(port, h, "/redirect/x?a=b", &[]);
    assert_eq!(code, 301);
    assert!(
        headers.contains("location: https://secure.example/redirect/x?a=b"),
        "{headers}"
    );
    let (code, _, headers) = request(port, h, "/moved/deeper", &[]);
    assert_eq!(code, 302);
    assert!(
        headers.contains(&format!("location: http://{h}:8080/new/deeper")),
        "{headers}"
    );
    // Weights: both halves answer; a zero weight never does.
    let split: std::collections::HashSet<String> =
        (0..40).map(|_| who(port, h, "/split", &[])).collect();
    assert_eq!(split, ["v1", "v2"].iter().map(|s| s.to_string()).collect());
    assert!((0..20).all(|_| who(port, h, "/zero", &[]) == "v2"));
    // The request timeout: the backend takes three seconds.
    assert_eq!(who(port, h, "/slow", &[]), "504");
    // CORS: preflights are answered by the router; allowed origins' answers are marked.
    let preflight = |origin: &str| {
        let origin = format!("Origin: {origin}");
        let ask = [
            "-X",
            "OPTIONS",
            "-H",
            &origin,
            "-H",
            "Access-Control-Request-Method: GET",
        ];
        request(port, h, "/cors", &ask)
    };
    let (code, body, headers) = preflight("https://www.foo.com");
    assert_eq!((code, body), (200, Value::Null), "not forwarded");
    for want in [
        "access-control-allow-origin: https://www.foo.com",
        "access-control-allow-credentials: true",
        "access-control-allow-methods: get, options",
        "access-control-max-age: 3600",
    ] {
        assert!(headers.contains(want), "{want} in {headers}");
    }
    let (code, _, headers) = preflight("https://evil.example");
    assert_eq!(code, 200);
    assert!(
        !headers.contains("access-control-allow-origin"),
        "{headers}"
    );
    let (code, body, headers) = request(port, h, "/cors", &["-H", "Origin: https://a.b.bar.com"]);
    assert_eq!((code, body["backend"].as_str()), (200, Some("v1")));
    assert!(
        headers.contains("access-control-allow-origin: https://a.b.bar.com"),
        "{headers}"
    );
    assert!(
        headers.contains("access-control-expose-headers: x-header-3"),
        "{headers}"
    );

    // A backend that does not exist: 500, and ResolvedRefs says why.
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [missing.example.com]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
",
    );
    let parent = wait_route(
        &up,
        "default",
        "missing",
        "ResolvedRefs",
        ("False", "BackendNotFound"),
    );
    assert_eq!(
        condition(&parent["conditions"], "Accepted").unwrap().0,
        "True"
    );
    wait_who(port, "missing.example.com", "/", "500");
    // A route that stops naming our Gateway loses our status entry.
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing, namespace: default}
spec:
  parentRefs: [{name: not-ours}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
",
    );
    eventually(Duration::from_secs(30), || {
        let st = status(&up, "httproute", "default", "missing");
        st["parents"]
            .as_array()
            .is_none_or(Vec::is_empty)
            .then_some(())
    });

    // Another namespace: the `web` listener admits only its own namespace's routes, `open`
    // admits all; a Service across namespaces needs a ReferenceGrant.
    ok(&up, &["create", "namespace", "other"], "");
    let foreign = |section: &str| {
        format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: foreign, namespace: other}}
spec:
  parentRefs: [{{name: gw, namespace: default, sectionName: {section}}}]
  rules: [{{backendRefs: [{{name: v2, namespace: default, port: 80}}]}}]
"
        )
    };
    apply(&up, &foreign("web"));
    wait_route(
        &up,
        "other",
        "foreign",
        "Accepted",
        ("False", "NotAllowedByListeners"),
    );
    apply(&up, &foreign("open"));
    wait_route(
        &up,
        "other",
        "foreign",
        "ResolvedRefs",
        ("False", "RefNotPermitted"),
    );
    wait_who(open_port, "any.host", "/", "500");
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: let-other, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
  to: [{group: '', kind: Service}]
",
    );
    wait_route(
        &up,
        "other",
        "foreign",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    wait_who(open_port, "any.host", "/", "v2");
    // No shared hostname with the listener.
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [example.org]
  rules: [{backendRefs: [{name: v1, port: 80}]}]
",
    );
    wait_route(
        &up,
        "default",
        "elsewhere",
        "Accepted",
        ("False", "NoMatchingListenerHostname"),
    );

    // The Gateway's own status: addresses, conditions, listeners and their attached routes.
    let gw = eventually(Duration::from_secs(30), || {
        let st = status(&up, "gateway", "default", "gw");
        let web = st["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "web")?
            .clone();
        (web["attachedRoutes"] == 1).then_some(st)
    });
    assert_eq!(
        condition(&gw["conditions"], "Programmed").unwrap(),
        ("True".into(), "Programmed".into())
    );
    assert_eq!(gw["addresses"][0]["value"], "127.0.0.1");
    let open = gw["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "open")
        .unwrap();
    assert_eq!(open["attachedRoutes"], 1);
    assert_eq!(open["supportedKinds"][0]["kind"], "HTTPRoute");

    // A route that is not ours but carries entries of ours (it changed while no agent ran)
    // loses them; other controllers' entries stay.
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: default}
spec:
  parentRefs: [{name: not-ours}]
  rules: [{backendRefs: [{name: v1, port: 80}]}]
",
    );
    let entry = |controller: &str| {
        serde_json::json!({
            "parentRef": {"name": "gw"},
            "controllerName": controller,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        })
    };
    let stale = serde_json::json!({"status": {"parents": [
        entry("switchyard.io/gateway-controller"),
        entry("example.com/other-controller"),
    ]}});
    ok(
        &up,
        &[
            "patch",
            "httproute",
            "elsewhere",
            "--subresource=status",
            "--type=merge",
            "-p",
            &stale.to_string(),
        ],
        "",
    );
    eventually(Duration::from_secs(30), || {
        let parents = status(&up, "httproute", "default", "elsewhere")["parents"].clone();
        let controllers: Vec<&str> = parents
            .as_array()?
            .iter()
            .filter_map(|p| p["controllerName"].as_str())
            .collect();
        (controllers == ["example.com/other-controller"]).then_some(())
    });

    // Deleting the Gateway closes its ports.
    ok(&up, &["delete", "gateway", "gw"], "");
    eventually(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn https_listeners_ingress_ports_and_websockets() {
    let Some(up) = up_with_crds() else { return };
    let client = up.client().await;
    let addr = backend("gw").await;
    expose(&client, "gw", Some(addr), None).await;
    let addr = backend("ing").await;
    expose(&client, "ing", Some(addr), None).await;
    let ws = ws_backend().await;
    expose(&client, "ws", Some(ws), None).await;
    let (crt, key) = cert("*.tls.example");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().to_string()
    };
    let (crt_file, key_file) = (file("tls.crt", &crt), file("tls.key", &key));
    ok(
        &up,
        &[
            "create", "secret", "tls", "tls-cert", "--cert", &crt_file, "--key", &key_file,
        ],
        "",
    );
    apply(&up, CLASS);
    let tls_port = free_port();
    // One HTTPS listener; one listener on the router's HTTP ingress port (shared); one HTTP
    // listener on the HTTPS ingress port, which cannot be served.
    apply(
        &up,
        &format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: switchyard
  listeners:
  - name: tls
    port: {tls_port}
    protocol: HTTPS
    hostname: '*.tls.example'
    tls: {{certificateRefs: [{{name: tls-cert}}]}}
  - {{name: shared, port: {http}, protocol: HTTP}}
  - {{name: clash, port: {https}, protocol: HTTP}}
",
            http = up.http,
            https = up.https
        ),
    );
    apply(
        &up,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: tls}, {name: edge, sectionName: shared}]
  hostnames: [a.tls.example, both.example]
  rules:
  - backendRefs: [{name: gw, port: 80}]
  - matches: [{path: {value: /ws}}]
    backendRefs: [{name: ws, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ing, namespace: default}
spec:
  rules:
  - host: both.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: ing, port: {name: http}}}}]}
  - host: ingress-only.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: ing, port: {name: http}}}}]}
",
    );
    wait_route(&up, "default", "edge", "Accepted", ("True", "Accepted"));
    // On the shared port the Gateway route answers its host; the Ingress answers the rest.
    wait_who(up.http, "both.example", "/", "gw");
    wait_who(up.http, "ingress-only.example", "/", "ing");
    // HTTPS with the listener's certificate, chosen by SNI.
    let ca = crt_file;
    let resolve = format!("a.tls.example:{tls_port}:127.0.0.1");
    let url = format!("https://a.tls.example:{tls_port}/");
    let (code, body, _) = eventually(Duration::from_secs(30), || {
        let r = curl(&["--resolve", &resolve, "--cacert", &ca, &url]);
        (r.0 == 200).then_some(r)
    });
    assert_eq!(code, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["backend"].as_str(), body["xfp"].as_str()),
        (Some("gw"), Some("https"))
    );
    // HTTP/2 over TLS.
    let (code, _, headers) = curl(&["--http2", "--resolve", &resolve, "--cacert", &ca, &url]);
    assert_eq!(code, 200);
    assert!(headers.starts_with("http/2"), "{headers}");
    // The clashing listener is reported, the others are served.
    let gw = eventually(Duration::from_secs(30), || {
        let st = status(&up, "gateway", "default", "edge");
        let clash = st["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "clash")?
            .clone();
        (condition(&clash["conditions"], "Accepted")?.1 == "PortUnavailable").then_some(st)
    });
    let tls = gw["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "tls")
        .unwrap();
    assert_eq!(
        condition(&tls["conditions"], "Programmed").unwrap().0,
        "True"
    );
    assert_eq!(
        condition(&gw["conditions"], "Programmed").unwrap().0,
        "True"
    );
    // WebSocket through an HTTPRoute.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", up.http))
        .await
        .unwrap();
    let (mut socket, resp) = tokio_tungstenite::client_async("ws://both.example/ws", tcp)
        .await
        .expect("websocket handshake through the gateway route");
    assert_eq!(resp.status(), 101);
    socket.send("over the gateway".into()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "over the gateway");
    // A certificate that is not there: the listener's references do not resolve.
    apply(
        &up,
        &format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: broken, namespace: default}}
spec:
  gatewayClassName: switchyard
  listeners:
  - name: tls
    port: {}
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: absent}}]}}
",
            free_port()
        ),
    );
    eventually(Duration::from_secs(30), || {
        let st = status(&up, "gateway", "default", "broken");
        let l = st["listeners"].get(0)?.clone();
        let resolved = condition(&l["conditions"], "ResolvedRefs")?;
        let programmed = condition(&st["conditions"], "Programmed")?;
        (resolved == ("False".into(), "InvalidCertificateRef".into()) && programmed.0 == "False")
            .then_some(())
    });
}

/// A gRPC server (tests/python/grpc_peer.py) on 127.0.0.1, stopped when dropped.
struct GrpcPeer {
    child: std::process::Child,
    port: u16,
}

impl Drop for GrpcPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_peer.py");

fn grpc_server(py: &str, name: &str) -> GrpcPeer {
    use std::io::BufRead;
    let mut child = std::process::Command::new(py)
        .args([GRPC_PEER, "serve", name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the gRPC server's port");
    GrpcPeer { child, port }
}

/// A unary gRPC call through the router: the answer, or `status CODE`.
fn grpc_call(py: &str, port: u16, authority: &str, method: &str, metadata: &[&str]) -> String {
    let out = std::process::Command::new(py)
        .args([GRPC_PEER, "call", &port.to_string(), authority, method])
        .args(metadata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_routes_match_services_methods_and_headers() {
    let Some(py) = std::env::var("SWITCHYARD_TEST_PYTHON").ok() else {
        crate::support::skip(
            "the gRPC library is not installed (scripts/test installs it into target/python)",
        );
        return;
    };
    let Some(up) = up_with_crds() else { return };
    let client = up.client().await;
    let (a, b) = (grpc_server(&py, "a"), grpc_server(&py, "b"));
    for (svc, peer) in [("grpc-a", &a), ("grpc-b", &b)] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], peer.port));
        expose(&client, svc, Some(addr), None).await;
    }
    apply(&up, CLASS);
    let (port, http_only) = (free_port(), free_port());
    apply(
        &up,
        &format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: grpc, namespace: default}}
spec:
  gatewayClassName: switchyard
  listeners:
  - {{name: any, port: {port}, protocol: HTTP}}
  - name: http-only
    port: {http_only}
    protocol: HTTP
    allowedRoutes: {{kinds: [{{kind: HTTPRoute}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: calls, namespace: default}}
spec:
  parentRefs: [{{name: grpc, sectionName: any}}]
  hostnames: [grpc.example]
  rules:
  - backendRefs: [{{name: grpc-a, port: 80}}]
  - matches: [{{method: {{service: pkg.Svc, method: Do}}}}]
    backendRefs: [{{name: grpc-b, port: 80}}]
  - matches: [{{method: {{service: pkg.Other}}}}]
    backendRefs: [{{name: grpc-b, port: 80}}]
  - matches: [{{method: {{method: Any}}}}]
    backendRefs: [{{name: grpc-a, port: 80}}]
  - matches: [{{headers: [{{name: x-canary, value: 'on'}}]}}]
    backendRefs: [{{name: grpc-b, port: 80}}]
  - matches: [{{method: {{type: RegularExpression, service: 'reg\\..+', method: 'Get.*'}}}}]
    backendRefs: [{{name: grpc-b, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: refused, namespace: default}}
spec:
  parentRefs: [{{name: grpc, sectionName: http-only}}]
  rules: [{{backendRefs: [{{name: grpc-a, port: 80}}]}}]
"
        ),
    );
    eventually(Duration::from_secs(30), || {
        let st = status(&up, "grpcroute", "default", "calls");
        let got = condition(&st["parents"].get(0)?["conditions"], "Accepted")?;
        (got == ("True".into(), "Accepted".into())).then_some(())
    });
    let call = |method: &str, md: &[&str]| grpc_call(&py, port, "grpc.example", method, md);
    eventually(Duration::from_secs(30), || {
        (call("/pkg.Svc/Do", &[]) == "b /pkg.Svc/Do").then_some(())
    });
    assert_eq!(
        call("/pkg.Svc/Else", &["x-echo=through"]),
        "a /pkg.Svc/Else through"
    );
    // A service match outranks a method match (more characters in the service).
    assert_eq!(call("/pkg.Other/Any", &[]), "b /pkg.Other/Any");
    assert_eq!(call("/x.Y/Any", &["x-echo=m"]), "a /x.Y/Any m");
    assert_eq!(call("/x.Y/Z", &["x-canary=on"]), "b /x.Y/Z");
    assert_eq!(call("/reg.Foo/GetThing", &[]), "b /reg.Foo/GetThing");
    assert_eq!(call("/reg.Foo/Put", &[]), "a /reg.Foo/Put");
    // Another host has no route on this listener.
    assert_eq!(
        grpc_call(&py, port, "other.example", "/pkg.Svc/Do", &[]),
        "status UNIMPLEMENTED"
    );
    let st = status(&up, "grpcroute", "default", "refused");
    assert_eq!(
        condition(&st["parents"][0]["conditions"], "Accepted"),
        Some(("False".into(), "NotAllowedByListeners".into()))
    );

    // An HTTPRoute on the same listener and hostname as an older GRPCRoute is not accepted
    // (the two are never merged); on another hostname it is.
    let web = backend("web").await;
    expose(&client, "web", Some(web), None).await;
    let http_route = |name: &str, host: &str| {
        format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: grpc, sectionName: any}}]
  hostnames: ['{host}']
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"
        )
    };
    apply(&up, &http_route("clash", "*.example"));
    apply(&up, &http_route("beside", "web.example"));
    wait_route(&up, "default", "clash", "Accepted", ("False", "Conflicted"));
    wait_route(&up, "default", "beside", "Accepted", ("True", "Accepted"));
    wait_who(port, "web.example", "/", "web");
    assert_eq!(call("/pkg.Svc/Do", &[]), "b /pkg.Svc/Do");
    assert_eq!(
        who(port, "other.example", "/", &[]),
        "404",
        "the losing route serves none of its hostnames there"
    );
    // Once the GRPCRoute is gone the HTTPRoute has the listener.
    ok(&up, &["delete", "grpcroute", "calls"], "");
    wait_route(&up, "default", "clash", "Accepted", ("True", "Accepted"));
    wait_who(port, "grpc.example", "/", "web");
}

/// What a recording backend saw of one request.
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: usize,
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<Seen>>>;

/// An HTTP backend that reads each request's body and records it; it answers with its name and
/// the body's length.
async fn recorder(name: &'static str) -> (std::net::SocketAddr, Log) {
    use http_body_util::BodyExt;
    let log: Log = Default::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = kept.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let len = body.collect().await.map_or(0, |b| b.to_bytes().len());
                            log.lock().unwrap().push(Seen {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body: len,
                            });
                            let answer = serde_json::json!({"backend": name, "len": len});
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(answer.to_string())),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, log)
}

/// How many requests a recorder saw under `prefix`, and the last of them.
fn seen(log: &Log, prefix: &str) -> (usize, Option<(http::HeaderMap, usize)>) {
    let log = log.lock().unwrap();
    let mut under = log.iter().filter(|s| s.path.starts_with(prefix));
    let n = under.clone().count();
    (n, under.next_back().map(|s| (s.headers.clone(), s.body)))
}

/// A backend that accepts connections and never reads from them.
async fn stalled() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A file of `len` bytes for curl to send.
fn body_file(len: usize) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![b'm'; len]).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn http_routes_mirror_requests_and_filter_per_backend() {
    let Some(up) = up_with_crds() else { return };
    let client = up.client().await;
    let (prim, prim_log) = recorder("prim").await;
    let (m1, m1_log) = recorder("m1").await;
    let (m2, m2_log) = recorder("m2").await;
    expose(&client, "prim", Some(prim), None).await;
    expose(&client, "m1", Some(m1), None).await;
    expose(&client, "m2", Some(m2), None).await;
    expose(&client, "stall", Some(stalled().await), None).await;
    apply(&up, CLASS);
    let port = free_port();
    apply(
        &up,
        &format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: switchyard
  listeners: [{{name: web, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirrors, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [mirror.example]
  rules:
  - name: one-mirror
    matches: [{{path: {{type: PathPrefix, value: /one}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: X-Tagged, value: 'yes'}}]}}
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m1, port: 80}}}}
    backendRefs: [{{name: prim, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /two}}}}]
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m1, port: 80}}}}
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m2, port: 80}}}}
    backendRefs: [{{name: prim, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /never}}}}]
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m2, port: 80}}, percent: 0}}
    backendRefs: [{{name: prim, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /half}}}}]
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m2, port: 80}}, fraction: {{numerator: 1, denominator: 2}}}}
    backendRefs: [{{name: prim, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /stall}}}}]
    timeouts: {{backendRequest: 1s}}
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: stall, port: 80}}}}
    backendRefs: [{{name: prim, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /per-backend}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: X-Rule, value: rule}}, {{name: X-Both, value: rule}}]}}
    backendRefs:
    - name: prim
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {{set: [{{name: X-Both, value: backend}}], remove: [X-Drop]}}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {{add: [{{name: X-From, value: prim}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: lost-mirror, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [lost.example]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: nowhere, port: 80}}}}
    backendRefs: [{{name: prim, port: 80}}]
"
        ),
    );
    wait_route(&up, "default", "mirrors", "Accepted", ("True", "Accepted"));
    wait_route(
        &up,
        "default",
        "mirrors",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    let h = "mirror.example";
    wait_who(port, h, "/one", "prim");

    // The backend answers; the mirror gets the same request, filters applied, and its
    // answer is dropped.
    let sent = body_file(48 * 1024);
    let data = format!("@{}", sent.path().display());
    let (code, body, _) = request(port, h, "/one/post", &["--data-binary", &data]);
    assert_eq!((code, body["backend"].as_str()), (200, Some("prim")));
    assert_eq!(body["len"], 48 * 1024);
    let (headers, len) = eventually(Duration::from_secs(10), || seen(&m1_log, "/one/post").1);
    assert_eq!(len, 48 * 1024, "the mirror gets the whole body");
    assert_eq!(headers["x-tagged"], "yes");
    assert_eq!(headers["x-forwarded-host"], h);
    assert_eq!(seen(&prim_log, "/one/post").0, 1);

    // Two mirrors on one rule: each gets its copy.
    assert_eq!(who(port, h, "/two/a", &[]), "prim");
    eventually(Duration::from_secs(10), || {
        (seen(&m1_log, "/two/a").0 == 1 && seen(&m2_log, "/two/a").0 == 1).then_some(())
    });

    // Shares: none at 0%; a fraction of 1/2 sends some of 200, not all, not none.
    for _ in 0..20 {
        assert_eq!(who(port, h, "/never", &[]), "prim");
    }
    for _ in 0..200 {
        assert_eq!(who(port, h, "/half", &[]), "prim");
    }
    // Copies arrive after the answers; more never do than were chosen.
    let half = eventually(Duration::from_secs(10), || {
        let n = seen(&m2_log, "/half").0;
        (n > 0).then_some(n)
    });
    assert!(half < 200, "1/2 of 200 requests mirrored: {half}");
    assert_eq!(seen(&m2_log, "/never").0, 0);

    // A mirror that never reads holds nothing back: a body far larger than any buffer reaches
    // the backend, and the mirror is given up.
    let big = body_file(8 << 20);
    let data = format!("@{}", big.path().display());
    let (code, body, _) = request(port, h, "/stall", &["--data-binary", &data]);
    assert_eq!((code, body["len"].as_u64()), (200, Some(8 << 20)));
    let failed = "switchyard_ingress_mirrored_requests_total{result=\"failed\"}";
    eventually_async(Duration::from_secs(15), || async {
        let m = crate::support::http_get(up.metrics, "/metrics").await;
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(failed))?
            .trim()
            .parse()
            .ok()?;
        (n >= 1).then_some(())
    })
    .await;

    // Filters on a backend reference: after the rule's on the way in, and on the way out.
    let (code, _, headers) = request(port, h, "/per-backend", &["-H", "X-Drop: x"]);
    assert_eq!(code, 200);
    assert!(headers.contains("x-from: prim"), "{headers}");
    let (hs, _) = seen(&prim_log, "/per-backend").1.unwrap();
    assert_eq!(hs["x-rule"], "rule");
    assert_eq!(hs["x-both"], "backend");
    assert!(hs.get("x-drop").is_none());

    // A mirror whose Service does not exist is left out and reported; the route still serves.
    let parent = wait_route(
        &up,
        "default",
        "lost-mirror",
        "ResolvedRefs",
        ("False", "BackendNotFound"),
    );
    assert_eq!(
        condition(&parent["conditions"], "Accepted").unwrap().0,
        "True"
    );
    wait_who(port, "lost.example", "/", "prim");
    // Its Service appearing is a change the route follows.
    expose(&client, "nowhere", Some(m2), None).await;
    wait_route(
        &up,
        "default",
        "lost-mirror",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    eventually(Duration::from_secs(10), || {
        assert_eq!(who(port, "lost.example", "/found", &[]), "prim");
        (seen(&m2_log, "/found").0 > 0).then_some(())
    });
}
