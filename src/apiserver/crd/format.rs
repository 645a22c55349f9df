//! The string `format`s of OpenAPI schemas that kube-apiserver checks. A format it does not
//! know is not checked.

use base64::Engine;

use crate::apiserver::admission::names;

/// Whether `s` is a valid string of `format`.
pub fn valid(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => date_time(s),
        "date" => date(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => cidr(s),
        "hostname" => s.len() <= 253 && names::dns1123_subdomain(&s.to_ascii_lowercase()).is_none(),
        "uuid" => uuid(s),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "uri" => uri(s),
        "email" => s
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.')),
        "duration" => duration(s),
        _ => true,
    }
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|c| c.is_ascii_digit())
}

fn date(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    p.len() == 3
        && digits(p[0], 4)
        && digits(p[1], 2)
        && digits(p[2], 2)
        && (1..=12).contains(&p[1].parse::<u8>().unwrap_or(0))
        && (1..=31).contains(&p[2].parse::<u8>().unwrap_or(0))
}

/// RFC 3339: `2006-01-02T15:04:05[.frac](Z|+hh:mm|-hh:mm)`.
fn date_time(s: &str) -> bool {
    let Some((d, t)) = s.split_once(['T', 't', ' ']) else {
        return false;
    };
    if !date(d) {
        return false;
    }
    let (clock, zone) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
        (c, "")
    } else if let Some(i) = t.rfind(['+', '-']) {
        (&t[..i], &t[i + 1..])
    } else {
        return false;
    };
    let zone_ok = zone.is_empty()
        || zone
            .split_once(':')
            .is_some_and(|(h, m)| digits(h, 2) && digits(m, 2));
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let p: Vec<&str> = hms.split(':').collect();
    zone_ok
        && p.len() == 3
        && p.iter().all(|x| digits(x, 2))
        && p[0] < "24"
        && p[1] < "60"
        && p[2] <= "60"
        && !frac.is_empty()
        && frac.bytes().all(|c| c.is_ascii_digit())
}

fn cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let max = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return false,
    };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

fn uuid(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    p.len() == 5
        && p.iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(x, n)| x.len() == n && x.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// An absolute URI (`scheme:rest`) without spaces.
fn uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.contains(char::is_whitespace)
}

/// A Go duration: `1h2m3.5s`, `300ms`, `-1.5h`, `0`.
fn duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let num = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if num == 0 || rest[..num].matches('.').count() > 1 {
            return false;
        }
        rest = &rest[num..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u) && !(**u == "m" && rest.starts_with("ms")))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn formats() {
        for (f, ok, bad) in [
            (
                "date-time",
                "2026-12-02T03:15:22.5+01:00",
                "2026-12-02 25:00:00Z",
            ),
            ("date-time", "2026-12-02T03:15:22Z", "2026-13-02T03:15:22Z"),
            ("date", "2026-12-02", "2026-12-2"),
            ("ipv4", "10.1.2.3", "10.1.2"),
            ("ipv6", "fd00::1", "10.1.2.3"),
            ("cidr", "10.0.0.0/8", "10.0.0.0/40"),
            ("hostname", "a.example.com", "a_b"),
            ("uuid", "123e4567-e89b-42d3-a456-426614174000", "123e4567"),
            ("byte", "aGVsbG8=", "not base64!"),
            ("uri", "https://example.com/x", "no scheme"),
            ("duration", "1h2m3.5s", "1x"),
            ("duration", "300ms", "ms"),
        ] {
            assert!(valid(f, ok), "{f} {ok}");
            assert!(!valid(f, bad), "{f} {bad}");
        }
        assert!(valid("no-such-format", "anything"));
    }
}
