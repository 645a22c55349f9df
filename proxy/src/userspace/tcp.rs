//! TCP frontends: accept, pick an endpoint (retrying the next on a failed connect), splice.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::Socket;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::balancer::Balancer;

/// Bytes each direction of a spliced connection moves per read: large enough that bulk
/// transfers are not bound by the number of syscalls.
const COPY_BUFFER: usize = 64 * 1024;

/// Ends a connection with a reset, as a rejecting proxy does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(
    balancer: Arc<Balancer>,
    client: TcpStream,
    peer: SocketAddr,
    connect_timeout: Duration,
) {
    let _ = client.set_nodelay(true);
    for ep in balancer.candidates(peer.ip()) {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(ep)).await {
            Ok(Ok(mut upstream)) => {
                balancer.served(peer.ip(), ep);
                let _ = upstream.set_nodelay(true);
                let mut client = client;
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut upstream,
                    COPY_BUFFER,
                    COPY_BUFFER,
                )
                .await;
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
    connect_timeout: Duration,
) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::from_std(socket.into())?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(serve(balancer.clone(), stream, peer, connect_timeout));
                }
                Err(e) => {
                    tracing::warn!(service = %balancer.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}
