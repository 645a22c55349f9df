//! Cross-origin resource sharing for a route (the Gateway API `CORS` filter): the router answers
//! preflight requests itself and adds the `Access-Control-*` headers to the answers of allowed
//! origins. A request from an origin that is not allowed gets no CORS header (its preflight a
//! plain 200), so the browser refuses it; nothing is forwarded for a preflight.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

/// One allowed origin: `*`, or `scheme://host[:port]` whose host may start with `*` (any labels
/// to its left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Origin {
        scheme: Box<str>,
        /// Lower case; a leading `*` matches any labels.
        host: Box<str>,
        port: u16,
    },
}

/// `scheme://host[:port]`, the port defaulted by the scheme.
fn parse_origin(s: &str) -> Option<(&str, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, p.parse().ok()?),
        _ => (rest, default),
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl OriginPattern {
    /// An `allowOrigins` entry; None when it is not an origin.
    pub fn parse(s: &str) -> Option<OriginPattern> {
        if s == "*" {
            return Some(OriginPattern::Any);
        }
        let (scheme, host, port) = parse_origin(s)?;
        Some(OriginPattern::Origin {
            scheme: scheme.into(),
            host: host.into(),
            port,
        })
    }

    fn matches(&self, origin: &str) -> bool {
        let OriginPattern::Origin { scheme, host, port } = self else {
            return true;
        };
        let Some((s, h, p)) = parse_origin(origin) else {
            return false;
        };
        let host_ok = match host.strip_prefix('*') {
            Some(suffix) => h.len() > suffix.len() && h.ends_with(suffix),
            None => h == **host,
        };
        s == &**scheme && p == *port && host_ok
    }
}

/// A route's CORS policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    pub origins: Vec<OriginPattern>,
    pub credentials: bool,
    /// Method names, or `*`.
    pub methods: Vec<Box<str>>,
    /// Header names, or `*`.
    pub headers: Vec<Box<str>>,
    pub expose: Vec<Box<str>>,
    /// Seconds a preflight answer may be cached.
    pub max_age: u32,
}

const ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// The configured list, or for `*` the wildcard (without credentials) or what was asked.
fn list_or_asked(list: &[Box<str>], credentials: bool, asked: &str) -> String {
    if list.iter().any(|m| &**m == "*") {
        if credentials {
            asked.to_string()
        } else {
            "*".to_string()
        }
    } else {
        list.iter().map(|m| &**m).collect::<Vec<_>>().join(", ")
    }
}

impl Cors {
    /// The request's `Origin`, when it is one this policy allows.
    fn allowed<'h>(&self, origin: Option<&'h HeaderValue>) -> Option<&'h HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|p| p.matches(text))
            .then_some(origin)
    }

    /// Whether a request is a preflight: `OPTIONS` with an `Origin` and the method it asks for.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of the answer to a preflight (none for an origin not allowed).
    pub fn preflight(&self, req: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        let Some(origin) = self.allowed(req.get(header::ORIGIN)) else {
            return out;
        };
        self.common(origin, &mut out);
        let asked = |name| req.get(name).and_then(|v| v.to_str().ok());
        if let Some(m) = asked(header::ACCESS_CONTROL_REQUEST_METHOD) {
            if let Some(v) = value(&list_or_asked(&self.methods, self.credentials, m)) {
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
            }
        }
        if let Some(h) = asked(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            if let Some(v) = value(&list_or_asked(&self.headers, self.credentials, h)) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age),
        );
        out
    }

    /// Adds the CORS headers of an ordinary answer to a request from `origin`, when allowed.
    pub fn answer(&self, origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        let Some(origin) = self.allowed(origin) else {
            return;
        };
        self.common(origin, resp);
        // With credentials a wildcard is not allowed: the named headers only.
        let expose: Vec<&str> = self
            .expose
            .iter()
            .map(|h| &**h)
            .filter(|h| !(self.credentials && *h == "*"))
            .collect();
        if let Some(v) = value(&expose.join(", ")).filter(|_| !expose.is_empty()) {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }

    /// The origin echoed (never `*`, so it holds with credentials too), and the credentials.
    fn common(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        out.insert(ALLOW_ORIGIN, origin.clone());
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn policy(credentials: bool) -> Cors {
        Cors {
            origins: [
                "https://www.foo.com",
                "https://*.bar.com",
                "http://local:8080",
            ]
            .iter()
            .map(|o| OriginPattern::parse(o).unwrap())
            .collect(),
            credentials,
            methods: vec!["GET".into(), "OPTIONS".into()],
            headers: vec!["*".into()],
            expose: vec!["x-header-3".into()],
            max_age: 3600,
        }
    }

    #[test]
    fn origins_match_by_scheme_host_and_port() {
        let p = policy(false);
        let ok = |o: &str| p.allowed(Some(&o.parse().unwrap())).is_some();
        assert!(ok("https://www.foo.com"));
        assert!(ok("https://www.foo.com:443"));
        assert!(ok("https://a.b.bar.com"));
        assert!(ok("http://local:8080"));
        assert!(!ok("https://bar.com"), "the wildcard needs a label");
        assert!(!ok("http://www.foo.com"), "another scheme");
        assert!(!ok("https://www.foo.com:8443"), "another port");
        assert!(!ok("http://local"), "port 80 is not 8080");
        assert!(!ok("null"));
        assert!(OriginPattern::parse("ftp://x").is_none());
    }

    #[test]
    fn preflights_and_answers() {
        let p = policy(true);
        let pre = p.preflight(&req(&[
            ("origin", "https://www.foo.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]));
        assert_eq!(pre["access-control-allow-origin"], "https://www.foo.com");
        assert_eq!(pre["access-control-allow-credentials"], "true");
        assert_eq!(pre["access-control-allow-methods"], "GET, OPTIONS");
        // `*` with credentials: what was asked, never the wildcard.
        assert_eq!(
            pre["access-control-allow-headers"],
            "x-header-1, x-header-2"
        );
        assert_eq!(pre["access-control-max-age"], "3600");
        let denied = p.preflight(&req(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]));
        assert!(denied.is_empty());
        let mut resp = HeaderMap::new();
        p.answer(Some(&"https://x.bar.com".parse().unwrap()), &mut resp);
        assert_eq!(resp["access-control-allow-origin"], "https://x.bar.com");
        assert_eq!(resp["access-control-expose-headers"], "x-header-3");
        let without = policy(false).preflight(&req(&[
            ("origin", "https://www.foo.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a"),
        ]));
        assert_eq!(without["access-control-allow-headers"], "*");
        assert!(without.get("access-control-allow-credentials").is_none());
    }
}
