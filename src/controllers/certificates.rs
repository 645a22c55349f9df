//! The node-certificate controller: approves and signs the CertificateSigningRequests nodes make
//! to join or to renew (signer `kubernetes.io/kube-apiserver-client-kubelet`), as
//! kube-controller-manager's csrapproving and csrsigning controllers do for kubelet client
//! certificates. A request is signed only when it asks for exactly `CN=system:node:NAME,
//! O=system:nodes`, client auth, no other names, and comes from a bootstrap token
//! (`system:bootstrappers`) or from that same node renewing; anything else is denied. The
//! certificate is made from those checked fields, never from the request's other contents.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rcgen::{CertificateSigningRequestParams, DnType, Issuer, KeyPair};
use serde_json::{json, Value};

use super::{Feed, Follower};
use crate::apiserver::admission::strings_at;
use crate::apiserver::auth::{BOOTSTRAPPERS, NODES, NODE_PREFIX};
use crate::apiserver::pki::client_params;
use crate::apiserver::registry::{Part, Registry, WriteOptions};
use crate::apiserver::resources::{builtin, Builtin};
use crate::store::{EventKind, RangeRequest};

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Signed for this node name.
    Sign(String),
    Deny(String),
    /// Not ours (another signer) or already decided.
    Skip,
}

/// The PEM certificate request in a CSR object.
fn request_pem(csr: &Value) -> Option<String> {
    let b64 = csr.pointer("/spec/request")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether and for which node `csr` is to be signed.
pub fn decide(csr: &Value) -> Decision {
    let decided = csr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if decided
        || csr
            .pointer("/status/certificate")
            .is_some_and(|c| !c.is_null())
    {
        return Decision::Skip;
    }
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(KUBELET_CLIENT_SIGNER) {
        return Decision::Skip;
    }
    let Some(pem) = request_pem(csr) else {
        return Decision::Deny("spec.request is not a PEM certificate request".into());
    };
    let Ok(req) = CertificateSigningRequestParams::from_pem(&pem) else {
        return Decision::Deny("spec.request does not parse or its signature is bad".into());
    };
    let dn = &req.params.distinguished_name;
    let mut cn = None;
    let mut orgs = Vec::new();
    for (ty, v) in dn.iter() {
        let text = dn_text(v);
        match ty {
            DnType::CommonName => cn = Some(text),
            DnType::OrganizationName => orgs.push(text),
            _ => return Decision::Deny("the subject may hold only CN and O".into()),
        }
    }
    let Some(node) = cn.as_deref().and_then(|c| c.strip_prefix(NODE_PREFIX)) else {
        return Decision::Deny("the subject's CN must be system:node:NAME".into());
    };
    if node.is_empty() || orgs != [NODES] {
        return Decision::Deny("the subject must be CN=system:node:NAME, O=system:nodes".into());
    }
    if !req.params.subject_alt_names.is_empty() {
        return Decision::Deny("a node client certificate carries no other names".into());
    }
    let usages = strings_at(csr, "/spec/usages");
    if !usages.iter().any(|u| u == "client auth")
        || usages.iter().any(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return Decision::Deny(format!(
            "usages must be client auth (with digital signature, key encipherment), not {usages:?}"
        ));
    }
    let user = csr
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or("");
    let groups = strings_at(csr, "/spec/groups");
    let bootstrap =
        user.starts_with("system:bootstrap:") && groups.iter().any(|g| g == BOOTSTRAPPERS);
    let renewal = user == format!("{NODE_PREFIX}{node}") && groups.iter().any(|g| g == NODES);
    if !(bootstrap || renewal) {
        return Decision::Deny(format!(
            "{user} may not have a certificate for system:node:{node}: only a bootstrap token or that node"
        ));
    }
    Decision::Sign(node.to_string())
}

fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        _ => String::new(),
    }
}

/// Signs `csr`'s public key for `node`, valid for `lifetime` (or less, if the request asks).
pub fn sign(
    ca: &Issuer<'static, KeyPair>,
    csr: &Value,
    node: &str,
    lifetime: Duration,
) -> Result<String, String> {
    let pem = request_pem(csr).ok_or("no request")?;
    let req = CertificateSigningRequestParams::from_pem(&pem).map_err(|e| e.to_string())?;
    let asked = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .map(|s| Duration::from_secs(s.max(600)));
    let lifetime = asked.map_or(lifetime, |a| a.min(lifetime));
    let params = client_params(&format!("{NODE_PREFIX}{node}"), &[NODES], lifetime);
    let signed = CertificateSigningRequestParams {
        params,
        public_key: req.public_key,
    }
    .signed_by(ca)
    .map_err(|e| e.to_string())?;
    Ok(signed.pem())
}

async fn handle(
    registry: &Registry,
    ca: &Issuer<'static, KeyPair>,
    lifetime: Duration,
    csr: &Value,
) {
    let name = csr
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let now = crate::time::rfc3339(SystemTime::now());
    let mut status = match decide(csr) {
        Decision::Skip => return,
        Decision::Deny(why) => {
            tracing::warn!(csr = name, reason = %why, "certificate request denied");
            json!({"conditions": [{"type": "Denied", "status": "True", "reason": "NotANodeClientRequest", "message": why, "lastUpdateTime": now}]})
        }
        Decision::Sign(node) => match sign(ca, csr, &node, lifetime) {
            Ok(pem) => {
                tracing::info!(csr = name, node = %node, "node client certificate signed");
                json!({
                    "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved", "message": "node client certificate for a bootstrap token or the node itself", "lastUpdateTime": now}],
                    "certificate": base64::engine::general_purpose::STANDARD.encode(pem),
                })
            }
            Err(e) => {
                json!({"conditions": [{"type": "Failed", "status": "True", "reason": "SigningError", "message": e, "lastUpdateTime": now}]})
            }
        },
    };
    let mut obj = csr.clone();
    obj["status"] = status.take();
    let r = builtin(Builtin::CertificateSigningRequest);
    if let Err(e) = registry
        .update(r, None, name, obj, Part::Status, &WriteOptions::default())
        .await
    {
        tracing::debug!(csr = name, error = %e, "writing the certificate request's status");
    }
}

pub async fn run(registry: Arc<Registry>, ca: Arc<Issuer<'static, KeyPair>>, lifetime: Duration) {
    let store = registry.store().clone();
    let prefix = builtin(Builtin::CertificateSigningRequest).prefix();
    let mut feed = Follower::new(store.clone(), "certificates");
    while let Some(next) = feed.next().await {
        let values: Vec<Value> = match next {
            Feed::Resync => store
                .range(&RangeRequest {
                    prefix: &prefix,
                    ..Default::default()
                })
                .map(|all| {
                    all.kvs
                        .iter()
                        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                        .collect()
                })
                .unwrap_or_default(),
            Feed::Batch(batch) => batch
                .iter()
                .filter(|ev| ev.kind == EventKind::Put && ev.kv.key.starts_with(&prefix))
                .filter_map(|ev| serde_json::from_slice(&ev.kv.value).ok())
                .collect(),
        };
        for v in &values {
            handle(&registry, &ca, lifetime, v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName};

    fn csr(cn: &str, orgs: &[&str], user: &str, groups: &[&str], usages: &[&str]) -> Value {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "metadata": {"name": "x"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": KUBELET_CLIENT_SIGNER,
                "usages": usages, "username": user, "groups": groups,
            },
        })
    }

    #[test]
    fn only_node_client_requests_from_bootstrappers_or_the_node_are_signed() {
        let usages = ["digital signature", "client auth"];
        let boot = (
            "system:bootstrap:abcdef",
            &["system:bootstrappers", "system:authenticated"][..],
        );
        let ok = csr("system:node:n1", &[NODES], boot.0, boot.1, &usages);
        assert_eq!(decide(&ok), Decision::Sign("n1".into()));
        let renew = csr(
            "system:node:n1",
            &[NODES],
            "system:node:n1",
            &[NODES],
            &usages,
        );
        assert_eq!(decide(&renew), Decision::Sign("n1".into()));
        let denied = [
            csr(
                "system:node:n2",
                &[NODES],
                "system:node:n1",
                &[NODES],
                &usages,
            ),
            csr("admin", &[NODES], boot.0, boot.1, &usages),
            csr(
                "system:node:n1",
                &["system:masters"],
                boot.0,
                boot.1,
                &usages,
            ),
            csr(
                "system:node:n1",
                &[NODES, "system:masters"],
                boot.0,
                boot.1,
                &usages,
            ),
            csr("system:node:n1", &[NODES], boot.0, boot.1, &["server auth"]),
            csr(
                "system:node:n1",
                &[NODES],
                "bob",
                &["system:authenticated"],
                &usages,
            ),
        ];
        for d in &denied {
            assert!(matches!(decide(d), Decision::Deny(_)), "{d}");
        }
        let mut garbage = ok.clone();
        garbage["spec"]["request"] = json!("bm90IGEgcmVxdWVzdA==");
        assert!(matches!(decide(&garbage), Decision::Deny(_)));
        let mut other = ok.clone();
        other["spec"]["signerName"] = json!("example.com/other");
        assert_eq!(decide(&other), Decision::Skip);
        let mut decided = ok.clone();
        decided["status"] = json!({"conditions": [{"type": "Approved"}]});
        assert_eq!(decide(&decided), Decision::Skip);
        // What is signed says what was checked, whatever else the request held.
        let (_, ca) = crate::apiserver::pki::ca(tempfile::tempdir().unwrap().path()).unwrap();
        let pem = sign(&ca, &ok, "n1", Duration::from_secs(3600)).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let user = crate::apiserver::auth::from_certificate(&der).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, [NODES, "system:authenticated"]);
    }
}
