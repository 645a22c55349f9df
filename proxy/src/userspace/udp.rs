//! UDP frontends: one flow per client (a socket connected to the chosen endpoint), replies sent
//! back from the frontend address, flows ended after an idle time or when their endpoint stops
//! being usable. A frontend keeps at most `max_flows`: a new client past that ends the oldest
//! flow. A flow's reply task holds a buffer only while replies are ready to read.

use std::collections::{HashMap, VecDeque};
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
            loop {
                match tokio::time::timeout(idle, up.readable()).await {
                    Ok(Ok(())) => {
                        let mut buf = Vec::with_capacity(MAX_DATAGRAM);
                        while up.try_recv_buf(&mut buf).is_ok() {
                            seen.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                            let _ = front.send_to(&buf, client).await;
                            buf.clear();
                        }
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

/// The flows of one frontend, and the order they were opened in (entries of flows that already
/// ended are skipped when they reach the front).
struct Flows {
    by_client: HashMap<SocketAddr, (Flow, u64)>,
    opened: VecDeque<(SocketAddr, u64)>,
    next: u64,
    max: usize,
}

impl Flows {
    fn remove(&mut self, client: &SocketAddr) {
        self.by_client.remove(client);
    }

    /// Makes room for one more flow: ends the oldest while at the cap.
    fn make_room(&mut self) {
        while self.by_client.len() >= self.max {
            let Some((client, seq)) = self.opened.pop_front() else {
                return;
            };
            if self.by_client.get(&client).is_some_and(|(_, s)| *s == seq) {
                self.by_client.remove(&client);
            }
        }
        if self.opened.len() > 2 * self.max {
            let live = &self.by_client;
            self.opened
                .retain(|(c, seq)| live.get(c).is_some_and(|(_, s)| s == seq));
        }
    }

    fn insert(&mut self, client: SocketAddr, flow: Flow) -> &mut Flow {
        let seq = self.next;
        self.next += 1;
        self.opened.push_back((client, seq));
        let entry = self.by_client.entry(client).insert_entry((flow, seq));
        &mut entry.into_mut().0
    }
}

pub(super) fn spawn(
    socket: Socket,
    balancer: Arc<Balancer>,
    idle: Duration,
    max_flows: usize,
) -> io::Result<JoinHandle<()>> {
    let front = Arc::new(UdpSocket::from_std(socket.into())?);
    Ok(tokio::spawn(async move {
        let epoch = Instant::now();
        let mut flows = Flows {
            by_client: HashMap::new(),
            opened: VecDeque::new(),
            next: 0,
            max: max_flows.max(1),
        };
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
                .by_client
                .get(&client)
                .is_some_and(|(f, _)| !balancer.usable(f.endpoint))
            {
                flows.remove(&client);
            }
            let flow = match flows.by_client.get_mut(&client) {
                Some((f, _)) => f,
                None => {
                    flows.make_room();
                    let opened = open_flow(
                        front.clone(),
                        &balancer,
                        client,
                        epoch,
                        idle,
                        ended_tx.clone(),
                    )
                    .await;
                    match opened {
                        Some(f) => flows.insert(client, f),
                        None => continue,
                    }
                }
            };
            flow.last
                .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            let _ = flow.upstream.send(&buf[..n]).await;
        }
    }))
}
