//! Upstream endpoints: pooled connections (HTTP/1.1 keep-alive, or one multiplexed HTTP/2
//! connection for h2c), in-flight counts for load balancing, passive health, and the response
//! body that hands its connection back to the pool when it ends.
//!
//! Pools are per event loop (thread-local): a connection is only used by the loop that drives
//! it, so no lock is taken and no wake-up crosses threads.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::task::AbortHandle;

use super::mirror::RequestBody;

/// Idle keep-alive connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// How long an endpoint that refused a connection is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// Milliseconds on a monotonic clock, for [`Upstream::is_down`].
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Endpoint addresses pooled per loop before closed connections are swept out.
const SWEEP_AT: usize = 1024;

/// This event loop's idle connections.
#[derive(Default)]
struct Pool {
    h1: HashMap<SocketAddr, Vec<H1Conn>>,
    h2: HashMap<SocketAddr, http2::SendRequest<RequestBody>>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// One endpoint (address and protocol): shared counters; connections live in the loops' pools.
pub struct Upstream {
    pub addr: SocketAddr,
    h2c: bool,
    in_flight: AtomicU32,
    down_until: AtomicU64,
}

/// Why no request could be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, unreachable or timed out. Nothing was sent.
    Connect(std::io::Error),
    /// The request went out and the exchange failed.
    Exchange(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// An HTTP/1.1 connection: its request sender, and its task (aborting it closes the
/// connection).
pub struct H1Conn {
    pub sender: http1::SendRequest<RequestBody>,
    task: AbortHandle,
}

/// The connection an exchange went out on, to be pooled when its response has ended — if its
/// request went out whole. A request whose answer came first (an upstream that answers before
/// it reads the body, and may never read it) leaves the connection in the middle of a
/// message: it is closed, instead of waiting in the pool (where the next request would wait
/// on it) for a body that may never be taken. nginx's upstream keepalive likewise caches no
/// connection whose request body was not sent whole.
pub struct Kept {
    pub conn: H1Conn,
    /// Set by the request's body ([`RequestBody::watched`]) once it has gone out whole.
    pub sent: Arc<AtomicBool>,
}

/// A connection ready for one request.
pub enum Sender {
    H1 { conn: H1Conn, reused: bool },
    H2(http2::SendRequest<RequestBody>),
}

impl Upstream {
    pub fn new(addr: SocketAddr, h2c: bool) -> Upstream {
        Upstream {
            addr,
            h2c,
            in_flight: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Skipped after refusing connections, until [`DOWN_FOR`] has passed; `now` from [`now_ms`].
    pub fn is_down(&self, now: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) > now
    }

    pub fn mark_down(&self) {
        self.down_until
            .store(now_ms() + DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    /// Counts a request until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A pooled connection that is ready, or a new one.
    pub async fn sender(&self, connect_timeout: Duration) -> Result<Sender, SendError> {
        if self.h2c {
            let pooled = POOL.with_borrow(|p| p.h2.get(&self.addr).cloned());
            if let Some(s) = pooled.filter(|s| !s.is_closed()) {
                return Ok(Sender::H2(s));
            }
            let io = TokioIo::new(self.connect(connect_timeout).await?);
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Exchange)?;
            tokio::spawn(conn);
            POOL.with_borrow_mut(|p| p.h2.insert(self.addr, sender.clone()));
            return Ok(Sender::H2(sender));
        }
        loop {
            let pooled = POOL.with_borrow_mut(|p| p.h1.get_mut(&self.addr)?.pop());
            let Some(mut conn) = pooled else { break };
            if conn.sender.is_closed() {
                continue;
            }
            if conn.sender.ready().await.is_ok() {
                return Ok(Sender::H1 { conn, reused: true });
            }
        }
        let io = TokioIo::new(self.connect(connect_timeout).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Exchange)?;
        let task = tokio::spawn(conn.with_upgrades()).abort_handle();
        Ok(Sender::H1 {
            conn: H1Conn { sender, task },
            reused: false,
        })
    }

    /// A new connection, without delay on small writes.
    pub async fn connect(&self, timeout: Duration) -> Result<tokio::net::TcpStream, SendError> {
        let tcp =
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => {
                    return Err(SendError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )))
                }
            };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn release(&self, conn: H1Conn) {
        if conn.sender.is_closed() {
            return;
        }
        POOL.with_borrow_mut(|p| {
            if p.h1.len() >= SWEEP_AT && !p.h1.contains_key(&self.addr) {
                // Endpoints come and go: forget the connections that have closed.
                p.h1.retain(|_, idle| {
                    idle.retain(|c| !c.sender.is_closed());
                    !idle.is_empty()
                });
                p.h2.retain(|_, s| !s.is_closed());
            }
            let idle = p.h1.entry(self.addr).or_default();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        });
    }
}

/// One request counted against an upstream.
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body from an upstream: while it streams the request stays in flight, and an
/// HTTP/1.1 connection goes back to the pool once the body has ended (or is closed, when its
/// request had not gone out whole: [`Kept`]).
pub struct UpstreamBody {
    inner: Incoming,
    finish: Option<(InFlight, Option<Kept>)>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, in_flight: InFlight, keep: Option<Kept>) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            finish: Some((in_flight, keep)),
        };
        if body.inner.is_end_stream() {
            body.done();
        }
        body
    }

    fn done(&mut self) {
        if let Some((in_flight, Some(kept))) = self.finish.take() {
            if kept.sent.load(Ordering::Acquire) {
                in_flight.0.release(kept.conn);
            } else {
                kept.conn.task.abort();
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => {
                // A broken exchange: the connection is not reused.
                self.finish = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
