//! Create: decoding the body into the resource's type, the system metadata kube-apiserver's
//! strategies set on a new object, the namespace check, admission and the write.

use rand::Rng;
use serde_json::{json, Value};

use super::{
    decode, encoder, meta_str, store_error, FieldValidation, Part, Registry, WriteOptions, Written,
};
use crate::apiserver::error::ApiError;
use crate::apiserver::managed;
use crate::apiserver::resources::{self, Builtin, Resource};
use crate::store::{Op, Precondition, StoreError};
use crate::time::now;

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

impl Registry {
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
        let nsr = resources::builtin(Builtin::Namespace);
        let kv = self
            .store
            .get(&nsr.key(None, ns))
            .0
            .ok_or_else(|| ApiError::not_found(nsr, ns))?;
        // Decoded only when it may be terminating.
        let terminating = memchr::memmem::find(&kv.value, b"\"deletionTimestamp\"").is_some()
            && decode(&kv)?
                .pointer("/metadata/deletionTimestamp")
                .is_some();
        if terminating {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                r.group_resource(),
            )));
        }
        Ok(())
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
        if r.status && !r.is(Builtin::Node) {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        match r.builtin {
            Some(Builtin::Namespace) => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            Some(Builtin::Pod) => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"})
            }
            Some(Builtin::Ingress) => {
                obj["status"] = json!({"loadBalancer": {}});
                // As kube-apiserver's DefaultIngressClass admission: an Ingress that names its
                // class, even by the legacy annotation, keeps it.
                let legacy = obj
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(crate::conventions::LEGACY_INGRESS_CLASS))
                    .is_some();
                if obj.pointer("/spec/ingressClassName").is_none() && !legacy {
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

    pub(super) async fn create_as(
        &self,
        r: &Resource,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
        applied: bool,
    ) -> Result<Written, ApiError> {
        if r.custom.as_ref().is_some_and(|v| v.terminating) {
            return Err(ApiError::method_not_allowed(
                "create not allowed while custom resource definition is terminating",
            ));
        }
        let (mut obj, warnings) = self.decode_input(r, body, opts)?;
        self.prepare_create(r, ns, &mut obj)?;
        if !applied {
            let (api_version, now) = (r.api_version(), now());
            managed::record_update(
                None,
                &mut obj,
                &opts.writer(r, &api_version, &now, Part::Main),
            );
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        self.check_namespace(r, ns, &name)?;
        if let Some(guard) = &opts.guard {
            guard(None, &mut obj)?;
        }
        let claims = self.admission.create(r, &mut obj)?;
        if r.is(Builtin::CustomResourceDefinition) {
            self.check_crd(&obj)?;
        }
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
            Ok(mut kvs) => {
                if r.is(Builtin::CustomResourceDefinition) {
                    self.sync_crd(&name);
                }
                Ok(Written {
                    object: kvs.remove(0).value,
                    warnings,
                    created: true,
                })
            }
            Err(e) => {
                self.admission.release(&claims);
                Err(match e {
                    StoreError::Conflict { .. } => ApiError::already_exists(r, &name),
                    other => store_error(other),
                })
            }
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
