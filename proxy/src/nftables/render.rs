//! The nftables ruleset as data, and the `nft` transactions that bring the kernel to it.
//!
//! Layout of the table `ip switchyard` (and `ip6 switchyard`):
//! - Fixed chains, written once per table: the base chains (`nat-prerouting`, `nat-output`,
//!   `nat-postrouting`; `filter-input`, `filter-forward`, `filter-output`), `services`, which
//!   dispatches on `daddr . l4proto . dport` through the verdict map `service-ips` (and NodePorts
//!   on `l4proto . dport` through `service-nodeports`), and the endpoint pickers: `pick-N` chooses
//!   one of N endpoints with `numgen random mod N` as the last part of the key of the map
//!   `endpoints` (`np-pick-N` the same for NodePorts), for N up to [`PICK_MAX`], behind chains
//!   that mark for masquerading (`cluster-N`, `masq-N`, `np-masq-N`).
//! - Services are data: a frontend is one element of a dispatch map (`... : goto pick-3`) and
//!   one element per endpoint in `endpoints`. A new Service or an endpoint change writes only
//!   elements, which the kernel takes without revalidating the table's chains (a rule change
//!   makes it walk every chain reachable from the base chains).
//! - What the pickers cannot express — `ClientIP` affinity, or more than [`PICK_MAX`]
//!   endpoints — gets chains of its own as kube-proxy's nftables mode writes them: `svc-…`
//!   chooses with a `numgen` verdict map among `ep-…` chains that DNAT, each with a dynamic
//!   set `aff-…` of the clients it served. Their names are hashes of their content, so a chain
//!   that exists is right, and a restarted agent adopts what it finds by name.
//! - No usable endpoint: the frontend is an element of `no-endpoint-services` (or
//!   `no-endpoint-nodeports`), which the filter chains send to `reject-chain` for new
//!   connections.
//! - `nat-postrouting` masquerades what was marked, and hairpin connections (a pod reaching
//!   itself through a service: the pairs in `hairpin`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::iptables::render::{Family, FamilyView, Options, MASQ_MARK};
use crate::iptables::rules::hashed;
use crate::table::{Protocol, ServicePort, ServicePortName, ServiceTable};

/// The table's name in each family.
pub const TABLE: &str = "switchyard";
/// The most endpoints a frontend may have and still be served by the shared pickers.
pub const PICK_MAX: usize = 64;

/// The maps (and sets) whose elements services are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Map {
    ServiceIps,
    ServiceNodeports,
    Endpoints,
    NodeportEndpoints,
    NoEndpointServices,
    NoEndpointNodeports,
    /// A set: `ip . ip` of this node's endpoints.
    Hairpin,
}

impl Map {
    pub const ALL: [Map; 7] = [
        Map::ServiceIps,
        Map::ServiceNodeports,
        Map::Endpoints,
        Map::NodeportEndpoints,
        Map::NoEndpointServices,
        Map::NoEndpointNodeports,
        Map::Hairpin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Map::ServiceIps => "service-ips",
            Map::ServiceNodeports => "service-nodeports",
            Map::Endpoints => "endpoints",
            Map::NodeportEndpoints => "nodeport-endpoints",
            Map::NoEndpointServices => "no-endpoint-services",
            Map::NoEndpointNodeports => "no-endpoint-nodeports",
            Map::Hairpin => "hairpin",
        }
    }

    pub fn by_name(name: &str) -> Option<Map> {
        Map::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// An element: (map, key) and its value ("" in a set).
pub type Key = (Map, String);

/// `ip` or `ip6`: the table family, and the payload protocol of addresses.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

const MARK: &str = "meta mark set meta mark | 0x4000";

/// The rule that marks cluster traffic for masquerading, if any.
fn cluster_mark(family: Family, o: &Options) -> Option<String> {
    if o.masquerade_all {
        return Some(MARK.into());
    }
    o.cluster_cidrs
        .iter()
        .find(|(a, _)| Family::of(*a) == family)
        .map(|(a, len)| format!("{} saddr != {a}/{len} {MARK}", family_name(family)))
}

/// How NodePort traffic is recognised: any local address, or the one NodePorts are served on.
fn nodeport_match(family: Family, o: &Options) -> String {
    if o.node_addr.is_unspecified() {
        "fib daddr type local".into()
    } else {
        format!("{} daddr {}", family_name(family), o.node_addr)
    }
}

/// The chains and maps every table has, whatever the services: the text of one transaction
/// that creates them in an empty table. Its hash names the marker chain `fixed-…`, so a
/// table written with other options is recognised and replaced.
pub fn fixed(family: Family, o: &Options) -> String {
    let f = family_name(family);
    let at = addr_type(family);
    let mut t = String::new();
    let _ = writeln!(t, "table {f} {TABLE} {{");
    let _ = writeln!(t, "\tcomment \"Switchyard service proxy\"");
    let maps = [
        ("service-ips", format!("type {at} . inet_proto . inet_service : verdict")),
        ("service-nodeports", "type inet_proto . inet_service : verdict".into()),
        ("no-endpoint-services", format!("type {at} . inet_proto . inet_service : verdict")),
        ("no-endpoint-nodeports", "type inet_proto . inet_service : verdict".into()),
        (
            "endpoints",
            format!("typeof {f} daddr . meta l4proto . th dport . numgen random mod 2 : {f} daddr . th dport"),
        ),
        (
            "nodeport-endpoints",
            format!("typeof meta l4proto . th dport . numgen random mod 2 : {f} daddr . th dport"),
        ),
    ];
    for (name, ty) in maps {
        let _ = writeln!(t, "\tmap {name} {{\n\t\t{ty}\n\t}}");
    }
    let _ = writeln!(t, "\tset hairpin {{\n\t\ttype {at} . {at}\n\t}}");
    let chain = |t: &mut String, name: &str, head: Option<&str>, rules: &[String]| {
        let _ = writeln!(t, "\tchain {name} {{");
        if let Some(h) = head {
            let _ = writeln!(t, "\t\t{h}");
        }
        for r in rules {
            let _ = writeln!(t, "\t\t{r}");
        }
        let _ = writeln!(t, "\t}}");
    };
    let np = nodeport_match(family, o);
    chain(
        &mut t,
        "services",
        None,
        &[
            format!("{f} daddr . meta l4proto . th dport vmap @service-ips"),
            format!("{np} meta l4proto . th dport vmap @service-nodeports"),
        ],
    );
    chain(
        &mut t,
        "masquerading",
        None,
        &[
            format!("meta mark & {MASQ_MARK:#x} == 0 return"),
            format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
            "masquerade fully-random".into(),
        ],
    );
    chain(&mut t, "reject-chain", None, &["reject".into()]);
    chain(
        &mut t,
        "endpoints-check",
        None,
        &[
            format!("{f} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
            format!("{np} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ],
    );
    let pickers = "meta l4proto { tcp, udp, sctp }";
    let cluster = cluster_mark(family, o);
    for n in 1..=PICK_MAX {
        chain(
            &mut t,
            &format!("pick-{n}"),
            None,
            &[format!(
                "{pickers} dnat {f} to {f} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints"
            )],
        );
        chain(
            &mut t,
            &format!("np-pick-{n}"),
            None,
            &[format!(
                "{pickers} dnat {f} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints"
            )],
        );
        chain(
            &mut t,
            &format!("masq-{n}"),
            None,
            &[MARK.into(), format!("goto pick-{n}")],
        );
        chain(
            &mut t,
            &format!("np-masq-{n}"),
            None,
            &[MARK.into(), format!("goto np-pick-{n}")],
        );
        if let Some(mark) = &cluster {
            chain(
                &mut t,
                &format!("cluster-{n}"),
                None,
                &[mark.clone(), format!("goto pick-{n}")],
            );
        }
    }
    let base = |t: &mut String, name: &str, ty: &str, hook: &str, prio: &str, rules: &[String]| {
        chain(
            t,
            name,
            Some(&format!(
                "type {ty} hook {hook} priority {prio}; policy accept;"
            )),
            rules,
        )
    };
    let services = ["jump services".to_string()];
    base(
        &mut t,
        "nat-prerouting",
        "nat",
        "prerouting",
        "dstnat",
        &services,
    );
    base(&mut t, "nat-output", "nat", "output", "-100", &services);
    base(
        &mut t,
        "nat-postrouting",
        "nat",
        "postrouting",
        "srcnat",
        &[
            format!("ct status dnat {f} saddr . {f} daddr @hairpin masquerade"),
            "jump masquerading".into(),
        ],
    );
    let check = ["ct state new jump endpoints-check".to_string()];
    for hook in ["input", "forward", "output"] {
        base(
            &mut t,
            &format!("filter-{hook}"),
            "filter",
            hook,
            "-110",
            &check,
        );
    }
    let _ = writeln!(t, "}}");
    // The marker chain: its name says which fixed part this table has.
    let marker = hashed("fixed-", &t);
    let _ = writeln!(t, "add chain {f} {TABLE} {marker}");
    t
}

/// The name of the marker chain in [`fixed`]'s text.
pub fn marker(fixed: &str) -> &str {
    fixed
        .lines()
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
}

/// What one service port contributes to one family's table.
#[derive(Debug, Default, PartialEq)]
pub struct Part {
    pub elements: Vec<(Key, String)>,
    /// Chains of its own (content-addressed names), with their rules.
    pub chains: Vec<(String, Arc<Vec<String>>)>,
    /// Affinity sets: name and timeout in seconds.
    pub sets: Vec<(String, u64)>,
    pub frontends: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Cluster,
    External,
    NodePort,
}

/// What `port` contributes to `family`'s table.
pub fn part(p: &ServicePort, family: Family, o: &Options) -> Part {
    let v = FamilyView::new(p, family, o.node_addr);
    let f = family_name(family);
    let pr = proto(p.protocol);
    let id = format!("{}/{}", p.name, p.protocol);
    let mut out = Part::default();
    let masq_external = !p.external_local || o.masquerade_all;
    let cluster = cluster_mark(family, o);
    let frontends = v
        .cluster
        .iter()
        .map(|ip| (Some(*ip), Kind::Cluster))
        .chain(v.external.iter().map(|ip| (Some(*ip), Kind::External)))
        .chain(v.node_port.map(|_| (None, Kind::NodePort)));
    for (ip, kind) in frontends {
        out.frontends += 1;
        let port = if kind == Kind::NodePort {
            v.node_port.unwrap_or_default()
        } else {
            p.port
        };
        let key = match ip {
            Some(ip) => format!("{ip} . {pr} . {port}"),
            None => format!("{pr} . {port}"),
        };
        let eps = if kind == Kind::Cluster {
            &v.int_eps
        } else {
            &v.ext_eps
        };
        let (dispatch, refuse, endpoints) = match kind {
            Kind::NodePort => (
                Map::ServiceNodeports,
                Map::NoEndpointNodeports,
                Map::NodeportEndpoints,
            ),
            _ => (Map::ServiceIps, Map::NoEndpointServices, Map::Endpoints),
        };
        if eps.is_empty() {
            out.elements
                .push(((refuse, key), "goto reject-chain".into()));
            continue;
        }
        let mark = match kind {
            Kind::Cluster => cluster.clone(),
            _ => masq_external.then(|| MARK.to_string()),
        };
        let n = eps.len();
        let target = if p.affinity.is_none() && n <= PICK_MAX {
            for (i, e) in eps.iter().enumerate() {
                out.elements.push((
                    (endpoints, format!("{key} . {i}")),
                    format!("{} . {}", e.ip(), e.port()),
                ));
            }
            let prefix = if kind == Kind::NodePort { "np-" } else { "" };
            match (&mark, kind) {
                (None, _) => format!("goto {prefix}pick-{n}"),
                (Some(_), Kind::Cluster) => format!("goto cluster-{n}"),
                (Some(_), _) => format!("goto {prefix}masq-{n}"),
            }
        } else {
            format!("goto {}", own_chains(p, &id, f, mark, eps, &mut out))
        };
        out.elements.push(((dispatch, key), target));
    }
    for e in p.endpoints.iter().filter(|e| e.local) {
        let ip = e.addr.ip();
        if Family::of(ip) == family {
            out.elements
                .push(((Map::Hairpin, format!("{ip} . {ip}")), String::new()));
        }
    }
    out.elements.sort();
    out.elements.dedup();
    out
}

/// A service chain and its endpoint chains and affinity sets, pushed to `out`; returns the
/// service chain's name.
fn own_chains(
    p: &ServicePort,
    id: &str,
    f: &str,
    mark: Option<String>,
    eps: &[SocketAddr],
    out: &mut Part,
) -> String {
    let mut endpoint_chains = Vec::new();
    let mut rules: Vec<String> = mark.into_iter().collect();
    for e in eps {
        let mut ep_rules = Vec::new();
        let set = p.affinity.map(|timeout| {
            let secs = timeout.as_secs().max(1);
            let set = hashed("aff-", &format!("{id}/{e}/{secs}"));
            out.sets.push((set.clone(), secs));
            ep_rules.push(format!("update @{set} {{ {f} saddr }}"));
            set
        });
        ep_rules.push(format!(
            "meta l4proto {} dnat {f} to {e}",
            proto(p.protocol)
        ));
        let chain = hashed("ep-", &ep_rules.join("\n"));
        if let Some(set) = set {
            rules.push(format!("{f} saddr @{set} goto {chain}"));
        }
        out.chains.push((chain.clone(), Arc::new(ep_rules)));
        endpoint_chains.push(chain);
    }
    if let [only] = endpoint_chains.as_slice() {
        rules.push(format!("goto {only}"));
    } else {
        let choices: Vec<String> = endpoint_chains
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            endpoint_chains.len(),
            choices.join(", ")
        ));
    }
    let name = hashed("svc-", &rules.join("\n"));
    out.chains.push((name.clone(), Arc::new(rules)));
    name
}

/// What the kernel has (or is to have) of the parts that change: elements, and the names of
/// the content-addressed chains and sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub elements: HashMap<Key, String>,
    pub chains: HashMap<String, Arc<Vec<String>>>,
    pub sets: HashMap<String, u64>,
}

/// What changed since the last sync: the keys to compare with the kernel.
#[derive(Debug, Default)]
pub struct Touched {
    pub elements: HashSet<Key>,
    pub chains: HashSet<String>,
    pub sets: HashSet<String>,
}

/// The desired state, with every claim on each element, chain and set, so that two ports that
/// write the same thing (a shared endpoint chain, a pod's hairpin pair) can come and go
/// independently: the first claim wins.
#[derive(Default)]
struct Claims {
    elements: HashMap<Key, Vec<String>>,
    chains: HashMap<String, (Arc<Vec<String>>, usize)>,
    sets: HashMap<String, (u64, usize)>,
    frontends: usize,
}

impl Claims {
    fn add(&mut self, part: &Part, touched: &mut Touched) {
        for (key, value) in &part.elements {
            self.elements
                .entry(key.clone())
                .or_default()
                .push(value.clone());
            touched.elements.insert(key.clone());
        }
        for (name, rules) in &part.chains {
            self.chains
                .entry(name.clone())
                .or_insert((rules.clone(), 0))
                .1 += 1;
            touched.chains.insert(name.clone());
        }
        for (name, timeout) in &part.sets {
            self.sets.entry(name.clone()).or_insert((*timeout, 0)).1 += 1;
            touched.sets.insert(name.clone());
        }
        self.frontends += part.frontends;
    }

    fn remove(&mut self, part: &Part, touched: &mut Touched) {
        for (key, value) in &part.elements {
            if let Some(values) = self.elements.get_mut(key) {
                if let Some(i) = values.iter().position(|v| v == value) {
                    values.remove(i);
                }
                if values.is_empty() {
                    self.elements.remove(key);
                }
            }
            touched.elements.insert(key.clone());
        }
        for (name, _) in &part.chains {
            if let Some(c) = self.chains.get_mut(name) {
                c.1 -= 1;
                if c.1 == 0 {
                    self.chains.remove(name);
                }
            }
            touched.chains.insert(name.clone());
        }
        for (name, _) in &part.sets {
            if let Some(s) = self.sets.get_mut(name) {
                s.1 -= 1;
                if s.1 == 0 {
                    self.sets.remove(name);
                }
            }
            touched.sets.insert(name.clone());
        }
        self.frontends -= part.frontends;
    }
}

type PortKey = (ServicePortName, Protocol);

/// The desired state of one family's table, updated port by port: a sync costs what changed.
pub struct Renderer {
    family: Family,
    options: Options,
    parts: HashMap<PortKey, (Arc<ServicePort>, Part)>,
    claims: Claims,
    /// The ports of the last table, sorted as tables are.
    previous: Vec<Arc<ServicePort>>,
}

impl Renderer {
    pub fn new(family: Family, options: Options) -> Self {
        Renderer {
            family,
            options,
            parts: HashMap::new(),
            claims: Claims::default(),
            previous: Vec::new(),
        }
    }

    /// Takes `table` as the desired state; returns what changed. The old and the new table are
    /// walked side by side (both are sorted by name and protocol): an unchanged port (the
    /// same `Arc`) costs a pointer comparison, and only changed ports are rendered.
    pub fn update(&mut self, table: &ServiceTable) -> Touched {
        use std::cmp::Ordering;
        let mut touched = Touched::default();
        let old = std::mem::take(&mut self.previous);
        let new = &table.ports;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) => match (&o.name, o.protocol).cmp(&(&n.name, n.protocol)) {
                    Ordering::Less => {
                        self.drop_port(o, &mut touched);
                        i += 1;
                    }
                    Ordering::Greater => {
                        self.add_port(n, &mut touched);
                        j += 1;
                    }
                    Ordering::Equal => {
                        self.add_port(n, &mut touched);
                        i += 1;
                        j += 1;
                    }
                },
                (Some(o), None) => {
                    self.drop_port(o, &mut touched);
                    i += 1;
                }
                (None, Some(n)) => {
                    self.add_port(n, &mut touched);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.previous = new.clone();
        touched
    }

    /// Renders `port`, replacing what its namesake contributed.
    fn add_port(&mut self, port: &Arc<ServicePort>, touched: &mut Touched) {
        let key = (port.name.clone(), port.protocol);
        let new = part(port, self.family, &self.options);
        if let Some((_, old)) = self.parts.remove(&key) {
            self.claims.remove(&old, touched);
        }
        self.claims.add(&new, touched);
        self.parts.insert(key, (port.clone(), new));
    }

    /// Takes back what `port` contributed, unless another port of its name has replaced it.
    fn drop_port(&mut self, port: &Arc<ServicePort>, touched: &mut Touched) {
        let key = (port.name.clone(), port.protocol);
        if matches!(self.parts.get(&key), Some((p, _)) if Arc::ptr_eq(p, port)) {
            if let Some((_, old)) = self.parts.remove(&key) {
                self.claims.remove(&old, touched);
            }
        }
    }

    pub fn frontends(&self) -> usize {
        self.claims.frontends
    }

    /// Everything desired, as keys to compare (for a first sync, or after a failure).
    pub fn everything(&self, kernel: &State) -> Touched {
        Touched {
            elements: self
                .claims
                .elements
                .keys()
                .chain(kernel.elements.keys())
                .cloned()
                .collect(),
            chains: self
                .claims
                .chains
                .keys()
                .chain(kernel.chains.keys())
                .cloned()
                .collect(),
            sets: self
                .claims
                .sets
                .keys()
                .chain(kernel.sets.keys())
                .cloned()
                .collect(),
        }
    }

    /// The transaction that brings `kernel` to the desired state for the `touched` keys;
    /// `kernel` becomes what the kernel has after it. Costs what was touched.
    pub fn transaction(&self, kernel: &mut State, touched: &Touched) -> Transaction {
        let mut t = Transaction {
            family: self.family,
            delete: Vec::new(),
            add: Vec::new(),
            new_sets: Vec::new(),
            new_chains: Vec::new(),
            old_chains: Vec::new(),
            old_sets: Vec::new(),
        };
        for key in &touched.elements {
            let want = self.claims.elements.get(key).and_then(|v| v.first());
            let have = kernel.elements.get(key);
            if want == have {
                continue;
            }
            if let Some(v) = kernel.elements.remove(key) {
                t.delete.push((key.clone(), v));
            }
            if let Some(v) = want {
                t.add.push((key.clone(), v.clone()));
                kernel.elements.insert(key.clone(), v.clone());
            }
        }
        for name in &touched.chains {
            match (
                self.claims.chains.get(name),
                kernel.chains.contains_key(name),
            ) {
                (Some((rules, _)), false) => {
                    t.new_chains.push((name.clone(), rules.clone()));
                    kernel.chains.insert(name.clone(), rules.clone());
                }
                (None, true) => {
                    t.old_chains.push(name.clone());
                    kernel.chains.remove(name);
                }
                _ => {}
            }
        }
        for name in &touched.sets {
            match (self.claims.sets.get(name), kernel.sets.contains_key(name)) {
                (Some((timeout, _)), false) => {
                    t.new_sets.push((name.clone(), *timeout));
                    kernel.sets.insert(name.clone(), *timeout);
                }
                (None, true) => {
                    t.old_sets.push(name.clone());
                    kernel.sets.remove(name);
                }
                _ => {}
            }
        }
        t.delete.sort();
        t.add.sort();
        t.new_sets.sort();
        // Endpoint chains before the service chains that jump to them, and the other way
        // round when they go.
        t.new_chains
            .sort_by(|a, b| (!a.0.starts_with("ep-"), &a.0).cmp(&(!b.0.starts_with("ep-"), &b.0)));
        t.old_chains
            .sort_by(|a, b| (a.starts_with("ep-"), a).cmp(&(b.starts_with("ep-"), b)));
        t.old_sets.sort();
        t
    }
}

/// One transaction: element writes, and the chains and sets that come and go with them.
#[derive(Debug)]
pub struct Transaction {
    pub family: Family,
    /// Elements deleted, with the value they had (first in the transaction).
    pub delete: Vec<(Key, String)>,
    pub add: Vec<(Key, String)>,
    pub new_sets: Vec<(String, u64)>,
    pub new_chains: Vec<(String, Arc<Vec<String>>)>,
    pub old_chains: Vec<String>,
    pub old_sets: Vec<String>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.changes() == 0 && self.new_sets.is_empty() && self.old_sets.is_empty()
    }

    /// Elements written or deleted, and chains added or deleted.
    pub fn changes(&self) -> usize {
        self.delete.len() + self.add.len() + self.new_chains.len() + self.old_chains.len()
    }

    /// Only element writes (what goes straight to the kernel over netlink).
    pub fn elements_only(&self) -> bool {
        self.new_sets.is_empty()
            && self.new_chains.is_empty()
            && self.old_chains.is_empty()
            && self.old_sets.is_empty()
    }

    /// The transaction as `nft -f` text: deletions of elements, new sets and chains, new
    /// elements, then the chains and sets nothing refers to any more.
    pub fn text(&self) -> String {
        self.text_of(true, true)
    }

    /// The text of the chains and sets (`structure`), of the elements, or of both.
    pub fn text_of(&self, structure: bool, elements: bool) -> String {
        let f = family_name(self.family);
        let mut t = String::new();
        if elements {
            write_elements(&mut t, f, "delete", &self.delete, false);
        }
        if !structure {
            write_elements(&mut t, f, "add", &self.add, true);
            return t;
        }
        for (name, timeout) in &self.new_sets {
            let _ = writeln!(
                t,
                "add set {f} {TABLE} {name} {{ type {}; flags dynamic,timeout; timeout {timeout}s; }}",
                addr_type(self.family)
            );
        }
        for (name, rules) in &self.new_chains {
            let _ = writeln!(t, "add chain {f} {TABLE} {name}");
            for r in rules.iter() {
                let _ = writeln!(t, "add rule {f} {TABLE} {name} {r}");
            }
        }
        if elements {
            write_elements(&mut t, f, "add", &self.add, true);
        }
        for name in &self.old_chains {
            let _ = writeln!(t, "delete chain {f} {TABLE} {name}");
        }
        for name in &self.old_sets {
            let _ = writeln!(t, "delete set {f} {TABLE} {name}");
        }
        t
    }
}

/// `add element ...` (or delete) lines, one per map, in the order of `list` (sorted).
fn write_elements(t: &mut String, f: &str, verb: &str, list: &[(Key, String)], values: bool) {
    for map in Map::ALL {
        let items: Vec<String> = list
            .iter()
            .filter(|((m, _), _)| *m == map)
            .map(|((_, k), v)| {
                if values && !v.is_empty() {
                    format!("{k} : {v}")
                } else {
                    k.clone()
                }
            })
            .collect();
        if !items.is_empty() {
            let _ = writeln!(
                t,
                "{verb} element {f} {TABLE} {} {{ {} }}",
                map.name(),
                items.join(", ")
            );
        }
    }
}

/// The frontend a dispatch-map key names (for conntrack cleanup): address (none for a
/// NodePort), protocol and port.
pub fn frontend_of(key: &str) -> Option<(Option<IpAddr>, &str, u16)> {
    let parts: Vec<&str> = key.split(" . ").collect();
    match parts.as_slice() {
        [ip, pr, port] => Some((Some(ip.parse().ok()?), pr, port.parse().ok()?)),
        [pr, port] => Some((None, pr, port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests;
