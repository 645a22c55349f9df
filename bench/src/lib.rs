//! Benchmarks for Switchyard: the shared measuring pieces, and (under `src/bin/`) the benchmark
//! programs that print the figures `bench/README.md` records. The product never depends on this
//! crate; the benchmarks drive the built `switchyard` binary (and `switchyard load`) as users do.

pub mod api;
pub mod cgroup;
pub mod netns;
pub mod peers;
pub mod services;

/// A minimal DNS query for `name` A, with id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The quantile of a Prometheus histogram in the text format, by linear interpolation in its
/// bucket (what `histogram_quantile` does).
pub fn metric_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    series_quantile(text, name, "", q)
}

/// [`metric_quantile`] of the series with `labels` (`a="x"`, or empty).
pub fn series_quantile(text: &str, name: &str, labels: &str, q: f64) -> Option<f64> {
    let sep = if labels.is_empty() { "" } else { "," };
    let prefix = format!("{name}_bucket{{{labels}{sep}le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, v) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1).max(1e-9));
        }
        prev = (le, count);
    }
    None
}

/// A plain HTTP/1.0 GET on loopback (metrics endpoints).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Prints the agent's own network programming latency (trigger time -> proxy synced), read from
/// its metrics on `port` and interpolated in the histogram's buckets.
pub async fn print_programming_metric(port: u16) -> anyhow::Result<()> {
    let text = http_get(port, "/metrics").await?;
    let name = "kubeproxy_network_programming_duration_seconds";
    if let (Some(p50), Some(p99)) = (
        metric_quantile(&text, name, 0.5),
        metric_quantile(&text, name, 0.99),
    ) {
        println!(
            "agent metric {name} (trigger time -> proxy synced; bucket-interpolated): p50 {:.2} ms, p99 {:.2} ms",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
    Ok(())
}

/// Latency samples in microseconds, kept whole so that quantiles are exact.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, micros: u64) {
        self.values.push(micros);
        self.sorted = false;
    }

    pub fn count(&self) -> usize {
        self.values.len()
    }

    /// Adds every sample of `other`.
    pub fn append(&mut self, mut other: Samples) {
        self.values.append(&mut other.values);
        self.sorted = false;
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
    }

    /// The value below which a fraction `q` of the samples fall (nearest rank); 0 when empty.
    pub fn quantile(&mut self, q: f64) -> u64 {
        self.sort();
        if self.values.is_empty() {
            return 0;
        }
        let rank = ((q * self.values.len() as f64).ceil() as usize).clamp(1, self.values.len());
        self.values[rank - 1]
    }

    pub fn max(&mut self) -> u64 {
        self.sort();
        self.values.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::new();
        for v in (1..=100).rev() {
            s.record(v);
        }
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(s.max(), 100);
        assert_eq!(Samples::new().quantile(0.5), 0);
    }
}
