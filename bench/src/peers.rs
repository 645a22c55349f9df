//! Peers the benchmarks measure against: nginx (as a backend or a proxy) and wrk, and the
//! median and report of wrk-style runs.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::api::Proc;

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

/// wrk with one thread, `connections` connections, for `seconds`, with `--latency`.
pub fn wrk(url: &str, connections: usize, seconds: u64, headers: &[String]) -> Result<Run> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}")])
        .args([&format!("-d{seconds}s"), "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
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
