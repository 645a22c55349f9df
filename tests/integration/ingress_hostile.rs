//! The ingress router under requests an attacker or a careless client sends: paths that read
//! two ways, two hosts, smuggled upgrades, forged forwarding headers, upstreams that fail,
//! HTTP/2 streams opened and cancelled in a flood, HTTP/2 header lists past the limits, floods of
//! HTTP/2 frames that ask for an answer from clients that read none, clients that ask for large
//! answers and read none, and Ingresses that belong to another controller.
//! Raw requests go over TCP byte for byte, so no client normalises them first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ingress::{apply_ingress, backend, expose, h2c, lb_ips, path, wait_for, ws_backend};
use crate::support::{eventually_async, Up};

/// Sends `head` (the request line and headers, without the blank line) with `Connection: close`
/// and returns the status and the body.
async fn raw(up: &Up, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    let req = format!("{head}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// What the backend saw (its JSON echo) for a raw request that it answered.
async fn seen(up: &Up, head: &str) -> serde_json::Value {
    let (code, body) = raw(up, head).await;
    assert_eq!(code, 200, "{head}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_and_hosts_are_routed_and_forwarded_as_one() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    expose(&client, "public", Some(backend("public").await), None).await;
    expose(&client, "admin", Some(backend("admin").await), None).await;
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "site"},
            "spec": {"rules": [{"host": "h.example", "http": {"paths": [
                path("/public", "Prefix", "public"), path("/admin", "Prefix", "admin")]}}]},
        }),
    )
    .await;
    wait_for(&up, "h.example", "/public", "public").await;

    // Dot segments, encoded or not, are resolved before routing, and the backend gets the path
    // that was routed on: never routed as /public and served as /admin.
    for p in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E./admin/x",
        "/public//../admin/x",
        "/public/./../admin/./x",
    ] {
        let v = seen(&up, &format!("GET {p}?q=1 HTTP/1.1\r\nHost: h.example")).await;
        assert_eq!(
            (v["backend"].as_str(), v["path"].as_str()),
            (Some("admin"), Some("/admin/x")),
            "{p}"
        );
    }
    let v = seen(&up, "GET /public/%7Ex HTTP/1.1\r\nHost: h.example").await;
    assert_eq!(v["path"], "/public/~x");
    // What backends read two ways is refused.
    for p in [
        "/public/..%2Fadmin",
        "/public%5C..%5Cadmin",
        "/public/%00",
        "/public/%zz",
        "/public\\..\\admin",
    ] {
        let (code, body) = raw(&up, &format!("GET {p} HTTP/1.1\r\nHost: h.example")).await;
        assert_eq!(code, 400, "{p}: {body}");
    }

    // One host: the request target's authority and the Host header must agree; the backend
    // gets the host that was routed on.
    let v = seen(
        &up,
        "GET http://h.example/public HTTP/1.1\r\nHost: h.example",
    )
    .await;
    assert_eq!(
        (v["backend"].as_str(), v["host"].as_str()),
        (Some("public"), Some("h.example"))
    );
    let (code, body) = raw(
        &up,
        "GET http://h.example/public HTTP/1.1\r\nHost: evil.example",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = raw(
        &up,
        "GET /public HTTP/1.1\r\nHost: h.example\r\nHost: evil.example",
    )
    .await;
    assert_eq!(code, 400, "two Host headers");

    // Forwarding headers a client sends are replaced, not passed on.
    let v = seen(
        &up,
        "GET /public HTTP/1.1\r\nHost: h.example\r\nForwarded: for=198.51.100.7\r\nX-Real-IP: 198.51.100.7",
    )
    .await;
    assert_eq!(v["xri"], "127.0.0.1");
    assert_eq!(v["fwd"], "for=127.0.0.1;proto=http;host=\"h.example\"");

    // An h2c upgrade never reaches the backend (it would be a raw HTTP/2 tunnel past the
    // rules): the request is served as a plain one.
    let v = seen(
        &up,
        "GET /public HTTP/1.1\r\nHost: h.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    )
    .await;
    assert_eq!(v["upgrade"], "", "{v}");
    assert_eq!(v["version"], "HTTP/1.1");
}

/// An h2c upstream that completes the HTTP/2 handshake and then closes every connection before
/// answering; counts the connections it accepted.
async fn closing_h2c() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                // The server preface: an empty SETTINGS frame. Then read the client's preface
                // and first frames, and hang up without an answer.
                let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_upstreams_are_named_not_located_and_retries_are_bounded() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (closing, accepted) = closing_h2c().await;
    expose(&client, "refused", Some(refused), None).await;
    expose(&client, "closing", Some(closing), Some("kubernetes.io/h2c")).await;
    expose(&client, "ok", Some(backend("ok").await), None).await;
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "bad"},
            "spec": {"rules": [{"host": "b.example", "http": {"paths": [
                path("/refused", "Prefix", "refused"), path("/closing", "Prefix", "closing"),
                path("/ok", "Prefix", "ok")]}}]},
        }),
    )
    .await;
    wait_for(&up, "b.example", "/ok", "ok").await;

    let (code, body) = raw(&up, "GET /refused HTTP/1.1\r\nHost: b.example").await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("service default/refused"), "{body}");
    assert!(
        !body.contains(&refused.to_string()) && !body.contains("127.0.0.1"),
        "{body}"
    );

    let (code, body) = raw(&up, "GET /closing HTTP/1.1\r\nHost: b.example").await;
    assert_eq!(code, 502, "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
    let n = accepted.load(Ordering::Relaxed);
    assert!((1..=4).contains(&n), "the h2c upstream was tried {n} times");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgraded_tunnels_hold_a_connection_slot() {
    let up = Up::start(&["--ingress-max-connections", "3"], false);
    let client = up.client().await;
    expose(&client, "ws", Some(ws_backend().await), None).await;
    expose(&client, "ok", Some(backend("ok").await), None).await;
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ws"},
            "spec": {"rules": [{"host": "w.example", "http": {"paths": [
                path("/ws", "Prefix", "ws"), path("/ok", "Prefix", "ok")]}}]},
        }),
    )
    .await;
    wait_for(&up, "w.example", "/ok", "ok").await;
    let open = || async {
        let tcp = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
        let url = format!("ws://w.example:{}/ws", up.http);
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::client_async(url, tcp),
        )
        .await
        .expect("the router answers an upgrade in time")
    };
    let (mut first, _) = open().await.expect("a first tunnel");
    // The first upgrade's request connection gives its slot back once hyper hands the
    // connection over, which may be a moment after the 101.
    let (mut second, _) =
        eventually_async(Duration::from_secs(10), || async { open().await.ok() }).await;
    // Two tunnels hold two of the three slots: a third upgrade finds none for itself.
    match open().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!(
            "a third tunnel was not refused: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    for ws in [&mut first, &mut second] {
        ws.send("still here".into()).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().into_text().unwrap(),
            "still here"
        );
    }
    // A closed tunnel gives its slot back.
    first.close(None).await.unwrap();
    drop(first);
    eventually_async(Duration::from_secs(10), || async {
        open().await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingresses_of_other_classes_are_left_alone_and_released() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    expose(&client, "a", Some(backend("a").await), None).await;
    let ingress = |name: &str, host: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
            "spec": {"rules": [{"host": host, "http": {"paths": [path("/", "Prefix", "a")]}}]},
        });
        if let Some(a) = extra.get("annotations") {
            v["metadata"]["annotations"] = a.clone();
        }
        if let Some(c) = extra.get("class") {
            v["spec"]["ingressClassName"] = c.clone();
        }
        v
    };
    let api: Api<Ingress> = Api::namespaced(client.clone(), "default");

    // The legacy annotation names another controller's class: the server does not default the
    // class over it, and the agent neither serves it nor writes its status.
    let legacy = serde_json::json!({"annotations": {"kubernetes.io/ingress.class": "nginx"}});
    apply_ingress(&client, ingress("legacy", "legacy.example", legacy)).await;
    apply_ingress(
        &client,
        ingress("mine", "mine.example", serde_json::json!({})),
    )
    .await;
    wait_for(&up, "mine.example", "/", "a").await;
    let got = api.get("legacy").await.unwrap();
    assert_eq!(got.spec.unwrap().ingress_class_name, None);
    assert_eq!(crate::ingress::who(&up, "legacy.example", "/"), "404");
    eventually_async(Duration::from_secs(20), || async {
        (lb_ips(api.get("mine").await.ok()?) == ["127.0.0.1"]).then_some(())
    })
    .await;
    assert!(lb_ips(api.get("legacy").await.unwrap()).is_empty());

    // An Ingress handed to another class stops being served, and our address leaves its status.
    let moved = serde_json::json!({"spec": {"ingressClassName": "nginx"}});
    api.patch("mine", &PatchParams::default(), &Patch::Merge(&moved))
        .await
        .unwrap();
    wait_for(&up, "mine.example", "/", "404").await;
    eventually_async(Duration::from_secs(20), || async {
        lb_ips(api.get("mine").await.ok()?).is_empty().then_some(())
    })
    .await;
}

/// A backend that answers every request `ok` (requests without a body) and counts them.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut chunk).await {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::Relaxed);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, requests)
}

const FLOOD_GET: &str = "GET / HTTP/1.1\r\nHost: flood.example";

/// Routes `flood.example` to a [`counting_backend`] once the router serves it; its count.
async fn counted(up: &Up) -> Arc<AtomicUsize> {
    let client = up.client().await;
    let (addr, requests) = counting_backend().await;
    expose(&client, "counted", Some(addr), None).await;
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "flood"},
            "spec": {"rules": [{"host": "flood.example", "http": {"paths": [
                path("/", "Prefix", "counted")]}}]},
        }),
    )
    .await;
    eventually_async(Duration::from_secs(20), || async {
        (raw(up, FLOOD_GET).await.0 == 200).then_some(())
    })
    .await;
    requests
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes `bytes` to a new connection to the router's plain port and reads until the router
/// closes it (within 10 s).
async fn h2c_raw(up: &Up, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the router ends the connection")
        .ok();
    got
}

/// The error code of the first GOAWAY (type 7) among the frames in `frames`.
fn goaway(mut frames: &[u8]) -> Option<u32> {
    while frames.len() >= 9 {
        let len = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        let payload = frames.get(9..9 + len)?;
        if frames[3] == 7 {
            return Some(u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?));
        }
        frames = &frames[9 + len..];
    }
    None
}

/// The preface, empty settings, and the start of a GET for `host` on stream 1 (from HPACK's
/// static table, the authority a literal).
fn h2c_preface_and_get(host: &str) -> (Vec<u8>, Vec<u8>) {
    let mut open = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    open.extend(h2_frame(4, 0, 0, &[]));
    let mut block = vec![0x82, 0x86, 0x84, 0x01, host.len() as u8];
    block.extend_from_slice(host.as_bytes());
    (open, block)
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_opened_and_reset_at_once_end_the_connection() {
    let up = Up::start(&[], false);
    let requests = counted(&up).await;
    let before = requests.load(Ordering::Relaxed);

    // Cleartext HTTP/2, byte for byte: the preface, empty settings, then a thousand requests
    // (GET http://flood.example/ from HPACK's static table and a literal authority), each
    // cancelled by the client in the same write — the "rapid reset" attack.
    let (mut flood, block) = h2c_preface_and_get("flood.example");
    const STREAMS: u32 = 1000;
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        // HEADERS with END_STREAM and END_HEADERS; RST_STREAM with CANCEL.
        flood.extend(h2_frame(1, 0x5, id, &block));
        flood.extend(h2_frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let got = h2c_raw(&up, &flood).await;
    assert_eq!(
        goaway(&got),
        Some(11),
        "no GOAWAY with ENHANCE_YOUR_CALM in {} bytes",
        got.len()
    );
    let forwarded = requests.load(Ordering::Relaxed) - before;
    assert!(
        forwarded < STREAMS as usize / 10,
        "{forwarded} of {STREAMS} cancelled requests were forwarded"
    );
    // Everyone else is still served.
    assert_eq!(raw(&up, FLOOD_GET).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_header_lists_over_the_limits_are_refused() {
    let up = Up::start(&[], false);
    let requests = counted(&up).await;
    let before = requests.load(Ordering::Relaxed);

    // A real client's request with 70 KB of fields, over the 64 KiB the router advertises: 431
    // on its stream, and the connection goes on.
    let mut send = h2c(&up).await;
    let request = |big: Option<&str>| {
        let mut req = http::Request::get("http://flood.example/");
        if let Some(big) = big {
            req = req.header("x-big", big);
        }
        req.body(Full::new(Bytes::new())).unwrap()
    };
    let big = "a".repeat(70_000);
    let resp = send.send_request(request(Some(&big))).await.unwrap();
    assert_eq!(resp.status(), 431);
    let resp = send.send_request(request(None)).await.unwrap();
    assert_eq!(resp.status(), 200);

    // A table bomb: one 4,000-byte field into HPACK's dynamic table, then a hundred one-byte
    // references to it — 400 KB of fields from 4 KB on the wire.
    let (mut bomb, mut block) = h2c_preface_and_get("flood.example");
    // Literal with incremental indexing, new name; the length 4,000 as HPACK's 7-bit integer.
    block.extend_from_slice(&[0x40, 6]);
    block.extend_from_slice(b"x-bomb");
    block.extend_from_slice(&[0x7f, 0xa1, 0x1e]);
    block.extend(std::iter::repeat_n(b'b', 4000));
    // Indexed field 62, the newest dynamic entry.
    block.extend(std::iter::repeat_n(0xbe, 100));
    bomb.extend(h2_frame(1, 0x5, 1, &block));
    let got = h2c_raw(&up, &bomb).await;
    assert_eq!(
        goaway(&got),
        Some(11),
        "table bomb: {} bytes back",
        got.len()
    );

    // A head that never ends: HEADERS without END_HEADERS, then empty CONTINUATION frames.
    let (mut endless, block) = h2c_preface_and_get("flood.example");
    endless.extend(h2_frame(1, 0x1, 1, &block));
    for _ in 0..1000 {
        endless.extend(h2_frame(9, 0, 1, &[]));
    }
    let got = h2c_raw(&up, &endless).await;
    assert_eq!(
        goaway(&got),
        Some(11),
        "CONTINUATION flood: {} bytes back",
        got.len()
    );

    // Only the plain request reached the backend, and others are still served.
    assert_eq!(requests.load(Ordering::Relaxed), before + 1);
    assert_eq!(raw(&up, FLOOD_GET).await.0, 200);
}

/// How large each of [`endless_backend`]'s answers is.
const ENDLESS: usize = 256 << 20;

/// A backend that answers `GET /ready` with `ok` and anything else with [`ENDLESS`] bytes,
/// written as fast as the connection takes them. Returns what it has written of those answers
/// and how many it is still writing.
async fn endless_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (written, writing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (w, busy) = (written.clone(), writing.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (w, busy) = (w.clone(), busy.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut chunk).await {
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    if buf.starts_with(b"GET /ready ") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {ENDLESS}\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    busy.fetch_add(1, Ordering::Relaxed);
                    let zeros = vec![0u8; 64 * 1024];
                    let mut left = ENDLESS;
                    while left > 0 {
                        let n = left.min(zeros.len());
                        if s.write_all(&zeros[..n]).await.is_err() {
                            break;
                        }
                        w.fetch_add(n, Ordering::Relaxed);
                        left -= n;
                    }
                    busy.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            });
        }
    });
    (addr, written, writing)
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_do_not_read_hold_the_upstream_back() {
    let up = Up::start(&[], false);
    let client = up.client().await;
    let (addr, written, writing) = endless_backend().await;
    expose(&client, "endless", Some(addr), None).await;
    apply_ingress(
        &client,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "big"},
            "spec": {"rules": [{"host": "big.example", "http": {"paths": [
                path("/", "Prefix", "endless")]}}]},
        }),
    )
    .await;
    let ready = "GET /ready HTTP/1.1\r\nHost: big.example";
    eventually_async(Duration::from_secs(20), || async {
        (raw(&up, ready).await.0 == 200).then_some(())
    })
    .await;
    let before = rss(up.pid());

    // Two clients ask for a 256 MiB answer and read none of it: one over HTTP/1.1, one over
    // cleartext HTTP/2 that never widens its stream's 64 KiB window.
    let mut h1 = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nHost: big.example\r\n\r\n")
        .await
        .unwrap();
    let (mut ask, block) = h2c_preface_and_get("big.example");
    ask.extend(h2_frame(1, 0x5, 1, &block));
    let mut h2 = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
    h2.write_all(&ask).await.unwrap();

    // The backend gets to write what the sockets on the way hold, and then waits.
    let mut last = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last && writing.load(Ordering::Relaxed) == 2 {
            break;
        }
        last = now;
    }
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent < 64 << 20,
        "the backend wrote {} MiB of two unread answers",
        sent >> 20
    );
    assert_eq!(writing.load(Ordering::Relaxed), 2, "both answers under way");
    let grown = rss(up.pid()).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "the router grew by {} MiB for two unread answers",
        grown >> 20
    );

    // The clients go away, and with them both upstream exchanges.
    drop((h1, h2));
    eventually_async(Duration::from_secs(20), || async {
        (writing.load(Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    assert_eq!(raw(&up, ready).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_control_frame_floods_that_are_not_read_stop_being_read() {
    let up = Up::start(&[], false);
    counted(&up).await;
    let before = rss(up.pid());

    // Two cleartext HTTP/2 clients that never read: one sends PINGs (each owed a PING ACK),
    // the other SETTINGS frames (each owed a SETTINGS ACK), 64 KiB of frames per write, for as
    // long as the router takes them, up to 256 MiB each.
    let flood = |frame: Vec<u8>| {
        let mut chunk = Vec::new();
        while chunk.len() < 64 * 1024 {
            chunk.extend_from_slice(&frame);
        }
        chunk
    };
    let pings = flood(h2_frame(6, 0, 0, &[7; 8]));
    let settings = flood(h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    let mut floods = Vec::new();
    for chunk in [pings, settings] {
        let mut s = TcpStream::connect(("127.0.0.1", up.http)).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
        floods.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while sent < 256 << 20 {
                let write = s.write_all(&chunk);
                match tokio::time::timeout(Duration::from_secs(3), write).await {
                    Ok(Ok(())) => sent += chunk.len(),
                    // The router stopped reading (or closed the connection).
                    _ => break,
                }
            }
            (sent, s)
        }));
    }
    for flood in floods {
        let (sent, _still_open) = flood.await.unwrap();
        assert!(
            sent < 64 << 20,
            "the router read {} MiB of control frames it could not answer",
            sent >> 20
        );
    }
    let grown = rss(up.pid()).saturating_sub(before);
    assert!(grown < 32 << 20, "the router grew by {} MiB", grown >> 20);
    // Others are still served.
    assert_eq!(raw(&up, FLOOD_GET).await.0, 200);
}
