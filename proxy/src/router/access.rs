//! The access log: one line per request on standard error, in the process's log format (the
//! lines `tracing`'s text or JSON formatter would write for an info event with target
//! `switchyard::access`), written in batches.
//!
//! Each event loop collects its lines in a buffer of its own and writes them with one system
//! call when the buffer holds [`BATCH`] bytes, or [`LINGER`] after the first line went in,
//! or when the loop stops. A busy router writes once per few hundred requests instead of once
//! per request; a quiet one shows each line within [`LINGER`]. The buffer never grows past
//! one batch and one line.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

/// Bytes collected before they are written at once.
const BATCH: usize = 32 * 1024;
/// How long a line waits at most.
const LINGER: Duration = Duration::from_millis(100);
/// Headroom over [`BATCH`]: the buffer is allocated once.
const HEADROOM: usize = 4 * 1024;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `tracing_subscriber`'s default text line (without colours).
    Text,
    /// One JSON object per line, as `tracing_subscriber`'s JSON formatter writes it.
    Json,
}

/// What one line says about a request.
pub(super) struct Entry<'a> {
    pub client: SocketAddr,
    pub method: &'a Method,
    pub host: &'a str,
    pub path: &'a str,
    pub version: Version,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// `namespace/name` of the Ingress or route, when one matched.
    pub owner: Option<&'a dyn std::fmt::Display>,
    pub service: &'a str,
    pub request_id: &'a str,
    pub duration_us: u64,
}

/// One event loop's unwritten lines, and the second its timestamps were last formatted for.
struct Pending {
    buf: String,
    second: u64,
    date: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        write_out(&mut self.buf);
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending {
            buf: String::new(),
            second: u64::MAX,
            date: String::new(),
        })
    };
}

/// Appends `entry`'s line to this event loop's batch; writes the batch when it is full, or
/// arranges for it to be written within [`LINGER`]. Must run inside a tokio runtime.
pub(super) fn record(format: Format, entry: &Entry<'_>) {
    let first = PENDING.with_borrow_mut(|p| {
        let first = p.buf.is_empty();
        if p.buf.capacity() == 0 {
            p.buf.reserve(BATCH + HEADROOM);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != p.second {
            p.second = now.as_secs();
            p.date = civil(now.as_secs());
        }
        let Pending { buf, date, .. } = p;
        line(buf, format, date, now.subsec_micros(), entry);
        if buf.len() >= BATCH {
            write_out(buf);
            return false;
        }
        first
    });
    if first {
        tokio::spawn(async {
            tokio::time::sleep(LINGER).await;
            flush();
        });
    }
}

/// Writes this event loop's collected lines now.
pub(super) fn flush() {
    PENDING.with_borrow_mut(|p| write_out(&mut p.buf));
}

fn write_out(buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    // Like tracing's writer: a log line that cannot be written is dropped.
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
    buf.clear();
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for seconds since the epoch.
fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a proleptic Gregorian date, counting in 400-year eras that
    // start on March 1st (so the leap day ends a year).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Appends one line (with its newline).
fn line(out: &mut String, format: Format, date: &str, micros: u32, e: &Entry<'_>) {
    let version = match e.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let upstream = Shown(
        e.upstream.as_ref().map(|a| a as &dyn std::fmt::Display),
        "-",
    );
    let owner = Shown(e.owner, "");
    // Writing to a String does not fail.
    let _ = match format {
        Format::Text => {
            let _ = write!(
                out,
                "{date}.{micros:06}Z  INFO switchyard::access: request client={} method={} \
                 host={} path={} version={version} status={} upstream={upstream} ingress={owner} \
                 service=",
                e.client, e.method, e.host, e.path, e.status,
            );
            quoted(out, e.service);
            out.push_str(" request_id=");
            quoted(out, e.request_id);
            writeln!(out, " duration_us={}", e.duration_us)
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"timestamp\":\"{date}.{micros:06}Z\",\"level\":\"INFO\",\"fields\":{{\
                 \"message\":\"request\",\"client\":\"{}\",\"method\":",
                e.client
            );
            json(out, e.method.as_str());
            out.push_str(",\"host\":");
            json(out, e.host);
            out.push_str(",\"path\":");
            json(out, e.path);
            let _ = write!(
                out,
                ",\"version\":\"{version}\",\"status\":{},\"upstream\":\"{upstream}\",\"ingress\":",
                e.status
            );
            json(out, &owner.to_string());
            out.push_str(",\"service\":");
            json(out, e.service);
            out.push_str(",\"request_id\":");
            json(out, e.request_id);
            writeln!(
                out,
                ",\"duration_us\":{}}},\"target\":\"switchyard::access\"}}",
                e.duration_us
            )
        }
    };
}

/// A value, or `none` when there is none.
struct Shown<'a>(Option<&'a dyn std::fmt::Display>, &'static str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str(self.1),
        }
    }
}

/// A string as Rust's `Debug` quotes it (as tracing's text format shows string fields).
fn quoted(out: &mut String, s: &str) {
    let _ = write!(out, "{s:?}");
}

/// A JSON string.
fn json(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(owner: Option<&'a dyn std::fmt::Display>, id: &'a str) -> Entry<'a> {
        Entry {
            client: "10.0.0.7:41000".parse().unwrap(),
            method: &Method::GET,
            host: "shop.example",
            path: "/cart",
            version: Version::HTTP_11,
            status: 200,
            upstream: owner.map(|_| "10.1.2.3:8080".parse().unwrap()),
            owner,
            service: "web:80",
            request_id: id,
            duration_us: 172,
        }
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(civil(0), "1970-01-01T00:00:00");
        assert_eq!(civil(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(civil(1_796_207_765), "2026-12-02T10:36:05");
        assert_eq!(civil(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(civil(4_107_542_400), "2100-03-01T00:00:00");
    }

    #[test]
    fn text_lines_read_as_tracing_writes_them() {
        let owner = "default/shop";
        let mut out = String::new();
        let e = entry(Some(&owner), "a\"b");
        line(&mut out, Format::Text, "2026-12-02T10:56:05", 49_821, &e);
        assert_eq!(
            out,
            "2026-12-02T10:56:05.049821Z  INFO switchyard::access: request client=10.0.0.7:41000 \
             method=GET host=shop.example path=/cart version=HTTP/1.1 status=200 \
             upstream=10.1.2.3:8080 ingress=default/shop service=\"web:80\" \
             request_id=\"a\\\"b\" duration_us=172\n"
        );
    }

    #[test]
    fn json_lines_are_json_with_tracing_s_fields() {
        let mut out = String::new();
        let e = entry(None, "id\\\u{1}");
        line(&mut out, Format::Json, "2026-12-02T10:56:05", 7, &e);
        assert!(out.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-12-02T10:56:05.000007Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "switchyard::access");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["client"], "10.0.0.7:41000");
        assert_eq!(f["status"], 200);
        assert_eq!(f["upstream"], "-");
        assert_eq!(f["ingress"], "");
        assert_eq!(f["request_id"], "id\\\u{1}");
        assert_eq!(f["duration_us"], 172);
    }
}
