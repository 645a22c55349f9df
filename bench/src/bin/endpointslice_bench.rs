//! EndpointSlice controller at scale: `--services` Services, each selecting `--pods-per-service`
//! Pods.
//!
//! Prints, in one run:
//! - controller latency with `switchyard server` alone: a Pod's Ready condition flips (the status
//!   write acknowledged by the API) -> a watcher of EndpointSlices sees the endpoint's new
//!   `ready`, p50/p99, and the server's CPU and RSS;
//! - the same in `switchyard up`, with the node agent beside it on the same cores;
//! - end to end in `switchyard up`: a Service whose only listening Pod turns Ready (acknowledged)
//!   -> the first connection through its ClusterIP reaches that Pod, p50/p99, and the agent's own
//!   `kubeproxy_network_programming_duration_seconds`.
//!
//! Pods are registered as a kubelet would (created bound to the node, then their status written);
//! their IPs are loopback addresses (127.30.x.y), so the measured Pods are listeners of this
//! process.
//!
//! Usage: endpointslice-bench --switchyard target/release/switchyard

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{
    api_creates, cpu_seconds, rss_mb, run_parallel, spawn_watchers, start_server, Target, Up,
};
use switchyard_bench::{print_programming_metric, Samples};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    /// Ready flips measured for the controller.
    #[arg(long, default_value_t = 300)]
    flips: usize,
    /// Services measured end to end (each gets one listening Pod).
    #[arg(long, default_value_t = 100)]
    end_to_end: usize,
}

const NS: &str = "/api/v1/namespaces/default";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const PODS: &str = "/api/v1/namespaces/default/pods";
const TARGET_PORT: u16 = 8080;

/// Pod `n`'s address in `net`.0.0.0/8 (127 in `switchyard up`, whose endpoints may be loopback
/// addresses; 10 for `switchyard server`, whose may not).
fn pod_ip(net: u8, n: usize) -> Ipv4Addr {
    Ipv4Addr::new(net, 30, (n / 250) as u8, (n % 250 + 1) as u8)
}

fn service(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"selector":{{"app":"svc-{i}"}},"ports":[{{"name":"http","port":80,"targetPort":{TARGET_PORT}}}]}}}}"#
    )
}

fn pod(n: usize, per: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"pod-{n}","labels":{{"app":"svc-{}"}}}},"spec":{{"nodeName":"bench","containers":[{{"name":"c","image":"i"}}]}}}}"#,
        n / per
    )
}

fn status(net: u8, n: usize, ready: bool) -> String {
    let ip = pod_ip(net, n);
    let ready = if ready { "True" } else { "False" };
    format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
    )
}

/// A listener on `ip` that answers every connection with `name`.
async fn listener(ip: Ipv4Addr, name: String) -> Result<()> {
    let l = TcpListener::bind((ip, TARGET_PORT)).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    Ok(())
}

async fn read_name(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8(buf).ok()
}

/// What the slice watcher last saw: address -> ready, with when it changed.
type Seen = Arc<Mutex<HashMap<String, (bool, Instant)>>>;

fn p(s: &mut Samples, q: f64) -> f64 {
    s.quantile(q) as f64 / 1000.0
}

/// A cluster set up for the benchmark: the slice watcher's view and the Pods left not Ready.
struct Cluster {
    net: u8,
    seen: Seen,
    not_ready: Arc<HashSet<usize>>,
    _watch: Vec<tokio::task::JoinHandle<()>>,
}

/// Registers the Services and Pods (`not_ready` Pods stay not Ready) and waits until every
/// endpoint is in a slice.
async fn setup(target: &Target, args: &Args, net: u8, not_ready: &[usize]) -> Result<Cluster> {
    let per = args.pods_per_service;
    let total = args.services * per;
    // Every EndpointSlice event: the ready state of each endpoint, with when it was seen.
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let watch = spawn_watchers(
        target,
        1,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=1",
        Arc::new(move |line: &str| {
            let now = Instant::now();
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
                return;
            };
            let mut seen = record.lock().unwrap();
            for ep in ev["object"]["endpoints"].as_array().into_iter().flatten() {
                if let Some(a) = ep["addresses"][0].as_str() {
                    let ready = ep["conditions"]["ready"] == true;
                    let entry = seen.entry(a.to_string()).or_insert((!ready, now));
                    if entry.0 != ready {
                        *entry = (ready, now);
                    }
                }
            }
        }),
    )
    .await?;
    let started = Instant::now();
    api_creates(target, 32, args.services, SERVICES, service).await?;
    api_creates(target, 32, total, PODS, move |n| pod(n, per)).await?;
    let not_ready: Arc<HashSet<usize>> = Arc::new(not_ready.iter().copied().collect());
    let (t, nr) = (target.clone(), not_ready.clone());
    run_parallel(32, total, move |_| {
        let (t, nr) = (t.clone(), nr.clone());
        async move {
            let conn = Arc::new(tokio::sync::Mutex::new(t.connect().await?));
            let op: Box<
                dyn FnMut(usize) -> futures::future::BoxFuture<'static, Result<()>> + Send,
            > = Box::new(move |n| {
                let (conn, body) = (conn.clone(), status(net, n, !nr.contains(&n)));
                Box::pin(async move {
                    conn.lock()
                        .await
                        .merge_patch(&format!("{NS}/pods/pod-{n}/status"), body)
                        .await
                })
            });
            Ok(op)
        }
    })
    .await?;
    while seen.lock().unwrap().len() < total {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {total} endpoints appeared",
                seen.lock().unwrap().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} Services and {total} Pods registered (32 clients) and every endpoint in a slice in {:.1} s",
        args.services,
        started.elapsed().as_secs_f64()
    );
    // What the registration left queued (agent syncs, own slice events) drains before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Cluster {
        net,
        seen,
        not_ready,
        _watch: watch,
    })
}

/// Flips the Ready condition of Pods (one at a time, spread over every Service) and measures
/// each until the slice watcher sees it.
async fn flips(target: &Target, args: &Args, cluster: &Cluster) -> Result<Samples> {
    let total = args.services * args.pods_per_service;
    let mut conn = target.connect().await?;
    let mut samples = Samples::new();
    let mut ready: HashMap<usize, bool> = HashMap::new();
    // A stride prime to the number of Pods, skipping those left not Ready.
    let mut picks = (0..)
        .map(|k: usize| k * 7919 % total)
        .filter(|n| !cluster.not_ready.contains(n));
    for _ in 0..args.flips {
        let n = picks.next().expect("endless");
        let now_ready = !ready.get(&n).copied().unwrap_or(true);
        let body = status(cluster.net, n, now_ready);
        conn.merge_patch(&format!("{NS}/pods/pod-{n}/status"), body)
            .await?;
        let acked = Instant::now();
        let addr = pod_ip(cluster.net, n).to_string();
        loop {
            let hit = cluster.seen.lock().unwrap().get(&addr).copied();
            if let Some((_, at)) = hit.filter(|(r, _)| *r == now_ready) {
                samples.record(at.saturating_duration_since(acked).as_micros() as u64);
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("pod-{n}'s endpoint never became ready={now_ready}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        ready.insert(n, now_ready);
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let per = args.pods_per_service;
    let total = args.services * per;
    println!(
        "# endpointslice-bench on {} cores: {} Services x {} Pods",
        std::thread::available_parallelism()?.get(),
        args.services,
        per
    );

    // The controller alone: `switchyard server`.
    {
        let dir = tempfile::tempdir()?;
        let (server, target) = start_server(&args.switchyard, &dir.path().join("data")).await?;
        println!("\n## controller (switchyard server): Pod Ready flips -> EndpointSlice seen by a watcher");
        let cluster = setup(&target, &args, 10, &[]).await?;
        let cpu_before = cpu_seconds(Some(server.0.id()))?;
        let mut s = flips(&target, &args, &cluster).await?;
        println!(
            "{} flips over {total} Pods: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 50 ms); server CPU {:.2} s, RSS {:.0} MB",
            s.count(),
            p(&mut s, 0.5),
            p(&mut s, 0.99),
            s.max() as f64 / 1000.0,
            cpu_seconds(Some(server.0.id()))? - cpu_before,
            rss_mb(server.0.id())?
        );
    }

    // With the node agent: `switchyard up` (userspace proxy). The measured Services' last Pods
    // listen and start not Ready.
    let dir = tempfile::tempdir()?;
    let up = Up::start(
        &args.switchyard,
        &dir.path().join("data"),
        &[],
        &["--service-cidr", "127.20.0.0/16"],
    )
    .await?;
    let (target, metrics) = (up.target.clone(), up.metrics);
    let up_pid = up.process.0.id();
    println!("\n## with the node agent (switchyard up, userspace proxy)");
    let measured: Vec<usize> = (0..args.end_to_end.min(args.services))
        .map(|k| k * args.services / args.end_to_end.max(1))
        .collect();
    let listening: Vec<usize> = measured.iter().map(|i| i * per + per - 1).collect();
    for &n in &listening {
        listener(pod_ip(127, n), format!("pod-{n}")).await?;
    }
    let cluster = setup(&target, &args, 127, &listening).await?;
    let cpu_before = cpu_seconds(Some(up_pid))?;
    let mut s = flips(&target, &args, &cluster).await?;
    println!(
        "controller, agent alongside: {} flips: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        s.count(),
        p(&mut s, 0.5),
        p(&mut s, 0.99),
        s.max() as f64 / 1000.0
    );
    let mut conn = target.connect().await?;
    let (_, list) = conn.request("GET", SERVICES, Bytes::new()).await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let vips: HashMap<String, SocketAddr> = list["items"]
        .as_array()
        .context("no Services")?
        .iter()
        .filter_map(|s| {
            Some((
                s["metadata"]["name"].as_str()?.to_string(),
                SocketAddr::new(s["spec"]["clusterIP"].as_str()?.parse().ok()?, 80),
            ))
        })
        .collect();
    let mut e2e = Samples::new();
    for (&i, &n) in measured.iter().zip(&listening) {
        let vip = vips[&format!("svc-{i}")];
        conn.merge_patch(&format!("{NS}/pods/pod-{n}/status"), status(127, n, true))
            .await?;
        let acked = Instant::now();
        let want = format!("pod-{n}");
        loop {
            if read_name(vip).await.as_deref() == Some(want.as_str()) {
                e2e.record(acked.elapsed().as_micros() as u64);
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("svc-{i} never reached pod-{n}");
            }
        }
    }
    println!(
        "end to end: a Pod turns Ready -> the first connection through the ClusterIP reaches it ({} Services): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        e2e.count(),
        p(&mut e2e, 0.5),
        p(&mut e2e, 0.99),
        e2e.max() as f64 / 1000.0
    );
    print_programming_metric(metrics).await?;
    println!(
        "switchyard up: RSS {:.0} MB; CPU during the flips and end-to-end changes {:.1} s",
        rss_mb(up_pid)?,
        cpu_seconds(Some(up_pid))? - cpu_before
    );
    Ok(())
}
