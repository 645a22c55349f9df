//! The embedded store: one redb file on disk, the live key space and a bounded event history in
//! memory.
//!
//! All writes go through one committer thread. It takes every transaction that is waiting, checks
//! their preconditions against the live state, writes them to redb in one durable commit (group
//! commit: one fsync for the whole batch), then publishes them to memory and to watchers under one
//! lock, and only then acknowledges them. Reads never wait for disk.
//!
//! The history keeps recent events with their previous values; it serves watches that resume from
//! a past revision and reads at a past revision (paged lists). It is written to the file with the
//! keys it changes, so it survives a restart for as long as the retention keeps it. Older
//! revisions are compacted away, and asking for them is [`StoreError::Compacted`], as with etcd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::sync::mpsc as std_mpsc;

use tokio::sync::{broadcast, oneshot};

use super::{
    Event, EventKind, KeyValue, Op, Precondition, RangeRequest, RangeResult, Store, StoreError,
    Watch,
};

/// key -> create_revision (8 bytes LE) ++ mod_revision (8 bytes LE) ++ value
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" -> the store's revision (it does not go back when the newest key is deleted).
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// revision -> the event of that revision (see [`encode_event`]): the retained history, so a
/// watch from a recent revision resumes after a restart, as etcd's does.
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
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

/// Retained events, oldest first, with the time each was committed.
type History = VecDeque<(Instant, Arc<Event>)>;

struct State {
    map: BTreeMap<String, KeyValue>,
    revision: i64,
    /// Events with revision > `compacted`, oldest first, with the time they were committed.
    history: History,
    compacted: i64,
}

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<[Arc<Event>]>>,
    /// Why the last write failed, until a write succeeds again.
    unwritable: RwLock<Option<String>>,
}

struct TxnRequest {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<KeyValue>, StoreError>>,
}

/// The way to the committer thread. Dropping the last one ends the thread and waits for it, so
/// the file is closed when the store is gone.
struct Writer {
    tx: Option<std_mpsc::Sender<TxnRequest>>,
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

/// Reads a length-prefixed record from the front of `raw`.
fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if raw.len() < n {
        return Err(backend("history record is truncated"));
    }
    let (head, rest) = raw.split_at(n);
    *raw = rest;
    Ok(head)
}

fn take_u32(raw: &mut &[u8]) -> Result<usize, StoreError> {
    Ok(u32::from_le_bytes(take(raw, 4)?.try_into().expect("4 bytes")) as usize)
}

fn push_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    let record = encode_record(kv);
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&record);
}

fn take_kv(raw: &mut &[u8], key: &str) -> Result<KeyValue, StoreError> {
    let n = take_u32(raw)?;
    decode_record(key, take(raw, n)?)
}

/// An event as the log keeps it: kind, commit time (ms since the epoch), key, the key-value, and
/// the previous one if any.
fn encode_event(e: &Event, committed_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.kv.key.len() + e.kv.value.len());
    out.push(match e.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&committed_ms.to_le_bytes());
    out.extend_from_slice(&(e.kv.key.len() as u32).to_le_bytes());
    out.extend_from_slice(e.kv.key.as_bytes());
    push_kv(&mut out, &e.kv);
    if let Some(prev) = &e.prev {
        push_kv(&mut out, prev);
    }
    out
}

fn decode_event(mut raw: &[u8]) -> Result<(Event, i64), StoreError> {
    let raw = &mut raw;
    let kind = match take(raw, 1)?[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        k => return Err(backend(format!("history record has kind {k}"))),
    };
    let committed = i64::from_le_bytes(take(raw, 8)?.try_into().expect("8 bytes"));
    let n = take_u32(raw)?;
    let key = std::str::from_utf8(take(raw, n)?)
        .map_err(|_| backend("history record key is not UTF-8"))?
        .to_string();
    let kv = take_kv(raw, &key)?;
    let prev = if raw.is_empty() {
        None
    } else {
        Some(take_kv(raw, &key)?)
    };
    Ok((Event { kind, kv, prev }, committed))
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and starts its committer thread.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let (map, revision) = load(&db)?;
        let (history, compacted) = load_history(&db, revision, retention)?;
        let state = State {
            map,
            revision,
            history,
            compacted,
        };
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events,
            unwritable: RwLock::new(None),
        });
        let (writes, rx) = std_mpsc::channel();
        let committer = Committer {
            db: Some(db),
            path: path.to_path_buf(),
            shared: shared.clone(),
            retention,
            next_attempt: Instant::now(),
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

/// The retained history as the log holds it, and the revision before its oldest event. Events
/// the retention would have dropped by now are left out (and deleted from the log by the next
/// commit).
fn load_history(
    db: &Database,
    revision: i64,
    retention: Retention,
) -> Result<(History, i64), StoreError> {
    let read = db.begin_read().map_err(backend)?;
    let log = read.open_table(LOG).map_err(backend)?;
    let (now, wall) = (Instant::now(), unix_ms(SystemTime::now()));
    let mut history = VecDeque::new();
    for entry in log.iter().map_err(backend)? {
        let (rev, raw) = entry.map_err(backend)?;
        let (event, committed) = decode_event(raw.value())?;
        if event.revision() != rev.value() || event.revision() > revision {
            return Err(backend(format!(
                "history record {} is inconsistent",
                rev.value()
            )));
        }
        let age = Duration::from_millis(wall.saturating_sub(committed).max(0) as u64);
        match now.checked_sub(age) {
            Some(at) if age <= retention.window => history.push_back((at, Arc::new(event))),
            // Too old for the window (or for this clock): compacted.
            _ => history.clear(),
        }
    }
    while history.len() > retention.max_events {
        history.pop_front();
    }
    let compacted = history.front().map_or(revision, |(_, e)| e.revision() - 1);
    Ok((history, compacted))
}

fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, i64), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        // Make sure every table exists so later reads need no special case.
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.open_table(LOG).map_err(backend)?;
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

    fn unwritable(&self) -> Option<String> {
        self.shared
            .unwritable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// None while the file could not be reopened after a failed write.
    db: Option<Database>,
    path: std::path::PathBuf,
    shared: Arc<Shared>,
    retention: Retention,
    /// While unwritable: when to try the file again.
    next_attempt: Instant,
}

/// While the store cannot write, how often it tries again.
const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);
/// After a failed write, the store writes again only once its file system has this much room
/// (more than the largest request body), so it does not flap between failing and not.
const RECOVERY_ROOM: u64 = 8 << 20;

/// Bytes an unprivileged writer may still use on the file system holding `path`.
fn room(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
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
    fn run(mut self, rx: std_mpsc::Receiver<TxnRequest>) {
        loop {
            // While the store cannot write, it tries again on its own, so it recovers (and says
            // so on /readyz) without waiting for a client's write.
            let first = if self.failure().is_some() {
                match rx.recv_timeout(RECOVERY_INTERVAL) {
                    Ok(r) => r,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.recover();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            };
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

    fn failure(&self) -> Option<String> {
        self.shared
            .unwritable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failure(&self, why: Option<String>) {
        *self
            .shared
            .unwritable
            .write()
            .unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// After a failed write: reopens the file (redb refuses every write after an I/O error until
    /// it is reopened) and proves it can write with an empty commit. A file that holds a newer
    /// revision than memory (a commit that failed to say it succeeded) is read back whole, and
    /// the history restarts there (watchers relist).
    fn recover(&mut self) {
        if Instant::now() < self.next_attempt {
            return;
        }
        self.next_attempt = Instant::now() + RECOVERY_INTERVAL;
        self.db = None;
        let attempt = (|| {
            let free = room(&self.path).map_err(backend)?;
            if free < RECOVERY_ROOM {
                return Err(backend(format!(
                    "{free} bytes free on its file system; waiting for {RECOVERY_ROOM}"
                )));
            }
            let db = Database::create(&self.path).map_err(backend)?;
            let (map, revision) = load(&db)?;
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(META)
                .map_err(backend)?
                .insert(REVISION_KEY, revision)
                .map_err(backend)?;
            txn.commit().map_err(backend)?;
            Ok::<_, StoreError>((db, map, revision))
        })();
        match attempt {
            Ok((db, map, revision)) => {
                let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
                if revision != state.revision {
                    tracing::warn!(
                        memory = state.revision,
                        file = revision,
                        "store file differs from memory after a failed write; reloaded"
                    );
                    state.map = map;
                    state.revision = revision;
                    state.history.clear();
                    state.compacted = revision;
                }
                drop(state);
                self.db = Some(db);
                self.set_failure(None);
                tracing::info!("store writes again");
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still cannot write");
            }
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

    fn commit(&mut self, requests: Vec<TxnRequest>) {
        if self.failure().is_some() {
            self.recover();
        }
        if let Some(why) = self.failure() {
            // Fail fast: nothing is tried while the file cannot be written.
            for req in requests {
                let _ = req.reply.send(Err(StoreError::Unwritable(why.clone())));
            }
            return;
        }
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
            let why = match e {
                StoreError::Backend(why) => why,
                other => other.to_string(),
            };
            tracing::error!(error = %why, "store commit failed; writes fail until the store can write again");
            self.set_failure(Some(why.clone()));
            self.next_attempt = Instant::now();
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Unwritable(why.clone())));
            }
            return;
        }
        self.publish(batch);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| backend("the store file is not open"))?;
        let txn = db.begin_write().map_err(backend)?;
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
            let mut log = txn.open_table(LOG).map_err(backend)?;
            let now = unix_ms(SystemTime::now());
            for e in &batch.events {
                log.insert(e.revision(), encode_event(e, now).as_slice())
                    .map_err(backend)?;
            }
            // What the history has compacted since the last commit leaves the log too.
            let compacted = self
                .shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .compacted;
            log.retain_in(..=compacted, |_, _| false).map_err(backend)?;
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
        // The history survives a restart: a watch resumes, a past revision is read.
        let w = s.watch(3).unwrap();
        assert_eq!(
            w.backlog.iter().map(|e| e.revision()).collect::<Vec<_>>(),
            [4, 5, 6, 7]
        );
        assert_eq!(w.backlog[1].prev.as_ref().unwrap().key, "/r/b");
        let past = s
            .range(&RangeRequest {
                prefix: "/r/",
                revision: Some(4),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(past.kvs.len(), 3);
        assert!(s.watch(7).is_ok());
        drop(s);
        // What falls out of the window is compacted at the next open.
        let s = EmbeddedStore::open(
            &dir.path().join("store.redb"),
            Retention {
                window: Duration::ZERO,
                max_events: 10,
            },
        )
        .unwrap();
        assert!(matches!(s.watch(3), Err(StoreError::Compacted { .. })));
        s.txn(vec![put("/r/e", Precondition::Absent, "v")])
            .await
            .unwrap();
        drop(s);
        let s = open(dir.path());
        let w = s.watch(7).unwrap();
        assert_eq!(
            w.backlog.iter().map(|e| e.revision()).collect::<Vec<_>>(),
            [8]
        );
        assert!(matches!(s.watch(6), Err(StoreError::Compacted { .. })));
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
