//! Control-plane benchmark: `switchyard server` side by side with etcd on this machine.
//!
//! Prints, in one run:
//! - creates/s with 1 and with 32 concurrent clients (ConfigMaps through the API; etcd puts of
//!   the same size with the same concurrency through etcd-client, etcd durable on loopback);
//! - LIST of 10,000 Services, p50/p99;
//! - watch delivery latency to 100 watchers while writing (write sent -> event read), p50/p99;
//! - server RSS with 10,000 Services and 100,000 endpoints (10,000 EndpointSlices x 10).
//!
//! Usage: apiserver-bench --switchyard target/release/switchyard [--etcd /usr/bin/etcd]

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
    #[arg(long, default_value_t = 100)]
    watchers: usize,
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

/// Waits until `counter` reaches `want` (or 30 s pass); fails if it does not.
async fn await_count(counter: &AtomicUsize, want: usize) -> Result<()> {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < want && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = counter.load(Ordering::Relaxed);
    if got < want {
        bail!("watchers received {got} of {want} events");
    }
    Ok(())
}

/// Watches ConfigMaps with `n` independent streams and records, for each event, the time since
/// its write was sent (the write's start time is in the object name).
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
        "/api/v1/namespaces/default/configmaps?watch=1&labelSelector=app%3Dwatch&resourceVersion=0",
        on_event,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut writer = target.connect().await?;
    for _ in 0..writes {
        let micros = epoch.elapsed().as_micros();
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"w-{micros}","labels":{{"app":"watch"}}}},"data":{{"k":"v"}}}}"#
        );
        writer
            .create("/api/v1/namespaces/default/configmaps", body)
            .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = await_count(&received, writes * n).await;
    for w in watchers {
        w.abort();
    }
    result?;
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    println!(
        "# apiserver-bench on {} cores; switchyard {}; etcd {}",
        std::thread::available_parallelism()?.get(),
        args.switchyard.display(),
        args.etcd.display()
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

    let (server, target) = start_server(&args.switchyard, &dir.path().join("switchyard")).await?;

    println!(
        "\n## creates/s ({} creates of a ~300-byte ConfigMap each; etcd: puts of the same JSON)",
        args.creates
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8}",
        "clients", "switchyard/s", "etcd/s", "ratio"
    );
    for clients in [1usize, 32] {
        let body = move |i: usize| configmap(&format!("c{clients}-{i}"));
        let ours = api_creates(&target, clients, args.creates, CONFIGMAPS, body).await?;
        let theirs = etcd_puts(
            &etcd_endpoint,
            clients,
            args.creates,
            &format!("c{clients}"),
        )
        .await?;
        println!(
            "{clients:<12} {ours:>14.0} {theirs:>14.0} {:>8.2}",
            ours / theirs
        );
    }

    println!(
        "\n## {} Services and {} endpoints ({} EndpointSlices), written with 32 clients",
        args.services,
        args.services * ENDPOINTS_PER_SLICE,
        args.services
    );
    let rate = api_creates(
        &target,
        32,
        args.services,
        "/api/v1/namespaces/default/services",
        service,
    )
    .await?;
    println!("service creates/s (32 clients, with ClusterIP allocation): {rate:.0}");
    let n = ENDPOINTS_PER_SLICE;
    let rate = api_creates(
        &target,
        32,
        args.services,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        slice,
    )
    .await?;
    println!("endpointslice creates/s (32 clients, {n} endpoints each): {rate:.0}");

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
    println!(
        "LIST {} Services (full JSON, 50 requests): p50 {:.1} ms, p99 {:.1} ms",
        args.services + 1,
        list.quantile(0.5) as f64 / 1000.0,
        list.quantile(0.99) as f64 / 1000.0
    );
    println!(
        "server RSS with {} Services and {} endpoints: {:.0} MB",
        args.services,
        args.services * ENDPOINTS_PER_SLICE,
        rss_mb(server.0.id())?
    );

    println!("\n## creates/s with 32 clients while watchers receive every event (no selector)");
    for n in [100usize, 500] {
        let received = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        let count = Arc::new(move |text: &str| {
            if text.starts_with("{\"type\":\"ADDED\"") {
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        let watchers = spawn_watchers(
            &target,
            n,
            &format!("/api/v1/namespaces/bench-{n}/configmaps?watch=1"),
            count,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ns = format!(
            r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"bench-{n}"}}}}"#
        );
        target
            .connect()
            .await?
            .create("/api/v1/namespaces", ns)
            .await?;
        let path: &'static str = if n == 100 {
            "/api/v1/namespaces/bench-100/configmaps"
        } else {
            "/api/v1/namespaces/bench-500/configmaps"
        };
        let (server_cpu, client_cpu) = (cpu_seconds(Some(server.0.id()))?, cpu_seconds(None)?);
        let rate = api_creates(&target, 32, args.creates, path, move |i| {
            configmap(&format!("w{n}-{i}"))
        })
        .await?;
        let delivered = await_count(&received, args.creates * n).await;
        let server_cpu = cpu_seconds(Some(server.0.id()))? - server_cpu;
        let client_cpu = cpu_seconds(None)? - client_cpu;
        for w in watchers {
            w.abort();
        }
        delivered?;
        println!(
            "{n} watchers: {rate:.0} creates/s; every watcher got all {} events; CPU used: server {server_cpu:.1} s, benchmark client {client_cpu:.1} s",
            args.creates
        );
    }

    println!("\n## watch delivery to {} watchers (write sent -> event read by each watcher; 200 writes, 5 ms apart)", args.watchers);
    let mut h = watch_latency(&target, args.watchers, 200).await?;
    println!(
        "events delivered: {}; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.count(),
        h.quantile(0.5) as f64 / 1000.0,
        h.quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    println!(
        "server RSS after the watch run: {:.0} MB",
        rss_mb(server.0.id())?
    );
    drop(etcd);
    Ok(())
}
