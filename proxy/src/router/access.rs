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

use super::routes::Owner;

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
    /// The client's address as `Display` shows it.
    pub client: &'a str,
    pub method: &'a Method,
    pub host: &'a str,
    pub path: &'a str,
    pub version: Version,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// The Ingress or route, when one matched.
    pub owner: Option<&'a Owner>,
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

/// Appends one line (with its newline). Written piece by piece: the formatting machinery would
/// cost more than the rest of a proxied request.
fn line(out: &mut String, format: Format, date: &str, micros: u32, e: &Entry<'_>) {
    let version = match e.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let mut digits = itoa::Buffer::new();
    match format {
        Format::Text => {
            out.push_str(date);
            timestamp_fraction(out, micros);
            out.push_str("  INFO switchyard::access: request client=");
            out.push_str(e.client);
            out.push_str(" method=");
            out.push_str(e.method.as_str());
            out.push_str(" host=");
            out.push_str(e.host);
            out.push_str(" path=");
            out.push_str(e.path);
            out.push_str(" version=");
            out.push_str(version);
            out.push_str(" status=");
            out.push_str(digits.format(e.status));
            out.push_str(" upstream=");
            match e.upstream {
                Some(a) => upstream(out, a),
                None => out.push('-'),
            }
            out.push_str(" ingress=");
            if let Some(o) = e.owner {
                out.push_str(&o.namespace);
                out.push('/');
                out.push_str(&o.name);
            }
            out.push_str(" service=");
            quoted(out, e.service);
            out.push_str(" request_id=");
            quoted(out, e.request_id);
            out.push_str(" duration_us=");
            out.push_str(digits.format(e.duration_us));
            out.push('\n');
        }
        Format::Json => {
            out.push_str("{\"timestamp\":\"");
            out.push_str(date);
            timestamp_fraction(out, micros);
            out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"client\":\"");
            out.push_str(e.client);
            out.push_str("\",\"method\":");
            json(out, &[e.method.as_str()]);
            out.push_str(",\"host\":");
            json(out, &[e.host]);
            out.push_str(",\"path\":");
            json(out, &[e.path]);
            out.push_str(",\"version\":\"");
            out.push_str(version);
            out.push_str("\",\"status\":");
            out.push_str(digits.format(e.status));
            out.push_str(",\"upstream\":\"");
            match e.upstream {
                Some(a) => upstream(out, a),
                None => out.push('-'),
            }
            out.push_str("\",\"ingress\":");
            match e.owner {
                Some(o) => json(out, &[&o.namespace, "/", &o.name]),
                None => json(out, &[]),
            }
            out.push_str(",\"service\":");
            json(out, &[e.service]);
            out.push_str(",\"request_id\":");
            json(out, &[e.request_id]);
            out.push_str(",\"duration_us\":");
            out.push_str(digits.format(e.duration_us));
            out.push_str("},\"target\":\"switchyard::access\"}\n");
        }
    }
}

/// `.` and the microseconds, six digits, and `Z`.
fn timestamp_fraction(out: &mut String, micros: u32) {
    // A million more has seven digits: the last six are the fraction with its leading zeros.
    let mut digits = itoa::Buffer::new();
    let text = digits.format(micros % 1_000_000 + 1_000_000);
    out.push('.');
    out.push_str(&text[1..]);
    out.push('Z');
}

thread_local! {
    /// The last upstream address written and its text: it repeats from line to line.
    static LAST_UPSTREAM: RefCell<(Option<SocketAddr>, String)> =
        const { RefCell::new((None, String::new())) };
}

/// An upstream's address as `Display` shows it, formatted when it is not the last one's.
fn upstream(out: &mut String, addr: SocketAddr) {
    LAST_UPSTREAM.with_borrow_mut(|(last, text)| {
        if *last != Some(addr) {
            text.clear();
            let _ = write!(text, "{addr}");
            *last = Some(addr);
        }
        out.push_str(text);
    });
}

/// A string as Rust's `Debug` quotes it (as tracing's text format shows string fields).
fn quoted(out: &mut String, s: &str) {
    // Printable ASCII other than `"` and `\` stands for itself.
    // Every byte is looked at (no early exit), which lets the check run on many at once.
    let plain = |b: u8| (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\');
    if s.bytes().fold(true, |all, b| all & plain(b)) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// A JSON string of `parts` joined.
fn json(out: &mut String, parts: &[&str]) {
    out.push('"');
    for s in parts {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                b if b < 0x20 => "",
                _ => continue,
            };
            out.push_str(&s[plain..i]);
            plain = i + 1;
            if escape.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(escape);
            }
        }
        out.push_str(&s[plain..]);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(owner: Option<&'a Owner>, id: &'a str) -> Entry<'a> {
        Entry {
            client: "10.0.0.7:41000",
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
        let owner = Owner::ingress("default", "shop");
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
    fn upstream_addresses_are_written_as_they_change() {
        let owner = Owner::ingress("default", "shop");
        let mut e = entry(Some(&owner), "id");
        for addr in [
            "10.1.2.3:8080",
            "10.1.2.4:8080",
            "[2001:db8::9]:80",
            "10.1.2.3:8080",
        ] {
            for _ in 0..2 {
                e.upstream = Some(addr.parse().unwrap());
                let mut out = String::new();
                line(&mut out, Format::Text, "2026-12-02T10:56:05", 0, &e);
                assert!(out.contains(&format!(" upstream={addr} ")), "{out}");
            }
        }
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

    #[test]
    fn values_are_quoted_and_escaped_as_the_formatters_would() {
        let owner = Owner::ingress("team \"a\"", "shop\u{7f}");
        for id in [
            "plain-id",
            "tab\there",
            "quote\"back\\slash",
            "ünïcode\u{200b}",
            "nl\n\u{1f}",
        ] {
            let mut e = entry(Some(&owner), id);
            e.client = "[2001:db8::7]:41000";
            let mut text = String::new();
            line(&mut text, Format::Text, "2026-12-02T10:56:05", 0, &e);
            assert!(
                text.contains(&format!(" request_id={id:?} duration_us=")),
                "{text}"
            );
            assert!(text.contains(" client=[2001:db8::7]:41000 "), "{text}");
            let mut json_line = String::new();
            line(&mut json_line, Format::Json, "2026-12-02T10:56:05", 0, &e);
            let v: serde_json::Value = serde_json::from_str(&json_line).unwrap();
            assert_eq!(v["fields"]["request_id"], id);
            assert_eq!(v["fields"]["ingress"], "team \"a\"/shop\u{7f}");
            assert_eq!(v["fields"]["client"], "[2001:db8::7]:41000");
        }
    }
}
