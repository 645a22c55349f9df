//! The route table: Ingress v1 rules and Gateway API HTTPRoute rules as plain data, with the
//! matching rules of each.
//!
//! Ingress (the Kubernetes documentation): a request picks a host group — an exact host, then a
//! `*.` wildcard matching exactly one label, then the rules without a host — and within the
//! first group that has a matching path, the longest path wins; on a tie `Exact` beats `Prefix`,
//! then the oldest Ingress wins. When no group matches, the default backend (of the oldest
//! Ingress that has one) answers.
//!
//! Gateway API, per listener port: the most specific host group answers alone — the exact host,
//! else the `*.` wildcard with the longest suffix (a Gateway API wildcard covers one or more
//! labels), else the rules without a host. A request never falls through to a less specific
//! group, so a listener's routes are isolated from those of a less specific listener. Within the
//! group the first match wins in the order of the spec: an `Exact` path, then (where the spec
//! leaves the order to implementations) `RegularExpression` paths, the longest pattern first,
//! then the longest `PathPrefix`; a method match; more header matches; more query matches; the
//! oldest route; `namespace/name`; rule and match order within the route.
//!
//! A port that is both an ingress port and a Gateway listener port tries the Gateway routes
//! first; when none matches, the Ingress rules (and their default backend) answer.

use std::cmp::Reverse;

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use regex::Regex;
use rustls::sign::CertifiedKey;

use super::upstream::Upstream;
use crate::metrics::{Histogram, REQUEST_BUCKETS};

/// What kind of object a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    Ingress,
    HttpRoute,
    GrpcRoute,
}

/// The object a rule came from: an Ingress, an HTTPRoute or a GRPCRoute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub kind: OwnerKind,
    pub namespace: String,
    pub name: String,
}

impl Owner {
    pub fn ingress(namespace: &str, name: &str) -> Owner {
        Owner::new(OwnerKind::Ingress, namespace, name)
    }

    pub fn http_route(namespace: &str, name: &str) -> Owner {
        Owner::new(OwnerKind::HttpRoute, namespace, name)
    }

    pub fn new(kind: OwnerKind, namespace: &str, name: &str) -> Owner {
        Owner {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Requests and latencies of one backend of one Ingress or route, kept across route-table
/// changes.
pub struct BackendStats {
    pub owner: Arc<Owner>,
    pub service: Arc<str>,
    /// Responses by status code.
    statuses: Mutex<Vec<(u16, u64)>>,
    pub latency: Histogram,
}

impl BackendStats {
    pub fn new(owner: &Arc<Owner>, service: &str) -> BackendStats {
        BackendStats {
            owner: owner.clone(),
            service: service.into(),
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

/// Per-backend settings (an Ingress's `switchyard.io/` annotations, an HTTPRoute rule's
/// `timeouts.backendRequest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// From the request sent to the response headers received, per attempt.
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

/// Where requests go: one port of one Service.
pub struct Backend {
    pub owner: Arc<Owner>,
    /// `service:port` as written in the Ingress or route.
    pub service: String,
    /// The usable endpoints (ready ones, or serving terminating ones when none is ready).
    pub endpoints: Vec<Arc<Upstream>>,
    /// The Service port speaks HTTP/2 without TLS (`appProtocol: kubernetes.io/h2c`).
    pub h2c: bool,
    pub settings: Settings,
    /// Header filters of this backend reference alone (a Gateway API `backendRefs[].filters`).
    pub edits: Option<Box<BackendEdits>>,
    pub stats: Arc<BackendStats>,
    /// Round-robin position.
    pub(super) next: std::sync::atomic::AtomicUsize,
}

/// The order of precedence between objects: the oldest first, then by namespace and name.
pub type Age = (i64, Arc<Owner>);

/// A value condition of a header or query parameter match.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(Box<str>),
    /// Matches the whole value.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => **e == *v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// Compiles a regular expression that must match a whole value, with a bound on its compiled
/// size (the pattern comes from a user's object).
pub fn whole_match(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

/// The conditions of an HTTPRoute match besides its path.
#[derive(Debug, Default)]
pub struct Conditions {
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(Box<str>, ValueMatch)>,
}

/// The parts of a request that conditions look at.
pub struct Req<'a> {
    pub method: &'a Method,
    pub headers: &'a dyn FieldValues,
    pub query: Option<&'a str>,
}

/// A request's header fields as conditions read them: in a header map, or kept as the client
/// wrote them.
pub trait FieldValues: Sync {
    /// The values of the fields named `name` as text, joined by commas (RFC 9110 section 5.3)
    /// when there are several; None when there is none, or one that is not text.
    fn joined(&self, name: &HeaderName) -> Option<std::borrow::Cow<'_, str>>;
}

impl FieldValues for HeaderMap {
    fn joined(&self, name: &HeaderName) -> Option<std::borrow::Cow<'_, str>> {
        join(self.get_all(name).iter().map(HeaderValue::as_bytes))
    }
}

/// Field values as [`FieldValues::joined`] gives them. Text is what `HeaderValue::to_str`
/// takes: visible ASCII, spaces and tabs.
pub(super) fn join<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Option<std::borrow::Cow<'a, str>> {
    fn text(v: &[u8]) -> Option<&str> {
        v.iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            .then(|| std::str::from_utf8(v).ok())
            .flatten()
    }
    let first = values.next()?;
    let Some(second) = values.next() else {
        return text(first).map(std::borrow::Cow::Borrowed);
    };
    let all = [first, second].into_iter().chain(values).filter_map(text);
    Some(std::borrow::Cow::Owned(all.collect::<Vec<_>>().join(",")))
}

/// The first value of a query parameter, percent-decoded.
fn query_value<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl Conditions {
    fn matches(&self, req: &Req<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        // A repeated header is matched as its values joined.
        let header_ok = |(name, want): &(HeaderName, ValueMatch)| {
            req.headers.joined(name).is_some_and(|v| want.matches(&v))
        };
        if !self.headers.iter().all(header_ok) {
            return false;
        }
        self.query.iter().all(|(name, want)| {
            req.query
                .and_then(|q| query_value(q, name))
                .is_some_and(|v| want.matches(&v))
        })
    }
}

/// How a rule matches the path (without the query).
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(Box<str>),
    /// Element-wise on `/`, kept without its trailing `/` (so `/` is the empty string).
    Prefix(Box<str>),
    /// The whole path matches the expression.
    Regex(Regex),
}

impl PathMatch {
    pub fn exact(path: &str) -> PathMatch {
        PathMatch::Exact(path.into())
    }

    pub fn prefix(path: &str) -> PathMatch {
        PathMatch::Prefix(path.trim_end_matches('/').into())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => {
                path.starts_with(&**p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Ranks for precedence: the kind (Exact, Regex, Prefix) and the length.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
            PathMatch::Prefix(p) => (2, p.len()),
        }
    }
}

/// A header filter: set (replace), add (append) and remove, in that order.
#[derive(Debug, Default)]
pub struct HeaderEdit {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdit {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// How a filter changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// `ReplaceFullPath`.
    Full(Box<str>),
    /// `ReplacePrefixMatch`: the part the rule's prefix matched is replaced.
    Prefix(Box<str>),
}

impl PathRewrite {
    /// The new path of `path`, which `matched` (a prefix rule's path, without its trailing
    /// `/`) matched.
    pub fn apply(&self, matched: &str, path: &str) -> String {
        match self {
            PathRewrite::Full(p) => p.to_string(),
            PathRewrite::Prefix(with) => {
                let rest = path.get(matched.len()..).unwrap_or("");
                let mut out = with.trim_end_matches('/').to_string();
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// A `RequestRedirect` filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; the request's when None.
    pub scheme: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub path: Option<PathRewrite>,
    pub port: Option<u16>,
    pub status: u16,
}

/// A `URLRewrite` filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<Box<str>>,
    pub path: Option<PathRewrite>,
}

/// What answers the requests of a rule: its filters and its weighted backends.
#[derive(Default)]
pub struct Action {
    /// Weighted destinations; None is a reference that could not be resolved (its share of
    /// requests gets 500, as the Gateway API specifies).
    pub backends: Vec<(u32, Option<Arc<Backend>>)>,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    /// A `CORS` filter: preflights answered here, allowed origins' answers marked.
    pub cors: Option<super::cors::Cors>,
    /// `RequestMirror` filters: copies of requests go there too; their answers are dropped.
    pub mirrors: Vec<Mirror>,
    /// From the request's arrival to the response headers, all attempts included.
    pub request_timeout: Option<Duration>,
    /// Plain-HTTP requests are redirected to HTTPS (an Ingress host with TLS, unless
    /// `switchyard.io/ssl-redirect: "false"`).
    pub ssl_redirect: bool,
}

/// A backend that receives a copy of a share of a route's requests.
pub struct Mirror {
    pub backend: Arc<Backend>,
    /// Mirrored are `numerator` of every `denominator` requests (at random).
    pub numerator: u32,
    pub denominator: u32,
}

impl Mirror {
    /// Whether this request is copied.
    pub fn chosen(&self) -> bool {
        self.numerator >= self.denominator
            || (self.numerator > 0 && rand::random_range(0..self.denominator) < self.numerator)
    }
}

/// What [`Action::pick`] chose.
pub enum Destination<'a> {
    Backend(&'a Arc<Backend>),
    /// An unresolved reference, or a rule with neither backends nor a redirect.
    Invalid,
}

impl Action {
    /// One backend and nothing else (an Ingress path).
    pub fn forward(backend: Arc<Backend>, ssl_redirect: bool) -> Action {
        Action {
            backends: vec![(1, Some(backend))],
            ssl_redirect,
            ..Default::default()
        }
    }

    /// A destination by weight; a rule whose weights are all zero has no valid destination.
    pub fn pick(&self) -> Destination<'_> {
        fn dest(d: &Option<Arc<Backend>>) -> Destination<'_> {
            match d {
                Some(b) => Destination::Backend(b),
                None => Destination::Invalid,
            }
        }
        if let [(_, only)] = self.backends.as_slice() {
            return dest(only);
        }
        let total: u64 = self.backends.iter().map(|(w, _)| u64::from(*w)).sum();
        if total == 0 {
            return Destination::Invalid;
        }
        let mut at = rand::random_range(0..total);
        for (w, d) in &self.backends {
            if at < u64::from(*w) {
                return dest(d);
            }
            at -= u64::from(*w);
        }
        Destination::Invalid
    }

    /// The backend stats of a request that reached no backend.
    pub fn first_backend(&self) -> Option<&Arc<Backend>> {
        self.backends.iter().find_map(|(_, b)| b.as_ref())
    }
}

/// The sort key of a rule within its host group ([`Builder::build`] sorts by it).
type Order = (
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    Age,
    usize,
);

/// One rule: a path and perhaps more conditions, and what answers.
pub struct Route {
    path: PathMatch,
    conditions: Option<Arc<Conditions>>,
    order: Order,
    pub action: Arc<Action>,
}

impl Route {
    /// An Ingress path rule.
    fn ingress(path: PathMatch, age: &Age, action: Arc<Action>) -> Route {
        let (kind, len) = path.rank();
        Route {
            path,
            conditions: None,
            order: (
                0,
                Reverse(len),
                kind,
                Reverse(0),
                Reverse(0),
                age.clone(),
                0,
            ),
            action,
        }
    }

    /// An HTTPRoute or GRPCRoute match; `index` orders the matches of one route.
    fn gateway(m: &GatewayMatch, age: &Age, index: usize, action: Arc<Action>) -> Route {
        let (kind, len) = m.rank.unwrap_or_else(|| m.path.rank());
        let c = m.conditions.as_deref();
        Route {
            path: m.path.clone(),
            conditions: m.conditions.clone(),
            order: (
                kind,
                Reverse(len),
                u8::from(c.is_none_or(|c| c.method.is_none())),
                Reverse(c.map_or(0, |c| c.headers.len())),
                Reverse(c.map_or(0, |c| c.query.len())),
                age.clone(),
                index,
            ),
            action,
        }
    }

    fn matches(&self, path: &str, req: &Req<'_>) -> bool {
        self.path.matches(path) && self.conditions.as_ref().is_none_or(|c| c.matches(req))
    }

    /// The prefix a `PathPrefix` rule matched (for `ReplacePrefixMatch`).
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

/// The rules of one host, in the order they are tried (shared between tables).
#[derive(Clone, Default)]
struct Rules(Vec<Arc<Route>>);

impl Rules {
    fn find(&self, path: &str, req: &Req<'_>) -> Option<&Route> {
        self.0.iter().find(|r| r.matches(path, req)).map(|r| &**r)
    }
}

/// A host group: an exact name, a `*.` wildcard (by what follows `*.`), or every host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostKey {
    Any,
    Exact(Arc<str>),
    Wildcard(Arc<str>),
}

impl HostKey {
    fn of(host: Option<&str>) -> HostKey {
        let Some(h) = host else {
            return HostKey::Any;
        };
        let h = h.to_ascii_lowercase();
        match h.strip_prefix("*.") {
            Some(rest) => HostKey::Wildcard(rest.into()),
            None => HostKey::Exact(h.into()),
        }
    }
}

/// Rules by host: exact names, `*.` wildcards (keyed by what follows `*.`), and no host. Groups
/// are shared between tables until one changes.
#[derive(Clone, Default)]
struct Hosts {
    exact: HashMap<Arc<str>, Arc<Rules>>,
    wildcard: HashMap<Arc<str>, Arc<Rules>>,
    any: Arc<Rules>,
}

impl Hosts {
    /// A group to change (copied first when another table shares it).
    fn group(&mut self, key: &HostKey) -> &mut Rules {
        let group = match key {
            HostKey::Any => &mut self.any,
            HostKey::Exact(h) => self.exact.entry(h.clone()).or_default(),
            HostKey::Wildcard(h) => self.wildcard.entry(h.clone()).or_default(),
        };
        Arc::make_mut(group)
    }

    /// Sorts a group after a change; an empty one is dropped.
    fn settle(&mut self, key: &HostKey) {
        let sort =
            |rules: &mut Arc<Rules>| Arc::make_mut(rules).0.sort_by(|a, b| a.order.cmp(&b.order));
        let (map, h) = match key {
            HostKey::Any => return sort(&mut self.any),
            HostKey::Exact(h) => (&mut self.exact, h),
            HostKey::Wildcard(h) => (&mut self.wildcard, h),
        };
        match map.get_mut(h) {
            Some(rules) if rules.0.is_empty() => {
                map.remove(h);
            }
            Some(rules) => sort(rules),
            None => {}
        }
    }

    /// Ingress: the first group with a matching rule; a wildcard covers one label.
    fn find_ingress(&self, host: &str, path: &str, req: &Req<'_>) -> Option<&Route> {
        let exact = self.exact.get(host);
        let wildcard = host
            .split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest));
        [exact, wildcard, Some(&self.any)]
            .into_iter()
            .flatten()
            .find_map(|rules| rules.find(path, req))
    }

    /// Gateway API: only the most specific group that exists; a wildcard covers one or more
    /// labels, the longest suffix first.
    fn find_gateway(&self, host: &str, path: &str, req: &Req<'_>) -> Option<&Route> {
        let group = self.exact.get(host).or_else(|| {
            host.match_indices('.')
                .find_map(|(i, _)| self.wildcard.get(&host[i + 1..]))
        });
        group.unwrap_or(&self.any).find(path, req)
    }

    fn sort(&mut self) {
        let groups = self
            .exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(std::iter::once(&mut self.any));
        for rules in groups {
            Arc::make_mut(rules).0.sort_by(|a, b| a.order.cmp(&b.order));
        }
    }
}

/// Certificates by server name: exact names, and `*.` wildcards keyed by their suffix.
#[derive(Clone, Default)]
struct Certs {
    exact: HashMap<Box<str>, (Age, Arc<CertifiedKey>)>,
    wildcard: HashMap<Box<str>, (Age, Arc<CertifiedKey>)>,
    /// For any name (a Gateway listener without a hostname).
    any: Option<(Age, Arc<CertifiedKey>)>,
}

/// Keeps the oldest claim.
fn claim<V>(slot: &mut Option<(Age, V)>, age: &Age, value: V) {
    match slot {
        Some((old, _)) if *old <= *age => {}
        _ => *slot = Some((age.clone(), value)),
    }
}

impl Certs {
    fn insert(&mut self, host: Option<&str>, age: &Age, cert: Arc<CertifiedKey>) {
        let Some(host) = host.map(str::to_ascii_lowercase) else {
            return claim(&mut self.any, age, cert);
        };
        let (map, key) = match host.strip_prefix("*.") {
            Some(rest) => (&mut self.wildcard, rest),
            None => (&mut self.exact, host.as_str()),
        };
        let mut slot = map.remove(key);
        claim(&mut slot, age, cert);
        if let Some(v) = slot {
            map.insert(key.into(), v);
        }
    }

    /// `multi_label`: a wildcard covers one or more labels (Gateway API), else exactly one.
    fn get(&self, name: &str, multi_label: bool) -> Option<Arc<CertifiedKey>> {
        if let Some((_, c)) = self.exact.get(name) {
            return Some(c.clone());
        }
        let wildcard = if multi_label {
            name.match_indices('.')
                .find_map(|(i, _)| self.wildcard.get(&name[i + 1..]))
        } else {
            name.split_once('.')
                .and_then(|(_, rest)| self.wildcard.get(rest))
        };
        wildcard.or(self.any.as_ref()).map(|(_, c)| c.clone())
    }
}

/// The Gateway listeners of one port.
#[derive(Clone, Default)]
struct Port {
    tls: bool,
    hosts: Hosts,
    certs: Certs,
}

/// Everything the router needs, as one immutable value.
#[derive(Clone, Default)]
pub struct RouteTable {
    ingress: Hosts,
    default_backend: Option<(Age, Arc<Action>)>,
    certs: Certs,
    /// Gateway listeners by port.
    ports: HashMap<u16, Port>,
    /// Every upstream and backend counter, so the next table keeps their state.
    upstreams: HashMap<(SocketAddr, bool), Arc<Upstream>>,
    stats: HashMap<(Arc<Owner>, Arc<str>), Arc<BackendStats>>,
}

/// What answers a request.
pub enum Target<'a> {
    Route(&'a Route),
    Default(&'a Arc<Action>),
    NotFound,
}

/// `Host` without its port, lower-cased only when it has upper-case letters.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    // Found byte by byte: `:` and `]` are ASCII, so the cuts fall between characters.
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        // An IPv6 literal: keep the brackets, drop the port.
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes
            .iter()
            .rposition(|&b| b == b':')
            .unwrap_or(bytes.len())
    };
    let host = &host[..end];
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
            touched: None,
            kept: Default::default(),
        }
    }

    /// A builder that starts from `self`: objects are taken out ([`Builder::remove`]) and put
    /// in again, and only the host groups they touch are copied and sorted again.
    pub fn editor(&self) -> Builder<'_> {
        Builder {
            previous: self,
            table: self.clone(),
            touched: Some(Default::default()),
            kept: Default::default(),
        }
    }

    /// The route for a request that arrived on `port` (an ingress port when `ingress`), to
    /// `host` (already normalized) and `path` (without the query).
    pub fn route(
        &self,
        port: u16,
        ingress: bool,
        host: &str,
        path: &str,
        req: &Req<'_>,
    ) -> Target<'_> {
        if let Some(r) = self
            .ports
            .get(&port)
            .and_then(|p| p.hosts.find_gateway(host, path, req))
        {
            return Target::Route(r);
        }
        if !ingress {
            return Target::NotFound;
        }
        if let Some(r) = self.ingress.find_ingress(host, path, req) {
            return Target::Route(r);
        }
        match &self.default_backend {
            Some((_, a)) => Target::Default(a),
            None => Target::NotFound,
        }
    }

    /// The certificate for a TLS server name on `port`: a Gateway listener's, else an
    /// Ingress's (on an ingress port).
    pub fn certificate(
        &self,
        port: u16,
        ingress: bool,
        server_name: &str,
    ) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(server_name);
        self.ports
            .get(&port)
            .and_then(|p| p.certs.get(&name, true))
            .or_else(|| ingress.then(|| self.certs.get(&name, false)).flatten())
    }

    /// The Gateway listener ports, and whether each speaks TLS.
    pub fn listener_ports(&self) -> impl Iterator<Item = (u16, bool)> + '_ {
        self.ports.iter().map(|(port, p)| (*port, p.tls))
    }

    /// How many hosts have Ingress rules.
    pub fn host_count(&self) -> usize {
        self.ingress.exact.len() + self.ingress.wildcard.len()
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<BackendStats>> {
        self.stats.values()
    }
}

/// What one backend points at.
pub struct BackendSpec {
    pub owner: Arc<Owner>,
    pub service: String,
    pub endpoints: Vec<SocketAddr>,
    pub h2c: bool,
    pub settings: Settings,
    pub edits: Option<Box<BackendEdits>>,
}

/// Header filters on one backend reference: applied after the rule's own on the way in, before
/// them on the way out.
#[derive(Debug, Default)]
pub struct BackendEdits {
    pub request: HeaderEdit,
    pub response: HeaderEdit,
}

/// One HTTPRoute match, compiled.
#[derive(Clone)]
pub struct GatewayMatch {
    pub path: PathMatch,
    pub conditions: Option<Arc<Conditions>>,
    /// Replaces the path's own rank ([`PathMatch::rank`]): a GRPCRoute's matches rank by the
    /// characters of their service, then of their method.
    pub rank: Option<(u8, usize)>,
}

pub struct Builder<'a> {
    previous: &'a RouteTable,
    table: RouteTable,
    /// Editing: the groups changed (sorted again at the end). Building anew: None.
    touched: Option<std::collections::HashSet<(Option<u16>, HostKey)>>,
    /// The counters kept by this builder (by address): taking an object out does not drop
    /// those its new rules keep, whether they were put in before or after.
    kept: foldhash::HashSet<usize>,
}

/// One recorded builder call; rules are made once, shared by every table that holds them.
enum Op {
    /// A rule in a host group of the Ingress rules (port None) or of a Gateway listener port.
    Route(Option<u16>, HostKey, Arc<Route>),
    Default(Arc<Action>),
    Certificate(Box<str>, Arc<CertifiedKey>),
    Keep(Arc<Backend>),
}

/// The rules of one object (an Ingress, a route), recorded once and applied to every new table
/// ([`Builder::apply`]) while the object and what it refers to stay as they were: a change to
/// one object rebuilds that object's rules only.
pub struct Recorded {
    age: Age,
    ops: Vec<Op>,
}

impl Recorded {
    /// The rules of the object whose age is `age`.
    pub fn new(age: Age) -> Recorded {
        Recorded {
            age,
            ops: Vec::new(),
        }
    }

    pub fn age(&self) -> &Age {
        &self.age
    }

    /// Whether an edit can take these rules out and put them in alone ([`Builder::remove`]):
    /// rules and backends. A default backend or a certificate is claimed between objects, so an
    /// edit that changes one claims them again ([`Builder::reclaim`]).
    pub fn editable(&self) -> bool {
        self.ops
            .iter()
            .all(|op| matches!(op, Op::Route(..) | Op::Keep(_)))
    }

    /// See [`Builder::rule`].
    pub fn rule(&mut self, host: Option<&str>, path: PathMatch, action: Arc<Action>) {
        let route = Route::ingress(path, &self.age, action);
        self.ops
            .push(Op::Route(None, HostKey::of(host), Arc::new(route)));
    }

    /// See [`Builder::default_backend`].
    pub fn default_backend(&mut self, action: Arc<Action>) {
        self.ops.push(Op::Default(action));
    }

    /// See [`Builder::certificate`].
    pub fn certificate(&mut self, host: &str, cert: Arc<CertifiedKey>) {
        self.ops.push(Op::Certificate(host.into(), cert));
    }

    /// See [`Builder::gateway_rule`].
    pub fn gateway_rule(
        &mut self,
        port: u16,
        host: Option<&str>,
        m: &GatewayMatch,
        index: usize,
        action: Arc<Action>,
    ) {
        let route = Route::gateway(m, &self.age, index, action);
        self.ops
            .push(Op::Route(Some(port), HostKey::of(host), Arc::new(route)));
    }

    /// A backend (made with [`Builder::backend`]) whose state later tables keep.
    pub fn keep(&mut self, backend: &Arc<Backend>) {
        self.ops.push(Op::Keep(backend.clone()));
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
        let key: (Arc<Owner>, Arc<str>) = (spec.owner.clone(), spec.service.as_str().into());
        let stats = self
            .table
            .stats
            .entry(key.clone())
            .or_insert_with(|| {
                self.previous
                    .stats
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(BackendStats::new(&spec.owner, &spec.service)))
            })
            .clone();
        Arc::new(Backend {
            owner: spec.owner,
            service: spec.service,
            endpoints,
            h2c: spec.h2c,
            settings: spec.settings,
            edits: spec.edits,
            stats,
            next: Default::default(),
        })
    }

    /// An Ingress path rule; `host` is exact, `*.`-wildcard, or None for every host.
    pub fn rule(&mut self, host: Option<&str>, path: PathMatch, age: &Age, action: Arc<Action>) {
        let route = Route::ingress(path, age, action);
        self.put(None, &HostKey::of(host), Arc::new(route));
    }

    /// The host groups of a port (None: the Ingress rules).
    fn hosts(&mut self, port: Option<u16>) -> &mut Hosts {
        match port {
            None => &mut self.table.ingress,
            Some(p) => &mut self.table.ports.entry(p).or_default().hosts,
        }
    }

    fn put(&mut self, port: Option<u16>, key: &HostKey, route: Arc<Route>) {
        self.hosts(port).group(key).0.push(route);
        if let Some(t) = self.touched.as_mut() {
            t.insert((port, key.clone()));
        }
    }

    /// An Ingress's `defaultBackend`: the oldest Ingress's wins.
    pub fn default_backend(&mut self, age: &Age, action: Arc<Action>) {
        claim(&mut self.table.default_backend, age, action);
    }

    /// A certificate for an Ingress host (exact or `*.` wildcard): the oldest Ingress's wins.
    pub fn certificate(&mut self, host: &str, age: &Age, cert: Arc<CertifiedKey>) {
        self.table.certs.insert(Some(host), age, cert);
    }

    /// A Gateway listener port; `tls` when its listeners are HTTPS.
    pub fn listener(&mut self, port: u16, tls: bool) {
        self.table.ports.entry(port).or_default().tls = tls;
    }

    /// A listener's certificate for its hostname (None: any name): the oldest Gateway's wins.
    pub fn listener_certificate(
        &mut self,
        port: u16,
        host: Option<&str>,
        age: &Age,
        cert: Arc<CertifiedKey>,
    ) {
        let port = self.table.ports.entry(port).or_default();
        port.certs.insert(host, age, cert);
    }

    /// An HTTPRoute match on a listener port; `index` orders the matches of one route (rule,
    /// then match).
    pub fn gateway_rule(
        &mut self,
        port: u16,
        host: Option<&str>,
        m: &GatewayMatch,
        age: &Age,
        index: usize,
        action: Arc<Action>,
    ) {
        let route = Route::gateway(m, age, index, action);
        self.put(Some(port), &HostKey::of(host), Arc::new(route));
    }

    /// Registers a backend made for an earlier table (its stats and upstreams carry on).
    pub fn keep(&mut self, backend: &Arc<Backend>) {
        self.kept.insert(Arc::as_ptr(&backend.stats) as usize);
        let key = (backend.stats.owner.clone(), backend.stats.service.clone());
        self.table
            .stats
            .entry(key)
            .or_insert_with(|| backend.stats.clone());
        for u in &backend.endpoints {
            self.table
                .upstreams
                .entry((u.addr, backend.h2c))
                .or_insert_with(|| u.clone());
        }
    }

    /// Applies the recorded rules of one object.
    pub fn apply(&mut self, r: &Recorded) {
        for op in &r.ops {
            match op {
                Op::Route(port, key, route) => self.put(*port, key, route.clone()),
                Op::Default(action) => self.default_backend(&r.age, action.clone()),
                Op::Certificate(host, cert) => self.certificate(host, &r.age, cert.clone()),
                Op::Keep(backend) => self.keep(backend),
            }
        }
    }

    /// Claims the default backend and the Ingress certificates again from every object's rules
    /// (after an edit changed one).
    pub fn reclaim<'r>(&mut self, all: impl Iterator<Item = &'r Recorded>) {
        self.table.default_backend = None;
        self.table.certs = Certs::default();
        for r in all {
            for op in &r.ops {
                match op {
                    Op::Default(action) => self.default_backend(&r.age, action.clone()),
                    Op::Certificate(host, cert) => self.certificate(host, &r.age, cert.clone()),
                    Op::Route(..) | Op::Keep(_) => {}
                }
            }
        }
    }

    /// Takes the rules of one object out of an edited table ([`RouteTable::editor`]); its
    /// default backend and certificates stay until [`Builder::reclaim`].
    pub fn remove(&mut self, r: &Recorded) {
        for op in &r.ops {
            match op {
                Op::Route(port, key, route) => {
                    self.hosts(*port)
                        .group(key)
                        .0
                        .retain(|x| !Arc::ptr_eq(x, route));
                    if let Some(t) = self.touched.as_mut() {
                        t.insert((*port, key.clone()));
                    }
                }
                Op::Keep(backend) => {
                    let key = (backend.stats.owner.clone(), backend.stats.service.clone());
                    let kept = self.kept.contains(&(Arc::as_ptr(&backend.stats) as usize));
                    if !kept
                        && self
                            .table
                            .stats
                            .get(&key)
                            .is_some_and(|s| Arc::ptr_eq(s, &backend.stats))
                    {
                        self.table.stats.remove(&key);
                    }
                }
                Op::Default(_) | Op::Certificate(..) => {}
            }
        }
    }

    pub fn build(mut self) -> RouteTable {
        match self.touched.take() {
            None => {
                self.table.ingress.sort();
                for port in self.table.ports.values_mut() {
                    port.hosts.sort();
                }
            }
            Some(touched) => {
                for (port, key) in &touched {
                    self.hosts(*port).settle(key);
                }
            }
        }
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_shares_are_drawn() {
        let mirror = |numerator, denominator| Mirror {
            backend: Arc::new(Backend {
                owner: age(0).1,
                service: "m:80".into(),
                endpoints: vec![],
                h2c: false,
                settings: Settings::default(),
                edits: None,
                stats: Arc::new(BackendStats::new(&age(0).1, "m:80")),
                next: Default::default(),
            }),
            numerator,
            denominator,
        };
        let count = |m: &Mirror| (0..1000).filter(|_| m.chosen()).count();
        assert_eq!(count(&mirror(0, 100)), 0);
        assert_eq!(count(&mirror(100, 100)), 1000);
        assert_eq!(count(&mirror(1, 1)), 1000);
        let half = count(&mirror(1, 2));
        assert!(half > 0 && half < 1000, "{half}");
    }

    fn age(n: i64) -> Age {
        (n, Arc::new(Owner::ingress("ns", &format!("ing{n}"))))
    }

    fn backend(b: &mut Builder<'_>, name: &str) -> Arc<Backend> {
        b.backend(BackendSpec {
            owner: age(0).1,
            service: name.into(),
            endpoints: vec![],
            h2c: false,
            settings: Settings::default(),
            edits: None,
        })
    }

    fn service(a: &Action) -> String {
        a.first_backend()
            .map_or(String::new(), |b| b.service.clone())
    }

    fn req<'a>(method: &'a Method, headers: &'a HeaderMap, query: Option<&'a str>) -> Req<'a> {
        Req {
            method,
            headers,
            query,
        }
    }

    #[test]
    fn hosts_are_matched_without_port_trailing_dot_or_case() {
        for (host, normal) in [
            ("Shop.Example:8080", "shop.example"),
            ("shop.example.", "shop.example"),
            ("shop.example.:80", "shop.example"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1"),
            ("bücher.example:80", "bücher.example"),
            (":80", ""),
            ("", ""),
        ] {
            assert_eq!(normalize_host(host), normal, "{host}");
        }
    }

    fn served(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        let headers = HeaderMap::new();
        let get = req(&Method::GET, &headers, None);
        match t.route(80, true, &normalize_host(host), path, &get) {
            Target::Route(r) => Some(service(&r.action)),
            Target::Default(a) => Some(format!("default:{}", service(a))),
            Target::NotFound => None,
        }
    }

    fn rule(b: &mut Builder<'_>, host: Option<&str>, path: PathMatch, n: i64, name: &str) {
        let be = backend(b, name);
        b.rule(host, path, &age(n), Arc::new(Action::forward(be, false)));
    }

    /// The path rules of the Kubernetes documentation's table, end to end with curl, are in
    /// tests/integration/ingress.rs; these are the cases around them.
    #[test]
    fn prefix_is_element_wise_and_exact_wins_ties() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        rule(&mut b, None, PathMatch::prefix("/foo/"), 1, "Prefix/foo/");
        rule(&mut b, None, PathMatch::exact("/foo"), 1, "Exact/foo");
        rule(&mut b, None, PathMatch::prefix("/"), 1, "Prefix/");
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
        rule(
            &mut b,
            Some("Bar.Foo.com"),
            PathMatch::prefix("/api"),
            1,
            "exact",
        );
        rule(&mut b, Some("*.foo.com"), PathMatch::prefix("/"), 1, "wild");
        rule(&mut b, None, PathMatch::prefix("/any"), 1, "any");
        let default = backend(&mut b, "fallback");
        b.default_backend(&age(1), Arc::new(Action::forward(default, false)));
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
        rule(&mut b, Some("a.com"), PathMatch::prefix("/x"), 5, "young");
        rule(&mut b, Some("a.com"), PathMatch::prefix("/x/"), 2, "old");
        for (n, name) in [(5, "d-young"), (2, "d-old")] {
            let be = backend(&mut b, name);
            b.default_backend(&age(n), Arc::new(Action::forward(be, false)));
        }
        let t = b.build();
        assert_eq!(served(&t, "a.com", "/x/y").as_deref(), Some("old"));
        assert_eq!(served(&t, "b.com", "/").as_deref(), Some("default:d-old"));
        assert_eq!(t.host_count(), 1);
    }

    fn route_age(n: i64, name: &str) -> Age {
        (n, Arc::new(Owner::http_route("ns", name)))
    }

    fn gateway(
        b: &mut Builder<'_>,
        host: Option<&str>,
        path: PathMatch,
        conditions: Option<Conditions>,
        age: &Age,
        index: usize,
        name: &str,
    ) {
        let be = backend(b, name);
        let m = GatewayMatch {
            path,
            conditions: conditions.map(Arc::new),
            rank: None,
        };
        b.gateway_rule(
            80,
            host,
            &m,
            age,
            index,
            Arc::new(Action::forward(be, false)),
        );
    }

    fn on_gateway(t: &RouteTable, host: &str, req: &Req<'_>, path: &str) -> Option<String> {
        match t.route(80, false, host, path, req) {
            Target::Route(r) => Some(service(&r.action)),
            _ => None,
        }
    }

    /// The precedence of the HTTPRoute spec: Exact, longest prefix, method, headers, query,
    /// then age, name and rule order.
    #[test]
    fn gateway_precedence() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let old = route_age(1, "old");
        let young = route_age(2, "young");
        let header = |n: &str, v: &str| {
            (
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                ValueMatch::Exact(v.into()),
            )
        };
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/"),
            None,
            &young,
            0,
            "young-root",
        );
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/"),
            None,
            &old,
            1,
            "old-root",
        );
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/a/b"),
            None,
            &young,
            0,
            "long",
        );
        gateway(
            &mut b,
            None,
            PathMatch::exact("/a/b/c"),
            None,
            &young,
            0,
            "exact",
        );
        let post = Conditions {
            method: Some(Method::POST),
            ..Default::default()
        };
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/a"),
            Some(post),
            &young,
            0,
            "post",
        );
        let one = Conditions {
            headers: vec![header("x-a", "1")],
            ..Default::default()
        };
        let two = Conditions {
            headers: vec![header("x-a", "1"), header("x-b", "2")],
            ..Default::default()
        };
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/a"),
            Some(one),
            &old,
            0,
            "one-header",
        );
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/a"),
            Some(two),
            &young,
            0,
            "two-headers",
        );
        let q = Conditions {
            query: vec![(
                "animal".into(),
                ValueMatch::Regex(whole_match("wh.le").unwrap()),
            )],
            ..Default::default()
        };
        gateway(
            &mut b,
            None,
            PathMatch::prefix("/q"),
            Some(q),
            &young,
            0,
            "query",
        );
        let t = b.build();
        let mut headers = HeaderMap::new();
        let get = req(&Method::GET, &headers, None);
        assert_eq!(on_gateway(&t, "h", &get, "/x").as_deref(), Some("old-root"));
        assert_eq!(
            on_gateway(&t, "h", &get, "/a/b/c").as_deref(),
            Some("exact")
        );
        assert_eq!(
            on_gateway(&t, "h", &get, "/a/b/c/d").as_deref(),
            Some("long")
        );
        assert_eq!(on_gateway(&t, "h", &get, "/a").as_deref(), Some("old-root"));
        let post = req(&Method::POST, &headers, None);
        assert_eq!(on_gateway(&t, "h", &post, "/a").as_deref(), Some("post"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let get = req(&Method::GET, &headers, None);
        assert_eq!(
            on_gateway(&t, "h", &get, "/a").as_deref(),
            Some("one-header")
        );
        headers.insert("x-b", HeaderValue::from_static("2"));
        let get = req(&Method::GET, &headers, None);
        assert_eq!(
            on_gateway(&t, "h", &get, "/a").as_deref(),
            Some("two-headers")
        );
        let q = |query| req(&Method::GET, &headers, Some(query));
        assert_eq!(
            on_gateway(&t, "h", &q("animal=whale"), "/q").as_deref(),
            Some("query")
        );
        assert_eq!(
            on_gateway(&t, "h", &q("x=1&animal=wh%61le"), "/q").as_deref(),
            Some("query")
        );
        assert_eq!(
            on_gateway(&t, "h", &q("animal=whales"), "/q").as_deref(),
            Some("old-root")
        );
        // No Ingress fallback on a port that is not an ingress port.
        assert!(matches!(
            t.route(81, false, "h", "/", &get),
            Target::NotFound
        ));
    }

    /// A Gateway wildcard covers one or more labels; the most specific group answers alone.
    #[test]
    fn gateway_hosts_are_isolated() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let a = route_age(1, "r");
        gateway(
            &mut b,
            Some("*.example.com"),
            PathMatch::prefix("/"),
            None,
            &a,
            0,
            "wild",
        );
        gateway(
            &mut b,
            Some("*.foo.example.com"),
            PathMatch::prefix("/"),
            None,
            &a,
            0,
            "deeper",
        );
        gateway(
            &mut b,
            Some("exact.example.com"),
            PathMatch::prefix("/only"),
            None,
            &a,
            0,
            "exact",
        );
        gateway(&mut b, None, PathMatch::prefix("/"), None, &a, 0, "any");
        let t = b.build();
        let headers = HeaderMap::new();
        let get = req(&Method::GET, &headers, None);
        let at = |h: &str, p: &str| on_gateway(&t, h, &get, p);
        assert_eq!(at("a.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(at("a.b.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(at("a.foo.example.com", "/").as_deref(), Some("deeper"));
        assert_eq!(at("exact.example.com", "/only/x").as_deref(), Some("exact"));
        assert_eq!(at("exact.example.com", "/other"), None);
        assert_eq!(at("example.com", "/").as_deref(), Some("any"));
    }

    #[test]
    fn path_rewrites() {
        let prefix = PathRewrite::Prefix("/one".into());
        assert_eq!(prefix.apply("/prefix/one", "/prefix/one/two"), "/one/two");
        assert_eq!(prefix.apply("/prefix/one", "/prefix/one"), "/one");
        let strip = PathRewrite::Prefix("/".into());
        assert_eq!(strip.apply("/strip", "/strip/three"), "/three");
        assert_eq!(strip.apply("/strip", "/strip"), "/");
        assert_eq!(strip.apply("", "/x"), "/x");
        assert_eq!(PathRewrite::Full("/f".into()).apply("/a", "/a/b"), "/f");
    }

    #[test]
    fn weights_split_requests() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let (x, y) = (backend(&mut b, "x"), backend(&mut b, "y"));
        let action = Action {
            backends: vec![(3, Some(x)), (1, Some(y)), (0, None)],
            ..Default::default()
        };
        let mut n = [0; 2];
        for _ in 0..4000 {
            match action.pick() {
                Destination::Backend(b) if b.service == "x" => n[0] += 1,
                Destination::Backend(_) => n[1] += 1,
                Destination::Invalid => panic!("a zero weight was picked"),
            }
        }
        assert!((2700..3300).contains(&n[0]), "{n:?}");
        let none = Action {
            backends: vec![(0, None)],
            ..Default::default()
        };
        assert!(matches!(none.pick(), Destination::Invalid));
        let unresolved = Action {
            backends: vec![(1, None), (1, None)],
            ..Default::default()
        };
        assert!(matches!(unresolved.pick(), Destination::Invalid));
    }

    /// An edit takes one object's rules out and puts its new ones in; the other groups stay
    /// shared with the previous table, and the default backend is claimed again.
    #[test]
    fn edits_touch_only_what_changed() {
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let record = |b: &mut Builder<'_>, n: i64, host: &str, name: &str, default: bool| {
            let mut r = Recorded::new(age(n));
            let be = backend(b, name);
            r.keep(&be);
            if default {
                r.default_backend(Arc::new(Action::forward(be.clone(), false)));
            }
            r.rule(
                Some(host),
                PathMatch::prefix("/"),
                Arc::new(Action::forward(be, false)),
            );
            r
        };
        let one = record(&mut b, 1, "one.example", "one", true);
        let two = record(&mut b, 2, "two.example", "two", false);
        b.apply(&one);
        b.apply(&two);
        let t1 = b.build();
        assert_eq!(
            served(&t1, "other.example", "/").as_deref(),
            Some("default:one")
        );
        let mut e = t1.editor();
        let changed = record(&mut e, 1, "uno.example", "uno", false);
        e.remove(&one);
        e.apply(&changed);
        e.reclaim([&changed, &two].into_iter());
        let t2 = e.build();
        assert_eq!(served(&t2, "uno.example", "/x").as_deref(), Some("uno"));
        assert_eq!(
            served(&t2, "one.example", "/x"),
            None,
            "gone, default gone too"
        );
        assert_eq!(served(&t2, "two.example", "/").as_deref(), Some("two"));
        assert!(
            !t2.ingress.exact.contains_key("one.example"),
            "an emptied group goes"
        );
        assert!(Arc::ptr_eq(
            &t1.ingress.exact["two.example"],
            &t2.ingress.exact["two.example"]
        ));
        assert!(
            t2.stats.keys().all(|(_, s)| &**s != "one"),
            "its counters go"
        );
        // An object compiled again keeps its counters, whichever way round the two are
        // swapped.
        let mut e = t2.editor();
        let again = record(&mut e, 2, "two.example", "two", false);
        e.apply(&again);
        e.remove(&two);
        let t3 = e.build();
        assert!(
            t3.stats.keys().any(|(_, s)| &**s == "two"),
            "its counters stay"
        );
    }

    #[test]
    fn upstream_state_carries_over() {
        let spec = || BackendSpec {
            owner: age(1).1,
            service: "svc:80".into(),
            endpoints: vec!["10.0.0.1:80".parse().unwrap()],
            h2c: false,
            settings: Settings::default(),
            edits: None,
        };
        let empty = RouteTable::default();
        let mut b = empty.builder();
        let first = b.backend(spec());
        b.rule(
            None,
            PathMatch::prefix("/"),
            &age(1),
            Arc::new(Action::forward(first.clone(), false)),
        );
        let t1 = b.build();
        let mut b = t1.builder();
        let second = b.backend(spec());
        assert!(Arc::ptr_eq(&first.endpoints[0], &second.endpoints[0]));
        assert!(Arc::ptr_eq(&first.stats, &second.stats));
    }
}
