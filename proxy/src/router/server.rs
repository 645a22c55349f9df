//! The HTTP and HTTPS listeners and the request path: route, pick an endpoint, forward, stream
//! the response back.

use std::borrow::Cow;
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::cors::Cors;
use super::fast::ClientFields;
use super::h1::{self, UpstreamH1Body};
use super::hop;
use super::mirror::{ClientBody, MirrorStats, RequestBody, Tee};
use super::request::{host_field, normalize_path, request_host, RequestError};
use super::routes::{Action, Backend, BackendStats, Balance, Destination, Redirect, Req, Target};
use super::upstream::{now_ms, Kept, SendError, Sender, Upstream, UpstreamBody};
use super::{Config, RouteSource};

/// What the router answers with: an upstream's body (read by hyper's client or by the lean
/// HTTP/1.1 one) or a short one of its own.
pub enum Body {
    Upstream(UpstreamBody),
    UpstreamH1(UpstreamH1Body),
    Local(Option<Bytes>),
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::UpstreamH1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream(b) => b.is_end_stream(),
            Body::UpstreamH1(b) => b.is_end_stream(),
            Body::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream(b) => b.size_hint(),
            Body::UpstreamH1(b) => b.size_hint(),
            Body::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Everything the connections share.
pub(super) struct Shared {
    pub source: Arc<dyn RouteSource>,
    pub config: Config,
    /// Requests that matched no backend.
    pub unrouted: BackendStats,
    pub connections: Arc<Semaphore>,
    /// Bounds the mirrored requests in flight.
    pub mirror_slots: Arc<Semaphore>,
    pub mirrored: Arc<MirrorStats>,
}

/// Where a request came in, with the forwarding headers that follow from it (built once per
/// connection).
#[derive(Clone)]
pub(super) struct Conn {
    tls: bool,
    /// The local port it arrived on.
    port: u16,
    /// It arrived on an ingress port (Ingress rules apply).
    ingress: bool,
    forwarded_for: HeaderValue,
    forwarded_port: HeaderValue,
    /// `Forwarded` without the host ([`forwarded_prefix`]).
    forwarded: Arc<str>,
    /// `X-Forwarded-For`, `-Proto` and `-Port` and `X-Real-IP` as lines of a head: the same for
    /// every request on the connection.
    forwarded_lines: Arc<[u8]>,
    /// The client's address as the access log writes it.
    peer_text: Arc<str>,
    /// Its answers are written by the router's own HTTP/1.1 server, which writes upstream
    /// fields as they were read ([`h1::WireFields`]); hyper's server needs header maps.
    pub(super) wire_answers: bool,
}

impl Conn {
    fn new(peer: SocketAddr, port: u16, tls: bool, ingress: bool) -> Conn {
        let ip = peer.ip().to_string();
        let proto = if tls { "https" } else { "http" };
        let mut lines = Vec::new();
        h1::write_field(X_FORWARDED_FOR.as_str(), ip.as_bytes(), &mut lines);
        h1::write_field(X_FORWARDED_PROTO.as_str(), proto.as_bytes(), &mut lines);
        h1::write_field(
            X_FORWARDED_PORT.as_str(),
            port.to_string().as_bytes(),
            &mut lines,
        );
        h1::write_field(X_REAL_IP.as_str(), ip.as_bytes(), &mut lines);
        Conn {
            tls,
            port,
            ingress,
            forwarded_for: HeaderValue::from_str(&ip).expect("an IP is a header value"),
            forwarded_port: HeaderValue::from(port),
            forwarded: forwarded_prefix(peer, tls).into(),
            forwarded_lines: lines.into(),
            peer_text: peer.to_string().into(),
            wire_answers: false,
        }
    }
}

pub(super) fn local(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::Local(Some(Bytes::from(format!("{text}\n")))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The protocol a request asks to switch to, for HTTP/1.1 `Connection: upgrade` requests. Only
/// WebSocket is passed on: any other upgrade (`h2c` above all, which would hand the client a raw
/// HTTP/2 connection to the backend past every rule) is dropped with the other hop-by-hop
/// headers, and the request goes on as an ordinary one.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let proto = req.headers().get(header::UPGRADE)?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (asks && proto.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| proto.clone())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The part of RFC 7239's `Forwarded` that one connection fixes: the client and the scheme.
fn forwarded_prefix(peer: SocketAddr, tls: bool) -> String {
    let proto = if tls { "https" } else { "http" };
    match peer.ip() {
        std::net::IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    }
}

/// Block size for [`carve`].
const BLOCK: usize = 2048;

thread_local! {
    /// What is left of this event loop's current block for [`carve`].
    static BLOCK_LEFT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A small per-request value (request id, `Forwarded`) written by `write`, about `len` bytes,
/// cut from a block shared with others: no allocation of its own, and its clones share it. A
/// block is freed with the last value cut from it, so a value held long holds at most one.
fn carve(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    BLOCK_LEFT.with_borrow_mut(|left| {
        if left.capacity() < len {
            *left = BytesMut::with_capacity(BLOCK.max(len));
        }
        write(left);
        left.split().freeze()
    })
}

/// A host taken from the request's target (an HTTP/2 `:authority`) as a field value, cut from
/// the event loop's block (see [`carve`]) rather than copied into an allocation of its own;
/// refused where `HeaderValue::from_str` would refuse it.
fn host_value(h: &str) -> Result<HeaderValue, RequestError> {
    let value = carve(h.len(), |out| out.extend_from_slice(h.as_bytes()));
    HeaderValue::from_maybe_shared(value).map_err(|_| RequestError::BadHost)
}

/// `Forwarded` for one request: the connection's part and the host it asked for (quoted). The
/// host is visible ASCII (it was read from a field as text), so the value is one too.
fn write_forwarded(conn: &Conn, host: &str, out: &mut impl BufMut) {
    out.put_slice(conn.forwarded.as_bytes());
    out.put_slice(b";host=\"");
    let mut rest = host.as_bytes();
    while let Some(i) = rest.iter().position(|b| matches!(b, b'"' | b'\\')) {
        out.put_slice(&rest[..i]);
        out.put_slice(&[b'\\', rest[i]]);
        rest = &rest[i + 1..];
    }
    out.put_slice(rest);
    out.put_slice(b"\"");
}

/// The client's request id (its first `X-Request-Id` field) when it is short printable ASCII,
/// otherwise a new one.
fn request_id(theirs: Option<HeaderValue>) -> HeaderValue {
    match theirs {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            v
        }
        _ => new_request_id(),
    }
}

/// The request id as an answer carries it: marked for HTTP/2's header compression to leave
/// out of its table. Every id is new, so indexing them would only push the fields that repeat
/// (`server`, `content-type`) out of the table and make each answer search a chain of old ids.
pub(super) fn answer_id(id: &HeaderValue) -> HeaderValue {
    let mut id = id.clone();
    id.set_sensitive(true);
    id
}

thread_local! {
    /// This event loop's random half of its request ids, and how many it has made.
    static IDS: std::cell::Cell<(u64, u64)> = std::cell::Cell::new((rand::random(), 0));
}

/// 32 hex digits, unique (not secret): the loop's random half, then its count through a
/// bijective mix (so that consecutive ids do not look alike).
fn new_request_id() -> HeaderValue {
    let (random, count) = IDS.get();
    IDS.set((random, count.wrapping_add(1)));
    let mut mixed = count;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^= mixed >> 31;
    let id = carve(32, |out| {
        out.extend_from_slice(&hex(random));
        out.extend_from_slice(&hex(mixed));
    });
    HeaderValue::from_maybe_shared(id).expect("hex is a valid header value")
}

/// `n` as 16 lower-case hex digits, all at once: each half's nibbles are spread into the bytes
/// of a word, then each byte becomes `'0' + d`, or `'a' + d - 10` past 9.
fn hex(n: u64) -> [u8; 16] {
    fn spread(x: u64) -> u64 {
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        // Nibble i in byte i: the most significant digit in the word's first byte, big-endian.
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    let digits = |x: u64| {
        // 6 + d carries into the high nibble exactly when d > 9.
        let letters = ((x + 6 * ONES) >> 4) & ONES;
        (x + b'0' as u64 * ONES + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
    };
    let (hi, lo) = (digits(spread(n >> 32)), digits(spread(n & 0xffff_ffff)));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi);
    out[8..].copy_from_slice(&lo);
    out
}

/// Picks an endpoint that is not known to be down (any when all are): power of two choices on
/// in-flight requests, or round robin. `tried` are skipped. Nothing is collected: the
/// candidates are counted, then the chosen ones found by their place among them.
pub(super) fn pick(backend: &Backend, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
    let n = backend.endpoints.len();
    if let [only] = backend.endpoints.as_slice() {
        return (!tried.contains(&only.addr)).then(|| only.clone());
    }
    let now = now_ms();
    let eligible = |u: &Arc<Upstream>| !tried.contains(&u.addr);
    // When every endpoint left is down, any of them.
    let any_up = backend
        .endpoints
        .iter()
        .any(|u| eligible(u) && !u.is_down(now));
    let candidate = |u: &&Arc<Upstream>| eligible(u) && (!any_up || !u.is_down(now));
    let len = backend.endpoints.iter().filter(candidate).count();
    let nth = |i: usize| backend.endpoints.iter().filter(candidate).nth(i).cloned();
    match len {
        0 => None,
        1 => nth(0),
        len => match backend.settings.balance {
            Balance::RoundRobin => {
                let i = backend.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
                nth(i % len)
            }
            Balance::LeastRequest => {
                let a = rand::random_range(0..len);
                let b = (a + rand::random_range(1..len)) % len;
                let (x, y) = (nth(a)?, nth(b)?);
                Some(if y.in_flight() < x.in_flight() { y } else { x })
            }
        },
    }
}

/// The request target as the upstream sees it: origin-form for HTTP/1.1, absolute for h2c; with
/// `path`, the normalised path that was routed on instead of the client's.
fn upstream_uri(uri: &Uri, host: &str, path: Option<&str>, h2c: bool) -> Option<Uri> {
    let rewritten = path.map(|p| match uri.query() {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    });
    let pq = rewritten
        .as_deref()
        .unwrap_or_else(|| uri.path_and_query().map_or("/", |p| p.as_str()));
    if h2c {
        let absolute = format!("http://{host}{pq}").parse();
        Some(absolute.unwrap_or_else(|_| Uri::from_static("/")))
    } else if rewritten.is_some() {
        Some(pq.parse().unwrap_or_else(|_| Uri::from_static("/")))
    } else if uri.authority().is_some() {
        // The client's path and query as they are (sharing their bytes), without the rest.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Some(Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/")))
    } else {
        // Already origin-form: nothing to rewrite.
        None
    }
}

/// Rewrites a client's request into what the backend receives: the backend's URI form and
/// protocol, no hop-by-hop headers, and the [`Forwarding`] fields.
fn to_upstream<B>(req: &mut Request<B>, backend: &Backend, conn: &Conn, to: &Routed<'_>) {
    let forwarding = Forwarding::new(conn, to);
    if let Some(uri) = upstream_uri(req.uri(), to.upstream_host(), to.path, backend.h2c) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = if backend.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = req.headers_mut();
    hop::strip(headers);
    forwarding.apply(headers, backend.h2c);
}

/// The fields the router sets on a request it forwards, in place of any the client sent: the
/// host the backend receives, the upgrade that is meant, the `X-Forwarded-*` set, `Forwarded`
/// and the request id. The router is the edge: what clients claim in these is replaced, not
/// trusted. Set in a header map ([`Forwarding::apply`]), or written into an HTTP/1.1 head with
/// the client's other fields ([`Forwarding::write_head`]).
struct Forwarding<'a> {
    conn: &'a Conn,
    /// The host as the client asked for it (`X-Forwarded-Host`).
    original_host: Option<HeaderValue>,
    /// What the backend receives as `Host`.
    upstream_host: Option<HeaderValue>,
    to: &'a Routed<'a>,
}

impl<'a> Forwarding<'a> {
    fn new(conn: &'a Conn, to: &'a Routed<'a>) -> Self {
        let original_host = Some(to.host_value.clone());
        let upstream_host = match to.host_rewrite {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => original_host.clone(),
        };
        Forwarding {
            conn,
            original_host,
            upstream_host,
            to,
        }
    }

    fn proto(&self) -> &'static str {
        if self.conn.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Sets the fields in `headers` (an HTTP/2 backend takes the host from the target).
    fn apply(self, headers: &mut HeaderMap, h2c: bool) {
        let conn = self.conn;
        let proto = self.proto();
        if h2c {
            headers.remove(header::HOST);
        } else if let Some(h) = self.upstream_host {
            headers.insert(header::HOST, h);
        }
        if let Some(proto) = &self.to.upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        headers.insert(X_FORWARDED_FOR, conn.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(h) = self.original_host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        headers.insert(X_FORWARDED_PORT, conn.forwarded_port.clone());
        headers.insert(X_REAL_IP, conn.forwarded_for.clone());
        let host = self.to.host;
        let len = conn.forwarded.len() + 2 * host.len() + 8;
        let forwarded = carve(len, |v| write_forwarded(conn, host, v));
        match HeaderValue::from_maybe_shared(forwarded) {
            Ok(f) => headers.insert(header::FORWARDED, f),
            Err(_) => headers.remove(header::FORWARDED),
        };
        headers.insert(X_REQUEST_ID, self.to.id.clone());
    }

    /// Whether the client's field `name` (in any case) gives way to one of these (in a head
    /// written by [`Forwarding::write_head`]).
    fn replaces(&self, name: &[u8]) -> bool {
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        match name.len() {
            4 if is(&header::HOST) => self.upstream_host.is_some(),
            16 if is(&X_FORWARDED_HOST) => self.original_host.is_some(),
            15 => is(&X_FORWARDED_FOR),
            17 => is(&X_FORWARDED_PROTO),
            16 => is(&X_FORWARDED_PORT),
            9 => is(&X_REAL_IP) || is(&header::FORWARDED),
            12 => is(&X_REQUEST_ID),
            _ => false,
        }
    }

    /// The HTTP/1.1 head of a request without a body or an upgrade: `method target`, the
    /// client's fields but the hop-by-hop ones and those replaced, then these. The fields are
    /// a header map (hop-by-hop ones already removed) or the client's lines as read. Every
    /// value written is a field value (the client's and the connection's were, and the routed
    /// host is text read from one), so no line can be cut short or added.
    fn write_head(&self, method: &Method, target: &str, fields: Fields<'_>, out: &mut Vec<u8>) {
        let conn = self.conn;
        h1::write_request_line(method, target, out);
        if let Some(h) = &self.upstream_host {
            h1::write_field(header::HOST.as_str(), h.as_bytes(), out);
        }
        match fields {
            Fields::Map(map) => h1::write_fields(
                map.iter()
                    .filter(|(n, _)| !self.replaces(n.as_str().as_bytes())),
                out,
            ),
            Fields::Lines(lines) => {
                let close = lines.close_named();
                let mut trailers = false;
                for (name, value) in lines.iter() {
                    if hop::passes(name, close) {
                        if !self.replaces(name) {
                            h1::write_field(name, value, out);
                        }
                    } else if name.eq_ignore_ascii_case(b"te") {
                        trailers |= hop::wants_trailers(value);
                    }
                }
                if trailers {
                    h1::write_field(header::TE.as_str(), b"trailers", out);
                }
            }
        }
        out.extend_from_slice(&conn.forwarded_lines);
        if let Some(h) = &self.original_host {
            h1::write_field(X_FORWARDED_HOST.as_str(), h.as_bytes(), out);
        }
        out.extend_from_slice(b"forwarded: ");
        write_forwarded(conn, self.to.host, out);
        out.extend_from_slice(b"\r\n");
        h1::write_field(X_REQUEST_ID.as_str(), self.to.id.as_bytes(), out);
        out.extend_from_slice(b"\r\n");
    }
}

/// A request's fields: in its header map, or (a fast-path request's) as the client wrote them.
#[derive(Clone, Copy)]
enum Fields<'a> {
    Map(&'a HeaderMap),
    Lines(&'a ClientFields),
}

/// What routing decided about a request, and what the backend is to receive.
struct Routed<'a> {
    /// The one host the request is for, as the client wrote it.
    host: &'a str,
    /// The same, as a field value (the `Host` field when the host came from it).
    host_value: &'a HeaderValue,
    /// The normalised path, when it differs from the request's.
    path: Option<&'a str>,
    id: &'a HeaderValue,
    /// The upgrade that is passed on (WebSocket).
    upgrade: Option<HeaderValue>,
    /// The host the backend receives instead (a `URLRewrite` filter).
    host_rewrite: Option<&'a str>,
}

impl Routed<'_> {
    /// The host the backend is asked for.
    fn upstream_host(&self) -> &str {
        self.host_rewrite.unwrap_or(self.host)
    }
}

/// Moves an upstream answer's fields kept as read ([`h1::WireFields`]) into its header map; an
/// answer whose fields a header map would not take becomes a 502.
pub(super) fn settle_fields(resp: &mut Response<Body>) {
    let Body::UpstreamH1(body) = resp.body_mut() else {
        return;
    };
    let Some(wire) = body.wire.take() else {
        return;
    };
    if wire.into_map(resp.headers_mut()).is_none() {
        *resp = local(StatusCode::BAD_GATEWAY, "malformed response header");
    }
}

/// Sends `req` on `sender`. A failure hands back the request when it never left, so it can go
/// again on a fresh connection (only from a reused HTTP/1.1 connection, or HTTP/2).
pub(super) async fn send(
    sender: Sender,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Option<Kept>), (hyper::Error, Option<Request<RequestBody>>)> {
    match sender {
        Sender::H1 { mut conn, reused } => {
            let sent = Arc::new(AtomicBool::new(false));
            let req = req.map(|body| body.watched(&sent));
            match conn.sender.try_send_request(req).await {
                Ok(resp) => Ok((resp, Some(Kept { conn, sent }))),
                Err(mut e) => {
                    let unsent = e.take_message().filter(|_| reused);
                    let unsent = unsent.map(|r| r.map(RequestBody::unwatched));
                    Err((e.into_error(), unsent))
                }
            }
        }
        Sender::H2(mut sender) => match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, None)),
            Err(mut e) => {
                let unsent = e.take_message();
                Err((e.into_error(), unsent))
            }
        },
    }
}

/// How many times a request that never left is sent again on a fresh connection (a pooled
/// connection closed under it, or an h2c upstream that closed before answering).
const RESENDS: usize = 2;

/// Forwards a request to the backend, retrying a failed connect on another endpoint. Error
/// bodies name the Service, never where its endpoints live.
async fn forward(
    backend: &Backend,
    req: &mut Request<Option<ClientBody>>,
    lines: Option<ClientFields>,
    conn: &Conn,
    to: Routed<'_>,
    shared: &Shared,
    action: &Action,
) -> (Response<Body>, Option<SocketAddr>) {
    // An upgraded connection outlives the request's connection: it holds a connection slot of
    // its own, or is refused.
    let tunnel = match &to.upgrade {
        Some(_) => match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let msg = "too many connections for another upgraded one";
                return (local(StatusCode::SERVICE_UNAVAILABLE, msg), None);
            }
        },
        None => None,
    };
    // The body goes its own way; the head stays where it is.
    let body = req.body_mut().take();
    let downstream_upgrade = tunnel.as_ref().map(|_| hyper::upgrade::on(&mut *req));
    let version = req.version();
    let mut body = Tee::new(body);
    // Mirrors and filters work on the header map.
    let mut lines = lines;
    if !action.mirrors.is_empty() && !fill_map(req, lines.take()) {
        return (local(StatusCode::BAD_REQUEST, MALFORMED_FIELD), None);
    }
    if tunnel.is_none() {
        for m in action.mirrors.iter().filter(|m| m.chosen()) {
            mirror(shared, req, body.copy(), conn, &to, action, &m.backend);
        }
    }
    if !backend.h2c && tunnel.is_none() && body.is_end_stream() {
        let edited = !action.request_headers.is_empty()
            || backend
                .edits
                .as_ref()
                .is_some_and(|e| !e.request.is_empty());
        let answer = if edited {
            if !fill_map(req, lines) {
                return (local(StatusCode::BAD_REQUEST, MALFORMED_FIELD), None);
            }
            to_upstream(req, backend, conn, &to);
            edit_request(req.headers_mut(), action, backend);
            let head = |out: &mut Vec<u8>| h1::encode(req, out);
            forward_h1(backend, req.method(), &head, version, conn.wire_answers).await
        } else {
            // No filter edits the fields: the forwarding ones go into the head as it is
            // written, not into the map first.
            let forwarding = Forwarding::new(conn, &to);
            let fields = match &lines {
                Some(lines) => Fields::Lines(lines),
                None => {
                    hop::strip(req.headers_mut());
                    Fields::Map(req.headers())
                }
            };
            let uri = upstream_uri(req.uri(), to.upstream_host(), to.path, false);
            let target = uri.as_ref().unwrap_or(req.uri()).path_and_query();
            let target = target.map_or("/", |p| p.as_str());
            let head = |out: &mut Vec<u8>| forwarding.write_head(req.method(), target, fields, out);
            forward_h1(backend, req.method(), &head, version, conn.wire_answers).await
        };
        h1::spare(std::mem::take(req.headers_mut()));
        return answer;
    }
    if !fill_map(req, lines) {
        return (local(StatusCode::BAD_REQUEST, MALFORMED_FIELD), None);
    }
    let mut req = std::mem::take(req).map(|_| body.into_body());
    to_upstream(&mut req, backend, conn, &to);
    edit_request(req.headers_mut(), action, backend);
    // Boxed: its state would otherwise be part of every request's future, which is moved
    // whole when a request starts.
    Box::pin(forward_hyper(
        backend,
        req,
        version,
        tunnel,
        downstream_upgrade,
    ))
    .await
}

/// [`forward`] through hyper's client: requests with a body, upgrades and h2c backends.
async fn forward_hyper(
    backend: &Backend,
    mut req: Request<RequestBody>,
    version: Version,
    tunnel: Option<tokio::sync::OwnedSemaphorePermit>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> (Response<Body>, Option<SocketAddr>) {
    let settings = &backend.settings;
    let mut attempts = Attempts::new(backend);
    while let Some(upstream) = attempts.next() {
        let in_flight = upstream.start();
        let sender = match upstream.sender(settings.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                if matches!(e, SendError::Connect(_)) {
                    upstream.mark_down();
                }
                tracing::debug!(upstream = %upstream.addr, error = %e, "upstream connect failed");
                continue;
            }
        };
        let sent = tokio::time::timeout(settings.response_timeout, send(sender, req)).await;
        let (resp, keep) = match sent {
            Err(_) => return attempts.timed_out(&upstream),
            // The connection closed under the request before it went out: the request is
            // intact, so it goes again on a fresh connection.
            Ok(Err((e, Some(unsent)))) if attempts.resend(&upstream, &e) => {
                req = unsent;
                continue;
            }
            Ok(Err((e, _))) => return attempts.failed(&upstream, &e),
            Ok(Ok(r)) => r,
        };
        let addr = upstream.addr;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(downstream), Some(permit)) = (downstream_upgrade, tunnel) {
                return (switch(resp, downstream, in_flight, permit), Some(addr));
            }
        }
        let (mut parts, body) = resp.into_parts();
        hop::strip(&mut parts.headers);
        // The client's protocol, whatever the upstream's was.
        parts.version = version;
        let body = Body::Upstream(UpstreamBody::new(body, in_flight, keep));
        return (Response::from_parts(parts, body), Some(addr));
    }
    attempts.exhausted()
}

/// [`forward`] for the common case, through the lean HTTP/1.1 client: a request without a body
/// or an upgrade to an HTTP/1.1 backend. The same endpoint choice, connect retries, resends
/// and errors.
async fn forward_h1(
    backend: &Backend,
    method: &Method,
    head: &(dyn Fn(&mut Vec<u8>) + Sync),
    version: Version,
    wire: bool,
) -> (Response<Body>, Option<SocketAddr>) {
    let settings = &backend.settings;
    let mut attempts = Attempts::new(backend);
    while let Some(upstream) = attempts.next() {
        let (conn, reused) = match h1::Conn::pooled(upstream.addr) {
            Some(c) => (c, true),
            None => match upstream.connect(settings.connect_timeout).await {
                Ok(tcp) => (h1::Conn::new(tcp, upstream.addr), false),
                Err(e) => {
                    upstream.mark_down();
                    tracing::debug!(upstream = %upstream.addr, error = %e, "upstream connect failed");
                    continue;
                }
            },
        };
        let timeout = settings.response_timeout;
        let exchange = h1::exchange(conn, method, head, wire, upstream.start(), timeout);
        let resp = match exchange.await {
            Err(h1::Error::TimedOut) => return attempts.timed_out(&upstream),
            // A pooled connection closed under the request: it goes again on a fresh one
            // when repeating it is harmless.
            Err(h1::Error::Closed(e))
                if reused && method.is_idempotent() && attempts.resend(&upstream, &e) =>
            {
                continue
            }
            Err(e) => return attempts.failed(&upstream, &e),
            Ok(r) => r,
        };
        // Its hop-by-hop fields were left out as its head was read.
        let (mut parts, body) = resp.into_parts();
        parts.version = version;
        let resp = Response::from_parts(parts, Body::UpstreamH1(body));
        return (resp, Some(upstream.addr));
    }
    attempts.exhausted()
}

/// Endpoints one request tries at most.
const TRIES: usize = 3;

/// The endpoints one request tries: up to [`TRIES`], each once, and resends of a request that a
/// closing connection never took. Its answers name the Service, never where its endpoints live.
struct Attempts<'a> {
    backend: &'a Backend,
    /// The first `count` are the endpoints tried so far.
    tried: [SocketAddr; TRIES],
    count: usize,
    resends: usize,
}

impl<'a> Attempts<'a> {
    fn new(backend: &'a Backend) -> Attempts<'a> {
        Attempts {
            backend,
            tried: [SocketAddr::from(([0, 0, 0, 0], 0)); TRIES],
            count: 0,
            resends: 0,
        }
    }

    /// The next endpoint to try, if any is left.
    fn next(&mut self) -> Option<Arc<Upstream>> {
        if self.count >= self.backend.endpoints.len().clamp(1, TRIES) {
            return None;
        }
        let upstream = pick(self.backend, &self.tried[..self.count])?;
        self.tried[self.count] = upstream.addr;
        self.count += 1;
        Some(upstream)
    }

    /// Whether the request may go to the same endpoint again on a fresh connection.
    fn resend(&mut self, upstream: &Upstream, e: &dyn std::fmt::Display) -> bool {
        if self.resends >= RESENDS {
            return false;
        }
        tracing::debug!(upstream = %upstream.addr, error = %e, "retrying on a new connection");
        self.resends += 1;
        self.count -= 1;
        true
    }

    fn service(&self) -> String {
        format!("{}/{}", self.backend.owner.namespace, self.backend.service)
    }

    fn timed_out(&self, upstream: &Upstream) -> (Response<Body>, Option<SocketAddr>) {
        let msg = format!("service {} timed out", self.service());
        (
            local(StatusCode::GATEWAY_TIMEOUT, &msg),
            Some(upstream.addr),
        )
    }

    fn failed(
        &self,
        upstream: &Upstream,
        e: &dyn std::fmt::Display,
    ) -> (Response<Body>, Option<SocketAddr>) {
        tracing::debug!(upstream = %upstream.addr, error = %e, "upstream failed");
        let msg = format!("service {} failed to answer", self.service());
        (local(StatusCode::BAD_GATEWAY, &msg), Some(upstream.addr))
    }

    fn exhausted(&self) -> (Response<Body>, Option<SocketAddr>) {
        let msg = format!(
            "no endpoint of service {} accepted a connection",
            self.service()
        );
        (
            local(StatusCode::BAD_GATEWAY, &msg),
            self.tried[..self.count].last().copied(),
        )
    }
}

/// A route's own header filters come last: they may set what the router would; a backend
/// reference's filters after the rule's.
fn edit_request(headers: &mut HeaderMap, action: &Action, backend: &Backend) {
    action.request_headers.apply(headers);
    if let Some(e) = &backend.edits {
        e.request.apply(headers);
    }
}

/// Sends a copy of `req` (the client's, not yet rewritten) to a mirror backend, unless too many
/// are in flight.
fn mirror<B>(
    shared: &Shared,
    req: &Request<B>,
    body: RequestBody,
    conn: &Conn,
    to: &Routed<'_>,
    action: &Action,
    backend: &Arc<Backend>,
) {
    let Ok(slot) = shared.mirror_slots.clone().try_acquire_owned() else {
        shared.mirrored.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    to_upstream(&mut copy, backend, conn, to);
    edit_request(copy.headers_mut(), action, backend);
    let stats = shared.mirrored.clone();
    tokio::spawn(super::mirror::run(backend.clone(), copy, stats, slot));
}

/// A 101 from the upstream: answer the client with it and join the two upgraded connections.
fn switch(
    resp: Response<Incoming>,
    downstream: hyper::upgrade::OnUpgrade,
    in_flight: super::upstream::InFlight,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    let mut out = Response::new(Body::Local(None));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = resp.headers().clone();
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let _held = (in_flight, slot);
        let (Ok(up), Ok(down)) = (upstream.await, downstream.await) else {
            return;
        };
        let mut up = TokioIo::new(up);
        let mut down = TokioIo::new(down);
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    out
}

/// What a request is answered with before any backend is asked.
fn no_backend(a: Option<&Action>) -> Response<Body> {
    match a {
        None => local(
            StatusCode::NOT_FOUND,
            "no ingress rule or route matches this host and path",
        ),
        Some(_) => local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this route has no valid backend",
        ),
    }
}

/// Puts a fast-path request's fields, kept as read, into its header map, for what works on
/// one; false when the map refuses one of them (the request is then answered 400).
fn fill_map<B>(req: &mut Request<B>, lines: Option<ClientFields>) -> bool {
    match lines.map(|l| l.to_map()) {
        None => true,
        Some(Some(map)) => {
            *req.headers_mut() = map;
            true
        }
        Some(None) => false,
    }
}

/// Why a request with a field that the http types refuse is answered 400 (see [`fill_map`]).
const MALFORMED_FIELD: &str = "malformed header field";

/// A 400 answered before the request reached a backend, counted with the unrouted ones.
fn bad_request(text: &str, shared: &Shared, started: Instant) -> Response<Body> {
    shared.unrouted.record(400, started.elapsed());
    local(StatusCode::BAD_REQUEST, text)
}

/// Routes and answers one request; its body is None when the request has none. A fast-path
/// request comes with its fields kept as read (`lines`) and an empty header map. Returns the
/// answer and the request id it carries, which the connection's writer adds (in place of any
/// `X-Request-Id` the answer has).
pub(super) async fn handle(
    shared: &Shared,
    req: &mut Request<Option<ClientBody>>,
    lines: Option<ClientFields>,
    conn: &Conn,
) -> (Response<Body>, HeaderValue) {
    let started = Instant::now();
    let id = request_id(match &lines {
        Some(l) => l.request_id(),
        None => req.headers().get(X_REQUEST_ID).cloned(),
    });
    // One host and one path: routed on, and forwarded.
    let field = match &lines {
        Some(l) => l.host(),
        None => host_field(req.headers()),
    };
    let checked = field.and_then(|field| {
        let h = request_host(req.uri(), field)?;
        let rewritten = match normalize_path(req.uri().path())? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        // The host kept past the request: the Host header itself (sharing its bytes) when it
        // is the one routed on.
        let kept = match (req.uri().authority(), field) {
            (None, Some(v)) => v.clone(),
            _ => host_value(h)?,
        };
        Ok((kept, rewritten))
    });
    let (host_value, rewritten) = match checked {
        Ok(c) => c,
        Err(e) => return (bad_request(&e.to_string(), shared, started), id),
    };
    let path = rewritten.as_deref().unwrap_or(req.uri().path());
    let raw_host = host_value.to_str().unwrap_or("");
    let host = super::routes::normalize_host(raw_host);
    let version = req.version();
    let routes = shared.source.routes();
    let view = Req {
        method: req.method(),
        headers: match &lines {
            Some(l) => l,
            None => req.headers(),
        },
        query: req.uri().query(),
    };
    let (action, matched) = match routes.route(conn.port, conn.ingress, &host, path, &view) {
        Target::Route(r) => {
            // The prefix that matched is kept only for what rewrites paths with it.
            let a = &r.action;
            let rewrites =
                a.redirect.is_some() || a.rewrite.as_ref().is_some_and(|w| w.path.is_some());
            let matched = r.matched_prefix().filter(|_| rewrites).map(str::to_owned);
            (Some(a.clone()), matched)
        }
        Target::Default(a) => (Some(a.clone()), None),
        Target::NotFound => (None, None),
    };
    drop(routes);
    // Kept for the access log only.
    let logged = shared
        .config
        .access_log
        .then(|| (req.method().clone(), req.uri().clone()));
    let matched = matched.as_deref().unwrap_or("");
    let mut backend = None;
    // A CORS route answers preflights itself and marks the answers to allowed origins; it
    // reads the fields in a header map.
    let cors = action.as_deref().and_then(|a| a.cors.as_ref());
    let cors_map = match (cors, &lines) {
        (Some(_), Some(l)) => match l.to_map() {
            Some(map) => Some(map),
            None => return (bad_request(MALFORMED_FIELD, shared, started), id),
        },
        _ => None,
    };
    let fields = cors_map.as_ref().unwrap_or(req.headers());
    let preflight = cors.is_some() && Cors::is_preflight(req.method(), fields);
    let origin = cors.and_then(|_| fields.get(header::ORIGIN).cloned());
    let (resp, upstream) = match action.as_deref() {
        Some(a) if a.ssl_redirect && !conn.tls => {
            (redirect_to_https(shared, &host, req.uri()), None)
        }
        Some(a) if preflight => {
            let mut resp = local(StatusCode::OK, "");
            if let Some(cors) = &a.cors {
                resp.headers_mut().extend(cors.preflight(fields));
            }
            (resp, None)
        }
        Some(a) if a.redirect.is_some() => {
            let r = a.redirect.as_ref().expect("checked");
            (redirect(r, conn, &host, path, matched, req.uri()), None)
        }
        None => (no_backend(None), None),
        Some(a) => match a.pick() {
            Destination::Invalid => {
                backend = a.first_backend().cloned();
                (no_backend(Some(a)), None)
            }
            Destination::Backend(b) if b.endpoints.is_empty() => {
                backend = Some(b.clone());
                let msg = format!(
                    "service {}/{} has no ready endpoint",
                    b.owner.namespace, b.service
                );
                (local(StatusCode::SERVICE_UNAVAILABLE, &msg), None)
            }
            Destination::Backend(b) => {
                backend = Some(b.clone());
                let rewrite = a.rewrite.as_ref();
                let new_path = rewrite
                    .and_then(|r| r.path.as_ref())
                    .map(|p| p.apply(matched, path));
                let to = Routed {
                    host: raw_host,
                    host_value: &host_value,
                    path: new_path.as_deref().or(rewritten.as_deref()),
                    id: &id,
                    upgrade: upgrade_protocol(req),
                    host_rewrite: rewrite.and_then(|r| r.hostname.as_deref()),
                };
                // Awaited where it is made: a future kept in a local first is copied whole
                // (more than a kilobyte) on the way to being awaited.
                match a.request_timeout {
                    None => forward(b, req, lines, conn, to, shared, a).await,
                    Some(limit) => {
                        match tokio::time::timeout(
                            limit,
                            forward(b, req, lines, conn, to, shared, a),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                let msg = format!(
                                    "service {}/{} timed out",
                                    b.owner.namespace, b.service
                                );
                                (local(StatusCode::GATEWAY_TIMEOUT, &msg), None)
                            }
                        }
                    }
                }
            }
        },
    };
    let mut resp = resp;
    let edited = backend
        .as_ref()
        .and_then(|b| b.edits.as_ref())
        .is_some_and(|e| !e.response.is_empty())
        || action
            .as_ref()
            .is_some_and(|a| !a.response_headers.is_empty() || (a.cors.is_some() && !preflight));
    let wire = match resp.body() {
        Body::UpstreamH1(b) => b.wire.as_ref(),
        _ => None,
    };
    // Filters, and the request id that replaces an upstream's, work on the header map.
    if wire.is_some_and(|w| edited || w.request_id) {
        settle_fields(&mut resp);
    }
    if let Some(e) = backend.as_ref().and_then(|b| b.edits.as_ref()) {
        e.response.apply(resp.headers_mut());
    }
    if let Some(a) = &action {
        a.response_headers.apply(resp.headers_mut());
        if let (Some(cors), false) = (&a.cors, preflight) {
            cors.answer(origin.as_ref(), resp.headers_mut());
        }
    }
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let stats = backend.as_ref().map_or(&shared.unrouted, |b| &*b.stats);
    stats.record(status, took);
    if let Some((method, uri)) = logged {
        let path = rewritten.as_deref().unwrap_or(uri.path());
        let entry = super::access::Entry {
            client: &conn.peer_text,
            method: &method,
            host: &host,
            path,
            version,
            status,
            upstream,
            owner: backend.as_ref().map(|b| &*b.owner),
            service: backend.as_ref().map_or("", |b| b.service.as_str()),
            request_id: id.to_str().unwrap_or(""),
            duration_us: took.as_micros() as u64,
        };
        super::access::record(shared.config.access_log_format, &entry);
    }
    (resp, id)
}

/// A `RequestRedirect` filter's answer. Unset parts come from the request; the port is left
/// out when it is the scheme's own.
fn redirect(
    r: &Redirect,
    conn: &Conn,
    host: &str,
    path: &str,
    matched: &str,
    uri: &Uri,
) -> Response<Body> {
    let scheme = r
        .scheme
        .as_deref()
        .unwrap_or(if conn.tls { "https" } else { "http" });
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(_)) if scheme == "https" => 443,
        (None, Some(_)) if scheme == "http" => 80,
        _ => conn.port,
    };
    let host = r.hostname.as_deref().unwrap_or(host);
    let path = r
        .path
        .as_ref()
        .map_or_else(|| path.to_string(), |p| p.apply(matched, path));
    let mut location = format!("{scheme}://{host}");
    if !matches!((scheme, port), ("http", 80) | ("https", 443)) {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut resp = local(status, "redirected");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_to_https(shared: &Shared, host: &str, uri: &Uri) -> Response<Body> {
    let port = shared
        .config
        .https
        .map(|a| a.port())
        .filter(|p| *p != 443)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut resp = local(
        StatusCode::PERMANENT_REDIRECT,
        "this host is served over HTTPS",
    );
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{port}{pq}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Serves an HTTP/1 connection with hyper's server: what the router's own HTTP/1.1 server
/// ([`super::fast`]) hands over, with the bytes it read in front.
pub(super) async fn serve_io<I>(shared: Arc<Shared>, io: I, mut conn: Conn)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    conn.wire_answers = false;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .max_buf_size(shared.config.max_header_bytes);
    let call = move |req: Request<Incoming>| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move {
            let mut req = req.map(|b| Some(ClientBody::Left(b)));
            let (mut resp, id) = handle(&shared, &mut req, None, &conn).await;
            // hyper writes the header map alone (its connections do not ask for fields kept
            // as read; this keeps any there would be).
            settle_fields(&mut resp);
            resp.headers_mut().insert(X_REQUEST_ID, answer_id(&id));
            Ok::<_, Infallible>(resp)
        }
    };
    let service = hyper::service::service_fn(call);
    let _ = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

/// Accepts connections up to the connection limit; with `tls`, completes the handshake first.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ingress: bool,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A connection takes a slot before it is served; at the limit this loop waits with the
        // one connection it accepted. An idle loop holds no slot.
        let Ok(permit) = shared.connections.clone().acquire_owned().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let shared = shared.clone();
        let conn = Conn::new(peer, local.port(), tls.is_some(), ingress);
        // Two kinds of task, each as large as its own connection's state: a plain connection
        // does not carry room for a TLS session.
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    super::fast::serve(shared, tcp, conn).await
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let handshake =
                        tokio::time::timeout(shared.config.header_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                super::h2::serve(shared, stream, conn).await
                            } else {
                                super::fast::serve(shared, stream, conn).await
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::routes::{Owner, OwnerKind, Settings};

    fn backend(endpoints: usize, balance: Balance) -> Backend {
        let owner = Arc::new(Owner::new(OwnerKind::Ingress, "default", "web"));
        Backend {
            stats: Arc::new(BackendStats::new(&owner, "web:80")),
            owner,
            service: "web:80".into(),
            endpoints: (0..endpoints)
                .map(|i| Arc::new(Upstream::new(([10, 0, 0, i as u8], 80).into(), false)))
                .collect(),
            h2c: false,
            settings: Settings {
                balance,
                ..Settings::default()
            },
            edits: None,
            next: Default::default(),
        }
    }

    fn last_octets(b: &Backend, tried: &[SocketAddr], picks: usize) -> Vec<u8> {
        (0..picks)
            .map(|_| match pick(b, tried).map(|u| u.addr.ip()) {
                Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
                other => panic!("picked {other:?}"),
            })
            .collect()
    }

    #[test]
    fn endpoints_are_picked_in_turn_skipping_the_tried_and_the_down() {
        let b = backend(3, Balance::RoundRobin);
        assert_eq!(last_octets(&b, &[], 6), [0, 1, 2, 0, 1, 2]);
        let tried = [b.endpoints[1].addr];
        let picked = last_octets(&b, &tried, 4);
        assert!(picked.iter().all(|&o| o != 1), "{picked:?}");
        assert!(picked.contains(&0) && picked.contains(&2), "{picked:?}");

        b.endpoints[0].mark_down();
        let picked = last_octets(&b, &[], 6);
        assert!(picked.iter().all(|&o| o != 0), "{picked:?}");
        // Down and the only one not tried: still chosen before giving up.
        let tried = [b.endpoints[1].addr, b.endpoints[2].addr];
        assert_eq!(last_octets(&b, &tried, 2), [0, 0]);
        // Every endpoint down: any of them.
        for u in &b.endpoints {
            u.mark_down();
        }
        let picked = last_octets(&b, &[], 6);
        assert_eq!(picked.len(), 6);
        let every = [
            b.endpoints[0].addr,
            b.endpoints[1].addr,
            b.endpoints[2].addr,
        ];
        assert!(pick(&b, &every).is_none());
    }

    #[test]
    fn hex_digits_are_those_format_writes() {
        let mut n: u64 = 0x0123_4567_89ab_cdef;
        for _ in 0..10_000 {
            assert_eq!(hex(n), format!("{n:016x}").as_bytes(), "{n:#x}");
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        for n in [0, u64::MAX, 0x9999_9999_9999_9999, 0xaaaa_aaaa_aaaa_aaaa] {
            assert_eq!(hex(n), format!("{n:016x}").as_bytes(), "{n:#x}");
        }
    }

    #[test]
    fn hosts_from_targets_are_the_values_from_str_makes() {
        for host in [
            "a.example",
            "a.example:8443",
            "[::1]:80",
            "with space\tand tab",
            "",
            "ü.example",
            "a\u{7f}b",
            "a\nb",
            "a\0b",
        ] {
            let ours = host_value(host).ok();
            assert_eq!(ours, HeaderValue::from_str(host).ok(), "{host:?}");
        }
        // Two hosts cut one after the other stay apart.
        let (a, b) = (host_value("a.example"), host_value("b.example"));
        assert_eq!(a.unwrap(), "a.example");
        assert_eq!(b.unwrap(), "b.example");
    }

    #[test]
    fn request_ids_are_kept_when_plain_and_otherwise_new_and_unique() {
        let theirs = |v: &str| Some(HeaderValue::from_str(v).unwrap());
        assert_eq!(request_id(theirs("client-id-1")), "client-id-1");
        let mut seen = std::collections::HashSet::new();
        for bad in ["", "has space", &"x".repeat(129)] {
            let id = request_id(theirs(bad));
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert!(seen.insert(id));
        }
        for _ in 0..10_000 {
            assert!(seen.insert(request_id(None)));
        }
        // Consecutive ids differ in their second half throughout, not in a last digit.
        let (a, b) = (new_request_id(), new_request_id());
        let differing = a.as_bytes()[16..]
            .iter()
            .zip(&b.as_bytes()[16..])
            .filter(|(x, y)| x != y)
            .count();
        assert!(differing > 4, "{a:?} {b:?}");
    }

    #[test]
    fn upstream_targets_are_origin_form_or_absolute_for_h2c() {
        let target = |uri: &str, path: Option<&str>, h2c: bool| {
            let uri: Uri = uri.parse().unwrap();
            upstream_uri(&uri, "b.example", path, h2c).map(|u| u.to_string())
        };
        assert_eq!(target("/a?b=1", None, false), None);
        let absolute = "https://b.example:8443/a/b?c=%20";
        assert_eq!(target(absolute, None, false).as_deref(), Some("/a/b?c=%20"));
        assert_eq!(
            target("https://b.example", None, false).as_deref(),
            Some("/")
        );
        assert_eq!(
            target(absolute, Some("/x"), false).as_deref(),
            Some("/x?c=%20")
        );
        assert_eq!(target("/a", Some("/x/"), false).as_deref(), Some("/x/"));
        assert_eq!(
            target("/a?q", None, true).as_deref(),
            Some("http://b.example/a?q")
        );
    }

    /// The head's request line and its fields, sorted.
    fn head_parts(head: &[u8]) -> (String, Vec<(String, String)>) {
        let text = std::str::from_utf8(head).unwrap();
        let text = text.strip_suffix("\r\n\r\n").expect("a whole head");
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap().to_string();
        let mut fields: Vec<_> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("name: value");
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        fields.sort();
        (first, fields)
    }

    #[test]
    fn forwarding_fields_written_into_a_head_are_those_set_in_a_map() {
        let peer: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let id = HeaderValue::from_static("id-1");
        for (uri, client_host, routed, rewrite, tls) in [
            ("/a?b", Some("shop.example"), "shop.example", None, false),
            (
                "http://shop.example:80/a",
                Some("shop.example"),
                "shop.example:80",
                None,
                true,
            ),
            ("/a", None, "", None, false),
            ("/q", Some("we\"ird\\host"), "we\"ird\\host", None, false),
            (
                "/r",
                Some("shop.example"),
                "shop.example",
                Some("in.example"),
                false,
            ),
        ] {
            let mut req = Request::new(());
            *req.uri_mut() = uri.parse().unwrap();
            let fields = req.headers_mut();
            if let Some(h) = client_host {
                fields.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            let client_fields = [
                ("x-forwarded-for", "203.0.113.9"),
                ("X-Forwarded-Host", "evil.example"),
                ("x-forwarded-proto", "gopher"),
                ("x-forwarded-port", "1"),
                ("x-real-ip", "203.0.113.9"),
                ("forwarded", "for=203.0.113.9"),
                ("x-request-id", "theirs"),
                ("keep-alive", "timeout=5"),
                ("Connection", "close"),
                ("close", "x"),
                ("TE", "gzip, trailers"),
                ("accept", "*/*"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ];
            for (n, v) in client_fields {
                fields.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            // As `handle` keeps it: the Host field unless the target named the host.
            let kept = client_host.filter(|_| uri.starts_with('/'));
            let host_value = HeaderValue::from_str(kept.unwrap_or(routed)).unwrap();
            let to = Routed {
                host: routed,
                host_value: &host_value,
                path: None,
                id: &id,
                upgrade: None,
                host_rewrite: rewrite,
            };
            let conn = Conn::new(peer, 8443, tls, true);
            let b = backend(1, Balance::RoundRobin);

            let mut mapped = req.clone();
            to_upstream(&mut mapped, &b, &conn, &to);
            let mut through_map = Vec::new();
            h1::encode(&mapped, &mut through_map);

            let forwarding = Forwarding::new(&conn, &to);
            hop::strip(req.headers_mut());
            let target = upstream_uri(req.uri(), to.upstream_host(), None, false);
            let target = target
                .as_ref()
                .unwrap_or(req.uri())
                .path_and_query()
                .unwrap();
            let mut written = Vec::new();
            let map = Fields::Map(req.headers());
            forwarding.write_head(req.method(), target.as_str(), map, &mut written);

            let (line, fields) = head_parts(&written);
            assert_eq!(
                (line.clone(), fields.clone()),
                head_parts(&through_map),
                "{uri}"
            );
            // The same head from the client's lines as read, for a request the fast path
            // takes (origin-form).
            if uri.starts_with('/') {
                let mut head = format!("GET {uri} HTTP/1.1\r\n");
                for (n, v) in client_host
                    .map(|h| ("Host", h))
                    .into_iter()
                    .chain(client_fields)
                {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let lines = super::super::fast::client_fields(head.as_bytes());
                let mut from_lines = Vec::new();
                let lines = Fields::Lines(&lines);
                forwarding.write_head(req.method(), target.as_str(), lines, &mut from_lines);
                assert_eq!(
                    head_parts(&from_lines),
                    (line.clone(), fields.clone()),
                    "{uri}"
                );
            }
            let field = |n: &str| {
                let all: Vec<_> = fields.iter().filter(|(k, _)| k == n).collect();
                assert_eq!(all.len(), 1, "one {n} in {fields:?}");
                all[0].1.clone()
            };
            assert!(line.starts_with("GET /"), "{line}");
            assert_eq!(field("x-forwarded-for"), "2001:db8::7");
            assert_eq!(field("x-real-ip"), "2001:db8::7");
            assert_eq!(field("x-forwarded-port"), "8443");
            assert_eq!(field("x-request-id"), "id-1");
            assert_eq!(
                field("x-forwarded-proto"),
                if tls { "https" } else { "http" }
            );
            // The client's Host as it was, unless the target named the host or a filter
            // rewrites it.
            let origin_form = uri.starts_with('/');
            let host = client_host.filter(|_| origin_form).unwrap_or(routed);
            assert_eq!(field("host"), rewrite.unwrap_or(host));
            let escaped = routed.replace('\\', "\\\\").replace('"', "\\\"");
            let proto = if tls { "https" } else { "http" };
            assert_eq!(
                field("forwarded"),
                format!("for=\"[2001:db8::7]\";proto={proto};host=\"{escaped}\"")
            );
            assert!(fields
                .iter()
                .all(|(n, _)| n != "keep-alive" && n != "close"));
            assert_eq!(field("te"), "trailers");
            assert_eq!(fields.iter().filter(|(n, _)| n == "cookie").count(), 2);
        }
    }

    #[test]
    fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
        let b = backend(2, Balance::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| b.endpoints[0].start()).collect();
        assert_eq!(last_octets(&b, &[], 20), [1; 20]);
        let one = backend(1, Balance::LeastRequest);
        assert_eq!(last_octets(&one, &[], 2), [0, 0]);
        assert!(pick(&one, &[one.endpoints[0].addr]).is_none());
    }
}
