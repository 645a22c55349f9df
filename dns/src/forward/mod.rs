//! Forwarding for names outside the cluster zone: the upstream resolvers in turn, over UDP (and
//! TCP when an answer is truncated), with a timeout, and a bounded cache of positive and negative
//! answers that honours their TTLs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Longest time anything stays cached, whatever its TTL.
const MAX_TTL: u32 = 3600;
/// Negative answers without an SOA are cached this long.
const DEFAULT_NEGATIVE_TTL: u32 = 30;
const MAX_UDP: usize = 4096;

#[derive(Clone, Debug)]
pub struct Config {
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Cached answers at most.
    pub cache_entries: usize,
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

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("every upstream failed: {0}")]
    Failed(String),
}

struct Entry {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    stored: Instant,
    ttl: u32,
}

type Key = (LowerName, RecordType, DNSClass);

pub struct Forwarder {
    config: Config,
    cache: Mutex<HashMap<Key, Entry>>,
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

impl Forwarder {
    pub fn new(config: Config) -> Self {
        Forwarder {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &Key) -> Option<Forwarded> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(key)?;
        let elapsed = e.stored.elapsed().as_secs();
        if elapsed >= u64::from(e.ttl) {
            return None;
        }
        let elapsed = elapsed as u32;
        Some(Forwarded {
            code: e.code,
            answers: with_ttl(&e.answers, elapsed),
            authorities: with_ttl(&e.authorities, elapsed),
            cached: true,
        })
    }

    fn store(&self, key: Key, f: &Forwarded) {
        let Some(ttl) = cache_ttl(f.code, &f.answers, &f.authorities).filter(|t| *t > 0) else {
            return;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.cache_entries {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= self.config.cache_entries {
                // Still full of live answers: make room by dropping one.
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Entry {
                code: f.code,
                answers: f.answers.clone(),
                authorities: f.authorities.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// Answers `query` from the cache or the upstreams.
    pub async fn resolve(&self, query: &Query) -> Result<Forwarded, ForwardError> {
        let key = (
            LowerName::new(&query.name),
            query.query_type,
            query.query_class,
        );
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        if self.config.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut errors = Vec::new();
        for upstream in &self.config.upstreams {
            match tokio::time::timeout(self.config.timeout, exchange(*upstream, query)).await {
                Ok(Ok(msg)) => {
                    let f = Forwarded {
                        code: msg.metadata.response_code,
                        answers: msg.answers.clone(),
                        authorities: msg.authorities.clone(),
                        cached: false,
                    };
                    self.store(key, &f);
                    return Ok(f);
                }
                Ok(Err(e)) => errors.push(format!("{upstream}: {e}")),
                Err(_) => errors.push(format!("{upstream}: timed out")),
            }
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }
}

fn request(query: &Query) -> Result<(u16, Vec<u8>), String> {
    // Unpredictable ids (and a fresh source port per query) make forged replies hard to land.
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP as u16);
    msg.set_edns(edns);
    msg.to_vec().map(|b| (id, b)).map_err(|e| e.to_string())
}

/// Accepts a reply only if it answers our question with our id.
fn check(reply: &[u8], id: u16, query: &Query) -> Result<Message, String> {
    let msg = Message::from_vec(reply).map_err(|e| format!("bad reply: {e}"))?;
    if msg.metadata.id != id || msg.queries.first() != Some(query) {
        return Err("reply does not match the question".into());
    }
    Ok(msg)
}

async fn exchange(upstream: SocketAddr, query: &Query) -> Result<Message, String> {
    let (id, bytes) = request(query)?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(upstream).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_UDP];
    let msg = loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // Replies that do not match (late or forged) are dropped; keep waiting.
        if let Ok(msg) = check(&buf[..n], id, query) {
            break msg;
        }
    };
    if !msg.metadata.truncation {
        return Ok(msg);
    }
    // Truncated: ask again over TCP.
    let mut tcp = TcpStream::connect(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let (id, bytes) = request(query)?;
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
    check(&reply, id, query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;

    fn a(ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii("x.example.").unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        )
    }

    #[test]
    fn ttls_for_the_cache() {
        assert_eq!(
            cache_ttl(ResponseCode::NoError, &[a(300), a(60)], &[]),
            Some(60)
        );
        assert_eq!(
            cache_ttl(ResponseCode::NoError, &[a(999_999)], &[]),
            Some(MAX_TTL)
        );
        let n = Name::from_ascii("example.").unwrap();
        let soa = Record::from_rdata(
            n.clone(),
            900,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, 120)),
        );
        assert_eq!(
            cache_ttl(ResponseCode::NXDomain, &[], std::slice::from_ref(&soa)),
            Some(120)
        );
        assert_eq!(
            cache_ttl(ResponseCode::NoError, &[], &[soa]),
            Some(120),
            "NODATA is cached like NXDOMAIN"
        );
        assert_eq!(cache_ttl(ResponseCode::ServFail, &[], &[]), None);
    }
}
