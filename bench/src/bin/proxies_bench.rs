//! Service proxies side by side: Switchyard's node agent (nftables, iptables and eBPF modes) and the real
//! kube-proxy (iptables and nftables modes, built from `k8s.io/kubernetes` by
//! `bench/peers/build.sh`), one after another in the same run, each fed by the same
//! `switchyard server` holding N Services x 10 endpoints, in the same network namespace on the
//! same kernel. Needs root.
//!
//! For each N and each proxy:
//! - cold start: the proxy starts with every Service already in the API -> the last Service's
//!   ClusterIP takes a connection (its whole first sync), and the CPU it used to get there;
//! - one endpoint change: an EndpointSlice switched to a new endpoint through the API, from the
//!   acknowledgement to the first connection through the ClusterIP that reaches it, p50/p99,
//!   and the proxy's CPU per change. Changes are `--change-gap-ms` apart: kube-proxy's default
//!   `--min-sync-period` is 1 s, and a change closer than that to the last sync waits for it;
//! - new connections/s through the first and the last Service;
//! - the proxy's RSS at the end.
//!
//! The connections start in the proxy's namespace (the path of host-network pods and of the
//! node's own processes) and end in a backend namespace.
//!
//! Usage: proxies-bench --switchyard target/release/switchyard --peers DIR

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_bench::api::{
    api_creates, cpu_seconds, free_port, rss_mb, start_server_with, Proc, Target,
};
use switchyard_bench::cgroup::BpfEnv;
use switchyard_bench::netns::Netns;
use switchyard_bench::services::{connect_rate, service_json, sinks};
use switchyard_bench::{http_get, series_quantile, Samples};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Where bench/peers/build.sh put kube-proxy.
    #[arg(long)]
    peers: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes timed per proxy.
    #[arg(long, default_value_t = 30)]
    changes: usize,
    #[arg(long, default_value_t = 1100)]
    change_gap_ms: u64,
    /// Seconds per connection-rate run.
    #[arg(long, default_value_t = 2)]
    rate_secs: u64,
    /// A cold start longer than this is reported as not finished.
    #[arg(long, default_value_t = 300)]
    start_limit_secs: u64,
    /// Which proxies.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "switchyard-nftables,switchyard-iptables,switchyard-ebpf,kube-proxy-iptables,kube-proxy-nftables"
    )]
    proxies: Vec<String>,
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
/// The backend namespace's address, where the changed endpoint answers "B" on port 9100.
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

/// Service i's slice: `per` endpoints on 10.2.0.10.. port 8080 of the backend namespace.
fn slice_json(i: usize, per: usize) -> String {
    let eps: Vec<String> = (0..per)
        .map(|e| {
            format!(
                r#"{{"addresses":["10.2.0.{}"],"conditions":{{"ready":true}},"nodeName":"bench"}}"#,
                10 + e
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-0","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{}]}}"#,
        eps.join(",")
    )
}

/// A connection to `addr` within 100 ms.
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// A connection to `addr` that reads "B".
fn reaches_b(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let mut buf = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
        && s.read_exact(&mut buf).is_ok()
        && buf == *b"B"
}

/// What one proxy measured at one size.
struct Figures {
    cold_start: Option<Duration>,
    cold_cpu: f64,
    change: Option<(f64, f64, f64)>,
    cpu_per_change_ms: f64,
    rates: Option<(f64, f64, u64)>,
    rss_mb: f64,
    /// Switchyard's own stage histograms after the changes: p50/p99 per stage.
    stages: String,
}

/// p50/p99 of each of the agent's stages, from its metrics (bucket-interpolated).
async fn stages(metrics: u16) -> Result<String> {
    let text = http_get(metrics, "/metrics").await?;
    let mut out = Vec::new();
    for stage in ["receive", "apply", "build", "wait", "program"] {
        let labels = format!("stage=\"{stage}\"");
        let q = |q| series_quantile(&text, "switchyard_agent_stage_duration_seconds", &labels, q);
        if let (Some(p50), Some(p99)) = (q(0.5), q(0.99)) {
            out.push(format!("{stage} {:.2}/{:.2}", p50 * 1000.0, p99 * 1000.0));
        }
    }
    Ok(out.join(", "))
}

/// Starts the proxy `which` in the current namespace.
fn start_proxy(
    which: &str,
    args: &Args,
    kubeconfig: &Path,
    bpf: &BpfEnv,
    metrics: u16,
    log: &Path,
) -> Result<Proc> {
    let metrics = format!("127.0.0.1:{metrics}");
    let mut cmd;
    if let Some(mode) = which.strip_prefix("switchyard-") {
        cmd = Command::new(&args.switchyard);
        cmd.arg("node")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node-name", "bench", "--proxy-mode", mode])
            .args(["--cluster-cidr", CLUSTER_CIDR, "--metrics-listen", &metrics]);
        if mode == "ebpf" {
            cmd.arg("--cgroup-path")
                .arg(&bpf.cgroup)
                .arg("--bpf-pin-path")
                .arg(bpf.pin_dir());
        }
    } else if let Some(mode) = which.strip_prefix("kube-proxy-") {
        cmd = Command::new(args.peers.join("kube-proxy"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", "bench", "--proxy-mode", mode])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .args(["--metrics-bind-address", &metrics])
            .args([
                "--healthz-bind-address",
                &format!("127.0.0.1:{}", free_port()),
            ])
            // Leave the kernel's conntrack settings alone.
            .args(["--conntrack-max-per-core", "0"])
            .args(["--conntrack-tcp-timeout-established", "0"])
            .args(["--conntrack-tcp-timeout-close-wait", "0"]);
    } else {
        bail!("unknown proxy {which}");
    }
    let log = std::fs::File::create(log)?;
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {which}"))?;
    Ok(Proc(child))
}

/// Everything a proxy left in the namespace: rules of every kind, pinned BPF objects, flows.
fn clean(node: &Netns, bpf: &BpfEnv) -> Result<()> {
    node.exec(&["nft", "flush", "ruleset"])?;
    let _ = node.exec(&["iptables-legacy", "-t", "nat", "-F"]);
    switchyard_proxy::ebpf::cleanup(&bpf.pin_dir())?;
    let _ = node.exec(&["conntrack", "-F"]);
    Ok(())
}

async fn measure(
    which: &str,
    n: usize,
    slot: usize,
    args: &Args,
    ctx: &Ctx<'_>,
) -> Result<Figures> {
    let ebpf = which.ends_with("ebpf");
    if ebpf {
        ctx.bpf.enter_cgroup(true)?;
    }
    let vip = |i: usize| SocketAddr::new(ctx.vips[&format!("svc-{i}")].into(), 80);
    let last = vip(n - 1);
    let log = ctx.kubeconfig.with_file_name(format!("{which}-{n}.log"));
    let metrics = free_port();
    let mut proxy = start_proxy(which, args, ctx.kubeconfig, ctx.bpf, metrics, &log)?;
    let pid = proxy.0.id();
    let started = Instant::now();
    let limit = Duration::from_secs(args.start_limit_secs);
    let mut cold_start = None;
    while started.elapsed() < limit {
        if let Some(status) = proxy.0.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            bail!("{which} exited ({status}):\n{}", tail.join("\n"));
        }
        if connects(last) {
            cold_start = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold_cpu = cpu_seconds(Some(pid))?;
    let mut f = Figures {
        cold_start,
        cold_cpu,
        change: None,
        cpu_per_change_ms: 0.0,
        rates: None,
        rss_mb: 0.0,
        stages: String::new(),
    };
    if cold_start.is_some() {
        let mut conn = ctx.target.connect().await?;
        let mut samples = Samples::new();
        let before = cpu_seconds(Some(pid))?;
        // Each proxy changes Services of its own, never the first or the last.
        let step = ((n - 2) / (args.changes * 4)).max(1);
        for k in 0..args.changes {
            tokio::time::sleep(Duration::from_millis(args.change_gap_ms)).await;
            let i = 1 + (k * 4 * step + slot) % (n - 2);
            conn.merge_patch(
                &format!("{SLICES}/svc-{i}-0"),
                format!(r#"{{"endpoints":[{{"addresses":["{BACKEND}"],"conditions":{{"ready":true}}}}],"ports":[{{"name":"http","port":9100,"protocol":"TCP"}}]}}"#),
            )
            .await?;
            let acked = Instant::now();
            while !reaches_b(vip(i)) {
                if acked.elapsed() > Duration::from_secs(30) {
                    bail!("{which}: svc-{i} never reached the new endpoint");
                }
            }
            samples.record(acked.elapsed().as_micros() as u64);
        }
        f.cpu_per_change_ms = (cpu_seconds(Some(pid))? - before) * 1000.0 / args.changes as f64;
        if which.starts_with("switchyard-") {
            f.stages = stages(metrics).await?;
        }
        f.change = Some((
            samples.quantile(0.5) as f64 / 1000.0,
            samples.quantile(0.99) as f64 / 1000.0,
            samples.max() as f64 / 1000.0,
        ));
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("the Services are IPv4"),
        };
        // Each run starts without the flows of the one before: a new connection whose reply
        // tuple matches a closed flow's conntrack entry to the same endpoint is dropped.
        let rate = |to: SocketAddr| -> Result<(f64, u64)> {
            let _ = ctx.node.exec(&["conntrack", "-F"]);
            connect_rate(ctx.node, &[v4(to)], args.rate_secs)
        };
        let (mut a, mut b, mut failed) = (0.0, 0.0, 0);
        for _ in 0..2 {
            let (r, f1) = rate(vip(0))?;
            let (s, f2) = rate(last)?;
            (a, b, failed) = (a + r / 2.0, b + s / 2.0, failed + f1 + f2);
        }
        f.rates = Some((a, b, failed));
    }
    f.rss_mb = rss_mb(pid)?;
    drop(proxy);
    if ebpf {
        ctx.bpf.enter_cgroup(false)?;
    }
    clean(ctx.node, ctx.bpf)?;
    Ok(f)
}

/// What every proxy of one size shares.
struct Ctx<'a> {
    node: &'a Netns,
    bpf: &'a BpfEnv,
    target: Target,
    kubeconfig: &'a Path,
    vips: HashMap<String, Ipv4Addr>,
}

async fn size(n: usize, args: &Args, node: &Netns, bpf: &BpfEnv) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (_server, target) =
        start_server_with(&args.switchyard, &data, &["--service-cidr", "10.96.0.0/16"]).await?;
    let mut conn = target.connect().await?;
    // The Node kube-proxy reads its address from.
    conn.create(
        "/api/v1/nodes",
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"bench"}}"#.into(),
    )
    .await?;
    conn.merge_patch(
        "/api/v1/nodes/bench/status",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"10.2.0.1"}]}}"#.into(),
    )
    .await?;
    let setup = Instant::now();
    api_creates(
        &target,
        32,
        n,
        "/api/v1/namespaces/default/services",
        service_json,
    )
    .await?;
    let per = args.endpoints;
    api_creates(&target, 32, n, SLICES, move |i| slice_json(i, per)).await?;
    println!(
        "\n## {n} Services x {per} endpoints (created through the API in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );
    let (_, list) = conn
        .request(
            "GET",
            "/api/v1/namespaces/default/services",
            bytes::Bytes::new(),
        )
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let vips: HashMap<String, Ipv4Addr> = list["items"]
        .as_array()
        .context("no Service list")?
        .iter()
        .filter_map(|s| {
            Some((
                s["metadata"]["name"].as_str()?.to_string(),
                s["spec"]["clusterIP"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    let kubeconfig = data.join("admin.kubeconfig");
    let ctx = Ctx {
        node,
        bpf,
        target,
        kubeconfig: &kubeconfig,
        vips,
    };
    for (slot, which) in args.proxies.iter().enumerate() {
        let f = measure(which, n, slot, args, &ctx).await?;
        let ms = |d: Option<Duration>| {
            d.map_or(
                format!("> {} s, not finished", args.start_limit_secs),
                |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
            )
        };
        print!(
            "{which:<22} cold start {} (CPU {:.2} s)",
            ms(f.cold_start),
            f.cold_cpu
        );
        if let (Some((p50, p99, max)), Some((first, last, failed))) = (f.change, f.rates) {
            print!(
                "; change -> connect p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, CPU {:.1} ms per change; new connections/s 1st {first:.0}, last {last:.0} ({:.1}%, {failed} failed)",
                f.cpu_per_change_ms,
                100.0 * last / first
            );
        }
        print!("; RSS {:.1} MB", f.rss_mb);
        if !f.stages.is_empty() {
            print!("; stages p50/p99 ms: {}", f.stages);
        }
        println!();
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let node = Netns::new("proxies")?;
    let backend = Netns::new("backends")?;
    let (_, dev) = node.link(&backend, "10.2.0.1", "10.2.0.2")?;
    for e in 0..args.endpoints {
        backend.ip(&["addr", "add", &format!("10.2.0.{}/24", 10 + e), "dev", &dev])?;
    }
    node.ip(&["route", "add", "10.96.0.0/16", "via", "10.2.0.2"])?;
    // Every endpoint accepts on 8080 (and is closed at once); the changed one answers "B".
    let endpoints: Vec<SocketAddrV4> = (0..args.endpoints)
        .map(|e| SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 10 + e as u8), 8080))
        .collect();
    sinks(&backend, &endpoints)?;
    let b = backend.enter(|| std::net::TcpListener::bind(SocketAddrV4::new(BACKEND, 9100)))??;
    std::thread::spawn(move || {
        for mut c in b.incoming().flatten() {
            let _ = c.write_all(b"B");
        }
    });
    let bpf = BpfEnv::new()?;
    println!(
        "# proxies-bench on {} cores; kube-proxy {}",
        std::thread::available_parallelism()?.get(),
        args.peers.join("kube-proxy").display()
    );
    let (node, bpf, args) = (Arc::new(node), Arc::new(bpf), Arc::new(args));
    for n in args.sizes.clone() {
        let (nd, bp, ar) = (node.clone(), bpf.clone(), args.clone());
        node.enter(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(size(n, &ar, &nd, &bp))?;
            Ok(())
        })??;
    }
    Ok(())
}
