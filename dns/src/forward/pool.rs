//! The forwarder's UDP sockets: a few shared by every query rather than one per query. Each is
//! bound to a port the kernel picks at random and replaced after [`ROTATE`] queries; each query
//! takes a random id. One task per socket reads the replies and hands each to the query it
//! answers — same id, from the upstream that was asked, the same question — and drops the rest
//! (late, forged or unknown), so a forged reply cannot end a query either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Sockets per address family.
const SOCKETS: usize = 16;
/// Queries a socket carries before a fresh one (a fresh random port) takes its place.
const ROTATE: u32 = 512;
/// The largest reply we take over UDP (and advertise).
pub(super) const MAX_UDP: usize = 4096;

struct Waiter {
    upstream: SocketAddr,
    query: Query,
    reply: oneshot::Sender<Message>,
}

struct Socket {
    udp: UdpSocket,
    pending: Mutex<HashMap<u16, Waiter>>,
    uses: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A query to send: the bytes and the random id they carry.
pub(super) fn request(id: u16, query: &Query) -> Result<Vec<u8>, String> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP as u16);
    msg.set_edns(edns);
    msg.to_vec().map_err(|e| e.to_string())
}

/// Parses a reply and accepts it only if it answers `query` with `id`.
pub(super) fn check(reply: &[u8], id: u16, query: &Query) -> Result<Message, String> {
    let msg = Message::from_vec(reply).map_err(|e| format!("bad reply: {e}"))?;
    if msg.metadata.id != id
        || msg.metadata.message_type != MessageType::Response
        || msg.queries.first() != Some(query)
    {
        return Err("reply does not match the question".into());
    }
    Ok(msg)
}

impl Socket {
    fn bind(v6: bool) -> Result<Arc<Socket>, String> {
        let addr: SocketAddr = if v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let std = std::net::UdpSocket::bind(addr).map_err(|e| e.to_string())?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let udp = UdpSocket::from_std(std).map_err(|e| e.to_string())?;
        let sock = Arc::new(Socket {
            udp,
            pending: Mutex::new(HashMap::new()),
            uses: AtomicU32::new(0),
        });
        tokio::spawn(read(sock.clone()));
        Ok(sock)
    }

    /// Takes a random id not in use on this socket.
    fn register(
        &self,
        upstream: SocketAddr,
        query: &Query,
    ) -> Result<(u16, oneshot::Receiver<Message>), String> {
        let mut pending = lock(&self.pending);
        for _ in 0..16 {
            let id: u16 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = pending.entry(id) {
                let (tx, rx) = oneshot::channel();
                v.insert(Waiter {
                    upstream,
                    query: query.clone(),
                    reply: tx,
                });
                return Ok((id, rx));
            }
        }
        Err("no free query id".into())
    }

    fn deliver(&self, datagram: &[u8], from: SocketAddr) {
        if datagram.len() < 12 {
            return;
        }
        let id = u16::from_be_bytes([datagram[0], datagram[1]]);
        let mut pending = lock(&self.pending);
        let Some(w) = pending.get(&id).filter(|w| w.upstream == from) else {
            return;
        };
        let Ok(msg) = check(datagram, id, &w.query) else {
            return;
        };
        if let Some(w) = pending.remove(&id) {
            let _ = w.reply.send(msg);
        }
    }
}

/// Reads replies until the socket is neither in the pool nor used by a query.
async fn read(sock: Arc<Socket>) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let got = tokio::time::timeout(Duration::from_secs(1), sock.udp.recv_from(&mut buf)).await;
        if let Ok(Ok((n, from))) = got {
            sock.deliver(&buf[..n], from);
        }
        if Arc::strong_count(&sock) == 1 {
            return;
        }
    }
}

/// Removes a query's registration however its wait ends (answered, timed out, dropped).
struct Registered<'a> {
    sock: &'a Socket,
    id: u16,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.sock.pending).remove(&self.id);
    }
}

#[derive(Default)]
pub(super) struct Pool {
    v4: [Mutex<Option<Arc<Socket>>>; SOCKETS],
    v6: [Mutex<Option<Arc<Socket>>>; SOCKETS],
}

impl Pool {
    /// Sends `query` to `upstream` over a pooled socket and waits for its reply; the caller
    /// bounds the wait.
    pub(super) async fn ask(&self, upstream: SocketAddr, query: &Query) -> Result<Message, String> {
        let sock = self.pick(upstream.is_ipv6())?;
        let (id, reply) = sock.register(upstream, query)?;
        let _registered = Registered { sock: &sock, id };
        let bytes = request(id, query)?;
        sock.udp
            .send_to(&bytes, upstream)
            .await
            .map_err(|e| e.to_string())?;
        reply.await.map_err(|_| "the socket closed".to_string())
    }

    fn pick(&self, v6: bool) -> Result<Arc<Socket>, String> {
        let slots = if v6 { &self.v6 } else { &self.v4 };
        let mut slot = lock(&slots[rand::random_range(0..SOCKETS)]);
        if let Some(s) = slot.as_ref() {
            if s.uses.fetch_add(1, Ordering::Relaxed) < ROTATE {
                return Ok(s.clone());
            }
        }
        // First use, or rotation: the old socket's reader ends once its queries have.
        let s = Socket::bind(v6)?;
        *slot = Some(s.clone());
        Ok(s)
    }
}
