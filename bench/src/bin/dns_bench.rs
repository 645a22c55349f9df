//! Cluster DNS benchmark: Switchyard's DNS, NSD and Knot serving the same 10,000-Service zone,
//! one worker each, measured in the same run.
//!
//! - dnsperf (`-c 4 -T 1`) against each server: queries per second, average and maximum latency
//!   (dnsperf 2.10 prints no percentiles);
//! - a sequential probe (one query at a time over UDP) against each server at light load:
//!   latency p50/p99;
//! - DNS programming latency: a Service created through the API until its name resolves, p50/p99.
//!
//! Usage: dns-bench --switchyard target/release/switchyard

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, free_port, Proc, Up};
use switchyard_bench::{dns_query as query, http_get, metric_quantile, Samples};
use tokio::net::UdpSocket;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Services created for the programming-latency measurement.
    #[arg(long, default_value_t = 100)]
    programming: usize,
}

const DOMAIN: &str = "cluster.local";

fn service(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"ports":[{{"name":"http","port":80}}]}}}}"#
    )
}

/// Sends one query and returns the response code (None on timeout).
async fn ask(sock: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Option<u8> {
    sock.send_to(&query(id, name), server).await.ok()?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n >= 4 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Some(buf[3] & 0x0f);
        }
    }
}

async fn probe(server: SocketAddr, names: &[String], n: usize) -> Result<Samples> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut s = Samples::new();
    for i in 0..n {
        let t = Instant::now();
        if ask(&sock, server, i as u16, &names[i % names.len()]).await != Some(0) {
            bail!("{server} did not answer {}", names[i % names.len()]);
        }
        s.record(t.elapsed().as_nanos() as u64);
    }
    Ok(s)
}

struct Perf {
    qps: f64,
    avg_ms: f64,
    max_ms: f64,
    lost: String,
}

fn dnsperf(port: u16, queries: &Path, seconds: u32) -> Result<Perf> {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            queries.to_str().unwrap(),
            "-c",
            "4",
            "-T",
            "1",
            "-l",
            &seconds.to_string(),
        ])
        .output()
        .context("running dnsperf (Debian package dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let qps: f64 = field("Queries per second:")
        .context("dnsperf printed no qps")?
        .parse()?;
    let avg = field("Average Latency (s):").context("dnsperf printed no latency")?;
    let avg_ms: f64 = avg
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse::<f64>()?
        * 1000.0;
    let max_ms: f64 = avg
        .split("max ")
        .nth(1)
        .and_then(|m| m.trim_end_matches(')').parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1000.0;
    let lost = field("Queries lost:").unwrap_or_default();
    Ok(Perf {
        qps,
        avg_ms,
        max_ms,
        lost,
    })
}

fn zone_file(records: &[(String, String)]) -> String {
    let mut z = format!(
        "$ORIGIN {DOMAIN}.\n$TTL 5\n@ IN SOA ns.dns.{DOMAIN}. hostmaster.{DOMAIN}. 1 7200 1800 86400 5\n@ IN NS ns.dns.{DOMAIN}.\nns.dns IN A 127.0.0.1\ndns-version IN TXT \"1.1.0\"\n"
    );
    for (name, ip) in records {
        z.push_str(&format!("{name}.default.svc IN A {ip}\n"));
    }
    z
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let data = d.join("data");
    // One runtime worker: the DNS server gets one thread, as NSD and Knot get one worker.
    let dns = free_port();
    let dns_listen = format!("127.0.0.1:{dns}");
    let flags = [
        "--service-cidr",
        "127.20.0.0/16",
        "--dns-listen",
        &dns_listen,
        "--dns-upstream",
        "127.0.0.1:9",
    ];
    let up = Up::start(
        &args.switchyard,
        &data,
        &[("TOKIO_WORKER_THREADS", "1")],
        &flags,
    )
    .await?;
    let (target, metrics) = (up.target.clone(), up.metrics);
    println!(
        "# dns-bench on {} cores: {} Services",
        std::thread::available_parallelism()?.get(),
        args.services
    );
    api_creates(
        &target,
        32,
        args.services,
        "/api/v1/namespaces/default/services",
        service,
    )
    .await?;
    let mut conn = target.connect().await?;
    let (_, body) = conn
        .request("GET", "/api/v1/namespaces/default/services", Bytes::new())
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let records: Vec<(String, String)> = list["items"]
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| {
            Some((
                s["metadata"]["name"].as_str()?.to_string(),
                s["spec"]["clusterIP"].as_str()?.to_string(),
            ))
        })
        .filter(|(n, _)| n.starts_with("svc-"))
        .collect();
    let names: Vec<String> = records
        .iter()
        .map(|(n, _)| format!("{n}.default.svc.{DOMAIN}"))
        .collect();
    let ours = SocketAddr::from(([127, 0, 0, 1], dns));
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let start = Instant::now();
    while ask(&sock, ours, 1, names.last().context("no services")?).await != Some(0) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the last Service never resolved");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same zone for NSD and Knot, and the query file.
    std::fs::write(d.join("cluster.local.zone"), zone_file(&records))?;
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|i| (i * 7919) % names.len());
    let qfile = d.join("queries.txt");
    std::fs::write(
        &qfile,
        order
            .iter()
            .map(|i| format!("{} A\n", names[*i]))
            .collect::<String>(),
    )?;
    let (nsd_port, knot_port) = (free_port(), free_port());
    std::fs::write(
        d.join("nsd.conf"),
        format!(
            "server:\n  ip-address: 127.0.0.1@{nsd_port}\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dir}\"\n  database: \"\"\n  zonelistfile: \"{dir}/zone.list\"\n  xfrdfile: \"{dir}/xfrd.state\"\n  pidfile: \"{dir}/nsd.pid\"\n  logfile: \"{dir}/nsd.log\"\nremote-control:\n  control-enable: no\nzone:\n  name: {DOMAIN}\n  zonefile: cluster.local.zone\n",
            dir = d.display()
        ),
    )?;
    std::fs::create_dir_all(d.join("knot"))?;
    std::fs::write(
        d.join("knot.conf"),
        format!(
            "server:\n  listen: 127.0.0.1@{knot_port}\n  rundir: \"{dir}/knot\"\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\ndatabase:\n  storage: \"{dir}/knot\"\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: {DOMAIN}\n    file: \"{dir}/cluster.local.zone\"\n",
            dir = d.display()
        ),
    )?;
    let _nsd = Proc::start(
        Command::new("nsd")
            .args(["-d", "-c"])
            .arg(d.join("nsd.conf")),
        "nsd",
    )?;
    let _knot = Proc::start(
        Command::new("knotd").arg("-c").arg(d.join("knot.conf")),
        "knotd",
    )?;
    let (nsd, knot) = (
        SocketAddr::from(([127, 0, 0, 1], nsd_port)),
        SocketAddr::from(([127, 0, 0, 1], knot_port)),
    );
    for (server, what) in [(nsd, "nsd"), (knot, "knot")] {
        let start = Instant::now();
        while ask(&sock, server, 2, &names[0]).await != Some(0) {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{what} did not come up on {server}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!(
        "\n## dnsperf -c 4 -T 1, {} s each, {} names in random order",
        args.seconds,
        names.len()
    );
    println!(
        "{:<12} {:>10} {:>12} {:>12} {:>14}",
        "server", "qps", "avg ms", "max ms", "lost"
    );
    let mut results = Vec::new();
    for (what, port) in [("switchyard", dns), ("nsd", nsd_port), ("knot", knot_port)] {
        let p = dnsperf(port, &qfile, args.seconds)?;
        println!(
            "{what:<12} {:>10.0} {:>12.3} {:>12.3} {:>14}",
            p.qps, p.avg_ms, p.max_ms, p.lost
        );
        results.push((what, p));
    }
    let ours_qps = results[0].1.qps;
    println!(
        "switchyard / nsd: {:.2}x qps; switchyard / knot: {:.2}x qps",
        ours_qps / results[1].1.qps,
        ours_qps / results[2].1.qps
    );

    println!("\n## one query at a time (20,000 queries), latency");
    for (what, server) in [("switchyard", ours), ("nsd", nsd), ("knot", knot)] {
        let mut s = probe(server, &names, 20_000).await?;
        println!(
            "{what:<12} p50 {:>7.1} µs   p99 {:>7.1} µs",
            s.quantile(0.5) as f64 / 1000.0,
            s.quantile(0.99) as f64 / 1000.0
        );
    }

    let mut programming = Samples::new();
    // The first connection sat idle through the dnsperf runs, past the server's idle timeout.
    let mut conn = target.connect().await?;
    for i in 0..args.programming {
        let name = format!("new-{i}");
        conn.create(
            "/api/v1/namespaces/default/services",
            service(0).replace("svc-0", &name),
        )
        .await?;
        let acked = Instant::now();
        let fqdn = format!("{name}.default.svc.{DOMAIN}");
        while ask(&sock, ours, 3, &fqdn).await != Some(0) {
            if acked.elapsed() > Duration::from_secs(10) {
                bail!("{fqdn} never resolved");
            }
        }
        programming.record(acked.elapsed().as_micros() as u64);
    }
    let text = http_get(metrics, "/metrics").await?;
    let build = "switchyard_snapshot_build_duration_seconds";
    if let (Some(p50), Some(p99)) = (
        metric_quantile(&text, build, 0.5),
        metric_quantile(&text, build, 0.99),
    ) {
        println!("\nagent snapshot build (service table + DNS zone, {} Services; bucket-interpolated): p50 {:.1} ms, p99 {:.1} ms", args.services, p50 * 1e3, p99 * 1e3);
    }
    println!(
        "\n## DNS programming latency (Service create acknowledged -> name resolves), {} Services on top of {}\np50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.programming,
        args.services,
        programming.quantile(0.5) as f64 / 1000.0,
        programming.quantile(0.99) as f64 / 1000.0,
        programming.max() as f64 / 1000.0
    );
    Ok(())
}
