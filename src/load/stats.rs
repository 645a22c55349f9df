//! What a run measured: one [`Recorder`] per connection task, merged into a [`Report`] that
//! prints as text, as JSON (a stable schema, `switchyard-load/v1`) or as an SVG plot of the
//! latency percentiles.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection could not be made (refused, unreachable, TLS handshake failed).
    Connect,
    /// No answer within `--timeout`.
    Timeout,
    /// The peer closed or reset the connection mid-request.
    Reset,
    /// The answer was not valid HTTP (or DNS).
    Protocol,
}

const CLASSES: [(ErrorClass, &str); 4] = [
    (ErrorClass::Connect, "connect"),
    (ErrorClass::Timeout, "timeout"),
    (ErrorClass::Reset, "reset"),
    (ErrorClass::Protocol, "protocol"),
];

impl ErrorClass {
    /// The class of an I/O error on an established connection.
    pub fn of(e: &std::io::Error) -> ErrorClass {
        use std::io::ErrorKind::*;
        match e.kind() {
            TimedOut => ErrorClass::Timeout,
            InvalidData => ErrorClass::Protocol,
            _ => ErrorClass::Reset,
        }
    }
}

/// Latency is recorded in microseconds, 1 µs to 1 hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub struct Recorder {
    pub latency: Histogram<u64>,
    /// HTTP status codes, DNS response codes, or `connected`.
    pub status: BTreeMap<String, u64>,
    pub errors: [u64; 4],
    /// Responses per backend (header value or peer address).
    pub backends: BTreeMap<String, u64>,
    pub bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: histogram(),
            status: BTreeMap::new(),
            errors: [0; 4],
            backends: BTreeMap::new(),
            bytes: 0,
        }
    }
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration, status: &str, backend: Option<&str>, bytes: u64) {
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        self.latency.saturating_record(micros);
        match self.status.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                self.status.insert(status.to_string(), 1);
            }
        }
        if let Some(b) = backend {
            match self.backends.get_mut(b) {
                Some(n) => *n += 1,
                None => {
                    self.backends.insert(b.to_string(), 1);
                }
            }
        }
        self.bytes += bytes;
    }

    pub fn error(&mut self, class: ErrorClass) {
        self.errors[class as usize] += 1;
    }

    pub fn merge(&mut self, other: Recorder) {
        let _ = self.latency.add(&other.latency);
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        for (i, e) in other.errors.iter().enumerate() {
            self.errors[i] += e;
        }
        for (k, v) in other.backends {
            *self.backends.entry(k).or_default() += v;
        }
        self.bytes += other.bytes;
    }

    pub fn responses(&self) -> u64 {
        self.status.values().sum()
    }
}

/// A finished (or interrupted) run.
pub struct Report {
    pub mode: &'static str,
    pub targets: Vec<String>,
    pub connections: usize,
    pub threads: usize,
    /// Requests per second asked for (open loop), or None (closed loop).
    pub rate: Option<f64>,
    /// How long the measured part ran (after the warm-up).
    pub elapsed: Duration,
    pub interrupted: bool,
    /// What the backend distribution is keyed by.
    pub backends_by: Option<String>,
    pub recorded: Recorder,
}

const PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];

fn ms(micros: u64) -> String {
    if micros >= 10_000 {
        format!("{:.1} ms", micros as f64 / 1000.0)
    } else {
        format!("{:.3} ms", micros as f64 / 1000.0)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    pub fn rps(&self) -> f64 {
        self.recorded.responses() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as JSON; the keys are a stable interface (`schema` says which version).
    pub fn json(&self) -> serde_json::Value {
        let h = &self.recorded.latency;
        let mut latency = serde_json::Map::new();
        for (p, name) in PERCENTILES {
            latency.insert(name.into(), h.value_at_percentile(p).into());
        }
        latency.insert("max".into(), h.max().into());
        latency.insert("mean".into(), h.mean().into());
        let errors: serde_json::Map<String, serde_json::Value> = CLASSES
            .iter()
            .map(|(c, name)| (name.to_string(), self.recorded.errors[*c as usize].into()))
            .collect();
        serde_json::json!({
            "schema": "switchyard-load/v1",
            "mode": self.mode,
            "targets": self.targets,
            "connections": self.connections,
            "threads": self.threads,
            "rate": self.rate,
            "duration_seconds": self.elapsed.as_secs_f64(),
            "interrupted": self.interrupted,
            "requests": self.recorded.responses(),
            "requests_per_second": self.rps(),
            "bytes": self.recorded.bytes,
            "latency_us": latency,
            "status": self.recorded.status,
            "errors": errors,
            "backends_by": self.backends_by,
            "backends": self.recorded.backends,
        })
    }

    pub fn text(&self) -> String {
        let r = &self.recorded;
        let h = &r.latency;
        let mut out = String::new();
        let lp = match self.rate {
            Some(rate) => format!("open loop at {rate} requests/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            out,
            "switchyard load ({}): {:.2} s{}, {} connection{} on {} thread{}, {lp}",
            self.mode,
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.threads,
            if self.threads == 1 { "" } else { "s" },
        );
        let _ = writeln!(out, "  targets   {}", self.targets.join(" "));
        let _ = writeln!(
            out,
            "  requests  {}  ({:.1}/s, {:.2} MB/s)",
            thousands(r.responses()),
            self.rps(),
            r.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
        );
        if !h.is_empty() {
            let mut line = String::from("  latency  ");
            for (p, name) in PERCENTILES {
                let _ = write!(line, " {name} {}", ms(h.value_at_percentile(p)));
            }
            let _ = write!(
                line,
                "  max {}  (mean {})",
                ms(h.max()),
                ms(h.mean() as u64)
            );
            let _ = writeln!(out, "{line}");
        }
        let status: Vec<String> = r
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {}", thousands(*v)))
            .collect();
        let _ = writeln!(out, "  status    {}", status.join("  "));
        let errors: Vec<String> = CLASSES
            .iter()
            .map(|(c, name)| format!("{name} {}", r.errors[*c as usize]))
            .collect();
        let _ = writeln!(out, "  errors    {}", errors.join("  "));
        if let Some(by) = &self.backends_by {
            let total: u64 = r.backends.values().sum();
            let _ = writeln!(out, "  backends by {by}:");
            for (k, v) in &r.backends {
                let _ = writeln!(
                    out,
                    "    {k:<24} {:>10}  {:5.1}%",
                    thousands(*v),
                    100.0 * *v as f64 / total.max(1) as f64
                );
            }
        }
        out
    }

    /// Latency against percentile, the x axis stretched towards the tail (1 / (1 - p) on a
    /// log scale), as HdrHistogram plots draw it.
    pub fn svg(&self) -> String {
        let h = &self.recorded.latency;
        let (w, hgt, left, bottom) = (720.0, 420.0, 70.0, 50.0);
        let (pw, ph) = (w - left - 20.0, hgt - bottom - 40.0);
        let max_x = 6.0; // 99.9999%
        let max_ms = (h.max() as f64 / 1000.0).max(0.001) * 1.1;
        let x = |q: f64| left + pw * (-(1.0 - q).max(1e-6).log10()).min(max_x) / max_x;
        let y = |v_ms: f64| 20.0 + ph - ph * v_ms / max_ms;
        let mut points = String::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(1) {
                let q = v.quantile_iterated_to();
                let _ = write!(
                    points,
                    "{:.1},{:.1} ",
                    x(q),
                    y(h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0)
                );
            }
        }
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"14\">switchyard load: latency by percentile ({} requests, {})</text>\n",
            self.recorded.responses(),
            self.targets.join(" ")
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            20.0 + ph,
            left + pw,
            20.0 + ph
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
            20.0 + ph
        );
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
            .iter()
            .enumerate()
        {
            let px = left + pw * i as f64 / max_x;
            let _ = writeln!(svg, "<line x1=\"{px:.1}\" y1=\"20\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>", 20.0 + ph, 20.0 + ph + 18.0);
        }
        for i in 0..=4 {
            let v = max_ms * i as f64 / 4.0;
            let py = y(v);
            let _ = writeln!(svg, "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2} ms</text>", left + pw, left - 6.0, py + 4.0);
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
            left + pw / 2.0,
            hgt - 8.0
        );
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
            points.trim_end()
        );
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Recorder::default();
        for i in 1..=1000u64 {
            r.ok(
                Duration::from_micros(i),
                if i % 10 == 0 { "503" } else { "200" },
                Some(if i % 2 == 0 { "a" } else { "b" }),
                10,
            );
        }
        r.error(ErrorClass::Timeout);
        Report {
            mode: "http",
            targets: vec!["http://127.0.0.1:1/".into()],
            connections: 2,
            threads: 1,
            rate: None,
            elapsed: Duration::from_secs(2),
            interrupted: false,
            backends_by: Some("x-backend".into()),
            recorded: r,
        }
    }

    #[test]
    fn json_carries_counts_percentiles_and_classes() {
        let j = report().json();
        assert_eq!(j["schema"], "switchyard-load/v1");
        assert_eq!(j["requests"], 1000);
        assert_eq!(j["requests_per_second"], 500.0);
        assert_eq!(j["status"]["200"], 900);
        assert_eq!(j["status"]["503"], 100);
        assert_eq!(j["errors"]["timeout"], 1);
        assert_eq!(j["errors"]["reset"], 0);
        assert_eq!(j["backends"]["a"], 500);
        let p99 = j["latency_us"]["p99"].as_u64().unwrap();
        assert!((985..=995).contains(&p99), "{p99}");
        assert_eq!(j["latency_us"]["max"], 1000);
    }

    #[test]
    fn text_and_plot_show_the_run() {
        let r = report();
        let t = r.text();
        assert!(t.contains("requests  1,000  (500.0/s"), "{t}");
        assert!(t.contains("200: 900  503: 100"), "{t}");
        assert!(t.contains("timeout 1"), "{t}");
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
        // One point per reported quantile step, all inside the plot.
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(points.split(' ').count() > 10);
    }
}
