//! Idle connections through the userspace proxy: what they cost the node agent.
//!
//! One `switchyard up` (userspace proxy), one Service whose endpoint is an echo server in this
//! process. `--connections` clients connect to the ClusterIP, each exchanges one byte (so the
//! proxy holds both sides) and then stays idle. Printed: how many got through and how many the
//! proxy refused, the agent's open files and RSS before and with the connections held, and per
//! held connection.
//!
//! Usage: userspace-idle --switchyard target/release/switchyard [--connections 10000]
//!        [-- extra flags for switchyard up]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{rss_mb, Up};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// More flags for `switchyard up`.
    #[arg(last = true)]
    up_flags: Vec<String>,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's open-file limit to its hard limit (it holds both ends here).
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// An echo server: every connection echoes until it closes.
async fn echo() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Connects through the proxy and exchanges one byte; None when the proxy refuses.
async fn held(vip: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(vip).await.ok()?;
    s.write_all(b"x").await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(1)) => Some(s),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_open_files();
    let dir = tempfile::tempdir()?;
    let mut flags = vec!["--service-cidr".to_string(), "127.21.0.0/16".to_string()];
    flags.extend(args.up_flags.iter().cloned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let up = Up::start(&args.switchyard, &dir.path().join("data"), &[], &flags).await?;
    let pid = up.process.0.id();
    let port = echo().await?;
    let mut c = up.target.connect().await?;
    c.create(
        "/api/v1/namespaces/default/services",
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"idle"},"spec":{"ports":[{"name":"p","port":7000}]}}"#.into(),
    )
    .await?;
    c.create(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        format!(r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"idle-0","labels":{{"kubernetes.io/service-name":"idle"}}}},"addressType":"IPv4","ports":[{{"name":"p","port":{port},"protocol":"TCP"}}],"endpoints":[{{"addresses":["127.0.0.1"],"conditions":{{"ready":true}}}}]}}"#),
    )
    .await?;
    let (_, body) = c
        .request(
            "GET",
            "/api/v1/namespaces/default/services/idle",
            Bytes::new(),
        )
        .await?;
    let vip = SocketAddr::new(
        serde_json::from_slice::<serde_json::Value>(&body)?["spec"]["clusterIP"]
            .as_str()
            .context("no ClusterIP")?
            .parse()?,
        7000,
    );
    let start = Instant::now();
    while held(vip).await.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{vip} never served");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds0, rss0) = (open_fds(pid), rss_mb(pid)?);

    let mut conns = Vec::with_capacity(args.connections);
    let mut refused = 0usize;
    let opening = Instant::now();
    for chunk in (0..args.connections).collect::<Vec<_>>().chunks(200) {
        let opened = futures::future::join_all(chunk.iter().map(|_| held(vip))).await;
        for c in opened {
            match c {
                Some(c) => conns.push(c),
                None => refused += 1,
            }
        }
    }
    let opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds1, rss1) = (open_fds(pid), rss_mb(pid)?);
    let n = conns.len().max(1) as f64;
    println!(
        "{} connections asked for in {:.1} s: {} held, {refused} refused by the proxy",
        args.connections,
        opened_in.as_secs_f64(),
        conns.len()
    );
    println!(
        "agent open files: {fds0} before, {fds1} with them held ({:.2} per held connection)",
        (fds1 as f64 - fds0 as f64) / n
    );
    println!(
        "agent RSS: {rss0:.1} MB before, {rss1:.1} MB with them held ({:.1} KiB per held connection)",
        (rss1 - rss0) * 1024.0 / n
    );
    Ok(())
}
