//! What the maps should hold, and the ordered writes that get them there.
//!
//! [`State`] mirrors the service and backend maps. [`State::plan`] compares it with a service
//! table — only the ports whose `Arc` changed since the last plan, so one endpoint change costs a
//! handful of writes at any number of services — and returns the writes in an order that never
//! lets a connect see a missing slot or backend ([`Plan`]: backends, slots, frontends, stale
//! slots, stale backends). A backend keeps its slot when others come and go, so a change
//! rewrites only the slots that changed.

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use switchyard_ebpf::{
    net_port, Addr, Backend, ServiceKey, ServiceValue, FLAG_AFFINITY, PROTO_TCP, PROTO_UDP,
};

use crate::table::{Protocol, ServicePort, ServiceTable};

/// Keys and values side by side, as `BPF_MAP_UPDATE_BATCH` takes them.
#[derive(Debug)]
pub(crate) struct Puts<K, V> {
    pub keys: Vec<K>,
    pub values: Vec<V>,
}

impl<K, V> Default for Puts<K, V> {
    fn default() -> Self {
        Puts {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K, V> Puts<K, V> {
    fn push(&mut self, k: K, v: V) {
        self.keys.push(k);
        self.values.push(v);
    }
}

/// The writes of one plan, in the order they must reach the kernel (fields top to bottom).
/// The writes within one field are independent of each other (distinct keys): they may go in
/// any order, or at once.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub backends_put: Puts<u32, Backend>,
    pub slots_put: Puts<ServiceKey, ServiceValue>,
    pub frontends_put: Puts<ServiceKey, ServiceValue>,
    pub frontends_del: Vec<ServiceKey>,
    pub slots_del: Vec<ServiceKey>,
    pub backends_del: Vec<u32>,
    /// (UDP frontend, a backend it no longer has).
    pub udp_gone: Vec<(ServiceKey, Backend)>,
    /// Frontends after the plan.
    pub frontends: usize,
}

impl Plan {
    /// Map entries written or deleted.
    pub(crate) fn len(&self) -> usize {
        self.backends_put.keys.len()
            + self.slots_put.keys.len()
            + self.frontends_put.keys.len()
            + self.frontends_del.len()
            + self.slots_del.len()
            + self.backends_del.len()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Frontend {
    /// Slot 0 as written; `None` where the map has none (only after adoption).
    value: Option<ServiceValue>,
    /// `slots[i]` is slot `i + 1`; `None` where the map has no entry (only after adoption).
    slots: Vec<Option<u32>>,
}

/// The service and backend maps as Switchyard last wrote (or read) them.
#[derive(Debug, Default)]
pub(crate) struct State {
    frontends: HashMap<ServiceKey, Frontend>,
    ids: HashMap<Backend, u32>,
    /// Each backend id's backend and how many slots name it.
    backends: HashMap<u32, (Backend, usize)>,
    /// Ids are never reused: an affinity entry naming a removed backend must not find another.
    next_id: u32,
    /// The ports of the last planned table (a table's ports are sorted by name, so the next
    /// plan finds what changed with one merge walk that compares pointers, not names).
    ports: Vec<Arc<ServicePort>>,
    /// The first plan claims everything it finds (after [`State::adopt`]).
    planned: bool,
}

/// Slots are `u16`s.
const MAX_SLOTS: usize = u16::MAX as usize;

/// A frontend key: slot 0.
fn frontend_key(addr: Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr,
        port: net_port(port),
        proto,
        ..Default::default()
    }
}

fn slot_key(frontend: &ServiceKey, slot: usize) -> ServiceKey {
    ServiceKey {
        slot: slot as u16,
        ..*frontend
    }
}

/// Whether the socket programs serve this port; SCTP and the rest stay with iptables.
pub(crate) fn proto(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(PROTO_TCP),
        Protocol::Udp => Some(PROTO_UDP),
        Protocol::Sctp => None,
    }
}

/// The frontend keys of a port (what [`desired`] returns, without the backends).
fn frontend_keys(port: &ServicePort) -> Vec<ServiceKey> {
    let Some(proto) = proto(port.protocol) else {
        return Vec::new();
    };
    port.cluster_ips
        .iter()
        .map(|ip| frontend_key(Addr::from(*ip), port.port, proto))
        .collect()
}

/// The frontends a port gives the socket programs: its ClusterIPs, with the backends that
/// cluster traffic may use (internalTrafficPolicy), in endpoint order, without duplicates.
fn desired(port: &ServicePort) -> Vec<(ServiceKey, ServiceValue, Vec<Backend>)> {
    let Some(proto) = proto(port.protocol) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let usable = port.usable(false);
    for ip in &port.cluster_ips {
        let mut backends: Vec<Backend> = Vec::with_capacity(usable.len());
        let mut seen = HashSet::default();
        for e in usable.iter().filter(|e| e.addr.is_ipv4() == ip.is_ipv4()) {
            // Duplicates are rare: a linear check while the list is short.
            let b = backend(e.addr);
            let dup = if backends.len() < 16 {
                backends.contains(&b)
            } else {
                if seen.is_empty() {
                    seen.extend(backends.iter().copied());
                }
                !seen.insert(b)
            };
            if !dup && backends.len() < MAX_SLOTS {
                backends.push(b);
            }
        }
        let (flags, affinity_seconds) = match port.affinity {
            Some(t) => (FLAG_AFFINITY, t.as_secs().clamp(1, u32::MAX as u64) as u32),
            None => (0, 0),
        };
        let value = ServiceValue {
            count: backends.len() as u16,
            flags,
            affinity_seconds,
            ..Default::default()
        };
        out.push((
            frontend_key(Addr::from(*ip), port.port, proto),
            value,
            backends,
        ));
    }
    out
}

pub(crate) fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: Addr::from(addr.ip()),
        port: net_port(addr.port()),
        pad: 0,
    }
}

/// New slot contents: backends that stay keep their slot, new ones fill the holes, and a
/// shrink moves the last backends into the remaining holes.
fn assign(old: &[Option<u32>], want: &[u32]) -> Vec<u32> {
    if old.is_empty() {
        return want.to_vec();
    }
    let wanted: HashSet<u32> = want.iter().copied().collect();
    let mut kept = HashSet::default();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|s| s.filter(|id| wanted.contains(id) && kept.insert(*id)))
        .collect();
    let mut added = want.iter().filter(|id| !kept.contains(id));
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        match added.next() {
            Some(id) => *s = Some(*id),
            None => break,
        }
    }
    slots.extend(added.map(|id| Some(*id)));
    // Shrink: fill each hole with the last backend.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while slots.last() == Some(&None) {
                slots.pop();
            }
            if i < slots.len() {
                slots.swap_remove(i);
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

impl State {
    /// The state of maps read back from the kernel (a restart adopts what it finds).
    pub(crate) fn adopt(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (u32, Backend)>,
    ) -> State {
        let mut s = State::default();
        for (id, b) in backends {
            s.ids.insert(b, id);
            s.backends.insert(id, (b, 0));
            s.next_id = s.next_id.max(id.wrapping_add(1));
        }
        for (k, v) in services {
            let f = s.frontends.entry(slot_key(&k, 0)).or_default();
            if k.slot == 0 {
                f.value = Some(v);
                continue;
            }
            let i = k.slot as usize - 1;
            if f.slots.len() <= i {
                f.slots.resize(i + 1, None);
            }
            f.slots[i] = Some(v.backend_id);
            // A slot naming a backend the map lacks is rewritten by the first plan.
            if let Some(b) = s.backends.get_mut(&v.backend_id) {
                b.1 += 1;
            }
        }
        s
    }

    fn id(&mut self, b: Backend, put: &mut Puts<u32, Backend>) -> u32 {
        if let Some(id) = self.ids.get(&b) {
            return *id;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.ids.insert(b, id);
        self.backends.insert(id, (b, 0));
        put.push(id, b);
        id
    }

    fn reference(&mut self, id: u32, by: isize) {
        if let Some(b) = self.backends.get_mut(&id) {
            b.1 = b.1.saturating_add_signed(by);
        }
    }

    /// The writes from the current state to `table`; the state becomes `table`'s.
    pub(crate) fn plan(&mut self, table: &ServiceTable) -> Plan {
        let mut want: Vec<(ServiceKey, ServiceValue, Vec<Backend>)> = Vec::new();
        let mut stale: Vec<ServiceKey> = Vec::new();
        let old = std::mem::take(&mut self.ports);
        let name = |p: &ServicePort| (p.name.clone(), p.protocol);
        let (mut i, mut j) = (0, 0);
        loop {
            match (old.get(i), table.ports.get(j)) {
                (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) => match name(o).cmp(&name(n)) {
                    Ordering::Less => {
                        stale.extend(frontend_keys(o));
                        i += 1;
                    }
                    Ordering::Greater => {
                        want.extend(desired(n));
                        j += 1;
                    }
                    Ordering::Equal => {
                        stale.extend(frontend_keys(o));
                        want.extend(desired(n));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(o), None) => {
                    stale.extend(frontend_keys(o));
                    i += 1;
                }
                (None, Some(n)) => {
                    want.extend(desired(n));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.ports = table.ports.clone();
        if !self.planned && !self.frontends.is_empty() {
            // Everything the maps held that the table does not claim.
            let claimed: HashSet<ServiceKey> =
                self.ports.iter().flat_map(|p| frontend_keys(p)).collect();
            stale.extend(self.frontends.keys().filter(|k| !claimed.contains(k)));
        }

        // Only to spare a stale key that is wanted again (kept empty when nothing is stale).
        let want_keys: HashSet<ServiceKey> = match stale.is_empty() {
            true => HashSet::default(),
            false => want.iter().map(|w| w.0).collect(),
        };
        let adopted_backends = !self.planned && !self.backends.is_empty();
        let mut plan = Plan::default();
        let mut released = Vec::new();
        for (key, value, backends) in want {
            let ids: Vec<u32> = backends
                .into_iter()
                .map(|b| self.id(b, &mut plan.backends_put))
                .collect();
            let old = self.frontends.remove(&key).unwrap_or_default();
            let new = assign(&old.slots, &ids);
            for (i, id) in new.iter().enumerate() {
                if old.slots.get(i) != Some(&Some(*id)) {
                    let v = ServiceValue {
                        backend_id: *id,
                        ..Default::default()
                    };
                    plan.slots_put.push(slot_key(&key, i + 1), v);
                }
            }
            for (i, s) in old.slots.iter().enumerate().skip(new.len()) {
                if s.is_some() {
                    plan.slots_del.push(slot_key(&key, i + 1));
                }
            }
            if old.value != Some(value) {
                plan.frontends_put.push(key, value);
            }
            if old.slots.is_empty() {
                for id in &new {
                    self.reference(*id, 1);
                }
            } else {
                let before: HashSet<u32> = old.slots.iter().flatten().copied().collect();
                let after: HashSet<u32> = new.iter().copied().collect();
                for id in after.difference(&before) {
                    self.reference(*id, 1);
                }
                for id in before.difference(&after) {
                    released.push((*id, key));
                }
            }
            let slots = new.into_iter().map(Some).collect();
            let value = Some(value);
            self.frontends.insert(key, Frontend { value, slots });
        }
        for key in stale {
            if want_keys.contains(&key) {
                continue;
            }
            let Some(old) = self.frontends.remove(&key) else {
                continue;
            };
            plan.frontends_del.push(key);
            for (i, s) in old.slots.iter().enumerate() {
                if let Some(id) = s {
                    plan.slots_del.push(slot_key(&key, i + 1));
                    released.push((*id, key));
                }
            }
        }
        for (id, key) in &released {
            self.reference(*id, -1);
            if key.proto == PROTO_UDP {
                plan.udp_gone
                    .extend(self.backends.get(id).map(|b| (*key, b.0)));
            }
        }
        // Backends no slot names any more: those just released, and on the first plan any
        // the maps held unused.
        let mut candidates: Vec<u32> = released.iter().map(|(id, _)| *id).collect();
        if adopted_backends {
            candidates.extend(self.backends.keys().copied());
        }
        self.planned = true;
        for id in candidates {
            if self.backends.get(&id).is_some_and(|b| b.1 == 0) {
                if let Some((b, _)) = self.backends.remove(&id) {
                    self.ids.remove(&b);
                }
                plan.backends_del.push(id);
            }
        }
        plan.frontends = self.frontends.len();
        plan
    }
}

#[cfg(test)]
mod tests;
