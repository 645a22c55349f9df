//! The data plane's proxies for Switchyard (the `switchyard-proxy` crate): the L4 service proxy
//! modes and the L7 router.
//!
//! This crate knows no Kubernetes types; it consumes view types that the node agent builds, and
//! depends only on `switchyard-ebpf` (the BPF programs and their map ABI).
//!
//! L4, behind one trait, [`ServiceProxy`] (what the agent's programmer calls), each consuming a
//! [`ServiceTable`](table::ServiceTable):
//! - [`table`]: the service table — every service port with its frontends (ClusterIPs,
//!   NodePort, external and load-balancer IPs) and endpoints — and the endpoint selection rules
//!   shared by every mode;
//! - [`iptables`]: programs the kernel's NAT tables;
//! - [`ebpf`]: translates ClusterIPs at the socket with the programs of `switchyard-ebpf` (and
//!   keeps iptables for what arrives from outside);
//! - [`userspace`]: moves the bytes itself where the kernel cannot be programmed.
//!
//! L7:
//! - [`router`]: the HTTP router (Ingress v1 today), which consumes a
//!   [`RouteTable`](router::routes::RouteTable) and never sees the L4 modes.
//!
//! Shared: [`metrics`], the Prometheus histogram both the agent and the router use.

pub mod ebpf;
pub mod iptables;
pub mod metrics;
pub mod nftables;
pub mod router;
pub mod table;
pub mod userspace;

/// For the tests that need root or a kernel feature.
#[cfg(test)]
pub(crate) mod testing {
    /// Whether this process runs as root.
    pub fn root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
    }

    /// Says why the calling test skips (the caller returns); under `CI=true` no test may skip,
    /// so this fails the test with the reason instead.
    pub fn skip(why: &str) {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "cannot run under CI: {why}");
        eprintln!("skipped: {why}");
    }

    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Runs `f` on a thread inside a new network namespace (so are the processes it starts);
    /// false (after [`skip`]) when there can be none.
    pub fn in_netns(f: impl FnOnce() + Send + 'static) -> bool {
        use std::os::fd::AsRawFd;
        use std::process::Command;
        if !root() {
            skip("network namespaces need root");
            return false;
        }
        let name = format!(
            "sy-proxy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        if !ok.is_ok_and(|s| s.success()) {
            skip("cannot create a network namespace");
            return false;
        }
        let path = format!("/var/run/netns/{name}");
        let result = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join();
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        true
    }

    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Compares `actual` with `src/<dir>/golden/<name>`; `SY_UPDATE_GOLDEN=1` rewrites the file
    /// after a deliberate change (review the diff).
    pub fn golden(dir: &str, name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(dir)
            .join("golden")
            .join(name);
        if std::env::var_os("SY_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (SY_UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            expected == actual,
            "{name} differs from the golden file; actual:\n{actual}"
        );
    }
}

/// A future a [`ServiceProxy`] returns.
pub type ProxyFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the node agent's programmer calls on an L4 service proxy, whatever its mode: a new mode
/// is one more implementation.
pub trait ServiceProxy: Send {
    /// Makes the data plane serve `table`, writing only what differs from what it serves now.
    /// What could not be programmed is in the report's errors and is retried on the next call.
    fn apply<'a>(&'a mut self, table: &'a table::ServiceTable) -> ProxyFuture<'a, SyncReport>;

    /// The agent is stopping. Kernel modes leave their rules in place, so traffic keeps flowing
    /// until the next agent adopts them; a proxy that moves the bytes itself stops here.
    fn shutdown(&mut self) -> ProxyFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What one proxy sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Frontends (address, port, protocol) being served.
    pub frontends: usize,
    /// Listeners opened, chains written, or BPF map entries written or deleted.
    pub added: usize,
    /// Listeners closed, or chains deleted.
    pub removed: usize,
    /// What could not be programmed, with why; retried on the next sync.
    pub errors: Vec<String>,
}
