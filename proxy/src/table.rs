//! The service table: what every proxy mode programs, as plain data.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint runs on this node (for the `Local` traffic policies).
    pub local: bool,
}

/// `namespace/name:port` — how logs and metrics name a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One port of one Service, with everything a proxy needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`: cluster-IP traffic goes only to endpoints on this node.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: external traffic goes only to endpoints on this node.
    pub external_local: bool,
    pub endpoints: Vec<Endpoint>,
}

/// Where traffic for a service port arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// NodePort, external and load-balancer frontends follow `externalTrafficPolicy`.
    pub external: bool,
}

impl ServicePort {
    /// Every frontend of this port. NodePorts listen on `node_addr` (the unspecified address
    /// for all of the node's addresses).
    pub fn frontends(&self, node_addr: IpAddr) -> Vec<Frontend> {
        let mut out = Vec::new();
        let mut add = |ip: IpAddr, port: u16, external: bool| {
            out.push(Frontend {
                addr: SocketAddr::new(ip, port),
                protocol: self.protocol,
                external,
            });
        };
        for ip in &self.cluster_ips {
            add(*ip, self.port, false);
        }
        for ip in self.external_ips.iter().chain(&self.load_balancer_ips) {
            add(*ip, self.port, true);
        }
        if let Some(np) = self.node_port {
            add(node_addr, np, true);
        }
        out
    }

    /// The endpoints traffic may go to ([`usable`]), only local ones when the frontend's
    /// traffic policy is Local.
    pub fn usable(&self, external: bool) -> Vec<&Endpoint> {
        let local_only = if external {
            self.external_local
        } else {
            self.internal_local
        };
        usable(&self.endpoints, local_only)
    }
}

/// The endpoints traffic may go to: the ready ones, or — when none is ready — the serving
/// terminating ones (kube-proxy's ProxyTerminatingEndpoints).
pub fn usable(endpoints: &[Endpoint], local_only: bool) -> Vec<&Endpoint> {
    let candidates = || endpoints.iter().filter(move |e| !local_only || e.local);
    let ready: Vec<&Endpoint> = candidates().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// Every service port the node serves, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub ports: Vec<Arc<ServicePort>>,
}

impl ServiceTable {
    pub fn endpoint_count(&self) -> usize {
        self.ports.iter().map(|p| p.endpoints.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            ready,
            serving,
            terminating,
            local,
        }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "svc".into(),
                port: "http".into(),
            },
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            node_port: Some(30080),
            external_ips: vec!["192.0.2.1".parse().unwrap()],
            load_balancer_ips: vec![],
            affinity: None,
            internal_local: false,
            external_local: true,
            endpoints,
        }
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let p = port(vec![
            ep("10.0.0.1:80", true, true, false, false),
            ep("10.0.0.2:80", false, true, true, true),
        ]);
        assert_eq!(p.usable(false).len(), 1);
        assert_eq!(p.usable(false)[0].addr.to_string(), "10.0.0.1:80");
        // External traffic is Local: only the local endpoint qualifies, and it is terminating.
        assert_eq!(
            p.usable(true)
                .iter()
                .map(|e| e.addr.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.2:80"]
        );
        let none = port(vec![ep("10.0.0.3:80", false, false, true, false)]);
        assert!(none.usable(false).is_empty());
    }

    #[test]
    fn frontends_cover_every_address() {
        let p = port(vec![]);
        let f = p.frontends("0.0.0.0".parse().unwrap());
        let addrs: Vec<String> = f
            .iter()
            .map(|f| format!("{}{}", f.addr, if f.external { "e" } else { "" }))
            .collect();
        assert_eq!(addrs, ["10.96.0.10:80", "192.0.2.1:80e", "0.0.0.0:30080e"]);
    }
}
