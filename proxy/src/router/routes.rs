//! The route table: Ingress v1 host and path rules as plain data, and the matching rules of the
//! Kubernetes documentation.
//!
//! A request picks a host group first — an exact host, then a `*.` wildcard matching exactly one
//! label, then the rules without a host — and within the first group that has a matching path,
//! the longest path wins; on a tie `Exact` beats `Prefix`, then the oldest Ingress wins. When no
//! group matches, the default backend (of the oldest Ingress that has one) answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::sign::CertifiedKey;

use super::upstream::Upstream;
use crate::metrics::{Histogram, REQUEST_BUCKETS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise on `/` (`ImplementationSpecific` is treated as this).
    Prefix,
}

/// `namespace/name` of the Ingress a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngressName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for IngressName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Requests and latencies of one Ingress backend, kept across route-table changes.
pub struct BackendStats {
    pub ingress: IngressName,
    pub service: String,
    /// Responses by status code.
    statuses: Mutex<Vec<(u16, u64)>>,
    pub latency: Histogram,
}

impl BackendStats {
    pub fn new(ingress: &IngressName, service: &str) -> BackendStats {
        BackendStats {
            ingress: ingress.clone(),
            service: service.to_string(),
            statuses: Mutex::new(Vec::new()),
            latency: Histogram::new(REQUEST_BUCKETS),
        }
    }

    pub fn record(&self, status: u16, took: Duration) {
        {
            let mut s = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
            match s.iter_mut().find(|(code, _)| *code == status) {
                Some((_, n)) => *n += 1,
                None => s.push((status, 1)),
            }
        }
        self.latency.observe(took);
    }

    pub fn statuses(&self) -> Vec<(u16, u64)> {
        let mut s = self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.sort_unstable();
        s
    }
}

/// How endpoints are picked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Power of two choices on in-flight requests.
    #[default]
    LeastRequest,
    RoundRobin,
}

/// Per-Ingress settings, from its `switchyard.io/` annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// From the request sent to the response headers received.
    pub response_timeout: Duration,
    pub balance: Balance,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            balance: Balance::LeastRequest,
        }
    }
}

/// Where the requests of one rule go: one port of one Service.
pub struct Backend {
    pub ingress: IngressName,
    /// `service:port` as written in the Ingress.
    pub service: String,
    /// The usable endpoints (ready ones, or serving terminating ones when none is ready).
    pub endpoints: Vec<Arc<Upstream>>,
    /// The Service port speaks HTTP/2 without TLS (`appProtocol: kubernetes.io/h2c`).
    pub h2c: bool,
    pub settings: Settings,
    pub stats: Arc<BackendStats>,
    /// Round-robin position.
    pub(super) next: std::sync::atomic::AtomicUsize,
}

/// The order of precedence between Ingresses: the oldest first, then by name.
pub type Age = (i64, IngressName);

/// One path rule.
pub struct Route {
    /// For `Prefix`, without its trailing `/` (so `/` is the empty string).
    path: Box<str>,
    kind: PathKind,
    age: Age,
    pub backend: Arc<Backend>,
    /// Plain-HTTP requests are redirected to HTTPS (the host has TLS in this Ingress, unless
    /// `switchyard.io/ssl-redirect: "false"`).
    pub ssl_redirect: bool,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == &*self.path,
            PathKind::Prefix => {
                path.starts_with(&*self.path)
                    && matches!(path.as_bytes().get(self.path.len()), None | Some(b'/'))
            }
        }
    }

    fn precedence(&self) -> (std::cmp::Reverse<usize>, bool, &Age) {
        (
            std::cmp::Reverse(self.path.len()),
            self.kind == PathKind::Prefix,
            &self.age,
        )
    }
}

/// The rules of one host, in the order they are tried.
#[derive(Default)]
struct Rules(Vec<Route>);

impl Rules {
    fn find(&self, path: &str) -> Option<&Route> {
        self.0.iter().find(|r| r.matches(path))
    }
}

/// Everything the router needs, as one immutable value.
#[derive(Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Rules>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<Box<str>, Rules>,
    any_host: Rules,
    default_backend: Option<(Age, Arc<Backend>)>,
    certs: HashMap<Box<str>, (Age, Arc<CertifiedKey>)>,
    wildcard_certs: HashMap<Box<str>, (Age, Arc<CertifiedKey>)>,
    /// Every upstream and backend counter, so the next table keeps their state.
    upstreams: HashMap<(SocketAddr, bool), Arc<Upstream>>,
    stats: HashMap<(IngressName, String), Arc<BackendStats>>,
}

/// What answers a request.
pub enum Target<'a> {
    Route(&'a Route),
    Default(&'a Arc<Backend>),
    NotFound,
}

/// `Host` without its port, lower-cased only when it has upper-case letters.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = if host.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop the port.
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl RouteTable {
    /// A builder that carries over the upstream and counter state of `self`.
    pub fn builder(&self) -> Builder<'_> {
        Builder {
            previous: self,
            table: RouteTable::default(),
        }
    }

    /// The route for a request to `host` (already normalized) and `path` (without the query).
    pub fn route(&self, host: &str, path: &str) -> Target<'_> {
        let exact = self.exact.get(host);
        let wildcard = host
            .split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest));
        for rules in [exact, wildcard, Some(&self.any_host)]
            .into_iter()
            .flatten()
        {
            if let Some(r) = rules.find(path) {
                return Target::Route(r);
            }
        }
        match &self.default_backend {
            Some((_, b)) => Target::Default(b),
            None => Target::NotFound,
        }
    }

    /// The certificate for a TLS server name.
    pub fn certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(server_name);
        if let Some((_, c)) = self.certs.get(&*name) {
            return Some(c.clone());
        }
        let (_, rest) = name.split_once('.')?;
        self.wildcard_certs.get(rest).map(|(_, c)| c.clone())
    }

    /// How many hosts have rules.
    pub fn host_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<BackendStats>> {
        self.stats.values()
    }
}

/// What one Ingress backend points at.
pub struct BackendSpec {
    pub ingress: IngressName,
    pub service: String,
    pub endpoints: Vec<SocketAddr>,
    pub h2c: bool,
    pub settings: Settings,
}

pub struct Builder<'a> {
    previous: &'a RouteTable,
    table: RouteTable,
}

/// Inserts `value` unless an older claim exists.
fn claim<V>(map: &mut HashMap<Box<str>, (Age, V)>, key: &str, age: &Age, value: V) {
    match map.get(key) {
        Some((old, _)) if old <= age => {}
        _ => {
            map.insert(key.into(), (age.clone(), value));
        }
    }
}

impl Builder<'_> {
    /// A backend, sharing upstream and counter state with the previous table.
    pub fn backend(&mut self, spec: BackendSpec) -> Arc<Backend> {
        let endpoints = spec
            .endpoints
            .iter()
            .map(|addr| {
                let key = (*addr, spec.h2c);
                let prev = &self.previous.upstreams;
                self.table
                    .upstreams
                    .entry(key)
                    .or_insert_with(|| {
                        prev.get(&key)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Upstream::new(*addr, spec.h2c)))
                    })
                    .clone()
            })
            .collect();
        let key = (spec.ingress.clone(), spec.service.clone());
        let stats =
            self.table
                .stats
                .entry(key.clone())
                .or_insert_with(|| {
                    self.previous.stats.get(&key).cloned().unwrap_or_else(|| {
                        Arc::new(BackendStats::new(&spec.ingress, &spec.service))
                    })
                })
                .clone();
        Arc::new(Backend {
            ingress: spec.ingress,
            service: spec.service,
            endpoints,
            h2c: spec.h2c,
            settings: spec.settings,
            stats,
            next: Default::default(),
        })
    }

    /// A path rule; `host` is exact, `*.`-wildcard, or None for every host.
    pub fn rule(
        &mut self,
        host: Option<&str>,
        path: &str,
        kind: PathKind,
        age: &Age,
        backend: Arc<Backend>,
        ssl_redirect: bool,
    ) {
        let path = match kind {
            PathKind::Exact => path,
            PathKind::Prefix => path.trim_end_matches('/'),
        };
        let route = Route {
            path: path.into(),
            kind,
            age: age.clone(),
            backend,
            ssl_redirect,
        };
        let rules = match host.map(|h| h.to_ascii_lowercase()) {
            None => &mut self.table.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(rest) => self.table.wildcard.entry(rest.into()).or_default(),
                None => self.table.exact.entry(h.into()).or_default(),
            },
        };
        rules.0.push(route);
    }

    /// An Ingress's `defaultBackend`: the oldest Ingress's wins.
    pub fn default_backend(&mut self, age: &Age, backend: Arc<Backend>) {
        match &self.table.default_backend {
            Some((old, _)) if old <= age => {}
            _ => self.table.default_backend = Some((age.clone(), backend)),
        }
    }

    /// A certificate for `host` (exact or `*.` wildcard): the oldest Ingress's wins.
    pub fn certificate(&mut self, host: &str, age: &Age, cert: Arc<CertifiedKey>) {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(rest) => claim(&mut self.table.wildcard_certs, rest, age, cert),
            None => claim(&mut self.table.certs, &host, age, cert),
        }
    }

    pub fn build(mut self) -> RouteTable {
        let groups = self
            .table
            .exact
            .values_mut()
            .chain(self.table.wildcard.values_mut())
            .chain(std::iter::once(&mut self.table.any_host));
        for rules in groups {
            rules.0.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        }
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(n: i64) -> Age {
        (
            n,
            IngressName {
                namespace: "ns".into(),
                name: format!("ing{n}"),
            },
        )
    }

    fn backend(b: &mut Builder<'_>, name: &str) -> Arc<Backend> {
        b.backend(BackendSpec {
            ingress: age(0).1,
            service: name.into(),
            endpoints: vec![],
            h2c: false,
            settings: Settings::default(),
        })
    }

    fn served(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        match t.route(&normalize_host(host), path) {
            Target::Route(r) => Some(r.backend.service.clone()),
            Target::Default(b) => Some(format!("default:{}", b.service)),
            Target::NotFound => None,
        }
    }

    /// The path rules of the Kubernetes documentation's table, end to end with curl, are in
    /// tests/integration/ingress.rs; these are the cases around them.
    #[test]
    fn prefix_is_element_wise_and_exact_wins_ties() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        for (path, kind) in [
            ("/foo/", PathKind::Prefix),
            ("/foo", PathKind::Exact),
            ("/", PathKind::Prefix),
        ] {
            let be = backend(&mut b, &format!("{kind:?}{path}"));
            b.rule(None, path, kind, &age(1), be, false);
        }
        let t = b.build();
        assert_eq!(served(&t, "h", "/foo").as_deref(), Some("Exact/foo"));
        assert_eq!(served(&t, "h", "/foo/").as_deref(), Some("Prefix/foo/"));
        assert_eq!(served(&t, "h", "/foo/x").as_deref(), Some("Prefix/foo/"));
        assert_eq!(served(&t, "h", "/foox").as_deref(), Some("Prefix/"));
        assert_eq!(served(&t, "h", "/").as_deref(), Some("Prefix/"));
    }

    #[test]
    fn hosts_exact_wildcard_and_none() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let exact = backend(&mut b, "exact");
        let wild = backend(&mut b, "wild");
        let any = backend(&mut b, "any");
        let default = backend(&mut b, "fallback");
        b.rule(
            Some("Bar.Foo.com"),
            "/api",
            PathKind::Prefix,
            &age(1),
            exact,
            false,
        );
        b.rule(
            Some("*.foo.com"),
            "/",
            PathKind::Prefix,
            &age(1),
            wild,
            false,
        );
        b.rule(None, "/any", PathKind::Prefix, &age(1), any, false);
        b.default_backend(&age(1), default);
        let t = b.build();
        assert_eq!(
            served(&t, "bar.foo.com", "/api/x").as_deref(),
            Some("exact")
        );
        assert_eq!(
            served(&t, "BAR.foo.COM:8080", "/api").as_deref(),
            Some("exact")
        );
        // The exact host has no rule for /other: the wildcard group answers.
        assert_eq!(served(&t, "bar.foo.com", "/other").as_deref(), Some("wild"));
        assert_eq!(served(&t, "baz.foo.com", "/").as_deref(), Some("wild"));
        // A wildcard matches exactly one label.
        assert_eq!(
            served(&t, "baz.bar.foo.com", "/").as_deref(),
            Some("default:fallback")
        );
        assert_eq!(
            served(&t, "foo.com", "/").as_deref(),
            Some("default:fallback")
        );
        assert_eq!(served(&t, "foo.com", "/any/thing").as_deref(), Some("any"));
        assert_eq!(served(&t, "[::1]:80", "/any").as_deref(), Some("any"));
    }

    #[test]
    fn the_oldest_ingress_wins_a_conflict() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let young = backend(&mut b, "young");
        let old = backend(&mut b, "old");
        let d_young = backend(&mut b, "d-young");
        let d_old = backend(&mut b, "d-old");
        b.rule(Some("a.com"), "/x", PathKind::Prefix, &age(5), young, false);
        b.rule(Some("a.com"), "/x/", PathKind::Prefix, &age(2), old, false);
        b.default_backend(&age(5), d_young);
        b.default_backend(&age(2), d_old);
        let t = b.build();
        assert_eq!(served(&t, "a.com", "/x/y").as_deref(), Some("old"));
        assert_eq!(served(&t, "b.com", "/").as_deref(), Some("default:d-old"));
        assert_eq!(t.host_count(), 1);
    }

    #[test]
    fn upstream_state_carries_over() {
        let spec = || BackendSpec {
            ingress: age(1).1,
            service: "svc:80".into(),
            endpoints: vec!["10.0.0.1:80".parse().unwrap()],
            h2c: false,
            settings: Settings::default(),
        };
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let first = b.backend(spec());
        b.rule(None, "/", PathKind::Prefix, &age(1), first.clone(), false);
        let t1 = b.build();
        let mut b = t1.builder();
        let second = b.backend(spec());
        assert!(Arc::ptr_eq(&first.endpoints[0], &second.endpoints[0]));
        assert!(Arc::ptr_eq(&first.stats, &second.stats));
    }
}
