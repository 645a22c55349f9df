//! The load generator behind `switchyard load`. It depends on nothing else in the crate (it
//! drives any HTTP, TCP or DNS server), and the benchmarks use it through the binary.
//!
//! - Closed loop (`-c` connections, each sending its next request when the last one is
//!   answered) or open loop (`--rate`: every connection — every stream, with HTTP/2 — has its
//!   share of a fixed schedule, and latency runs from when a request was *due*, so a server that
//!   stalls shows up in the percentiles instead of slowing the generator down: no coordinated
//!   omission).
//! - Work is split over `--threads` OS threads, each a single-threaded runtime owning its
//!   connections; each connection records into its own [`stats::Recorder`], merged at the end.
//! - Modes by URL scheme: `http://`, `https://` (HTTP/1.1 in [`http1`], or HTTP/2 with
//!   `--http2`), `tcp://` (connection rate) and `dns://` (queries from a file).

mod drive;
pub mod http1;
pub mod stats;
pub mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stats::{Recorder, Report};
use target::{Scheme, Target};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("{0} is not reachable: {1}")]
    Unreachable(String, String),
    #[error("{0}")]
    Config(String),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub targets: Vec<String>,
    pub connections: usize,
    pub threads: usize,
    /// Stop after this long (after the warm-up) ...
    pub duration: Option<Duration>,
    /// ... or after this many requests.
    pub requests: Option<u64>,
    /// Open loop: requests per second over all connections.
    pub rate: Option<f64>,
    /// Requests sent before measuring starts.
    pub warmup: Duration,
    /// A request not answered in this time is a timeout.
    pub timeout: Duration,
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub streams: usize,
    /// Accept any server certificate.
    pub insecure: bool,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The Host header (and TLS server name) instead of the URL's.
    pub host: Option<String>,
    /// Resolve names through this DNS server.
    pub dns: Option<SocketAddr>,
    /// Count responses by this header's value ...
    pub backend_header: Option<String>,
    /// ... or by the address each connection went to.
    pub by_peer: bool,
    /// DNS mode: `name type` per line (dnsperf's format).
    pub queries: Option<PathBuf>,
}

impl Config {
    fn check(&self) -> Result<(), LoadError> {
        let bad = |s: &str| Err(LoadError::Config(s.into()));
        if self.targets.is_empty() {
            return bad("no target URL");
        }
        if self.connections == 0 || self.threads == 0 || self.streams == 0 {
            return bad("--connections, --threads and --streams must be at least 1");
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return bad("--rate must be a positive number of requests per second");
        }
        if self.requests == Some(0) {
            return bad("--requests must be at least 1");
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return bad("--duration must be longer than zero");
        }
        Ok(())
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    stop: AtomicBool,
    /// Requests started (for `--requests`), and whether that many have.
    started: AtomicU64,
    exhausted: AtomicBool,
    /// Responses so far (for the progress line).
    pub(crate) done: AtomicU64,
    limit: Option<u64>,
    /// When measuring starts (after the warm-up) and when the run ends.
    measure_from: Instant,
    deadline: Option<Instant>,
}

impl Shared {
    /// Whether another request may start.
    fn next(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        // Warm-up requests do not count against --requests.
        let counted = self.limit.filter(|_| self.measuring(Instant::now()));
        match counted {
            Some(n) if self.started.fetch_add(1, Ordering::Relaxed) >= n => {
                self.exhausted.store(true, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.exhausted.load(Ordering::Relaxed)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from
    }
}

/// A running generator: [`Run::progress`] while it runs, [`Run::stop`] to end it early (Ctrl-C),
/// [`Run::finish`] for the report.
pub struct Run {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<Recorder>>,
    config: Arc<Config>,
    targets: Vec<Target>,
    started: Instant,
}

/// Parses and resolves the targets, checks that they answer, and starts the generator.
pub async fn start(config: Config) -> Result<Run, LoadError> {
    config.check()?;
    let mut targets = Vec::new();
    for url in &config.targets {
        let mut t = Target::parse(url)?;
        t.resolve(config.dns).await?;
        targets.push(t);
    }
    let schemes: Vec<Scheme> = targets.iter().map(|t| t.scheme).collect();
    if schemes.iter().any(|s| *s != schemes[0]) {
        return Err(LoadError::Config(
            "all targets must use the same scheme".into(),
        ));
    }
    let queries = match schemes[0] {
        Scheme::Dns => {
            let path = config
                .queries
                .as_ref()
                .ok_or_else(|| LoadError::Config("dns:// needs --queries FILE".into()))?;
            drive::load_queries(path)?
        }
        _ => Vec::new(),
    };
    // A target nothing answers at is an error, not a report full of connect errors.
    if schemes[0] != Scheme::Dns {
        for t in &targets {
            let mut last = None;
            for a in &t.addrs {
                match tokio::time::timeout(config.timeout, tokio::net::TcpStream::connect(a)).await
                {
                    Ok(Ok(_)) => {
                        last = None;
                        break;
                    }
                    Ok(Err(e)) => last = Some(format!("{a}: {e}")),
                    Err(_) => last = Some(format!("{a}: no answer in {:?}", config.timeout)),
                }
            }
            if let Some(why) = last {
                return Err(LoadError::Unreachable(t.url.clone(), why));
            }
        }
    }
    let tls = drive::tls_config(&config)?;
    let now = Instant::now();
    let measure_from = now + config.warmup;
    let deadline = match (config.duration, config.requests) {
        (Some(d), _) => Some(measure_from + d),
        (None, Some(_)) => None,
        (None, None) => Some(measure_from + Duration::from_secs(10)),
    };
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        done: AtomicU64::new(0),
        limit: config.requests,
        measure_from,
        deadline,
    });
    let config = Arc::new(config);
    let queries = Arc::new(queries);
    let mut threads = Vec::new();
    for t in 0..config.threads {
        // Connection j runs on thread j % threads, to target j % targets, and address
        // (j / targets) % addresses of it.
        let lanes: Vec<drive::Lane> = (t..config.connections)
            .step_by(config.threads)
            .map(|j| {
                let target = targets[j % targets.len()].clone();
                let addr = target.addrs[(j / targets.len()) % target.addrs.len()];
                drive::Lane {
                    index: j,
                    target,
                    addr,
                }
            })
            .collect();
        let (shared, config, tls, queries) =
            (shared.clone(), config.clone(), tls.clone(), queries.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || drive::thread(lanes, shared, config, tls, queries))
                .map_err(|e| LoadError::Config(format!("starting a thread: {e}")))?,
        );
    }
    Ok(Run {
        shared,
        threads,
        config,
        targets,
        started: now,
    })
}

impl Run {
    /// (seconds since measuring started, responses so far, the planned length if known).
    pub fn progress(&self) -> (f64, u64, Option<f64>) {
        let now = Instant::now();
        let secs = now
            .saturating_duration_since(self.shared.measure_from)
            .as_secs_f64();
        let planned = self.shared.deadline.map(|d| {
            d.saturating_duration_since(self.shared.measure_from)
                .as_secs_f64()
        });
        (secs, self.shared.done.load(Ordering::Relaxed), planned)
    }

    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every connection and merges what they recorded.
    pub fn finish(self) -> Report {
        let interrupted = self.shared.stop.load(Ordering::Relaxed);
        let mut recorded = Recorder::default();
        for t in self.threads {
            if let Ok(r) = t.join() {
                recorded.merge(r);
            }
        }
        let end = Instant::now();
        let from = self.shared.measure_from.max(self.started);
        let elapsed = match self.shared.deadline {
            Some(d) if !interrupted => d.min(end).saturating_duration_since(from),
            _ => end.saturating_duration_since(from),
        };
        let c = &self.config;
        Report {
            mode: match self.targets[0].scheme {
                Scheme::Http | Scheme::Https if c.http2 => "http2",
                Scheme::Http | Scheme::Https => "http1",
                Scheme::Tcp => "tcp",
                Scheme::Dns => "dns",
            },
            targets: self.targets.iter().map(|t| t.url.clone()).collect(),
            connections: c.connections,
            threads: c.threads,
            rate: c.rate,
            elapsed,
            interrupted,
            backends_by: match (&c.backend_header, c.by_peer) {
                (Some(h), _) => Some(format!("header {h}")),
                (None, true) => Some("peer address".into()),
                (None, false) => None,
            },
            recorded,
        }
    }
}
