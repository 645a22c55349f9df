//! Watch: a stream of `{"type": ..., "object": ...}` lines for one resource (and namespace),
//! from a resourceVersion or from the current state, with bookmarks, selectors, a timeout, and
//! kube-apiserver's `410 Expired` error event when the revision is no longer in the history.
//!
//! Each watch is one task that reads the store's event feed and writes into a small channel the
//! HTTP response drains; a watcher that cannot keep up (its channel full for [`STALLED`], or too
//! far behind the feed) is cut off rather than slowing writers or holding memory, and resumes
//! from its last resourceVersion like any kube client.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::error::ApiError;
use super::registry::decode;
use super::resources::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use crate::store::{Event, EventKind, KeyValue, RangeRequest, Store, StoreError};

/// How events carry their objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Object,
    Table(IncludeObject),
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub format: Format,
}

const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// Chunks a watch may hold for a client that reads slower than events come (at most about
/// 1 MiB: a chunk is at most about [`CHUNK`]).
const CHANNEL: usize = 16;
/// A watcher whose buffer stays full this long has stopped reading: its watch ends (bounded
/// memory; the client resumes or relists), as kube-apiserver ends unresponsive watchers.
const STALLED: Duration = Duration::from_secs(5);
/// Events that are ready together go out as one chunk of about this size: one write (and one TLS
/// record) for many events, instead of one each.
const CHUNK: usize = 64 * 1024;

struct Watcher {
    r: Arc<Resource>,
    prefix: String,
    opts: WatchOptions,
    tx: mpsc::Sender<Bytes>,
}

fn write_line(b: &mut BytesMut, ty: &str, object: &[u8]) {
    b.reserve(object.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(ty.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object);
    b.put_slice(b"}\n");
}

fn line(ty: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    write_line(&mut b, ty, object);
    b.freeze()
}

impl Watcher {
    fn matches(&self, obj: &Value) -> bool {
        self.opts.labels.matches_object(obj) && self.opts.fields.matches_object(obj)
    }

    /// Whether the stored object is selected; decoded only when its text could match.
    fn selects(&self, kv: &KeyValue) -> Result<bool, ApiError> {
        if !self.opts.labels.may_match_raw(&kv.value) || !self.opts.fields.may_match_raw(&kv.value)
        {
            return Ok(false);
        }
        Ok(self.matches(&decode(kv)?))
    }

    fn filtered(&self) -> bool {
        !self.opts.labels.is_empty() || !self.opts.fields.is_empty()
    }

    fn render(&self, kv: &KeyValue) -> Result<Bytes, ApiError> {
        match self.opts.format {
            Format::Object => Ok(super::crd::present(&self.r, kv.value.clone())),
            Format::Table(include) => {
                let obj = decode(kv)?;
                let t = table::table(
                    &self.r,
                    &[obj],
                    json!({"resourceVersion": kv.mod_revision.to_string()}),
                    include,
                );
                Ok(Bytes::from(serde_json::to_vec(&t).expect("json")))
            }
        }
    }

    /// The event type a client sees for a store event, if any: a change that moves an object into
    /// or out of the selection is an ADDED or DELETED.
    fn classify(&self, ev: &Event) -> Result<Option<&'static str>, ApiError> {
        if !ev.kv.key.starts_with(&self.prefix) {
            return Ok(None);
        }
        if !self.filtered() {
            return Ok(Some(match (ev.kind, &ev.prev) {
                (EventKind::Delete, _) => "DELETED",
                (EventKind::Put, None) => "ADDED",
                (EventKind::Put, Some(_)) => "MODIFIED",
            }));
        }
        let was = match &ev.prev {
            Some(p) => self.selects(p)?,
            None => false,
        };
        if ev.kind == EventKind::Delete {
            return Ok(was.then_some("DELETED"));
        }
        let is = self.selects(&ev.kv)?;
        Ok(match (was, is) {
            (false, true) => Some("ADDED"),
            (true, true) => Some("MODIFIED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        })
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.r.kind, "apiVersion": self.r.api_version(), "metadata": meta});
        line("BOOKMARK", &serde_json::to_vec(&obj).expect("json"))
    }

    async fn send(&self, b: Bytes) -> bool {
        self.tx.send_timeout(b, STALLED).await.is_ok()
    }

    /// Adds the event's line to `out`, if this watcher sees the event.
    fn append(&self, out: &mut BytesMut, ev: &Event) -> Result<(), ApiError> {
        if let Some(ty) = self.classify(ev)? {
            write_line(out, ty, &self.render(&ev.kv)?);
        }
        Ok(())
    }

    /// Sends `out` once it holds a chunk (or always, with `force`).
    async fn flush(&self, out: &mut BytesMut, force: bool) -> bool {
        if out.is_empty() || (!force && out.len() < CHUNK) {
            return true;
        }
        self.send(out.split().freeze()).await
    }

    async fn run(
        self,
        store: Arc<dyn Store>,
        mut watch: crate::store::Watch,
        initial: Vec<KeyValue>,
        from: i64,
    ) {
        let deadline = tokio::time::sleep(self.opts.timeout);
        tokio::pin!(deadline);
        let mut last = from;
        let mut out = BytesMut::new();
        // Consumed: the objects the watch started from are not kept for as long as it runs.
        for kv in initial {
            let keep = !self.filtered() || self.selects(&kv).unwrap_or(false);
            if keep {
                let Ok(obj) = self.render(&kv) else { return };
                write_line(&mut out, "ADDED", &obj);
                if !self.flush(&mut out, false).await {
                    return;
                }
            }
        }
        if self.opts.send_initial_events && self.opts.allow_bookmarks {
            out.extend_from_slice(&self.bookmark(from, true));
        }
        for ev in std::mem::take(&mut watch.backlog) {
            if self.append(&mut out, &ev).is_err() || !self.flush(&mut out, false).await {
                return;
            }
            last = ev.revision();
        }
        if !self.flush(&mut out, true).await {
            return;
        }
        last = last.max(watch.revision.min(store.revision()));
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = self.tx.closed() => return,
                _ = ticker.tick(), if self.opts.allow_bookmarks => {
                    if !self.send(self.bookmark(last, false)).await {
                        return;
                    }
                }
                batch = watch.live.recv() => match batch {
                    Ok(batch) => {
                        // Take every batch already waiting, up to a chunk, and send them as one.
                        let mut next = Some(batch);
                        while let Some(batch) = next.take() {
                            for ev in batch.iter().filter(|e| e.revision() > last) {
                                if self.append(&mut out, ev).is_err() {
                                    return;
                                }
                            }
                            if let Some(ev) = batch.last() {
                                last = last.max(ev.revision());
                            }
                            if out.len() < CHUNK {
                                next = match watch.live.try_recv() {
                                    Ok(b) => Some(b),
                                    Err(broadcast::error::TryRecvError::Empty) => None,
                                    Err(_) => return,
                                };
                            }
                        }
                        if !self.flush(&mut out, true).await {
                            return;
                        }
                    }
                    // Too far behind: end the watch; the client resumes from its last revision.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

fn expired(from: i64) -> Bytes {
    let err = ApiError::gone(format!("too old resource version: {from}"));
    line("ERROR", &err.status_json())
}

/// How long a watch from a resourceVersion the store has not reached waits for it, as
/// kube-apiserver's watch cache does.
const FUTURE_WAIT: Duration = Duration::from_secs(3);

/// Waits until the store reaches `resource_version`; past [`FUTURE_WAIT`], kube-apiserver's 504
/// ("Too large resource version") that tells the client to retry.
pub async fn wait_for_revision(
    store: &dyn Store,
    resource_version: Option<&str>,
) -> Result<(), ApiError> {
    let Some(rv) = resource_version.and_then(|v| v.parse::<i64>().ok()) else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + FUTURE_WAIT;
    while store.revision() < rv {
        if tokio::time::Instant::now() >= deadline {
            let mut err = ApiError::timeout(format!(
                "Too large resource version: {rv}, current: {}",
                store.revision()
            ));
            err.details = Some(serde_json::json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            }));
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a watch; the receiver yields the response body's lines and ends with the watch.
pub fn start(
    store: Arc<dyn Store>,
    r: Arc<Resource>,
    ns: Option<&str>,
    opts: WatchOptions,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let prefix = r.scope_prefix(ns);
    let (tx, rx) = mpsc::channel(CHANNEL);
    let requested = match opts.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    let with_initial = requested.is_none() || opts.send_initial_events;
    let from = match requested {
        Some(rv) if !opts.send_initial_events => rv,
        _ => store.revision(),
    };
    let watch = match store.watch(from) {
        Ok(w) => w,
        Err(StoreError::Compacted { .. }) => {
            let _ = tx.try_send(expired(from));
            return Ok(rx);
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
    };
    let initial = if with_initial {
        store
            .range(&RangeRequest {
                prefix: &prefix,
                revision: Some(from),
                ..Default::default()
            })
            .map_err(|e| ApiError::internal(e.to_string()))?
            .kvs
    } else {
        Vec::new()
    };
    let watcher = Watcher {
        r,
        prefix,
        opts,
        tx,
    };
    tokio::spawn(watcher.run(store, watch, initial, from));
    Ok(rx)
}
