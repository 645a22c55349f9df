//! Stale conntrack entries. NAT is decided on a connection's first packet, so a UDP client that
//! keeps sending (a resolver, a game, a metrics agent) stays on whatever its entry says: on a
//! removed endpoint, or on the un-NATed ClusterIP if it started before the service had
//! endpoints (the kube-proxy bug class behind kubernetes/kubernetes#19029, #48370, #59368).
//! After each successful sync the entries that changed meaning are deleted, so the next
//! datagram is NATed afresh.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use super::render::{Family, Ruleset};
use super::rules::Line;
use super::{find, run, IptablesError};
use crate::table::{Protocol, ServicePort, ServicePortName};

/// The arguments of one `conntrack -D`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Filter(Vec<String>);

impl Filter {
    fn new(protocol: &str, dst: Option<IpAddr>, port: u16, endpoint: Option<SocketAddr>) -> Self {
        let mut a: Vec<String> = Vec::new();
        let v6 = dst.map(|d| d.is_ipv6()).or(endpoint.map(|e| e.is_ipv6())) == Some(true);
        if v6 {
            a.extend(["-f".into(), "ipv6".into()]);
        }
        a.extend(["-p".into(), protocol.into()]);
        if let Some(d) = dst {
            a.extend(["--orig-dst".into(), d.to_string()]);
        }
        a.extend(["--orig-port-dst".into(), port.to_string()]);
        if let Some(e) = endpoint {
            a.extend([
                "--reply-src".into(),
                e.ip().to_string(),
                "--reply-port-src".into(),
                e.port().to_string(),
            ]);
        }
        Filter(a)
    }

    /// The NATed entries of one frontend of `family` (all of them for `dst` None: a NodePort).
    pub(crate) fn nated(family: Family, protocol: &str, dst: Option<IpAddr>, port: u16) -> Self {
        let mut f = Filter::new(protocol, dst, port, None);
        if family == Family::V6 && dst.is_none() {
            f.0.splice(0..0, ["-f".to_string(), "ipv6".to_string()]);
        }
        f.0.push("--dst-nat".into());
        f
    }

    #[cfg(test)]
    pub(super) fn args(&self) -> String {
        self.0.join(" ")
    }
}

fn usable(p: &ServicePort) -> BTreeSet<SocketAddr> {
    p.usable(false)
        .into_iter()
        .chain(p.usable(true))
        .map(|e| e.addr)
        .collect()
}

/// Entries of one frontend, or only those NATed to `endpoint`.
pub(crate) fn frontend(f: &crate::table::Frontend, endpoint: Option<SocketAddr>) -> Option<Filter> {
    if let Some(e) = endpoint {
        if e.is_ipv4() != f.addr.is_ipv4() {
            return None;
        }
    }
    let dst = (!f.addr.ip().is_unspecified()).then(|| f.addr.ip());
    Some(Filter::new("udp", dst, f.addr.port(), endpoint))
}

type Ports = HashMap<(ServicePortName, Protocol), Arc<ServicePort>>;

/// The UDP entries that `new` makes stale after `old`.
fn stale_udp(old: &Ports, new: &Ports, node_addr: IpAddr) -> Vec<Filter> {
    let mut out = BTreeSet::new();
    let all = |p: &ServicePort, out: &mut BTreeSet<Filter>| {
        for f in p.frontends(node_addr) {
            out.extend(frontend(&f, None));
        }
    };
    for (key, now) in new {
        match old.get(key) {
            Some(before) if Arc::ptr_eq(before, now) => {}
            Some(before) => {
                let (was, is) = (usable(before), usable(now));
                for gone in was.difference(&is) {
                    for f in before.frontends(node_addr) {
                        out.extend(frontend(&f, Some(*gone)));
                    }
                }
                if was.is_empty() && !is.is_empty() {
                    all(now, &mut out);
                }
                let frontends = now.frontends(node_addr);
                for f in before.frontends(node_addr) {
                    if !frontends.contains(&f) {
                        out.extend(frontend(&f, None));
                    }
                }
            }
            None if !usable(now).is_empty() => all(now, &mut out),
            None => {}
        }
    }
    for (key, before) in old {
        if !new.contains_key(key) {
            all(before, &mut out);
        }
    }
    out.into_iter().collect()
}

/// The frontends Switchyard's saved rules serve, as conntrack filters for NATed entries.
pub(super) fn frontends_in(rs: &Ruleset, family: Family) -> Vec<Filter> {
    let mut out = BTreeSet::new();
    for line in rs.nat.values().flatten() {
        let rules: Vec<&str> = match line {
            Line::Text(t) => vec![t.as_str()],
            Line::Block(b) => b.iter().map(String::as_str).collect(),
        };
        for rule in rules {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let value = |flag: &str| {
                words
                    .windows(2)
                    .find(|w| w[0] == flag)
                    .map(|w| w[1].to_string())
            };
            let (Some(protocol), Some(port)) = (value("-p"), value("--dport")) else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue; // a port range of the NodePort tree
            };
            let dst = value("-d").and_then(|d| d.split('/').next()?.parse::<IpAddr>().ok());
            if dst.is_some_and(|d| Family::of(d) != family) {
                continue;
            }
            out.insert(Filter::nated(family, &protocol, dst, port));
        }
    }
    out.into_iter().collect()
}

pub(crate) struct Conntrack {
    binary: Option<PathBuf>,
    warned: bool,
}

impl Conntrack {
    pub(crate) fn new() -> Self {
        Conntrack {
            binary: find("conntrack"),
            warned: false,
        }
    }

    /// Deletes the entries `filters` match. Without the `conntrack` tool it warns once and
    /// does nothing (stale UDP entries then live until they time out).
    pub(crate) async fn delete(&mut self, filters: &[Filter]) -> Result<(), IptablesError> {
        if filters.is_empty() {
            return Ok(());
        }
        let Some(binary) = &self.binary else {
            if !self.warned {
                tracing::warn!("the conntrack tool is not installed (Debian: apt-get install conntrack): stale UDP flows are not cleared");
                self.warned = true;
            }
            return Ok(());
        };
        for f in filters {
            let mut args = vec!["-D"];
            args.extend(f.0.iter().map(String::as_str));
            match run(binary, &args, None).await {
                Ok(_) => {}
                // Nothing matched.
                Err(IptablesError::Command { message, .. })
                    if message.contains("0 flow entries") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Clears the UDP conntrack entries a sync made stale: it remembers the UDP ports as last
/// programmed (nothing until the first sync, which adopts what runs instead of clearing it).
pub(crate) struct StaleUdp {
    programmed: Option<Ports>,
    node_addr: IpAddr,
    conntrack: Conntrack,
}

impl StaleUdp {
    pub(crate) fn new(node_addr: IpAddr) -> Self {
        StaleUdp {
            programmed: None,
            node_addr,
            conntrack: Conntrack::new(),
        }
    }

    /// After `table` has been programmed.
    pub(crate) async fn clear(
        &mut self,
        table: &crate::table::ServiceTable,
    ) -> Result<(), IptablesError> {
        let now: Ports = table
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| ((p.name.clone(), p.protocol), p.clone()))
            .collect();
        let stale = match &self.programmed {
            Some(old) => stale_udp(old, &now, self.node_addr),
            None => Vec::new(),
        };
        self.conntrack.delete(&stale).await?;
        self.programmed = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Endpoint;

    fn port(endpoints: &[&str]) -> Arc<ServicePort> {
        Arc::new(ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "dns".into(),
                port: "".into(),
            },
            protocol: Protocol::Udp,
            port: 53,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            node_port: Some(30053),
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity: None,
            internal_local: false,
            external_local: false,
            endpoints: endpoints
                .iter()
                .map(|a| Endpoint {
                    addr: a.parse().unwrap(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        })
    }

    fn ports(p: &Arc<ServicePort>) -> Ports {
        [((p.name.clone(), p.protocol), p.clone())].into()
    }

    fn stale(old: &Ports, new: &Ports) -> Vec<String> {
        stale_udp(old, new, "0.0.0.0".parse().unwrap())
            .iter()
            .map(Filter::args)
            .collect()
    }

    #[test]
    fn a_removed_endpoint_clears_its_flows_on_every_frontend() {
        let before = port(&["10.244.1.2:53", "10.244.1.3:53"]);
        let after = port(&["10.244.1.3:53"]);
        assert_eq!(
            stale(&ports(&before), &ports(&after)),
            [
                "-p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.1.2 --reply-port-src 53",
                "-p udp --orig-port-dst 30053 --reply-src 10.244.1.2 --reply-port-src 53",
            ]
        );
        // Unchanged (the same Arc): nothing to clear.
        assert!(stale(&ports(&after), &ports(&after)).is_empty());
    }

    #[test]
    fn first_endpoints_clear_flows_that_were_never_natted() {
        let before = port(&[]);
        let after = port(&["10.244.1.2:53"]);
        assert_eq!(
            stale(&ports(&before), &ports(&after)),
            [
                "-p udp --orig-dst 10.96.0.10 --orig-port-dst 53",
                "-p udp --orig-port-dst 30053",
            ]
        );
        // A deleted service clears its frontends too.
        assert_eq!(stale(&ports(&after), &Ports::new()).len(), 2);
    }
}
