//! Node agent benchmark: `switchyard up` with the userspace proxy.
//!
//! Prints, in one run:
//! - network programming latency with 1,000 Services: from the API acknowledging an
//!   EndpointSlice change to the first connection through the ClusterIP that reaches the new
//!   endpoint (p50/p99), and the agent's own `kubeproxy_network_programming_duration_seconds`;
//! - the userspace proxy against a direct connection to the endpoint, same client, same run:
//!   request/response round-trip latency on a persistent connection (p50/p99, and what the proxy
//!   adds), and single-stream throughput.
//!
//! Usage: agent-bench --switchyard target/release/switchyard

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, Up};
use switchyard_bench::{print_programming_metric, Samples};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// EndpointSlice changes measured (each on a different Service).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Round trips per path for the latency comparison.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Bytes per path for the throughput comparison.
    #[arg(long, default_value_t = 1 << 30)]
    bulk_bytes: usize,
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
const SERVICE_PORT: u16 = 8080;

/// A backend that writes `name` on every connection and closes it.
async fn named_backend(name: &'static [u8]) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name).await;
            });
        }
    });
    Ok(port)
}

/// A backend that echoes what it reads (round trips) or drops it (bulk).
async fn echo_backend() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(port)
}

async fn sink_backend() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            });
        }
    });
    Ok(port)
}

async fn read_name(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    Some(out)
}

fn service(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"ports":[{{"name":"http","port":{SERVICE_PORT},"protocol":"TCP"}}]}}}}"#
    )
}

fn slice(i: usize, port: u16) -> String {
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-0","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":{port},"protocol":"TCP"}}],"endpoints":[{{"addresses":["127.0.0.1"],"conditions":{{"ready":true}}}}]}}"#
    )
}

async fn round_trips(addr: SocketAddr, n: usize) -> Result<Samples> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut samples = Samples::new();
    for _ in 0..n / 10 {
        s.write_all(&msg).await?;
        s.read_exact(&mut buf).await?;
    }
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut buf).await?;
        samples.record(t.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

async fn bulk(addr: SocketAddr, bytes: usize) -> Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![1u8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).await?;
        sent += chunk.len();
    }
    s.shutdown().await?;
    Ok(sent as f64 / t.elapsed().as_secs_f64() / 1e6)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let up = Up::start(
        &args.switchyard,
        &data,
        &[],
        &["--service-cidr", "127.20.0.0/16"],
    )
    .await?;
    let (target, metrics) = (up.target.clone(), up.metrics);
    println!(
        "# agent-bench on {} cores: switchyard up (userspace proxy), {} Services",
        std::thread::available_parallelism()?.get(),
        args.services
    );

    let (a, b) = (named_backend(b"A").await?, named_backend(b"B").await?);
    let setup = Instant::now();
    api_creates(
        &target,
        32,
        args.services,
        "/api/v1/namespaces/default/services",
        service,
    )
    .await?;
    api_creates(&target, 32, args.services, SLICES, move |i| slice(i, a)).await?;

    let mut conn = target.connect().await?;
    let (_, list) = conn
        .request("GET", "/api/v1/namespaces/default/services", Bytes::new())
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let vip = |i: usize| -> Option<SocketAddr> {
        let item = list["items"]
            .as_array()?
            .iter()
            .find(|s| s["metadata"]["name"] == format!("svc-{i}"))?;
        Some(SocketAddr::new(
            item["spec"]["clusterIP"].as_str()?.parse().ok()?,
            SERVICE_PORT,
        ))
    };
    let last = vip(args.services - 1).context("no ClusterIP")?;
    while read_name(last).await.as_deref() != Some(b"A") {
        if setup.elapsed() > Duration::from_secs(120) {
            bail!("the last Service never became reachable");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{} Services and EndpointSlices created (32 clients) and all reachable in {:.1} s",
        args.services,
        setup.elapsed().as_secs_f64()
    );

    let mut programming = Samples::new();
    let step = (args.services / args.changes).max(1);
    for k in 0..args.changes.min(args.services) {
        let i = k * step;
        let addr = vip(i).context("no ClusterIP")?;
        conn.merge_patch(
            &format!("{SLICES}/svc-{i}-0"),
            format!(r#"{{"ports":[{{"name":"http","port":{b},"protocol":"TCP"}}]}}"#),
        )
        .await?;
        let acked = Instant::now();
        loop {
            if read_name(addr).await.as_deref() == Some(b"B") {
                programming.record(acked.elapsed().as_micros() as u64);
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("service {i} never reached the new endpoint");
            }
        }
    }
    println!("\n## network programming latency, {} Services ({} EndpointSlice changes, API ack -> new endpoint serves)", args.services, programming.count());
    println!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        programming.quantile(0.5) as f64 / 1000.0,
        programming.quantile(0.99) as f64 / 1000.0,
        programming.max() as f64 / 1000.0
    );
    print_programming_metric(metrics).await?;

    // Data path: direct vs through the ClusterIP, same client.
    let (echo, sink) = (echo_backend().await?, sink_backend().await?);
    let mut c = target.connect().await?;
    c.create("/api/v1/namespaces/default/services", r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"echo"},"spec":{"ports":[{"name":"http","port":8080}]}}"#.into()).await?;
    c.create("/api/v1/namespaces/default/services", r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"sink"},"spec":{"ports":[{"name":"http","port":8080}]}}"#.into()).await?;
    c.create(SLICES, slice(0, echo).replace("svc-0", "echo"))
        .await?;
    c.create(SLICES, slice(0, sink).replace("svc-0", "sink"))
        .await?;
    let (_, body) = c
        .request(
            "GET",
            "/api/v1/namespaces/default/services/echo",
            Bytes::new(),
        )
        .await?;
    let echo_vip = SocketAddr::new(
        serde_json::from_slice::<serde_json::Value>(&body)?["spec"]["clusterIP"]
            .as_str()
            .context("ip")?
            .parse()?,
        SERVICE_PORT,
    );
    let (_, body) = c
        .request(
            "GET",
            "/api/v1/namespaces/default/services/sink",
            Bytes::new(),
        )
        .await?;
    let sink_vip = SocketAddr::new(
        serde_json::from_slice::<serde_json::Value>(&body)?["spec"]["clusterIP"]
            .as_str()
            .context("ip")?
            .parse()?,
        SERVICE_PORT,
    );
    let start = Instant::now();
    while TcpStream::connect(echo_vip).await.is_err() || TcpStream::connect(sink_vip).await.is_err()
    {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("echo/sink services not reachable");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut direct =
        round_trips(SocketAddr::from(([127, 0, 0, 1], echo)), args.round_trips).await?;
    let mut proxied = round_trips(echo_vip, args.round_trips).await?;
    println!(
        "\n## userspace proxy vs direct ({} round trips of 64 bytes on one connection)",
        args.round_trips
    );
    let (d50, d99, p50, p99) = (
        direct.quantile(0.5),
        direct.quantile(0.99),
        proxied.quantile(0.5),
        proxied.quantile(0.99),
    );
    println!(
        "direct:  p50 {:.1} µs, p99 {:.1} µs",
        d50 as f64 / 1000.0,
        d99 as f64 / 1000.0
    );
    println!(
        "proxied: p50 {:.1} µs, p99 {:.1} µs",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0
    );
    println!(
        "added by the proxy: p50 {:.1} µs, p99 {:.1} µs",
        (p50 as f64 - d50 as f64) / 1000.0,
        (p99 as f64 - d99 as f64) / 1000.0
    );
    let direct_bw = bulk(SocketAddr::from(([127, 0, 0, 1], sink)), args.bulk_bytes).await?;
    let proxied_bw = bulk(sink_vip, args.bulk_bytes).await?;
    println!("single-stream throughput ({} MiB): direct {direct_bw:.0} MB/s, proxied {proxied_bw:.0} MB/s ({:.0}%)", args.bulk_bytes >> 20, 100.0 * proxied_bw / direct_bw);
    Ok(())
}
