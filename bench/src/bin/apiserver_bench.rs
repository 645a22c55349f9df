//! Control-plane benchmark: `switchyard server` side by side with kube-apiserver on its etcd
//! (both built by `bench/peers/build.sh`) and with raw etcd puts, on this machine.
//!
//! Prints, in one run, for each API server through the same HTTPS/1.1 clients:
//! - creates/s with 1 and with 32 concurrent clients (ConfigMaps; etcd puts of the same size
//!   with the same concurrency through etcd-client, etcd durable on loopback);
//! - Service and EndpointSlice creates/s, then LIST of 10,000 Services, p50/p99;
//! - RSS with 10,000 Services and 100,000 endpoints (10,000 EndpointSlices x 10; for
//!   kube-apiserver, its own and etcd's);
//! - creates/s while 100 and 500 watchers receive every event;
//! - watch delivery latency to 100 and 1,000 watchers (write sent -> event read), p50/p99.
//!
//! Usage: apiserver-bench --switchyard target/release/switchyard [--etcd /usr/bin/etcd]
//!        [--peers DIR]   (kube-apiserver and etcd from bench/peers/build.sh)

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{
    api_creates, cpu_seconds, free_port, rss_mb, run_parallel, spawn_watchers, start_server,
    wait_for_port, Proc, Target,
};
use switchyard_bench::peers::KubeApiserver;
use switchyard_bench::Samples;

#[derive(Parser)]
struct Args {
    /// The switchyard binary (build it with --release).
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// The etcd binary (Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Creates per concurrency level.
    #[arg(long, default_value_t = 3000)]
    creates: usize,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Watch-delivery runs: this many watchers each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    watchers: Vec<usize>,
    /// Where bench/peers/build.sh put kube-apiserver and etcd; without it, switchyard alone.
    #[arg(long)]
    peers: Option<PathBuf>,
}

fn configmap(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"app":"bench"}}}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(200)
    )
}

fn service(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}","labels":{{"app":"bench"}}}},"spec":{{"ports":[{{"name":"http","port":80,"targetPort":8080}}]}}}}"#
    )
}

/// The endpoints in each benchmark EndpointSlice.
const ENDPOINTS_PER_SLICE: usize = 10;
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

fn slice(i: usize) -> String {
    let n = ENDPOINTS_PER_SLICE;
    let eps: Vec<String> = (0..n)
        .map(|e| {
            let ip = 10 * 65536 * 256 + i * n + e + 1;
            let addr = format!(
                "{}.{}.{}.{}",
                ip >> 24,
                (ip >> 16) & 255,
                (ip >> 8) & 255,
                ip & 255
            );
            format!(
                r#"{{"addresses":["{addr}"],"conditions":{{"ready":true}},"nodeName":"node-{}"}}"#,
                e % 4
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-abc","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{}]}}"#,
        eps.join(",")
    )
}

async fn etcd_puts(endpoint: &str, clients: usize, total: usize, prefix: &str) -> Result<f64> {
    let (endpoint, prefix) = (endpoint.to_string(), prefix.to_string());
    run_parallel(clients, total, move |_| {
        let (endpoint, prefix) = (endpoint.clone(), prefix.clone());
        async move {
            let client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
            let op: Box<
                dyn FnMut(usize) -> futures::future::BoxFuture<'static, Result<()>> + Send,
            > = Box::new(move |i| {
                let mut kv = client.kv_client();
                let key = format!("/registry/configmaps/default/{prefix}-{i}");
                let value = configmap(&format!("{prefix}-{i}"));
                Box::pin(async move {
                    kv.put(key, value, None).await?;
                    Ok(())
                })
            });
            Ok(op)
        }
    })
    .await
}

/// How long the watchers may take, after the last write, to receive every event.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

/// Waits until `counter` reaches `want` or [`DELIVERY_LIMIT`] passes; the count then, as text
/// when short of `want`.
async fn await_count(counter: &AtomicUsize, want: usize) -> Option<String> {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < want && start.elapsed() < DELIVERY_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = counter.load(Ordering::Relaxed);
    (got < want).then(|| {
        format!(
            "only {got} of {want} events reached the watchers within {} s of the last write",
            DELIVERY_LIMIT.as_secs()
        )
    })
}

/// Watches ConfigMaps with `n` independent streams and records, for each event, the time since
/// its write was sent (the write's start time is in the object name). Each run writes and
/// watches a label of its own, so no watcher sees an earlier run's objects.
async fn watch_latency(target: &Target, n: usize, writes: usize) -> Result<Samples> {
    let epoch = Instant::now();
    let hist = Arc::new(std::sync::Mutex::new(Samples::new()));
    let received = Arc::new(AtomicUsize::new(0));
    let (h, r) = (hist.clone(), received.clone());
    let on_event = Arc::new(move |text: &str| {
        // Names are "w-<micros since epoch>".
        if let Some(start) = text.find("\"name\":\"w-") {
            let rest = &text[start + 10..];
            let micros: u64 = rest[..rest.find('"').unwrap_or(0)].parse().unwrap_or(0);
            let now = epoch.elapsed().as_micros() as u64;
            h.lock().unwrap().record(now.saturating_sub(micros));
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let watchers = spawn_watchers(
        target,
        n,
        &format!("/api/v1/namespaces/default/configmaps?watch=1&labelSelector=app%3Dwatch-{n}&resourceVersion=0"),
        on_event,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut writer = target.connect().await?;
    for _ in 0..writes {
        let micros = epoch.elapsed().as_micros();
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"w-{micros}","labels":{{"app":"watch-{n}"}}}},"data":{{"k":"v"}}}}"#
        );
        writer
            .create("/api/v1/namespaces/default/configmaps", body)
            .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let short = await_count(&received, writes * n).await;
    for w in watchers {
        w.abort();
    }
    if let Some(short) = short {
        println!("{n} watchers: {short}");
    }
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

/// What one API server measured.
#[derive(Default)]
struct Figures {
    creates: Vec<(usize, f64)>,
    service_creates: f64,
    slice_creates: f64,
    list_p50_ms: f64,
    list_p99_ms: f64,
    rss_mb: f64,
    under_watch: Vec<(usize, f64)>,
    delivery: Vec<(usize, f64, f64)>,
}

/// The whole workload against one API server; `pids` are the processes whose RSS and CPU count.
async fn measure(name: &str, target: &Target, pids: &[u32], args: &Args) -> Result<Figures> {
    let mut f = Figures::default();
    let rss = || -> Result<f64> { pids.iter().map(|p| rss_mb(*p)).sum() };
    let cpu = || -> Result<f64> { pids.iter().map(|p| cpu_seconds(Some(*p))).sum() };
    println!("\n# {name}");
    for clients in [1usize, 32] {
        let body = move |i: usize| configmap(&format!("c{clients}-{i}"));
        let rate = api_creates(target, clients, args.creates, CONFIGMAPS, body).await?;
        println!("ConfigMap creates/s, {clients} clients: {rate:.0}");
        f.creates.push((clients, rate));
    }
    f.service_creates = api_creates(
        target,
        32,
        args.services,
        "/api/v1/namespaces/default/services",
        service,
    )
    .await?;
    println!(
        "Service creates/s (32 clients, with ClusterIP allocation): {:.0}",
        f.service_creates
    );
    f.slice_creates = api_creates(
        target,
        32,
        args.services,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        slice,
    )
    .await?;
    println!(
        "EndpointSlice creates/s (32 clients, {ENDPOINTS_PER_SLICE} endpoints each): {:.0}",
        f.slice_creates
    );
    let mut conn = target.connect().await?;
    let mut list = Samples::new();
    for _ in 0..50 {
        let start = Instant::now();
        let (status, body) = conn
            .request("GET", "/api/v1/namespaces/default/services", Bytes::new())
            .await?;
        list.record(start.elapsed().as_micros() as u64);
        if status != 200 {
            bail!("list: {status}");
        }
        if !body.starts_with(b"{\"kind\":\"ServiceList\"") {
            bail!("list: unexpected body");
        }
    }
    (f.list_p50_ms, f.list_p99_ms) = (
        list.quantile(0.5) as f64 / 1000.0,
        list.quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "LIST {} Services (full JSON, 50 requests): p50 {:.1} ms, p99 {:.1} ms",
        args.services + 1,
        f.list_p50_ms,
        f.list_p99_ms
    );
    f.rss_mb = rss()?;
    println!(
        "RSS with {} Services and {} endpoints: {:.0} MB",
        args.services,
        args.services * ENDPOINTS_PER_SLICE,
        f.rss_mb
    );

    for n in [100usize, 500] {
        let received = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        let count = Arc::new(move |text: &str| {
            if text.starts_with("{\"type\":\"ADDED\"") {
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        let ns = format!("bench-{n}");
        let watchers = spawn_watchers(
            target,
            n,
            &format!("/api/v1/namespaces/{ns}/configmaps?watch=1"),
            count,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        target
            .connect()
            .await?
            .create(
                "/api/v1/namespaces",
                format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#),
            )
            .await?;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let (server_cpu, client_cpu) = (cpu()?, cpu_seconds(None)?);
        let rate = api_creates(target, 32, args.creates, &path, move |i| {
            configmap(&format!("w{n}-{i}"))
        })
        .await?;
        let short = await_count(&received, args.creates * n).await;
        let server_cpu = cpu()? - server_cpu;
        let client_cpu = cpu_seconds(None)? - client_cpu;
        for w in watchers {
            w.abort();
        }
        println!(
            "{n} watchers get every event: {rate:.0} creates/s (32 clients); {}; CPU used: server {server_cpu:.1} s, benchmark client {client_cpu:.1} s",
            short.unwrap_or_else(|| "every watcher got every event".into())
        );
        f.under_watch.push((n, rate));
    }

    for &n in &args.watchers {
        let mut h = watch_latency(target, n, 200).await?;
        let (p50, p99) = (
            h.quantile(0.5) as f64 / 1000.0,
            h.quantile(0.99) as f64 / 1000.0,
        );
        println!(
            "watch delivery to {n} watchers (write sent -> event read; 200 writes 5 ms apart): {} of {} events, p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
            h.count(),
            200 * n,
            h.max() as f64 / 1000.0
        );
        f.delivery.push((n, p50, p99));
    }
    println!("RSS after the watch runs: {:.0} MB", rss()?);
    Ok(f)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    println!(
        "# apiserver-bench on {} cores; switchyard {}; etcd {}; kube-apiserver {}",
        std::thread::available_parallelism()?.get(),
        args.switchyard.display(),
        args.etcd.display(),
        args.peers.as_ref().map_or("not measured".into(), |p| p
            .join("kube-apiserver")
            .display()
            .to_string()),
    );

    // etcd, durable (its default: fsync on every commit), loopback only.
    let (ec, ep) = (free_port(), free_port());
    let etcd = Proc::start(
        Command::new(&args.etcd)
            .args(["--data-dir", dir.path().join("etcd").to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{ec}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{ec}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{ep}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{ep}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{ep}"),
                "--log-level",
                "error",
            ]),
        "etcd",
    )?;
    wait_for_port(ec, "etcd")?;
    let etcd_endpoint = format!("http://127.0.0.1:{ec}");
    println!(
        "\n# raw etcd puts ({} of a ~300-byte ConfigMap's JSON each)",
        args.creates
    );
    let mut raw = Vec::new();
    for clients in [1usize, 32] {
        let rate = etcd_puts(
            &etcd_endpoint,
            clients,
            args.creates,
            &format!("c{clients}"),
        )
        .await?;
        println!("puts/s, {clients} clients: {rate:.0}");
        raw.push(rate);
    }
    drop(etcd);

    let ours = {
        let (server, target) =
            start_server(&args.switchyard, &dir.path().join("switchyard")).await?;
        measure("switchyard server", &target, &[server.0.id()], &args).await?
    };
    let theirs = match &args.peers {
        Some(peers) => {
            let k = KubeApiserver::start(peers, &dir.path().join("kube")).await?;
            let pids = [k.apiserver.0.id(), k.etcd.0.id()];
            Some(measure("kube-apiserver + etcd", &k.target, &pids, &args).await?)
        }
        None => None,
    };

    println!("\n# side by side");
    let them = |get: &dyn Fn(&Figures) -> f64| {
        theirs
            .as_ref()
            .map_or("-".to_string(), |t| format!("{:.1}", get(t)))
    };
    println!(
        "{:<58} {:>12} {:>16}",
        "figure", "switchyard", "kube-apiserver"
    );
    let row = |what: String, get: &dyn Fn(&Figures) -> f64| {
        println!("{what:<58} {:>12.1} {:>16}", get(&ours), them(get));
    };
    for (i, (clients, _)) in ours.creates.iter().enumerate() {
        row(
            format!(
                "ConfigMap creates/s, {clients} clients (raw etcd puts: {:.0})",
                raw[i]
            ),
            &move |f: &Figures| f.creates[i].1,
        );
    }
    row("Service creates/s, 32 clients".into(), &|f: &Figures| {
        f.service_creates
    });
    row(
        "EndpointSlice creates/s, 32 clients".into(),
        &|f: &Figures| f.slice_creates,
    );
    row(
        format!("LIST {} Services p50 ms", args.services + 1),
        &|f: &Figures| f.list_p50_ms,
    );
    row(
        format!("LIST {} Services p99 ms", args.services + 1),
        &|f: &Figures| f.list_p99_ms,
    );
    row(
        "RSS MB (kube-apiserver: with etcd)".into(),
        &|f: &Figures| f.rss_mb,
    );
    for (i, (n, _)) in ours.under_watch.iter().enumerate() {
        row(
            format!("creates/s while {n} watchers get every event"),
            &move |f: &Figures| f.under_watch[i].1,
        );
    }
    for (i, (n, _, _)) in ours.delivery.iter().enumerate() {
        row(
            format!("watch delivery to {n} watchers p50 ms"),
            &move |f: &Figures| f.delivery[i].1,
        );
        row(
            format!("watch delivery to {n} watchers p99 ms"),
            &move |f: &Figures| f.delivery[i].2,
        );
    }
    Ok(())
}
