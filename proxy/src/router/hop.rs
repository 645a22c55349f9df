//! Hop-by-hop header fields (RFC 9110 section 7.6.1): those that describe one connection, not
//! the message, and so never pass the router. Found by their names as written (any case), for
//! heads read field by field, and removed from header maps.

use http::header::{self, HeaderMap, HeaderValue};

/// The hop-by-hop fields, `Connection` first.
const NAMES: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

/// The place of `name` among [`NAMES`] (0 for `Connection`), in any case.
pub(super) fn index(name: &[u8]) -> Option<usize> {
    NAMES
        .iter()
        .position(|h| h.len() == name.len() && h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether a request field read as the client wrote it goes on to the backend as it is, in a
/// head whose `Connection` names nothing but `close` and `keep-alive`: not hop-by-hop, not
/// a field that `Connection` names (`close`, when `close_named`), and not `TE` (which goes on
/// as `trailers` alone when one asks for them, as [`strip`] leaves it).
pub(super) fn passes(name: &[u8], close_named: bool) -> bool {
    index(name).is_none()
        && !name.eq_ignore_ascii_case(b"te")
        && !(close_named && name.eq_ignore_ascii_case(b"close"))
}

/// Whether a `TE` value lists `trailers`.
pub(super) fn wants_trailers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// Removes hop-by-hop fields, and those the `Connection` field names. `TE: trailers` stays.
pub(super) fn strip(headers: &mut HeaderMap) {
    // Most messages carry one or none: one pass over the names finds which, and only those are
    // looked up again. Bit i stands for `NAMES[i]`.
    let mut present = 0u8;
    let mut te = false;
    for name in headers.keys() {
        match index(name.as_str().as_bytes()) {
            Some(i) => present |= 1 << i,
            None => te |= *name == header::TE,
        }
    }
    if present & 1 != 0 {
        // The fields `Connection` names, a value at a time (a clone shares its bytes) and
        // removed by the names as written: nothing is collected or copied.
        let mut i = 0;
        while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
            i += 1;
            for name in value.to_str().unwrap_or("").split(',').map(str::trim) {
                if !name.eq_ignore_ascii_case("connection") {
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if te {
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .any(|v| wants_trailers(v.as_bytes()));
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    #[test]
    fn names_are_found_in_any_case() {
        assert_eq!(index(b"Connection"), Some(0));
        assert_eq!(index(b"KEEP-ALIVE"), Some(1));
        assert_eq!(index(b"transfer-encoding"), Some(5));
        assert_eq!(index(b"Upgrade"), Some(6));
        let others = ["te", "connectio", "content-length", "x-connection", ""];
        assert!(others.iter().all(|n| index(n.as_bytes()).is_none()));
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "X-Hop, keep-alive"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip, Trailers"),
            ("x-kept", "3"),
            ("content-length", "4"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip(&mut h);
        let mut left: Vec<_> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(left, ["content-length: 4", "te: trailers", "x-kept: 3"]);

        // Nothing hop-by-hop: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip(&mut h);
        assert_eq!(h.len(), 1);
        // A `TE` without `trailers` goes; one that Connection names goes whole.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip(&mut h);
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("te"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip(&mut h);
        assert!(h.is_empty());
    }
}
