//! Cluster DNS benchmark: Switchyard's DNS, CoreDNS (its `kubernetes` plugin reading the same
//! API, with `cache 30`, `GOMAXPROCS=1`), NSD and Knot serving the same 10,000-Service zone, one
//! worker each, measured in the same run.
//!
//! - dnsperf (`-c 4 -T 1`) against each server: queries per second, average and maximum latency
//!   (dnsperf 2.10 prints no percentiles);
//! - a sequential probe (one query at a time over UDP) against each server at light load:
//!   latency p50/p99;
//! - the forwarded path: Switchyard and CoreDNS forward names outside the cluster to one
//!   `unbound` on loopback (one thread; it answers every name under `example.test` from local
//!   data and refuses all else, so nothing leaves the machine): dnsperf on 1,000 names asked
//!   again and again (cache hits) and on names never asked before (cache misses), and unbound
//!   asked directly;
//! - DNS programming latency: a Service created through the API until its name resolves, p50/p99
//!   (CoreDNS through a second server block without `cache`, which would hold a negative answer).
//!
//! Usage: dns-bench --switchyard target/release/switchyard [--coredns PATH]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, free_port, rss_mb, Proc, Up};
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
    /// CoreDNS (bench/peers/build.sh coredns); without it CoreDNS is left out.
    #[arg(long)]
    coredns: Option<PathBuf>,
    /// Distinct names in the cache-miss query file (each server gets the same file; no name is
    /// asked twice of a server unless it answers more than this many within a run).
    #[arg(long, default_value_t = 1_000_000)]
    miss_names: usize,
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

/// One sequential probe, printed as a line of the latency table.
async fn probe_line(what: &str, server: SocketAddr, names: &[String]) -> Result<()> {
    let mut s = probe(server, names, 20_000).await?;
    println!(
        "{what:<12} p50 {:>7.1} µs   p99 {:>7.1} µs",
        s.quantile(0.5) as f64 / 1000.0,
        s.quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}

/// dnsperf against each server in turn, printed as a table; the queries per second of each.
fn dnsperf_each(servers: &[(&str, SocketAddr)], queries: &Path, seconds: u32) -> Result<Vec<f64>> {
    println!(
        "{:<12} {:>10} {:>12} {:>12} {:>14}",
        "server", "qps", "avg ms", "max ms", "lost"
    );
    let mut qps = Vec::new();
    for (what, server) in servers {
        let p = dnsperf(server.port(), queries, seconds)?;
        println!(
            "{what:<12} {:>10.0} {:>12.3} {:>12.3} {:>14}",
            p.qps, p.avg_ms, p.max_ms, p.lost
        );
        qps.push(p.qps);
    }
    Ok(qps)
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
    let unbound_port = free_port();
    let unbound = SocketAddr::from(([127, 0, 0, 1], unbound_port));
    std::fs::write(
        d.join("unbound.conf"),
        format!(
            "server:\n  interface: 127.0.0.1@{unbound_port}\n  num-threads: 1\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  use-syslog: no\n  do-ip6: no\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  local-zone: \".\" refuse\n  local-zone: \"example.test.\" redirect\n  local-data: \"example.test. 300 IN A 192.0.2.1\"\nremote-control:\n  control-enable: no\n",
            dir = d.display()
        ),
    )?;
    let _unbound = Proc::start(
        Command::new("unbound")
            .arg("-c")
            .arg(d.join("unbound.conf")),
        "unbound",
    )?;
    let dns = free_port();
    let dns_listen = format!("127.0.0.1:{dns}");
    let upstream = unbound.to_string();
    let flags = [
        "--service-cidr",
        "127.20.0.0/16",
        "--dns-listen",
        &dns_listen,
        "--dns-upstream",
        &upstream,
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
    // CoreDNS as a cluster runs it (kubeadm's Corefile, less what does not serve queries), and
    // a second server block without cache for the programming latency.
    let coredns = match &args.coredns {
        Some(bin) => {
            let (port, fresh) = (free_port(), free_port());
            std::fs::write(
                d.join("Corefile"),
                format!(
                    "(cluster) {{\n  kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{\n    kubeconfig {kc}\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }}\n}}\n.:{port} {{\n  bind 127.0.0.1\n  errors\n  import cluster\n  forward . {upstream}\n  cache 30\n  loadbalance\n}}\n.:{fresh} {{\n  bind 127.0.0.1\n  import cluster\n}}\n",
                    kc = data.join("admin.kubeconfig").display()
                ),
            )?;
            let proc = Proc::start(
                Command::new(bin)
                    .env("GOMAXPROCS", "1")
                    .arg("-conf")
                    .arg(d.join("Corefile")),
                "coredns",
            )?;
            Some((
                proc,
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from(([127, 0, 0, 1], fresh)),
            ))
        }
        None => None,
    };
    let mut peers = vec![(nsd, "nsd"), (knot, "knot")];
    if let Some((_, port, fresh)) = &coredns {
        peers.push((*port, "coredns"));
        peers.push((*fresh, "coredns (no cache)"));
    }
    for (server, what) in peers {
        let start = Instant::now();
        while ask(&sock, server, 2, &names[0]).await != Some(0) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{what} did not answer {} on {server}", names[0]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!(
        "\n## dnsperf -c 4 -T 1, {} s each, {} names in random order",
        args.seconds,
        names.len()
    );
    let mut servers = vec![("switchyard", ours), ("nsd", nsd), ("knot", knot)];
    if let Some((_, port, _)) = &coredns {
        servers.push(("coredns", *port));
    }
    let results = dnsperf_each(&servers, &qfile, args.seconds)?;
    let ours_qps = results[0];
    let ratios: Vec<String> = servers
        .iter()
        .zip(&results)
        .skip(1)
        .map(|((what, _), qps)| format!("switchyard / {what}: {:.2}x qps", ours_qps / qps))
        .collect();
    println!("{}", ratios.join("; "));

    println!("\n## one query at a time (20,000 queries), latency");
    for (what, server) in &servers {
        probe_line(what, *server, &names).await?;
    }

    if let Some((_, port, _)) = &coredns {
        // Names outside the cluster, forwarded to unbound.
        let hits: Vec<String> = (0..1000).map(|i| format!("hit-{i}.example.test")).collect();
        let hfile = d.join("hits.txt");
        std::fs::write(
            &hfile,
            hits.iter().map(|n| format!("{n} A\n")).collect::<String>(),
        )?;
        let mfile = d.join("misses.txt");
        std::fs::write(
            &mfile,
            (0..args.miss_names)
                .map(|i| format!("miss-{i}.example.test A\n"))
                .collect::<String>(),
        )?;
        let forwarders = [
            ("switchyard", ours),
            ("coredns", *port),
            ("unbound", unbound),
        ];
        for (_, server) in forwarders {
            probe(server, &hits, hits.len()).await?;
        }
        println!("\n## forwarded to unbound, cache hits: dnsperf on 1,000 names asked before");
        let hit = dnsperf_each(&forwarders, &hfile, args.seconds)?;
        println!("switchyard / coredns: {:.2}x qps", hit[0] / hit[1]);
        println!("\n## forwarded, cache hits, one query at a time (20,000 queries), latency");
        for (what, server) in forwarders {
            probe_line(what, server, &hits).await?;
        }
        println!(
            "\n## forwarded to unbound, cache misses: dnsperf on {} names never asked before",
            args.miss_names
        );
        let miss = dnsperf_each(&forwarders[..2], &mfile, args.seconds)?;
        println!("switchyard / coredns: {:.2}x qps", miss[0] / miss[1]);
        if miss
            .iter()
            .any(|q| q * args.seconds as f64 > args.miss_names as f64)
        {
            println!("(a server answered more queries than there are names: the rest were hits)");
        }
    }

    // Each new name is asked of every server in turn until each has answered it.
    let mut watched = vec![("switchyard", ours)];
    if let Some((_, _, fresh)) = &coredns {
        watched.push(("coredns", *fresh));
    }
    let mut programming: Vec<Samples> = watched.iter().map(|_| Samples::new()).collect();
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
        let mut waiting: Vec<usize> = (0..watched.len()).collect();
        while !waiting.is_empty() {
            if acked.elapsed() > Duration::from_secs(10) {
                bail!("{fqdn} never resolved at {}", watched[waiting[0]].0);
            }
            let mut still = Vec::new();
            for w in waiting {
                if ask(&sock, watched[w].1, 3, &fqdn).await == Some(0) {
                    programming[w].record(acked.elapsed().as_micros() as u64);
                } else {
                    still.push(w);
                }
            }
            waiting = still;
        }
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
        "\n## DNS programming latency (Service create acknowledged -> name resolves), {} Services on top of {}",
        args.programming, args.services,
    );
    for ((what, _), s) in watched.iter().zip(&mut programming) {
        println!(
            "{what:<12} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            s.quantile(0.5) as f64 / 1000.0,
            s.quantile(0.99) as f64 / 1000.0,
            s.max() as f64 / 1000.0
        );
    }
    if let Some((proc, _, _)) = &coredns {
        println!(
            "\ncoredns RSS {:.1} MB (both server blocks; two sets of informers)",
            rss_mb(proc.0.id())?
        );
    }
    Ok(())
}
