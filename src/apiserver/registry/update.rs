//! Update and patch: read-modify-write with compare-and-swap on the key's revision, system
//! fields carried over, status kept apart from the main resource, generations counted.

use serde_json::{json, Value};

use super::{
    decode, encoder, meta_str, parse_rv, store_error, How, Part, Registry, WriteOptions, Written,
};
use crate::apiserver::admission::Admission;
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::managed;
use crate::apiserver::patch::{self, Patch, PatchType};
use crate::apiserver::resources::{Builtin, Resource};
use crate::store::{Op, Precondition, StoreError};
use crate::time::now;

/// The object without what the server changes on every write, to see whether a write changes
/// anything.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        // Who owns what counts (an apply that co-owns fields it did not change is a write, as in
        // kube-apiserver); when alone does not.
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                e.remove("time");
            }
        }
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

impl Registry {
    /// Read-modify-write with compare-and-swap, retried on a concurrent write unless the caller
    /// named the revision it expects. `change` returns the desired object (None: not found).
    pub(super) async fn guaranteed_update(
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
            let mut old = decode(&kv)?;
            crate::apiserver::crd::present_value(r, &mut old);
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
                    &opts.writer(r, &api_version, &now, part),
                );
            }
            if let Some(guard) = &opts.guard {
                guard(Some(&old), &mut new)?;
            }
            let claims = self.admission.update(r, &old, &mut new)?;
            if r.is(Builtin::CustomResourceDefinition) {
                self.check_crd(&new)?;
            }
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
            // Gone once being deleted and no finalizer is left (a namespace's own finalizers,
            // in its spec, are removed when its content is gone).
            let none_left = |ptr: &str| {
                new.pointer(ptr)
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
            };
            let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
                && none_left("/metadata/finalizers")
                && none_left("/spec/finalizers");
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
                    if r.is(Builtin::CustomResourceDefinition) {
                        self.sync_crd(name);
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
                    &r.group,
                    &r.kind,
                    nm,
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        // A namespace's finalizers change only through its finalization, as kube's
        // `namespaces/finalize`.
        if r.is(Builtin::Namespace) {
            match old.pointer("/spec/finalizers") {
                Some(f) => new["spec"]["finalizers"] = f.clone(),
                None => {
                    if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("finalizers");
                    }
                }
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
        let writer = opts.writer(r, &api_version, &now, part);
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
                PatchType::Strategic if r.builtin.is_none() => {
                    return Err(ApiError::strategic_unsupported())
                }
                PatchType::Strategic => patch::strategic(&r.lists, old, &body)?,
                PatchType::Apply => patch::apply(Some(old), &body, &writer, opts.force)?,
            };
            Ok(Some(out))
        })
        .await
    }
}
