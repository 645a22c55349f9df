//! A resource request, parsed once from its method, path and query into a typed
//! [`RequestInfo`] (what kube-apiserver calls the request info): the verb, the resource, the
//! subresource, the namespace and the name. Authorization and the handlers read it; nothing after
//! parsing looks at method or verb strings.

use std::collections::HashMap;

use http::Method;

use super::error::ApiError;
use super::registry::Part;
use std::sync::Arc;

use super::resources::{Kinds, Resource};

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string, decoded.
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A boolean query parameter (`true` or `1`).
pub fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

/// The Kubernetes API verbs, as RBAC names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// One request on a served resource.
#[derive(Debug)]
pub struct RequestInfo {
    pub verb: Verb,
    pub resource: Arc<Resource>,
    pub subresource: Part,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RequestInfo {
    /// Parses `rest`, the path after `/api/v1` or `/apis/GROUP/VERSION`: `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
    /// An unknown resource or subresource, or a scope the resource does not have, is 404; a
    /// method the path does not take is 405.
    pub fn parse(
        kinds: &Kinds,
        method: &Method,
        group: &str,
        version: &str,
        rest: &[&str],
        query: &HashMap<String, String>,
    ) -> Result<RequestInfo, ApiError> {
        let namespaced = rest.len() >= 3
            && rest[0] == "namespaces"
            && kinds
                .find(group, version, rest[2])
                .is_some_and(|r| r.namespaced);
        let (namespace, rest) = if namespaced {
            (Some(rest[1].to_string()), &rest[2..])
        } else {
            (None, rest)
        };
        if rest.is_empty() || rest.len() > 3 || rest.iter().any(|s| s.is_empty()) {
            return Err(ApiError::no_route());
        }
        let resource = kinds
            .find(group, version, rest[0])
            .ok_or_else(ApiError::no_route)?;
        let subresource = match rest.get(2) {
            None => Part::Main,
            Some(&"status") if resource.status => Part::Status,
            Some(&"scale") if resource.custom.as_ref().is_some_and(|v| v.scale.is_some()) => {
                Part::Scale
            }
            Some(_) => return Err(ApiError::no_route()),
        };
        let name = rest.get(1).map(|s| s.to_string());
        let verb = match (method, &name) {
            (&Method::GET, Some(_)) => Verb::Get,
            (&Method::GET, None) if flag(query, "watch") => Verb::Watch,
            (&Method::GET, None) => Verb::List,
            (&Method::POST, None) => Verb::Create,
            (&Method::PUT, Some(_)) => Verb::Update,
            (&Method::PATCH, Some(_)) => Verb::Patch,
            (&Method::DELETE, Some(_)) => Verb::Delete,
            (&Method::DELETE, None) => Verb::DeleteCollection,
            _ => {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({method})"
                )))
            }
        };
        if subresource != Part::Main && !matches!(verb, Verb::Get | Verb::Update | Verb::Patch) {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} on {})",
                subresource.as_str()
            )));
        }
        if namespace.is_some() && !resource.namespaced {
            return Err(ApiError::no_route());
        }
        if resource.namespaced && namespace.is_none() && !matches!(verb, Verb::List | Verb::Watch) {
            return Err(ApiError::no_route());
        }
        Ok(RequestInfo {
            verb,
            resource,
            subresource,
            namespace,
            name,
        })
    }

    /// The object's name; empty for verbs on a collection.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=5&watch=1",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert!(flag(&q, "watch"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    fn route(group: &str, version: &str, rest: &[&str]) -> Result<RequestInfo, ApiError> {
        RequestInfo::parse(
            &Kinds::default(),
            &Method::GET,
            group,
            version,
            rest,
            &HashMap::new(),
        )
    }

    #[test]
    fn routes() {
        let t = route(
            "",
            "v1",
            &["namespaces", "default", "services", "web", "status"],
        )
        .unwrap();
        assert_eq!(
            (
                t.resource.plural.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource,
                t.verb
            ),
            (
                "services",
                Some("default"),
                Some("web"),
                Part::Status,
                Verb::Get
            )
        );
        let t = route("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (t.resource.plural.as_str(), t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = route("", "v1", &["namespaces", "default", "status"]).unwrap();
        assert_eq!(t.subresource, Part::Status);
        assert!(route(
            "",
            "v1",
            &["namespaces", "default", "configmaps", "x", "status"]
        )
        .is_err());
        assert!(route("", "v1", &["bogus"]).is_err());
        let t = route("networking.k8s.io", "v1", &["ingresses"]).unwrap();
        assert_eq!((t.namespace, t.verb), (None, Verb::List));
        // A namespaced object needs its namespace; a collection may span them all.
        assert_eq!(route("", "v1", &["services", "web"]).unwrap_err().code, 404);
        let watch = [("watch".to_string(), "true".to_string())].into();
        let t = RequestInfo::parse(&Kinds::default(), &Method::GET, "", "v1", &["pods"], &watch)
            .unwrap();
        assert_eq!(t.verb, Verb::Watch);
        let put = RequestInfo::parse(
            &Kinds::default(),
            &Method::PUT,
            "",
            "v1",
            &["namespaces"],
            &HashMap::new(),
        );
        assert_eq!(put.unwrap_err().code, 405);
    }
}
