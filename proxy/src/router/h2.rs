//! The router's HTTP/2 server, on the h2 crate's connection: every stream's request is answered
//! on the connection's own task (no task per stream, and the connection's state is borrowed, not
//! cloned, by each), its answer's head sent as the router made it and its body piped within the
//! stream's flow-control window.
//!
//! Limits as hyper's HTTP/2 server sets them (windows of 1 MiB, frames of 16 KiB, 200 streams at a
//! time, 400 KiB buffered for sending, 1024 streams reset for the client's errors), the request
//! head limit of HTTP/1.1 (`max_header_bytes`), the h2 crate's guard against streams opened and
//! reset at once, and a ping every 30 s that the client must answer within 20 s. The preface and
//! settings are awaited for as long as a request head, and a connection without an open stream
//! for that long is told to go away.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};

use super::fast::with_date;
use super::h1::{arm, deadline_after, poll_until};
use super::hop;
use super::mirror::ClientBody;
use super::server::{answer_id, handle, local, settle_fields, Body, Conn, Shared, X_REQUEST_ID};

const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_STREAMS: u32 = 200;
const SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_RESETS: usize = 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(20);

/// Serves an HTTP/2 connection (chosen in the TLS handshake, or a cleartext one that opened
/// with the preface) until it closes, fails or stops answering pings.
pub(super) async fn serve<I>(shared: Arc<Shared>, io: I, mut conn: Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Answers go out through header maps.
    conn.wire_answers = false;
    let config = &shared.config;
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_send_buffer_size(SEND_BUFFER);
    let handshake = tokio::time::timeout(config.header_timeout, builder.handshake(io));
    let mut connection = match handshake.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
        Err(_) => return tracing::debug!("HTTP/2 handshake timed out"),
    };
    let mut pings = connection.ping_pong().map(KeepAlive::new);
    // While no stream is open the connection is idle; idle for the head timeout, it is told to
    // go away, as an idle HTTP/1.1 connection is closed. The timer moves only when it fires.
    let timeout = config.header_timeout;
    let mut idle = Box::pin(sleep(timeout));
    let (mut idle_until, mut closing) = (None, false);
    let (shared, conn) = (&*shared, &conn);
    let mut streams = FuturesUnordered::new();
    poll_fn(|cx| loop {
        // Taking a stream drives the connection: frames in, and what the streams sent out.
        let accepted = match connection.poll_accept(cx) {
            Poll::Ready(Some(Ok((req, respond)))) => {
                // Boxed once: the set moves what it takes in more than once, and a stream's
                // future holds its request's. Made in its box, not copied there.
                let boxed = Box::write(Box::new_uninit(), answer(shared, conn, req, respond));
                streams.push(Box::into_pin(boxed));
                true
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "HTTP/2 connection failed");
                return Poll::Ready(());
            }
            // Closed, and with it every stream.
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => false,
        };
        // A stream that finished has sent its last frame: the connection goes round again to
        // write it.
        let mut finished = false;
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
            finished = true;
        }
        if let Some(p) = &mut pings {
            if p.poll_timed_out(cx) {
                tracing::debug!("HTTP/2 client did not answer a ping in time");
                connection.abrupt_shutdown(Reason::NO_ERROR);
                return Poll::Ready(());
            }
        }
        if !streams.is_empty() {
            idle_until = None;
        } else if !closing {
            let until = *idle_until.get_or_insert_with(|| deadline_after(timeout));
            arm(idle.as_mut(), until);
            if poll_until(idle.as_mut(), until, cx).is_ready() {
                // GOAWAY; the connection ends at the next turn.
                connection.graceful_shutdown();
                closing = true;
                continue;
            }
        }
        if !accepted && !finished {
            return Poll::Pending;
        }
    })
    .await
}

/// Pings the client every [`PING_EVERY`]; a pong not back within [`PONG_WITHIN`] means the
/// client is gone.
struct KeepAlive {
    ping_pong: PingPong,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl KeepAlive {
    fn new(ping_pong: PingPong) -> KeepAlive {
        KeepAlive {
            ping_pong,
            timer: Box::pin(sleep(PING_EVERY)),
            waiting: false,
        }
    }

    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + PING_EVERY);
                    }
                    // The connection is going away; its own error ends it.
                    Poll::Ready(Err(_)) => return false,
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.waiting {
                return true;
            }
            let wait = match self.ping_pong.send_ping(Ping::opaque()) {
                Ok(()) => PONG_WITHIN,
                Err(_) => PING_EVERY,
            };
            self.waiting = wait == PONG_WITHIN;
            self.timer.as_mut().reset(Instant::now() + wait);
        }
    }
}

/// Answers one stream: the request goes through the router as any other (a client's reset
/// drops it on the way), and the answer goes back on the stream.
async fn answer(
    shared: &Shared,
    conn: &Conn,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    // Held until the answer's body is sent: an upstream may stream its answer while it reads.
    let mut unread = Unread(None);
    // CONNECT asks for a tunnel, which the router does not make.
    let resp = if req.method() == Method::CONNECT {
        local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served here")
    } else {
        let (parts, recv) = req.into_parts();
        unread.0 = (!recv.is_end_stream()).then(|| Arc::new(Mutex::new(Some(recv))));
        let body = unread
            .0
            .as_ref()
            .map(|r| ClientBody::Right(H2Body::new(r.clone(), &parts.headers)));
        let mut req = Request::from_parts(parts, body);
        let mut handled = pin!(handle(shared, &mut req, None, conn));
        let answered = poll_fn(|cx| match handled.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => match respond.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        let Some((mut resp, id)) = answered else {
            return;
        };
        settle_fields(&mut resp);
        resp.headers_mut().insert(X_REQUEST_ID, answer_id(&id));
        resp
    };
    // The head goes out here, not in a future of its own: that future would be copied whole
    // (more than a kilobyte) on the way to being awaited.
    if let Some((body, tx)) = send_head(resp, &mut respond) {
        pipe(body, tx).await;
    }
}

/// The rest of a request's body once its stream is answered (or given up): what the client may
/// still send is of no use (an upstream that answered first has what it wanted), and left
/// unread it would hold the connection's flow-control window from the other streams — an
/// upstream that answers before it reads the body, as nginx's `return` does, stalled every
/// upload on the connection. Dropping the body gives its window back and tells the client to
/// stop (RST_STREAM `NO_ERROR` after a complete answer); the upstream's copy ends with an error.
struct Unread(Option<Arc<Mutex<Option<RecvStream>>>>);

impl Drop for Unread {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            drop(r.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
    }
}

/// Sends an answer's head, with `Date` and its body's length when it has none; the body and
/// the stream to send it on, unless the head ended the stream (or could not be sent).
fn send_head(
    resp: Response<Body>,
    respond: &mut SendResponse<Bytes>,
) -> Option<(Body, SendStream<Bytes>)> {
    let (mut parts, body) = resp.into_parts();
    // Filters may have set fields that only describe an HTTP/1.1 connection.
    hop::strip(&mut parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        parts
            .headers
            .insert(header::DATE, with_date(|date| date.clone()));
    }
    let end = body.is_end_stream();
    if !end {
        if let Some(n) = body.size_hint().exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| n.into());
        }
    }
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) if !end => Some((body, tx)),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 answer refused");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// Sends a body's frames on its stream: a data frame waits for room in the stream's window
/// before the next is read, so a client that does not read holds the upstream back, not the
/// router's memory.
async fn pipe(mut body: Body, mut tx: SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let Some(frame) = frame else {
            return;
        };
        let sent = match frame {
            None => tx.send_data(Bytes::new(), true),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body broke off");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {
                    if !body.is_end_stream() {
                        continue;
                    }
                    tx.send_data(data, true)
                }
                Ok(data) => {
                    let end = body.is_end_stream();
                    // A claim on one byte of the window: h2 asks for the rest as the data waits.
                    tx.reserve_capacity(1);
                    if !room(&mut tx).await {
                        return;
                    }
                    match tx.send_data(data, end) {
                        Ok(()) if !end => continue,
                        sent => sent,
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        tx.reserve_capacity(0);
                        tx.send_trailers(trailers)
                    }
                    Err(_) => continue,
                },
            },
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "HTTP/2 answer body not sent");
        }
        return;
    }
}

/// Waits for room in the stream's window; false when the stream was reset or closed.
async fn room(tx: &mut SendStream<Bytes>) -> bool {
    poll_fn(|cx| loop {
        if tx.capacity() > 0 {
            return Poll::Ready(true);
        }
        if tx.poll_reset(cx).is_ready() {
            return Poll::Ready(false);
        }
        match ready!(tx.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Poll::Ready(false),
        }
    })
    .await
}

/// A request body arriving on a stream. What is read is given back to the client's window at
/// once: the body is read only as fast as the upstream takes it.
pub struct H2Body {
    /// None once the stream was answered ([`Unread`]).
    recv: Arc<Mutex<Option<RecvStream>>>,
    /// What is left of the length its `Content-Length` declares (h2 holds the data to it).
    length: Option<u64>,
    data_done: bool,
}

impl H2Body {
    fn new(recv: Arc<Mutex<Option<RecvStream>>>, headers: &HeaderMap) -> H2Body {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        H2Body {
            recv,
            length,
            data_done: false,
        }
    }
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = self.get_mut();
        let mut slot = me.recv.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(recv) = slot.as_mut() else {
            return Poll::Ready(Some(Err(Reason::CANCEL.into())));
        };
        if !me.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    me.length = me.length.map(|n| n.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data_done = true,
            }
        }
        Poll::Ready(
            ready!(recv.poll_trailers(cx))
                .transpose()
                .map(|t| t.map(Frame::trailers)),
        )
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.recv.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_some_and(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
