//! Peers the benchmarks measure against: nginx (as a backend or a proxy) and wrk, the median
//! and report of wrk-style runs, and kube-apiserver on etcd.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::api::{free_port, wait_for_port, Proc, Target};

/// One wrk result.
#[derive(Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// `12.34us`, `1.2ms`, `3s` in wrk's output, as microseconds.
pub fn micros(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

/// Runs a load generator with `-H` for each header and `url` last; its standard output.
fn load(mut cmd: Command, headers: &[String], url: &str, what: &str) -> Result<String> {
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .with_context(|| format!("running {what}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// wrk with one thread, `connections` connections, for `seconds`, with `--latency`.
pub fn wrk(url: &str, connections: usize, seconds: u64, headers: &[String]) -> Result<Run> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}")])
        .args([&format!("-d{seconds}s"), "--latency"]);
    let text = load(cmd, headers, url, "wrk (apt-get install wrk)")?;
    let mut run = Run::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse()?,
            ["50%", v] => run.p50_us = micros(v).unwrap_or(f64::NAN),
            ["99%", v] => run.p99_us = micros(v).unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>()?,
            ["Socket", "errors:", ..] => {
                run.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if run.rps == 0.0 {
        bail!("wrk printed no rate:\n{text}");
    }
    Ok(run)
}

/// h2load (one thread, `clients` connections with up to `streams` requests in flight on each)
/// for `seconds`; the latency percentiles come from its per-request log, written to `log`.
/// Requests still in flight when the time is up count as h2load's "failed"; they are not errors.
pub fn h2load(
    url: &str,
    clients: usize,
    streams: usize,
    seconds: u64,
    headers: &[String],
    log: &Path,
) -> Result<(Run, String)> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-t1", &format!("-c{clients}"), &format!("-m{streams}")])
        .arg(format!("-D{seconds}"))
        .arg(format!("--log-file={}", log.display()));
    let text = load(cmd, headers, url, "h2load (apt-get install nghttp2-client)")?;
    let mut run = Run::default();
    let mut tls = String::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["finished", "in", _, rate, "req/s,", ..] => {
                run.rps = rate.trim_end_matches(',').parse()?
            }
            ["TLS", "Protocol:", v] => tls = v.to_string(),
            ["status", "codes:", ..] => {
                // "status codes: N 2xx, N 3xx, N 4xx, N 5xx": everything but 2xx is an error.
                let n: Vec<u64> = f[2..].iter().filter_map(|n| n.parse().ok()).collect();
                run.errors += n.iter().skip(1).sum::<u64>();
            }
            _ => {}
        }
    }
    if run.rps == 0.0 {
        bail!("h2load printed no rate:\n{text}");
    }
    // Each line: start (µs since the epoch), status, µs until the response ended.
    let mut took: Vec<f64> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse().ok())
        .collect();
    if took.is_empty() {
        bail!("h2load logged no request");
    }
    took.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    run.p50_us = at(0.50);
    run.p99_us = at(0.99);
    Ok((run, tls))
}

pub fn nginx(dir: &Path, name: &str, body: &str) -> Result<Proc> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/{name}.pid;\nerror_log {dir}/{name}.err;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n access_log off;\n keepalive_requests 1000000;\n{body}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Proc::start(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join(format!("{name}.err"))),
        name,
    )
}

pub fn report(name: &str, r: &Run, base: Option<&Run>) {
    let ratio = base.map_or(String::new(), |b| {
        format!(
            "  rps {:.2}x, p99 {:.2}x",
            r.rps / b.rps,
            r.p99_us / b.p99_us
        )
    });
    println!(
        "  {name:<22} {:>9.0} rps  p50 {:>7.0} us  p99 {:>7.0} us  errors {}{ratio}",
        r.rps, r.p50_us, r.p99_us, r.errors
    );
}

pub fn median(runs: &[Run]) -> Run {
    let pick = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Run {
        rps: pick(|r| r.rps),
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// kube-apiserver on its own etcd, both built by `bench/peers/build.sh`, on loopback, durable
/// (etcd's default fsync per commit), with a static token in `system:masters`.
pub struct KubeApiserver {
    pub etcd: Proc,
    pub apiserver: Proc,
    pub target: Target,
}

impl KubeApiserver {
    /// Starts both with their data and keys in `dir`; returns once `/readyz` answers 200.
    pub async fn start(peers: &Path, dir: &Path) -> Result<KubeApiserver> {
        std::fs::create_dir_all(dir)?;
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let etcd = Proc::start(
            Command::new(peers.join("etcd"))
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .args(["--listen-client-urls", &url(client)])
                .args(["--advertise-client-urls", &url(client)])
                .args(["--listen-peer-urls", &url(peer)])
                .args(["--initial-advertise-peer-urls", &url(peer)])
                .arg(format!("--initial-cluster=default={}", url(peer))),
            "etcd",
        )?;
        wait_for_port(client, "etcd")?;
        // The ServiceAccount signing key kube-apiserver insists on.
        let key = dir.join("sa.key");
        for args in [
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ],
            vec!["ec", "-pubout", "-in", key.to_str().unwrap(), "-out"],
        ] {
            let out = dir.join(if args[0] == "ec" { "sa.pub" } else { "sa.key" });
            let status = Command::new("openssl")
                .args(&args)
                .arg(&out)
                .stderr(std::process::Stdio::null())
                .status()
                .context("running openssl")?;
            if !status.success() {
                bail!("openssl {args:?} failed");
            }
        }
        std::fs::write(dir.join("admin-token"), "bench-admin-token\n")?;
        std::fs::write(
            dir.join("tokens.csv"),
            "bench-admin-token,admin,admin,system:masters\n",
        )?;
        let path = |f: &str| dir.join(f).display().to_string();
        let apiserver = Proc::start(
            Command::new(peers.join("kube-apiserver"))
                .arg(format!("--etcd-servers={}", url(client)))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", path("certs")))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", path("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    path("sa.key")
                ))
                .arg(format!("--token-auth-file={}", path("tokens.csv")))
                .arg("--authorization-mode=RBAC"),
            "kube-apiserver",
        )?;
        // It signs its own serving certificate at start; that certificate is the CA to trust.
        let start = std::time::Instant::now();
        loop {
            if start.elapsed() > std::time::Duration::from_secs(120) {
                bail!("kube-apiserver did not become ready within 2 minutes");
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let Ok(cert) = std::fs::read(dir.join("certs/apiserver.crt")) else {
                continue;
            };
            std::fs::write(dir.join("ca.crt"), cert)?;
            let target = Target::from_data_dir(port, dir)?;
            let ready = match target.connect().await {
                Ok(mut c) => matches!(
                    c.request("GET", "/readyz", Default::default()).await,
                    Ok((200, _))
                ),
                Err(_) => false,
            };
            if ready {
                return Ok(KubeApiserver {
                    etcd,
                    apiserver,
                    target,
                });
            }
        }
    }
}
