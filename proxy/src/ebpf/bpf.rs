//! The two bpf(2) commands aya does not offer for cgroup programs: creating a link whose
//! descriptor we keep, and pinning it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `union bpf_attr`, zeroed; the kernel rejects non-zero bytes it does not know.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn put_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, v: u64) {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: `self` is a valid, fully initialised bpf_attr of the size passed.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }
}

/// BPF_LINK_CREATE: attaches `prog` to the cgroup `target` (links always allow others beside
/// them). The program stays attached while the link's descriptor or a pin of it lives.
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(4, target.as_raw_fd() as u32);
    a.put_u32(8, attach_type);
    let fd = a.call(BPF_LINK_CREATE)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: `fd` at `path` on a bpffs.
pub(super) fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    a.put_u32(8, fd.as_raw_fd() as u32);
    a.call(BPF_OBJ_PIN)?;
    Ok(())
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`: keys (and values) as arrays, applied in order.
fn batch(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: u64,
    values: u64,
    count: usize,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u64(16, keys);
    a.put_u64(24, values);
    a.put_u32(32, count as u32);
    a.put_u32(36, map.as_raw_fd() as u32);
    a.call(cmd).map(drop)
}

/// BPF_MAP_UPDATE_BATCH: `keys[i] -> values[i]`, in order (a failure stops at that element).
/// `K` and `V` must be the map's `#[repr(C)]` key and value types.
pub(super) fn update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    batch(
        BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len(),
    )
}

/// BPF_MAP_DELETE_BATCH: every key, in order; a missing key is an error (ENOENT).
pub(super) fn delete_batch<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    batch(
        BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr() as u64,
        0,
        keys.len(),
    )
}
