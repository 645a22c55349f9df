//! Request mirroring (`RequestMirror`): a copy of a request goes to another backend while the
//! original streams to its own. The copy never holds the original back: its body is fed from
//! the original's frames without waiting, and a mirror that falls behind loses its copy. Its
//! answer is read and thrown away.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::h2::H2Body;
use super::routes::Backend;
use super::server::{pick, send};
use super::upstream::UpstreamBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body frames and bytes a copy may fall behind the original before it is given up.
const COPY_FRAMES: usize = 64;
const COPY_BYTES: usize = 256 * 1024;
/// Mirrored requests in flight per router; beyond them requests are not copied.
pub const MAX_MIRRORS: usize = 256;

/// A client's request body, as it arrives: read by hyper's HTTP/1.1 server or from an HTTP/2
/// stream.
pub type ClientBody = Either<Incoming, H2Body>;

/// A request body on its way upstream.
pub enum RequestBody {
    /// The client's, as it arrives.
    Client(ClientBody),
    /// The client's, copied to mirrors as it passes.
    Teed(Tee),
    /// A mirror's copy of a client's body.
    Copy(Copied),
    /// None (the client's had ended before it was copied).
    Empty,
    /// One of the others, going out on an HTTP/1.1 connection that learns from `sent` whether
    /// it went out whole (see [`super::upstream::Kept`]).
    Watched(Box<RequestBody>, Arc<AtomicBool>),
}

impl RequestBody {
    /// `self`, telling `sent` once it has gone out whole.
    pub fn watched(self, sent: &Arc<AtomicBool>) -> RequestBody {
        let body = self.unwatched();
        if body.is_end_stream() {
            sent.store(true, Ordering::Release);
            return body;
        }
        RequestBody::Watched(Box::new(body), sent.clone())
    }

    /// `self` without the watch [`RequestBody::watched`] put on it.
    pub fn unwatched(self) -> RequestBody {
        match self {
            RequestBody::Watched(body, _) => *body,
            body => body,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Teed(t) => t.poll(cx),
            RequestBody::Copy(c) => c.poll(cx),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Watched(body, sent) => {
                let polled = Pin::new(&mut **body).poll_frame(cx);
                let whole = match &polled {
                    Poll::Ready(None) => true,
                    // hyper stops at the end a body or its length declares.
                    Poll::Ready(Some(Ok(_))) => {
                        body.is_end_stream() || body.size_hint().exact() == Some(0)
                    }
                    _ => false,
                };
                if whole {
                    sent.store(true, Ordering::Release);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Teed(t) => t.is_end_stream(),
            RequestBody::Copy(c) => c.ended,
            RequestBody::Empty => true,
            RequestBody::Watched(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Teed(t) => t
                .inner
                .as_ref()
                .map_or(SizeHint::with_exact(0), |b| b.size_hint()),
            RequestBody::Copy(c) => c.size,
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Watched(body, _) => body.size_hint(),
        }
    }
}

/// What a copy and its feed share.
#[derive(Default)]
struct Progress {
    /// Set once the copy has every frame.
    complete: AtomicBool,
    /// Body bytes sent and not yet read.
    queued: AtomicUsize,
}

/// One copy being fed.
struct Feed {
    tx: mpsc::Sender<Frame<Bytes>>,
    progress: Arc<Progress>,
}

impl Feed {
    /// Hands a frame on; false when the copy cannot take it now.
    fn feed(&self, frame: &Frame<Bytes>) -> bool {
        let copy = match (frame.data_ref(), frame.trailers_ref()) {
            (Some(d), _) => {
                let queued = self.progress.queued.fetch_add(d.len(), Ordering::Relaxed);
                if queued + d.len() > COPY_BYTES {
                    return false;
                }
                Frame::data(d.clone())
            }
            (None, Some(t)) => Frame::trailers(t.clone()),
            (None, None) => return true,
        };
        self.tx.try_send(copy).is_ok()
    }
}

/// The client's body, handing each frame to its copies as it passes.
pub struct Tee {
    /// None for a request without a body.
    inner: Option<ClientBody>,
    feeds: Vec<Feed>,
}

impl Tee {
    pub fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    pub fn new(inner: Option<ClientBody>) -> Tee {
        Tee {
            inner,
            feeds: Vec::new(),
        }
    }

    /// A copy of the body for a mirror.
    pub fn copy(&mut self) -> RequestBody {
        let Some(inner) = self.inner.as_ref().filter(|b| !b.is_end_stream()) else {
            return RequestBody::Empty;
        };
        let (tx, rx) = mpsc::channel(COPY_FRAMES);
        let progress = Arc::new(Progress::default());
        self.feeds.push(Feed {
            tx,
            progress: progress.clone(),
        });
        RequestBody::Copy(Copied {
            rx,
            progress,
            size: inner.size_hint(),
            ended: false,
        })
    }

    /// The original, with its copies fed (or the plain body when nothing copies it).
    pub fn into_body(self) -> RequestBody {
        match self.inner {
            None => RequestBody::Empty,
            Some(inner) if self.feeds.is_empty() => RequestBody::Client(inner),
            Some(_) => RequestBody::Teed(self),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                // A copy that cannot take the frame now has fallen behind: it is dropped.
                self.feeds.retain(|f| f.feed(frame));
                if inner.is_end_stream() {
                    self.finish();
                }
            }
            None => self.finish(),
            Some(Err(_)) => self.feeds.clear(),
        }
        Poll::Ready(polled)
    }

    fn finish(&mut self) {
        for f in self.feeds.drain(..) {
            f.progress.complete.store(true, Ordering::Release);
        }
    }
}

/// A mirror's copy of the body: the frames the original passed on; an error if it was dropped
/// or the original broke off.
pub struct Copied {
    rx: mpsc::Receiver<Frame<Bytes>>,
    progress: Arc<Progress>,
    size: SizeHint,
    ended: bool,
}

impl Copied {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(frame) => {
                if let Some(d) = frame.data_ref() {
                    self.progress.queued.fetch_sub(d.len(), Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.ended = true;
                if self.progress.complete.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err("the request body was not copied in full".into())))
                }
            }
        }
    }
}

/// Mirrored requests by outcome.
#[derive(Default)]
pub struct MirrorStats {
    /// The mirror answered (whatever its status).
    pub answered: AtomicU64,
    /// No endpoint, no connection, a timeout, or a body copy given up.
    pub failed: AtomicU64,
    /// Not sent: too many mirrored requests in flight.
    pub skipped: AtomicU64,
}

/// Sends a mirrored request and reads its answer to the end, within the backend's response
/// timeout. `_slot` bounds how many are in flight.
pub async fn run(
    backend: Arc<Backend>,
    req: Request<RequestBody>,
    stats: Arc<MirrorStats>,
    _slot: OwnedSemaphorePermit,
) {
    let settings = &backend.settings;
    let exchange = async {
        let upstream = pick(&backend, &[])?;
        let in_flight = upstream.start();
        let sender = upstream.sender(settings.connect_timeout).await.ok()?;
        let (resp, keep) = send(sender, req).await.ok()?;
        let mut body = UpstreamBody::new(resp.into_body(), in_flight, keep);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.ok()?;
        }
        Some(())
    };
    let counter = match tokio::time::timeout(settings.response_timeout, exchange).await {
        Ok(Some(())) => &stats.answered,
        _ => &stats.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
