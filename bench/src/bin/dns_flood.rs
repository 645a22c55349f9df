//! Cluster DNS under a flood of names it must forward, to an upstream that never answers.
//!
//! One `switchyard up` with `--dns-upstream` pointing at a UDP socket that reads and never
//! replies. The flood sends `--queries` A queries for distinct random names (`--rate` per second,
//! 0 = as fast as one socket sends). While it runs, a probe asks one cluster name every 10 ms and
//! a sampler reads the process's open file descriptors and RSS every 20 ms. Printed: descriptors
//! before and at most, RSS at most, the probe's latency p50/p99/max and how many probes got no
//! answer within a second, and what the flood got back (SERVFAIL, nothing).
//!
//! Usage: dns-flood --switchyard target/release/switchyard [--queries 20000] [--rate 0]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_bench::api::{free_port, rss_mb, Up};
use switchyard_bench::{dns_query as query, Samples};
use tokio::net::UdpSocket;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Queries for distinct names outside the cluster domain.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Flood queries per second (0: as fast as one socket sends).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Asks `name` until it answers NOERROR with an answer (the Service is in the zone).
async fn wait_resolves(server: SocketAddr, name: &str) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < Duration::from_secs(30) {
        sock.send_to(&query(1, name), server).await?;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
        {
            if n >= 8 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} never resolved")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // The upstream: reads every query, answers none.
    let upstream = UdpSocket::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let received = Arc::new(AtomicUsize::new(0));
    {
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while upstream.recv_from(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let data = tempfile::tempdir()?;
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let (http, https) = (free_port(), free_port());
    let up = Up::start(
        &args.switchyard,
        data.path(),
        &[],
        &[
            "--dns-listen",
            &dns.to_string(),
            "--dns-upstream",
            &upstream_addr.to_string(),
            "--ingress-http",
            &format!("127.0.0.1:{http}"),
            "--ingress-https",
            &format!("127.0.0.1:{https}"),
        ],
    )
    .await?;
    let pid = up.process.0.id();
    let mut conn = up.target.connect().await?;
    conn.create(
        "/api/v1/namespaces/default/services",
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"probe"},"spec":{"ports":[{"port":80}]}}"#.into(),
    )
    .await
    .context("creating the probe Service")?;
    let probe_name = "probe.default.svc.cluster.local";
    wait_resolves(dns, probe_name).await?;
    let fds_before = open_fds(pid);

    let done = Arc::new(AtomicBool::new(false));
    // Sampler: descriptors and RSS.
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut fds, mut rss) = (0usize, 0f64);
            while !done.load(Ordering::Relaxed) {
                fds = fds.max(open_fds(pid));
                rss = rss.max(rss_mb(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (fds, rss)
        })
    };
    // Probe: one cluster name every 10 ms.
    let probe = {
        let done = done.clone();
        tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await?;
            let (mut samples, mut lost) = (Samples::new(), 0usize);
            let mut buf = [0u8; 1500];
            let mut id = 0u16;
            while !done.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let t = Instant::now();
                sock.send_to(&query(id, probe_name), dns).await?;
                let answered = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        let n = sock.recv(&mut buf).await?;
                        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                            return anyhow::Ok(());
                        }
                    }
                })
                .await;
                match answered {
                    Ok(r) => {
                        r?;
                        samples.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => lost += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok((samples, lost))
        })
    };
    // Replies to the flood, by response code.
    let flood = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let (servfail, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (flood, servfail, other) = (flood.clone(), servfail.clone(), other.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok(n) = flood.recv(&mut buf).await {
                if n >= 4 && buf[3] & 0x0f == 2 {
                    servfail.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let salt: u32 = std::process::id();
    for i in 0..args.queries {
        let name = format!("r{i}x{salt}.flood.example");
        flood.send_to(&query(i as u16, &name), dns).await?;
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let sent_in = started.elapsed();
    // Long enough for every forwarded query to time out upstream (2 s) and be answered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    done.store(true, Ordering::Relaxed);
    let (fds_max, rss_max) = sampler.await?;
    let (mut samples, lost) = probe.await??;
    let fds_after = open_fds(pid);

    println!(
        "flood: {} queries for distinct names in {:.2} s to an upstream that never answers",
        args.queries,
        sent_in.as_secs_f64()
    );
    println!(
        "open files: {fds_before} before, {fds_max} at most, {fds_after} after; RSS at most {rss_max:.1} MB"
    );
    println!(
        "cluster name during the flood: p50 {} µs, p99 {} µs, max {} µs over {} probes; {lost} unanswered within 1 s",
        samples.quantile(0.5),
        samples.quantile(0.99),
        samples.max(),
        samples.count()
    );
    println!(
        "flood replies: {} SERVFAIL, {} other, {} none; queries the upstream saw: {}",
        servfail.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        args.queries
            .saturating_sub(servfail.load(Ordering::Relaxed) + other.load(Ordering::Relaxed)),
        received.load(Ordering::Relaxed)
    );
    Ok(())
}
