//! Service proxy modes and the ingress router for Switchyard (the `switchyard-proxy` crate).
//!
//! This crate knows no Kubernetes types. It consumes view types built by the node agent:
//! - [`table`]: the [`ServiceTable`](table::ServiceTable) — every service port with its
//!   frontends (ClusterIPs, NodePort, external and load-balancer IPs) and endpoints — and the
//!   endpoint selection rules shared by every proxy mode;
//! - [`iptables`]: the iptables proxy, which programs the kernel's NAT tables;
//! - [`ebpf`]: the eBPF proxy, which translates ClusterIPs at the socket with the programs of
//!   `switchyard-ebpf` (and keeps iptables for what arrives from outside);
//! - [`userspace`]: the userspace proxy, which moves the bytes itself where the kernel cannot be
//!   programmed;
//! - [`ingress`]: the HTTP ingress router, which consumes a [`RouteTable`](ingress::routes::RouteTable);
//! - [`metrics`]: the Prometheus histogram both the agent and the router use.

pub mod ebpf;
pub mod ingress;
pub mod iptables;
pub mod metrics;
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
