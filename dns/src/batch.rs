//! Batched UDP I/O: up to [`BATCH`] datagrams received with one `recvmmsg` and the replies sent
//! with one `sendmmsg`, as NSD and Knot do, instead of two system calls per query.
//!
//! The buffers and the message headers that point into them are allocated once and never move
//! (the vectors are never resized), so the raw pointers the kernel is handed stay valid.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{SockAddr, SockAddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest request kept; longer ones are truncated by the kernel and then fail to parse.
const MAX_REQUEST: usize = 4096;

/// Receive buffers and their headers.
pub struct Receiver {
    bufs: Vec<Vec<u8>>,
    /// Held only so that the headers' pointers into it stay valid.
    _iovs: Vec<libc::iovec>,
    addrs: Vec<SockAddrStorage>,
    msgs: Vec<libc::mmsghdr>,
}

// The raw pointers only point into the struct's own heap buffers.
unsafe impl Send for Receiver {}

impl Receiver {
    pub fn new() -> Self {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_REQUEST]).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY (the zeroed headers below): mmsghdr is a plain C struct; all-zero is valid.
        let mut addrs: Vec<SockAddrStorage> =
            (0..BATCH).map(|_| SockAddrStorage::zeroed()).collect();
        let msgs = (0..BATCH)
            .map(|i| {
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut addrs[i] as *mut SockAddrStorage).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Receiver {
            bufs,
            _iovs: iovs,
            addrs,
            msgs,
        }
    }

    /// Waits for datagrams and receives up to [`BATCH`]; returns how many.
    pub async fn recv(&mut self, udp: &UdpSocket) -> io::Result<usize> {
        loop {
            udp.readable().await?;
            for m in self.msgs.iter_mut() {
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_len = 0;
            }
            let fd = udp.as_raw_fd();
            let msgs = self.msgs.as_mut_ptr();
            // SAFETY: `msgs` holds BATCH headers pointing into live buffers owned by `self`.
            let res = udp.try_io(Interest::READABLE, || {
                let n = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs,
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The `i`th datagram of the last batch and where it came from.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let m = &self.msgs[i];
        let len = (m.msg_len as usize).min(self.bufs[i].len());
        // SAFETY: SockAddrStorage is plain old data (a C sockaddr_storage), so a bitwise copy is a
        // valid value; the kernel wrote `msg_namelen` bytes of an address into it.
        let addr = unsafe { SockAddr::new(std::ptr::read(&self.addrs[i]), m.msg_hdr.msg_namelen) };
        Some((&self.bufs[i][..len], addr.as_socket()?))
    }
}

/// One `sendmmsg` of `replies`; returns how many the kernel took.
fn try_send(udp: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let addrs: Vec<SockAddr> = replies.iter().map(|(_, a)| SockAddr::from(*a)).collect();
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..replies.len())
        .map(|i| {
            // SAFETY: all-zero is a valid mmsghdr; the pointers set below outlive the call.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_name = addrs[i].as_ptr().cast_mut().cast();
            m.msg_hdr.msg_namelen = addrs[i].len();
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let fd = udp.as_raw_fd();
    udp.try_io(Interest::WRITABLE, || {
        // SAFETY: `msgs` holds `msgs.len()` headers whose buffers and addresses are alive here.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

/// Sends `replies` (datagram, destination) with as few `sendmmsg` calls as it takes.
pub async fn send_all(udp: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
    let mut sent = 0;
    while sent < replies.len() {
        match try_send(udp, &replies[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if udp.writable().await.is_err() {
                    break;
                }
            }
            // A reply that cannot be sent (an unreachable peer) is skipped, not retried.
            Err(_) => sent += 1,
        }
    }
}
