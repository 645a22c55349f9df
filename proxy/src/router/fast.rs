//! The router's own HTTP/1.1 server for the common request: HTTP/1.1, no body, no upgrade, no
//! `Expect`, an origin-form target. Such a request is read and answered here, on the
//! connection's task, without hyper's dispatcher; the first request that is anything else —
//! a body, an upgrade, HTTP/1.0, a head hyper would refuse (malformed, too large, too many
//! headers) — hands the connection, with the bytes read so far, to hyper's server for good, so
//! every unusual case keeps hyper's behaviour and errors. A connection that opens with HTTP/2's
//! preface goes to the router's HTTP/2 server ([`super::h2`]) the same way.
//!
//! Answers follow RFC 9112 as hyper's server writes them: no body for HEAD, 204 and 304; a
//! `Content-Length` the response has is kept, else the body's known length is written, else the
//! body is chunked (trailers passed on when the response's `Trailer` header names them); `Date`
//! is added when missing; `Connection: close` when the client asked for it. The head timeout
//! counts from the end of the previous answer, as hyper's does, so idle keep-alive connections
//! close after it too; a client that closes its connection while its request is being answered
//! cancels it, as hyper's server does.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::h1::{
    self, arm, deadline_after, offsets, poll_until, slice, spare, write_field, write_fields,
};
use super::request::RequestError;
use super::routes::{join, FieldValues};
use super::server::{handle, serve_io, Body, Conn, Shared, X_REQUEST_ID};

/// How HTTP/2's connection preface starts (RFC 9113 section 3.4): the request line and the
/// empty line that end the head httparse refuses.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
/// Headers the fast path takes; a request with more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// Answers are gathered up to this size before they are written.
const WRITE_BATCH: usize = 16 * 1024;
/// Buffers larger than this (after a large head or answer) are given back between requests.
const IDLE_BUFFER: usize = 16 * 1024;

/// What the buffer holds. Returned once per request and matched at once: the request is not
/// boxed for the sake of the empty variants.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request the fast path serves (its fields kept as read, its header map empty), and
    /// whether the client asked to close after it.
    Simple(Request<()>, ClientFields, bool),
    /// Anything else: hyper takes the connection.
    Other,
}

/// Serves a connection that did not choose HTTP/2 in its TLS handshake.
pub(super) async fn serve<I>(shared: Arc<Shared>, mut io: I, mut conn: Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn.wire_answers = true;
    let limit = shared.config.max_header_bytes;
    let timeout = shared.config.header_timeout;
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let until = deadline_after(timeout);
        arm(deadline.as_mut(), until);
        let (req, fields, close) = loop {
            let hyper = match take_request(&mut buf) {
                Parsed::Simple(req, fields, close) => break (req, fields, close),
                Parsed::Other => true,
                // hyper answers an oversized head (431).
                Parsed::Partial => buf.len() >= limit,
            };
            if hyper {
                let h2 = buf.starts_with(H2_PREFACE);
                let io = Prefixed {
                    prefix: buf.freeze(),
                    io,
                };
                // Boxed: the other servers' states would otherwise be part of every
                // connection's task, however few connections go to them.
                if h2 {
                    return Box::pin(super::h2::serve(shared, io, conn)).await;
                }
                return Box::pin(serve_io(shared, io, conn)).await;
            }
            tokio::select! {
                biased;
                more = read_more(&mut io, &mut buf) => if !more {
                    return;
                },
                // A head not complete in time: the connection closes, as hyper closes it.
                () = std::future::poll_fn(|cx| poll_until(deadline.as_mut(), until, cx)) => return,
            }
        };
        let head_only = req.method() == Method::HEAD;
        // The client is read meanwhile: pipelined requests go into the buffer, and a client
        // that goes away drops its request (and the upstream exchange), as hyper does.
        let (resp, id) = {
            let mut req = req.map(|()| None);
            let handled = handle(&shared, &mut req, Some(fields), &conn);
            tokio::pin!(handled);
            loop {
                if buf.len() >= limit {
                    break handled.await;
                }
                tokio::select! {
                    biased;
                    resp = &mut handled => break resp,
                    more = read_more(&mut io, &mut buf) => if !more {
                        return;
                    },
                }
            }
        };
        // The head is written here; only the body is waited on.
        let (framing, body) = answer_head(&mut out, resp, &id, head_only, close);
        let keep = match send_body(&mut io, &mut out, framing, body).await {
            Ok(keep) => keep && !close,
            Err(_) => return,
        };
        if !keep {
            let _ = io.shutdown().await;
            return;
        }
        if buf.is_empty() && buf.capacity() > IDLE_BUFFER {
            buf = BytesMut::with_capacity(4096);
        }
    }
}

/// Reads more from the client; false when it closed or broke the connection.
async fn read_more<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> bool {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    matches!(io.read_buf(buf).await, Ok(n) if n > 0)
}

/// The request at the start of `buf`, taken out of it when the fast path serves it.
fn take_request(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if parsed.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    // Where each part lies in the head, so the request shares the head's bytes.
    let target = offsets(buf, target.as_bytes());
    let mut close = false;
    let (mut host, mut hosts, mut request_id) = (None, 0u8, None);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"host") => {
                hosts = hosts.saturating_add(1);
                host = host.or(Some(offsets(buf, h.value)));
            }
            12 if is(b"x-request-id") => request_id = request_id.or(Some(offsets(buf, h.value))),
            // A body or an upgrade.
            6 if is(b"expect") => return Parsed::Other,
            7 if is(b"upgrade") => return Parsed::Other,
            14 if is(b"content-length") => return Parsed::Other,
            17 if is(b"transfer-encoding") => return Parsed::Other,
            10 if is(b"connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Parsed::Other;
                    }
                }
            }
            _ => {}
        }
    }
    // The field lines start after the request line (httparse skips empty lines before it,
    // so the line is found from the target on).
    let after_target = buf[target.0 as usize..len].iter().position(|&b| b == b'\n');
    let lines = target.0 as usize + after_target.unwrap_or(0) + 1;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(slice(&head, target));
    let host = host.map(|span| HeaderValue::from_maybe_shared(slice(&head, span)));
    let (Ok(uri), None | Some(Ok(_))) = (uri, &host) else {
        // httparse took a target or a host the http types refuse (a target too long, say):
        // the head goes back in front of the rest, for hyper to answer.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Other;
    };
    let fields = ClientFields {
        head,
        lines: lines as u32,
        host: host.and_then(Result::ok),
        hosts,
        request_id,
        close,
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Parsed::Simple(req, fields, close)
}

/// The header fields of a request the fast path serves, kept in its head as the client wrote
/// them instead of in a header map: most requests are forwarded without one, their fields
/// written from these lines. What the router looks up in every request, the `Host` and
/// `X-Request-Id` fields, was found as the head was parsed. Routes and filters that work on a
/// header map get one made from these ([`ClientFields::to_map`]).
pub(super) struct ClientFields {
    head: Bytes,
    /// Where the field lines start in `head`.
    lines: u32,
    /// The first `Host` field, and how many there are.
    host: Option<HeaderValue>,
    hosts: u8,
    /// Where the first `X-Request-Id` field's value lies.
    request_id: Option<(u32, u32)>,
    /// `Connection` named `close`.
    close: bool,
}

impl ClientFields {
    /// The fields, `(name, value)` each, the values without the whitespace around them, as the
    /// head's parser read them (it took only well-formed lines, each ending in CRLF or LF).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head[self.lines as usize..]
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                // The empty line that ends the head has no colon.
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
    }

    /// The one `Host` field, if there is one.
    pub(super) fn host(&self) -> Result<Option<&HeaderValue>, RequestError> {
        match self.hosts {
            0 | 1 => Ok(self.host.as_ref()),
            _ => Err(RequestError::ManyHosts),
        }
    }

    /// The first `X-Request-Id` field's value, when it is one.
    pub(super) fn request_id(&self) -> Option<HeaderValue> {
        let value = slice(&self.head, self.request_id?);
        HeaderValue::from_maybe_shared(value).ok()
    }

    /// Whether the client's `Connection` field named `close`.
    pub(super) fn close_named(&self) -> bool {
        self.close
    }

    /// The fields in a header map, sharing the head's bytes; None when a name or a value is
    /// one the http types refuse.
    pub(super) fn to_map(&self) -> Option<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.iter().count() + 8);
        for (name, value) in self.iter() {
            let (start, len) = offsets(&self.head, value);
            let value = self.head.slice(start as usize..(start + len) as usize);
            map.append(h1::name(name)?, HeaderValue::from_maybe_shared(value).ok()?);
        }
        Some(map)
    }
}

impl FieldValues for ClientFields {
    fn joined(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        let named = self
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_ref()));
        join(named.map(|(_, v)| v))
    }
}

thread_local! {
    /// The `Date` field's value, made once a second.
    static DATE: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// Calls `f` with the `Date` field's value for an answer made now.
pub(super) fn with_date<T>(f: impl FnOnce(&HeaderValue) -> T) -> T {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs {
            if let Ok(v) = HeaderValue::try_from(httpdate::fmt_http_date(now)) {
                *at = secs;
                *value = v;
            }
        }
        f(value)
    })
}

/// Writes the `Date` field of an answer made now.
fn write_date(out: &mut Vec<u8>) {
    with_date(|value| write_field(header::DATE, value.as_bytes(), out))
}

/// Fields a trailer may not carry (RFC 9110 section 6.5.1: framing, routing, and what a
/// recipient must see before the content).
fn allowed_in_trailer(name: &HeaderName) -> bool {
    ![
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::HOST,
        header::MAX_FORWARDS,
        header::SET_COOKIE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
}

enum Framing {
    None,
    Length(u64),
    Chunked(Vec<HeaderName>),
}

/// Writes the head of `resp`, with its request id, into `out`; how its body is framed, and the
/// body.
fn answer_head(
    out: &mut Vec<u8>,
    mut resp: Response<Body>,
    id: &HeaderValue,
    head_only: bool,
    close: bool,
) -> (Framing, Body) {
    let status = resp.status();
    // An upstream answer's fields as read, written as they are.
    let wire = match resp.body_mut() {
        Body::UpstreamH1(b) => b.wire.take(),
        _ => None,
    };
    let headers = resp.headers_mut();
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(X_REQUEST_ID);
    let bodyless =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared = match &wire {
        Some(w) => w.length,
        None => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()),
    };
    let known = resp.body().size_hint().exact();
    let headers = resp.headers_mut();
    let framing = match (declared, known) {
        (Some(n), _) => Framing::Length(n),
        (None, Some(n)) if !bodyless || (head_only && n > 0) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Framing::Length(n)
        }
        (None, Some(_)) => Framing::None,
        (None, None) if bodyless => Framing::None,
        (None, None) => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            let named = headers
                .get_all(header::TRAILER)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .filter(allowed_in_trailer)
                .collect();
            Framing::Chunked(named)
        }
    };
    let framing = if bodyless { Framing::None } else { framing };
    let dated = headers.contains_key(header::DATE) || wire.as_ref().is_some_and(|w| w.dated);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(w) = &wire {
        out.extend_from_slice(w.as_bytes());
    }
    write_fields(resp.headers(), out);
    if !dated {
        write_date(out);
    }
    if close {
        write_field(header::CONNECTION, b"close", out);
    }
    write_field(X_REQUEST_ID, id.as_bytes(), out);
    out.extend_from_slice(b"\r\n");
    let (parts, body) = resp.into_parts();
    spare(parts.headers);
    (framing, body)
}

/// Writes the body after the head in `out`, and then all of `out`; whether the connection may
/// carry another request.
async fn send_body<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    framing: Framing,
    mut body: Body,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let keep = match framing {
        Framing::None => true,
        Framing::Length(n) => {
            let mut left = n;
            let mut whole = true;
            while let Some(frame) = next_frame(&mut body).await {
                match frame.map(|f| f.into_data()) {
                    Ok(Ok(data)) if data.len() as u64 <= left => {
                        left -= data.len() as u64;
                        put(io, out, data).await?;
                    }
                    // Trailers have no place in a body framed by its length.
                    Ok(Err(_)) => {}
                    Ok(Ok(_)) | Err(_) => {
                        whole = false;
                        break;
                    }
                }
            }
            whole && left == 0
        }
        Framing::Chunked(trailers) => {
            let mut whole = true;
            let mut sent_trailers = false;
            while let Some(frame) = next_frame(&mut body).await {
                let Ok(frame) = frame else {
                    whole = false;
                    break;
                };
                match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        put(io, out, data).await?;
                        out.extend_from_slice(b"\r\n");
                    }
                    Err(frame) => {
                        if let Ok(fields) = frame.into_trailers() {
                            out.extend_from_slice(b"0\r\n");
                            write_fields(fields.iter().filter(|(n, _)| trailers.contains(n)), out);
                            out.extend_from_slice(b"\r\n");
                            sent_trailers = true;
                        }
                    }
                }
            }
            if whole && !sent_trailers {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            whole
        }
    };
    io.write_all(out).await?;
    io.flush().await?;
    // An idle connection keeps a small buffer, whatever its largest answer was.
    if out.capacity() > IDLE_BUFFER {
        *out = Vec::with_capacity(1024);
    } else {
        out.clear();
    }
    Ok(keep)
}

async fn next_frame(
    body: &mut Body,
) -> Option<Result<http_body::Frame<Bytes>, super::server::BoxError>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// Adds body bytes to what is to be written: small ones are gathered, large ones written
/// after what was gathered.
async fn put<I>(io: &mut I, out: &mut Vec<u8>, data: Bytes) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    if out.len() + data.len() <= WRITE_BATCH {
        out.extend_from_slice(&data);
        return Ok(());
    }
    io.write_all(out).await?;
    out.clear();
    if data.len() <= WRITE_BATCH {
        out.extend_from_slice(&data);
        Ok(())
    } else {
        io.write_all(&data).await
    }
}

/// A connection with bytes already read from it in front, for hyper to read first.
struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The fields of `head`, a request the fast path takes.
#[cfg(test)]
pub(super) fn client_fields(head: &[u8]) -> ClientFields {
    match take_request(&mut BytesMut::from(head)) {
        Parsed::Simple(_, fields, _) => fields,
        _ => panic!("not a request the fast path takes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(text: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text);
        (take_request(&mut buf), buf)
    }

    #[test]
    fn plain_requests_are_taken_and_the_rest_left_to_hyper() {
        let (parsed, rest) = take(
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next HTTP/1.1\r\n",
        );
        let Parsed::Simple(req, fields, close) = parsed else {
            panic!("a plain GET is taken")
        };
        assert!(!close);
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(req.uri().query(), Some("b=c"));
        let map = fields.to_map().unwrap();
        assert_eq!(map.get_all("x-two").iter().count(), 2);
        // Only the first request left the buffer.
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
        let (parsed, _) = take(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(matches!(parsed, Parsed::Simple(_, _, true)));

        for other in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: x-hop\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            let (parsed, rest) = take(other);
            assert!(
                matches!(parsed, Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
            // hyper gets every byte.
            assert_eq!(&rest[..], other);
        }
        let (parsed, rest) = take(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(parsed, Parsed::Partial));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: x\r\n");
        // A target httparse takes and the URI type refuses (longer than it allows): hyper
        // answers it (414), with every byte.
        let long = format!("GET /{} HTTP/1.1\r\n\r\nrest", "a".repeat(70_000));
        let (parsed, rest) = take(long.as_bytes());
        assert!(matches!(parsed, Parsed::Other));
        assert_eq!(&rest[..], long.as_bytes());
    }

    #[test]
    fn fields_kept_as_read_are_those_a_header_map_holds() {
        let head = b"\r\nGET /p HTTP/1.1\r\nHost: a.example\r\nX-Request-Id:  id-7 \r\n\
            x-two: 1\nX-Two:\t2, 3\r\nX-Request-Id: second\r\nEmpty:\r\n\
            Colon: a:b\r\nConnection: close\r\n\r\n";
        let (parsed, rest) = take(head);
        assert!(rest.is_empty());
        let Parsed::Simple(_, fields, true) = parsed else {
            panic!("taken, and asked to close")
        };
        let map = fields.to_map().unwrap();
        let mut lines: Vec<_> = fields
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
            .collect();
        let mut mapped: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        lines.sort();
        mapped.sort();
        assert_eq!(lines, mapped);
        assert_eq!(lines.len(), 8);
        assert_eq!(map["x-request-id"], "id-7");
        assert_eq!(map["colon"], "a:b");
        assert_eq!(map["empty"], "");
        assert_eq!(fields.request_id().unwrap(), "id-7");
        assert_eq!(fields.host().unwrap().unwrap(), "a.example");
        assert!(fields.close_named());
        let two = HeaderName::from_static("x-two");
        assert_eq!(fields.joined(&two).as_deref(), Some("1,2, 3"));
        assert_eq!(fields.joined(&two), map.joined(&two));
        let host = HeaderName::from_static("host");
        assert_eq!(fields.joined(&host).as_deref(), Some("a.example"));
        assert_eq!(fields.joined(&HeaderName::from_static("absent")), None);

        let (parsed, _) = take(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
        let Parsed::Simple(_, fields, false) = parsed else {
            panic!("taken")
        };
        assert_eq!(fields.host(), Err(RequestError::ManyHosts));
        assert!(fields.request_id().is_none());

        // Empty values, and the fields at the end of the head.
        let (parsed, _) = take(b"GET / HTTP/1.1\r\nX-Request-Id:\r\nHost:\r\n\r\n");
        let Parsed::Simple(_, fields, false) = parsed else {
            panic!("taken")
        };
        assert_eq!(fields.host().unwrap().unwrap(), "");
        assert_eq!(fields.request_id().unwrap(), "");
    }
}
