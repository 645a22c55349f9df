//! Kubernetes scale with kwok (`sigs.k8s.io/kwok`, built by `bench/peers/build.sh`): simulated
//! nodes and pods without kubelets, against `switchyard server` and, in the same run, against
//! kube-apiserver + etcd + kube-controller-manager (its EndpointSlice controller).
//!
//! For each API server:
//! - 1,000 Nodes managed by kwok (Ready, a Lease renewed every 10 s: 100 writes/s), 3,000
//!   Services selecting 3,000 label groups, 30,000 Pods (10 per group) created directly, bound to
//!   the nodes; kwok makes them Running and Ready with an address, the EndpointSlice controller
//!   puts them in slices. Printed: creates/s and the p99 of each create, and the time until
//!   every Pod is a ready endpoint;
//! - then a steady window with kwok's heartbeats going on, measured against SIG Scalability's
//!   API call SLOs: mutating calls (ConfigMap create and delete) and single-object GETs of Pods
//!   p99 < 1 s, LIST of the 30,000 Pods p99 < 30 s; EndpointSlice update latency (a Pod's Ready
//!   condition set False -> its endpoint not ready in its slice); server RSS and CPU.
//!
//! Usage: kwok-bench --switchyard target/release/switchyard --peers DIR

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{
    cpu_seconds, free_port, rss_mb, run_parallel, start_server_with, Proc, Target,
};
use switchyard_bench::peers::KubeApiserver;
use switchyard_bench::Samples;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Where bench/peers/build.sh put kwok, its stages, kube-apiserver, etcd and
    /// kube-controller-manager.
    #[arg(long)]
    peers: PathBuf,
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    #[arg(long, default_value_t = 3000)]
    groups: usize,
    /// Seconds of the steady window.
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// Which API servers.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "switchyard,kube-apiserver"
    )]
    servers: Vec<String>,
}

const NS: &str = "/api/v1/namespaces/default";

fn node(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"node-{i}","annotations":{{"kwok.x-k8s.io/node":"fake"}},"labels":{{"type":"kwok"}}}},"status":{{"allocatable":{{"cpu":"32","memory":"256Gi","pods":"110"}},"capacity":{{"cpu":"32","memory":"256Gi","pods":"110"}}}}}}"#
    )
}

fn service(g: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{g}"}},"spec":{{"selector":{{"app":"g-{g}"}},"ports":[{{"name":"http","port":80,"targetPort":8080}}]}}}}"#
    )
}

fn pod(i: usize, groups: usize, nodes: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p-{i}","labels":{{"app":"g-{}"}}}},"spec":{{"nodeName":"node-{}","containers":[{{"name":"c","image":"fake","ports":[{{"containerPort":8080}}]}}]}}}}"#,
        i % groups,
        i % nodes
    )
}

/// A create or a call timed into `samples`, failing on a status outside 2xx.
async fn timed(
    conn: &mut switchyard_bench::api::Conn,
    samples: &Mutex<Samples>,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> Result<Bytes> {
    let start = Instant::now();
    let (status, resp) = conn
        .request_as(method, path, content_type, Bytes::from(body))
        .await?;
    samples
        .lock()
        .unwrap()
        .record(start.elapsed().as_micros() as u64);
    if !(200..300).contains(&status) {
        bail!(
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&resp)
        );
    }
    Ok(resp)
}

/// `total` creates at `path` over 32 connections: creates/s, and the latency of each.
async fn creates(
    target: &Target,
    path: &str,
    total: usize,
    body: impl Fn(usize) -> String + Clone + Send + Sync + 'static,
) -> Result<(f64, Samples)> {
    let samples = Arc::new(Mutex::new(Samples::new()));
    let (target, path, s) = (target.clone(), Arc::<str>::from(path), samples.clone());
    let rate = run_parallel(32, total, move |_| {
        let (target, body, path, s) = (target.clone(), body.clone(), path.clone(), s.clone());
        async move {
            let conn = Arc::new(tokio::sync::Mutex::new(target.connect().await?));
            let op: Box<
                dyn FnMut(usize) -> futures::future::BoxFuture<'static, Result<()>> + Send,
            > = Box::new(move |i| {
                let (conn, object, path, s) = (conn.clone(), body(i), path.clone(), s.clone());
                Box::pin(async move {
                    let mut c = conn.lock().await;
                    timed(&mut c, &s, "POST", &path, "application/json", object).await?;
                    Ok(())
                })
            });
            Ok(op)
        }
    })
    .await?;
    let s = samples.lock().unwrap().clone();
    Ok((rate, s))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The ready endpoints of every slice.
async fn ready_endpoints(target: &Target) -> Result<usize> {
    let mut conn = target.connect().await?;
    let (status, body) = conn
        .request(
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Bytes::new(),
        )
        .await?;
    if status != 200 {
        bail!("listing slices: {status}");
    }
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(list["items"]
        .as_array()
        .context("no slice list")?
        .iter()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] == true)
        .count())
}

/// Whether the endpoint of Pod `name` in the slices of `service` is not ready.
async fn endpoint_unready(
    conn: &mut switchyard_bench::api::Conn,
    service: &str,
    name: &str,
) -> Result<bool> {
    let (_, body) = conn
        .request(
            "GET",
            &format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{service}"),
            Bytes::new(),
        )
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .any(|e| e["targetRef"]["name"] == name && e["conditions"]["ready"] == false))
}

/// Writes a kubeconfig for `target` (CA and token files in `dir`).
fn kubeconfig(dir: &Path, port: u16) -> Result<PathBuf> {
    let token = std::fs::read_to_string(dir.join("admin-token"))?;
    let path = dir.join("bench.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            dir.join("ca.crt").display(),
            token.trim()
        ),
    )?;
    Ok(path)
}

/// The whole load against one API server; `pids` are its processes (RSS and CPU).
async fn run(name: &str, target: &Target, kc: &Path, pids: &[u32], args: &Args) -> Result<()> {
    println!("\n# {name}");
    let stages = args.peers.join("kwok-stages");
    let mut kwok = Command::new(args.peers.join("kwok"));
    kwok.arg("--kubeconfig")
        .arg(kc)
        .args(["--manage-all-nodes=false"])
        .args([
            "--manage-nodes-with-annotation-selector",
            "kwok.x-k8s.io/node=fake",
        ])
        .args([
            "--node-lease-duration-seconds",
            "40",
            "--cidr",
            "10.128.0.0/16",
        ])
        .args(["--server-address", &format!("127.0.0.1:{}", free_port())]);
    for entry in std::fs::read_dir(&stages).context("kwok's stages")? {
        kwok.arg("-c").arg(entry?.path());
    }
    let kwok = Proc::start(&mut kwok, "kwok")?;
    let cpu = || -> Result<f64> { pids.iter().map(|p| cpu_seconds(Some(*p))).sum() };
    let rss = || -> Result<f64> { pids.iter().map(|p| rss_mb(*p)).sum() };

    let report = |what: &str, (rate, mut s): (f64, Samples)| {
        println!(
            "{what}: {rate:.0}/s, create p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max())
        );
    };
    report(
        &format!("{} Nodes", args.nodes),
        creates(target, "/api/v1/nodes", args.nodes, node).await?,
    );
    let groups = args.groups;
    report(
        &format!("{groups} Services"),
        creates(target, &format!("{NS}/services"), groups, service).await?,
    );
    let nodes = args.nodes;
    let mut conn = target.connect().await?;
    let waiting = Instant::now();
    while conn
        .request(
            "GET",
            &format!("{NS}/serviceaccounts/default"),
            Bytes::new(),
        )
        .await?
        .0
        != 200
    {
        if waiting.elapsed() > Duration::from_secs(60) {
            bail!("no default ServiceAccount after a minute");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created = Instant::now();
    report(
        &format!("{} Pods", args.pods),
        creates(target, &format!("{NS}/pods"), args.pods, move |i| {
            pod(i, groups, nodes)
        })
        .await?,
    );
    loop {
        let ready = ready_endpoints(target).await?;
        if ready >= args.pods {
            break;
        }
        if created.elapsed() > Duration::from_secs(900) {
            bail!(
                "{ready} of {} Pods are ready endpoints after 15 minutes",
                args.pods
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "every Pod a ready endpoint {:.1} s after the first Pod create",
        created.elapsed().as_secs_f64()
    );
    println!("RSS with everything: {:.0} MB", rss()?);

    // The steady window.
    let end = Instant::now() + Duration::from_secs(args.steady_secs);
    let cpu0 = cpu()?;
    let (mutating, gets, lists, slices) = (
        Arc::new(Mutex::new(Samples::new())),
        Arc::new(Mutex::new(Samples::new())),
        Arc::new(Mutex::new(Samples::new())),
        Arc::new(Mutex::new(Samples::new())),
    );
    let mut tasks = Vec::new();
    {
        let (t, s) = (target.clone(), mutating.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await?;
            let mut i = 0;
            while Instant::now() < end {
                let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"m-{i}"}},"data":{{"k":"v"}}}}"#);
                timed(&mut c, &s, "POST", &format!("{NS}/configmaps"), "application/json", body).await?;
                timed(&mut c, &s, "DELETE", &format!("{NS}/configmaps/m-{i}"), "application/json", String::new()).await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    {
        let (t, s, pods) = (target.clone(), gets.clone(), args.pods);
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await?;
            let mut i = 0usize;
            while Instant::now() < end {
                let p = (i * 7919) % pods;
                timed(
                    &mut c,
                    &s,
                    "GET",
                    &format!("{NS}/pods/p-{p}"),
                    "application/json",
                    String::new(),
                )
                .await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }));
    }
    {
        let (t, s) = (target.clone(), lists.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await?;
            while Instant::now() < end {
                timed(
                    &mut c,
                    &s,
                    "GET",
                    &format!("{NS}/pods"),
                    "application/json",
                    String::new(),
                )
                .await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(())
        }));
    }
    {
        let (t, s, pods, groups) = (target.clone(), slices.clone(), args.pods, args.groups);
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await?;
            let mut k = 0usize;
            while Instant::now() < end {
                let p = (k * 4099 + 17) % pods;
                let (name, svc) = (format!("p-{p}"), format!("svc-{}", p % groups));
                let (status, body) = c
                    .request_as(
                        "PATCH",
                        &format!("{NS}/pods/{name}/status"),
                        "application/strategic-merge-patch+json",
                        Bytes::from(
                            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
                        ),
                    )
                    .await?;
                if status != 200 {
                    bail!(
                        "patching {name}: {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let acked = Instant::now();
                // A flip not seen in 30 s is recorded as 30 s and printed; the window goes on.
                while !endpoint_unready(&mut c, &svc, &name).await? {
                    if acked.elapsed() > Duration::from_secs(30) {
                        println!("{name}'s endpoint was not yet not ready 30 s after the patch");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                s.lock().unwrap().record(acked.elapsed().as_micros() as u64);
                k += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let used = cpu()? - cpu0;
    let line = |what: &str, s: &Mutex<Samples>, slo_ms: Option<f64>| {
        let mut s = s.lock().unwrap();
        let p99 = ms(s.quantile(0.99));
        let slo = slo_ms.map_or(String::new(), |l| {
            format!(
                " (SLO p99 < {l:.0} ms: {})",
                if p99 < l { "met" } else { "NOT met" }
            )
        });
        println!(
            "{what}: {} calls, p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms{slo}",
            s.count(),
            ms(s.quantile(0.5)),
            ms(s.max())
        );
    };
    println!(
        "\nsteady window of {} s (kwok renewing {} Leases every 10 s):",
        args.steady_secs, args.nodes
    );
    line(
        "mutating (ConfigMap create, delete)",
        &mutating,
        Some(1000.0),
    );
    line("single-object GET of a Pod", &gets, Some(1000.0));
    line(
        &format!("LIST of {} Pods", args.pods),
        &lists,
        Some(30_000.0),
    );
    line(
        "Pod Ready=False -> its endpoint not ready in its slice",
        &slices,
        None,
    );
    println!(
        "server CPU {:.0}% of one core over the window; RSS {:.0} MB",
        100.0 * used / args.steady_secs as f64,
        rss()?
    );
    drop(kwok);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    println!(
        "# kwok-bench on {} cores: {} Nodes, {} Services, {} Pods",
        std::thread::available_parallelism()?.get(),
        args.nodes,
        args.groups,
        args.pods
    );
    for server in &args.servers {
        match server.as_str() {
            "switchyard" => {
                let data = dir.path().join("switchyard");
                let (proc, target) =
                    start_server_with(&args.switchyard, &data, &["--service-cidr", "10.96.0.0/16"])
                        .await?;
                let kc = data.join("admin.kubeconfig");
                run("switchyard server", &target, &kc, &[proc.0.id()], &args).await?;
            }
            "kube-apiserver" => {
                let kdir = dir.path().join("kube");
                let k = KubeApiserver::start(&args.peers, &kdir).await?;
                let kc = kubeconfig(&kdir, k.target.port)?;
                let kcm = Proc::start(
                    Command::new(args.peers.join("kube-controller-manager"))
                        .arg("--kubeconfig")
                        .arg(&kc)
                        // The EndpointSlice controller, and the one that makes each namespace's
                        // default ServiceAccount (Pods are refused without it).
                        .args(["--controllers=endpointslice,serviceaccount"])
                        .args(["--leader-elect=false"])
                        .args(["--bind-address=127.0.0.1"])
                        .arg(format!("--secure-port={}", free_port())),
                    "kube-controller-manager",
                )?;
                let pids = [k.apiserver.0.id(), k.etcd.0.id(), kcm.0.id()];
                run(
                    "kube-apiserver + etcd + kube-controller-manager",
                    &k.target,
                    &kc,
                    &pids,
                    &args,
                )
                .await?;
            }
            other => bail!("unknown server {other}"),
        }
    }
    Ok(())
}
