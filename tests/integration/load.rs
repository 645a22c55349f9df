//! `switchyard load` against servers the tests start on loopback (and `switchyard up` for the
//! Service, DNS and TLS cases): counts, status codes, the open-loop correction, HTTP/2 streams,
//! backend distribution, the JSON report, and clear errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};

use crate::agent::{service, set_backends, SERVICE_PORT};
use crate::support::{bin, eventually_async, Up};

/// What a test backend saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct Behaviour {
    name: &'static str,
    /// Delay before every response.
    delay: Duration,
    /// (n, how long): the n-th request (from 1) waits this long.
    stall: Option<(u64, Duration)>,
    /// The status of the n-th request.
    status: fn(u64) -> u16,
}

impl Behaviour {
    fn ok(name: &'static str) -> Self {
        Behaviour {
            name,
            delay: Duration::ZERO,
            stall: None,
            status: |_| 200,
        }
    }
}

/// An HTTP/1.1 + h2c server on a free loopback port.
async fn backend(b: Behaviour) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (b, s) = (Arc::new(b), seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::Relaxed);
            let (b, s) = (b.clone(), s.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (b, s) = (b.clone(), s.clone());
                    async move {
                        let n = s.requests.fetch_add(1, Ordering::Relaxed) + 1;
                        let now = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                        s.max_in_flight.fetch_max(now, Ordering::Relaxed);
                        let mut wait = b.delay;
                        if let Some((at, d)) = b.stall {
                            if n == at {
                                wait += d;
                            }
                        }
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        s.in_flight.fetch_sub(1, Ordering::Relaxed);
                        let resp = http::Response::builder()
                            .status((b.status)(n))
                            .header("x-backend", b.name)
                            .body(Full::new(Bytes::from_static(b"hello")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Runs `switchyard load ARGS --json`; (exit success, report or null, stderr).
async fn load(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = tokio::process::Command::new(bin())
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn load_ok(args: &[&str]) -> serde_json::Value {
    let (ok, report, err) = load(args).await;
    assert!(ok, "switchyard load {args:?}: {err}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_status_codes_are_exact_and_the_json_is_stable() {
    let (addr, seen) = backend(Behaviour {
        status: |n| if n % 10 == 0 { 503 } else { 200 },
        ..Behaviour::ok("a")
    })
    .await;
    let url = format!("http://{addr}/x");
    let r = load_ok(&[&url, "-n", "1000", "-c", "4", "-t", "2"]).await;
    assert_eq!(r["requests"], 1000);
    assert_eq!(r["status"]["200"], 900);
    assert_eq!(r["status"]["503"], 100);
    assert_eq!(seen.requests.load(Ordering::Relaxed), 1000);
    for class in ["connect", "timeout", "reset", "protocol"] {
        assert_eq!(r["errors"][class], 0, "{class}");
    }
    assert!(r["bytes"].as_u64().unwrap() >= 1000 * 5);
    // The schema: these keys, no others (scripts depend on them).
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "backends",
            "backends_by",
            "bytes",
            "connections",
            "duration_seconds",
            "errors",
            "interrupted",
            "latency_us",
            "mode",
            "rate",
            "requests",
            "requests_per_second",
            "schema",
            "status",
            "targets",
            "threads"
        ]
    );
    assert_eq!(r["schema"], "switchyard-load/v1");
    assert_eq!(r["mode"], "http1");
    let mut lat: Vec<&str> = r["latency_us"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    lat.sort();
    assert_eq!(lat, ["max", "mean", "p50", "p90", "p99", "p99.9", "p99.99"]);
    assert!(r["latency_us"]["p50"].as_u64().unwrap() <= r["latency_us"]["max"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn open_loop_latency_counts_from_when_a_request_was_due() {
    // The 50th request stalls for one second. At 100 requests/s on one connection, about 100
    // requests fall due during the stall and wait for it: with latency counted from when each
    // was due, more than 1% of a 3-second run is at least 0.9 s.
    let stall = || Behaviour {
        stall: Some((50, Duration::from_secs(1))),
        ..Behaviour::ok("a")
    };
    let (addr, _) = backend(stall()).await;
    let url = format!("http://{addr}/");
    let r = load_ok(&[&url, "--rate", "100", "-c", "1", "-t", "1", "-d", "3s"]).await;
    assert_eq!(r["rate"], 100.0);
    let p99 = r["latency_us"]["p99"].as_u64().unwrap();
    assert!(p99 >= 900_000, "open loop p99 {p99} µs hides the stall");
    // Closed loop sees the stall once, as one slow request.
    let (addr, _) = backend(stall()).await;
    let url = format!("http://{addr}/");
    let r = load_ok(&[&url, "-c", "1", "-t", "1", "-d", "3s"]).await;
    assert!(r["latency_us"]["max"].as_u64().unwrap() >= 1_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_runs_many_streams_on_one_connection() {
    let (addr, seen) = backend(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::ok("a")
    })
    .await;
    let url = format!("http://{addr}/");
    let r = load_ok(&[&url, "--http2", "-c", "1", "--streams", "8", "-n", "200"]).await;
    assert_eq!(r["mode"], "http2");
    assert_eq!(r["requests"], 200);
    assert_eq!(r["status"]["200"], 200);
    // The pre-flight reachability check is one more connection.
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
    assert!(seen.max_in_flight.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_by_name_spreads_over_its_three_backends_and_dns_mode_counts_answers() {
    let up = Up::start(&[], true);
    let client = up.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut addrs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        addrs.push(backend(Behaviour::ok(name)).await.0);
    }
    svcs.create(&PostParams::default(), &service("web", "TCP", false))
        .await
        .unwrap();
    set_backends(&slices, "web", "TCP", &addrs).await;
    let dns = format!("127.0.0.1:{}", up.dns);
    let url = format!("http://web.default.svc.cluster.local:{SERVICE_PORT}/");
    // Wait until the name resolves and the ClusterIP serves all three.
    let r = eventually_async(Duration::from_secs(30), || {
        let (dns, url) = (dns.clone(), url.clone());
        async move {
            let (ok, r, _) = load(&[
                &url,
                "--dns",
                &dns,
                "--backend-header",
                "X-Backend",
                "-n",
                "600",
                "-c",
                "6",
            ])
            .await;
            (ok && r["backends"].as_object().is_some_and(|b| b.len() == 3)).then_some(r)
        }
    })
    .await;
    assert_eq!(r["backends_by"], "header X-Backend");
    let counts: Vec<u64> = r["backends"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 600);
    // Six kept-alive connections, two per backend: their request rates differ when the
    // machine is busy, so the shares are not even, but every backend has its part.
    assert!(counts.iter().all(|c| *c >= 30), "unbalanced: {counts:?}");

    // DNS mode against the cluster DNS: one name that exists, one that does not.
    let queries = up.dir.path().join("queries.txt");
    std::fs::write(
        &queries,
        "# name type\nweb.default.svc.cluster.local A\nnothere.default.svc.cluster.local A\n",
    )
    .unwrap();
    let r = load_ok(&[
        &format!("dns://{dns}"),
        "--queries",
        queries.to_str().unwrap(),
        "-n",
        "100",
        "-c",
        "1",
    ])
    .await;
    assert_eq!(r["mode"], "dns");
    assert_eq!(r["status"]["NOERROR"], 50);
    assert_eq!(r["status"]["NXDOMAIN"], 50);

    // HTTPS through the ingress router's default certificate: accepted with --insecure,
    // refused without.
    let https = format!("https://127.0.0.1:{}/", up.https);
    let r = load_ok(&[&https, "-k", "-n", "20", "-c", "2"]).await;
    assert_eq!(r["status"]["404"], 20, "{r}");
    let r = load_ok(&[&https, "-n", "5", "-c", "1"]).await;
    assert_eq!(
        (r["requests"].as_u64(), r["errors"]["connect"].as_u64()),
        (Some(0), Some(5))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_mode_counts_connections_and_a_plot_is_written() {
    let (addr, seen) = backend(Behaviour::ok("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("latency.svg");
    let r = load_ok(&[
        &format!("tcp://{addr}"),
        "-n",
        "300",
        "-c",
        "3",
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert_eq!(r["mode"], "tcp");
    assert_eq!(r["status"]["connected"], 300);
    assert_eq!(r["errors"]["connect"], 0);
    // The server saw them (not necessarily all: a connection reset while it still waits in the
    // accept queue is never accepted).
    assert!(seen.connections.load(Ordering::Relaxed) > 1);
    let svg = std::fs::read_to_string(plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_prints_the_report_for_what_ran() {
    let (addr, _) = backend(Behaviour::ok("a")).await;
    let child = tokio::process::Command::new(bin())
        .args([
            "load",
            &format!("http://{addr}/"),
            "-d",
            "60s",
            "-c",
            "2",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("load did not stop on SIGINT")
        .unwrap();
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["interrupted"], true);
    assert!(r["requests"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_urls_flags_and_unreachable_targets_get_clear_errors() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for (args, expect) in [
        (vec!["127.0.0.1:80"], "bad URL"),
        (vec!["ftp://127.0.0.1/"], "unknown scheme"),
        (vec!["tcp://127.0.0.1"], "needs a port"),
        (vec!["http://127.0.0.1/", "--rate", "0"], "--rate"),
        (vec!["http://127.0.0.1/", "-c", "0"], "at least 1"),
        (vec!["http://127.0.0.1/", "-H", "no colon"], "Name: value"),
        (
            vec!["http://127.0.0.1/", "-m", "GE T"],
            "not an HTTP method",
        ),
        (vec!["dns://127.0.0.1:53"], "--queries"),
    ] {
        let (ok, _, err) = load(&args).await;
        assert!(!ok && err.contains(expect), "{args:?}: {err}");
    }
    let (ok, _, err) = load(&[&format!("http://{closed}/"), "-n", "1"]).await;
    assert!(!ok && err.contains("is not reachable"), "{err}");
    let (ok, _, err) = load(&["http://nothere.invalid/", "--dns", "127.0.0.1:9", "-n", "1"]).await;
    assert!(!ok && err.contains("cannot resolve"), "{err}");
}
