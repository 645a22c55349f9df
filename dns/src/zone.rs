//! The cluster zone (Kubernetes DNS-Based Service Discovery, schema 1.1.0), built once per
//! snapshot from plain service data and then only read: a lookup is one hash-map probe.
//!
//! - `dns-version.<zone>` TXT "1.1.0";
//! - ClusterIP services: `<svc>.<ns>.svc.<zone>` A/AAAA and SRV for every port, SRV at
//!   `_<port>._<proto>.<svc>...` for every named port, PTR for the ClusterIPs;
//! - headless services: A/AAAA per ready endpoint (the name does not exist with none),
//!   `<hostname>.<svc>.<ns>.svc.<zone>` per endpoint (a dashed address when it has no hostname),
//!   SRV per ready endpoint and port (at the service's name, and at `_<port>._<proto>` for named
//!   ports), PTR per endpoint address; SRV weights as CoreDNS gives them (100 shared equally);
//! - ExternalName services: a CNAME (the server follows it to the target's records).
//!
//! Every ancestor of a name up to the zone exists (an empty non-terminal answers NODATA, not
//! NXDOMAIN); negative answers carry the zone's SOA.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

/// A port as SRV records publish it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    /// Ready, or published anyway (`publishNotReadyAddresses`).
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
}

/// What the zone needs of one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: Kind,
    /// Service ports (ClusterIP) or endpoint ports (headless).
    pub ports: Vec<Port>,
    /// Only read for headless services.
    pub endpoints: Vec<Endpoint>,
}

/// What a lookup found.
#[derive(Debug, PartialEq)]
pub enum Answer<'a> {
    /// Records of the asked type (or the name's CNAME), and what goes in the additional section.
    Records {
        answers: &'a [Record],
        additionals: Vec<&'a Record>,
    },
    /// The name exists without data of that type.
    NoData,
    NxDomain,
    /// Not a name this zone answers for: forward it.
    NotOurs,
    /// A pod record (`<a-b-c-d>.<ns>.pod.<zone>`), made for the question.
    Pod(Box<Record>),
}

/// A name as a map key: lowercase wire format (length-prefixed labels, then 0), so that a query
/// can be looked up straight from its bytes.
pub type WireKey = Box<[u8]>;

/// Lowercase wire format of `name`.
pub fn wire_key(name: &Name) -> WireKey {
    let mut k = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        k.push(label.len() as u8);
        k.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    k.push(0);
    k.into_boxed_slice()
}

pub struct ClusterZone {
    /// The zone's name in wire format (lowercase).
    origin: WireKey,
    origin_name: Name,
    ttl: u32,
    /// Every name of the zone, and the reverse names we publish, with their records grouped by
    /// type (no records: the name exists with no data).
    names: Names,
    /// What each Service put in `names`, to take it back when the Service changes.
    fragments: Fragments,
    soa: Record,
    /// Answer `<a-b-c-d>.<ns>.pod.<zone>` with the address in its first label (CoreDNS's
    /// "pods insecure"): off unless asked for.
    pods: bool,
}

fn reverse_name(ip: IpAddr) -> Option<Name> {
    let s = match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v) => {
            let hex: String = v.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
            format!("{}.ip6.arpa.", nibbles.join("."))
        }
    };
    Name::from_ascii(s).ok()
}

/// `10-0-0-1` or `fd00--1`: the name of an endpoint that has no hostname.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string().replace('.', "-"),
        IpAddr::V6(v) => v.to_string().replace(':', "-"),
    }
}

fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v) => RData::A(A(v)),
        IpAddr::V6(v) => RData::AAAA(AAAA(v)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// What one Service contributes to the zone: its records (with their owners' keys), and the
/// names it makes exist (owners and their ancestors within the zone).
#[derive(Debug, Default)]
struct Fragment {
    records: Vec<(WireKey, Record)>,
    names: Vec<WireKey>,
}

/// One name: its records by type, and how many fragments make it exist.
#[derive(Clone, Debug, Default)]
struct Entry {
    sets: HashMap<RecordType, Vec<Record>>,
    refs: usize,
}

struct Builder<'a> {
    origin: &'a Name,
    ttl: u32,
    frag: Fragment,
}

impl Builder<'_> {
    fn mark(&mut self, key: WireKey) {
        if !self.frag.names.contains(&key) {
            self.frag.names.push(key);
        }
    }

    fn add(&mut self, record: Record) {
        let key = wire_key(&record.name);
        if !self.frag.records.iter().any(|(_, r)| *r == record) {
            self.mark(key.clone());
            self.frag.records.push((key, record));
        }
    }

    /// Marks `name` and its ancestors down to the origin as existing.
    fn exists(&mut self, name: &Name) {
        let mut n = name.clone();
        while self.origin.zone_of(&n) {
            self.mark(wire_key(&n));
            if n.num_labels() <= self.origin.num_labels() {
                break;
            }
            n = n.base_name();
        }
    }

    /// SRV records (owner, port, target) weighed as CoreDNS weighs them: the records of one
    /// owner share a weight of 100 equally, at least 1 each, counted before identical records
    /// merge. The service's own name has one per port (of every endpoint, when headless), the
    /// `_<port>._<protocol>` names one per endpoint of that port.
    fn srv_sets(&mut self, srvs: &[(Name, u16, Name)]) {
        let mut count: HashMap<&Name, usize> = HashMap::new();
        for (owner, _, _) in srvs {
            *count.entry(owner).or_default() += 1;
        }
        for (owner, port, target) in srvs {
            let weight = (100 / count[owner]).max(1) as u16;
            self.add(Record::from_rdata(
                owner.clone(),
                self.ttl,
                RData::SRV(SRV::new(0, weight, *port, target.clone())),
            ));
            self.exists(owner);
        }
    }

    fn child(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(self.origin)
            .ok()
    }

    fn service(&mut self, svc: &Service) {
        let Some(base) = self.child(&[&svc.name, &svc.namespace, "svc"]) else {
            return;
        };
        let ttl = self.ttl;
        // `_<port>._<protocol>.<svc>`, for named ports.
        let srv_name = |p: &Port| {
            if p.name.is_empty() {
                return None;
            }
            Name::from_labels([
                format!("_{}", p.name).as_bytes(),
                format!("_{}", p.protocol).as_bytes(),
            ])
            .ok()?
            .append_domain(&base)
            .ok()
        };
        match &svc.kind {
            Kind::ExternalName(target) => {
                let Ok(target) = Name::from_ascii(if target.ends_with('.') {
                    target.clone()
                } else {
                    format!("{target}.")
                }) else {
                    return;
                };
                self.add(Record::from_rdata(
                    base.clone(),
                    ttl,
                    RData::CNAME(CNAME(target)),
                ));
                self.exists(&base);
            }
            Kind::ClusterIp(ips) => {
                for ip in ips {
                    self.add(address(&base, ttl, *ip));
                    if let Some(rev) = reverse_name(*ip) {
                        self.add(Record::from_rdata(rev, ttl, RData::PTR(PTR(base.clone()))));
                    }
                }
                let mut srvs = Vec::new();
                for p in &svc.ports {
                    srvs.push((base.clone(), p.port, base.clone()));
                    if let Some(n) = srv_name(p) {
                        srvs.push((n, p.port, base.clone()));
                    }
                }
                self.srv_sets(&srvs);
                self.exists(&base);
            }
            Kind::Headless => {
                let ready: Vec<&Endpoint> = svc.endpoints.iter().filter(|e| e.ready).collect();
                let mut srvs = Vec::new();
                for ep in &ready {
                    for ip in &ep.addresses {
                        let host = ep.hostname.clone().unwrap_or_else(|| dashed(*ip));
                        let Some(host_name) = Name::from_labels([host.as_bytes()])
                            .ok()
                            .and_then(|h| h.append_domain(&base).ok())
                        else {
                            continue;
                        };
                        self.add(address(&base, ttl, *ip));
                        self.add(address(&host_name, ttl, *ip));
                        if let Some(rev) = reverse_name(*ip) {
                            self.add(Record::from_rdata(
                                rev,
                                ttl,
                                RData::PTR(PTR(host_name.clone())),
                            ));
                        }
                        for p in &svc.ports {
                            srvs.push((base.clone(), p.port, host_name.clone()));
                            if let Some(n) = srv_name(p) {
                                srvs.push((n, p.port, host_name.clone()));
                            }
                        }
                        self.exists(&host_name);
                    }
                }
                self.srv_sets(&srvs);
                // With no ready endpoint the name does not exist; the namespace still does.
                if ready.is_empty() {
                    if let Some(ns) = self.child(&[&svc.namespace, "svc"]) {
                        self.exists(&ns);
                    }
                }
            }
        }
    }
}

/// A persistent map: a new zone shares everything that did not change with the one before.
type Names = imbl::HashMap<WireKey, Arc<Entry>>;
type Fragments = imbl::HashMap<(String, String), Arc<Fragment>>;

/// Adds (or takes back) a fragment's names and records.
fn apply(names: &mut Names, frag: &Fragment, add: bool) {
    let mut touched: HashMap<&WireKey, Entry> = HashMap::new();
    for key in &frag.names {
        let e = touched
            .entry(key)
            .or_insert_with(|| names.get(key).map(|e| (**e).clone()).unwrap_or_default());
        e.refs = if add {
            e.refs + 1
        } else {
            e.refs.saturating_sub(1)
        };
    }
    for (key, record) in &frag.records {
        let e = touched
            .entry(key)
            .or_insert_with(|| names.get(key).map(|e| (**e).clone()).unwrap_or_default());
        let set = e.sets.entry(record.record_type()).or_default();
        if add {
            set.push(record.clone());
        } else if let Some(i) = set.iter().position(|r| r == record) {
            set.remove(i);
        }
        if set.is_empty() {
            e.sets.remove(&record.record_type());
        }
    }
    for (key, e) in touched {
        if e.refs == 0 && e.sets.is_empty() {
            names.remove(key);
        } else {
            names.insert(key.clone(), Arc::new(e));
        }
    }
}

/// The fragment key of the zone's own records (apex, SOA, version).
fn apex_key() -> (String, String) {
    (String::new(), String::new())
}

impl ClusterZone {
    /// An empty zone `domain` (e.g. `cluster.local`) whose records live `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Option<ClusterZone> {
        let origin = Name::from_ascii(format!("{}.", domain.trim_end_matches('.'))).ok()?;
        let mut b = Builder {
            origin: &origin,
            ttl,
            frag: Fragment::default(),
        };
        b.exists(&origin);
        let version = Name::from_ascii("dns-version")
            .ok()?
            .append_domain(&origin)
            .ok()?;
        b.add(Record::from_rdata(
            version,
            ttl,
            RData::TXT(TXT::new(vec!["1.1.0".into()])),
        ));
        let mname = Name::from_ascii("ns.dns")
            .ok()?
            .append_domain(&origin)
            .ok()?;
        let rname = Name::from_ascii("hostmaster")
            .ok()?
            .append_domain(&origin)
            .ok()?;
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, ttl)),
        );
        b.add(soa.clone());
        let mut names = Names::new();
        apply(&mut names, &b.frag, true);
        let mut fragments = Fragments::new();
        fragments.insert(apex_key(), Arc::new(b.frag));
        Some(ClusterZone {
            pods: false,
            origin: wire_key(&origin),
            origin_name: origin,
            ttl,
            names,
            fragments,
            soa,
        })
    }

    /// Turns pod records on or off.
    pub fn with_pod_records(mut self, on: bool) -> ClusterZone {
        self.pods = on;
        self
    }

    /// `<a-b-c-d>.<ns>.pod.<zone>` (or a dashed IPv6 address): the address, for A or AAAA;
    /// `<ns>.pod.<zone>` and `pod.<zone>` exist without data. None for any other name.
    fn pod_answer(&self, key: &[u8], qtype: RecordType) -> Option<Answer<'_>> {
        let mut labels: Vec<&[u8]> = Vec::new();
        let mut i = 0;
        while i < key.len() - self.origin.len() {
            let len = key[i] as usize;
            labels.push(key.get(i + 1..i + 1 + len)?);
            i += 1 + len;
        }
        match labels.as_slice() {
            [pod] | [_, pod] if *pod == b"pod" => Some(Answer::NoData),
            [addr, ns, pod] if *pod == b"pod" && !ns.is_empty() => {
                let text = std::str::from_utf8(addr).ok()?;
                let ip: IpAddr = text
                    .replace('-', ".")
                    .parse()
                    .or_else(|_| text.replace('-', ":").parse())
                    .ok()?;
                let wanted = if ip.is_ipv4() {
                    RecordType::A
                } else {
                    RecordType::AAAA
                };
                if qtype != wanted {
                    return Some(Answer::NoData);
                }
                let name = Name::from_labels(labels.iter().copied())
                    .ok()?
                    .append_domain(&self.origin_name)
                    .ok()?;
                Some(Answer::Pod(Box::new(address(&name, self.ttl, ip))))
            }
            _ => None,
        }
    }

    /// Builds the zone with `services` in it.
    pub fn build(domain: &str, ttl: u32, services: &[Service]) -> Option<ClusterZone> {
        Some(Self::new(domain, ttl)?.with_changes(&[], services))
    }

    /// A new zone: this one without the `removed` services (namespace, name), and with `upserted`
    /// ones added or replaced. Costs in proportion to what changed.
    pub fn with_changes(&self, removed: &[(String, String)], upserted: &[Service]) -> ClusterZone {
        let mut names = self.names.clone();
        let mut fragments = self.fragments.clone();
        let keys = removed.iter().cloned().chain(
            upserted
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone())),
        );
        for key in keys {
            if let Some(old) = fragments.remove(&key) {
                apply(&mut names, &old, false);
            }
        }
        for svc in upserted {
            let mut b = Builder {
                origin: &self.origin_name,
                ttl: self.ttl,
                frag: Fragment::default(),
            };
            b.service(svc);
            apply(&mut names, &b.frag, true);
            fragments.insert((svc.namespace.clone(), svc.name.clone()), Arc::new(b.frag));
        }
        ClusterZone {
            origin: self.origin.clone(),
            origin_name: self.origin_name.clone(),
            ttl: self.ttl,
            names,
            fragments,
            soa: self.soa.clone(),
            pods: self.pods,
        }
    }

    /// The SOA negative answers carry.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Answer<'_> {
        self.lookup_wire(&wire_key(name), qtype)
    }

    /// Whether a lowercase wire-format name is in the zone: it ends with the origin's labels.
    fn in_zone(&self, key: &[u8]) -> bool {
        if !key.ends_with(&self.origin) {
            return false;
        }
        // The origin must start at a label boundary of `key`.
        let start = key.len() - self.origin.len();
        let mut i = 0;
        while i < start {
            i += 1 + key[i] as usize;
        }
        i == start
    }

    /// Looks up a name given in lowercase wire format.
    pub fn lookup_wire(&self, key: &[u8], qtype: RecordType) -> Answer<'_> {
        let ours = self.in_zone(key);
        let Some(entry) = self.names.get(key) else {
            if ours && self.pods {
                if let Some(a) = self.pod_answer(key, qtype) {
                    return a;
                }
            }
            return if ours {
                Answer::NxDomain
            } else {
                Answer::NotOurs
            };
        };
        let sets = &entry.sets;
        // Outside the zone only the reverse names we publish are ours, and only for PTR.
        if !ours && qtype != RecordType::PTR {
            return Answer::NotOurs;
        }
        let found = sets.get(&qtype).or_else(|| {
            if qtype == RecordType::CNAME {
                None
            } else {
                sets.get(&RecordType::CNAME)
            }
        });
        match found {
            Some(answers) if !answers.is_empty() => {
                let mut additionals = Vec::new();
                let mut seen: Vec<&Name> = Vec::new();
                for r in answers {
                    if let RData::SRV(srv) = &r.data {
                        if seen.contains(&&srv.target) {
                            continue;
                        }
                        seen.push(&srv.target);
                        if let Some(target) = self.names.get(&wire_key(&srv.target)) {
                            for t in [RecordType::A, RecordType::AAAA] {
                                additionals.extend(target.sets.get(&t).into_iter().flatten());
                            }
                        }
                    }
                }
                Answer::Records {
                    answers,
                    additionals,
                }
            }
            _ => Answer::NoData,
        }
    }
}

#[cfg(test)]
mod tests;
