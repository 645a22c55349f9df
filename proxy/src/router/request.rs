//! What the router takes from a client's request before routing it: one host and one normalised
//! path. The request is routed on exactly these and the backend receives exactly these, so a
//! backend never serves a path or a host other than the one the rules matched. Whatever could be
//! read two ways is refused with 400.
//!
//! Paths ([`normalize_path`]):
//! - percent-encoded unreserved characters (`%2e`, `%41`, ...) are decoded, other escapes kept
//!   with upper-case hex (RFC 3986 section 6.2.2);
//! - runs of `/` become one, then `.` and `..` segments are removed (RFC 3986 section 5.2.4;
//!   `..` never climbs above the root);
//! - refused: `%2F` and `%5C` (an encoded `/` or `\`, which backends decode or not), a raw `\`,
//!   encoded control characters (`%00` to `%1F`, `%7F`), and malformed escapes.
//!
//! Hosts ([`request_host`]): the request target's authority (absolute-form, or HTTP/2's
//! `:authority`) and the `Host` header must name the same host when both are present, and there
//! is at most one `Host` header.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderValue};
use http::Uri;

use super::routes::normalize_host;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the path holds an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path holds a '\\'")]
    Backslash,
    #[error("the path holds an encoded control character")]
    Control,
    #[error("the path holds a malformed percent-encoding")]
    BadEscape,
    #[error("the request has more than one Host header")]
    ManyHosts,
    #[error("the Host header does not match the request target")]
    HostMismatch,
    #[error("the Host header is not valid text")]
    BadHost,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The path to route on and forward. Most paths need nothing and are borrowed as they are.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, RequestError> {
    let b = raw.as_bytes();
    // No escape, no backslash, no empty or dot segment: one pass over the bytes.
    let special = |i: usize| match b[i] {
        b'%' | b'\\' => true,
        b'/' => matches!(b.get(i + 1), Some(b'/' | b'.')),
        _ => false,
    };
    if !(0..b.len()).any(special) {
        return Ok(Cow::Borrowed(raw));
    }
    // Decode what may be decoded; refuse what is ambiguous.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(RequestError::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(RequestError::BadEscape);
                };
                let c = hi << 4 | lo;
                match c {
                    b'/' | b'\\' => return Err(RequestError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(RequestError::Control),
                    c if unreserved(c) => decoded.push(c),
                    c => decoded.extend_from_slice(format!("%{c:02X}").as_bytes()),
                }
                i += 3;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    // Every byte is ASCII here: escapes stayed escapes and hyper admits only ASCII targets.
    let decoded = String::from_utf8(decoded).map_err(|_| RequestError::BadEscape)?;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/') {
        trailing = true;
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if trailing || out.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// The request's `Host` field; more than one is an error.
pub fn host_field(headers: &HeaderMap) -> Result<Option<&HeaderValue>, RequestError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(RequestError::ManyHosts),
        (h, None) => Ok(h),
    }
}

/// The one host a request is for, as the client wrote it (the router matches it normalised and
/// forwards it as written): the target's authority if it has one, else the `Host` header.
/// `field` is the request's one `Host` field ([`host_field`]).
pub fn request_host<'a>(
    uri: &'a Uri,
    field: Option<&'a HeaderValue>,
) -> Result<&'a str, RequestError> {
    let header = match field {
        Some(h) => Some(h.to_str().map_err(|_| RequestError::BadHost)?),
        None => None,
    };
    match (uri.authority().map(|a| a.as_str()), header) {
        (Some(a), Some(h)) if normalize_host(a) != normalize_host(h) => {
            Err(RequestError::HostMismatch)
        }
        (Some(a), _) => Ok(a),
        (None, h) => Ok(h.unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, RequestError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_slashes_are_resolved() {
        assert!(matches!(normalize_path("/a/b?"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize_path("/.well-known/x"),
            Ok(Cow::Owned(_))
        ));
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/public//../admin").unwrap(), "/admin");
        assert_eq!(norm("/../../etc").unwrap(), "/etc");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/a//b/").unwrap(), "/a/b/");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/%7euser/%41").unwrap(), "/~user/A");
        assert_eq!(norm("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (p, e) in [
            ("/public%2F..%2Fadmin", RequestError::EncodedSeparator),
            ("/a%2fb", RequestError::EncodedSeparator),
            ("/a%5Cb", RequestError::EncodedSeparator),
            ("/a\\..\\b", RequestError::Backslash),
            ("/a%00b", RequestError::Control),
            ("/a%0Ab", RequestError::Control),
            ("/a%7F", RequestError::Control),
            ("/a%zz", RequestError::BadEscape),
            ("/a%4", RequestError::BadEscape),
            ("/a%", RequestError::BadEscape),
        ] {
            assert_eq!(norm(p), Err(e), "{p}");
        }
    }

    #[test]
    fn one_host_per_request() {
        let headers = |hs: &[&str]| {
            let mut m = HeaderMap::new();
            for h in hs {
                m.append(header::HOST, h.parse().unwrap());
            }
            m
        };
        let host = |uri, hs: &[&str]| {
            let m = headers(hs);
            host_field(&m).and_then(|h| request_host(uri, h).map(str::to_owned))
        };
        let origin: Uri = "/x".parse().unwrap();
        let absolute: Uri = "http://h.example/x".parse().unwrap();
        assert_eq!(host(&origin, &["h.example"]), Ok("h.example".into()));
        assert_eq!(host(&origin, &[]), Ok("".into()));
        assert_eq!(host(&absolute, &[]), Ok("h.example".into()));
        assert_eq!(
            host(&absolute, &["H.example:80"]),
            Ok("h.example".into()),
            "the same host, written otherwise"
        );
        assert_eq!(
            host(&absolute, &["evil.example"]),
            Err(RequestError::HostMismatch)
        );
        assert_eq!(
            host(&origin, &["a.example", "b.example"]),
            Err(RequestError::ManyHosts)
        );
    }
}
