//! Gateway API route changes against the Ingress path, in one run: `switchyard server` and a
//! separate `switchyard node` (so its memory is the agent's alone), a fresh pair per path.
//!
//! For each path (Ingress objects on the ingress port; HTTPRoutes of a Gateway listener):
//! - `--routes` objects, one host each, all to Service `a`;
//! - propagation: one object after another is changed to Service `b` (a merge patch); from the
//!   API's answer to the first request through the router that `b` answers (a keep-alive client
//!   polling that host), p50 / p99 / max;
//! - hitless: the same changes (back to `a`) under constant load from `--load` keep-alive
//!   connections on the hosts being changed; every answer must be a 200 from `a` or `b`, and any
//!   other answer or broken connection counts as failed;
//! - memory: the agent's resident set before the objects, with `--routes`, and with
//!   `--memory-routes` objects.
//!
//! Usage: gateway-bench --switchyard target/release/switchyard --crds DIR

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_bench::api::{
    api_creates, cpu_seconds, free_port, rss_mb, start_server_with, wait_for_port, Proc, Target,
};
use switchyard_bench::Samples;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// The Gateway API CRD files (bench/peers/gateway-api.sh prints the directory).
    #[arg(long)]
    crds: PathBuf,
    #[arg(long, default_value_t = 3000)]
    routes: usize,
    #[arg(long, default_value_t = 5000)]
    memory_routes: usize,
    /// Changes measured (each on a different object).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Keep-alive connections of constant load during the hitless run.
    #[arg(long, default_value_t = 4)]
    load: usize,
    /// Only this path (`ingress` or `httproute`).
    #[arg(long)]
    only: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ingress,
    Gateway,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ingress => "Ingress",
            Kind::Gateway => "HTTPRoute",
        }
    }

    fn collection(self) -> &'static str {
        match self {
            Kind::Ingress => "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
            Kind::Gateway => "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
        }
    }

    /// Object `i`: host `host-i.example` to Service `svc`.
    fn object(self, i: usize, svc: &str) -> serde_json::Value {
        let host = format!("host-{i}.example");
        match self {
            Kind::Ingress => serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": format!("r-{i}")},
                "spec": {"ingressClassName": "bench", "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]},
            }),
            Kind::Gateway => serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": format!("r-{i}")},
                "spec": {"parentRefs": [{"name": "bench"}], "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": svc, "port": 80}]}]},
            }),
        }
    }

    /// The merge patch that points object `i` at `svc`.
    fn patch(self, i: usize, svc: &str) -> String {
        let mut v = self.object(i, svc);
        let spec = v["spec"].take();
        serde_json::json!({ "spec": spec }).to_string()
    }
}

/// A backend that answers every request with its one-letter name.
async fn backend(name: &'static str) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut s = BufReader::new(s);
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{name}");
                let mut line = String::new();
                loop {
                    // A request: lines up to the empty one (no bodies here).
                    line.clear();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A keep-alive HTTP/1.1 client of the router.
struct Client {
    port: u16,
    s: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client { port, s: None }
    }

    /// GET / for `host`: (status, body). A broken connection is an error (and reconnects next
    /// time).
    async fn get(&mut self, host: &str) -> Result<(u16, Vec<u8>)> {
        let r = self.exchange(host).await;
        if r.is_err() {
            self.s = None;
        }
        r
    }

    async fn exchange(&mut self, host: &str) -> Result<(u16, Vec<u8>)> {
        if self.s.is_none() {
            let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
            tcp.set_nodelay(true)?;
            self.s = Some(BufReader::new(tcp));
        }
        let s = self.s.as_mut().expect("connected");
        s.get_mut()
            .write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        s.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status line")?;
        let mut length = 0;
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 {
                bail!("closed in the headers");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        s.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// Polls `host` until `want` answers; how long it took.
async fn until_served(
    c: &mut Client,
    host: &str,
    want: &[u8],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = c.get(host).await {
            if body == want {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            bail!(
                "{host} was not served by {} within {limit:?}",
                String::from_utf8_lossy(want)
            );
        }
    }
}

/// Waits until a process has been (nearly) idle for a second (status writes done).
async fn wait_idle(pid: u32) -> Result<()> {
    let start = Instant::now();
    loop {
        let before = cpu_seconds(Some(pid))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(Some(pid))? - before < 0.03 || start.elapsed() > Duration::from_secs(300) {
            return Ok(());
        }
    }
}

fn kubectl(data: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(data.join("admin.kubeconfig"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The agent's snapshot builds so far: (count, seconds).
async fn builds(metrics: u16) -> Result<(f64, f64)> {
    let text = switchyard_bench::http_get(metrics, "/metrics").await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("switchyard_snapshot_build_duration_seconds_count "),
        value("switchyard_snapshot_build_duration_seconds_sum "),
    ))
}

struct Figures {
    /// The agent's mean snapshot build during the idle changes, ms.
    build_ms: f64,
    propagation: Samples,
    under_load: Samples,
    requests: u64,
    failed: u64,
    rss: [f64; 3],
}

/// Changes objects `0..n` to `to`, one after another, each timed until the router serves it.
async fn changes(
    target: &Target,
    path: Kind,
    port: u16,
    n: usize,
    to: &'static str,
) -> Result<Samples> {
    let mut api = target.connect().await?;
    let mut client = Client::new(port);
    let mut samples = Samples::new();
    for i in 0..n {
        let url = format!("{}/r-{i}", path.collection());
        api.merge_patch(&url, path.patch(i, &format!("svc-{to}")))
            .await?;
        let took = until_served(
            &mut client,
            &format!("host-{i}.example"),
            to.as_bytes(),
            Duration::from_secs(30),
        )
        .await?;
        samples.record(took.as_micros() as u64);
    }
    Ok(samples)
}

async fn run(args: &Args, path: Kind) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (_server, target) =
        start_server_with(&args.switchyard, &data, &["--allow-loopback-endpoints"]).await?;
    let (http, https, metrics, listener) = (free_port(), free_port(), free_port(), free_port());
    let mut api = target.connect().await?;
    for name in ["a", "b"] {
        let port = backend(name).await?;
        api.create(
            "/api/v1/namespaces/default/services",
            serde_json::json!({"metadata": {"name": format!("svc-{name}")}, "spec": {"ports": [{"port": 80}]}}).to_string(),
        )
        .await?;
        api.create(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            serde_json::json!({
                "metadata": {"name": format!("svc-{name}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{name}")}},
                "addressType": "IPv4",
                "ports": [{"port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"]}],
            })
            .to_string(),
        )
        .await?;
    }
    let port = match path {
        Kind::Ingress => {
            api.create(
                "/apis/networking.k8s.io/v1/ingressclasses",
                serde_json::json!({"metadata": {"name": "bench"},
                    "spec": {"controller": "switchyard.io/ingress-controller"}})
                .to_string(),
            )
            .await?;
            http
        }
        Kind::Gateway => {
            let mut files = vec!["apply".to_string(), "--server-side".to_string()];
            for e in std::fs::read_dir(&args.crds)? {
                let p = e?.path();
                let name = p.to_string_lossy().to_string();
                if name.ends_with(".yaml") && !name.contains("_vap_") {
                    files.extend(["-f".to_string(), name]);
                }
            }
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            kubectl(&data, &files)?;
            kubectl(
                &data,
                &[
                    "wait",
                    "--for",
                    "condition=Established",
                    "crd",
                    "--all",
                    "--timeout=60s",
                ],
            )?;
            api.create(
                "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
                serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                    "metadata": {"name": "bench"}, "spec": {"controllerName": "switchyard.io/gateway-controller"}})
                .to_string(),
            )
            .await?;
            api.create(
                "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
                serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "bench"}, "spec": {"gatewayClassName": "bench",
                    "listeners": [{"name": "http", "port": listener, "protocol": "HTTP"}]}})
                .to_string(),
            )
            .await?;
            listener
        }
    };
    let node = Proc::start(
        std::process::Command::new(&args.switchyard)
            .env("RUST_LOG", "warn")
            .arg("node")
            .arg("--kubeconfig")
            .arg(data.join("admin.kubeconfig"))
            .args(["--node-name", "bench"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--ingress-http", &format!("127.0.0.1:{http}")])
            .args(["--ingress-https", &format!("127.0.0.1:{https}")])
            .args(["--ingress-access-log", "false"]),
        "switchyard node",
    )?;
    let pid = node.0.id();
    wait_for_port(metrics, "the node agent")?;
    // The first object, served, before anything is measured.
    api.create(path.collection(), path.object(0, "svc-a").to_string())
        .await?;
    until_served(
        &mut Client::new(port),
        "host-0.example",
        b"a",
        Duration::from_secs(60),
    )
    .await?;
    wait_idle(pid).await?;
    let rss0 = rss_mb(pid)?;
    let create = |from: usize, to: usize| {
        api_creates(&target, 8, to - from, path.collection(), move |i| {
            path.object(from + i, "svc-a").to_string()
        })
    };
    // Objects `from..to` created, the last one served, the agent idle: its RSS.
    let fill = |from: usize, to: usize| async move {
        create(from, to).await?;
        let last = format!("host-{}.example", to - 1);
        until_served(
            &mut Client::new(port),
            &last,
            b"a",
            Duration::from_secs(120),
        )
        .await?;
        wait_idle(pid).await?;
        rss_mb(pid)
    };
    let rss1 = fill(1, args.routes).await?;

    let before = builds(metrics).await?;
    let propagation = changes(&target, path, port, args.changes, "b").await?;
    let after = builds(metrics).await?;
    let build_ms = (after.1 - before.1) * 1000.0 / (after.0 - before.0).max(1.0);
    wait_idle(pid).await?;

    // The same objects back to `a`, under load on exactly those hosts.
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for c in 0..args.load {
        let (stop, requests, failed) = (stop.clone(), requests.clone(), failed.clone());
        let hosts = args.changes;
        load.push(tokio::spawn(async move {
            let mut client = Client::new(port);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let host = format!("host-{}.example", i % hosts);
                i += 7;
                requests.fetch_add(1, Ordering::Relaxed);
                match client.get(&host).await {
                    Ok((200, body)) if body == b"a" || body == b"b" => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let under_load = changes(&target, path, port, args.changes, "a").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await?;
    }
    wait_idle(pid).await?;

    let rss2 = fill(args.routes, args.memory_routes).await?;
    drop(node);
    Ok(Figures {
        build_ms,
        propagation,
        under_load,
        requests: requests.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        rss: [rss0, rss1, rss2],
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "route changes: {} objects (one host each), {} changes, {} load connections; agent memory at {} objects",
        args.routes, args.changes, args.load, args.memory_routes
    );
    for path in [Kind::Ingress, Kind::Gateway] {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !path.name().eq_ignore_ascii_case(o))
        {
            continue;
        }
        let mut f = run(&args, path).await?;
        println!("\n## {} ({} objects)", path.name(), args.routes);
        for (what, s) in [
            ("idle", &mut f.propagation),
            ("under load", &mut f.under_load),
        ] {
            println!(
                "propagation, API answer -> router serves it ({what}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(s.quantile(0.5)),
                ms(s.quantile(0.99)),
                ms(s.max())
            );
        }
        println!(
            "of which the agent's snapshot build: {:.2} ms (mean over the idle changes)",
            f.build_ms
        );
        println!(
            "hitless: {} requests during {} changes, {} failed",
            f.requests, args.changes, f.failed
        );
        println!(
            "agent memory (RSS): {:.1} MB with 1 object, {:.1} MB with {} (+{:.1}), {:.1} MB with {} (+{:.1})",
            f.rss[0],
            f.rss[1],
            args.routes,
            f.rss[1] - f.rss[0],
            f.rss[2],
            args.memory_routes,
            f.rss[2] - f.rss[0]
        );
    }
    Ok(())
}
