//! Endpoint selection for one frontend: round robin over the usable endpoints, with ClientIP
//! affinity. The port's view is swapped in place when the table changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::table::ServicePort;

pub(super) struct Balancer {
    port: ArcSwap<ServicePort>,
    external: bool,
    next: AtomicUsize,
    /// client -> (endpoint, last use), for ClientIP affinity.
    affinity: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Balancer {
    pub(super) fn new(port: Arc<ServicePort>, external: bool) -> Self {
        Balancer {
            port: ArcSwap::new(port),
            external,
            next: AtomicUsize::new(0),
            affinity: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn update(&self, port: Arc<ServicePort>) {
        if **self.port.load() != *port {
            self.port.store(port);
        }
    }

    pub(super) fn name(&self) -> String {
        self.port.load().name.to_string()
    }

    /// Whether `ep` may still take traffic.
    pub(super) fn usable(&self, ep: SocketAddr) -> bool {
        self.port
            .load()
            .usable(self.external)
            .iter()
            .any(|e| e.addr == ep)
    }

    /// The endpoints to try for `client`, best first: its affine endpoint if it has one, then
    /// the others in round-robin order.
    pub(super) fn candidates(&self, client: IpAddr) -> Vec<SocketAddr> {
        let port = self.port.load();
        let usable = port.usable(self.external);
        if usable.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % usable.len();
        let mut out: Vec<SocketAddr> = (0..usable.len())
            .map(|i| usable[(start + i) % usable.len()].addr)
            .collect();
        if let Some(timeout) = port.affinity {
            let mut aff = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
            aff.retain(|_, (_, at)| at.elapsed() < timeout);
            if let Some((ep, _)) = aff.get(&client) {
                if let Some(pos) = out.iter().position(|a| a == ep) {
                    out[..=pos].rotate_right(1);
                }
            }
        }
        out
    }

    /// Records that `client` was served by `ep` (for affinity).
    pub(super) fn served(&self, client: IpAddr, ep: SocketAddr) {
        if self.port.load().affinity.is_some() {
            self.affinity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(client, (ep, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Endpoint, Protocol, ServicePortName};
    use std::time::Duration;

    fn port(eps: &[&str], affinity: Option<Duration>) -> Arc<ServicePort> {
        Arc::new(ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "s".into(),
                port: String::new(),
            },
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec![],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity,
            internal_local: false,
            external_local: false,
            endpoints: eps
                .iter()
                .map(|a| Endpoint {
                    addr: a.parse().unwrap(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                })
                .collect(),
        })
    }

    #[test]
    fn round_robin_spreads_and_affinity_sticks() {
        let b = Balancer::new(
            port(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None),
            false,
        );
        let client: IpAddr = "10.1.0.1".parse().unwrap();
        let firsts: std::collections::HashSet<SocketAddr> =
            (0..3).map(|_| b.candidates(client)[0]).collect();
        assert_eq!(firsts.len(), 3);
        assert_eq!(
            b.candidates(client).len(),
            3,
            "every endpoint is a fallback"
        );

        let b = Balancer::new(
            port(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
                Some(Duration::from_secs(60)),
            ),
            false,
        );
        let first = b.candidates(client)[0];
        b.served(client, first);
        for _ in 0..10 {
            assert_eq!(b.candidates(client)[0], first);
        }
        // The affine endpoint going away sends the client elsewhere.
        let others: Vec<&str> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .into_iter()
            .filter(|a| a.parse::<SocketAddr>().unwrap() != first)
            .collect();
        b.update(port(&others, Some(Duration::from_secs(60))));
        assert_ne!(b.candidates(client)[0], first);
        assert!(!b.usable(first));
    }
}
