//! UDP frontends: one flow per client (a socket connected to the chosen endpoint), replies sent
//! back from the frontend address, flows ended after an idle time or when their endpoint stops
//! being usable.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::balancer::Balancer;

const MAX_DATAGRAM: usize = 65536;

struct Flow {
    upstream: Arc<UdpSocket>,
    endpoint: SocketAddr,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    reply: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reply.abort();
    }
}

async fn open_flow(
    front: Arc<UdpSocket>,
    balancer: &Balancer,
    client: SocketAddr,
    epoch: Instant,
    idle: Duration,
    ended: mpsc::UnboundedSender<SocketAddr>,
) -> Option<Flow> {
    for ep in balancer.candidates(client.ip()) {
        let bind: SocketAddr = if ep.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(ep).await.is_err() {
            continue;
        }
        balancer.served(client.ip(), ep);
        let upstream = Arc::new(sock);
        let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
        let (up, seen) = (upstream.clone(), last.clone());
        let reply = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match tokio::time::timeout(idle, up.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        seen.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let _ = front.send_to(&buf[..n], client).await;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        let quiet =
                            epoch.elapsed().as_millis() as u64 - seen.load(Ordering::Relaxed);
                        if quiet >= idle.as_millis() as u64 {
                            let _ = ended.send(client);
                            return;
                        }
                    }
                }
            }
        });
        return Some(Flow {
            upstream,
            endpoint: ep,
            last,
            reply,
        });
    }
    None
}

pub(super) fn spawn(
    socket: Socket,
    balancer: Arc<Balancer>,
    idle: Duration,
) -> io::Result<JoinHandle<()>> {
    let front = Arc::new(UdpSocket::from_std(socket.into())?);
    Ok(tokio::spawn(async move {
        let epoch = Instant::now();
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, client) = tokio::select! {
                r = front.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
                Some(c) = ended.recv() => {
                    flows.remove(&c);
                    continue;
                }
            };
            if flows
                .get(&client)
                .is_some_and(|f| !balancer.usable(f.endpoint))
            {
                flows.remove(&client);
            }
            let flow = match flows.entry(client) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => match open_flow(
                    front.clone(),
                    &balancer,
                    client,
                    epoch,
                    idle,
                    ended_tx.clone(),
                )
                .await
                {
                    Some(f) => v.insert(f),
                    None => continue,
                },
            };
            flow.last
                .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            let _ = flow.upstream.send(&buf[..n]).await;
        }
    }))
}
