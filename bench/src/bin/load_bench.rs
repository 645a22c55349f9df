//! Load generator benchmark: `switchyard load` against wrk and oha, one core each, on the same
//! nginx backend (one worker, `return 200`), in one run.
//!
//! Prints:
//! - capacity: closed loop, 50 connections, rounds alternating between the generators; the
//!   median requests/s of each and the ratio to wrk;
//! - open loop at a fixed rate: `switchyard load --rate` against oha's `-q` with
//!   `--latency-correction` (wrk2's correction: latency from when each request was due).
//!
//! Every generator is pinned to CPU 1 (`taskset`) with one thread (`-t 1`; oha:
//! `TOKIO_WORKER_THREADS=1`), nginx to CPU 0.
//!
//! Usage: load-bench --switchyard target/release/switchyard --oha target/tools/bin/oha

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_bench::api::{free_port, wait_for_port};
use switchyard_bench::peers::{median, nginx, report, wrk, Run};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    #[arg(long, default_value = "target/tools/bin/oha")]
    oha: PathBuf,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests per second of the open-loop comparison.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
}

fn pinned(program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1", program]);
    c
}

fn switchyard(args: &Args, url: &str, extra: &[&str]) -> Result<serde_json::Value> {
    let out = pinned(&args.switchyard.to_string_lossy())
        .args(["load", url, "-t", "1", "--json"])
        .args(["-c", &args.connections.to_string()])
        .args(["-d", &format!("{}s", args.duration)])
        .args(extra)
        .output()
        .context("running switchyard load")?;
    if !out.status.success() {
        bail!("switchyard load: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn switchyard_run(j: &serde_json::Value) -> Run {
    let errors: u64 = j["errors"]
        .as_object()
        .map(|e| e.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    Run {
        rps: j["requests_per_second"].as_f64().unwrap_or(0.0),
        p50_us: j["latency_us"]["p50"].as_f64().unwrap_or(f64::NAN),
        p99_us: j["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN),
        errors,
    }
}

fn oha(args: &Args, url: &str, extra: &[&str]) -> Result<serde_json::Value> {
    let out = pinned(&args.oha.to_string_lossy())
        .env("TOKIO_WORKER_THREADS", "1")
        .args(["--no-tui", "--output-format", "json"])
        .args(["-c", &args.connections.to_string()])
        .args(["-z", &format!("{}s", args.duration)])
        .args(extra)
        .arg(url)
        .output()
        .context("running oha (bench/load.sh installs it from crates.io)")?;
    if !out.status.success() {
        bail!("oha: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn oha_run(j: &serde_json::Value) -> Run {
    let total = j["summary"]["total"].as_u64().unwrap_or(0);
    let ok = j["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let failed: u64 = j["errorDistribution"]
        .as_object()
        .map(|e| e.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    Run {
        rps: j["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_us: j["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e6,
        p99_us: j["latencyPercentiles"]["p99"].as_f64().unwrap_or(f64::NAN) * 1e6,
        errors: failed + total.saturating_sub(ok + failed),
    }
}

/// Pins a process and its children to `cpu`.
fn pin(pid: u32, cpu: &str) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for p in std::iter::once(pid.to_string()).chain(children.split_whitespace().map(String::from)) {
        let _ = Command::new("taskset").args(["-apc", cpu, &p]).output();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let nginx_proc = nginx(
        dir.path(),
        "backend",
        &format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}"),
    )?;
    wait_for_port(port, "nginx")?;
    pin(nginx_proc.0.id(), "0");
    let url = format!("http://127.0.0.1:{port}/");
    println!(
        "# load-bench on {} cores: nginx (1 worker, CPU 0) <- generator (1 thread, CPU 1), {} connections, {} s runs",
        std::thread::available_parallelism()?.get(),
        args.connections,
        args.duration
    );

    // Warm-up.
    wrk(&url, args.connections, 2, &[])?;
    let mut runs: [Vec<Run>; 3] = Default::default();
    for _ in 0..args.rounds {
        runs[0].push(wrk(&url, args.connections, args.duration, &[])?);
        runs[1].push(oha_run(&oha(&args, &url, &[])?));
        runs[2].push(switchyard_run(&switchyard(&args, &url, &[])?));
    }
    println!(
        "\n## capacity, closed loop (median of {} rounds; ratios against wrk)",
        args.rounds
    );
    let med: Vec<Run> = runs.iter().map(|r| median(r)).collect();
    report("wrk", &med[0], None);
    report("oha", &med[1], Some(&med[0]));
    report("switchyard load", &med[2], Some(&med[0]));
    for (name, r) in ["wrk", "oha", "switchyard load"].iter().zip(&runs) {
        let rps: Vec<String> = r.iter().map(|r| format!("{:.0}", r.rps)).collect();
        println!("  {name} rounds: {}", rps.join(", "));
    }

    println!(
        "\n## open loop at {} requests/s (latency from when each request was due; median of {} rounds, alternating)",
        args.rate, args.rounds
    );
    let rate = format!("{}", args.rate);
    let keys = ["p50", "p90", "p99", "p99.9"];
    let (mut ours, mut theirs): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let j = switchyard(&args, &url, &["--rate", &rate])?;
        let mut row = vec![j["requests_per_second"].as_f64().unwrap_or(f64::NAN)];
        row.extend(
            keys.iter()
                .map(|k| j["latency_us"][k].as_f64().unwrap_or(f64::NAN)),
        );
        ours.push(row);
        let j = oha(&args, &url, &["-q", &rate, "--latency-correction"])?;
        let mut row = vec![j["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN)];
        row.extend(
            keys.iter()
                .map(|k| j["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e6),
        );
        theirs.push(row);
    }
    for (name, rows) in [
        ("switchyard load --rate", &ours),
        ("oha -q --latency-correction", &theirs),
    ] {
        let col = |i: usize| {
            let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let p99s: Vec<String> = rows.iter().map(|r| format!("{:.0}", r[3])).collect();
        println!(
            "  {name:<28} {:.0} rps achieved, p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us (p99 by round: {})",
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            p99s.join(", ")
        );
    }
    Ok(())
}
