//! `switchyard load`: the command line of the load generator in [`switchyard::load`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use switchyard::load;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Targets: http:// or https:// URLs, tcp://HOST:PORT (connection rate) or
    /// dns://SERVER[:PORT] (with --queries). Several spread the connections over them.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,
    /// Connections (each keeps one request in flight; with --http2, --streams).
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Worker threads (default: one per CPU).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// How long to measure (default 10s, unless --requests is given).
    #[arg(short = 'd', long, value_parser = crate::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second in all, on a fixed schedule; latency counts
    /// from when each request was due, so a stalled server shows in the percentiles.
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Send requests this long before measuring.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// A request not answered in this time counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// HTTP/2 (h2c for http://, ALPN h2 for https://).
    #[arg(long)]
    http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Accept any TLS certificate.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// The request method.
    #[arg(short = 'm', long, default_value = "GET", value_parser = parse_method)]
    method: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// The request body, from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// The Host header (and TLS server name) instead of the URL's host.
    #[arg(long)]
    host: Option<String>,
    /// Resolve names through this DNS server (e.g. the cluster DNS).
    #[arg(long, value_name = "ADDR:PORT")]
    dns: Option<SocketAddr>,
    /// Show how responses spread over backends, by this response header.
    #[arg(long, conflicts_with = "by_peer")]
    backend_header: Option<String>,
    /// Show how responses spread over the addresses connected to.
    #[arg(long)]
    by_peer: bool,
    /// DNS mode: the queries, `name type` per line (dnsperf's format).
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write a latency-percentile plot (SVG) to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn parse_method(s: &str) -> Result<String, String> {
    http::Method::from_bytes(s.as_bytes())
        .map(|m| m.to_string())
        .map_err(|_| format!("{s:?} is not an HTTP method"))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `Name: value`"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = http::HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{:?} is not a header value", value.trim()))?;
    Ok((
        name.to_string(),
        value.to_str().unwrap_or_default().to_string(),
    ))
}

/// One progress line on stderr: a bar, the time, and the rate over the last interval.
fn draw(secs: f64, planned: Option<f64>, rps: f64) {
    let bar = match planned {
        Some(p) if p > 0.0 => {
            let filled = ((secs / p).clamp(0.0, 1.0) * 30.0) as usize;
            format!(
                "[{}{}] {secs:.1}/{p:.0} s",
                "=".repeat(filled),
                " ".repeat(30 - filled)
            )
        }
        _ => format!("{secs:.1} s"),
    };
    let mut err = std::io::stderr();
    let _ = write!(err, "\r\x1b[2K{bar}  {rps:.0} req/s");
    let _ = err.flush();
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => Vec::new(),
    };
    let config = load::Config {
        targets: args.urls,
        connections: args.connections,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        duration: args.duration,
        requests: args.requests,
        rate: args.rate,
        warmup: args.warmup,
        timeout: args.timeout,
        http2: args.http2,
        streams: args.streams,
        insecure: args.insecure,
        method: args.method,
        headers: args.headers,
        body,
        host: args.host,
        dns: args.dns,
        backend_header: args.backend_header,
        by_peer: args.by_peer,
        queries: args.queries,
    };
    // Registered before anything runs, and kept across the loop: a Ctrl-C is never lost (a new
    // `ctrl_c()` per iteration missed one that came between two).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")?;
    let run = load::start(config).await?;
    let tty = std::io::stderr().is_terminal();
    let mut last = (0.0, 0u64);
    let tick = Duration::from_millis(500);
    let mut interval = tokio::time::interval(tick);
    let mut interrupted = false;
    while !run.finished() {
        tokio::select! {
            _ = interrupt.recv(), if !interrupted => {
                // Stop sending; the report covers what ran.
                run.stop();
                interrupted = true;
            }
            _ = interval.tick() => {}
        }
        if tty {
            let (secs, done, planned) = run.progress();
            let rps = (done - last.1) as f64 / (secs - last.0).max(1e-3);
            last = (secs, done);
            if secs > 0.0 {
                draw(secs, planned, rps);
            }
        }
    }
    let report = tokio::task::spawn_blocking(move || run.finish()).await?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = args.plot {
        std::fs::write(&path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("latency plot written to {}", path.display());
    }
    Ok(())
}
