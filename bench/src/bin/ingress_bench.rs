//! Ingress router benchmark: Switchyard, nginx and HAProxy in one run.
//!
//! Every proxy gets one worker thread (Switchyard: `TOKIO_WORKER_THREADS=1`; nginx:
//! `worker_processes 1`; HAProxy: `nbthread 1`), the same host+path rule and keep-alive
//! connections to the same backend (nginx, one worker, `return 200`). Measured per access-log
//! setting (off, then on: Switchyard's default) and per protocol: HTTP/1.1 keep-alive and
//! HTTP/1.1 over TLS with wrk, HTTP/2 over TLS with h2load — the same certificate in nginx and
//! Switchyard. Besides requests/s and latency, each proxy's CPU time per request (user and
//! system, its whole process tree). The proxy under test runs alone on a core of its own, the
//! backend and the load generator on the others (sharing one when the machine has two). Rounds
//! alternate between the targets so drift hits all of them alike. Then 10,000 more hosts go into Switchyard's table and
//! its plain HTTP/1.1 figure is measured again.
//!
//! Usage: ingress-bench --switchyard target/release/switchyard

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use switchyard_bench::api::{
    allowed_cpus, api_creates, cpu_seconds, free_port, pin_tree, tree_cpu, wait_for_port, Proc, Up,
};
use switchyard_bench::http_get;
use switchyard_bench::peers::{h2load, median, nginx, report, wrk, Run};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// h2load connections of the HTTP/2 runs ...
    #[arg(long, default_value_t = 5)]
    h2_clients: usize,
    /// ... and the requests each keeps in flight (streams).
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    /// Rounds over all targets.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// What to measure: http1 (keep-alive), tls (HTTP/1.1 over TLS), h2 (HTTP/2 over TLS).
    #[arg(long, value_delimiter = ',', default_value = "http1,tls,h2")]
    protocols: Vec<Protocol>,
    /// Access-log settings to measure, each with both proxies.
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    access_log: Vec<Log>,
    /// Extra hosts for the large-table run (plain HTTP/1.1, access log off); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Protocol {
    Http1,
    Tls,
    H2,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Log {
    Off,
    On,
}

const HOST: &str = "bench.example";
const PATH: &str = "/api";

/// One load run against one proxy, with the proxy's CPU time per request.
#[derive(Clone, Copy)]
struct Measured {
    run: Run,
    user_us: f64,
    sys_us: f64,
}

/// Where each part runs: the proxy under test alone on the last allowed CPU, the backend on the
/// first, the load generator (and this benchmark) on the ones between — or on the backend's when
/// there are only two. With one CPU nothing is pinned.
struct Cores {
    backend: Vec<usize>,
    load: Vec<usize>,
    proxy: Vec<usize>,
}

impl Cores {
    fn of(cpus: &[usize]) -> Option<Cores> {
        match cpus {
            [] | [_] => None,
            [first, last] => Some(Cores {
                backend: vec![*first],
                load: vec![*first],
                proxy: vec![*last],
            }),
            [first, between @ .., last] => Some(Cores {
                backend: vec![*first],
                load: between.to_vec(),
                proxy: vec![*last],
            }),
        }
    }
}

/// A proxy under test: the process whose CPU is counted and its plain and TLS ports.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    pid: u32,
    http: u16,
    https: Option<u16>,
}

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

/// A self-signed P-256 certificate for `bench.example` and `localhost` (the name the clients
/// connect to, so both proxies pick the certificate by SNI): (certificate, key) paths.
fn certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={HOST}")])
        .args([
            "-addext",
            &format!("subjectAltName=DNS:{HOST},DNS:localhost"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

fn ingress(name: &str, host: &str, tls: bool) -> String {
    let mut spec = serde_json::json!({"rules": [{"host": host, "http": {"paths": [
        {"path": PATH, "pathType": "Prefix", "backend": {"service": {"name": "backend", "port": {"number": 80}}}}]}}]});
    if tls {
        spec["tls"] =
            serde_json::json!([{"hosts": [host, "localhost"], "secretName": "bench-tls"}]);
    }
    // nginx does not redirect plain HTTP to HTTPS in this benchmark: neither does Switchyard.
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": {"switchyard.io/ssl-redirect": "false"}},
        "spec": spec,
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

/// The URL `protocol`'s load goes to on `target`.
fn url(protocol: Protocol, target: &Target) -> Result<String> {
    Ok(match (protocol, target.https) {
        (Protocol::Http1, _) => format!("http://127.0.0.1:{}{PATH}", target.http),
        (_, Some(p)) => format!("https://localhost:{p}{PATH}"),
        (_, None) => bail!("{} has no TLS port", target.name),
    })
}

/// Fails unless `target` answers `protocol`'s request with the backend's 200 (not with a
/// redirect or an error of its own, which the load tools would count as answers).
fn check(protocol: Protocol, target: &Target) -> Result<()> {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "5", "-H", &format!("Host: {HOST}")])
        .args(["-w", "%{http_code} %{http_version}"]);
    curl.arg(if protocol == Protocol::H2 {
        "--http2"
    } else {
        "--http1.1"
    });
    let out = curl
        .arg(url(protocol, target)?)
        .output()
        .context("running curl")?;
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    let want = if protocol == Protocol::H2 {
        "ok\n200 2"
    } else {
        "ok\n200 1.1"
    };
    if got != want {
        bail!(
            "{} answered {got:?} where the backend's {want:?} was expected",
            target.name
        );
    }
    Ok(())
}

/// One run of `protocol`'s load against `target`, with the CPU its process tree used.
fn measure(args: &Args, dir: &Path, protocol: Protocol, target: &Target) -> Result<Measured> {
    let (user0, sys0) = tree_cpu(target.pid)?;
    let run = match protocol {
        Protocol::Http1 | Protocol::Tls => wrk(
            &url(protocol, target)?,
            args.connections,
            args.duration,
            &[format!("Host: {HOST}")],
        )?,
        Protocol::H2 => {
            let (run, tls) = h2load(
                &url(protocol, target)?,
                args.h2_clients,
                args.h2_streams,
                args.duration,
                &[format!(":authority: {HOST}")],
                &dir.join("h2load.log"),
            )?;
            if tls.is_empty() {
                bail!("h2load did not use TLS");
            }
            run
        }
    };
    let (user1, sys1) = tree_cpu(target.pid)?;
    let requests = run.rps * args.duration as f64;
    Ok(Measured {
        run,
        user_us: (user1 - user0) * 1e6 / requests,
        sys_us: (sys1 - sys0) * 1e6 / requests,
    })
}

fn print(name: &str, m: &Measured, base: Option<&Run>) {
    report(name, &m.run, base);
    println!(
        "  {:<22} CPU per request: user {:.1} us, system {:.1} us, total {:.1} us",
        "",
        m.user_us,
        m.sys_us,
        m.user_us + m.sys_us
    );
}

fn median_of(runs: &[Measured]) -> Measured {
    let mid = |f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Measured {
        run: median(&runs.iter().map(|m| m.run).collect::<Vec<_>>()),
        user_us: mid(|m| m.user_us),
        sys_us: mid(|m| m.sys_us),
    }
}

/// Rounds over `targets` (the first is the reference the others' ratios are against); returns
/// the medians.
fn compare(
    args: &Args,
    dir: &Path,
    protocol: Protocol,
    targets: &[Target],
) -> Result<Vec<Measured>> {
    for t in targets {
        check(protocol, t)?;
    }
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, t) in targets.iter().enumerate() {
            let m = measure(args, dir, protocol, t)?;
            print(&format!("{} #{}", t.name, round + 1), &m, None);
            runs[i].push(m);
        }
    }
    let med: Vec<Measured> = runs.iter().map(|r| median_of(r)).collect();
    println!("  medians (ratios against {}):", targets[0].name);
    for (t, m) in targets.iter().zip(&med) {
        print(t.name, m, Some(&med[0].run));
    }
    Ok(med)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cores = Cores::of(&allowed_cpus());
    match &cores {
        Some(c) => {
            println!(
                "CPUs: proxy under test {:?}, backend {:?}, load generator {:?}",
                c.proxy, c.backend, c.load
            );
            // Whatever this process starts from now on inherits the load generator's CPUs.
            pin_tree(std::process::id(), &c.load)?;
        }
        None => println!("one CPU: the proxy, the backend and the load share it"),
    }
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path())?;
    let backend = free_port();
    let backend_proc = nginx(
        dir.path(),
        "backend",
        &format!("server {{ listen 127.0.0.1:{backend}; location / {{ return 200 \"ok\\n\"; }} }}"),
    )?;
    wait_for_port(backend, "the backend")?;
    let mut summary = Vec::new();
    for &log in &args.access_log {
        let on = log == Log::On;
        println!(
            "== access log {}",
            if on {
                "on: nginx's combined format and Switchyard's default line, each to a file, \
                 both written in batches of up to 32 KiB or 100 ms"
            } else {
                "off"
            }
        );
        let [nginx_http, nginx_https, haproxy_port, http, https] = [(); 5].map(|_| free_port());
        let access = if on {
            format!(
                "access_log {} combined buffer=32k flush=100ms;",
                dir.path().join("nginx-access.log").display()
            )
        } else {
            String::new()
        };
        let nginx_proxy = nginx(
            dir.path(),
            "proxy",
            &format!(
                "upstream be {{ server 127.0.0.1:{backend}; keepalive 256; }}\n\
                 server {{ listen 127.0.0.1:{nginx_http}; listen 127.0.0.1:{nginx_https} ssl http2;\n\
                   server_name {HOST} localhost; {access}\n\
                   ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3;\n\
                   location {PATH} {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}",
                cert.display(),
                key.display()
            ),
        )?;
        // HAProxy logs only to syslog: it is measured with the log off, over plain HTTP/1.1.
        let haproxy = (!on && args.protocols.contains(&Protocol::Http1))
            .then(|| haproxy(dir.path(), haproxy_port, backend))
            .transpose()?;
        let data = dir
            .path()
            .join(format!("switchyard-{}", if on { "log" } else { "nolog" }));
        let filter = if on {
            "warn,switchyard::access=info"
        } else {
            "warn"
        };
        let up = Up::start_logging(
            &args.switchyard,
            &data,
            &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", filter)],
            &[
                "--ingress-http",
                &format!("127.0.0.1:{http}"),
                "--ingress-https",
                &format!("127.0.0.1:{https}"),
                "--ingress-access-log",
                if on { "true" } else { "false" },
                "--ingress-threads",
                "1",
                "--dns-listen",
                &format!("127.0.0.1:{}", free_port()),
            ],
            Some(&dir.path().join(format!(
                "switchyard-{}.log",
                if on { "log" } else { "nolog" }
            ))),
        )
        .await?;
        for p in [nginx_http, nginx_https, http, https] {
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
            "/api/v1/namespaces/default/secrets",
            serde_json::json!({
                "metadata": {"name": "bench-tls"},
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": std::fs::read_to_string(&cert)?,
                    "tls.key": std::fs::read_to_string(&key)?,
                },
            })
            .to_string(),
        )
        .await?;
        conn.create(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
            ingress("bench", HOST, true),
        )
        .await?;
        wait_hosts(up.metrics, 1).await?;

        let nginx_target = Target {
            name: "nginx",
            pid: nginx_proxy.0.id(),
            http: nginx_http,
            https: Some(nginx_https),
        };
        let switchyard = Target {
            name: "switchyard",
            pid: up.process.0.id(),
            http,
            https: Some(https),
        };
        // Pinned once every process has its workers (nginx forks them after it listens).
        if let Some(c) = &cores {
            pin_tree(backend_proc.0.id(), &c.backend)?;
            let proxies = [Some(nginx_proxy.0.id()), haproxy.as_ref().map(|h| h.0.id())];
            for pid in proxies.into_iter().flatten().chain([switchyard.pid]) {
                pin_tree(pid, &c.proxy)?;
            }
        }
        for &protocol in &args.protocols {
            let what = match protocol {
                Protocol::Http1 => format!(
                    "HTTP/1.1 keep-alive: wrk -t1 -c{} -d{}s, Host: {HOST}, GET {PATH}",
                    args.connections, args.duration
                ),
                Protocol::Tls => format!(
                    "HTTP/1.1 over TLS (SNI localhost): wrk -t1 -c{} -d{}s",
                    args.connections, args.duration
                ),
                Protocol::H2 => format!(
                    "HTTP/2 over TLS: h2load -t1 -c{} -m{} -D{}",
                    args.h2_clients, args.h2_streams, args.duration
                ),
            };
            println!("-- {what}, {} rounds", args.rounds);
            let mut targets = vec![nginx_target, switchyard];
            if let (Protocol::Http1, Some(h)) = (protocol, &haproxy) {
                targets.push(Target {
                    name: "haproxy",
                    pid: h.0.id(),
                    http: haproxy_port,
                    https: None,
                });
                if !on {
                    targets.push(Target {
                        name: "backend (direct)",
                        pid: backend_proc.0.id(),
                        http: backend,
                        https: None,
                    });
                }
            }
            let med = compare(&args, dir.path(), protocol, &targets)?;
            summary.push((log, protocol, med[0], med[1]));
        }

        if !on && args.hosts > 0 {
            let one_host = summary
                .iter()
                .find(|(l, p, _, _)| *l == Log::Off && *p == Protocol::Http1)
                .map(|(_, _, _, ours)| ours.run);
            large_table(&args, dir.path(), &up, [nginx_target, switchyard], one_host).await?;
        }
    }

    println!("== summary: switchyard against nginx (medians)");
    for (log, protocol, nginx, ours) in summary {
        let name = match protocol {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Tls => "TLS",
            Protocol::H2 => "HTTP/2",
        };
        let log = if log == Log::On { "log on" } else { "log off" };
        println!(
            "  {name:<8} {log:<7} rps {:>7.0} vs {:>7.0} ({:.2}x)  p99 {:>6.0} vs {:>6.0} us ({:.2}x)  \
             CPU/request user+sys {:.1}+{:.1} vs {:.1}+{:.1} us",
            ours.run.rps,
            nginx.run.rps,
            ours.run.rps / nginx.run.rps,
            ours.run.p99_us,
            nginx.run.p99_us,
            ours.run.p99_us / nginx.run.p99_us,
            ours.user_us,
            ours.sys_us,
            nginx.user_us,
            nginx.sys_us,
        );
    }
    Ok(())
}

/// The same rule with `--hosts` more hosts in Switchyard's table, plain HTTP/1.1.
async fn large_table(
    args: &Args,
    dir: &Path,
    up: &Up,
    targets: [Target; 2],
    one_host: Option<Run>,
) -> Result<()> {
    let started = Instant::now();
    api_creates(
        &up.target,
        16,
        args.hosts,
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        |i| ingress(&format!("host-{i}"), &format!("host-{i}.example"), false),
    )
    .await?;
    let created = started.elapsed();
    let programmed = wait_hosts(up.metrics, args.hosts as u64 + 1).await?;
    println!(
        "-- {} more hosts: created in {:.2} s, all in the router {:.2} s after the last create",
        args.hosts,
        created.as_secs_f64(),
        programmed.as_secs_f64()
    );
    let settled = wait_idle(targets[1].pid).await?;
    println!(
        "   status of every Ingress written: the agent idle {:.1} s after the last create",
        settled.as_secs_f64()
    );
    let med = compare(args, dir, Protocol::Http1, &targets)?;
    println!(
        "   switchyard with {} hosts: {:.2}x of nginx in the same rounds",
        args.hosts + 1,
        med[1].run.rps / med[0].run.rps
    );
    if let Some(one) = one_host {
        println!(
            "   switchyard with {} hosts against 1 host: {:.2}x",
            args.hosts + 1,
            med[1].run.rps / one.rps
        );
    }
    Ok(())
}
