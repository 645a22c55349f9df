//! The registry: the API verbs over the store, for every served resource, with kube-apiserver's
//! semantics — system metadata, optimistic concurrency on `resourceVersion`, status subresources,
//! finalizers, namespace lifecycle, and admission. HTTP handlers and in-process controllers both
//! write through it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use rand::Rng;
use serde_json::{json, Value};

use super::admission::Admission;
use super::error::ApiError;
use super::managed;
use super::patch::{self, Patch, PatchType};
use super::resources::{self, Resource};
use super::selectors::{FieldSelector, LabelSelector};
use crate::store::{Encoder, KeyValue, Op, Precondition, RangeRequest, Store, StoreError};
use crate::time::{now, rfc3339};

/// What to do with fields the type does not know (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options every write takes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who writes (`fieldManager`); required for apply.
    pub field_manager: Option<String>,
    /// Who writes when `field_manager` is not given (the client's User-Agent product).
    pub default_manager: String,
    /// Take fields other managers own (`force`, for apply).
    pub force: bool,
}

impl WriteOptions {
    fn writer<'a>(&'a self, api_version: &'a str, now: &'a str, part: Part) -> managed::Writer<'a> {
        managed::Writer {
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
}

pub struct Registry {
    store: Arc<dyn Store>,
    admission: Admission,
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // A version-4 UUID.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    // kube-apiserver's alphabet for generated names: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
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

/// The object without what the server changes on every write, to see whether a write changes
/// anything.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Why an update with a stale resourceVersion fails, in kube-apiserver's words.
const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Namespaces kube-apiserver refuses to delete.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, admission: Admission) -> Self {
        Registry { store, admission }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Rebuilds the allocators from the stored Services.
    pub fn restore_allocations(&self) -> Result<(), ApiError> {
        let svc = resources::by_kind("Service");
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

    pub fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let prefix = r.scope_prefix(ns);
        let (mut start, mut at) = (None, None);
        if let Some(tok) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            if opts
                .resource_version
                .as_deref()
                .is_some_and(|v| !v.is_empty())
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .filter(|t| t.start.starts_with(&prefix))
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: the token is malformed or names another resource"))?;
            start = Some(raw.start);
            at = Some(raw.rv);
        } else if let Some(rv) = opts
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
        {
            let rv = parse_rv(rv)?;
            match opts.resource_version_match.as_deref() {
                Some("Exact") => at = Some(rv),
                None | Some("") | Some("NotOlderThan") => {
                    let current = self.store.revision();
                    if rv > current {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {rv}, current: {current}"
                        )));
                    }
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported resourceVersionMatch {other:?}"
                    )))
                }
            }
        }
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut revision = at;
        loop {
            let chunk = if opts.limit == 0 {
                0
            } else {
                (opts.limit - items.len()).max(if filtered { 256 } else { 0 })
            };
            let page = self
                .store
                .range(&RangeRequest { prefix: &prefix, start_after: start.as_deref(), limit: chunk, revision })
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => store_error(other),
                })?;
            revision = Some(page.revision);
            let mut consumed_all = true;
            for (i, kv) in page.kvs.iter().enumerate() {
                if opts.limit != 0 && items.len() == opts.limit {
                    consumed_all = i == page.kvs.len();
                    break;
                }
                start = Some(kv.key.clone());
                if filtered {
                    let obj = decode(kv)?;
                    if !opts.labels.matches_object(&obj) || !opts.fields.matches_object(&obj) {
                        continue;
                    }
                }
                items.push(kv.value.clone());
            }
            let more = page.more || !consumed_all;
            if !more {
                return Ok(ListResult {
                    items,
                    revision: page.revision,
                    continue_token: None,
                });
            }
            if opts.limit != 0 && items.len() == opts.limit {
                let token = ContinueToken {
                    rv: page.revision,
                    start: start.unwrap_or_default(),
                };
                let raw = serde_json::to_vec(&token).expect("json");
                return Ok(ListResult {
                    items,
                    revision: page.revision,
                    continue_token: Some(
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
                    ),
                });
            }
        }
    }

    /// Decodes a request body into the resource's type: kind and apiVersion checked, fields the
    /// type does not know reported (or refused under `Strict`).
    pub fn decode_input(
        &self,
        r: &Resource,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        };
        let want_version = r.api_version();
        match m.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != want_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({want_version})"
                )))
            }
            _ => {}
        }
        match m.get("kind").and_then(Value::as_str) {
            Some(k) if k != r.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    r.kind
                )))
            }
            _ => {}
        }
        m.insert("apiVersion".into(), json!(want_version));
        m.insert("kind".into(), json!(r.kind));
        let (out, unknown) = (r.normalize)(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                r.kind, r.version, r.kind
            ))
        })?;
        let warnings: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match opts.field_validation {
            FieldValidation::Strict if !warnings.is_empty() => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                warnings.join(", ")
            ))),
            FieldValidation::Ignore => Ok((out, Vec::new())),
            _ => Ok((out, warnings)),
        }
    }

    fn check_namespace(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<(), ApiError> {
        if !r.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| {
            ApiError::bad_request("a namespace is required for namespaced resources")
        })?;
        let nsr = resources::by_kind("Namespace");
        let kv = self
            .store
            .get(&nsr.key(None, ns))
            .0
            .ok_or_else(|| ApiError::not_found(nsr, ns))?;
        if decode(&kv)?
            .pointer("/metadata/deletionTimestamp")
            .is_some()
        {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                r.group_resource(),
            )));
        }
        Ok(())
    }

    /// The IngressClass marked default, newest first, for Ingresses that name none.
    fn default_ingress_class(&self) -> Option<String> {
        let ic = resources::by_kind("IngressClass");
        let all = self
            .store
            .range(&RangeRequest {
                prefix: &ic.prefix(),
                ..Default::default()
            })
            .ok()?;
        all.kvs
            .iter()
            .filter_map(|kv| decode(kv).ok())
            .filter(|o| {
                o.pointer("/metadata/annotations/ingressclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
            })
            .max_by_key(|o| meta_str(o, "creationTimestamp").unwrap_or("").to_string())
            .and_then(|o| meta_str(&o, "name").map(str::to_string))
    }

    /// What kube-apiserver's strategies do to a new object before validation.
    fn prepare_create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"].as_object_mut().expect("object");
        if r.namespaced {
            let ns = ns.unwrap_or("default");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        if meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            if let Some(g) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let name = format!("{g}{}", random_suffix());
                meta.insert("name".into(), json!(name));
            }
        }
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if r.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if r.status && r.kind != "Node" {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        match r.kind {
            "Namespace" => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            "Pod" => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
            "Ingress" => {
                obj["status"] = json!({"loadBalancer": {}});
                if obj.pointer("/spec/ingressClassName").is_none() {
                    if let Some(class) = self.default_ingress_class() {
                        obj["spec"]["ingressClassName"] = json!(class);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub async fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        self.create_as(r, ns, body, opts, false).await
    }

    async fn create_as(
        &self,
        r: &Resource,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
        applied: bool,
    ) -> Result<Written, ApiError> {
        let (mut obj, warnings) = self.decode_input(r, body, opts)?;
        self.prepare_create(r, ns, &mut obj)?;
        if !applied {
            let (api_version, now) = (r.api_version(), now());
            managed::record_update(None, &mut obj, &opts.writer(&api_version, &now, Part::Main));
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        self.check_namespace(r, ns, &name)?;
        let claims = self.admission.create(r, &mut obj)?;
        let key = r.key(ns, &name);
        if opts.dry_run {
            self.admission.release(&claims);
            return Ok(Written {
                object: encoder(obj)(0),
                warnings,
                created: true,
            });
        }
        let result = self
            .store
            .txn(vec![Op::Put {
                key,
                precondition: Precondition::Absent,
                value: encoder(obj),
            }])
            .await;
        match result {
            Ok(mut kvs) => Ok(Written {
                object: kvs.remove(0).value,
                warnings,
                created: true,
            }),
            Err(e) => {
                self.admission.release(&claims);
                Err(match e {
                    StoreError::Conflict { .. } => ApiError::already_exists(r, &name),
                    other => store_error(other),
                })
            }
        }
    }

    /// Read-modify-write with compare-and-swap, retried on a concurrent write unless the caller
    /// named the revision it expects. `change` returns the desired object (None: not found).
    async fn guaranteed_update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        how: How,
        opts: &WriteOptions,
        mut change: impl FnMut(Option<&Value>) -> Result<Option<Value>, ApiError>,
    ) -> Result<Written, ApiError> {
        let How { part, applied } = how;
        let key = r.key(ns, name);
        loop {
            let (current, _) = self.store.get(&key);
            let Some(kv) = current else {
                return match change(None)? {
                    Some(obj) => self.create_as(r, ns, obj, opts, applied).await,
                    None => Err(ApiError::not_found(r, name)),
                };
            };
            let old = decode(&kv)?;
            let Some(wanted) = change(Some(&old))? else {
                return Err(ApiError::not_found(r, name));
            };
            let (mut new, warnings) = self.decode_input(r, wanted, opts)?;
            if meta_str(&new, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&new, "name").unwrap_or_default()
                )));
            }
            let expected = match meta_str(&new, "resourceVersion").filter(|s| !s.is_empty()) {
                Some(rv) => Some(parse_rv(rv)?),
                None => None,
            };
            if expected.is_some_and(|e| e != kv.mod_revision) {
                return Err(ApiError::conflict(r, name, MODIFIED));
            }
            self.prepare_update(r, &old, &mut new, part)?;
            if !applied {
                let (api_version, now) = (r.api_version(), now());
                managed::record_update(
                    Some(&old),
                    &mut new,
                    &opts.writer(&api_version, &now, part),
                );
            }
            let claims = self.admission.update(r, &old, &mut new)?;
            if comparable(&new) == comparable(&old) {
                self.admission.release(&claims.taken);
                return Ok(Written {
                    object: kv.value,
                    warnings,
                    created: false,
                });
            }
            if opts.dry_run {
                self.admission.release(&claims.taken);
                return Ok(Written {
                    object: encoder(new)(kv.mod_revision),
                    warnings,
                    created: false,
                });
            }
            let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
                && new
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            let precondition = Precondition::ModRevision(kv.mod_revision);
            let op = if finalized {
                Op::Delete {
                    key: key.clone(),
                    precondition,
                    tombstone: encoder(new),
                }
            } else {
                Op::Put {
                    key: key.clone(),
                    precondition,
                    value: encoder(new),
                }
            };
            match self.store.txn(vec![op]).await {
                Ok(mut kvs) => {
                    self.admission.release(&claims.freed);
                    if finalized {
                        self.admission.release(&Admission::held(r, &old));
                    }
                    return Ok(Written {
                        object: kvs.remove(0).value,
                        warnings,
                        created: false,
                    });
                }
                Err(StoreError::Conflict { .. }) if expected.is_none() => {
                    self.admission.release(&claims.taken);
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {
                    self.admission.release(&claims.taken);
                    return Err(ApiError::conflict(r, name, MODIFIED));
                }
                Err(e) => {
                    self.admission.release(&claims.taken);
                    return Err(store_error(e));
                }
            }
        }
    }

    /// Carries the system fields over from `old`, keeps the part the request may not change, and
    /// counts generations.
    fn prepare_update(
        &self,
        r: &Resource,
        old: &Value,
        new: &mut Value,
        part: Part,
    ) -> Result<(), ApiError> {
        if part == Part::Status {
            let status = new.get("status").cloned();
            *new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
            return Ok(());
        }
        let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        let meta = new["metadata"].as_object_mut().expect("object");
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        if !meta.contains_key("managedFields") {
            if let Some(mf) = old_meta.get("managedFields") {
                meta.insert("managedFields".into(), mf.clone());
            }
        }
        if old_meta.contains_key("deletionTimestamp") {
            let before: Vec<&Value> = old_meta
                .get("finalizers")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let added = meta
                .get("finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|f| !before.contains(&f)));
            if added {
                let nm = meta_str(old, "name").unwrap_or_default();
                return Err(ApiError::invalid(
                    r.group,
                    r.kind,
                    nm,
                    &[super::error::FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if r.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        }
        if r.generation && spec_of(old) != spec_of(new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        Ok(())
    }

    /// PUT: replaces the object (or its status).
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        body: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if let Some(m) = body.get("metadata").and_then(Value::as_object) {
            if r.namespaced {
                if let (Some(bns), Some(ns)) = (m.get("namespace").and_then(Value::as_str), ns) {
                    if !bns.is_empty() && bns != ns {
                        return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                    }
                }
            }
        }
        let how = How {
            part,
            applied: false,
        };
        self.guaranteed_update(r, ns, name, how, opts, |old| Ok(old.map(|_| body.clone())))
            .await
    }

    /// PATCH in any of the four formats; an apply patch creates the object if it is missing.
    pub async fn patch(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        patch: Patch,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let Patch { ty, body } = patch;
        if ty == PatchType::Apply && opts.field_manager.is_none() {
            return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
        }
        let (api_version, now) = (r.api_version(), now());
        let writer = opts.writer(&api_version, &now, part);
        let how = How {
            part,
            applied: ty == PatchType::Apply,
        };
        self.guaranteed_update(r, ns, name, how, opts, |old| {
            let Some(old) = old else {
                if ty == PatchType::Apply {
                    let mut obj = patch::apply(None, &body, &writer, opts.force)?;
                    if meta_str(&obj, "name").is_none() {
                        obj["metadata"]["name"] = json!(name);
                    }
                    return Ok(Some(obj));
                }
                return Ok(None);
            };
            let out = match ty {
                PatchType::Json => patch::json(old, &body)?,
                PatchType::Merge => patch::merge(old, &body)?,
                PatchType::Strategic => patch::strategic(old, &body)?,
                PatchType::Apply => patch::apply(Some(old), &body, &writer, opts.force)?,
            };
            Ok(Some(out))
        })
        .await
    }

    /// DELETE: removes the object, or marks it for deletion while finalizers remain (and, for a
    /// namespace, deletes its content first).
    pub fn delete<'a>(
        self: &'a Arc<Self>,
        r: &'static Resource,
        ns: Option<&'a str>,
        name: &'a str,
        opts: &'a DeleteOptions,
    ) -> BoxFuture<'a, Result<Bytes, ApiError>> {
        Box::pin(self.delete_inner(r, ns, name, opts))
    }

    async fn delete_inner(
        self: &Arc<Self>,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Bytes, ApiError> {
        if r.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let key = r.key(ns, name);
        loop {
            let kv = self.get(r, ns, name)?;
            let mut obj = decode(&kv)?;
            if let Some(uid) = &opts.uid {
                let have = meta_str(&obj, "uid").unwrap_or_default();
                if uid != have {
                    return Err(ApiError::conflict(r, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if parse_rv(rv)? != kv.mod_revision {
                    return Err(ApiError::conflict(r, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision)));
                }
            }
            if opts.dry_run {
                return Ok(kv.value);
            }
            let finalizers = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let graceful = r.kind == "Pod"
                && obj.pointer("/spec/nodeName").is_some()
                && opts
                    .grace_period_seconds
                    .or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(0)
                    > 0;
            if r.kind == "Namespace" || finalizers || graceful {
                if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(kv.value);
                }
                let grace = if graceful {
                    opts.grace_period_seconds
                        .or_else(|| {
                            obj.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                obj["metadata"]["deletionTimestamp"] = json!(rfc3339(
                    SystemTime::now() + Duration::from_secs(grace as u64)
                ));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if r.kind == "Namespace" {
                    obj["status"]["phase"] = json!("Terminating");
                }
                match self
                    .store
                    .txn(vec![Op::Put {
                        key: key.clone(),
                        precondition: Precondition::ModRevision(kv.mod_revision),
                        value: encoder(obj),
                    }])
                    .await
                {
                    Ok(mut kvs) => {
                        let uid = meta_str(&decode(&kvs[0])?, "uid")
                            .unwrap_or_default()
                            .to_string();
                        let (ns, name) = (ns.map(str::to_string), name.to_string());
                        if r.kind == "Namespace" {
                            let me = self.clone();
                            tokio::spawn(async move { me.finalize_namespace(&name, &uid).await });
                        } else if graceful && !finalizers {
                            let me = self.clone();
                            // No kubelet confirms the deletion here: the server does, once the
                            // grace period is over.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(grace as u64)).await;
                                let opts = DeleteOptions {
                                    grace_period_seconds: Some(0),
                                    uid: Some(uid),
                                    ..Default::default()
                                };
                                let _ = me.delete(r, ns.as_deref(), &name, &opts).await;
                            });
                        }
                        return Ok(kvs.remove(0).value);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_error(e)),
                }
            }
            let tombstone = encoder(obj.clone());
            match self
                .store
                .txn(vec![Op::Delete {
                    key: key.clone(),
                    precondition: Precondition::ModRevision(kv.mod_revision),
                    tombstone,
                }])
                .await
            {
                Ok(mut kvs) => {
                    self.admission.release(&Admission::held(r, &obj));
                    return Ok(kvs.remove(0).value);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// Deletes everything in a terminating namespace, then the namespace itself.
    async fn finalize_namespace(self: Arc<Self>, name: &str, uid: &str) {
        let now_opts = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        for _attempt in 0..600 {
            let mut left = 0;
            for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                let Ok(list) = self.list(r, Some(name), &ListOptions::default()) else {
                    continue;
                };
                for item in list.items {
                    left += 1;
                    let Ok(obj) = serde_json::from_slice::<Value>(&item) else {
                        continue;
                    };
                    if let Some(n) = meta_str(&obj, "name") {
                        if let Err(e) = self.delete(r, Some(name), n, &now_opts).await {
                            tracing::debug!(namespace = name, object = n, error = %e, "namespace cleanup");
                        }
                    }
                }
            }
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let nsr = resources::by_kind("Namespace");
        let key = nsr.key(None, name);
        if let (Some(kv), _) = self.store.get(&key) {
            let Ok(obj) = decode(&kv) else { return };
            if meta_str(&obj, "uid") == Some(uid) {
                let _ = self
                    .store
                    .txn(vec![Op::Delete {
                        key,
                        precondition: Precondition::ModRevision(kv.mod_revision),
                        tombstone: encoder(obj),
                    }])
                    .await;
            }
        }
    }

    /// Creates the IngressClass `switchyard`, marked default, unless it exists.
    pub async fn ensure_default_ingress_class(&self) -> Result<(), ApiError> {
        let class = json!({
            "metadata": {"name": "switchyard", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "switchyard.io/ingress-controller"},
        });
        self.ensure(resources::by_kind("IngressClass"), None, class)
            .await
    }

    /// Creates an object unless it exists (bootstrap objects at start).
    pub async fn ensure(&self, r: &Resource, ns: Option<&str>, obj: Value) -> Result<(), ApiError> {
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if self.store.get(&r.key(ns, &name)).0.is_some() {
            return Ok(());
        }
        match self.create(r, ns, obj, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_uuid_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
