//! What the API answers without storing anything: SelfSubjectReview (`kubectl auth whoami`),
//! SelfSubjectAccessReview and SubjectAccessReview (`kubectl auth can-i`), and TokenRequest
//! (`kubectl create token`). And the checks made on writes by who makes them
//! ([`write_guard`]): nobody grants RBAC permissions they do not hold, and a node writes only
//! its own Node and Lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::admission::strings_at;
use super::auth::tokens::{Account, Claims, KubernetesClaims, ISSUER};
use super::auth::User;
use super::authz::{self, rbac::Rule, Attributes};
use super::error::{ApiError, FieldError};
use super::handlers::{parse_body, read_body};
use super::http::{value_response, Api, Body};
use super::registry::{decode, Guard};
use super::request::{RequestInfo, Verb};
use super::resources::{builtin, Builtin};

/// Shortest and longest lifetimes a TokenRequest may ask for, as kube-apiserver validates them.
const MIN_EXPIRATION: u64 = 600;
const MAX_EXPIRATION: u64 = 1 << 32;
const DEFAULT_EXPIRATION: u64 = 3600;

/// The request's object, JSON, YAML or protobuf (kubectl sends these kinds as protobuf).
async fn json_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let (ct, body) = read_body(req).await?;
    parse_body(&ct, &body)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

impl Api {
    fn may_create(&self, user: &User, group: &str, resource: &str) -> Result<(), ApiError> {
        self.authz.authorize(&Attributes {
            user,
            verb: "create",
            namespace: None,
            group,
            resource,
            subresource: "",
            name: "",
            path: None,
        })
    }

    pub(super) async fn self_subject_review(
        &self,
        req: Request<Incoming>,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        self.may_create(user, "authentication.k8s.io", "selfsubjectreviews")?;
        json_body(req).await?;
        Ok(value_response(
            StatusCode::CREATED,
            &json!({
                "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": user.to_json()},
            }),
        ))
    }

    /// SelfSubjectAccessReview (about the requester) or SubjectAccessReview (about the user in
    /// the spec, for those allowed to ask).
    pub(super) async fn access_review(
        &self,
        req: Request<Incoming>,
        user: &User,
        kind: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.may_create(user, "authorization.k8s.io", kind)?;
        let mut review = json_body(req).await?;
        let spec = review.get("spec").cloned().unwrap_or(Value::Null);
        let subject = if kind == "subjectaccessreviews" {
            let name = str_at(&spec, "/user");
            let groups: Vec<&str> = spec
                .get("groups")
                .and_then(Value::as_array)
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if name.is_empty() && groups.is_empty() {
                return Err(ApiError::invalid(
                    "authorization.k8s.io",
                    "SubjectAccessReview",
                    "",
                    &[FieldError::required(
                        "spec.user",
                        "at least one of user or group must be specified",
                    )],
                ));
            }
            let mut u = User::new(name, &[]);
            u.groups = groups.iter().map(|g| g.to_string()).collect();
            u.uid = str_at(&spec, "/uid").to_string();
            u
        } else {
            user.clone()
        };
        let (ra, nra) = (
            spec.get("resourceAttributes"),
            spec.get("nonResourceAttributes"),
        );
        let attrs = match (ra, nra) {
            (Some(ra), None) => Attributes {
                user: &subject,
                verb: str_at(ra, "/verb"),
                namespace: Some(str_at(ra, "/namespace")).filter(|n| !n.is_empty()),
                group: str_at(ra, "/group"),
                resource: str_at(ra, "/resource"),
                subresource: str_at(ra, "/subresource"),
                name: str_at(ra, "/name"),
                path: None,
            },
            (None, Some(nra)) => Attributes {
                user: &subject,
                verb: str_at(nra, "/verb"),
                namespace: None,
                group: "",
                resource: "",
                subresource: "",
                name: "",
                path: Some(str_at(nra, "/path")),
            },
            _ => return Err(ApiError::invalid(
                "authorization.k8s.io",
                if kind == "subjectaccessreviews" {
                    "SubjectAccessReview"
                } else {
                    "SelfSubjectAccessReview"
                },
                "",
                &[FieldError::invalid(
                    "spec.resourceAttributes",
                    "",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            )),
        };
        let allowed = self.authz.allows(&attrs);
        review["status"] = if allowed {
            json!({"allowed": true, "reason": "allowed by RBAC or the Node rules"})
        } else {
            json!({"allowed": false})
        };
        review["metadata"] = json!({"creationTimestamp": null});
        Ok(value_response(StatusCode::CREATED, &review))
    }

    /// TokenRequest: a token for the ServiceAccount `ns/name`, bound to its uid.
    pub(super) async fn token_request(
        &self,
        req: Request<Incoming>,
        user: &User,
        ns: &str,
        name: &str,
    ) -> Result<Response<Body>, ApiError> {
        self.authz.authorize(&Attributes {
            user,
            verb: "create",
            namespace: Some(ns),
            group: "",
            resource: "serviceaccounts",
            subresource: "token",
            name,
            path: None,
        })?;
        let mut tr = json_body(req).await?;
        let sa_kind = builtin(Builtin::ServiceAccount);
        let sa = decode(&self.registry.get(sa_kind, Some(ns), name)?)?;
        let uid = str_at(&sa, "/metadata/uid").to_string();
        let invalid = |field: &str, msg: &str| {
            ApiError::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                name,
                &[FieldError::invalid(field, "", msg.to_string())],
            )
        };
        let spec = tr.get("spec").cloned().unwrap_or(json!({}));
        if spec.get("boundObjectRef").is_some_and(|b| !b.is_null()) {
            return Err(invalid(
                "spec.boundObjectRef",
                "binding a token to an object other than its ServiceAccount is not supported",
            ));
        }
        let seconds = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION,
            Some(v) => v.as_u64().ok_or_else(|| {
                invalid(
                    "spec.expirationSeconds",
                    "must be a whole number of seconds",
                )
            })?,
        };
        if seconds < MIN_EXPIRATION {
            return Err(invalid(
                "spec.expirationSeconds",
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > MAX_EXPIRATION {
            return Err(invalid(
                "spec.expirationSeconds",
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let mut audiences = strings_at(&spec, "/audiences");
        if audiences.is_empty() {
            audiences.push(ISSUER.to_string());
        }
        let now = SystemTime::now();
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{name}"),
            aud: audiences.clone(),
            exp: iat + seconds,
            iat,
            nbf: iat,
            kubernetes: KubernetesClaims {
                namespace: ns.into(),
                serviceaccount: Account {
                    name: name.into(),
                    uid,
                },
            },
        };
        let token = self.signer.issue(&claims);
        tr["kind"] = json!("TokenRequest");
        tr["apiVersion"] = json!("authentication.k8s.io/v1");
        tr["metadata"] =
            json!({"name": name, "namespace": ns, "creationTimestamp": crate::time::rfc3339(now)});
        tr["spec"] =
            json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": null});
        tr["status"] = json!({
            "token": token,
            "expirationTimestamp": crate::time::rfc3339(now + Duration::from_secs(seconds)),
        });
        Ok(value_response(StatusCode::CREATED, &tr))
    }
}

fn rules(obj: &Value) -> Vec<Rule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// The checks a write by `user` must pass on the object it would store, if any apply.
pub(super) fn write_guard(api: &Api, user: &Arc<User>, info: &RequestInfo) -> Option<Guard> {
    if !matches!(info.verb, Verb::Create | Verb::Update | Verb::Patch) {
        return None;
    }
    if info.resource.is(Builtin::CertificateSigningRequest) && info.verb == Verb::Create {
        // Who asked is recorded by the server, never taken from the request.
        let user = user.clone();
        return Some(Arc::new(move |_old: Option<&Value>, new: &mut Value| {
            new["spec"]["username"] = json!(user.name);
            new["spec"]["groups"] = json!(user.groups);
            new["spec"]["uid"] = json!(user.uid);
            Ok(())
        }));
    }
    if user.is_master() {
        return None;
    }
    let r = info.resource.clone();
    let ns = info.namespace.clone();
    let (state, registry, user) = (api.authz.clone(), api.registry.clone(), user.clone());
    if let Some(node) = user.node_name().map(str::to_string) {
        return Some(Arc::new(move |_old: Option<&Value>, new: &mut Value| {
            let a = Attributes {
                user: &user,
                verb: "create",
                namespace: ns.as_deref(),
                group: &r.group,
                resource: &r.plural,
                subresource: "",
                name: "",
                path: None,
            };
            authz::node::admit(&node, &a, new)
        }));
    }
    let kind = r.builtin?;
    if !matches!(
        kind,
        Builtin::Role | Builtin::ClusterRole | Builtin::RoleBinding | Builtin::ClusterRoleBinding
    ) {
        return None;
    }
    Some(Arc::new(move |_old: Option<&Value>, new: &mut Value| {
        let name = str_at(new, "/metadata/name");
        let allowed = |verb: &str, resource: &str, name: &str| {
            state.allows(&Attributes {
                user: &user,
                verb,
                namespace: ns.as_deref(),
                group: "rbac.authorization.k8s.io",
                resource,
                subresource: "",
                name,
                path: None,
            })
        };
        let (wanted, what) = match kind {
            Builtin::Role | Builtin::ClusterRole => {
                if allowed("escalate", &r.plural, name) {
                    return Ok(());
                }
                (rules(new), format!("{} \"{name}\"", r.group_resource()))
            }
            _ => {
                let role_kind = str_at(new, "/roleRef/kind");
                let role = str_at(new, "/roleRef/name");
                let (plural, role_r, role_ns) = if role_kind == "Role" {
                    ("roles", builtin(Builtin::Role), ns.as_deref())
                } else {
                    ("clusterroles", builtin(Builtin::ClusterRole), None)
                };
                if allowed("bind", plural, role) {
                    return Ok(());
                }
                let held = registry
                    .get(role_r, role_ns, role)
                    .and_then(|kv| decode(&kv))
                    .map_err(|_| {
                        ApiError::forbidden(format!(
                            "{} \"{name}\" is forbidden: user \"{}\" may not bind {role_kind} \"{role}\", which does not exist",
                            r.group_resource(),
                            user.name
                        ))
                    })?;
                (rules(&held), format!("{} \"{name}\"", r.group_resource()))
            }
        };
        let a = Attributes {
            user: &user,
            verb: "",
            namespace: ns.as_deref(),
            group: "",
            resource: "",
            subresource: "",
            name: "",
            path: None,
        };
        state.covers(&a, &wanted).map_err(|missing| {
            ApiError::forbidden(format!(
                "{what} is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held: {missing}",
                user.name, user.groups
            ))
        })
    }))
}
