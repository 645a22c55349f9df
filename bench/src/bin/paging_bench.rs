//! Paged LISTs under writers: do kubectl-style chunked lists (500 per page, each page after the
//! first read at the first page's revision) of `--objects` ConfigMaps slow down writers?
//!
//! One `switchyard server` (release build). `--writers` clients create ConfigMaps (~300 bytes)
//! as fast as they can, each recording every create's latency. Rounds alternate: writers alone,
//! then writers while one client lists all objects in pages of `--page`, a whole list starting
//! every `--list-every-ms` (or back to back with 0). Prints the writers' creates/s and p50/p99
//! per round, and the time of one whole paged list.
//!
//! Usage: paging-bench --switchyard target/release/switchyard

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Parser;
use switchyard_bench::api::{api_creates, start_server, Target};
use switchyard_bench::Samples;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Objects listed.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    #[arg(long, default_value_t = 500)]
    page: usize,
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds of each kind (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A whole paged list starts this often (as a user or a controller would run one); 0 lists
    /// back to back.
    #[arg(long, default_value_t = 1000)]
    list_every_ms: u64,
}

const LISTED: &str = "/api/v1/namespaces/default/configmaps";
const WRITTEN: &str = "/api/v1/namespaces/written/configmaps";

fn configmap(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(200)
    )
}

/// Writers for `secs`: every create's latency, and how many there were.
async fn write_round(target: &Target, writers: usize, secs: u64, round: usize) -> Result<Samples> {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = target.connect().await?;
            let mut s = Samples::new();
            let mut i = 0;
            while Instant::now() < stop {
                let name = format!("r{round}-w{w}-{i}");
                let started = Instant::now();
                c.create(WRITTEN, configmap(&name)).await?;
                s.record(started.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let mut all = Samples::new();
    for t in tasks {
        all.append(t.await??);
    }
    Ok(all)
}

/// Lists every listed object in pages until `stop`; the time of each whole list.
async fn list_loop(
    target: Target,
    page: usize,
    want: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Samples> {
    let mut c = target.connect().await?;
    let mut s = Samples::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let started = Instant::now();
        let (mut seen, mut token) = (0, String::new());
        loop {
            let path = if token.is_empty() {
                format!("{LISTED}?limit={page}")
            } else {
                format!("{LISTED}?limit={page}&continue={token}")
            };
            let (status, body) = c.request("GET", &path, Bytes::new()).await?;
            if status != 200 {
                bail!("list page: {status} {}", String::from_utf8_lossy(&body));
            }
            // Counted without building the objects: the lister shares the machine's cores.
            let page: Page = serde_json::from_slice(&body)?;
            seen += page.items.len();
            token = page.metadata.continue_token.unwrap_or_default();
            if token.is_empty() {
                break;
            }
        }
        if seen != want {
            bail!("a paged list returned {seen} objects, not {want}");
        }
        s.record(started.elapsed().as_micros() as u64);
    }
    Ok(s)
}

#[derive(serde::Deserialize)]
struct Page {
    items: Vec<serde::de::IgnoredAny>,
    metadata: PageMeta,
}

#[derive(serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

fn ms(s: &mut Samples, q: f64) -> f64 {
    s.quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (_server, target) = start_server(&args.switchyard, &dir.path().join("switchyard")).await?;
    let mut c = target.connect().await?;
    c.create(
        "/api/v1/namespaces",
        r#"{"metadata":{"name":"written"}}"#.into(),
    )
    .await?;
    api_creates(&target, 32, args.objects, LISTED, |i| {
        configmap(&format!("listed-{i}"))
    })
    .await?;
    println!(
        "# paging-bench on {} cores: {} writers; {} ConfigMaps listed in pages of {}, a list every {} ms; {} s rounds",
        std::thread::available_parallelism()?.get(),
        args.writers,
        args.objects,
        args.page,
        args.list_every_ms,
        args.seconds
    );
    println!("| round | creates/s | create p50 | create p99 | whole paged lists (p50 / max) |");
    println!("|---|---|---|---|---|");
    for round in 0..args.rounds * 2 {
        let listing = round % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let lister = listing.then(|| {
            tokio::spawn(list_loop(
                target.clone(),
                args.page,
                args.objects,
                Duration::from_millis(args.list_every_ms),
                stop.clone(),
            ))
        });
        let mut w = write_round(&target, args.writers, args.seconds, round).await?;
        stop.store(true, Ordering::Relaxed);
        let lists = match lister {
            Some(l) => {
                let mut s = l.await??;
                format!(
                    "{} lists: {:.1} / {:.1} ms",
                    s.count(),
                    ms(&mut s, 0.5),
                    s.max() as f64 / 1000.0
                )
            }
            None => "—".to_string(),
        };
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {lists} |",
            if listing {
                "writers + paged lists"
            } else {
                "writers alone"
            },
            w.count() as f64 / args.seconds as f64,
            ms(&mut w, 0.5),
            ms(&mut w, 0.99),
        );
    }
    Ok(())
}
