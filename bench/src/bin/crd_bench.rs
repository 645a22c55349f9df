//! Custom resources on the write and read paths: creates/s of HTTPRoutes (the official Gateway
//! API CRD, so its structural schema, defaults and CEL rules run on every write) against creates/s
//! of ConfigMaps of the same size, alternating, 32 clients; then LIST of 10,000 HTTPRoutes, p50
//! and p99. The same for kube-apiserver + etcd when `--peers` is given.
//!
//! Usage: crd-bench --crds DIR (the Gateway API standard CRDs, bench/peers/gateway-api.sh)
//!        [--switchyard target/release/switchyard] [--peers DIR]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, start_server, Target};
use switchyard_bench::peers::KubeApiserver;
use switchyard_bench::Samples;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// The directory of the Gateway API standard CRDs.
    #[arg(long)]
    crds: PathBuf,
    /// Where bench/peers/build.sh put kube-apiserver and etcd; without it, switchyard alone.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Creates per kind and round.
    #[arg(long, default_value_t = 3000)]
    creates: usize,
    /// Rounds of (ConfigMaps, HTTPRoutes).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// HTTPRoutes in the LIST.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
}

const CLIENTS: usize = 32;
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// An HTTPRoute as a real one looks: two hostnames, three rules with path, header and method
/// matches, a header filter, a rewrite, timeouts and weighted backends.
fn route(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{{"name":"{name}","labels":{{"app":"bench"}}}},"spec":{{"parentRefs":[{{"name":"web","sectionName":"http"}}],"hostnames":["{name}.example.com","www.{name}.example.com"],"rules":[{{"matches":[{{"path":{{"type":"PathPrefix","value":"/api"}},"headers":[{{"name":"x-version","value":"v2"}}]}}],"filters":[{{"type":"RequestHeaderModifier","requestHeaderModifier":{{"add":[{{"name":"x-route","value":"{name}"}}]}}}}],"backendRefs":[{{"name":"api-v2","port":8080,"weight":90}},{{"name":"api-v1","port":8080,"weight":10}}]}},{{"matches":[{{"path":{{"type":"Exact","value":"/login"}},"method":"POST"}}],"timeouts":{{"request":"10s","backendRequest":"5s"}},"backendRefs":[{{"name":"auth","port":443}}]}},{{"matches":[{{"path":{{"type":"PathPrefix","value":"/"}}}}],"filters":[{{"type":"URLRewrite","urlRewrite":{{"path":{{"type":"ReplacePrefixMatch","replacePrefixMatch":"/static"}}}}}}],"backendRefs":[{{"name":"static","port":80}}]}}]}}}}"#
    )
}

/// A ConfigMap as long as the HTTPRoute of the same name.
fn configmap(name: &str) -> String {
    let head = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"app":"bench"}}}},"data":{{"payload":""}}}}"#
    );
    let pad = route(name).len().saturating_sub(head.len());
    head.replace(
        r#""payload":"""#,
        &format!(r#""payload":"{}""#, "x".repeat(pad)),
    )
}

/// Installs the HTTPRoute CRD and waits until its kind is served.
async fn install(target: &Target, crds: &Path) -> Result<()> {
    let file = crds.join("gateway.networking.k8s.io_httproutes.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    let crd: serde_json::Value = serde_yaml::from_str(&text)?;
    let mut conn = target.connect().await?;
    conn.create(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd.to_string(),
    )
    .await?;
    let start = Instant::now();
    loop {
        let (status, _) = conn.request("GET", ROUTES, Bytes::new()).await?;
        if status == 200 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the HTTPRoute kind was not served within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Figures {
    configmaps: Vec<f64>,
    routes: Vec<f64>,
    list_p50_ms: f64,
    list_p99_ms: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

async fn measure(name: &str, target: &Target, args: &Args) -> Result<Figures> {
    println!("\n# {name}");
    install(target, &args.crds).await?;
    let (mut configmaps, mut routes) = (Vec::new(), Vec::new());
    let mut made = 0;
    for round in 0..args.rounds {
        let cm = api_creates(target, CLIENTS, args.creates, CONFIGMAPS, move |i| {
            configmap(&format!("c{round}-{i}"))
        })
        .await?;
        let rt = api_creates(target, CLIENTS, args.creates, ROUTES, move |i| {
            route(&format!("r{round}-{i}"))
        })
        .await?;
        made += args.creates;
        println!(
            "round {round}: ConfigMap creates/s {cm:.0}, HTTPRoute creates/s {rt:.0} ({:.0}%), {CLIENTS} clients, {} bytes each",
            100.0 * rt / cm,
            route("r0-0").len()
        );
        configmaps.push(cm);
        routes.push(rt);
    }
    if made < args.objects {
        api_creates(target, CLIENTS, args.objects - made, ROUTES, |i| {
            route(&format!("fill-{i}"))
        })
        .await?;
    }
    let mut conn = target.connect().await?;
    let mut list = Samples::new();
    let mut items = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let (status, body) = conn.request("GET", ROUTES, Bytes::new()).await?;
        list.record(start.elapsed().as_micros() as u64);
        if status != 200 {
            bail!("list: {status}");
        }
        items = memchr_count(&body, b"\"kind\":\"HTTPRoute\"");
    }
    let (p50, p99) = (
        list.quantile(0.5) as f64 / 1000.0,
        list.quantile(0.99) as f64 / 1000.0,
    );
    println!("LIST {items} HTTPRoutes (full JSON, 50 requests): p50 {p50:.1} ms, p99 {p99:.1} ms");
    Ok(Figures {
        configmaps,
        routes,
        list_p50_ms: p50,
        list_p99_ms: p99,
    })
}

fn memchr_count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    println!(
        "# crd-bench on {} cores: {} creates per kind and round, {} rounds, {CLIENTS} clients",
        std::thread::available_parallelism()?.get(),
        args.creates,
        args.rounds
    );
    let ours = {
        let (_server, target) =
            start_server(&args.switchyard, &dir.path().join("switchyard")).await?;
        measure("switchyard server", &target, &args).await?
    };
    let theirs = match &args.peers {
        Some(peers) => {
            let k = KubeApiserver::start(peers, &dir.path().join("kube")).await?;
            Some(measure("kube-apiserver + etcd", &k.target, &args).await?)
        }
        None => None,
    };
    println!("\n# side by side (median of the rounds)");
    let show = |name: &str, f: &Figures| {
        let (cm, rt) = (median(&f.configmaps), median(&f.routes));
        println!(
            "{name:<24} ConfigMap creates/s {cm:>6.0}  HTTPRoute creates/s {rt:>6.0} ({:.0}% of ConfigMaps)  LIST p50 {:.1} ms p99 {:.1} ms",
            100.0 * rt / cm,
            f.list_p50_ms,
            f.list_p99_ms
        );
    };
    show("switchyard server", &ours);
    if let Some(t) = &theirs {
        show("kube-apiserver + etcd", t);
    }
    Ok(())
}
