//! The agent's metrics, in Prometheus text format, with kube-proxy's names where one exists, and
//! the kube-proxy-style `/healthz`.

use std::fmt::Write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use switchyard_proxy::metrics::Histogram;

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a published snapshot may wait to be applied before `/healthz` fails.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Query types counted by name; the rest count as "other".
const DNS_TYPES: [(u16, &str); 8] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (12, "PTR"),
    (16, "TXT"),
    (5, "CNAME"),
    (6, "SOA"),
    (0, "other"),
];
const RCODES: [(u16, &str); 7] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (u16::MAX, "other"),
];

/// CoreDNS's metrics for the cluster DNS.
#[derive(Default)]
pub struct DnsMetrics {
    /// [proto: udp, tcp][family: 1 (IPv4), 2 (IPv6)][type]
    requests: [[[AtomicU64; 8]; 2]; 2],
    responses: [AtomicU64; 7],
    duration: Histogram,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl DnsMetrics {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n# TYPE coredns_dns_requests_total counter");
        for (p, proto) in ["udp", "tcp"].iter().enumerate() {
            for (f, family) in ["1", "2"].iter().enumerate() {
                for (t, (_, name)) in DNS_TYPES.iter().enumerate() {
                    let v = self.requests[p][f][t].load(Ordering::Relaxed);
                    if v > 0 {
                        let _ = writeln!(out, "coredns_dns_requests_total{{server=\"dns\",zone=\".\",proto=\"{proto}\",family=\"{family}\",type=\"{name}\"}} {v}");
                    }
                }
            }
        }
        let _ = writeln!(out, "# HELP coredns_dns_responses_total Counter of response status codes.\n# TYPE coredns_dns_responses_total counter");
        for (i, (_, name)) in RCODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "coredns_dns_responses_total{{server=\"dns\",zone=\".\",rcode=\"{name}\"}} {}",
                self.responses[i].load(Ordering::Relaxed)
            );
        }
        self.duration.render(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            out,
        );
        let _ = writeln!(out, "# HELP coredns_cache_hits_total The count of cache hits.\n# TYPE coredns_cache_hits_total counter\ncoredns_cache_hits_total{{server=\"dns\"}} {}", self.cache_hits.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP coredns_cache_misses_total The count of cache misses.\n# TYPE coredns_cache_misses_total counter\ncoredns_cache_misses_total{{server=\"dns\"}} {}", self.cache_misses.load(Ordering::Relaxed));
    }
}

impl switchyard_dns::server::Observer for Metrics {
    fn served(&self, s: switchyard_dns::server::Served) {
        let d = &self.dns;
        let t = DNS_TYPES
            .iter()
            .position(|(code, _)| *code == s.qtype)
            .unwrap_or(DNS_TYPES.len() - 1);
        d.requests[usize::from(s.tcp)][usize::from(s.ipv6)][t].fetch_add(1, Ordering::Relaxed);
        let r = RCODES
            .iter()
            .position(|(code, _)| *code == s.rcode)
            .unwrap_or(RCODES.len() - 1);
        d.responses[r].fetch_add(1, Ordering::Relaxed);
        d.duration.observe(s.duration);
        match s.cache_hit {
            Some(true) => d.cache_hits.fetch_add(1, Ordering::Relaxed),
            Some(false) => d.cache_misses.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }
}

/// How long each stage of the path from a cluster change to the kernel takes, so that a slow
/// one shows: `switchyard_agent_stage_duration_seconds{stage}`.
pub struct Stages {
    /// From the change (an EndpointSlice's trigger time) to the agent receiving it.
    pub receive: Histogram,
    /// Taking a batch of watch events into the cluster state.
    pub apply: Histogram,
    /// Building the snapshot's views from the state.
    pub build: Histogram,
    /// From publishing a snapshot to the proxy programmer starting on it.
    pub wait: Histogram,
    /// Programming the kernel (or the userspace proxy).
    pub program: Histogram,
}

impl Default for Stages {
    fn default() -> Self {
        let h = || Histogram::new(switchyard_proxy::metrics::REQUEST_BUCKETS);
        Stages {
            receive: h(),
            apply: h(),
            build: h(),
            wait: h(),
            program: h(),
        }
    }
}

impl Stages {
    fn render(&self, out: &mut String) {
        let name = "switchyard_agent_stage_duration_seconds";
        switchyard_proxy::metrics::header(
            name,
            "Time spent in each stage from a cluster change to the data plane",
            "histogram",
            out,
        );
        for (stage, h) in [
            ("receive", &self.receive),
            ("apply", &self.apply),
            ("build", &self.build),
            ("wait", &self.wait),
            ("program", &self.program),
        ] {
            h.render_series(name, &format!("stage=\"{stage}\""), out);
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub stages: Stages,
    pub dns: DnsMetrics,
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
    frontends: AtomicU64,
    /// The ingress router, whose metrics are served here too.
    pub ingress: std::sync::OnceLock<std::sync::Arc<switchyard_proxy::router::Router>>,
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

    pub fn applied(&self, generation: u64, took: Duration, frontends: usize) {
        self.sync_duration.observe(took);
        self.applied.store(generation, Ordering::Relaxed);
        self.last_sync_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
        self.frontends.store(frontends as u64, Ordering::Relaxed);
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
        self.stages.render(&mut out);
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
                "switchyard_proxy_frontends",
                "Frontends (address, port, protocol) the service proxy serves",
                self.frontends.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.dns.render(&mut out);
        if let Some(router) = self.ingress.get() {
            router.render_metrics(&mut out);
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
    fn every_stage_is_a_series() {
        let m = Metrics::default();
        m.stages.wait.observe(Duration::from_micros(300));
        let text = m.render();
        for stage in ["receive", "apply", "build", "wait", "program"] {
            assert!(
                text.contains(&format!(
                    "switchyard_agent_stage_duration_seconds_count{{stage=\"{stage}\"}}"
                )),
                "{stage}: {text}"
            );
        }
        assert!(text.contains(
            "switchyard_agent_stage_duration_seconds_bucket{stage=\"wait\",le=\"0.0005\"} 1\n"
        ));
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
