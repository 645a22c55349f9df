//! The embedded store: one redb file on disk, the live key space and a bounded event history in
//! memory.
//!
//! All writes go through one committer thread. It takes every transaction that is waiting, checks
//! their preconditions against the live state, writes them to redb in one durable commit (group
//! commit: one fsync for the whole batch), then publishes them to memory and to watchers under one
//! lock, and only then acknowledges them. Reads never wait for disk.
//!
//! The history keeps recent events with their previous values; it serves watches that resume from
//! a past revision and reads at a past revision (paged lists). Older revisions are compacted away,
//! and asking for them is [`StoreError::Compacted`], as with etcd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Event, EventKind, KeyValue, Op, Precondition, RangeRequest, RangeResult, Store, StoreError,
    Watch,
};

/// key -> create_revision (8 bytes LE) ++ mod_revision (8 bytes LE) ++ value
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" -> the store's revision (it does not go back when the newest key is deleted).
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

/// How the history is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Events older than this are compacted...
    pub window: Duration,
    /// ...and never more than this many are kept.
    pub max_events: usize,
}

impl Default for Retention {
    fn default() -> Self {
        // etcd's API server compacts every 5 minutes.
        Retention {
            window: Duration::from_secs(300),
            max_events: 200_000,
        }
    }
}

/// Most transactions one commit takes.
const MAX_BATCH: usize = 1024;
/// Commits a watcher may fall behind before its watch is ended.
const WATCH_BUFFER: usize = 8192;

struct State {
    map: BTreeMap<String, KeyValue>,
    revision: i64,
    /// Events with revision > `compacted`, oldest first, with the time they were committed.
    history: VecDeque<(Instant, Arc<Event>)>,
    compacted: i64,
}

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<[Arc<Event>]>>,
}

struct TxnRequest {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<KeyValue>, StoreError>>,
}

/// The way to the committer thread. Dropping the last one ends the thread and waits for it, so
/// the file is closed when the store is gone.
struct Writer {
    tx: Option<mpsc::UnboundedSender<TxnRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The default store. Cheap to clone; the committer thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(backend(format!("record for {key} is truncated")));
    }
    let create_revision = i64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let mod_revision = i64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(&raw[16..]),
        create_revision,
        mod_revision,
    })
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and starts its committer thread.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let (map, revision) = load(&db)?;
        let state = State {
            map,
            revision,
            history: VecDeque::new(),
            compacted: revision,
        };
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events,
        });
        let (writes, rx) = mpsc::unbounded_channel();
        let committer = Committer {
            db,
            shared: shared.clone(),
            retention,
        };
        let thread = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(backend)?;
        let writer = Arc::new(Writer {
            tx: Some(writes),
            thread: Some(thread),
        });
        Ok(EmbeddedStore { shared, writer })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, i64), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        // Make sure both tables exist so later reads need no special case.
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    let read = db.begin_read().map_err(backend)?;
    let kv = read.open_table(KV).map_err(backend)?;
    let meta = read.open_table(META).map_err(backend)?;
    let mut revision = meta
        .get(REVISION_KEY)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut map = BTreeMap::new();
    for entry in kv.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let record = decode_record(k.value(), v.value())?;
        revision = revision.max(record.mod_revision);
        map.insert(record.key.clone(), record);
    }
    Ok((map, revision))
}

impl Store for EmbeddedStore {
    fn revision(&self) -> i64 {
        self.read().revision
    }

    fn get(&self, key: &str) -> (Option<KeyValue>, i64) {
        let state = self.read();
        (state.map.get(key).cloned(), state.revision)
    }

    fn range(&self, req: &RangeRequest<'_>) -> Result<RangeResult, StoreError> {
        let state = self.read();
        let at = req.revision.unwrap_or(state.revision);
        if at > state.revision {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: state.revision,
            });
        }
        if at < state.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: state.compacted,
            });
        }
        let lower = match req.start_after {
            Some(k) if k >= req.prefix => Bound::Excluded(k),
            _ => Bound::Included(req.prefix),
        };
        let in_range = |k: &str| k.starts_with(req.prefix) && req.start_after.is_none_or(|s| k > s);
        // The state at `at` is the live state with every later event undone: for each key the
        // first event after `at` says what the key held at `at`.
        let mut undo: BTreeMap<&str, Option<&KeyValue>> = BTreeMap::new();
        if at < state.revision {
            let first_after = state.history.partition_point(|(_, e)| e.revision() <= at);
            for (_, ev) in state.history.range(first_after..) {
                if in_range(&ev.kv.key) {
                    undo.entry(ev.kv.key.as_str()).or_insert(ev.prev.as_ref());
                }
            }
        }
        let mut live = state
            .map
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(req.prefix))
            .map(|(k, v)| (k.as_str(), Some(v)))
            .peekable();
        let mut undone = undo.into_iter().peekable();
        // The live keys and the undo log, merged in key order as far as the page needs (the
        // log's value wins for a key in both): a page costs its own length, not the prefix's.
        let values = std::iter::from_fn(|| loop {
            let next = match (live.peek(), undone.peek()) {
                (None, None) => return None,
                (Some(_), None) => live.next(),
                (None, Some(_)) => undone.next(),
                (Some((lk, _)), Some((uk, _))) => match lk.cmp(uk) {
                    std::cmp::Ordering::Less => live.next(),
                    std::cmp::Ordering::Greater => undone.next(),
                    std::cmp::Ordering::Equal => {
                        live.next();
                        undone.next()
                    }
                },
            };
            if let Some((_, Some(v))) = next {
                return Some(v);
            }
        });
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for v in values {
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(v.clone());
        }
        Ok(RangeResult {
            kvs,
            revision: at,
            more,
        })
    }

    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .writer
            .tx
            .as_ref()
            .ok_or(())
            .and_then(|tx| tx.send(TxnRequest { ops, reply }).map_err(drop));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, from: i64) -> Result<Watch, StoreError> {
        let state = self.read();
        if from < state.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: state.compacted,
            });
        }
        // Subscribing under the read lock: the committer publishes under the write lock, so no
        // batch falls between the backlog and the live feed.
        let live = self.shared.events.subscribe();
        let first = state.history.partition_point(|(_, e)| e.revision() <= from);
        let backlog = state
            .history
            .range(first..)
            .map(|(_, e)| e.clone())
            .collect();
        Ok(Watch {
            backlog,
            live,
            revision: state.revision,
        })
    }
}

struct Committer {
    db: Database,
    shared: Arc<Shared>,
    retention: Retention,
}

/// What a batch does to the key space, before it is written.
#[derive(Default)]
struct Batch {
    /// key -> the key's state after the batch (None: deleted).
    overlay: HashMap<String, Option<KeyValue>>,
    events: Vec<Arc<Event>>,
    revision: i64,
}

impl Committer {
    fn run(self, mut rx: mpsc::UnboundedReceiver<TxnRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut requests = vec![first];
            while requests.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            self.commit(requests);
        }
    }

    fn current(&self, batch: &Batch, key: &str) -> Option<KeyValue> {
        match batch.overlay.get(key) {
            Some(v) => v.clone(),
            None => self
                .shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .map
                .get(key)
                .cloned(),
        }
    }

    /// Applies one transaction to the batch, or leaves the batch as it was and says why not.
    fn apply(&self, batch: &mut Batch, ops: Vec<Op>) -> Result<Vec<KeyValue>, StoreError> {
        let mut local: HashMap<String, Option<KeyValue>> = HashMap::new();
        let mut events = Vec::with_capacity(ops.len());
        let mut results = Vec::with_capacity(ops.len());
        let mut revision = batch.revision;
        for op in ops {
            let key = op.key().to_string();
            let current = match local.get(&key) {
                Some(v) => v.clone(),
                None => self.current(batch, &key),
            };
            let precondition = match &op {
                Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
            };
            let ok = match (precondition, &current) {
                (Precondition::Absent, None) => true,
                (Precondition::Exists, Some(_)) => true,
                (Precondition::ModRevision(r), Some(kv)) => kv.mod_revision == r,
                _ => false,
            };
            if !ok || (matches!(op, Op::Delete { .. }) && current.is_none()) {
                return Err(StoreError::Conflict { key, current });
            }
            revision += 1;
            match op {
                Op::Put { value, .. } => {
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value(revision),
                        create_revision: current.as_ref().map_or(revision, |c| c.create_revision),
                        mod_revision: revision,
                    };
                    events.push(Arc::new(Event {
                        kind: EventKind::Put,
                        kv: kv.clone(),
                        prev: current,
                    }));
                    local.insert(key, Some(kv.clone()));
                    results.push(kv);
                }
                Op::Delete { tombstone, .. } => {
                    let prev = current.expect("checked above");
                    let kv = KeyValue {
                        key: key.clone(),
                        value: tombstone(revision),
                        create_revision: prev.create_revision,
                        mod_revision: revision,
                    };
                    events.push(Arc::new(Event {
                        kind: EventKind::Delete,
                        kv: kv.clone(),
                        prev: Some(prev),
                    }));
                    local.insert(key, None);
                    results.push(kv);
                }
            }
        }
        batch.overlay.extend(local);
        batch.events.extend(events);
        batch.revision = revision;
        Ok(results)
    }

    fn commit(&self, requests: Vec<TxnRequest>) {
        let mut batch = Batch {
            revision: self
                .shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .revision,
            ..Batch::default()
        };
        let mut replies = Vec::with_capacity(requests.len());
        for req in requests {
            match self.apply(&mut batch, req.ops) {
                Ok(results) => replies.push((req.reply, Ok(results))),
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if batch.events.is_empty() {
            return;
        }
        if let Err(e) = self.write(&batch) {
            tracing::error!(error = %e, "store commit failed");
            for (reply, _) in replies {
                let _ = reply.send(Err(backend(&e)));
            }
            return;
        }
        self.publish(batch);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            for (key, value) in &batch.overlay {
                match value {
                    Some(v) => {
                        kv.insert(key.as_str(), encode_record(v).as_slice())
                            .map_err(backend)?;
                    }
                    None => {
                        kv.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(REVISION_KEY, batch.revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn publish(&self, batch: Batch) {
        let now = Instant::now();
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        for (key, value) in batch.overlay {
            match value {
                Some(v) => state.map.insert(key, v),
                None => state.map.remove(&key),
            };
        }
        state.revision = batch.revision;
        for e in &batch.events {
            state.history.push_back((now, e.clone()));
        }
        while let Some((at, e)) = state.history.front() {
            let expired = now.duration_since(*at) > self.retention.window;
            if !expired && state.history.len() <= self.retention.max_events {
                break;
            }
            let compacted = e.revision();
            state.history.pop_front();
            state.compacted = compacted;
        }
        let events: Arc<[Arc<Event>]> = batch.events.into();
        // No receivers is fine: nobody is watching.
        let _ = self.shared.events.send(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, pre: Precondition, value: &'static str) -> Op {
        Op::Put {
            key: key.into(),
            precondition: pre,
            value: Box::new(move |_| Bytes::from_static(value.as_bytes())),
        }
    }

    fn del(key: &str, pre: Precondition) -> Op {
        Op::Delete {
            key: key.into(),
            precondition: pre,
            tombstone: Box::new(|_| Bytes::new()),
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(&dir.join("store.redb"), Retention::default()).unwrap()
    }

    #[tokio::test]
    async fn cas_and_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .txn(vec![put("/a", Precondition::Absent, "1")])
            .await
            .unwrap();
        assert_eq!(a[0].mod_revision, 1);
        let err = s
            .txn(vec![put("/a", Precondition::Absent, "2")])
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Conflict {
                current: Some(_),
                ..
            }
        ));
        let err = s
            .txn(vec![put("/a", Precondition::ModRevision(7), "2")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        let b = s
            .txn(vec![put("/a", Precondition::ModRevision(1), "2")])
            .await
            .unwrap();
        assert_eq!((b[0].create_revision, b[0].mod_revision), (1, 2));
        // A failed transaction applies none of its ops.
        let err = s
            .txn(vec![
                put("/b", Precondition::Absent, "x"),
                del("/missing", Precondition::Exists),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        assert!(s.get("/b").0.is_none());
        assert_eq!(s.revision(), 2);
    }

    #[tokio::test]
    async fn range_at_past_revision_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            for k in ["/r/a", "/r/b", "/r/c", "/x"] {
                s.txn(vec![put(k, Precondition::Absent, "v")])
                    .await
                    .unwrap();
            }
            // rev 4: a b c x
            s.txn(vec![del("/r/b", Precondition::Exists)])
                .await
                .unwrap(); // 5
            s.txn(vec![put("/r/a", Precondition::Exists, "w")])
                .await
                .unwrap(); // 6
            s.txn(vec![put("/r/d", Precondition::Absent, "v")])
                .await
                .unwrap(); // 7
            let now = s
                .range(&RangeRequest {
                    prefix: "/r/",
                    ..Default::default()
                })
                .unwrap();
            let keys: Vec<_> = now.kvs.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(keys, ["/r/a", "/r/c", "/r/d"]);
            let past = s
                .range(&RangeRequest {
                    prefix: "/r/",
                    revision: Some(4),
                    ..Default::default()
                })
                .unwrap();
            let keys: Vec<_> = past
                .kvs
                .iter()
                .map(|k| (k.key.as_str(), k.value.clone()))
                .collect();
            assert_eq!(
                keys,
                [
                    ("/r/a", Bytes::from("v")),
                    ("/r/b", Bytes::from("v")),
                    ("/r/c", Bytes::from("v"))
                ]
            );
            let page = s
                .range(&RangeRequest {
                    prefix: "/r/",
                    start_after: Some("/r/a"),
                    limit: 1,
                    revision: Some(4),
                })
                .unwrap();
            assert_eq!(page.kvs[0].key, "/r/b");
            assert!(page.more);
            // Pages of the past: a deleted key comes back, a later one stays out, in order.
            let page = |after: Option<&'static str>, limit| {
                let r = s
                    .range(&RangeRequest {
                        prefix: "/r/",
                        start_after: after,
                        limit,
                        revision: Some(4),
                    })
                    .unwrap();
                let keys: Vec<String> = r.kvs.iter().map(|k| k.key.clone()).collect();
                (keys, r.more)
            };
            assert_eq!(page(None, 2), (vec!["/r/a".into(), "/r/b".into()], true));
            assert_eq!(page(Some("/r/b"), 1), (vec!["/r/c".into()], false));
            assert_eq!(page(Some("/r/c"), 5), (vec![], false));
            let w = s.watch(5).unwrap();
            assert_eq!(
                w.backlog.iter().map(|e| e.revision()).collect::<Vec<_>>(),
                [6, 7]
            );
        }
        let s = open(dir.path());
        assert_eq!(s.revision(), 7);
        assert_eq!(s.get("/r/a").0.unwrap().value, Bytes::from("w"));
        assert!(s.get("/r/b").0.is_none());
        // History does not survive a restart: older revisions are compacted.
        assert!(matches!(s.watch(3), Err(StoreError::Compacted { .. })));
        assert!(s.watch(7).is_ok());
    }

    #[tokio::test]
    async fn concurrent_writers_get_distinct_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.txn(vec![put(&format!("/k/{i}"), Precondition::Absent, "v")])
                    .await
                    .unwrap()[0]
                    .mod_revision
            }));
        }
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.unwrap());
        }
        revs.sort();
        assert_eq!(revs, (1..=64).collect::<Vec<_>>());
    }
}
