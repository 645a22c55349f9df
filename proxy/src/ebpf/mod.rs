//! The eBPF proxy: ClusterIPs translated at the socket, as Cilium's kube-proxy replacement does.
//!
//! The programs of [`switchyard_ebpf`] attach to a cgroup v2 (`--cgroup-path`; by default the
//! root, where [`cgroup2_mount`] finds it in `/proc/self/mountinfo`) and rewrite a ClusterIP destination to a backend when a socket connects or sends,
//! so service traffic has no per-packet NAT and no conntrack, and a lookup is one hash-map
//! lookup at any number of services.
//!
//! - [`plan`]: the map contents as a function of the service table and the ordered writes
//!   between two of them (unit-tested against a model of the maps).
//! - [`sockets`]: connected UDP sockets moved off a backend that left their service.
//! - [`EbpfProxy`]: loads and attaches the programs, pins maps and links under the pin
//!   directory (so a restarted agent finds them, and traffic never stops while it is down),
//!   adopts what the maps hold, and applies each plan.
//! - The hybrid: NodePorts, external and load-balancer IPs, and SCTP — traffic that does not
//!   start in a local socket, or that the programs do not translate — stay with the iptables
//!   proxy, which gets a table without the ClusterIPs the programs serve.
//! - [`cleanup`] unpins (and so detaches and frees) everything.

mod bpf;
mod plan;
mod sockets;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData};
use std::os::fd::{AsFd, BorrowedFd};

use aya::programs::links::PinnedLink;
use aya::programs::CgroupSockAddr;
use aya::EbpfLoader;
use switchyard_ebpf::{
    Backend, RevKey, RevValue, ServiceKey, ServiceValue, BACKENDS, MAPS, OBJECT, PROGRAMS, REV_NAT,
    SERVICES,
};

use crate::iptables::{IptablesError, IptablesProxy};
use crate::table::{Protocol, ServicePort, ServicePortName, ServiceTable};
use crate::SyncReport;
use plan::{Plan, Puts, State};

/// Where the maps and links are pinned unless `--bpf-pin-path` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/switchyard";

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct Config {
    /// The cgroup v2 directory whose processes (and their descendants') sockets are translated;
    /// `None`: the cgroup v2 root, found in `/proc/self/mountinfo` ([`cgroup2_mount`]).
    pub cgroup: Option<PathBuf>,
    /// A directory on a bpffs for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// The iptables proxy for what the programs do not serve; `None`: ClusterIPs only.
    pub iptables: Option<crate::iptables::Config>,
}

/// Runs of map writes at least this long are split over two threads.
const PARALLEL_RUN: usize = 16_384;

const FALLBACK: &str = "or run with --proxy-mode iptables";

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("{path}: {message}; {FALLBACK}")]
    Setup { path: PathBuf, message: String },
    #[error("the kernel refused the BPF programs: {0}; {FALLBACK}")]
    Load(String),
    #[error("BPF map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error(transparent)]
    Iptables(#[from] IptablesError),
}

fn setup(path: &Path, message: impl Into<String>) -> EbpfError {
    EbpfError::Setup {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        message: chain(&e),
    }
}

/// An error with its sources, which aya keeps the useful part in.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn fs_type(path: &Path) -> io::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Where the cgroup v2 hierarchy is mounted, from the text of a `/proc/PID/mountinfo`: on a pure
/// v2 host `/sys/fs/cgroup`, on a hybrid one (v1 controllers beside v2) `/sys/fs/cgroup/unified`.
/// A mount under `/sys/fs/cgroup` is preferred to one elsewhere. The error names what was found.
pub fn cgroup2_mount(mountinfo: &str) -> Result<PathBuf, String> {
    // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
    let mounts: Vec<(&str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            Some((
                right.split(' ').next()?,
                PathBuf::from(unescape_mount(point)),
            ))
        })
        .collect();
    let v2 = || {
        mounts
            .iter()
            .filter(|(t, _)| *t == "cgroup2")
            .map(|(_, p)| p)
    };
    let standard = Path::new("/sys/fs/cgroup");
    if let Some(p) = v2()
        .find(|p| p.starts_with(standard))
        .or_else(|| v2().next())
    {
        return Ok(p.clone());
    }
    let v1: Vec<String> = mounts
        .iter()
        .filter(|(t, _)| *t == "cgroup")
        .map(|(_, p)| p.display().to_string())
        .collect();
    Err(if v1.is_empty() {
        "no cgroup v2 mount (and no cgroup mount at all) in /proc/self/mountinfo; mount one with `mount -t cgroup2 none /sys/fs/cgroup`, or pass --cgroup-path".into()
    } else {
        format!(
            "no cgroup v2 mount in /proc/self/mountinfo, only cgroup v1 at {}; mount one with `mount -t cgroup2 none DIR` and pass --cgroup-path DIR",
            v1.join(", ")
        )
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup the programs attach to: the configured one, or the cgroup v2 root.
fn cgroup_dir(config: &Config) -> Result<PathBuf, EbpfError> {
    if let Some(c) = &config.cgroup {
        return Ok(c.clone());
    }
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| setup(info, e.to_string()))?;
    cgroup2_mount(&text).map_err(|m| setup(info, m))
}

/// What the kernel must offer, checked before anything is loaded, with what to do about it.
fn check(config: &Config, cgroup: &Path) -> Result<(), EbpfError> {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        return Err(setup(
            btf,
            "the kernel has no BTF (CONFIG_DEBUG_INFO_BTF), which the eBPF proxy needs",
        ));
    }
    match fs_type(cgroup) {
        Ok(CGROUP2_SUPER_MAGIC) => {}
        Ok(_) => {
            return Err(setup(
                cgroup,
                "not a cgroup v2 directory (mount one with `mount -t cgroup2 none DIR`, and pass --cgroup-path)",
            ))
        }
        Err(e) => return Err(setup(cgroup, format!("cgroup v2 directory: {e}"))),
    }
    let parent = config.pin_dir.parent().unwrap_or(Path::new("/"));
    let on_bpffs = || fs_type(&config.pin_dir).or_else(|_| fs_type(parent));
    if parent == Path::new(BPFFS) && on_bpffs().is_ok_and(|t| t != BPF_FS_MAGIC) {
        // The standard mount point, not mounted (systemd usually does it): mount it, as
        // Cilium does.
        mount_bpffs().map_err(|e| setup(parent, format!("mounting a bpffs: {e}")))?;
    }
    match on_bpffs() {
        Ok(BPF_FS_MAGIC) => {}
        Ok(_) => {
            return Err(setup(
                &config.pin_dir,
                "not on a BPF filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`, or pass --bpf-pin-path)",
            ))
        }
        Err(e) => return Err(setup(&config.pin_dir, format!("pin directory: {e}"))),
    }
    Ok(())
}

const BPFFS: &str = "/sys/fs/bpf";

fn mount_bpffs() -> io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("bpf"), c(BPFFS), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_path(pin_dir: &Path, hook: &str) -> PathBuf {
    pin_dir.join(format!("link-{hook}"))
}

struct Maps {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, u32, Backend>,
    rev_nat: BpfHashMap<MapData, RevKey, RevValue>,
}

/// Loads the programs with the pinned maps (reusing maps a previous run pinned), attaches them
/// to the cgroup and pins the links; links a previous run pinned are replaced only after the
/// new ones are attached, so there is no moment without translation.
fn load(config: &Config) -> Result<Maps, EbpfError> {
    let cgroup_path = cgroup_dir(config)?;
    check(config, &cgroup_path)?;
    std::fs::create_dir_all(&config.pin_dir).map_err(|e| setup(&config.pin_dir, e.to_string()))?;
    let mut bpf = EbpfLoader::new()
        .map_pin_path(&config.pin_dir)
        .load(OBJECT)
        .map_err(|e| load_error(&e))?;
    let cgroup = File::open(&cgroup_path).map_err(|e| setup(&cgroup_path, e.to_string()))?;
    let mut old = Vec::new();
    for p in PROGRAMS {
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(p.name)
            .ok_or_else(|| EbpfError::Load(format!("{} is not in the object", p.name)))?
            .try_into()
            .map_err(|e| load_error(&e))?;
        prog.load().map_err(|e| load_error(&e))?;
        let prog_fd = prog.fd().map_err(|e| load_error(&e))?;
        // aya cannot hand over a cgroup link to be pinned, so the link is made here.
        let link = bpf::link_create(prog_fd.as_fd(), cgroup.as_fd(), p.attach_type)
            .map_err(|e| load_error(&e))?;
        let path = link_path(&config.pin_dir, p.hook);
        if path.exists() {
            // Keep the previous link attached (its descriptor open) until ours is pinned.
            let prev = PinnedLink::from_pin(&path)
                .map_err(|e| load_error(&e))?
                .unpin()
                .map_err(|e| setup(&path, e.to_string()))?;
            old.push(prev);
        }
        bpf::pin(link.as_fd(), &path).map_err(|e| setup(&path, e.to_string()))?;
    }
    drop(old);
    let mut take = |name: &'static str| {
        bpf.take_map(name).ok_or_else(|| EbpfError::Map {
            map: name,
            message: "not in the object".into(),
        })
    };
    let services = take(SERVICES)?;
    let backends = take(BACKENDS)?;
    let rev_nat = take(REV_NAT)?;
    Ok(Maps {
        services: BpfHashMap::try_from(services).map_err(map_error(SERVICES))?,
        backends: BpfHashMap::try_from(backends).map_err(map_error(BACKENDS))?,
        rev_nat: BpfHashMap::try_from(rev_nat).map_err(map_error(REV_NAT))?,
    })
}

fn load_error(e: &dyn std::error::Error) -> EbpfError {
    let text = chain(e);
    if text.contains("Operation not permitted") {
        return EbpfError::Load(format!(
            "{text} (loading BPF programs needs root, or CAP_BPF with CAP_NET_ADMIN)"
        ));
    }
    EbpfError::Load(text)
}

fn fail(map: &'static str) -> impl Fn(io::Error) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        message: e.to_string(),
    }
}

/// `f` over `0..len`, split in two halves on two threads when `len` is long.
fn halves(
    len: usize,
    f: impl Fn(std::ops::Range<usize>) -> io::Result<()> + Sync,
) -> io::Result<()> {
    if len < PARALLEL_RUN {
        return f(0..len);
    }
    let mid = len / 2;
    std::thread::scope(|s| {
        let other = s.spawn(|| f(mid..len));
        let here = f(0..mid);
        here.and(
            other
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a map writer thread panicked"))),
        )
    })
}

fn put<K: Copy + Sync, V: Copy + Sync>(map: BorrowedFd<'_>, p: &Puts<K, V>) -> io::Result<()> {
    halves(p.keys.len(), |r| {
        bpf::update_batch(map, &p.keys[r.clone()], &p.values[r])
    })
}

fn delete<K: Copy + Sync>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    halves(keys.len(), |r| bpf::delete_batch(map, &keys[r]))
}

/// The eBPF proxy mode.
pub struct EbpfProxy {
    /// `None` only while a sync runs (or after one panicked: the next loads afresh).
    sock: Option<Sock>,
    config: Config,
    hybrid: Option<Hybrid>,
}

/// The socket half: the maps, and what they hold.
struct Sock {
    maps: Maps,
    /// `None` until the maps are read back, and again after a failed write.
    state: Option<State>,
}

/// The iptables half.
struct Hybrid {
    proxy: IptablesProxy,
    reduce: Reduce,
}

/// The table without the frontends the programs serve.
#[derive(Default)]
struct Reduce {
    /// Per port, the table's `Arc` and the reduced copy made from it, so an unchanged port keeps
    /// its `Arc` (and the iptables renderer its cache).
    ports: HashMap<(ServicePortName, Protocol), (Arc<ServicePort>, Arc<ServicePort>)>,
}

impl Reduce {
    /// The ports that still need iptables: SCTP ones whole; the others without their ClusterIPs,
    /// and only when something is left (a NodePort, an external or load-balancer IP).
    fn table(&mut self, table: &ServiceTable) -> ServiceTable {
        let mut ports = HashMap::new();
        let mut out = Vec::new();
        for p in &table.ports {
            let socket = plan::proto(p.protocol).is_some();
            if socket
                && p.node_port.is_none()
                && p.external_ips.is_empty()
                && p.load_balancer_ips.is_empty()
            {
                continue;
            }
            let key = (p.name.clone(), p.protocol);
            let reduced = match self.ports.remove(&key) {
                Some((orig, reduced)) if Arc::ptr_eq(&orig, p) => reduced,
                _ if !socket => p.clone(),
                _ => Arc::new(ServicePort {
                    cluster_ips: Vec::new(),
                    ..(**p).clone()
                }),
            };
            out.push(reduced.clone());
            ports.insert(key, (p.clone(), reduced));
        }
        self.ports = ports;
        ServiceTable { ports: out }
    }
}

impl EbpfProxy {
    /// Loads and attaches the programs; fails with what to do when the kernel refuses.
    pub fn new(config: Config) -> Result<Self, EbpfError> {
        let hybrid = match config.iptables.clone().map(IptablesProxy::new) {
            Some(Ok(proxy)) => Some(Hybrid {
                proxy,
                reduce: Reduce::default(),
            }),
            Some(Err(IptablesError::NotFound(why))) => {
                tracing::warn!(
                    %why,
                    "no iptables: the eBPF proxy serves ClusterIPs only (no NodePorts, external IPs or SCTP)"
                );
                None
            }
            Some(Err(e)) => return Err(e.into()),
            None => None,
        };
        Ok(EbpfProxy {
            sock: Some(Sock {
                maps: load(&config)?,
                state: None,
            }),
            config,
            hybrid,
        })
    }

    /// Programs `table`: the maps on a blocking thread and, meanwhile, the iptables half.
    pub async fn apply(&mut self, table: &ServiceTable) -> SyncReport {
        let sock = match self.sock.take() {
            Some(s) => Ok(s),
            None => load(&self.config).map(|maps| Sock { maps, state: None }),
        };
        let owned = table.clone();
        let maps = tokio::task::spawn_blocking(move || {
            let mut sock = sock?;
            let report = sock.sync(&owned);
            Ok::<_, EbpfError>((sock, report))
        });
        let iptables = async {
            match &mut self.hybrid {
                Some(h) => h.proxy.apply(&h.reduce.table(table)).await,
                None => SyncReport::default(),
            }
        };
        let (maps, iptables) = tokio::join!(maps, iptables);
        let mut report = match maps {
            Ok(Ok((sock, report))) => {
                self.sock = Some(sock);
                report
            }
            Ok(Err(e)) => SyncReport {
                errors: vec![e.to_string()],
                ..Default::default()
            },
            Err(e) => SyncReport {
                errors: vec![format!("BPF map sync failed: {e}")],
                ..Default::default()
            },
        };
        report.frontends += iptables.frontends;
        report.errors.extend(iptables.errors);
        report
    }
}

impl Sock {
    fn adopt(&self) -> Result<State, EbpfError> {
        let services: Result<Vec<_>, _> = self.maps.services.iter().collect();
        let backends: Result<Vec<_>, _> = self.maps.backends.iter().collect();
        Ok(State::adopt(
            services.map_err(map_error(SERVICES))?,
            backends.map_err(map_error(BACKENDS))?,
        ))
    }

    /// Writes the plan in its order, each part as one batch (or two at once on two threads
    /// when it is long: a full load).
    fn write(&self, plan: &Plan) -> Result<(), EbpfError> {
        let services = self.maps.services.map().fd().as_fd();
        let backends = self.maps.backends.map().fd().as_fd();
        put(backends, &plan.backends_put).map_err(fail(BACKENDS))?;
        put(services, &plan.slots_put).map_err(fail(SERVICES))?;
        put(services, &plan.frontends_put).map_err(fail(SERVICES))?;
        delete(services, &plan.frontends_del).map_err(fail(SERVICES))?;
        delete(services, &plan.slots_del).map_err(fail(SERVICES))?;
        delete(backends, &plan.backends_del).map_err(fail(BACKENDS))
    }

    /// Brings the maps to `table`, then moves UDP sockets off backends that left.
    fn sync(&mut self, table: &ServiceTable) -> SyncReport {
        let mut report = SyncReport::default();
        let mut state = match self.state.take() {
            Some(s) => s,
            None => match self.adopt() {
                Ok(s) => s,
                Err(e) => {
                    report.errors.push(e.to_string());
                    return report;
                }
            },
        };
        let plan = state.plan(table);
        report.frontends = plan.frontends;
        if let Err(e) = self.write(&plan) {
            // The maps are read back on the next sync.
            report.errors.push(e.to_string());
            return report;
        }
        self.state = Some(state);
        report.added = plan.len();
        if !plan.udp_gone.is_empty() {
            let rev = &self.maps.rev_nat;
            let moved = sockets::move_off(&plan.udp_gone, |k| rev.get(k, 0).ok());
            if moved.destroyed > 0 {
                tracing::info!(
                    sockets = moved.destroyed,
                    "UDP sockets moved off removed backends"
                );
            }
            report.errors.extend(moved.errors);
        }
        report
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub links: usize,
    pub maps: usize,
}

/// Detaches the programs and frees the maps by removing their pins (and the pin directory,
/// when nothing else is in it).
pub fn cleanup(pin_dir: &Path) -> Result<Cleanup, EbpfError> {
    let mut done = Cleanup::default();
    if !pin_dir.exists() {
        return Ok(done);
    }
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(setup(path, e.to_string())),
    };
    for p in PROGRAMS {
        done.links += remove(&link_path(pin_dir, p.hook))? as usize;
    }
    for m in MAPS {
        done.maps += remove(&pin_dir.join(m))? as usize;
    }
    // Only an empty directory goes: it may be shared with something else.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(done)
}

impl crate::ServiceProxy for EbpfProxy {
    fn apply<'a>(&'a mut self, table: &'a ServiceTable) -> crate::ProxyFuture<'a, SyncReport> {
        Box::pin(EbpfProxy::apply(self, table))
    }
}

#[cfg(test)]
mod kernel_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Endpoint;

    fn port(name: &str, protocol: Protocol) -> Arc<ServicePort> {
        Arc::new(ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: String::new(),
            },
            protocol,
            port: 80,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity: None,
            internal_local: false,
            external_local: false,
            endpoints: vec![Endpoint {
                addr: "10.0.0.1:80".parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            }],
        })
    }

    #[test]
    fn iptables_gets_what_the_socket_programs_do_not_serve() {
        let cluster_only = port("cluster", Protocol::Tcp);
        let sctp = port("sctp", Protocol::Sctp);
        let mut np = (*port("np", Protocol::Udp)).clone();
        np.node_port = Some(30053);
        let np = Arc::new(np);
        let table = ServiceTable {
            ports: vec![cluster_only, sctp.clone(), np.clone()],
        };
        let mut r = Reduce::default();
        let reduced = r.table(&table);
        assert_eq!(reduced.ports.len(), 2);
        assert!(Arc::ptr_eq(&reduced.ports[0], &sctp), "SCTP goes whole");
        assert!(reduced.ports[1].cluster_ips.is_empty());
        assert_eq!(reduced.ports[1].node_port, Some(30053));
        // An unchanged port keeps its reduced Arc (the iptables renderer caches by it).
        let again = r.table(&table);
        assert!(Arc::ptr_eq(&again.ports[1], &reduced.ports[1]));
    }

    /// Mountinfo as these hosts print it (one line per mount, trimmed to what matters).
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
26 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_cgroup2_root_is_found_on_pure_and_hybrid_hosts() {
        assert_eq!(cgroup2_mount(PURE_V2), Ok(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_mount(HYBRID),
            Ok(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // A second cgroup2 mount elsewhere (a test's, a container runtime's) is not the root.
        let both = format!("50 22 0:23 / /tmp/a\\040b rw - cgroup2 none rw\n{PURE_V2}");
        assert_eq!(cgroup2_mount(&both), Ok(PathBuf::from("/sys/fs/cgroup")));
        let elsewhere = "50 22 0:23 / /tmp/a\\040b rw shared:9 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(elsewhere), Ok(PathBuf::from("/tmp/a b")));
    }

    #[test]
    fn without_cgroup2_the_error_names_what_was_found() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = cgroup2_mount(&v1_only).unwrap_err();
        assert!(
            err.contains("only cgroup v1 at /sys/fs/cgroup/cpu, /sys/fs/cgroup/systemd"),
            "{err}"
        );
        assert!(err.contains("--cgroup-path"), "{err}");
        let err = cgroup2_mount("garbage\n\n- - -\n").unwrap_err();
        assert!(err.contains("no cgroup mount at all"), "{err}");
    }
}
