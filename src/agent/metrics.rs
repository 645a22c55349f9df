//! The agent's metrics, in Prometheus text format, with kube-proxy's names where one exists, and
//! the kube-proxy-style `/healthz`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Buckets in seconds (kube-proxy's exponential buckets from 1 ms).
const BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

pub struct Histogram {
    counts: [AtomicU64; 15],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            counts: [const { AtomicU64::new(0) }; 15],
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a published snapshot may wait to be applied before `/healthz` fails.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Metrics {
    /// kubeproxy_sync_proxy_rules_duration_seconds
    pub sync_duration: Histogram,
    /// kubeproxy_network_programming_duration_seconds
    pub programming: Histogram,
    /// switchyard_snapshot_build_duration_seconds
    pub build_duration: Histogram,
    /// kubeproxy_sync_proxy_rules_last_timestamp_seconds (unix ms)
    last_sync_ms: AtomicU64,
    published: AtomicU64,
    applied: AtomicU64,
    /// When the oldest snapshot not yet applied was published (unix ms; 0: none pending).
    pending_since_ms: AtomicU64,
    pub sync_errors: AtomicU64,
    service_ports: AtomicU64,
    endpoints: AtomicU64,
    listeners: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Metrics {
    pub fn published(&self, generation: u64, service_ports: usize, endpoints: usize) {
        self.published.store(generation, Ordering::Relaxed);
        let _ = self.pending_since_ms.compare_exchange(
            0,
            unix_millis(SystemTime::now()),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.service_ports
            .store(service_ports as u64, Ordering::Relaxed);
        self.endpoints.store(endpoints as u64, Ordering::Relaxed);
    }

    pub fn applied(&self, generation: u64, took: Duration, listeners: usize) {
        self.sync_duration.observe(took);
        self.applied.store(generation, Ordering::Relaxed);
        self.last_sync_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
        self.listeners.store(listeners as u64, Ordering::Relaxed);
        if generation >= self.published.load(Ordering::Relaxed) {
            self.pending_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// kube-proxy's rule: healthy once synced, unless a change has waited too long.
    pub fn healthy(&self) -> bool {
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let now = unix_millis(SystemTime::now());
        self.applied.load(Ordering::Relaxed) > 0
            && (pending == 0 || now.saturating_sub(pending) < HEALTH_TIMEOUT.as_millis() as u64)
    }

    pub fn healthz_body(&self) -> String {
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        format!(
            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"}}",
            crate::time::rfc3339(UNIX_EPOCH + Duration::from_millis(last)),
            crate::time::now()
        )
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.sync_duration.render(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            &mut out,
        );
        self.programming.render(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            &mut out,
        );
        self.build_duration.render(
            "switchyard_snapshot_build_duration_seconds",
            "Time to build a snapshot from the cluster state",
            &mut out,
        );
        let gauges = [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                self.last_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            (
                "switchyard_snapshot_generation",
                "The generation of the newest snapshot",
                self.published.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_proxy_applied_generation",
                "The snapshot generation the service proxy runs",
                self.applied.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_service_ports",
                "Service ports in the newest snapshot",
                self.service_ports.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_endpoints",
                "Endpoints in the newest snapshot",
                self.endpoints.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_userspace_listeners",
                "Sockets the userspace proxy listens on",
                self.listeners.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let errors = self.sync_errors.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP switchyard_proxy_sync_errors_total Proxy syncs that left something unprogrammed\n# TYPE switchyard_proxy_sync_errors_total counter\nswitchyard_proxy_sync_errors_total {errors}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.sync_duration.observe(Duration::from_micros(500));
        m.sync_duration.observe(Duration::from_millis(3));
        m.sync_duration.observe(Duration::from_secs(100));
        let text = m.render();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 2\n")
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 3\n"));
    }

    #[test]
    fn health_follows_syncs() {
        let m = Metrics::default();
        assert!(!m.healthy(), "never synced");
        m.published(1, 0, 0);
        m.applied(1, Duration::from_millis(1), 0);
        assert!(m.healthy());
        m.published(2, 0, 0);
        assert!(m.healthy(), "a fresh change is not yet a failure");
    }
}
