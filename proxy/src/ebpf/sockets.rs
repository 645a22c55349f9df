//! Moving connected UDP sockets off a backend that left their service.
//!
//! connect4 translates a connected UDP socket once; its later `send()`s pass no hook, so a
//! client that keeps its socket (a resolver, a metrics agent) would talk to a removed backend
//! forever — the stale-backend problem Cilium's users met. After a sync, the sockets connected
//! to such a backend *through the service* (their reverse-NAT entry names the service) are
//! destroyed with sock_diag's SOCK_DESTROY, in every network namespace of the node: the
//! application sees ECONNABORTED and reconnects, and its new connect picks a current backend.
//! Sockets that dialled the backend's address directly are left alone.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use switchyard_ebpf::{Addr, Backend, RevKey, RevValue, ServiceKey, PROTO_UDP};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, the sockid, then five u32.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// A UDP socket as sock_diag names it: family and the raw `inet_diag_sockid`.
#[derive(Clone)]
struct Socket {
    family: u8,
    id: [u8; SOCKID_LEN],
}

impl Socket {
    fn dst(&self) -> Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.id[20..36]);
        if self.family == libc::AF_INET as u8 {
            let v4 = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            return Addr::from(std::net::IpAddr::V4(v4));
        }
        Addr(a)
    }

    /// The destination port, network order (as the maps hold it).
    fn dport(&self) -> u16 {
        u16::from_ne_bytes([self.id[2], self.id[3]])
    }

    fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes(self.id[40..44].try_into().unwrap_or_default());
        let hi = u32::from_ne_bytes(self.id[44..48].try_into().unwrap_or_default());
        (hi as u64) << 32 | lo as u64
    }
}

/// A `SOCK_DIAG_BY_FAMILY` or `SOCK_DESTROY` request for UDP sockets of `family`.
fn request(ty: u16, flags: u16, family: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 8 + SOCKID_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(ty.to_ne_bytes());
    m.extend((flags | NLM_F_REQUEST).to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // pid: the kernel
    m.extend([family, PROTO_UDP, 0, 0]);
    m.extend(u32::MAX.to_ne_bytes()); // every state
    m.extend(id);
    m
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `msg` is valid for its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The netlink messages in one datagram: (type, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push((ty, &buf[NLMSG_HDRLEN..len]));
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
    out
}

/// Every UDP socket of the calling thread's network namespace.
fn dump() -> io::Result<Vec<Socket>> {
    let fd = netlink()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        send(
            &fd,
            &request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, family, &[0; SOCKID_LEN]),
        )?;
        let mut buf = vec![0u8; 64 * 1024];
        'recv: loop {
            let n = recv(&fd, &mut buf)?;
            if n == 0 {
                break;
            }
            for (ty, payload) in messages(&buf[..n]) {
                match ty {
                    NLMSG_DONE => break 'recv,
                    NLMSG_ERROR => break 'recv,
                    _ if payload.len() >= DIAG_MSG_LEN => {
                        let mut id = [0u8; SOCKID_LEN];
                        id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                        out.push(Socket {
                            family: payload[0],
                            id,
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// Destroys one socket; the kernel's answer is an error message (0 for success).
fn destroy(s: &Socket) -> io::Result<()> {
    let fd = netlink()?;
    send(&fd, &request(SOCK_DESTROY, NLM_F_ACK, s.family, &s.id))?;
    let mut buf = [0u8; 512];
    let n = recv(&fd, &mut buf)?;
    for (ty, payload) in messages(&buf[..n]) {
        if ty == NLMSG_ERROR && payload.len() >= 4 {
            let errno = i32::from_ne_bytes(payload[0..4].try_into().unwrap_or_default());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
        }
    }
    Ok(())
}

/// One handle per network namespace on the node (deduplicated by inode).
fn namespaces() -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // Processes come and go while we look: a vanished one is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            if let Ok(f) = File::open(&path) {
                out.push(f);
            }
        }
    }
    out
}

/// What [`move_off`] did.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    pub destroyed: usize,
    pub errors: Vec<String>,
}

/// Destroys the UDP sockets connected through a frontend of `gone` to the backend that left it.
/// `rev` looks up a socket's reverse-NAT entry.
pub(crate) fn move_off<F>(gone: &[(ServiceKey, Backend)], rev: F) -> Moved
where
    F: Fn(&RevKey) -> Option<RevValue> + Sync,
{
    let mut wanted: HashMap<(Addr, u16), Vec<(Addr, u16)>> = HashMap::new();
    for (fe, b) in gone {
        wanted
            .entry((b.addr, b.port))
            .or_default()
            .push((fe.addr, fe.port));
    }
    let matches = |s: &Socket| {
        let Some(frontends) = wanted.get(&(s.dst(), s.dport())) else {
            return false;
        };
        let key = RevKey {
            cookie: s.cookie(),
            addr: s.dst(),
            port: s.dport(),
            pad: [0; 3],
        };
        rev(&key).is_some_and(|v| frontends.contains(&(v.addr, v.port)))
    };
    let results: Vec<io::Result<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = namespaces()
            .into_iter()
            .map(|ns| {
                let matches = &matches;
                scope.spawn(move || -> io::Result<usize> {
                    // SAFETY: setns(2) on this short-lived thread only; `ns` is an open nsfs file.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let mut n = 0;
                    for s in dump()?.iter().filter(|s| matches(s)) {
                        match destroy(s) {
                            Ok(()) => n += 1,
                            // Closed meanwhile.
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("socket scan panicked")))
            })
            .collect()
    });
    let mut moved = Moved::default();
    for r in results {
        match r {
            Ok(n) => moved.destroyed += n,
            Err(e) => moved.errors.push(format!("moving UDP sockets: {e}")),
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_messages_are_split_and_bounded() {
        let mut two = request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, 2, &[7; SOCKID_LEN]);
        two.extend(request(SOCK_DESTROY, NLM_F_ACK, 10, &[9; SOCKID_LEN]));
        let m = messages(&two);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, SOCK_DIAG_BY_FAMILY);
        assert_eq!(m[1].0, SOCK_DESTROY);
        assert_eq!(m[1].1[0], 10);
        // A length past the end, or shorter than a header, stops the walk.
        let mut bad = two.clone();
        bad[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(messages(&bad).is_empty());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&bad).is_empty());
        assert!(messages(&two[..10]).is_empty());
    }

    #[test]
    fn socket_ids_decode_destination_port_and_cookie() {
        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&53u16.to_be_bytes());
        id[20..24].copy_from_slice(&[10, 0, 0, 1]);
        id[40..44].copy_from_slice(&5u32.to_ne_bytes());
        id[44..48].copy_from_slice(&1u32.to_ne_bytes());
        let s = Socket { family: 2, id };
        assert_eq!(
            s.dst(),
            Addr::from("10.0.0.1".parse::<std::net::IpAddr>().unwrap())
        );
        assert_eq!(s.dport(), switchyard_ebpf::net_port(53));
        assert_eq!(s.cookie(), (1 << 32) | 5);
    }
}
