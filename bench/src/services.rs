//! Synthetic service tables (N Services x M endpoints, ClusterIPs spread as an allocator
//! spreads them) and the client/backend probes the kernel proxy benchmarks share: new
//! connections per second, and the latency of one short exchange, from inside a namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_proxy::table::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceTable};

use crate::netns::Netns;
use crate::Samples;

/// The i-th ClusterIP, spread over 10.96.0.0/12 as an allocator would.
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + ((i as u32 * 7919 + 1) % (1 << 20)))
}

/// Endpoint `e` of service `i`, an address nothing answers at.
pub fn fake_endpoint(i: usize, e: usize) -> SocketAddr {
    let n = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + e) as u32;
    SocketAddr::from((Ipv4Addr::from(n), 8080))
}

/// Service `i`'s port. Names are zero-padded so that a table of them is sorted by name, as the
/// agent's tables are (the proxies walk old and new tables side by side).
pub fn port(i: usize, endpoints: Vec<SocketAddr>) -> Arc<ServicePort> {
    Arc::new(ServicePort {
        name: ServicePortName {
            namespace: "default".into(),
            name: format!("svc-{i:06}"),
            port: "http".into(),
        },
        protocol: Protocol::Tcp,
        port: 80,
        cluster_ips: vec![vip(i).into()],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity: None,
        internal_local: false,
        external_local: false,
        endpoints: endpoints
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            })
            .collect(),
    })
}

/// The endpoints of service `i`: `real` for the first and the last, fake ones otherwise.
pub fn endpoints_of(i: usize, n: usize, per: usize, real: &[SocketAddr]) -> Vec<SocketAddr> {
    if !real.is_empty() && (i == 0 || i == n - 1) {
        real.to_vec()
    } else {
        (0..per).map(|e| fake_endpoint(i, e)).collect()
    }
}

pub fn table(n: usize, per: usize, real: &[SocketAddr]) -> ServiceTable {
    ServiceTable {
        ports: (0..n)
            .map(|i| port(i, endpoints_of(i, n, per, real)))
            .collect(),
    }
}

/// Service `svc-i` as the API takes it: one TCP port, 80, named `http`, no selector.
pub fn service_json(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"ports":[{{"name":"http","port":80,"protocol":"TCP"}}]}}}}"#
    )
}

/// Accepts and drops connections on `ports` of the namespace's address, forever.
pub fn sink_backend(ns: &Netns, addr: Ipv4Addr, ports: std::ops::Range<u16>) -> Result<()> {
    let addrs: Vec<SocketAddrV4> = ports.map(|p| SocketAddrV4::new(addr, p)).collect();
    sinks(ns, &addrs)
}

/// Accepts and drops connections on each of `addrs` (addresses of the namespace), forever: a
/// listener with a deep accept queue and a thread of its own each, so that the backend is never
/// what a connection rate measures.
pub fn sinks(ns: &Netns, addrs: &[SocketAddrV4]) -> Result<()> {
    for &addr in addrs {
        let listener = ns.enter(move || -> Result<std::net::TcpListener> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            Ok(s.into())
        })??;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
    Ok(())
}

/// New connections per second from inside `ns` to the addresses `to`, in turn, for `secs`
/// (closed with a reset, so no TIME_WAIT runs the client out of ports); failed connects are
/// counted too.
pub fn connect_rate(ns: &Netns, to: &[SocketAddrV4], secs: u64) -> Result<(f64, u64)> {
    let to = to.to_vec();
    ns.enter(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let (mut ok, mut failed) = (0u64, 0u64);
        for addr in to.iter().cycle() {
            if Instant::now() >= end {
                break;
            }
            match TcpStream::connect_timeout(&(*addr).into(), Duration::from_secs(1)) {
                Ok(s) => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    ok += 1;
                }
                Err(_) => failed += 1,
            }
        }
        (ok as f64 / secs as f64, failed)
    })
}

/// Answers each connection on `ports` of the namespace's address: reads one byte, writes one
/// byte back, closes.
pub fn echo_backend(ns: &Netns, addr: Ipv4Addr, ports: std::ops::Range<u16>) -> Result<()> {
    for p in ports {
        let listener = ns.enter(move || std::net::TcpListener::bind((addr, p)))??;
        // Two acceptors, so that a connection the client resets at once never holds up the
        // queue behind it.
        for listener in [listener.try_clone()?, listener] {
            std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let mut b = [0u8; 1];
                    if conn.read_exact(&mut b).is_ok() {
                        let _ = conn.write_all(&b);
                    }
                }
            });
        }
    }
    Ok(())
}

/// `count` short exchanges from inside `ns` with [`echo_backend`]s behind the addresses `to`, in
/// turn: connect, one byte each way, close; the time of each in microseconds.
pub fn exchanges(ns: &Netns, to: &[SocketAddrV4], count: usize) -> Result<Samples> {
    let to = to.to_vec();
    ns.enter(move || -> Result<Samples> {
        let mut samples = Samples::new();
        for addr in to.iter().cycle().take(count) {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(&(*addr).into(), Duration::from_secs(1))?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            samples.record(start.elapsed().as_micros() as u64);
        }
        Ok(samples)
    })?
}
