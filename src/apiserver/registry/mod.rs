//! The registry: the API verbs over the store, for every served resource, with kube-apiserver's
//! semantics — system metadata, optimistic concurrency on `resourceVersion`, status subresources,
//! finalizers, namespace lifecycle, and admission. HTTP handlers and in-process controllers both
//! write through it.

//!
//! By concern: [`create`] (decoding, system metadata, the write), [`update`] (read-modify-write
//! for update, patch and apply), [`delete`] (finalizers, graceful pod deletion, namespace
//! lifecycle), [`list`] (paging and continue tokens), [`defaults`] (defaults that read other
//! objects, and bootstrap objects), [`crds`] (the kinds CustomResourceDefinitions add). This file holds the options, the shared helpers and reads.

mod crds;
mod create;
mod defaults;
mod delete;
mod list;
mod update;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::admission::Admission;
use super::error::ApiError;
use super::managed;
use super::resources::{self, Builtin, Kinds, Resource};
use super::selectors::{FieldSelector, LabelSelector};
use crate::store::{Encoder, KeyValue, RangeRequest, Store, StoreError};

/// What to do with fields the type does not know (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options every write takes.
#[derive(Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who writes (`fieldManager`); required for apply.
    pub field_manager: Option<String>,
    /// Who writes when `field_manager` is not given (the client's User-Agent product).
    pub default_manager: String,
    /// Take fields other managers own (`force`, for apply).
    pub force: bool,
    /// Admission by who writes, on the object as it would be stored (and the old one, for an
    /// update): escalation prevention for RBAC objects, NodeRestriction for nodes, the
    /// requester recorded in a CertificateSigningRequest.
    pub guard: Option<Guard>,
}

/// A check of a write by who makes it; see [`WriteOptions::guard`].
pub type Guard = Arc<dyn Fn(Option<&Value>, &mut Value) -> Result<(), ApiError> + Send + Sync>;

impl WriteOptions {
    fn writer<'a>(
        &'a self,
        r: &'a Resource,
        api_version: &'a str,
        now: &'a str,
        part: Part,
    ) -> managed::Writer<'a> {
        managed::Writer {
            lists: &r.lists,
            manager: self
                .field_manager
                .as_deref()
                .unwrap_or(if self.default_manager.is_empty() {
                    "unknown"
                } else {
                    &self.default_manager
                }),
            api_version,
            now,
            subresource: (part == Part::Status).then_some("status"),
        }
    }
}

/// A stored object as answered to the client, with warnings for the `Warning` header.
#[derive(Debug)]
pub struct Written {
    pub object: Bytes,
    pub warnings: Vec<String>,
    pub created: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Propagation,
}

/// What happens to an object's dependents (`propagationPolicy`): the garbage collector deletes
/// them after the object (Background), before it (Foreground: the object waits with the
/// `foregroundDeletion` finalizer), or leaves them without this owner (Orphan: the `orphan`
/// finalizer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::bad_request(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }

    /// The finalizer that holds the object while the collector works, if any.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

pub struct ListResult {
    pub items: Vec<Bytes>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

/// How a read-modify-write changes the object: which part, and whether it is an apply (which
/// records its own managed fields).
#[derive(Clone, Copy, Debug)]
struct How {
    part: Part,
    applied: bool,
}

/// Which part of an object a write changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// The `scale` subresource of a custom kind: its replica count, read and written as an
    /// autoscaling/v1 Scale.
    Scale,
}

impl Part {
    /// The subresource's name, as RBAC names it ("" for the main resource).
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Status => "status",
            Part::Scale => "scale",
        }
    }
}

pub struct Registry {
    store: Arc<dyn Store>,
    admission: Admission,
    kinds: Kinds,
    /// Held while the kinds of a CRD are brought in line with the store.
    crd_sync: std::sync::Mutex<()>,
}

/// Encodes an object for the store, its `resourceVersion` the revision of the write.
fn encoder(mut obj: Value) -> Encoder {
    Box::new(move |rev| {
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        Bytes::from(serde_json::to_vec(&obj).expect("a JSON value serializes"))
    })
}

pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        StoreError::Unwritable(why) => ApiError::service_unavailable(format!(
            "the store cannot write ({why}); nothing was written, and writes fail until it can write again"
        )),
        other => ApiError::internal(other.to_string()),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn parse_rv(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, admission: Admission) -> Self {
        Registry {
            store,
            admission,
            kinds: Kinds::default(),
            crd_sync: std::sync::Mutex::new(()),
        }
    }

    /// The kinds served: routing, discovery and namespace cleanup read them here.
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Rebuilds the allocators from the stored Services.
    pub fn restore_allocations(&self) -> Result<(), ApiError> {
        let svc = resources::builtin(Builtin::Service);
        let all = self
            .store
            .range(&RangeRequest {
                prefix: &svc.prefix(),
                ..Default::default()
            })
            .map_err(store_error)?;
        for kv in &all.kvs {
            self.admission.restore(&Admission::held(svc, &decode(kv)?));
        }
        Ok(())
    }

    pub fn first_cluster_ip(&self) -> std::net::IpAddr {
        self.admission.first_cluster_ip()
    }

    pub fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<KeyValue, ApiError> {
        let (kv, _) = self.store.get(&r.key(ns, name));
        kv.ok_or_else(|| ApiError::not_found(r, name))
    }
}
