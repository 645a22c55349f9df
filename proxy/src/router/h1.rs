//! A lean HTTP/1.1 client for the common upstream exchange: a request without a body and
//! without an upgrade, on a pooled keep-alive connection, driven inline by the request's own
//! task (no connection task, no dispatch channel). Everything else goes through hyper's
//! client.
//!
//! Responses are read as RFC 9112 frames them: no body for HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding` with chunked last (trailers passed on), then `Content-Length`, then
//! until the connection closes. A connection goes back to the pool only when its response was
//! read whole and nothing in it asked for the connection to close.

use std::cell::RefCell;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use foldhash::HashMap;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::hop;
use super::upstream::InFlight;

/// Response head limits: bytes and header count.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions), and the trailers.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Idle connections kept per endpoint and event loop.
const MAX_IDLE: usize = 256;
const READ_CHUNK: usize = 16 * 1024;
/// A request head buffer larger than this is not kept for the next request.
const MAX_IDLE_OUT: usize = 16 * 1024;

/// The deadline of an exchange whose timeout is too long to add to now.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Emptied header maps kept per event loop for the next heads, and the largest kept.
const SPARE_MAPS: usize = 64;
const SPARE_MAP_FIELDS: usize = 128;

thread_local! {
    /// Idle connections kept in their boxes: taking one out and putting it back moves a
    /// pointer.
    #[allow(clippy::vec_box)]
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Box<Conn>>>> = RefCell::new(HashMap::default());
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static NAMES: RefCell<Names> = RefCell::new(Names::new());
}

/// Slots of the name cache ([`name`]).
const NAME_SLOTS: usize = 256;
/// Names longer than this are not kept.
const NAME_KEPT: usize = 64;

/// Field names as they were written, and what they stand for: a direct-mapped cache, one name
/// per slot, a name that misses taking its slot. A name seen before is neither lower-cased,
/// looked up nor (when it is not a standard one) copied again. Bounded whatever names come in:
/// at most [`NAME_SLOTS`] of at most [`NAME_KEPT`] bytes.
struct Names {
    slots: Vec<Option<(Box<[u8]>, HeaderName)>>,
    hasher: foldhash::fast::RandomState,
}

impl Names {
    fn new() -> Names {
        Names {
            slots: vec![None; NAME_SLOTS],
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// The field name `raw` (any case) stands for; None if it is not one.
pub(super) fn name(raw: &[u8]) -> Option<HeaderName> {
    if raw.len() > NAME_KEPT {
        return HeaderName::from_bytes(raw).ok();
    }
    NAMES.with_borrow_mut(|names| {
        let slot = names.hasher.hash_one(raw) as usize % NAME_SLOTS;
        if let Some((kept, name)) = &names.slots[slot] {
            if **kept == *raw {
                return Some(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        names.slots[slot] = Some((raw.into(), name.clone()));
        Some(name)
    })
}

/// One upstream connection and what was read from it beyond the last response.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being written (kept between requests while small).
    out: Vec<u8>,
    /// Where answers' fields are kept as read ([`WireFields`]); its space is used again once
    /// the answer that holds it is gone.
    lines: BytesMut,
    addr: SocketAddr,
    /// The response deadline, kept with the connection: an exchange moves it instead of adding
    /// a timer and taking it out again. Made by the first exchange.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// The connection closed or broke before any of the response arrived: on a reused
    /// connection the request may go again on a fresh one.
    Closed(io::Error),
    /// A broken or oversized response, or a connection lost in the middle of one.
    Invalid(String),
    /// No response head within the exchange's time.
    TimedOut,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Closed(e) => write!(f, "connection closed: {e}"),
            Error::Invalid(m) => f.write_str(m),
            Error::TimedOut => f.write_str("no response in time"),
        }
    }
}

impl std::error::Error for Error {}

fn invalid<T>(m: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(m.into()))
}

impl Conn {
    /// Boxed: it moves with every answer read from it, and into and out of the pool.
    pub fn new(io: TcpStream, addr: SocketAddr) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            lines: BytesMut::new(),
            addr,
            deadline: None,
        })
    }

    /// An idle pooled connection to `addr` that has not been closed by its peer.
    pub fn pooled(addr: SocketAddr) -> Option<Box<Conn>> {
        loop {
            let conn = IDLE.with_borrow_mut(|idle| idle.get_mut(&addr)?.pop())?;
            if conn.is_idle() {
                return Some(conn);
            }
        }
    }

    /// Nothing to read: an idle connection with data or an end of stream waiting is done. The
    /// readiness the event loop has already seen answers without a system call.
    fn is_idle(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn release(self: Box<Self>) {
        IDLE.with_borrow_mut(|idle| {
            if idle.len() >= 1024 && !idle.contains_key(&self.addr) {
                // Endpoints come and go: forget those without idle connections.
                idle.retain(|_, c| !c.is_empty());
            }
            let list = idle.entry(self.addr).or_default();
            if list.len() < MAX_IDLE {
                list.push(self);
            }
        });
    }

    /// Reads more into the buffer; false at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let spare = self.buf.spare_capacity_mut();
        let mut rb = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: `n` bytes of the spare capacity were just initialised by the read.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n > 0))
    }

    async fn fill(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Now plus `timeout`; a timeout too long to add (an annotation or a flag may ask for u64::MAX
/// seconds) is no deadline rather than an overflow.
pub(super) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE)
}

/// `io`, unless `until` passes first. The deadline is looked at only while `io` waits.
async fn within<T>(
    deadline: &mut Pin<Box<Sleep>>,
    until: Instant,
    io: impl Future<Output = T>,
) -> Result<T, Error> {
    let mut io = std::pin::pin!(io);
    std::future::poll_fn(|cx| match io.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Ok(done)),
        Poll::Pending => poll_until(deadline.as_mut(), until, cx).map(|()| Err(Error::TimedOut)),
    })
    .await
}

/// Arms `timer` for `until` when it would fire later than that. A timer that fires earlier is
/// left as it is and moved only when it fires ([`poll_until`]): a deadline that moves later
/// with every request costs no timer update per request.
pub(super) fn arm(timer: Pin<&mut Sleep>, until: Instant) {
    if timer.deadline() > until {
        timer.reset(until);
    }
}

/// Ready when `until` has passed; `timer` (armed by [`arm`], at or before `until`) is moved on
/// to `until` when it fires early.
pub(super) fn poll_until(
    mut timer: Pin<&mut Sleep>,
    until: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        ready!(timer.as_mut().poll(cx));
        if Instant::now() >= until {
            return Poll::Ready(());
        }
        timer.as_mut().reset(until);
    }
}

/// The request head as it goes on the wire (origin-form target, the headers as they are).
pub(super) fn encode<B>(req: &Request<B>, out: &mut Vec<u8>) {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    write_request_line(req.method(), target, out);
    write_fields(req.headers(), out);
    out.extend_from_slice(b"\r\n");
}

/// `METHOD target HTTP/1.1`, the first line of a request head.
pub(super) fn write_request_line(method: &Method, target: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Header fields as they go on the wire: a `name: value` line each.
pub(super) fn write_fields<'a>(
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    out: &mut Vec<u8>,
) {
    for (name, value) in fields {
        write_field(name.as_str(), value.as_bytes(), out);
    }
}

/// One `name: value` line; `value` must be a field value (no CR, LF or NUL).
pub(super) fn write_field(name: impl AsRef<[u8]>, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_ref());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the rest of a response is framed.
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
}

enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    End,
    Trailers,
    Done,
}

/// Sends a request without a body, its head written by `head`, on `conn` and reads the
/// response head, within `timeout`. With `wire`, the answer's fields are kept as
/// [`WireFields`] when they can be.
pub async fn exchange(
    mut conn: Box<Conn>,
    method: &Method,
    head: &(dyn Fn(&mut Vec<u8>) + Sync),
    wire: bool,
    in_flight: InFlight,
    timeout: Duration,
) -> Result<Response<UpstreamH1Body>, Error> {
    let until = deadline_after(timeout);
    let mut deadline = match conn.deadline.take() {
        Some(mut d) => {
            arm(d.as_mut(), until);
            d
        }
        None => Box::pin(tokio::time::sleep_until(until)),
    };
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    head(&mut out);
    within(&mut deadline, until, conn.io.write_all(&out))
        .await?
        .map_err(Error::Closed)?;
    if out.capacity() <= MAX_IDLE_OUT {
        conn.out = out;
    }
    let mut received = false;
    loop {
        // Parsed by a function of its own: the header array stays out of this future's state.
        let head = match conn.buf.is_empty() {
            true => None,
            false => take_head(&mut conn.buf, &mut conn.lines, method, wire)?,
        };
        let Some(head) = head else {
            if conn.buf.len() >= MAX_HEAD {
                return invalid("response head too large");
            }
            match within(&mut deadline, until, conn.fill()).await? {
                Ok(true) => {
                    received = true;
                    continue;
                }
                Ok(false) if !received => {
                    let closed = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(Error::Closed(closed));
                }
                Ok(false) => return invalid("connection closed in the response head"),
                Err(e) if !received => return Err(Error::Closed(e)),
                Err(e) => return invalid(format!("reading the response head: {e}")),
            }
        };
        if head.status.is_informational() {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return invalid("an upgrade that was not asked for");
            }
            // 103 Early Hints and the like: the final response follows.
            continue;
        }
        conn.deadline = Some(deadline);
        let (fields, wire) = match head.fields {
            Fields::Map(map) => (map, None),
            // Its writer adds the request id, and what else it writes, without a map.
            Fields::Wire(wire) => (HeaderMap::new(), Some(wire)),
        };
        let mut resp = Response::new(UpstreamH1Body {
            conn: Some(conn),
            framing: head.framing,
            keep: head.keep,
            wire,
            _in_flight: in_flight,
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = Version::HTTP_11;
        *resp.headers_mut() = fields;
        let body = resp.body_mut();
        if matches!(body.framing, Framing::Empty | Framing::Length(0)) {
            body.finish();
        }
        return Ok(resp);
    }
}

/// A response head as read.
struct Head {
    status: StatusCode,
    /// Its end-to-end fields (none for a 1xx).
    fields: Fields,
    framing: Framing,
    /// Whether the connection may carry another request after the response.
    keep: bool,
}

enum Fields {
    Map(HeaderMap),
    Wire(WireFields),
}

/// An answer's end-to-end fields kept as they go on the wire, one `name: value` line each (the
/// names as the upstream wrote them), in place of a header map: an answer passed on as it came
/// is written without one. Kept for answers framed by their `Content-Length` (or without a
/// body and without one): the only field the writer needs is known from the head.
pub struct WireFields {
    lines: Bytes,
    /// The `Content-Length`, when the answer has one.
    pub length: Option<u64>,
    /// It has a `Date` field.
    pub dated: bool,
    /// It has an `X-Request-Id` field (which the router replaces).
    pub request_id: bool,
}

impl WireFields {
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// The fields, one `(name, value)` pair each.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines
            .split(|&b| b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], &line[colon + 2..]))
            })
    }

    /// Adds the fields to `map`. The head's parser takes the names and values a header map
    /// takes, so every field goes in; None if one did not (the map is then incomplete, and
    /// not to be used).
    pub fn into_map(self, map: &mut HeaderMap) -> Option<()> {
        for (raw, value) in self.fields() {
            let name = name(raw)?;
            let start = value.as_ptr() as usize - self.lines.as_ptr() as usize;
            let value = self.lines.slice(start..start + value.len());
            map.append(name, HeaderValue::from_maybe_shared(value).ok()?);
        }
        Some(())
    }
}

/// What reading a response head needs to know of a field, from its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    TransferEncoding,
    /// Another hop-by-hop field.
    OtherHop,
    /// `TE` or `Close`: settled by the header map.
    TeOrClose,
    ContentLength,
    Date,
    RequestId,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"date") => Kind::Date,
            10 if is(b"connection") => Kind::Connection,
            12 if is(b"x-request-id") => Kind::RequestId,
            14 if is(b"content-length") => Kind::ContentLength,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            2 if is(b"te") => Kind::TeOrClose,
            5 if is(b"close") => Kind::TeOrClose,
            _ if hop::index(name).is_some() => Kind::OtherHop,
            _ => Kind::Other,
        }
    }

    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Kind::Connection | Kind::TransferEncoding | Kind::OtherHop
        )
    }
}

/// A complete response head to a `method` request taken from the start of `buf`; None while it
/// is incomplete. Its hop-by-hop fields are left out as it is read: they and what they say
/// about the connection are settled here, from the head's own bytes. The end-to-end fields are
/// kept as [`WireFields`] (written into `lines`) when `wire` asks for them and they can be,
/// else in a header map.
fn take_head(
    buf: &mut BytesMut,
    lines: &mut BytesMut,
    method: &Method,
    wire: bool,
) -> Result<Option<Head>, Error> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return invalid(format!("malformed response head: {e}")),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::Invalid(format!("response status {code}")))?;
    if status.is_informational() {
        buf.advance(len);
        let (fields, framing, keep) = (Fields::Map(HeaderMap::new()), Framing::Empty, false);
        return Ok(Some(Head {
            status,
            fields,
            framing,
            keep,
        }));
    }
    // One look at each name. `Connection: close` ends the connection; a field `Connection`
    // names that is not hop-by-hop anyway (or a `TE` or `Close` field) is rare enough for the
    // header map to settle it.
    let mut kinds = [Kind::Other; MAX_HEADERS];
    let (mut close, mut by_map, mut length_field) = (false, false, false);
    let (mut dated, mut request_id) = (false, false);
    for (field, kind) in parsed.headers.iter().zip(&mut kinds) {
        *kind = Kind::of(field.name.as_bytes());
        match kind {
            Kind::Connection => {
                for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && hop::index(token).is_none() {
                        by_map = true;
                    }
                }
            }
            Kind::TeOrClose => by_map = true,
            Kind::ContentLength => length_field = true,
            Kind::Date => dated = true,
            Kind::RequestId => request_id = true,
            Kind::TransferEncoding | Kind::OtherHop | Kind::Other => {}
        }
    }
    let values = |wanted: Kind| {
        let fields = parsed.headers.iter().zip(&kinds);
        fields
            .filter(move |(_, k)| **k == wanted)
            .map(|(f, _)| f.value)
    };
    let (codings, lengths) = (values(Kind::TransferEncoding), values(Kind::ContentLength));
    let (framing, keep) = framing(method, status, codings, lengths)?;
    let keep = keep && parsed.version == Some(1) && !close;
    // A body until the connection closes or in chunks (the writer frames it anew and may need
    // the `Trailer` field), or a length the writer would have to read: a map.
    let length = match framing {
        Framing::Length(n) => Some(Some(n)),
        Framing::Empty if !length_field => Some(None),
        _ => None,
    };
    if let (Some(length), false, true) = (length, by_map, wire) {
        lines.reserve(len);
        for (field, kind) in parsed.headers.iter().zip(&kinds) {
            if !kind.hop_by_hop() {
                lines.extend_from_slice(field.name.as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(field.value);
                lines.extend_from_slice(b"\r\n");
            }
        }
        let lines = lines.split().freeze();
        buf.advance(len);
        let fields = Fields::Wire(WireFields {
            lines,
            length,
            dated,
            request_id,
        });
        return Ok(Some(Head {
            status,
            fields,
            framing,
            keep,
        }));
    }
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut count = 0;
    for (field, kind) in parsed.headers.iter().zip(&kinds) {
        if by_map || !kind.hop_by_hop() {
            spans[count] = Span::of(buf, field);
            count += 1;
        }
    }
    let head = buf.split_to(len).freeze();
    // Room for the request id the router adds to every answer (filters and CORS add more, and
    // the map grows for them): a map for a few fields stays small enough for the allocator's
    // fast path, which a map sized for eight does not (its entries take 1.2 KiB).
    let mut fields = fields(&head, &spans[..count], 1)
        .ok_or_else(|| Error::Invalid("malformed response header".into()))?;
    if by_map {
        hop::strip(&mut fields);
    }
    Ok(Some(Head {
        status,
        fields: Fields::Map(fields),
        framing,
        keep,
    }))
}

/// Where one header field lies in a head, as offsets into it.
#[derive(Clone, Copy, Default)]
pub(super) struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The span of `field`, which httparse read from `head`.
    pub(super) fn of(head: &[u8], field: &httparse::Header<'_>) -> Span {
        Span {
            name: offsets(head, field.name.as_bytes()),
            value: offsets(head, field.value),
        }
    }
}

/// Where `part`, a slice of `head`, lies in it.
pub(super) fn offsets(head: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - head.as_ptr() as usize;
    (start as u32, part.len() as u32)
}

/// The bytes of `head` at `(start, len)`, shared.
pub(super) fn slice(head: &Bytes, (start, len): (u32, u32)) -> Bytes {
    head.slice(start as usize..(start + len) as usize)
}

/// The fields of a head taken out of its buffer, with room for `extra` more: the values share
/// the head's bytes. None when a name or a value is one the http types refuse.
pub(super) fn fields(head: &Bytes, spans: &[Span], extra: usize) -> Option<HeaderMap> {
    let mut map = empty_map(spans.len() + extra);
    for span in spans {
        let (start, len) = span.name;
        let name = name(&head[start as usize..(start + len) as usize])?;
        let value = HeaderValue::from_maybe_shared(slice(head, span.value)).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// An empty header map with room for `fields`: one given back by [`spare`] when there is one,
/// so that a head does not allocate its map's tables.
fn empty_map(fields: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives back the map of a head that has been written, for [`empty_map`]; it is emptied here.
/// A loop keeps a few, and none that grew large (nor one that never allocated).
pub(super) fn spare(mut map: HeaderMap) {
    if !(1..=SPARE_MAP_FIELDS).contains(&map.capacity()) {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// The response body's framing (RFC 9112 section 6.3) from the head's fields, and whether the
/// connection may be reused after it.
fn framing<'a>(
    method: &Method,
    status: StatusCode,
    codings: impl Iterator<Item = &'a [u8]>,
    lengths: impl Iterator<Item = &'a [u8]>,
) -> Result<(Framing, bool), Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    let mut codings = codings.peekable();
    let mut lengths = lengths.peekable();
    if codings.peek().is_some() {
        let mut last: Option<&[u8]> = None;
        for value in codings {
            if !value.is_ascii() {
                // A value that is not text counts as a coding that is not chunked.
                last = Some(b"?");
                continue;
            }
            let mut tokens = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            last = tokens.rfind(|c| !c.is_empty()).or(last);
        }
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length as well the message was framed twice: not reused.
        let clean = lengths.peek().is_none();
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), clean)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in lengths {
        for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return invalid("response content-length is not a number");
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Invalid("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return invalid("response content-lengths differ");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// A response body read from a [`Conn`]; the connection goes back to the pool once the body has
/// ended cleanly.
pub struct UpstreamH1Body {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep: bool,
    /// The answer's fields when its header map was left empty for them.
    pub wire: Option<WireFields>,
    _in_flight: InFlight,
}

impl UpstreamH1Body {
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let Some(conn) = self.conn.take() {
            if self.keep && conn.buf.is_empty() {
                conn.release();
            }
        }
    }

    fn fail(&mut self, m: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(Error::Invalid(m.into()))))
    }

    /// More bytes in the buffer; an error when the connection ended first.
    fn poll_more(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<Result<(), String>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        match ready!(conn.poll_fill(cx)) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Ready(Err(format!("connection closed in the {what}"))),
            Err(e) => Poll::Ready(Err(format!("reading the {what}: {e}"))),
        }
    }

    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Framing::Chunked(state) = &mut self.framing else {
                return Poll::Ready(None);
            };
            let conn = self
                .conn
                .as_mut()
                .expect("a body being read has its connection");
            match state {
                Chunk::Size => {
                    let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") else {
                        if conn.buf.len() > MAX_CHUNK_LINE {
                            return self.fail("chunk-size line too long");
                        }
                        if let Err(e) = ready!(self.poll_more(cx, "chunk size")) {
                            return self.fail(e);
                        }
                        continue;
                    };
                    let line = &conn.buf[..end];
                    let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
                    let hex = std::str::from_utf8(hex)
                        .unwrap_or("")
                        .trim_matches([' ', '\t']);
                    let size = match u64::from_str_radix(hex, 16) {
                        Ok(n) if !hex.is_empty() && hex.len() <= 15 => n,
                        _ => return self.fail("malformed chunk size"),
                    };
                    conn.buf.advance(end + 2);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(rest) => {
                    if conn.buf.is_empty() {
                        if let Err(e) = ready!(self.poll_more(cx, "chunk data")) {
                            return self.fail(e);
                        }
                        continue;
                    }
                    let n = conn
                        .buf
                        .len()
                        .min(usize::try_from(*rest).unwrap_or(usize::MAX));
                    let data = conn.buf.split_to(n).freeze();
                    *rest -= n as u64;
                    if *rest == 0 {
                        *state = Chunk::End;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Chunk::End => {
                    if conn.buf.len() < 2 {
                        if let Err(e) = ready!(self.poll_more(cx, "chunk end")) {
                            return self.fail(e);
                        }
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return self.fail("chunk data longer than its size");
                    }
                    conn.buf.advance(2);
                    *state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&conn.buf, &mut headers) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for h in fields {
                                let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(h.name.as_bytes()),
                                    HeaderValue::from_bytes(h.value),
                                ) else {
                                    return self.fail("malformed trailer");
                                };
                                trailers.append(n, v);
                            }
                            conn.buf.advance(len);
                            *state = Chunk::Done;
                            if !trailers.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                            }
                        }
                        Ok(httparse::Status::Partial) => {
                            if conn.buf.len() > MAX_TRAILERS {
                                return self.fail("trailers too large");
                            }
                            if let Err(e) = ready!(self.poll_more(cx, "trailers")) {
                                return self.fail(e);
                            }
                        }
                        Err(e) => return self.fail(format!("malformed trailers: {e}")),
                    }
                }
                Chunk::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Body for UpstreamH1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match &mut this.framing {
            Framing::Empty => Poll::Ready(None),
            Framing::Length(rest) => {
                let rest = *rest;
                let conn = this
                    .conn
                    .as_mut()
                    .expect("a body being read has its connection");
                if conn.buf.is_empty() {
                    if let Err(e) = ready!(this.poll_more(cx, "response body")) {
                        return this.fail(e);
                    }
                }
                let conn = this.conn.as_mut().expect("still here");
                let n = conn
                    .buf
                    .len()
                    .min(usize::try_from(rest).unwrap_or(usize::MAX));
                let data = conn.buf.split_to(n).freeze();
                let left = rest - n as u64;
                this.framing = Framing::Length(left);
                if left == 0 {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::Chunked(_) => this.poll_chunked(cx),
            Framing::Close => {
                let conn = this
                    .conn
                    .as_mut()
                    .expect("a body being read has its connection");
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            this.conn = None;
                            this.framing = Framing::Empty;
                            return Poll::Ready(None);
                        }
                        Err(e) => return this.fail(format!("reading the response body: {e}")),
                    }
                }
                let conn = this.conn.as_mut().expect("still here");
                let data = conn.buf.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use crate::router::upstream::Upstream;

    /// A backend that answers each request on one connection with the next canned answer,
    /// then closes.
    async fn backend(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for answer in answers {
                let mut seen = Vec::new();
                while !seen.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    seen.push(b[0]);
                }
                s.write_all(answer).await.unwrap();
            }
        });
        addr
    }

    fn get(method: Method) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = method;
        *r.uri_mut() = "/x?y=1".parse().unwrap();
        r.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("b.example"));
        r
    }

    async fn send(addr: SocketAddr, method: Method) -> Result<Response<UpstreamH1Body>, Error> {
        let conn = match Conn::pooled(addr) {
            Some(c) => c,
            None => Conn::new(TcpStream::connect(addr).await.unwrap(), addr),
        };
        let upstream = Arc::new(Upstream::new(addr, false));
        let timeout = std::time::Duration::from_secs(5);
        let mut resp = get_on(conn, method, &upstream, timeout).await?;
        // The fields as a map, whichever way they were kept.
        if let Some(wire) = resp.body_mut().wire.take() {
            wire.into_map(resp.headers_mut()).expect("every field");
        }
        Ok(resp)
    }

    /// A GET (or `method`) of `/x?y=1` on `conn`.
    async fn get_on(
        conn: Box<Conn>,
        method: Method,
        upstream: &Arc<Upstream>,
        timeout: Duration,
    ) -> Result<Response<UpstreamH1Body>, Error> {
        let req = get(method);
        let head = |out: &mut Vec<u8>| encode(&req, out);
        exchange(conn, req.method(), &head, true, upstream.start(), timeout).await
    }

    /// The body's data and trailers, or its error.
    async fn read(mut body: UpstreamH1Body) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| e.to_string())?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((data, trailers))
    }

    fn pooled(addr: SocketAddr) -> bool {
        IDLE.with_borrow(|idle| idle.get(&addr).is_some_and(|c| !c.is_empty()))
    }

    #[tokio::test]
    async fn lengths_chunks_and_reuse() {
        let addr = backend(vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(read(resp.into_body()).await.unwrap().0, b"hello");
        assert!(pooled(addr), "read whole: back in the pool");
        // The same connection, chunked with trailers.
        let resp = send(addr, Method::GET).await.unwrap();
        let (data, trailers) = read(resp.into_body()).await.unwrap();
        assert_eq!(data, b"abcde");
        assert_eq!(trailers.unwrap()["x-sum"], "5");
        let resp = send(addr, Method::DELETE).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_end_stream());
        drop(resp);
        // A HEAD answer carries a length and no body.
        let resp = send(addr, Method::HEAD).await.unwrap();
        assert!(resp.body().is_end_stream());
        drop(resp);
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(read(resp.into_body()).await.unwrap().0, b"ok");
        assert!(!pooled(addr), "asked to close: not kept");
    }

    #[tokio::test]
    async fn hop_by_hop_fields_are_left_out() {
        let addr = backend(vec![
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nProxy-Connection: x\r\nUpgrade: h2c\r\n\r\n1\r\nz\r\n0\r\n\r\n",
            // Named by Connection: left out too, whatever the case.
            b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nconnection: x-HOP, keep-alive\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let names = |resp: &Response<UpstreamH1Body>| {
            let mut names: Vec<_> = resp.headers().keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(names(&resp), ["x-a"]);
        assert_eq!(read(resp.into_body()).await.unwrap().0, b"z");
        assert!(pooled(addr), "keep-alive asked for nothing more");
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(names(&resp), ["content-length", "x-b"]);
        assert!(resp.body().is_end_stream());
    }

    #[test]
    fn names_are_kept_in_a_bounded_cache() {
        let long = "x-".repeat(40);
        for raw in [
            "Host",
            "host",
            "HOST",
            "X-Custom",
            "x-custom",
            "Sec-Fetch-Mode",
            &long,
        ] {
            for _ in 0..3 {
                assert_eq!(
                    name(raw.as_bytes()),
                    HeaderName::from_bytes(raw.as_bytes()).ok()
                );
            }
        }
        for bad in [&b""[..], b"bad name", b"x\xff", b"a:b"] {
            assert_eq!(name(bad), None, "{bad:?}");
            assert_eq!(name(bad), None, "{bad:?}");
        }
        // Many names come and go; each is still what it stands for, and the cache holds at
        // most its slots, none longer than kept.
        for i in 0..10_000 {
            let raw = format!("X-Name-{i}");
            assert_eq!(
                name(raw.as_bytes()).unwrap().as_str(),
                raw.to_ascii_lowercase()
            );
        }
        assert_eq!(name(b"X-Custom").unwrap(), "x-custom");
        NAMES.with_borrow(|names| {
            assert_eq!(names.slots.len(), NAME_SLOTS);
            let kept = names.slots.iter().flatten();
            assert!(kept.clone().all(|(raw, _)| raw.len() <= NAME_KEPT));
            assert!(kept.count() > NAME_SLOTS / 2);
        });
    }

    /// The fields of the head at the start of `text`: Some when kept as read, None when put
    /// in a map.
    fn wire_of(text: &[u8], method: Method) -> Result<Option<WireFields>, Error> {
        let mut buf = BytesMut::from(text);
        let mut lines = BytesMut::new();
        let head = take_head(&mut buf, &mut lines, &method, true)?.expect("a whole head");
        Ok(match head.fields {
            Fields::Wire(w) => Some(w),
            Fields::Map(_) => None,
        })
    }

    /// Fields kept as read, checked to go into a header map whole; how many went in.
    fn into_map_whole(w: WireFields) -> usize {
        let lines = w.as_bytes().to_vec();
        let mut map = HeaderMap::new();
        assert!(w.into_map(&mut map).is_some(), "{lines:?}");
        map.len()
    }

    #[test]
    fn answers_framed_by_length_keep_their_fields_as_written() {
        // Each field is kept as `name: value` CRLF, however it was spaced and ended: a value
        // with more space around it, an empty one, none, a line that ends in LF alone.
        let text = b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nX-A:  a b \r\nContent-Length: 2\r\nkeep-alive: timeout=5\r\nX-E:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-L: l\nX-N:n\r\nX-O: o\r\n\r\nok";
        let w = wire_of(text, Method::GET).unwrap().expect("kept as read");
        assert_eq!(
            w.as_bytes(),
            b"Server: up\r\nX-A: a b\r\nContent-Length: 2\r\nX-E: \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-L: l\r\nX-N: n\r\nX-O: o\r\n"
        );
        assert_eq!((w.length, w.dated, w.request_id), (Some(2), false, false));
        let mut map = HeaderMap::new();
        w.into_map(&mut map).unwrap();
        assert_eq!(map.len(), 9);
        assert_eq!(map["x-a"], "a b");
        assert_eq!(map["x-e"], "");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        // Without a body and without a length.
        let text = b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nx-request-ID: 1\r\nDATE: now\r\n\r\n";
        let w = wire_of(text, Method::GET).unwrap().expect("kept as read");
        assert_eq!(w.as_bytes(), b"ETag: x\r\nx-request-ID: 1\r\nDATE: now\r\n");
        assert_eq!((w.length, w.dated, w.request_id), (None, true, true));

        // A map when the writer would need more than the length, or the map settles the
        // hop-by-hop fields.
        for (text, method) in [
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                Method::GET,
            ),
            (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", Method::GET),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
            ),
        ] {
            let wire = wire_of(text, method).unwrap();
            assert!(wire.is_none(), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn what_the_head_parser_takes_a_header_map_takes() {
        // Every byte in a value and in a name: refused as the head is read, or a field that
        // goes into a header map whole (nothing the map would refuse is written as it came).
        let mut taken = 0;
        for b in 0..=255u8 {
            for text in [
                [
                    &b"HTTP/1.1 200 OK\r\nX-V: a"[..],
                    &[b],
                    b"b\r\nContent-Length: 0\r\n\r\n",
                ]
                .concat(),
                [
                    &b"HTTP/1.1 200 OK\r\nX-"[..],
                    &[b],
                    b": v\r\nContent-Length: 0\r\n\r\n",
                ]
                .concat(),
            ] {
                let Ok(wire) = wire_of(&text, Method::GET) else {
                    continue;
                };
                let w = wire.unwrap_or_else(|| panic!("kept as read: {text:?}"));
                assert_eq!(into_map_whole(w), 2, "{text:?}");
                taken += 1;
            }
        }
        // Values take visible ASCII, space, tab and bytes above 127; names take tokens (and
        // `X-:` is a name too).
        assert_eq!(taken, (96 + 128) + (26 * 2 + 10 + 15 + 1), "{taken}");
        // Lines folded onto the next, or ended by a bare LF, are refused or taken whole.
        for text in [
            &b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 0\n\n",
        ] {
            if let Ok(wire) = wire_of(text, Method::GET) {
                let w = wire.unwrap_or_else(|| panic!("kept as read: {text:?}"));
                assert_eq!(into_map_whole(w), 2, "{text:?}");
            }
        }
    }

    #[tokio::test]
    async fn close_delimited_and_twice_framed_bodies_are_not_reused() {
        let addr = backend(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]).await;
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(read(resp.into_body()).await.unwrap().0, b"until the end");
        assert!(!pooled(addr));
        let addr = backend(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n1\r\nz\r\n0\r\n\r\n",
        ])
        .await;
        let resp = send(addr, Method::GET).await.unwrap();
        assert_eq!(read(resp.into_body()).await.unwrap().0, b"z");
        assert!(!pooled(addr));
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        for (answer, want) in [
            (&b"HTTP/1.1 2000 Nope\r\n\r\n"[..], "malformed"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "differ",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "not a number",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "upgrade"),
            (
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\n",
                "closed in the response head",
            ),
        ] {
            let addr = backend(vec![answer]).await;
            match send(addr, Method::GET).await {
                Err(Error::Invalid(m)) => assert!(m.contains(want), "{m}"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(answer)),
            }
        }
        for (answer, want) in [
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n",
                "longer",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "closed in the response body",
            ),
        ] {
            let addr = backend(vec![answer]).await;
            let resp = send(addr, Method::GET).await.unwrap();
            let err = read(resp.into_body()).await.unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(!pooled(addr));
        }
        // Nothing at all: the request may go again elsewhere.
        let addr = backend(vec![]).await;
        assert!(matches!(
            send(addr, Method::GET).await,
            Err(Error::Closed(_))
        ));
        // An endless head is cut off.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Long: {}\r\n", "a".repeat(1000));
            while s.write_all(line.as_bytes()).await.is_ok() {}
        });
        match send(addr, Method::GET).await {
            Err(Error::Invalid(m)) => {
                assert!(m.contains("too large") || m.contains("malformed"), "{m}")
            }
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    /// A backend on one connection that answers its requests (an empty 200) each after its
    /// delay in milliseconds, then reads the next and stays silent.
    async fn answering_after(delays: &'static [u64]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            for &delay in delays {
                let _ = s.read(&mut b).await;
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
            let _ = s.read(&mut b).await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_deadline_counts_from_each_exchange_on_a_pooled_connection() {
        // The second answer comes 1 s after its request, which is sent 1.5 s after the first:
        // within its own 2 s, past the first exchange's deadline (the timer left armed for it
        // has to be moved on, not obeyed).
        let addr = answering_after(&[0, 1000]).await;
        let upstream = Arc::new(Upstream::new(addr, false));
        let timeout = std::time::Duration::from_secs(2);
        let conn = Conn::new(TcpStream::connect(addr).await.unwrap(), addr);
        drop(get_on(conn, Method::GET, &upstream, timeout).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let conn = Conn::pooled(addr).expect("pooled");
        let resp = get_on(conn, Method::GET, &upstream, timeout).await;
        assert_eq!(resp.map(|r| r.status()).ok(), Some(StatusCode::OK));
    }

    #[tokio::test]
    async fn an_answer_that_does_not_come_in_time_is_a_timeout() {
        // One answer, then silence on the same connection.
        let addr = answering_after(&[0]).await;
        let upstream = Arc::new(Upstream::new(addr, false));
        let short = std::time::Duration::from_millis(200);
        let conn = Conn::new(TcpStream::connect(addr).await.unwrap(), addr);
        // A timeout too long to be a deadline (as an annotation may write it) is none.
        let resp = get_on(conn, Method::GET, &upstream, Duration::MAX)
            .await
            .unwrap();
        assert!(resp.body().is_end_stream());
        drop(resp);
        // The pooled connection keeps its deadline: the next exchange moves it.
        let conn = Conn::pooled(addr).expect("pooled");
        let answer = get_on(conn, Method::GET, &upstream, short).await;
        assert!(matches!(answer, Err(Error::TimedOut)));
        assert!(!pooled(addr));
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_its_peer_is_not_used() {
        let addr = backend(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let resp = send(addr, Method::GET).await.unwrap();
        drop(resp);
        assert!(pooled(addr));
        // The backend closes after its one answer; the event loop sees it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(Conn::pooled(addr).is_none());
    }
}
