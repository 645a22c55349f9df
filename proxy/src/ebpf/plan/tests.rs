use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::*;
use crate::table::{Endpoint, ServicePortName};
use std::net::IpAddr;
use switchyard_ebpf::host_port;

fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(b.addr.into(), host_port(b.port))
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    PutBackend(u32, Backend),
    /// A backend slot (slot > 0) or a frontend (slot 0).
    Put(ServiceKey, ServiceValue),
    Delete(ServiceKey),
    DeleteBackend(u32),
}

/// A plan's writes one by one, in the order they reach the kernel.
fn ops(plan: &Plan) -> Vec<Op> {
    let puts = |p: &Puts<ServiceKey, ServiceValue>| -> Vec<Op> {
        p.keys
            .iter()
            .zip(&p.values)
            .map(|(k, v)| Op::Put(*k, *v))
            .collect()
    };
    let mut out: Vec<Op> = plan
        .backends_put
        .keys
        .iter()
        .zip(&plan.backends_put.values)
        .map(|(id, b)| Op::PutBackend(*id, *b))
        .collect();
    out.extend(puts(&plan.slots_put));
    out.extend(puts(&plan.frontends_put));
    out.extend(plan.frontends_del.iter().map(|k| Op::Delete(*k)));
    out.extend(plan.slots_del.iter().map(|k| Op::Delete(*k)));
    out.extend(plan.backends_del.iter().map(|id| Op::DeleteBackend(*id)));
    assert_eq!(out.len(), plan.len());
    out
}

/// The two maps as the kernel would hold them after a sequence of writes.
#[derive(Default)]
struct Maps {
    services: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<u32, Backend>,
}

impl Maps {
    /// Applies `ops` one by one, checking after each that a connect could not fail: every
    /// frontend's slots 1..=count exist and name a backend that exists.
    fn apply(&mut self, plan: &Plan) {
        for op in &ops(plan) {
            match op {
                Op::PutBackend(id, b) => {
                    self.backends.insert(*id, *b);
                }
                Op::Put(k, v) => {
                    self.services.insert(*k, *v);
                }
                Op::Delete(k) => {
                    assert!(self.services.remove(k).is_some(), "deleting absent {k:?}");
                }
                Op::DeleteBackend(id) => {
                    assert!(self.backends.remove(id).is_some(), "deleting absent {id}");
                }
            }
            self.check(op);
        }
    }

    fn check(&self, after: &Op) {
        for (k, v) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            for slot in 1..=v.count {
                let s = self
                    .services
                    .get(&slot_key(k, slot as usize))
                    .unwrap_or_else(|| panic!("slot {slot} of {k:?} missing after {after:?}"));
                assert!(
                    self.backends.contains_key(&s.backend_id),
                    "backend {} missing after {after:?}",
                    s.backend_id
                );
            }
        }
    }

    /// Frontend address:port -> the set of backend addresses a connect can reach.
    fn reachable(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            let mut b: Vec<String> = (1..=v.count)
                .map(|s| {
                    let id = self.services[&slot_key(k, s as usize)].backend_id;
                    backend_addr(&self.backends[&id]).to_string()
                })
                .collect();
            b.sort();
            let vip = SocketAddr::new(k.addr.into(), host_port(k.port));
            out.insert(format!("{vip}/{}", k.proto), b);
        }
        out
    }
}

fn ep(addr: &str) -> Endpoint {
    Endpoint {
        addr: addr.parse().unwrap(),
        ready: true,
        serving: true,
        terminating: false,
        local: false,
    }
}

fn port(name: &str, protocol: Protocol, vip: &str, eps: &[&str]) -> Arc<ServicePort> {
    Arc::new(ServicePort {
        name: ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: String::new(),
        },
        protocol,
        port: 80,
        cluster_ips: vec![vip.parse().unwrap()],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity: None,
        internal_local: false,
        external_local: false,
        endpoints: eps.iter().map(|e| ep(e)).collect(),
    })
}

fn table(ports: &[Arc<ServicePort>]) -> ServiceTable {
    ServiceTable {
        ports: ports.to_vec(),
    }
}

#[test]
fn assign_keeps_slots_and_fills_holes() {
    // 2 leaves, 9 arrives: 9 takes 2's slot.
    assert_eq!(assign(&[Some(1), Some(2), Some(3)], &[1, 3, 9]), [1, 9, 3]);
    // 1 leaves: the last backend moves into its slot.
    assert_eq!(assign(&[Some(1), Some(2), Some(3)], &[2, 3]), [3, 2]);
    // The last leaves: nothing moves.
    assert_eq!(assign(&[Some(1), Some(2), Some(3)], &[1, 2]), [1, 2]);
    // Growth appends.
    assert_eq!(assign(&[Some(1)], &[1, 2, 3]), [1, 2, 3]);
    // Holes from an adoption are filled; duplicates are dropped.
    assert_eq!(assign(&[None, Some(2), Some(2)], &[2, 5]), [5, 2]);
    assert_eq!(assign(&[Some(1), Some(2)], &[]), Vec::<u32>::new());
}

#[test]
fn a_first_plan_writes_backends_slots_then_frontends() {
    let t = table(&[
        port(
            "a",
            Protocol::Tcp,
            "10.96.0.1",
            &["10.0.0.1:80", "10.0.0.2:80"],
        ),
        port("b", Protocol::Udp, "10.96.0.2", &["10.0.0.1:80"]),
        port("c", Protocol::Sctp, "10.96.0.3", &["10.0.0.3:80"]),
        port("d", Protocol::Tcp, "10.96.0.4", &[]),
    ]);
    let mut s = State::default();
    let plan = s.plan(&t);
    let mut maps = Maps::default();
    maps.apply(&plan);
    // SCTP stays with iptables; a port without endpoints is a frontend with count 0.
    assert_eq!(plan.frontends, 3);
    assert_eq!(
        maps.backends.len(),
        2,
        "10.0.0.1:80 is one backend for a and b"
    );
    let r = maps.reachable();
    assert_eq!(r["10.96.0.1:80/6"], ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(r["10.96.0.2:80/17"], ["10.0.0.1:80"]);
    assert!(r["10.96.0.4:80/6"].is_empty());
    // Backends, then slots, then frontends (the write order is the Plan's field order).
    assert_eq!(plan.backends_put.keys.len(), 2);
    assert_eq!(plan.slots_put.keys.len(), 3);
    assert!(plan.slots_put.keys.iter().all(|k| k.slot > 0));
    assert_eq!(plan.frontends_put.keys.len(), 3);
    assert!(plan.frontends_put.keys.iter().all(|k| k.slot == 0));
    // Planning the same table again writes nothing.
    assert_eq!(s.plan(&t).len(), 0);
}

#[test]
fn one_endpoint_change_costs_a_few_writes() {
    let mut ports: Vec<Arc<ServicePort>> = (0..1000)
        .map(|i| {
            let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            let eps: Vec<String> = (0..3)
                .map(|j| format!("10.{}.{}.{}:80", 1 + i / 250, i % 250, j))
                .collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            port(&format!("s{i}"), Protocol::Tcp, &vip, &eps)
        })
        .collect();
    let mut s = State::default();
    let mut maps = Maps::default();
    maps.apply(&s.plan(&table(&ports)));
    // s7 loses its first endpoint: its last moves into slot 1, the count drops, slot 3 and the
    // backend go.
    let mut p = (*ports[7]).clone();
    p.endpoints.remove(0);
    ports[7] = Arc::new(p);
    let plan = s.plan(&table(&ports));
    maps.apply(&plan);
    assert_eq!(ops(&plan).len(), 4, "{:?}", ops(&plan));
    assert!(matches!(ops(&plan)[3], Op::DeleteBackend(_)));
    assert_eq!(
        maps.reachable()["10.96.0.8:80/6"],
        ["10.1.7.1:80", "10.1.7.2:80"]
    );
}

#[test]
fn churn_never_leaves_a_connect_without_a_backend() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut ports: Vec<Arc<ServicePort>> = Vec::new();
    let mut s = State::default();
    let mut maps = Maps::default();
    for round in 0..300 {
        match rng.random_range(0..4) {
            0 if ports.len() < 20 => {
                let i = round;
                let vip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
                ports.push(port(&format!("p{i}"), Protocol::Udp, &vip, &[]));
            }
            1 if !ports.is_empty() => {
                let i = rng.random_range(0..ports.len());
                ports.remove(i);
            }
            _ if !ports.is_empty() => {
                let i = rng.random_range(0..ports.len());
                let mut p = (*ports[i]).clone();
                let n = rng.random_range(0..8);
                // Backends drawn from a small pool, so ports share them.
                p.endpoints = (0..n)
                    .map(|_| ep(&format!("10.0.0.{}:80", rng.random_range(1..12))))
                    .collect();
                p.affinity = rng
                    .random_bool(0.3)
                    .then(|| Duration::from_secs(rng.random_range(1..100)));
                ports[i] = Arc::new(p);
            }
            _ => {}
        }
        maps.apply(&s.plan(&table(&ports)));
        // The maps hold exactly the table: every frontend with its backends, no orphan backend.
        let mut fresh = Maps::default();
        fresh.apply(&State::default().plan(&table(&ports)));
        assert_eq!(maps.reachable(), fresh.reachable(), "round {round}");
        assert_eq!(maps.backends.len(), fresh.backends.len(), "round {round}");
    }
}

#[test]
fn adoption_keeps_what_is_right_and_removes_the_rest() {
    let a = port(
        "a",
        Protocol::Tcp,
        "10.96.0.1",
        &["10.0.0.1:80", "10.0.0.2:80"],
    );
    let b = port("b", Protocol::Tcp, "10.96.0.2", &["10.0.0.3:80"]);
    let mut maps = Maps::default();
    maps.apply(&State::default().plan(&table(&[a.clone(), b])));
    // A half-finished shrink: slot 3 beyond the count, and an orphan backend.
    let fe = frontend_key(
        Addr::from("10.96.0.1".parse::<std::net::IpAddr>().unwrap()),
        80,
        6,
    );
    maps.services
        .insert(slot_key(&fe, 3), ServiceValue::default());
    maps.backends
        .insert(99, backend("10.9.9.9:9".parse().unwrap()));

    let mut adopted = State::adopt(
        maps.services.iter().map(|(k, v)| (*k, *v)),
        maps.backends.iter().map(|(k, v)| (*k, *v)),
    );
    // Only `a` is left: b's frontend, its slot and backend, a's slot 3 and the orphan go; a
    // is not rewritten.
    let plan = adopted.plan(&table(&[a]));
    maps.apply(&plan);
    assert!(
        ops(&plan).iter().all(|op| !matches!(op, Op::Put(..))),
        "{:?}",
        ops(&plan)
    );
    assert_eq!(ops(&plan).len(), 5, "{:?}", ops(&plan));
    assert_eq!(maps.reachable().len(), 1);
    assert_eq!(maps.backends.len(), 2);
    assert_eq!(maps.services.len(), 3);
    // New backends never reuse an id the maps held.
    let c = port("c", Protocol::Tcp, "10.96.0.3", &["10.0.0.7:80"]);
    let plan = adopted.plan(&table(&[c]));
    assert_eq!(plan.backends_put.keys, [100]);
}

#[test]
fn udp_backends_that_leave_a_frontend_are_reported() {
    let u = port(
        "u",
        Protocol::Udp,
        "10.96.0.53",
        &["10.0.0.1:53", "10.0.0.2:53"],
    );
    let t = port("t", Protocol::Tcp, "10.96.0.80", &["10.0.0.1:53"]);
    let mut s = State::default();
    s.plan(&table(&[u.clone(), t.clone()]));
    let u2 = port("u", Protocol::Udp, "10.96.0.53", &["10.0.0.2:53"]);
    let t2 = port("t", Protocol::Tcp, "10.96.0.80", &[]);
    let plan = s.plan(&table(&[u2, t2]));
    let gone: Vec<String> = plan
        .udp_gone
        .iter()
        .map(|(k, b)| format!("{}>{}", IpAddr::from(k.addr), backend_addr(b)))
        .collect();
    assert_eq!(gone, ["10.96.0.53>10.0.0.1:53"]);
}

#[test]
fn affinity_and_traffic_policy_reach_the_frontend() {
    let mut p = (*port(
        "a",
        Protocol::Tcp,
        "10.96.0.1",
        &["10.0.0.1:80", "10.0.0.2:80"],
    ))
    .clone();
    p.affinity = Some(Duration::from_secs(600));
    p.internal_local = true;
    p.endpoints[1].local = true;
    let d = desired(&p);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.flags, FLAG_AFFINITY);
    assert_eq!(d[0].1.affinity_seconds, 600);
    assert_eq!(d[0].1.count, 1);
    assert_eq!(backend_addr(&d[0].2[0]).to_string(), "10.0.0.2:80");
    // An IPv6 ClusterIP gets only IPv6 backends.
    let mut dual = p.clone();
    dual.internal_local = false;
    dual.cluster_ips = vec!["fd00::1".parse().unwrap()];
    dual.endpoints.push(ep("[fd00:1::5]:80"));
    let d = desired(&dual);
    assert_eq!(backend_addr(&d[0].2[0]).to_string(), "[fd00:1::5]:80");
    assert_eq!(d[0].1.count, 1);
}
