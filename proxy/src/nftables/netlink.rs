//! Element writes straight to nf_tables over netlink: one batch (one transaction) of
//! NEWSETELEM/DELSETELEM messages. The `nft` tool first reads the table's chains and sets to
//! build its cache, which at 10,000 Services costs more than the change itself; a batch of
//! element messages needs none of it. Everything else (chains, sets, a table's first write)
//! goes through `nft`.
//!
//! Keys and values are the renderer's text (`10.96.0.10 . tcp . 80 . 2`), encoded here as the
//! kernel stores them: each part of a concatenation in its own 4-byte-aligned register,
//! addresses and ports in network order, the `numgen` slot in host order.

use std::io;
use std::net::IpAddr;

use super::render::{Key, Map, Transaction, TABLE};
use crate::iptables::render::Family;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;
/// Elements per message: a nested attribute's length is 16 bits.
const PER_MESSAGE: usize = 256;

/// The parts of a map's keys and values.
#[derive(Clone, Copy)]
enum Part {
    Addr,
    Proto,
    Port,
    Slot,
}

fn key_parts(map: Map) -> &'static [Part] {
    use Part::*;
    match map {
        Map::ServiceIps | Map::NoEndpointServices => &[Addr, Proto, Port],
        Map::ServiceNodeports | Map::NoEndpointNodeports => &[Proto, Port],
        Map::Endpoints => &[Addr, Proto, Port, Slot],
        Map::NodeportEndpoints => &[Proto, Port, Slot],
        Map::Hairpin => &[Addr, Addr],
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot encode {what:?}"),
    )
}

/// `text` (parts joined by " . ") as the kernel's key or value bytes.
fn encode(text: &str, parts: &[Part], family: Family) -> io::Result<Vec<u8>> {
    let fields: Vec<&str> = text.split(" . ").collect();
    if fields.len() != parts.len() {
        return Err(bad(text));
    }
    let mut out = Vec::with_capacity(parts.len() * 4);
    for (field, part) in fields.iter().zip(parts) {
        match part {
            Part::Addr => match (field.parse::<IpAddr>().map_err(|_| bad(text))?, family) {
                (IpAddr::V4(a), Family::V4) => out.extend(a.octets()),
                (IpAddr::V6(a), Family::V6) => out.extend(a.octets()),
                _ => return Err(bad(text)),
            },
            Part::Proto => {
                let p: u8 = match *field {
                    "tcp" => 6,
                    "udp" => 17,
                    "sctp" => 132,
                    _ => return Err(bad(text)),
                };
                out.extend([p, 0, 0, 0]);
            }
            Part::Port => {
                let p: u16 = field.parse().map_err(|_| bad(text))?;
                out.extend(p.to_be_bytes());
                out.extend([0, 0]);
            }
            Part::Slot => {
                let s: u32 = field.parse().map_err(|_| bad(text))?;
                out.extend(s.to_ne_bytes());
            }
        }
    }
    Ok(out)
}

/// A netlink message under construction: attributes nest by remembering where their
/// lengths go.
struct Msg {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(512);
        buf.extend(0u32.to_ne_bytes()); // length, set in finish()
        buf.extend(kind.to_ne_bytes());
        buf.extend(flags.to_ne_bytes());
        buf.extend(seq.to_ne_bytes());
        buf.extend(0u32.to_ne_bytes()); // port id: the kernel's
        buf.extend([family, 0]); // nfgenmsg: family, version 0
        buf.extend(res_id.to_be_bytes());
        Msg {
            buf,
            open: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend(len.to_ne_bytes());
        self.buf.extend(kind.to_ne_bytes());
        self.buf.extend(data);
        self.pad();
    }

    fn string(&mut self, kind: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data);
    }

    fn begin(&mut self, kind: u16) {
        self.open.push(self.buf.len());
        self.buf.extend(0u16.to_ne_bytes());
        self.buf.extend((kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        let start = self.open.pop().expect("an open attribute");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        out.extend(self.buf);
    }
}

/// One element: its key, and its value (a `goto` verdict, bytes, or nothing in a set).
fn element(
    msg: &mut Msg,
    map: Map,
    key: &str,
    value: Option<&str>,
    family: Family,
) -> io::Result<()> {
    msg.begin(NFTA_LIST_ELEM);
    msg.begin(NFTA_SET_ELEM_KEY);
    msg.attr(NFTA_DATA_VALUE, &encode(key, key_parts(map), family)?);
    msg.end();
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        msg.begin(NFTA_SET_ELEM_DATA);
        if let Some(chain) = v.strip_prefix("goto ") {
            msg.begin(NFTA_DATA_VERDICT);
            msg.attr(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
            msg.string(NFTA_VERDICT_CHAIN, chain);
            msg.end();
        } else {
            msg.attr(
                NFTA_DATA_VALUE,
                &encode(v, &[Part::Addr, Part::Port], family)?,
            );
        }
        msg.end();
    }
    msg.end();
    Ok(())
}

/// The batch that carries `t`'s element writes, and how many of its messages are
/// acknowledged: only the last, since thousands of acknowledgements would overflow the
/// socket's receive buffer on a first load; errors are reported whatever the flags.
pub fn batch(t: &Transaction) -> io::Result<(Vec<u8>, u32)> {
    let family = match t.family {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    };
    // (message, map, its elements, with values)
    type Message<'a> = (u16, Map, &'a [(Key, String)], bool);
    let mut messages: Vec<Message> = Vec::new();
    for (list, kind, values) in [
        (&t.delete, NFT_MSG_DELSETELEM, false),
        (&t.add, NFT_MSG_NEWSETELEM, true),
    ] {
        // The lists are sorted, so each map's elements are contiguous.
        let mut rest: &[(Key, String)] = list;
        while let Some(((map, _), _)) = rest.first() {
            let map = *map;
            let n = rest.iter().take_while(|((m, _), _)| *m == map).count();
            for chunk in rest[..n].chunks(PER_MESSAGE) {
                messages.push((kind, map, chunk, values));
            }
            rest = &rest[n..];
        }
    }
    let mut out = Vec::new();
    let unspec = libc::AF_UNSPEC as u8;
    Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        unspec,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish(&mut out);
    let last = messages.len();
    for (i, (kind, map, chunk, values)) in messages.into_iter().enumerate() {
        let mut flags = NLM_F_REQUEST;
        if kind == NFT_MSG_NEWSETELEM {
            flags |= NLM_F_CREATE;
        }
        if i + 1 == last {
            flags |= NLM_F_ACK;
        }
        let seq = i as u32 + 2;
        let mut msg = Msg::new(NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seq, family, 0);
        msg.string(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        msg.string(NFTA_SET_ELEM_LIST_SET, map.name());
        msg.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for ((_, key), value) in chunk {
            element(
                &mut msg,
                map,
                key,
                values.then_some(value.as_str()),
                t.family,
            )?;
        }
        msg.end();
        msg.finish(&mut out);
    }
    Msg::new(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        last as u32 + 2,
        unspec,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish(&mut out);
    Ok((out, u32::from(last > 0)))
}

/// A netfilter netlink socket, kept for the proxy's life: closing one costs the kernel an RCU
/// grace period (15–18 ms measured here), longer than the batches it carries.
pub struct Socket(std::os::fd::OwnedFd);

impl Socket {
    pub fn open() -> io::Result<Socket> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) returns a new descriptor this value then owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Socket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `batch` and checks its `acked` acknowledgements; the first error the kernel
    /// reports (the whole batch is then undone).
    pub fn send(&self, batch: &[u8], acked: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: send and receive calls on a descriptor this value owns, with buffers that
        // outlive the calls.
        unsafe { exchange(self.0.as_raw_fd(), batch, acked) }
    }
}

/// The kernel handles a netfilter batch inside the send, commit included, so every
/// acknowledgement and error (a failed commit is reported against the batch's first message)
/// is queued by the time `sendto` returns: read until the queue is empty.
unsafe fn exchange(fd: i32, batch: &[u8], acked: u32) -> io::Result<()> {
    // A first load is megabytes: the socket's send buffer must hold the whole batch.
    if batch.len() > 128 * 1024 {
        let size = (batch.len() + 65536).min(i32::MAX as usize) as i32;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &size as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        );
    }
    let mut addr: libc::sockaddr_nl = std::mem::zeroed();
    addr.nl_family = libc::AF_NETLINK as u16;
    let sent = libc::sendto(
        fd,
        batch.as_ptr() as *const libc::c_void,
        batch.len(),
        0,
        &addr as *const _ as *const libc::sockaddr,
        std::mem::size_of::<libc::sockaddr_nl>() as u32,
    );
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // Whatever an earlier exchange left unread is read first: acknowledgements are counted
    // from here on, and an error stops the count.
    let mut buf = vec![0u8; 65536];
    let mut seen = 0;
    loop {
        let n = libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        );
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            return Err(e);
        }
        let n = n as usize;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < 16 || at + len > n {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                seen += 1;
            }
            at += (len + 3) & !3;
        }
    }
    if seen < acked {
        return Err(io::Error::other(format!(
            "{seen} of {acked} element messages acknowledged"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_register_by_register() {
        let k = encode(
            "10.96.0.10 . tcp . 80 . 2",
            key_parts(Map::Endpoints),
            Family::V4,
        )
        .unwrap();
        let mut want = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend(2u32.to_ne_bytes());
        assert_eq!(k, want);
        let v = encode("fd00::1 . 8080", &[Part::Addr, Part::Port], Family::V6).unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(&v[16..], &[0x1f, 0x90, 0, 0]);
        for wrong in [
            "10.96.0.10 . tcp . 80",
            "10.96.0.10 . icmp . 80 . 1",
            "fd00::1 . tcp . 80 . 1",
        ] {
            assert!(
                encode(wrong, key_parts(Map::Endpoints), Family::V4).is_err(),
                "{wrong}"
            );
        }
    }
}
