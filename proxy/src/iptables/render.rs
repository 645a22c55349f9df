//! The ruleset as a pure function of the service table (the `iptables-restore` text that turns
//! one ruleset into another is [`restore`](super::restore)'s).
//!
//! Layout (chains in the `nat` table unless said otherwise):
//! - `SY-SERVICES` (from PREROUTING and OUTPUT): a dispatch tree on the destination address
//!   ([`tree`](super::tree)), then NodePorts for local destinations (`SY-NODEPORTS`, a tree on
//!   protocol and port).
//! - A frontend's block: masquerade marks where needed, then the endpoint choice. A choice used
//!   by one frontend without affinity is inlined — one `statistic` + `DNAT` rule per endpoint,
//!   no per-service chain. A choice shared by several frontends, or with `ClientIP` affinity,
//!   is a chain `SY-SVC-…` (cluster traffic) or `SY-EXT-…` (external traffic, when its endpoints
//!   differ); affinity adds one `SY-SEP-…` chain per endpoint for the `recent` match.
//! - No usable endpoint: `SY-REJECT` marks the packet, and `SY-FILTER` in the `filter` table
//!   (INPUT, OUTPUT, FORWARD) rejects it.
//! - `SY-POSTROUTING` (from POSTROUTING): masquerades packets marked by `SY-MARK-MASQ`, and
//!   hairpin connections (a pod reaching itself through a service; `SY-HAIRPIN` lists this
//!   node's endpoints). `SY-FORWARD` (filter, FORWARD) accepts, on hosts whose FORWARD policy
//!   drops, what our rules marked (to masquerade, or `FORWARD_MARK` for external traffic kept
//!   local) and the later packets of DNATed connections — not the first packet of any DNATed
//!   flow, which would let other tools' port forwards past the host's firewall.
//!
//! Every rule is written the way `iptables-save` prints it, so a restarted agent that reads the
//! kernel's rules back finds nothing to rewrite.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::rules::{hashed, Block, Chains, Line};
use super::tree::{self, Space};
use crate::table::{Protocol, ServicePort, ServicePortName, ServiceTable};

/// Packets to masquerade on the way out (the bit kube-proxy uses, with the same meaning).
pub const MASQ_MARK: u32 = 0x4000;
/// Packets to reject in the filter table.
pub const REJECT_MARK: u32 = 0x1000;
/// Packets our rules sent to a node-local endpoint without masquerading them (external traffic
/// under a Local policy), for `SY-FORWARD` to accept.
pub const FORWARD_MARK: u32 = 0x2000;

pub const SERVICES: &str = "SY-SERVICES";
pub const POSTROUTING: &str = "SY-POSTROUTING";
pub const FILTER: &str = "SY-FILTER";
pub const FORWARD: &str = "SY-FORWARD";
const NODEPORTS: &str = "SY-NODEPORTS";
const MARK_MASQ: &str = "SY-MARK-MASQ";
const REJECT: &str = "SY-REJECT";
const HAIRPIN: &str = "SY-HAIRPIN";
/// Every chain Switchyard owns starts with this.
pub const PREFIX: &str = "SY-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn addr(self, key: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(key as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(key)),
        }
    }

    fn host(ip: IpAddr) -> String {
        format!("{ip}/{}", Family::of(ip).bits())
    }

    fn full_mask(self) -> &'static str {
        match self {
            Family::V4 => "255.255.255.255",
            Family::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    fn port_unreachable(self) -> &'static str {
        match self {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        }
    }
}

/// What the rules depend on besides the table.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where NodePorts are served: the unspecified address for every local address.
    pub node_addr: IpAddr,
    /// The pods' addresses (kube-proxy's `--cluster-cidr`): cluster-IP traffic from elsewhere
    /// is masqueraded. Without one, only external traffic is.
    pub cluster_cidrs: Vec<(IpAddr, u8)>,
    /// Masquerade all service traffic.
    pub masquerade_all: bool,
}

/// The desired state of one address family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ruleset {
    pub nat: Chains,
    pub filter: Chains,
    /// Frontends programmed (not part of the kernel state).
    pub frontends: usize,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `statistic`'s probability for one in `n`, as iptables-save prints it (the kernel keeps it
/// in units of 2^-31).
fn probability(n: usize) -> String {
    let scaled = (2_147_483_648.0 / n as f64).round();
    format!("{:.11}", scaled / 2_147_483_648.0)
}

fn comment(text: &str) -> String {
    format!(" -m comment --comment \"{text}\"")
}

/// `-d 10.96.0.10/32 -p tcp -m tcp --dport 80` (or without a destination for NodePorts), in
/// iptables-save's order, with an optional source part before it.
fn frontend_match(dst: Option<IpAddr>, protocol: Protocol, port: u16) -> String {
    let p = proto(protocol);
    match dst {
        Some(ip) => format!("-d {} -p {p} -m {p} --dport {port}", Family::host(ip)),
        None => format!("-p {p} -m {p} --dport {port}"),
    }
}

/// Random choice among `targets`: each rule takes its share of what the earlier ones left.
fn choose(head: &str, first_extra: &str, targets: &[String]) -> Vec<String> {
    let n = targets.len();
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let extra = if i == 0 { first_extra } else { "" };
            let pre = format!("{head}{extra}");
            let pre = pre.trim_start();
            let sep = if pre.is_empty() { "" } else { " " };
            if i + 1 < n {
                format!(
                    "{pre}{sep}-m statistic --mode random --probability {} -j {target}",
                    probability(n - i)
                )
            } else {
                format!("{pre}{sep}-j {target}")
            }
        })
        .collect()
}

/// Where a frontend's traffic goes.
enum Choice {
    Reject,
    Chain(String),
    Inline(Vec<String>),
}

/// The rules one service port contributes in one family.
#[derive(Debug, Default, PartialEq)]
pub struct PortRules {
    /// Blocks keyed by destination address.
    dst: Vec<(IpAddr, Block)>,
    /// The NodePort block.
    node_port: Option<(Protocol, u16, Block)>,
    /// The port's own chains.
    chains: Vec<(String, Block)>,
    /// Endpoints on this node (for hairpin masquerade).
    local: Vec<IpAddr>,
}

/// How a frontend picks among `eps`: inline for one frontend without affinity, otherwise a
/// chain (`SY-SVC-`/`SY-EXT-` + hash of `id`) pushed to `chains`, with one `SY-SEP-` chain per
/// endpoint for `ClientIP` affinity.
fn choose_endpoints(
    p: &ServicePort,
    family: Family,
    id: &str,
    eps: &[SocketAddr],
    users: usize,
    chain_prefix: &str,
    chains: &mut Vec<(String, Block)>,
) -> Choice {
    if eps.is_empty() {
        return Choice::Reject;
    }
    let pr = proto(p.protocol);
    let dnat = |e: &SocketAddr| format!("DNAT --to-destination {e}");
    if p.affinity.is_none() && users == 1 {
        return Choice::Inline(eps.iter().map(dnat).collect());
    }
    let chain = hashed(chain_prefix, id);
    let rules = match p.affinity {
        None => choose(
            &format!("-p {pr}"),
            "",
            &eps.iter().map(dnat).collect::<Vec<_>>(),
        ),
        Some(timeout) => {
            let seps: Vec<String> = eps
                .iter()
                .map(|e| hashed("SY-SEP-", &format!("{id}/{e}")))
                .collect();
            let mut rules: Vec<String> = seps
                .iter()
                .map(|sep| {
                    format!(
                        "-m recent --rcheck --seconds {} --reap --name {sep} --mask {} --rsource -j {sep}",
                        timeout.as_secs(),
                        family.full_mask()
                    )
                })
                .collect();
            rules.extend(choose("", "", &seps));
            for (sep, e) in seps.iter().zip(eps) {
                chains.push((
                    sep.clone(),
                    Arc::new(vec![format!(
                        "-p {pr} -m recent --set --name {sep} --mask {} --rsource -j {}",
                        family.full_mask(),
                        dnat(e)
                    )]),
                ));
            }
            rules
        }
    };
    chains.push((chain.clone(), Arc::new(rules)));
    Choice::Chain(chain)
}

/// One frontend's block: `m` matches it, `masq` marks what must be masqueraded, then `choice`.
fn frontend_block(m: &str, masq: &[String], choice: &Choice, name: &str) -> Block {
    let mut rules: Vec<String> = Vec::new();
    match choice {
        Choice::Reject => rules.push(format!(
            "{m}{} -j {REJECT}",
            comment(&format!("{name} has no endpoints"))
        )),
        Choice::Chain(chain) => {
            rules.extend(masq.iter().cloned());
            rules.push(format!("{m}{} -j {chain}", comment(name)));
        }
        Choice::Inline(targets) => {
            rules.extend(masq.iter().cloned());
            rules.extend(choose(m, &comment(name), targets));
        }
    }
    Arc::new(rules)
}

/// What one service port serves in one address family: its frontends there and the endpoints
/// each kind of frontend may reach. Shared by the iptables and nftables renderers.
pub(crate) struct FamilyView {
    pub cluster: Vec<IpAddr>,
    /// External and load-balancer IPs.
    pub external: Vec<IpAddr>,
    pub node_port: Option<u16>,
    /// Endpoints of cluster traffic, and of external traffic (NodePorts, external IPs).
    pub int_eps: Vec<SocketAddr>,
    pub ext_eps: Vec<SocketAddr>,
}

impl FamilyView {
    pub fn new(p: &ServicePort, family: Family, node_addr: IpAddr) -> FamilyView {
        let in_family = |ip: &IpAddr| Family::of(*ip) == family;
        let cluster: Vec<IpAddr> = p.cluster_ips.iter().copied().filter(in_family).collect();
        let external: Vec<IpAddr> = p
            .external_ips
            .iter()
            .chain(&p.load_balancer_ips)
            .copied()
            .filter(in_family)
            .collect();
        // A port takes part in a family through its cluster IPs; NodePorts follow them. A port
        // without any (the eBPF proxy serves them at the socket) goes by its endpoints, IPv4
        // when it has none.
        let in_port_family = if p.cluster_ips.is_empty() {
            p.endpoints.iter().any(|e| in_family(&e.addr.ip()))
                || (p.endpoints.is_empty() && family == Family::V4)
        } else {
            !cluster.is_empty()
        };
        let node_port = p.node_port.filter(|_| {
            in_port_family && (node_addr.is_unspecified() || Family::of(node_addr) == family)
        });
        let endpoints = |external: bool| -> Vec<SocketAddr> {
            p.usable(external)
                .into_iter()
                .map(|e| e.addr)
                .filter(|a| in_family(&a.ip()))
                .collect()
        };
        FamilyView {
            cluster,
            external,
            node_port,
            int_eps: endpoints(false),
            ext_eps: endpoints(true),
        }
    }
}

/// The rules of one service port in one family.
fn port_rules(p: &ServicePort, family: Family, o: &Options) -> PortRules {
    let in_family = |ip: &IpAddr| Family::of(*ip) == family;
    let FamilyView {
        cluster,
        external,
        node_port,
        int_eps,
        ext_eps,
    } = FamilyView::new(p, family, o.node_addr);
    let ext_users = external.len() + node_port.is_some() as usize;
    let shared = int_eps == ext_eps;
    let id = format!("{}/{}", p.name, p.protocol);
    let name = p.name.to_string();
    let mut out = PortRules::default();

    let int_users = cluster.len() + if shared { ext_users } else { 0 };
    let int_choice = (!cluster.is_empty() || (shared && ext_users > 0)).then(|| {
        choose_endpoints(
            p,
            family,
            &id,
            &int_eps,
            int_users,
            "SY-SVC-",
            &mut out.chains,
        )
    });
    let ext_choice = if shared {
        None
    } else {
        (ext_users > 0).then(|| {
            choose_endpoints(
                p,
                family,
                &id,
                &ext_eps,
                ext_users,
                "SY-EXT-",
                &mut out.chains,
            )
        })
    };
    let ext_choice = ext_choice.as_ref().or(int_choice.as_ref());

    if let Some(choice) = &int_choice {
        for ip in &cluster {
            let m = frontend_match(Some(*ip), p.protocol, p.port);
            let masq: Vec<String> = if o.masquerade_all {
                vec![format!("{m} -j {MARK_MASQ}")]
            } else {
                o.cluster_cidrs
                    .iter()
                    .find(|(a, _)| Family::of(*a) == family)
                    .map(|(a, len)| format!("! -s {a}/{len} {m} -j {MARK_MASQ}"))
                    .into_iter()
                    .collect()
            };
            out.dst
                .push((*ip, frontend_block(&m, &masq, choice, &name)));
        }
    }
    if let Some(choice) = ext_choice {
        let masq = |m: &str| -> Vec<String> {
            if p.external_local && !o.masquerade_all {
                vec![format!(
                    "{m} -j MARK --set-xmark {FORWARD_MARK:#x}/{FORWARD_MARK:#x}"
                )]
            } else {
                vec![format!("{m} -j {MARK_MASQ}")]
            }
        };
        for ip in &external {
            let m = frontend_match(Some(*ip), p.protocol, p.port);
            out.dst
                .push((*ip, frontend_block(&m, &masq(&m), choice, &name)));
        }
        if let Some(np) = node_port {
            let m = frontend_match(None, p.protocol, np);
            out.node_port = Some((p.protocol, np, frontend_block(&m, &masq(&m), choice, &name)));
        }
    }
    out.local = p
        .endpoints
        .iter()
        .filter(|e| e.local && in_family(&e.addr.ip()))
        .map(|e| e.addr.ip())
        .collect();
    out
}

type PortKey = (ServicePortName, Protocol);

/// Renders rulesets for one family, remembering each port's rules while its `Arc` is unchanged.
pub struct Renderer {
    family: Family,
    options: Options,
    cache: HashMap<PortKey, (Arc<ServicePort>, Arc<PortRules>)>,
}

impl Renderer {
    pub fn new(family: Family, options: Options) -> Self {
        Renderer {
            family,
            options,
            cache: HashMap::new(),
        }
    }

    pub fn render(&mut self, table: &ServiceTable) -> Ruleset {
        let mut cache = HashMap::with_capacity(table.ports.len());
        for port in &table.ports {
            let key = (port.name.clone(), port.protocol);
            let rules = match self.cache.remove(&key) {
                Some((old, rules)) if Arc::ptr_eq(&old, port) => rules,
                _ => Arc::new(port_rules(port, self.family, &self.options)),
            };
            cache.insert(key, (port.clone(), rules));
        }
        self.cache = cache;
        assemble(
            self.family,
            &self.options,
            self.cache.iter().map(|(k, (_, r))| (k, r)),
        )
    }
}

fn assemble<'a>(
    family: Family,
    o: &Options,
    ports: impl Iterator<Item = (&'a PortKey, &'a Arc<PortRules>)>,
) -> Ruleset {
    // Sorted by name, so blocks that share a destination keep a stable order.
    let mut ports: Vec<(&PortKey, &Arc<PortRules>)> = ports.collect();
    ports.sort_by(|a, b| a.0.cmp(b.0));
    let mut nat = Chains::new();
    let mut dst: Vec<(u128, Block)> = Vec::new();
    let mut node_ports: Vec<(u128, Block)> = Vec::new();
    let mut local = BTreeSet::new();
    let mut frontends = 0;
    for (_, r) in &ports {
        for (ip, b) in &r.dst {
            dst.push((Family::key(*ip), b.clone()));
        }
        if let Some((protocol, port, b)) = &r.node_port {
            let p = match protocol {
                Protocol::Tcp => 0u128,
                Protocol::Udp => 1,
                Protocol::Sctp => 2,
            };
            node_ports.push(((p << 16) | *port as u128, b.clone()));
        }
        frontends += r.dst.len() + r.node_port.is_some() as usize;
        for (name, b) in &r.chains {
            nat.insert(name.clone(), vec![Line::Block(b.clone())]);
        }
        local.extend(r.local.iter().copied());
    }
    dst.sort_by_key(|(k, _)| *k);
    node_ports.sort_by_key(|(k, _)| *k);

    let services = service_trees(family, o, &dst, &node_ports, &mut nat);
    nat.insert(SERVICES.into(), services);
    let filter = fixed_chains(family, &local, &mut nat);
    Ruleset {
        nat,
        filter,
        frontends,
    }
}

/// `SY-SERVICES`: the dispatch tree on destination addresses, then the NodePort tree (keyed by
/// protocol and port) for local destinations; their inner chains go into `nat`.
fn service_trees(
    family: Family,
    o: &Options,
    dst: &[(u128, Block)],
    node_ports: &[(u128, Block)],
    nat: &mut Chains,
) -> Vec<Line> {
    let bits = family.bits();
    let dst_match = move |prefix: u128, len: u32| {
        let base = if len == 0 { 0 } else { prefix << (bits - len) };
        format!("-d {}/{len}", family.addr(base))
    };
    let mut services = tree::build(
        &Space {
            bits,
            chain_prefix: "SY-DST-",
            matcher: &dst_match,
        },
        dst,
        nat,
    );
    if !node_ports.is_empty() {
        let port_match = |prefix: u128, len: u32| {
            // The top two bits are the protocol, the rest a port range.
            let proto_name = match prefix >> (len - 2) {
                0 => "tcp",
                1 => "udp",
                _ => "sctp",
            };
            let port_bits = len - 2;
            if port_bits == 0 {
                return format!("-p {proto_name}");
            }
            let lo = (prefix & ((1 << port_bits) - 1)) << (16 - port_bits);
            let hi = lo + (1 << (16 - port_bits)) - 1;
            format!("-p {proto_name} -m {proto_name} --dport {lo}:{hi}")
        };
        let np = tree::build(
            &Space {
                bits: 18,
                chain_prefix: "SY-NP-",
                matcher: &port_match,
            },
            node_ports,
            nat,
        );
        nat.insert(NODEPORTS.into(), np);
        services.push(Line::Text(if o.node_addr.is_unspecified() {
            format!("-m addrtype --dst-type LOCAL -j {NODEPORTS}")
        } else {
            format!("-d {} -j {NODEPORTS}", Family::host(o.node_addr))
        }));
    }
    services
}

/// The chains every ruleset has whatever the services: masquerade and reject marks, hairpin
/// masquerade for this node's endpoints (`local`), `SY-POSTROUTING`, and the filter table's
/// chains, which are returned.
fn fixed_chains(family: Family, local: &BTreeSet<IpAddr>, nat: &mut Chains) -> Chains {
    let text = |s: String| Line::Text(s);
    nat.insert(
        MARK_MASQ.into(),
        vec![text(format!(
            "-j MARK --set-xmark {MASQ_MARK:#x}/{MASQ_MARK:#x}"
        ))],
    );
    nat.insert(
        REJECT.into(),
        vec![
            text(format!(
                "-j MARK --set-xmark {REJECT_MARK:#x}/{REJECT_MARK:#x}"
            )),
            text("-j ACCEPT".into()),
        ],
    );
    nat.insert(
        HAIRPIN.into(),
        local
            .iter()
            .map(|ip| {
                let h = Family::host(*ip);
                text(format!("-s {h} -d {h} -j MASQUERADE"))
            })
            .collect(),
    );
    nat.insert(
        POSTROUTING.into(),
        vec![
            text(format!("-m conntrack --ctstate DNAT -j {HAIRPIN}")),
            text(format!(
                "-m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN"
            )),
            text(format!("-j MARK --set-xmark {MASQ_MARK:#x}/0x0")),
            text("-j MASQUERADE --random-fully".into()),
        ],
    );
    let mut filter = Chains::new();
    filter.insert(
        FILTER.into(),
        vec![text(format!(
            "-m mark --mark {REJECT_MARK:#x}/{REJECT_MARK:#x} -j REJECT --reject-with {}",
            family.port_unreachable()
        ))],
    );
    // Only what our rules marked (as kube-proxy's KUBE-FORWARD), and the later packets of
    // DNATed connections: not every DNATed flow on the host.
    filter.insert(
        FORWARD.into(),
        [MASQ_MARK, FORWARD_MARK]
            .iter()
            .map(|mark| text(format!("-m mark --mark {mark:#x}/{mark:#x} -j ACCEPT")))
            .chain([text(
                "-m conntrack --ctstate RELATED,ESTABLISHED -m conntrack --ctstate DNAT -j ACCEPT"
                    .into(),
            )])
            .collect(),
    );
    filter
}

#[cfg(test)]
pub(crate) mod tests;
