//! The store: a key-value API shaped like etcd's (global revisions, compare-and-swap, range at a
//! revision, watch from a revision), so the API server does not care which backend holds the data.
//! It knows nothing of Kubernetes: keys and values are bytes.
//!
//! [`embedded::EmbeddedStore`] is the default backend: a redb file with group commit, the live
//! key space and a bounded event history in memory.

pub mod embedded;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

/// A stored key with its revisions, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
}

/// Whether an event wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as etcd reports it to watchers with `prev_kv`.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    /// For a put the new value; for a delete the tombstone value handed to [`Op::Delete`], with
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The value before this event, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// Produces the bytes to store once the revision of the write is known, so a value may carry its
/// own revision (the API server puts it in `metadata.resourceVersion`).
pub type Encoder = Box<dyn FnOnce(i64) -> Bytes + Send>;

/// What a write requires of the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist (create).
    Absent,
    /// The key must exist with exactly this `mod_revision` (compare-and-swap).
    ModRevision(i64),
    /// The key must exist, whatever its revision.
    Exists,
}

/// One write.
pub enum Op {
    Put {
        key: String,
        precondition: Precondition,
        value: Encoder,
    },
    Delete {
        key: String,
        precondition: Precondition,
        /// The value reported to watchers for the delete (the object's final state).
        tombstone: Encoder,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// The result of a range read.
#[derive(Debug)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// The revision the range was read at.
    pub revision: i64,
    /// True when `limit` cut the result short.
    pub more: bool,
}

/// A range read: every key that starts with `prefix` and sorts after `start_after`.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest<'a> {
    pub prefix: &'a str,
    pub start_after: Option<&'a str>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read at this past revision instead of the current one.
    pub revision: Option<i64>,
}

/// A live watch: the events already past `from`, then the live feed.
pub struct Watch {
    /// Events after the requested revision that were already committed when the watch began.
    pub backlog: Vec<Arc<Event>>,
    /// Batches of later events, one batch per commit.
    pub live: broadcast::Receiver<Arc<[Arc<Event>]>>,
    /// The store's revision when the watch began.
    pub revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("precondition failed for key {key}")]
    Conflict {
        key: String,
        /// The key's current state, if it exists.
        current: Option<KeyValue>,
    },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: i64, current: i64 },
    #[error("store backend: {0}")]
    Backend(String),
    /// The store cannot write now (a full disk, an I/O error); nothing was written. It retries
    /// by itself and writes again once it can.
    #[error("the store cannot write: {0}")]
    Unwritable(String),
    #[error("store is shut down")]
    Closed,
}

/// The API the server needs of a store, as etcd offers it.
pub trait Store: Send + Sync + 'static {
    /// The current revision.
    fn revision(&self) -> i64;
    /// Read one key at the current revision.
    fn get(&self, key: &str) -> (Option<KeyValue>, i64);
    /// Read a range, at the current revision or at a past one still in the history.
    fn range(&self, req: &RangeRequest<'_>) -> Result<RangeResult, StoreError>;
    /// Apply writes atomically, each its own revision; returns the resulting key-values (for a
    /// delete, the tombstone). Durable when it returns.
    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>>;
    /// Watch every key from revision `from` (exclusive).
    fn watch(&self, from: i64) -> Result<Watch, StoreError>;
    /// Why the store cannot write now, if it cannot.
    fn unwritable(&self) -> Option<String>;
}
