//! TCP frontends: accept up to a cap of connections per frontend, pick an endpoint (retrying the
//! next on a failed connect), and move bytes both ways until both sides close or the
//! connection has been idle for the idle timeout. A connection holds no buffer while it is idle:
//! one is taken when data is ready to read and given back when the socket has no more.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, Socket};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::balancer::Balancer;

/// Bytes each direction of a connection moves per read while data flows: large enough that
/// bulk transfers are not bound by the number of syscalls.
const COPY_BUFFER: usize = 64 * 1024;

/// What a TCP frontend needs besides its socket and balancer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Ends a connection with a reset, as a rejecting proxy does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Writes all of `data` to `to`.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves bytes from `from` to `to` until `from` closes (then closes `to`'s write side), noting
/// in `active` (milliseconds since `epoch`) when data last moved.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    epoch: Instant,
    active: &AtomicU64,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(COPY_BUFFER);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(_) => {
                    write_all(to, &buf).await?;
                    active.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                // Nothing more to read: the buffer goes back until there is.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Joins `client` and `upstream` until both directions end or nothing moved for `idle`.
async fn splice(client: &TcpStream, upstream: &TcpStream, idle: Duration) {
    let epoch = Instant::now();
    let active = AtomicU64::new(0);
    // One side closing leaves the other direction running (a half-close); an error on either
    // ends both.
    let both = async {
        let up = pump(client, upstream, epoch, &active);
        let down = pump(upstream, client, epoch, &active);
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => if r.is_ok() { let _ = down.await; },
            r = &mut down => if r.is_ok() { let _ = up.await; },
        }
    };
    let quiet = async {
        loop {
            let last = Duration::from_millis(active.load(Ordering::Relaxed));
            let since = epoch.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        _ = both => {}
        _ = quiet => {}
    }
}

async fn serve(
    balancer: Arc<Balancer>,
    client: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) {
    let _ = client.set_nodelay(true);
    for ep in balancer.candidates(peer.ip()) {
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(ep)).await {
            Ok(Ok(upstream)) => {
                balancer.served(peer.ip(), ep);
                let _ = upstream.set_nodelay(true);
                splice(&client, &upstream, limits.idle_timeout).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(service = %balancer.name(), endpoint = %ep, error = %e, "connect failed, trying the next endpoint")
            }
            Err(_) => {
                tracing::debug!(service = %balancer.name(), endpoint = %ep, "connect timed out, trying the next endpoint")
            }
        }
    }
    reset(client);
}

pub(super) fn spawn(
    socket: Socket,
    balancer: Arc<Balancer>,
    limits: Limits,
) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::from_std(socket.into())?;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(serve(balancer.clone(), stream, peer, limits, slot));
                    }
                    // At the cap: refused at once rather than left waiting in the backlog.
                    Err(_) => {
                        tracing::debug!(service = %balancer.name(), client = %peer, "connection cap reached, connection reset");
                        reset(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(service = %balancer.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}
