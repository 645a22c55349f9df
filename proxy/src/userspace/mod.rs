//! The userspace proxy: a TCP or UDP socket on every frontend of every service port, forwarding
//! to the port's endpoints.
//!
//! - Selection: round robin over the usable endpoints (ready ones, else serving terminating
//!   ones; local ones under a Local traffic policy), `ClientIP` affinity with its timeout, and a
//!   failed TCP connect retried on the next endpoint.
//! - A port with no usable endpoint resets TCP connections at once (and drops UDP datagrams).
//! - UDP keeps one flow per client, with an idle timeout; a flow whose endpoint stops being
//!   usable is moved to another endpoint on the client's next datagram.
//! - [`UserspaceProxy::apply`] reconciles listeners with a new table: a changed port swaps its
//!   endpoint view under the running listener, a removed frontend closes its listener, and
//!   established connections are left alone.
//!
//! - Bounds: a TCP frontend holds at most `max_connections` (more are reset at once), a
//!   connection idle for `idle_timeout` is closed, and a UDP frontend keeps at most
//!   `max_udp_flows` (a new client ends the oldest flow). Buffers are taken only while data moves.
//!
//! A ClusterIP the node does not have is made local with a `local` route on the loopback device
//! when the process may do so (CAP_NET_ADMIN) and the address is inside the configured service
//! ranges; addresses in 127.0.0.0/8 need nothing. External and load-balancer addresses are
//! served only where they are already local: a route for one would take that address from the
//! whole node. The routes carry route protocol [`ROUTE_PROTOCOL`], so that [`cleanup`] finds
//! them after a crash.

mod balancer;
mod tcp;
mod udp;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::task::JoinHandle;

use crate::table::{Protocol, ServiceTable};
use crate::SyncReport;
use balancer::Balancer;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where NodePorts listen (the unspecified address: every address of the node).
    pub node_addr: IpAddr,
    /// How long a TCP connect to an endpoint may take before the next endpoint is tried.
    pub connect_timeout: Duration,
    /// How long a UDP flow lives without traffic.
    pub udp_idle: Duration,
    /// Add `local` routes for frontend addresses the node does not have.
    pub manage_addresses: bool,
    /// The ranges ClusterIPs come from (address, prefix length): only these get routes.
    pub service_ranges: Vec<(IpAddr, u8)>,
    /// Connections one TCP frontend holds at most.
    pub max_connections: usize,
    /// A TCP connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Client flows one UDP frontend keeps at most.
    pub max_udp_flows: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            connect_timeout: Duration::from_secs(2),
            udp_idle: Duration::from_secs(60),
            manage_addresses: true,
            service_ranges: Vec::new(),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(3600),
            max_udp_flows: 1024,
        }
    }
}

struct Listener {
    balancer: Arc<Balancer>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct UserspaceProxy {
    config: Config,
    listeners: HashMap<(SocketAddr, Protocol), Listener>,
    /// Addresses this proxy made local, to take back when no frontend uses them.
    local_routes: HashSet<IpAddr>,
}

fn bind_socket(addr: SocketAddr, protocol: Protocol) -> io::Result<Socket> {
    let ty = if protocol == Protocol::Udp {
        Type::DGRAM
    } else {
        Type::STREAM
    };
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if protocol != Protocol::Udp {
        socket.listen(1024)?;
    }
    Ok(socket)
}

/// The route protocol number our `local` routes carry (`ip route show proto 211`).
pub const ROUTE_PROTOCOL: &str = "211";

async fn ip(args: &[&str]) -> io::Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes `ip` a local address of this network namespace with a `local` route on loopback.
async fn route_local(addr: IpAddr, add: bool) -> io::Result<()> {
    let (family, len) = if addr.is_ipv4() {
        ("-4", 32)
    } else {
        ("-6", 128)
    };
    let verb = if add { "replace" } else { "del" };
    let dst = format!("{addr}/{len}");
    ip(&[
        family,
        "route",
        verb,
        "local",
        &dst,
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        ROUTE_PROTOCOL,
    ])
    .await
    .map(drop)
}

/// Removes every `local` route a userspace proxy added (after a crash, say); returns how many.
pub async fn cleanup() -> io::Result<usize> {
    let mut removed = 0;
    for family in ["-4", "-6"] {
        let show = ["route", "show", "table", "local", "proto", ROUTE_PROTOCOL];
        removed += ip(&[&[family][..], &show[..]].concat())
            .await?
            .lines()
            .count();
        let flush = ["route", "flush", "table", "local", "proto", ROUTE_PROTOCOL];
        ip(&[&[family][..], &flush[..]].concat()).await?;
    }
    Ok(removed)
}

/// Whether `ip` is inside one of `ranges`.
fn in_ranges(ranges: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    ranges.iter().any(|&(net, len)| match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    })
}

impl UserspaceProxy {
    pub fn new(config: Config) -> Self {
        UserspaceProxy {
            config,
            listeners: HashMap::new(),
            local_routes: HashSet::new(),
        }
    }

    /// Binds a frontend. A ClusterIP the node does not have is made local if it is inside the
    /// service ranges; an external or load-balancer address is served only where the node
    /// already has it — any user can write one into a Service, and a local route for it would
    /// take the address from the whole node.
    async fn bind(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        external: bool,
    ) -> io::Result<Socket> {
        match bind_socket(addr, protocol) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrNotAvailable
                    && self.config.manage_addresses
                    && !external =>
            {
                if !in_ranges(&self.config.service_ranges, addr.ip()) {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!(
                            "{} is neither local nor inside the service ranges, so it gets no route",
                            addr.ip()
                        ),
                    ));
                }
                route_local(addr.ip(), true).await?;
                self.local_routes.insert(addr.ip());
                bind_socket(addr, protocol)
            }
            other => other,
        }
    }

    /// Reconciles the listeners with `table`.
    pub async fn apply(&mut self, table: &ServiceTable) -> SyncReport {
        let mut report = SyncReport::default();
        let mut desired = HashMap::new();
        for port in &table.ports {
            for f in port.frontends(self.config.node_addr) {
                // SCTP is not proxied in userspace.
                if f.protocol != Protocol::Sctp {
                    desired.insert((f.addr, f.protocol), (port.clone(), f.external));
                }
            }
        }
        let before = self.listeners.len();
        self.listeners.retain(|key, _| desired.contains_key(key));
        report.removed = before - self.listeners.len();
        for (key, (port, external)) in desired {
            if let Some(l) = self.listeners.get(&key) {
                l.balancer.update(port);
                continue;
            }
            let (addr, protocol) = key;
            let socket = match self.bind(addr, protocol, external).await {
                Ok(s) => s,
                Err(e) => {
                    let hint = if e.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024
                    {
                        " (ports below 1024 need root, CAP_NET_BIND_SERVICE, or a lower net.ipv4.ip_unprivileged_port_start)"
                    } else {
                        ""
                    };
                    report
                        .errors
                        .push(format!("{protocol} {addr} ({}): {e}{hint}", port.name));
                    continue;
                }
            };
            let balancer = Arc::new(Balancer::new(port, external));
            let c = &self.config;
            let task = match protocol {
                Protocol::Udp => udp::spawn(socket, balancer.clone(), c.udp_idle, c.max_udp_flows),
                _ => {
                    let limits = tcp::Limits {
                        connect_timeout: c.connect_timeout,
                        idle_timeout: c.idle_timeout,
                        max_connections: c.max_connections,
                    };
                    tcp::spawn(socket, balancer.clone(), limits)
                }
            };
            match task {
                Ok(task) => {
                    self.listeners.insert(key, Listener { balancer, task });
                    report.added += 1;
                }
                Err(e) => report.errors.push(format!("{protocol} {addr}: {e}")),
            }
        }
        let used: HashSet<IpAddr> = self.listeners.keys().map(|(a, _)| a.ip()).collect();
        let stale: Vec<IpAddr> = self.local_routes.difference(&used).copied().collect();
        for ip in stale {
            if let Err(e) = route_local(ip, false).await {
                tracing::warn!(%ip, error = %e, "removing a local route");
            }
            self.local_routes.remove(&ip);
        }
        report.frontends = self.listeners.len();
        report
    }

    /// Closes every listener and removes the routes this proxy added.
    pub async fn shutdown(&mut self) {
        self.listeners.clear();
        for ip in std::mem::take(&mut self.local_routes) {
            let _ = route_local(ip, false).await;
        }
    }
}

impl crate::ServiceProxy for UserspaceProxy {
    fn apply<'a>(&'a mut self, table: &'a ServiceTable) -> crate::ProxyFuture<'a, SyncReport> {
        Box::pin(UserspaceProxy::apply(self, table))
    }

    fn shutdown(&mut self) -> crate::ProxyFuture<'_, ()> {
        Box::pin(UserspaceProxy::shutdown(self))
    }
}

#[cfg(test)]
mod tests {
    use super::in_ranges;

    #[test]
    fn service_ranges() {
        let ranges = [
            ("10.96.0.0".parse().unwrap(), 12),
            ("fd00:10::".parse().unwrap(), 108),
        ];
        for (ip, inside) in [
            ("10.96.0.1", true),
            ("10.111.255.254", true),
            ("10.112.0.1", false),
            ("203.0.113.53", false),
            ("fd00:10::5", true),
            ("fd00:11::5", false),
        ] {
            assert_eq!(in_ranges(&ranges, ip.parse().unwrap()), inside, "{ip}");
        }
        assert!(!in_ranges(&[], "10.96.0.1".parse().unwrap()));
        assert!(in_ranges(
            &[("0.0.0.0".parse().unwrap(), 0)],
            "192.0.2.1".parse().unwrap()
        ));
    }
}
