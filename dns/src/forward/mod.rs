//! Forwarding for names outside the cluster zone: the upstream resolvers in turn, over UDP (and
//! TCP when an answer is truncated), with a timeout, and a bounded cache of positive and negative
//! answers that honours their TTLs.
//!
//! The work in flight is bounded whatever the clients send: queries share a small pool of
//! sockets ([`pool`]); identical questions asked while one is out wait for its answer rather than
//! asking again (which also keeps a forwarding loop from multiplying a query); at most
//! `max_concurrent` questions are out at once (and eight times as many queries wait on them);
//! past that a query gets SERVFAIL at once. A probe sent at start (a random name, CoreDNS's
//! `loop` check) that comes back to us means the upstreams forward to us: forwarding stops and
//! says so.

mod cache;
mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use cache::Cache;
use pool::Pool;

/// Longest time anything stays cached, whatever its TTL.
const MAX_TTL: u32 = 3600;
/// Negative answers without an SOA are cached this long.
const DEFAULT_NEGATIVE_TTL: u32 = 30;
/// Questions out to the upstreams at once, by default.
pub const DEFAULT_MAX_CONCURRENT: usize = 1000;
/// Queries that may wait on questions already out, per question allowed out.
const WAITING_PER_QUESTION: usize = 8;

#[derive(Clone, Debug)]
pub struct Config {
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Cached answers at most.
    pub cache_entries: usize,
    /// Distinct questions out to the upstreams at once; past it, SERVFAIL. Eight times as many
    /// queries may wait on questions already out.
    pub max_concurrent: usize,
}

/// An upstream's answer: what goes back to the client.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Served from the cache.
    pub cached: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("every upstream failed: {0}")]
    Failed(String),
    #[error("too many queries are waiting on the upstreams")]
    Busy,
    #[error("forwarding is off: the upstreams forward back to this server (a loop)")]
    Loop,
}

struct Entry {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

type Key = (LowerName, RecordType, DNSClass);
type Outcome = Result<Forwarded, ForwardError>;

/// Answers names outside the cluster zone. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    cache: Mutex<Cache<Key, Entry>>,
    /// Questions out now, with where their answer will appear.
    inflight: Mutex<HashMap<Key, watch::Receiver<Option<Outcome>>>>,
    /// Permits for questions out to the upstreams.
    out: Arc<Semaphore>,
    /// Permits for queries waiting on a question another query sent.
    waiting: Semaphore,
    sockets: Pool,
    /// The name of the loop probe, unique to this process.
    probe: LowerName,
    looped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_ttl(records: &[Record], elapsed: u32) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.ttl = r.ttl.saturating_sub(elapsed);
            r
        })
        .collect()
}

/// How long an answer may be cached: its smallest TTL, or for a negative answer the SOA's
/// minimum (RFC 2308); never longer than [`MAX_TTL`].
fn cache_ttl(code: ResponseCode, answers: &[Record], authorities: &[Record]) -> Option<u32> {
    let negative =
        code == ResponseCode::NXDomain || (code == ResponseCode::NoError && answers.is_empty());
    let ttl = if negative {
        authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(DEFAULT_NEGATIVE_TTL)
    } else if code == ResponseCode::NoError {
        answers.iter().map(|r| r.ttl).min()?
    } else {
        return None;
    };
    Some(ttl.min(MAX_TTL))
}

fn key(query: &Query) -> Key {
    (
        LowerName::new(&query.name),
        query.query_type,
        query.query_class,
    )
}

impl Forwarder {
    pub fn new(config: Config) -> Self {
        let limit = config.max_concurrent.max(1);
        let probe = format!(
            "{:016x}.{:08x}.switchyard-loop-check.",
            rand::random::<u64>(),
            rand::random::<u32>()
        );
        Forwarder {
            inner: Arc::new(Inner {
                cache: Mutex::new(Cache::new(config.cache_entries)),
                config,
                inflight: Mutex::new(HashMap::new()),
                out: Arc::new(Semaphore::new(limit)),
                waiting: Semaphore::new(limit * WAITING_PER_QUESTION),
                sockets: Pool::default(),
                probe: LowerName::new(&Name::from_ascii(probe).expect("a valid name")),
                looped: AtomicBool::new(false),
            }),
        }
    }

    fn cached(&self, key: &Key) -> Option<Forwarded> {
        let cache = lock(&self.inner.cache);
        let (e, elapsed) = cache.get(key, Instant::now())?;
        Some(Forwarded {
            code: e.code,
            answers: with_ttl(&e.answers, elapsed),
            authorities: with_ttl(&e.authorities, elapsed),
            cached: true,
        })
    }

    /// Answers `query` from the cache or the upstreams.
    pub async fn resolve(&self, query: &Query) -> Outcome {
        let key = key(query);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let inner = &self.inner;
        if inner.looped.load(Ordering::Relaxed) {
            return Err(ForwardError::Loop);
        }
        if inner.config.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let (mut answer, _permit) = {
            let mut inflight = lock(&inner.inflight);
            match inflight.get(&key) {
                Some(rx) => {
                    // The same question is out: wait for its answer.
                    let permit = inner
                        .waiting
                        .try_acquire()
                        .map_err(|_| ForwardError::Busy)?;
                    (rx.clone(), Some(permit))
                }
                None => {
                    let out = inner
                        .out
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| ForwardError::Busy)?;
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    // The question runs on its own: a client that gives up does not end it
                    // for the others waiting on it.
                    let this = self.clone();
                    let query = query.clone();
                    tokio::spawn(async move {
                        let outcome = this.ask_upstreams(&query).await;
                        if let Ok(f) = &outcome {
                            this.store(key.clone(), f);
                        }
                        lock(&this.inner.inflight).remove(&key);
                        let _ = tx.send(Some(outcome));
                        drop(out);
                    });
                    (rx, None)
                }
            }
        };
        let outcome = answer
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ForwardError::Failed("the query was dropped".into()))?;
        outcome.clone().expect("waited for an outcome")
    }

    fn store(&self, key: Key, f: &Forwarded) {
        let Some(ttl) = cache_ttl(f.code, &f.answers, &f.authorities).filter(|t| *t > 0) else {
            return;
        };
        let entry = Entry {
            code: f.code,
            answers: f.answers.clone(),
            authorities: f.authorities.clone(),
        };
        lock(&self.inner.cache).insert(key, entry, ttl, Instant::now());
    }

    async fn ask_upstreams(&self, query: &Query) -> Outcome {
        let config = &self.inner.config;
        let mut errors = Vec::new();
        for upstream in &config.upstreams {
            let asked = tokio::time::timeout(config.timeout, self.exchange(*upstream, query));
            match asked.await {
                Ok(Ok(msg)) => {
                    return Ok(Forwarded {
                        code: msg.metadata.response_code,
                        answers: msg.answers,
                        authorities: msg.authorities,
                        cached: false,
                    })
                }
                Ok(Err(e)) => errors.push(format!("{upstream}: {e}")),
                Err(_) => errors.push(format!("{upstream}: timed out")),
            }
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }

    async fn exchange(&self, upstream: SocketAddr, query: &Query) -> Result<Message, String> {
        let msg = self.inner.sockets.ask(upstream, query).await?;
        if !msg.metadata.truncation {
            return Ok(msg);
        }
        // Truncated: ask again over TCP.
        let mut tcp = TcpStream::connect(upstream)
            .await
            .map_err(|e| e.to_string())?;
        let id: u16 = rand::random();
        let bytes = pool::request(id, query)?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too large".to_string())?;
        tcp.write_all(&len.to_be_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        pool::check(&reply, id, query)
    }

    /// Whether `name` is this process's loop probe. The handler calls this for every name it
    /// would forward: the probe arriving here means it went out and came back, so forwarding
    /// stops (and the probe is not forwarded again).
    pub fn is_probe(&self, name: &LowerName) -> bool {
        if *name != self.inner.probe {
            return false;
        }
        if !self.inner.looped.swap(true, Ordering::Relaxed) {
            tracing::error!(
                upstreams = ?self.inner.config.upstreams,
                "DNS forwarding loop: a query sent to the upstreams came back to this server; \
                 names outside the cluster get SERVFAIL until the upstreams are fixed"
            );
        }
        true
    }

    /// Sends the loop probe to the upstreams once (call it when the server answers queries).
    pub async fn probe_for_loop(&self) {
        let query = Query::query(Name::from(&self.inner.probe), RecordType::HINFO);
        let _ = self.resolve(&query).await;
    }

    /// Whether a forwarding loop was detected.
    pub fn looped(&self) -> bool {
        self.inner.looped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
