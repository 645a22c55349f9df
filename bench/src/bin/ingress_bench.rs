//! Ingress router benchmark: wrk through Switchyard, nginx and HAProxy, in one run.
//!
//! Every proxy gets one worker thread (Switchyard: `TOKIO_WORKER_THREADS=1`; nginx:
//! `worker_processes 1`; HAProxy: `nbthread 1`), the same host+path rule and keep-alive
//! connections to the same backend (nginx, one worker, `return 200`). Rounds alternate between
//! the targets so drift on the shared machine hits all of them alike. Then 10,000 more hosts
//! go into Switchyard's table and its figure is measured again.
//!
//! Usage: ingress-bench --switchyard target/release/switchyard

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use switchyard_bench::api::{api_creates, cpu_seconds, free_port, wait_for_port, Proc, Up};
use switchyard_bench::http_get;
use switchyard_bench::peers::{median, nginx, report, wrk, Run};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Rounds over all targets.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Extra hosts for the large-table run.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
}

const HOST: &str = "bench.example";
const PATH: &str = "/api";

fn haproxy(dir: &Path, port: u16, backend: u16) -> Result<Proc> {
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  acl host hdr(host) -i {HOST}\n  acl api path_beg {PATH}\n  use_backend be if host api\n\
             backend be\n  server b1 127.0.0.1:{backend} maxconn 1000\n"
        ),
    )?;
    Proc::start(Command::new("haproxy").arg("-f").arg(&conf), "haproxy")
}

fn ingress(name: &str, host: &str) -> String {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": [
            {"path": PATH, "pathType": "Prefix", "backend": {"service": {"name": "backend", "port": {"number": 80}}}}]}}]},
    })
    .to_string()
}

async fn host_count(metrics: u16) -> Result<u64> {
    let text = http_get(metrics, "/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_ingress_hosts "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

async fn wait_hosts(metrics: u16, want: u64) -> Result<Duration> {
    let start = Instant::now();
    while host_count(metrics).await? < want {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the router never had {want} hosts");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

/// Waits until a process has been (nearly) idle for a second: the agent writes the status of
/// every new Ingress after creating them, and the measurement should not share the machine
/// with that.
async fn wait_idle(pid: u32) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let before = cpu_seconds(Some(pid))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(Some(pid))? - before < 0.03 || start.elapsed() > Duration::from_secs(300) {
            return Ok(start.elapsed());
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = |port: u16| format!("http://127.0.0.1:{port}{PATH}");
    let host = [format!("Host: {HOST}")];
    let dir = tempfile::tempdir()?;
    let [backend, nginx_port, haproxy_port, http] = [(); 4].map(|_| free_port());
    let _backend = nginx(
        dir.path(),
        "backend",
        &format!("server {{ listen 127.0.0.1:{backend}; location / {{ return 200 \"ok\\n\"; }} }}"),
    )?;
    let _nginx = nginx(
        dir.path(),
        "proxy",
        &format!(
            "upstream be {{ server 127.0.0.1:{backend}; keepalive 256; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; server_name {HOST};\n\
               location {PATH} {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}"
        ),
    )?;
    let _haproxy = haproxy(dir.path(), haproxy_port, backend)?;
    let data = dir.path().join("switchyard");
    let http_addr = format!("127.0.0.1:{http}");
    let up = Up::start(
        &args.switchyard,
        &data,
        &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "warn")],
        &[
            "--ingress-http",
            &http_addr,
            "--ingress-https",
            &format!("127.0.0.1:{}", free_port()),
            "--ingress-access-log",
            "false",
            "--ingress-threads",
            "1",
            "--dns-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    )
    .await?;
    for p in [backend, nginx_port, haproxy_port, http] {
        wait_for_port(p, "a benchmark target")?;
    }
    let mut conn = up.target.connect().await?;
    conn.create(
        "/api/v1/namespaces/default/services",
        serde_json::json!({"metadata": {"name": "backend"}, "spec": {"ports": [{"port": 80, "targetPort": backend}]}}).to_string(),
    )
    .await?;
    conn.create(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        serde_json::json!({
            "metadata": {"name": "backend-1", "labels": {"kubernetes.io/service-name": "backend"}},
            "addressType": "IPv4",
            "ports": [{"port": backend, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"]}],
        })
        .to_string(),
    )
    .await?;
    conn.create(
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        ingress("bench", HOST),
    )
    .await?;
    wait_hosts(up.metrics, 1).await?;

    println!(
        "ingress benchmark: wrk -t1 -c{} -d{}s, Host: {HOST}, GET {PATH}, {} rounds",
        args.connections, args.duration, args.rounds
    );
    let targets = [
        ("backend (direct)", backend),
        ("nginx", nginx_port),
        ("haproxy", haproxy_port),
        ("switchyard", http),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, (name, port)) in targets.iter().enumerate() {
            let r = wrk(&url(*port), args.connections, args.duration, &host)?;
            report(&format!("{name} #{}", round + 1), &r, None);
            runs[i].push(r);
        }
    }
    let med: Vec<Run> = runs.iter().map(|r| median(r)).collect();
    println!("medians (ratios against nginx):");
    for (i, (name, _)) in targets.iter().enumerate() {
        report(name, &med[i], Some(&med[1]));
    }
    println!(
        "switchyard against haproxy: rps {:.2}x, p99 {:.2}x",
        med[3].rps / med[2].rps,
        med[3].p99_us / med[2].p99_us
    );

    // The same rule with 10,000 more hosts in the table.
    let started = Instant::now();
    api_creates(
        &up.target,
        16,
        args.hosts,
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        |i| ingress(&format!("host-{i}"), &format!("host-{i}.example")),
    )
    .await?;
    let created = started.elapsed();
    let programmed = wait_hosts(up.metrics, args.hosts as u64 + 1).await?;
    println!(
        "{} more hosts: created in {:.2} s, all in the router {:.2} s after the last create",
        args.hosts,
        created.as_secs_f64(),
        programmed.as_secs_f64()
    );
    let settled = wait_idle(up.process.0.id()).await?;
    println!(
        "status of every Ingress written: the agent idle {:.1} s after the last create",
        settled.as_secs_f64()
    );
    let mut large = Vec::new();
    let mut small = Vec::new();
    for _ in 0..args.rounds {
        large.push(wrk(&url(http), args.connections, args.duration, &host)?);
        small.push(wrk(
            &url(nginx_port),
            args.connections,
            args.duration,
            &host,
        )?);
    }
    let large = median(&large);
    report(
        &format!("switchyard, {} hosts", args.hosts + 1),
        &large,
        Some(&med[3]),
    );
    report("nginx (same rounds)", &median(&small), Some(&med[1]));
    println!(
        "switchyard rps with {} hosts vs 1 host: {:.3}x",
        args.hosts + 1,
        large.rps / med[3].rps
    );
    Ok(())
}
