//! Switchyard's BPF programs and their map ABI (the `switchyard-ebpf` crate). It depends on
//! nothing; `switchyard-proxy`'s eBPF mode loads what it describes.
//!
//! - `sock.c`: the cgroup sock_addr programs of the eBPF proxy mode (connect, sendmsg, recvmsg
//!   and getpeername, IPv4 and IPv6), compiled by `make` into `sock.o`, which is committed and
//!   embedded here as [`OBJECT`] so that building Switchyard needs no clang.
//! - This file: the program and map names and the `#[repr(C)]` mirrors of every map key and
//!   value. It is the only place outside `sock.c` that knows them; keep the two in step (the
//!   size assertions below catch a field added on one side only).
//!
//! Byte order: addresses (16 bytes, IPv4 stored IPv4-mapped as `::ffff:a.b.c.d`) and ports are
//! in network byte order, as the kernel hands them to sock_addr programs; slots, counts, flags,
//! backend ids and timeouts are in host byte order.

use std::net::{IpAddr, Ipv6Addr};

/// The compiled programs (`make -C ebpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../sock.o");

/// A program of [`OBJECT`]: its name, the cgroup hook its section names, and that hook's
/// `enum bpf_attach_type` value (linux/bpf.h).
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub hook: &'static str,
    pub attach_type: u32,
}

const fn program(name: &'static str, hook: &'static str, attach_type: u32) -> Program {
    Program {
        name,
        hook,
        attach_type,
    }
}

/// Every program, in the order they are attached (translation first, reverse last).
pub const PROGRAMS: &[Program] = &[
    program("sy_connect4", "connect4", 10), // BPF_CGROUP_INET4_CONNECT
    program("sy_sendmsg4", "sendmsg4", 14), // BPF_CGROUP_UDP4_SENDMSG
    program("sy_recvmsg4", "recvmsg4", 19), // BPF_CGROUP_UDP4_RECVMSG
    program("sy_getpeername4", "getpeername4", 29), // BPF_CGROUP_INET4_GETPEERNAME
    program("sy_connect6", "connect6", 11), // BPF_CGROUP_INET6_CONNECT
    program("sy_sendmsg6", "sendmsg6", 15), // BPF_CGROUP_UDP6_SENDMSG
    program("sy_recvmsg6", "recvmsg6", 20), // BPF_CGROUP_UDP6_RECVMSG
    program("sy_getpeername6", "getpeername6", 30), // BPF_CGROUP_INET6_GETPEERNAME
];

/// `(ServiceKey, ServiceValue)`: slot 0 is the frontend, slots 1..=count its backends.
pub const SERVICES: &str = "sy_services";
/// `(u32 backend id, Backend)`.
pub const BACKENDS: &str = "sy_backends";
/// `(RevKey, RevValue)`, LRU: which service a socket's backend stands for.
pub const REV_NAT: &str = "sy_rev_nat";
/// `(AffinityKey, AffinityValue)`, LRU: ClientIP affinity per client network namespace.
pub const AFFINITY: &str = "sy_affinity";
/// Every map, all pinned by name.
pub const MAPS: &[&str] = &[SERVICES, BACKENDS, REV_NAT, AFFINITY];

/// `ServiceValue::flags`: ClientIP session affinity.
pub const FLAG_AFFINITY: u16 = 1;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An address as the maps hold it: 16 bytes, network order, IPv4 mapped into IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        Addr(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl From<Addr> for IpAddr {
    fn from(a: Addr) -> Self {
        Ipv6Addr::from(a.0).to_canonical()
    }
}

/// A port in network byte order, as its in-memory `u16`.
pub fn net_port(port: u16) -> u16 {
    port.to_be()
}

/// The host-order port of a network-order `u16`.
pub fn host_port(port: u16) -> u16 {
    u16::from_be(port)
}

/// `struct sy_service_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub pad: u8,
    /// 0: the frontend; 1..=count: its backends. Host order.
    pub slot: u16,
    pub pad2: u16,
}

/// `struct sy_service_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slots > 0: the key of [`BACKENDS`]. Host order.
    pub backend_id: u32,
    /// Slot 0: how many backend slots; 0 refuses connections. Host order.
    pub count: u16,
    /// Slot 0: [`FLAG_AFFINITY`].
    pub flags: u16,
    /// Slot 0: the ClientIP affinity timeout. Host order.
    pub affinity_seconds: u32,
}

/// `struct sy_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

/// `struct sy_rev_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevKey {
    /// The socket's cookie.
    pub cookie: u64,
    /// The backend the socket was sent to.
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub pad: [u16; 3],
}

/// `struct sy_rev_value`: the service address the application dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevValue {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

/// `struct sy_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    /// The client's network namespace cookie.
    pub netns: u64,
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub pad: [u8; 5],
}

/// `struct sy_affinity_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub pad: u32,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_ns: u64,
}

// The sizes the C compiler gives these structs (checked with pahole-free arithmetic: every
// field is naturally aligned and the padding is explicit).
const _: () = assert!(std::mem::size_of::<ServiceKey>() == 24);
const _: () = assert!(std::mem::size_of::<ServiceValue>() == 12);
const _: () = assert!(std::mem::size_of::<Backend>() == 20);
const _: () = assert!(std::mem::size_of::<RevKey>() == 32);
const _: () = assert!(std::mem::size_of::<RevValue>() == 20);
const _: () = assert!(std::mem::size_of::<AffinityKey>() == 32);
const _: () = assert!(std::mem::size_of::<AffinityValue>() == 16);

// SAFETY: plain `#[repr(C)]` data with explicit padding fields; every bit pattern is valid.
unsafe impl aya::Pod for Addr {}
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServiceValue {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for RevKey {}
unsafe impl aya::Pod for RevValue {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        let v4: IpAddr = "10.96.0.1".parse().unwrap();
        let a = Addr::from(v4);
        assert_eq!(&a.0[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&a.0[12..], &[10, 96, 0, 1]);
        assert_eq!(IpAddr::from(a), v4);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(IpAddr::from(Addr::from(v6)), v6);
    }

    #[test]
    fn ports_are_stored_big_endian() {
        assert_eq!(net_port(80).to_ne_bytes(), [0, 80]);
        assert_eq!(host_port(net_port(30080)), 30080);
    }

    #[test]
    fn the_object_has_every_program_and_map() {
        // The ELF string table names each program and map; a rename on one side only fails here.
        let has = |name: &str| OBJECT.windows(name.len()).any(|w| w == name.as_bytes());
        for p in PROGRAMS {
            assert!(has(p.name), "{} missing from sock.o", p.name);
            assert!(has(&format!("cgroup/{}", p.hook)), "section of {}", p.name);
        }
        for m in MAPS {
            assert!(has(m), "{m} missing from sock.o");
        }
    }
}
