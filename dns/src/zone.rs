//! The cluster zone (Kubernetes DNS-Based Service Discovery, schema 1.1.0), built once per
//! snapshot from plain service data and then only read: a lookup is one hash-map probe.
//!
//! - `dns-version.<zone>` TXT "1.1.0";
//! - ClusterIP services: `<svc>.<ns>.svc.<zone>` A/AAAA, SRV for every named port, PTR for the
//!   ClusterIPs;
//! - headless services: A/AAAA per ready endpoint (the name does not exist with none),
//!   `<hostname>.<svc>.<ns>.svc.<zone>` per endpoint (a dashed address when it has no hostname),
//!   SRV per ready endpoint and named port, PTR per endpoint address;
//! - ExternalName services: a CNAME.
//!
//! Every ancestor of a name up to the zone exists (an empty non-terminal answers NODATA, not
//! NXDOMAIN); negative answers carry the zone's SOA.

use std::collections::HashMap;
use std::net::IpAddr;

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
    /// Every name of the zone, and the reverse names we publish, with their records grouped by
    /// type (an empty map: the name exists with no data).
    names: HashMap<WireKey, HashMap<RecordType, Vec<Record>>>,
    soa: Record,
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

struct Builder {
    origin: Name,
    ttl: u32,
    names: HashMap<WireKey, HashMap<RecordType, Vec<Record>>>,
}

impl Builder {
    fn add(&mut self, record: Record) {
        let key = wire_key(&record.name);
        let set = self
            .names
            .entry(key)
            .or_default()
            .entry(record.record_type())
            .or_default();
        if !set.contains(&record) {
            set.push(record);
        }
    }

    /// Marks `name` and its ancestors down to the origin as existing.
    fn exists(&mut self, name: &Name) {
        let mut n = name.clone();
        while self.origin.zone_of(&n) {
            self.names.entry(wire_key(&n)).or_default();
            if n.num_labels() <= self.origin.num_labels() {
                break;
            }
            n = n.base_name();
        }
    }

    fn child(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(&self.origin)
            .ok()
    }

    fn service(&mut self, svc: &Service) {
        let Some(base) = self.child(&[&svc.name, &svc.namespace, "svc"]) else {
            return;
        };
        let ttl = self.ttl;
        let srv_name = |p: &Port| {
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
                for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                    let Some(n) = srv_name(p) else { continue };
                    self.add(Record::from_rdata(
                        n.clone(),
                        ttl,
                        RData::SRV(SRV::new(0, 100, p.port, base.clone())),
                    ));
                    self.exists(&n);
                }
                self.exists(&base);
            }
            Kind::Headless => {
                let ready: Vec<&Endpoint> = svc.endpoints.iter().filter(|e| e.ready).collect();
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
                        for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                            let Some(n) = srv_name(p) else { continue };
                            self.add(Record::from_rdata(
                                n.clone(),
                                ttl,
                                RData::SRV(SRV::new(0, 100, p.port, host_name.clone())),
                            ));
                            self.exists(&n);
                        }
                        self.exists(&host_name);
                    }
                }
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

impl ClusterZone {
    /// Builds the zone `domain` (e.g. `cluster.local`) with records of `ttl` seconds.
    pub fn build(domain: &str, ttl: u32, services: &[Service]) -> Option<ClusterZone> {
        let origin = Name::from_ascii(format!("{}.", domain.trim_end_matches('.'))).ok()?;
        let mut b = Builder {
            origin: origin.clone(),
            ttl,
            names: HashMap::new(),
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
        for svc in services {
            b.service(svc);
        }
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
        Some(ClusterZone {
            origin: wire_key(&origin),
            names: b.names,
            soa,
        })
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
        let Some(sets) = self.names.get(key) else {
            return if ours {
                Answer::NxDomain
            } else {
                Answer::NotOurs
            };
        };
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
                for r in answers {
                    if let RData::SRV(srv) = &r.data {
                        if let Some(target) = self.names.get(&wire_key(&srv.target)) {
                            for t in [RecordType::A, RecordType::AAAA] {
                                additionals.extend(target.get(&t).into_iter().flatten());
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
mod tests {
    use super::*;

    fn zone() -> ClusterZone {
        let services = vec![
            Service {
                namespace: "default".into(),
                name: "web".into(),
                kind: Kind::ClusterIp(vec![
                    "10.96.0.10".parse().unwrap(),
                    "fd00::10".parse().unwrap(),
                ]),
                ports: vec![
                    Port {
                        name: "http".into(),
                        protocol: "tcp".into(),
                        port: 80,
                    },
                    Port {
                        name: String::new(),
                        protocol: "tcp".into(),
                        port: 81,
                    },
                ],
                endpoints: vec![],
            },
            Service {
                namespace: "db".into(),
                name: "pg".into(),
                kind: Kind::Headless,
                ports: vec![Port {
                    name: "sql".into(),
                    protocol: "tcp".into(),
                    port: 5432,
                }],
                endpoints: vec![
                    Endpoint {
                        addresses: vec!["10.244.0.5".parse().unwrap()],
                        hostname: Some("pg-0".into()),
                        ready: true,
                    },
                    Endpoint {
                        addresses: vec!["10.244.0.6".parse().unwrap()],
                        hostname: None,
                        ready: true,
                    },
                    Endpoint {
                        addresses: vec!["10.244.0.7".parse().unwrap()],
                        hostname: Some("pg-2".into()),
                        ready: false,
                    },
                ],
            },
            Service {
                namespace: "db".into(),
                name: "empty".into(),
                kind: Kind::Headless,
                ports: vec![],
                endpoints: vec![],
            },
            Service {
                namespace: "default".into(),
                name: "ext".into(),
                kind: Kind::ExternalName("db.example.com".into()),
                ports: vec![],
                endpoints: vec![],
            },
        ];
        ClusterZone::build("cluster.local", 5, &services).unwrap()
    }

    fn q(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn data(a: Answer<'_>) -> Vec<String> {
        match a {
            Answer::Records { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn cluster_ip_records() {
        let z = zone();
        assert_eq!(
            data(z.lookup(&q("web.default.svc.cluster.local."), RecordType::A)),
            ["10.96.0.10"]
        );
        assert_eq!(
            data(z.lookup(&q("WEB.Default.svc.cluster.local."), RecordType::AAAA)),
            ["fd00::10"]
        );
        assert_eq!(
            data(z.lookup(
                &q("_http._tcp.web.default.svc.cluster.local."),
                RecordType::SRV
            )),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        match z.lookup(
            &q("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        ) {
            Answer::Records { additionals, .. } => assert_eq!(additionals.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            data(z.lookup(&q("10.0.96.10.in-addr.arpa."), RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            data(z.lookup(&q("dns-version.cluster.local."), RecordType::TXT)),
            ["1.1.0"]
        );
        assert_eq!(
            data(z.lookup(&q("ext.default.svc.cluster.local."), RecordType::A)),
            ["db.example.com."]
        );
    }

    #[test]
    fn headless_records() {
        let z = zone();
        let mut a = data(z.lookup(&q("pg.db.svc.cluster.local."), RecordType::A));
        a.sort();
        assert_eq!(
            a,
            ["10.244.0.5", "10.244.0.6"],
            "not-ready endpoints are not published"
        );
        assert_eq!(
            data(z.lookup(&q("pg-0.pg.db.svc.cluster.local."), RecordType::A)),
            ["10.244.0.5"]
        );
        assert_eq!(
            data(z.lookup(&q("10-244-0-6.pg.db.svc.cluster.local."), RecordType::A)),
            ["10.244.0.6"]
        );
        let mut srv = data(z.lookup(&q("_sql._tcp.pg.db.svc.cluster.local."), RecordType::SRV));
        srv.sort();
        assert_eq!(
            srv,
            [
                "0 100 5432 10-244-0-6.pg.db.svc.cluster.local.",
                "0 100 5432 pg-0.pg.db.svc.cluster.local."
            ]
        );
        assert_eq!(
            data(z.lookup(&q("5.0.244.10.in-addr.arpa."), RecordType::PTR)),
            ["pg-0.pg.db.svc.cluster.local."]
        );
        assert_eq!(
            z.lookup(&q("empty.db.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.lookup(&q("pg-2.pg.db.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn nodata_nxdomain_and_not_ours() {
        let z = zone();
        assert_eq!(
            z.lookup(&q("web.default.svc.cluster.local."), RecordType::MX),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&q("default.svc.cluster.local."), RecordType::A),
            Answer::NoData,
            "empty non-terminal"
        );
        assert_eq!(
            z.lookup(&q("svc.cluster.local."), RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&q("nope.default.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(z.lookup(&q("example.com."), RecordType::A), Answer::NotOurs);
        assert_eq!(
            z.lookup(&q("1.2.3.4.in-addr.arpa."), RecordType::PTR),
            Answer::NotOurs
        );
        assert!(matches!(z.soa().data, RData::SOA(_)));
    }
}
