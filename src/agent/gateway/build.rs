//! Gateway API objects to route-table rules and to the status each object gets: a pure
//! function of the cluster state (and the parsed-certificate cache).
//!
//! What is ours: a GatewayClass whose `controllerName` is [`CONTROLLER`], the Gateways of such
//! a class, and the HTTPRoutes and GRPCRoutes (or their parent references) that name such a
//! Gateway. Every
//! listener of an accepted Gateway is served on its port of the node ([`Builder::listener`]);
//! a route attaches to the listeners its parent reference selects (`sectionName`, `port`) that
//! allow it (`allowedRoutes`) and share a hostname with it, under the intersection of the two
//! hostnames.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use switchyard_proxy::router::routes::{
    whole_match, Action, Age, Backend, BackendEdits, BackendSpec, Builder, Conditions,
    GatewayMatch, HeaderEdit, Mirror, Owner, OwnerKind, PathMatch, PathRewrite, Recorded, Redirect,
    Rewrite, Settings, ValueMatch,
};

use super::types::{
    parse_duration, BackendRef, Filter, Gateway, GatewayClass, GrpcRoute, GrpcRule, HeaderModifier,
    HttpRoute, Listener, MirrorSpec, ParentRef, PathModifier, ReferenceGrant, Rule, Timeouts,
    ValueSpec, GROUP,
};
use crate::agent::build::ObjKey;
use crate::agent::routes::{certificate, service_port, Caches, CertCache, Endpoints, PortRef};
use switchyard_proxy::router::cors::{Cors, OriginPattern};

/// The controller name of our GatewayClasses.
pub const CONTROLLER: &str = "switchyard.io/gateway-controller";

/// The features a GatewayClass of ours supports (sorted, as the spec asks).
pub const FEATURES: &[&str] = &[
    "GRPCRoute",
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute302RedirectStatusCode",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// The Gateway API objects (and Namespaces) the agent keeps.
#[derive(Clone, Copy)]
pub struct Objects<'a> {
    pub classes: &'a HashMap<ObjKey, GatewayClass>,
    pub gateways: &'a HashMap<ObjKey, Gateway>,
    pub routes: &'a HashMap<ObjKey, HttpRoute>,
    pub grpc_routes: &'a HashMap<ObjKey, GrpcRoute>,
    pub grants: &'a HashMap<ObjKey, ReferenceGrant>,
    pub namespaces: &'a HashMap<ObjKey, Namespace>,
}

/// Everything [`build`] reads.
pub struct Inputs<'a> {
    pub objects: Objects<'a>,
    pub services: &'a HashMap<ObjKey, Service>,
    pub secrets: &'a HashMap<ObjKey, Secret>,
}

impl<'a> std::ops::Deref for Inputs<'a> {
    type Target = Objects<'a>;

    fn deref(&self) -> &Objects<'a> {
        &self.objects
    }
}

/// One status condition (the writer adds `lastTransitionTime`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn cond(
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStatus {
    pub name: String,
    pub generation: i64,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub port: u16,
    /// Route kinds (group, kind) it admits.
    pub kinds: Vec<(String, String)>,
    pub attached: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayStatus {
    pub key: ObjKey,
    pub generation: i64,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    pub key: ObjKey,
    pub generation: i64,
    /// Our parents only: entries of other controllers are left as they are.
    pub parents: Vec<ParentStatus>,
}

/// The status of every object of ours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statuses {
    pub classes: Vec<ClassStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub routes: Vec<Arc<RouteStatus>>,
}

impl Statuses {
    /// A compiled route's status. A route with entries of ours and no parent of ours (it
    /// changed while no agent ran) gets an empty one: its entries are taken out.
    fn route(&mut self, route: &RouteRef<'_>, memo: &RouteMemo) {
        match &memo.status {
            Some(s) => self.routes.push(s.clone()),
            None if route.listed => self.routes.push(Arc::new(RouteStatus {
                kind: route.kind,
                key: route.key.clone(),
                generation: generation(route.meta),
                parents: Vec::new(),
            })),
            None => {}
        }
    }
}

fn generation(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.generation.unwrap_or(0)
}

fn age_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, owner: Owner) -> Age {
    (
        meta.creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
        Arc::new(owner),
    )
}

fn is_service(group: &Option<String>, kind: &Option<String>) -> bool {
    group.as_deref().unwrap_or("").is_empty() && kind.as_deref().unwrap_or("Service") == "Service"
}

/// Whether a ReferenceGrant in `to_ns` lets a `from_kind` in `from_ns` refer to the object.
fn granted(
    grants: &HashMap<ObjKey, ReferenceGrant>,
    (from_kind, from_ns): (&str, &str),
    (to_group, to_kind, to_ns, to_name): (&str, &str, &str, &str),
) -> bool {
    grants
        .iter()
        .filter(|((ns, _), _)| ns == to_ns)
        .any(|(_, g)| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

/// The hostnames a route is served under on a listener: the intersection of the two (None is
/// every host). Empty when they share none.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(l) = listener.map(str::to_ascii_lowercase) else {
        if route.is_empty() {
            return vec![None];
        }
        return route.into_iter().map(Some).collect();
    };
    if route.is_empty() {
        return vec![Some(l)];
    }
    // `*.a.b` covers `x.a.b` and `x.y.a.b` (and `*.x.a.b`), not `a.b`.
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    let mut out: Vec<Option<String>> = Vec::new();
    for h in route {
        let shared = if h == l || covers(&l, &h) {
            Some(h)
        } else if covers(&h, &l) {
            Some(l.clone())
        } else {
            None
        };
        if let Some(s) = shared {
            if !out.contains(&Some(s.clone())) {
                out.push(Some(s));
            }
        }
    }
    out
}

/// A listener as checked: whether it is served, and the routes it admits.
struct Checked<'a> {
    listener: &'a Listener,
    port: u16,
    /// Served: accepted, no conflict, references resolved.
    valid: bool,
    /// The route kinds it admits.
    kinds: Vec<&'static str>,
    status: ListenerStatus,
}

/// Checks a Gateway's listeners, registers their ports and certificates in the table, and
/// returns them with their status.
fn listeners<'a>(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    certs: &mut CertCache,
    key: &ObjKey,
    gw: &'a Gateway,
    age: &Age,
) -> Vec<Checked<'a>> {
    let all = &gw.spec.listeners;
    let mut out = Vec::new();
    for l in all {
        let port = u16::try_from(l.port).unwrap_or(0);
        let tls = l.protocol == "HTTPS";
        let mut conditions = Vec::new();
        let mut valid = true;
        let supported_protocol = matches!(l.protocol.as_str(), "HTTP" | "HTTPS") && port != 0;
        // Conflicts inside the Gateway: one port, two protocols; or one port, protocol and
        // hostname twice.
        let same_port = all.iter().filter(|o| o.port == l.port);
        let protocol_conflict = same_port.clone().any(|o| o.protocol != l.protocol);
        let hostname_conflict = same_port
            .filter(|o| o.protocol == l.protocol && o.hostname == l.hostname)
            .count()
            > 1;
        conditions.push(match (protocol_conflict, hostname_conflict) {
            (true, _) => {
                valid = false;
                cond(
                    "Conflicted",
                    true,
                    "ProtocolConflict",
                    format!("another listener on port {} uses another protocol", l.port),
                )
            }
            (false, true) => {
                valid = false;
                cond(
                    "Conflicted",
                    true,
                    "HostnameConflict",
                    format!("another listener on port {} has the same hostname", l.port),
                )
            }
            _ => cond("Conflicted", false, "NoConflicts", "No conflicts"),
        });
        if supported_protocol {
            conditions.push(cond("Accepted", true, "Accepted", "Listener accepted"));
        } else {
            valid = false;
            conditions.push(cond(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!(
                    "protocol {:?} is not served (HTTP and HTTPS are)",
                    l.protocol
                ),
            ));
        }
        // Route kinds: HTTPRoute and GRPCRoute are the ones these listeners serve.
        let served = |group: &Option<String>, kind: &str| {
            let kind = ROUTE_KINDS.iter().find(|k| **k == kind)?;
            (group.as_deref().unwrap_or(GROUP) == GROUP).then_some(*kind)
        };
        let asked = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
        let (kinds, bad_kinds): (Vec<&'static str>, bool) = match asked {
            None => (ROUTE_KINDS.to_vec(), false),
            Some(list) => {
                let mut good: Vec<&'static str> = Vec::new();
                for k in list.iter().filter_map(|k| served(&k.group, &k.kind)) {
                    if !good.contains(&k) {
                        good.push(k);
                    }
                }
                let bad = list.iter().any(|k| served(&k.group, &k.kind).is_none());
                (good, bad)
            }
        };
        let mut resolved = if bad_kinds {
            Err(cond(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                "only HTTPRoute and GRPCRoute (gateway.networking.k8s.io) are supported",
            ))
        } else {
            Ok(())
        };
        if tls && resolved.is_ok() {
            resolved = listener_certificate(b, inputs, certs, key, l, port, age);
        }
        match resolved {
            Ok(()) => conditions.push(cond(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "References resolved",
            )),
            Err(c) => {
                // Unsupported route kinds alone leave the listener serving the supported ones.
                if c.reason != "InvalidRouteKinds" {
                    valid = false;
                }
                conditions.push(c);
            }
        }
        conditions.push(if valid {
            cond(
                "Programmed",
                true,
                "Programmed",
                "Listener served on its port of every node",
            )
        } else {
            cond("Programmed", false, "Invalid", "Listener not served")
        });
        if valid {
            b.listener(port, tls);
        }
        let supported = kinds
            .iter()
            .map(|k| (GROUP.to_string(), k.to_string()))
            .collect();
        out.push(Checked {
            listener: l,
            port,
            valid,
            kinds,
            status: ListenerStatus {
                name: l.name.clone(),
                port,
                kinds: supported,
                attached: 0,
                conditions,
            },
        });
    }
    out
}

/// Resolves an HTTPS listener's first certificate and adds it to the table.
fn listener_certificate(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    certs: &mut CertCache,
    key: &ObjKey,
    l: &Listener,
    port: u16,
    age: &Age,
) -> Result<(), Condition> {
    let invalid = |m: String| cond("ResolvedRefs", false, "InvalidCertificateRef", m);
    let tls = l
        .tls
        .as_ref()
        .ok_or_else(|| invalid("an HTTPS listener needs tls.certificateRefs".into()))?;
    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
        return Err(invalid(format!(
            "TLS mode {:?} is not supported on HTTPS listeners",
            tls.mode
        )));
    }
    let r = tls
        .certificate_refs
        .first()
        .ok_or_else(|| invalid("an HTTPS listener needs tls.certificateRefs".into()))?;
    if !is_secret(r) {
        return Err(invalid(format!(
            "certificateRef {:?}/{:?} is not a Secret",
            r.group.as_deref().unwrap_or(""),
            r.kind.as_deref().unwrap_or("Secret")
        )));
    }
    let ns = r.namespace.clone().unwrap_or_else(|| key.0.clone());
    if ns != key.0
        && !granted(
            inputs.grants,
            ("Gateway", &key.0),
            ("", "Secret", &ns, &r.name),
        )
    {
        return Err(cond(
            "ResolvedRefs",
            false,
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in {ns} lets Gateways of {} use Secret {}",
                key.0, r.name
            ),
        ));
    }
    let cert = certificate(certs, inputs.secrets, &(ns, r.name.clone())).map_err(invalid)?;
    b.listener_certificate(port, l.hostname.as_deref(), age, cert);
    Ok(())
}

fn is_secret(r: &super::types::ObjectRef) -> bool {
    r.group.as_deref().unwrap_or("").is_empty() && r.kind.as_deref().unwrap_or("Secret") == "Secret"
}

/// Whether a listener admits routes from `route_ns`.
fn admits_namespace(
    l: &Listener,
    gw_ns: &str,
    route_ns: &str,
    namespaces: &HashMap<ObjKey, Namespace>,
) -> bool {
    let ns = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match ns.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => gw_ns == route_ns,
        "Selector" => {
            let Some(sel) = ns
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| crate::apiserver::selectors::LabelSelector::from_json(s).ok())
            else {
                return false;
            };
            namespaces
                .get(&(String::new(), route_ns.to_string()))
                .is_some_and(|n| sel.matches(&n.metadata.labels.clone().unwrap_or_default()))
        }
        _ => false,
    }
}

/// An invalid route rule: why (a `UnsupportedValue` message).
type Invalid = String;

fn header_name(n: &str) -> Result<HeaderName, Invalid> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?} is not a header name"))
}

fn header_edit(m: &HeaderModifier) -> Result<HeaderEdit, Invalid> {
    let pair = |nv: &super::types::NameValue| -> Result<(HeaderName, HeaderValue), Invalid> {
        let v = HeaderValue::from_str(&nv.value)
            .map_err(|_| format!("{:?} is not a header value", nv.value))?;
        Ok((header_name(&nv.name)?, v))
    };
    Ok(HeaderEdit {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(p: &PathModifier) -> Result<PathRewrite, Invalid> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(v), _) => Ok(PathRewrite::Full(v.as_str().into())),
        ("ReplacePrefixMatch", _, Some(v)) => Ok(PathRewrite::Prefix(v.as_str().into())),
        (k, _, _) => Err(format!(
            "path modifier {k:?} is not supported or has no value"
        )),
    }
}

/// A rule's filters into an action (backends are added by the caller).
fn filters(filters: &[Filter], prefix_only: bool) -> Result<Action, Invalid> {
    let mut a = Action::default();
    for f in filters {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                if let Some(m) = &f.request_header_modifier {
                    a.request_headers = header_edit(m)?;
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(m) = &f.response_header_modifier {
                    a.response_headers = header_edit(m)?;
                }
            }
            "RequestRedirect" => {
                let r = f.request_redirect.clone().unwrap_or_default();
                let status = r.status_code.unwrap_or(302);
                if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                    return Err(format!("redirect status {status} is not supported"));
                }
                if let Some(s) = r
                    .scheme
                    .as_deref()
                    .filter(|s| !matches!(*s, "http" | "https"))
                {
                    return Err(format!("redirect scheme {s:?} is not supported"));
                }
                a.redirect = Some(Redirect {
                    scheme: r.scheme.map(Into::into),
                    hostname: r.hostname.map(Into::into),
                    path: r.path.as_ref().map(path_rewrite).transpose()?,
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    status: status as u16,
                });
            }
            "URLRewrite" => {
                let r = f.url_rewrite.clone().unwrap_or_default();
                a.rewrite = Some(Rewrite {
                    hostname: r.hostname.map(Into::into),
                    path: r.path.as_ref().map(path_rewrite).transpose()?,
                });
            }
            "CORS" => {
                let c = f.cors.clone().unwrap_or_default();
                let origins = c
                    .allow_origins
                    .iter()
                    .map(|o| OriginPattern::parse(o).ok_or_else(|| format!("CORS origin {o:?}")))
                    .collect::<Result<_, _>>()?;
                let names = |v: Vec<String>| v.into_iter().map(Into::into).collect();
                a.cors = Some(Cors {
                    origins,
                    credentials: c.allow_credentials.unwrap_or(false),
                    methods: names(c.allow_methods),
                    headers: names(c.allow_headers),
                    expose: names(c.expose_headers),
                    max_age: c.max_age.and_then(|m| u32::try_from(m).ok()).unwrap_or(5),
                });
            }
            // Its backend is resolved with the rule's ([`RouteCompiler::rule`]).
            "RequestMirror" => {}
            other => return Err(format!("filter {other:?} is not supported")),
        }
    }
    let prefix_rewrite = [
        a.redirect.as_ref().and_then(|r| r.path.as_ref()),
        a.rewrite.as_ref().and_then(|r| r.path.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|p| matches!(p, PathRewrite::Prefix(_)));
    if prefix_rewrite && !prefix_only {
        return Err("ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into());
    }
    Ok(a)
}

/// Header or query value conditions.
fn value_match(kind: Option<&str>, v: &str) -> Result<ValueMatch, Invalid> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(v.into())),
        "RegularExpression" => whole_match(v)
            .map(ValueMatch::Regex)
            .map_err(|e| format!("regex {v:?}: {e}")),
        k => Err(format!("match type {k:?} is not supported")),
    }
}

/// Header conditions; of several on one name the first counts (the spec's rule).
fn header_matches(specs: &[ValueSpec]) -> Result<Vec<(HeaderName, ValueMatch)>, Invalid> {
    let mut headers: Vec<(HeaderName, ValueMatch)> = Vec::new();
    for h in specs {
        let name = header_name(&h.name)?;
        if !headers.iter().any(|(n, _)| *n == name) {
            headers.push((name, value_match(h.kind.as_deref(), &h.value)?));
        }
    }
    Ok(headers)
}

/// A rule's matches; none is one that matches every request.
fn or_match_all<T: Default + Clone>(matches: &Option<Vec<T>>) -> Vec<T> {
    match matches.as_deref() {
        None | Some([]) => vec![T::default()],
        Some(list) => list.to_vec(),
    }
}

/// A rule's matches, compiled (the default is every path).
fn matches(rule: &Rule) -> Result<Vec<GatewayMatch>, Invalid> {
    or_match_all(&rule.matches)
        .iter()
        .map(|m| {
            let (kind, value) = m.path.as_ref().map_or(("PathPrefix", "/"), |p| {
                (
                    p.kind.as_deref().unwrap_or("PathPrefix"),
                    p.value.as_deref().unwrap_or("/"),
                )
            });
            let path = match kind {
                "Exact" => PathMatch::exact(value),
                "PathPrefix" => PathMatch::prefix(value),
                "RegularExpression" => PathMatch::Regex(
                    whole_match(value).map_err(|e| format!("path regex {value:?}: {e}"))?,
                ),
                k => return Err(format!("path match type {k:?} is not supported")),
            };
            let headers = header_matches(&m.headers)?;
            let mut query: Vec<(Box<str>, ValueMatch)> = Vec::new();
            for q in &m.query_params {
                if !query.iter().any(|(n, _)| **n == *q.name) {
                    query.push((
                        q.name.as_str().into(),
                        value_match(q.kind.as_deref(), &q.value)?,
                    ));
                }
            }
            let method = m
                .method
                .as_deref()
                .map(|s| {
                    http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("method {s:?}"))
                })
                .transpose()?;
            let conditions =
                (method.is_some() || !headers.is_empty() || !query.is_empty()).then(|| {
                    Arc::new(Conditions {
                        method,
                        headers,
                        query,
                    })
                });
            Ok(GatewayMatch {
                path,
                conditions,
                rank: None,
            })
        })
        .collect()
}

/// Why a backend reference cannot be used, as a ResolvedRefs reason and message.
type Unresolved = (&'static str, String);

/// Compiles the rules of one route, noting the backend references that do not resolve.
struct RouteCompiler<'c, 'b> {
    b: &'c mut Builder<'b>,
    inputs: &'c Inputs<'c>,
    endpoints: &'c Endpoints<'c>,
    route: &'c RouteRef<'c>,
    owner: Arc<Owner>,
    unresolved: Vec<Unresolved>,
}

impl RouteCompiler<'_, '_> {
    /// A rule's backends: weighted, with None for each reference that did not resolve.
    fn backends(
        &mut self,
        settings: &Settings,
        refs: &[BackendRef],
    ) -> Vec<(u32, Option<Arc<Backend>>)> {
        let mut out = Vec::new();
        for r in refs {
            let weight = u32::try_from(r.weight.unwrap_or(1)).unwrap_or(0);
            match backend_edits(&r.filters).and_then(|e| self.resolve(r, settings, e)) {
                Ok(b) => out.push((weight, Some(b))),
                Err(p) => {
                    out.push((weight, None));
                    self.unresolved.push(p);
                }
            }
        }
        out
    }

    /// A backend reference as a backend, or why it cannot be one. GRPCRoute backends always
    /// speak HTTP/2 without TLS.
    fn resolve(
        &mut self,
        r: &BackendRef,
        settings: &Settings,
        edits: Option<Box<BackendEdits>>,
    ) -> Result<Arc<Backend>, Unresolved> {
        let (inputs, route) = (self.inputs, self.route);
        let key = route.key;
        let t = &r.target;
        let ns = t.namespace.clone().unwrap_or_else(|| key.0.clone());
        if !is_service(&t.group, &t.kind) {
            return Err((
                "InvalidKind",
                format!(
                    "backend {}/{} is not a Service",
                    t.group.as_deref().unwrap_or(""),
                    t.kind.as_deref().unwrap_or("Service")
                ),
            ));
        }
        if ns != key.0
            && !granted(
                inputs.grants,
                (route.kind, &key.0),
                ("", "Service", &ns, &t.name),
            )
        {
            return Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {ns} lets {}s of {} use Service {}",
                    route.kind, key.0, t.name
                ),
            ));
        }
        let port = r.port.map(PortRef::Number);
        let (addrs, h2c) = service_port(inputs.services, self.endpoints, &ns, &t.name, port)
            .map_err(|p| ("BackendNotFound", p.message))?;
        Ok(self.b.backend(BackendSpec {
            owner: self.owner.clone(),
            service: format!("{}:{}", t.name, r.port.unwrap_or(0)),
            endpoints: addrs,
            h2c: h2c || route.kind == GRPC_ROUTE,
            settings: settings.clone(),
            edits,
        }))
    }

    /// A rule's `RequestMirror` filters; a mirror whose backend does not resolve is left out.
    fn mirrors(&mut self, settings: &Settings, filters: &[Filter]) -> Result<Vec<Mirror>, Invalid> {
        let mut out = Vec::new();
        for m in filters.iter().filter_map(|f| f.request_mirror.as_ref()) {
            let (numerator, denominator) = mirror_share(m)?;
            match self.resolve(&m.backend_ref, settings, None) {
                Ok(backend) => out.push(Mirror {
                    backend,
                    numerator,
                    denominator,
                }),
                Err(p) => self.unresolved.push(p),
            }
        }
        Ok(out)
    }

    /// One rule, compiled: its matches and its action; or why it cannot be served.
    fn rule(&mut self, rule: RuleRef<'_>) -> Result<(Vec<GatewayMatch>, Arc<Action>), Invalid> {
        let (ms, filter_list, refs, t) = match rule {
            RuleRef::Http(r) => (
                matches(r)?,
                &r.filters,
                &r.backend_refs,
                r.timeouts.as_ref(),
            ),
            RuleRef::Grpc(r) => (grpc_matches(r)?, &r.filters, &r.backend_refs, None),
        };
        let prefix_only = ms.iter().all(|m| matches!(m.path, PathMatch::Prefix(_)));
        let mut action = filters(filter_list, prefix_only)?;
        let settings = timeouts(t, &mut action)?;
        if action.redirect.is_none() {
            action.mirrors = self.mirrors(&settings, filter_list)?;
            action.backends = self.backends(&settings, refs);
        }
        Ok((ms, Arc::new(action)))
    }
}

/// The share of requests a mirror copies: `percent` of 100, or a fraction; all by default.
fn mirror_share(m: &MirrorSpec) -> Result<(u32, u32), Invalid> {
    let (n, d) = match (m.percent, &m.fraction) {
        (Some(p), None) => (p, 100),
        (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
        (None, None) => (1, 1),
        (Some(_), Some(_)) => return Err("a mirror has both percent and fraction".into()),
    };
    match (u32::try_from(n), u32::try_from(d)) {
        (Ok(n), Ok(d)) if d > 0 && n <= d => Ok((n, d)),
        _ => Err(format!(
            "mirror share {n}/{d} is not a fraction of requests"
        )),
    }
}

/// A backend reference's own filters: header modifiers only.
fn backend_edits(filters: &[Filter]) -> Result<Option<Box<BackendEdits>>, Unresolved> {
    if filters.is_empty() {
        return Ok(None);
    }
    let unsupported = |m: String| ("UnsupportedValue", m);
    let mut edits = BackendEdits::default();
    for f in filters {
        let (target, modifier) = match f.kind.as_str() {
            "RequestHeaderModifier" => (&mut edits.request, &f.request_header_modifier),
            "ResponseHeaderModifier" => (&mut edits.response, &f.response_header_modifier),
            other => {
                let msg = format!("filter {other:?} is not supported on a backendRef");
                return Err(unsupported(msg));
            }
        };
        if let Some(m) = modifier {
            *target = header_edit(m).map_err(unsupported)?;
        }
    }
    Ok(Some(Box::new(edits)))
}

/// A GRPCRoute match as a path match: gRPC calls `POST /service/method`.
fn grpc_matches(rule: &GrpcRule) -> Result<Vec<GatewayMatch>, Invalid> {
    or_match_all(&rule.matches)
        .iter()
        .map(|m| {
            let method = m.method.clone().unwrap_or_default();
            let regex = method.kind.as_deref() == Some("RegularExpression");
            let (svc, name) = (method.service.as_deref(), method.method.as_deref());
            let path = match (regex, svc, name) {
                (false, Some(s), Some(n)) => PathMatch::exact(&format!("/{s}/{n}")),
                (false, Some(s), None) => PathMatch::prefix(&format!("/{s}")),
                (false, None, None) => PathMatch::prefix("/"),
                (false, None, Some(n)) => grpc_regex(&format!("[^/]+/{}", regex::escape(n)))?,
                (true, s, n) => grpc_regex(&format!(
                    "{}/{}",
                    s.unwrap_or("[^/]+"),
                    n.unwrap_or("[^/]+")
                ))?,
            };
            let headers = header_matches(&m.headers)?;
            let conditions = (!headers.is_empty()).then(|| {
                Arc::new(Conditions {
                    headers,
                    ..Default::default()
                })
            });
            // The spec's order: more characters in the service, then in the method (as
            // written, whatever the match type); packed into one length.
            let chars = |v: Option<&str>| v.map_or(0, |v| v.len().min(0xffff));
            let rank = Some((0, chars(svc) << 16 | chars(name)));
            Ok(GatewayMatch {
                path,
                conditions,
                rank,
            })
        })
        .collect()
}

fn grpc_regex(pattern: &str) -> Result<PathMatch, Invalid> {
    whole_match(&format!("/{pattern}"))
        .map(PathMatch::Regex)
        .map_err(|e| format!("method regex {pattern:?}: {e}"))
}

/// Per rule: its timeouts and its backend settings.
fn timeouts(t: Option<&Timeouts>, action: &mut Action) -> Result<Settings, Invalid> {
    let mut settings = Settings::default();
    let timeout = |s: &Option<String>| -> Result<Option<Duration>, Invalid> {
        s.as_deref()
            .map(parse_duration)
            .transpose()
            .map(|d| d.filter(|d| !d.is_zero()))
    };
    if let Some(t) = t {
        action.request_timeout = timeout(&t.request)?;
        if let Some(d) = timeout(&t.backend_request)? {
            settings.response_timeout = d;
        }
    }
    Ok(settings)
}

/// A route's rules, compiled once for all its parents: the served rules (matches and action),
/// the backend references that did not resolve, and why rules could not be served.
type Compiled = (
    Vec<(Vec<GatewayMatch>, Arc<Action>)>,
    Vec<Unresolved>,
    Vec<Invalid>,
);

const HTTP_ROUTE: &str = "HTTPRoute";
const GRPC_ROUTE: &str = "GRPCRoute";
/// The route kinds our listeners admit.
const ROUTE_KINDS: &[&str] = &[HTTP_ROUTE, GRPC_ROUTE];

/// One rule of either kind of route.
#[derive(Clone, Copy)]
enum RuleRef<'a> {
    Http(&'a Rule),
    Grpc(&'a GrpcRule),
}

/// A route of either kind, as attaching it to listeners sees it.
struct RouteRef<'a> {
    kind: &'static str,
    key: &'a ObjKey,
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parents: &'a [ParentRef],
    hostnames: &'a [String],
    rules: Rules<'a>,
    /// Its status has entries of ours (the watch keeps no others).
    listed: bool,
}

/// The rules of a route of either kind.
#[derive(Clone, Copy)]
enum Rules<'a> {
    Http(&'a [Rule]),
    Grpc(&'a [GrpcRule]),
}

impl<'a> Rules<'a> {
    fn iter(self) -> impl Iterator<Item = RuleRef<'a>> {
        let (http, grpc) = match self {
            Rules::Http(r) => (r, &[][..]),
            Rules::Grpc(r) => (&[][..], r),
        };
        http.iter()
            .map(RuleRef::Http)
            .chain(grpc.iter().map(RuleRef::Grpc))
    }
}

/// Every HTTPRoute and GRPCRoute.
fn all_routes<'a>(objects: &Objects<'a>) -> Vec<RouteRef<'a>> {
    objects
        .routes
        .iter()
        .map(|(key, r)| RouteRef {
            kind: HTTP_ROUTE,
            key,
            meta: &r.metadata,
            parents: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            rules: Rules::Http(&r.spec.rules),
            listed: r.status.is_some(),
        })
        .chain(objects.grpc_routes.iter().map(|(key, r)| RouteRef {
            kind: GRPC_ROUTE,
            key,
            meta: &r.metadata,
            parents: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            rules: Rules::Grpc(&r.spec.rules),
            listed: r.status.is_some(),
        }))
        .collect()
}

/// The condition `Accepted` of a route on one parent.
fn accepted(
    invalid: &[Invalid],
    selected: usize,
    allowed: usize,
    (attached, lost): (usize, usize),
) -> Condition {
    if !invalid.is_empty() {
        cond("Accepted", false, "UnsupportedValue", invalid.join("; "))
    } else if selected == 0 {
        cond(
            "Accepted",
            false,
            "NoMatchingParent",
            "no listener matches the sectionName or port",
        )
    } else if allowed == 0 {
        cond(
            "Accepted",
            false,
            "NotAllowedByListeners",
            "no listener admits this route (allowedRoutes, or the listener is invalid)",
        )
    } else if attached == 0 && lost == 0 {
        cond(
            "Accepted",
            false,
            "NoMatchingListenerHostname",
            "no listener hostname matches the route's hostnames",
        )
    } else if attached == 0 {
        cond(
            "Accepted",
            false,
            "Conflicted",
            "an older route of the other kind (HTTPRoute or GRPCRoute) serves these hostnames on \
             the listener",
        )
    } else {
        cond("Accepted", true, "Accepted", "Route accepted")
    }
}

/// What one route compiled to, kept while neither it (uid, generation) nor anything else the
/// route table reads (`world`) changed.
pub struct RouteMemo {
    version: (String, i64),
    world: u64,
    recorded: Recorded,
    /// The Services it names (whose changes rebuild it).
    services: Vec<ObjKey>,
    /// The listeners it is attached to.
    claims: Vec<Claim>,
    status: Option<Arc<RouteStatus>>,
}

/// A listener by Gateway and index.
type ListenerKey = (ObjKey, usize);

/// A route attached to a listener, under these hostnames.
struct Claim {
    listener: ListenerKey,
    hosts: Vec<Option<String>>,
    /// An older route of the other kind has these hostnames here: this one is not served.
    lost: bool,
}

impl RouteMemo {
    fn lost(&self) -> impl Iterator<Item = &ListenerKey> {
        self.claims.iter().filter(|c| c.lost).map(|c| &c.listener)
    }
}

/// Compiled routes by kind and key, and how many are attached to each listener.
#[derive(Default)]
pub struct RouteCache {
    http: foldhash::HashMap<ObjKey, RouteMemo>,
    grpc: foldhash::HashMap<ObjKey, RouteMemo>,
    /// Listener -> attached routes of each kind (HTTPRoutes, GRPCRoutes), of the compiled
    /// routes.
    attached: foldhash::HashMap<ListenerKey, [i32; 2]>,
    /// Routes that lost a listener to a route of the other kind.
    losers: HashSet<(&'static str, ObjKey)>,
}

impl RouteCache {
    fn of(&mut self, kind: &str) -> &mut foldhash::HashMap<ObjKey, RouteMemo> {
        if kind == GRPC_ROUTE {
            &mut self.grpc
        } else {
            &mut self.http
        }
    }

    /// Puts a compiled route in, returning the one it replaces; attachments are counted.
    fn insert(&mut self, kind: &'static str, key: &ObjKey, memo: RouteMemo) -> Option<RouteMemo> {
        self.attach(kind, key, &memo, 1);
        let old = self.of(kind).insert(key.clone(), memo);
        if let Some(old) = &old {
            self.attach(kind, key, old, -1);
        }
        let memo = &self.of(kind)[key];
        if memo.lost().next().is_some() {
            self.losers.insert((kind, key.clone()));
        }
        old
    }

    fn remove(&mut self, kind: &'static str, key: &ObjKey) -> Option<RouteMemo> {
        let old = self.of(kind).remove(key)?;
        self.attach(kind, key, &old, -1);
        Some(old)
    }

    fn attach(&mut self, kind: &'static str, key: &ObjKey, memo: &RouteMemo, n: i32) {
        let side = usize::from(kind == GRPC_ROUTE);
        for c in &memo.claims {
            let count = self.attached.entry(c.listener.clone()).or_default();
            count[side] += n;
            if *count == [0, 0] {
                self.attached.remove(&c.listener);
            }
        }
        if n < 0 {
            self.losers.remove(&(kind, key.clone()));
        }
    }

    /// Where each route loses to an older one of the other kind with a hostname in common on
    /// the same listener (the spec accepts exactly one of the two: the oldest, then by
    /// `namespace/name`). Only listeners with routes of both kinds are looked at.
    fn conflicts(&self) -> HashMap<(&'static str, ObjKey), Vec<ListenerKey>> {
        let mut out: HashMap<(&'static str, ObjKey), Vec<ListenerKey>> = HashMap::new();
        let mixed = self
            .attached
            .iter()
            .filter(|(_, [http, grpc])| *http > 0 && *grpc > 0);
        for (listener, _) in mixed {
            // Every route on this listener, oldest first; each is served unless it shares a
            // hostname with an older served route of the other kind.
            let mut here: Vec<(&Age, &'static str, &ObjKey, &[Option<String>])> = Vec::new();
            for (kind, memos) in [(HTTP_ROUTE, &self.http), (GRPC_ROUTE, &self.grpc)] {
                for (key, memo) in memos {
                    if let Some(c) = memo.claims.iter().find(|c| c.listener == *listener) {
                        here.push((memo.recorded.age(), kind, key, &c.hosts));
                    }
                }
            }
            here.sort_by(|a, b| {
                let order = |x: &Age| (x.0, x.1.namespace.clone(), x.1.name.clone());
                order(a.0).cmp(&order(b.0))
            });
            let mut served: Vec<(&'static str, &[Option<String>])> = Vec::new();
            for (_, kind, key, hosts) in here {
                let clash = served
                    .iter()
                    .any(|(k, theirs)| *k != kind && hosts_overlap(hosts, theirs));
                if clash {
                    out.entry((kind, key.clone()))
                        .or_default()
                        .push(listener.clone());
                } else {
                    served.push((kind, hosts));
                }
            }
        }
        out
    }
}

/// Whether two routes' hostnames on a listener have one in common (None is every host).
fn hosts_overlap(a: &[Option<String>], b: &[Option<String>]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => !intersect(Some(x), std::slice::from_ref(y)).is_empty(),
        })
    })
}

/// The Gateways of ours with their listeners, by key.
type Listeners<'a> = foldhash::HashMap<&'a ObjKey, (Vec<Checked<'a>>, &'a Gateway)>;

/// Compiles one route against the listeners of the Gateways it names: its rules on every
/// listener that admits it, and its status per parent.
fn compile_route(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    endpoints: &Endpoints,
    route: &RouteRef<'_>,
    gateways: &Listeners<'_>,
    (version, world): ((String, i64), u64),
    lost: &[ListenerKey],
) -> RouteMemo {
    let key = route.key;
    let kind = if route.kind == GRPC_ROUTE {
        OwnerKind::GrpcRoute
    } else {
        OwnerKind::HttpRoute
    };
    let age = age_of(route.meta, Owner::new(kind, &key.0, &key.1));
    let owner = age.1.clone();
    let mut memo = RouteMemo {
        version,
        world,
        recorded: Recorded::new(age),
        services: Vec::new(),
        claims: Vec::new(),
        status: None,
    };
    let mut parents = Vec::new();
    // Compiled once per route, attached once per listener.
    let mut compiled: Option<Compiled> = None;
    for parent in route.parents {
        if parent.group.as_deref().unwrap_or(GROUP) != GROUP
            || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gw_key = (
            parent.namespace.clone().unwrap_or_else(|| key.0.clone()),
            parent.name.clone(),
        );
        let Some((checked, _)) = gateways.get(&gw_key) else {
            continue;
        };
        let (rules, unresolved, invalid) = compiled.get_or_insert_with(|| {
            let mut c = RouteCompiler {
                b: &mut *b,
                inputs,
                endpoints,
                route,
                owner: owner.clone(),
                unresolved: Vec::new(),
            };
            let mut rules = Vec::new();
            let mut invalid = Vec::new();
            for rule in route.rules.iter() {
                match c.rule(rule) {
                    Ok(r) => rules.push(r),
                    Err(e) => invalid.push(e),
                }
            }
            (rules, c.unresolved, invalid)
        });
        let selected: Vec<usize> = checked
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                parent
                    .section_name
                    .as_ref()
                    .is_none_or(|s| *s == c.listener.name)
                    && parent.port.is_none_or(|p| p == c.listener.port)
            })
            .map(|(i, _)| i)
            .collect();
        let allowed: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|&i| {
                let c = &checked[i];
                c.valid
                    && c.kinds.contains(&route.kind)
                    && admits_namespace(c.listener, &gw_key.0, &key.0, inputs.namespaces)
            })
            .collect();
        let (mut attached, mut conflicted) = (0, 0);
        for &i in &allowed {
            let c = &checked[i];
            let hosts = intersect(c.listener.hostname.as_deref(), route.hostnames);
            if hosts.is_empty() || !invalid.is_empty() {
                continue;
            }
            let listener = (gw_key.clone(), i);
            let lost = lost.contains(&listener);
            let claim = Claim {
                listener,
                hosts,
                lost,
            };
            memo.claims.push(claim);
            if lost {
                conflicted += 1;
                continue;
            }
            attached += 1;
            let hosts = &memo.claims.last().expect("just pushed").hosts;
            for host in hosts {
                for (r, (ms, action)) in rules.iter().enumerate() {
                    for (m_i, m) in ms.iter().enumerate() {
                        memo.recorded.gateway_rule(
                            c.port,
                            host.as_deref(),
                            m,
                            r * 64 + m_i,
                            action.clone(),
                        );
                    }
                }
            }
        }
        let conditions = vec![
            accepted(
                invalid,
                selected.len(),
                allowed.len(),
                (attached, conflicted),
            ),
            match unresolved.first() {
                Some((reason, message)) => cond("ResolvedRefs", false, reason, message.clone()),
                None => cond("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
            },
        ];
        parents.push(ParentStatus {
            parent: parent.clone(),
            conditions,
        });
    }
    for rule in route.rules.iter() {
        let (refs, filters) = match rule {
            RuleRef::Http(r) => (&r.backend_refs, &r.filters),
            RuleRef::Grpc(r) => (&r.backend_refs, &r.filters),
        };
        let mirrors = filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref())
            .map(|m| &m.backend_ref);
        for t in refs.iter().chain(mirrors).map(|r| &r.target) {
            if is_service(&t.group, &t.kind) {
                let ns = t.namespace.clone().unwrap_or_else(|| key.0.clone());
                memo.services.push((ns, t.name.clone()));
            }
        }
    }
    if let Some((rules, _, _)) = &compiled {
        for (_, action) in rules {
            let backends = action.backends.iter().filter_map(|(_, b)| b.as_ref());
            for be in backends.chain(action.mirrors.iter().map(|m| &m.backend)) {
                memo.recorded.keep(be);
            }
        }
    }
    if !parents.is_empty() {
        memo.status = Some(Arc::new(RouteStatus {
            kind: route.kind,
            key: key.clone(),
            generation: generation(route.meta),
            parents,
        }));
    }
    memo
}

/// Compiles again the routes whose conflicts changed: those that lose a listener now, and those
/// that lost one before.
fn settle_conflicts(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    endpoints: &Endpoints,
    caches: &mut Caches,
    routes: &[RouteRef<'_>],
    gateways: &Listeners<'_>,
    st: &mut Statuses,
) {
    let conflicts = caches.routes.conflicts();
    if conflicts.is_empty() && caches.routes.losers.is_empty() {
        return;
    }
    let mut involved: HashSet<(&'static str, ObjKey)> = caches.routes.losers.clone();
    involved.extend(conflicts.keys().cloned());
    for route in routes {
        let id = (route.kind, route.key.clone());
        if !involved.contains(&id) {
            continue;
        }
        let want = conflicts.get(&id).map_or(&[][..], Vec::as_slice);
        let Some(memo) = caches.routes.of(route.kind).get(route.key) else {
            continue;
        };
        if memo.lost().eq(want.iter()) {
            continue;
        }
        let (version, world) = (memo.version.clone(), memo.world);
        let memo = compile_route(
            b,
            inputs,
            endpoints,
            route,
            gateways,
            (version, world),
            want,
        );
        b.apply(&memo.recorded);
        if let Some(s) = &memo.status {
            let same = |x: &Arc<RouteStatus>| x.kind == s.kind && x.key == s.key;
            match st.routes.iter_mut().find(|x| same(x)) {
                Some(x) => *x = s.clone(),
                None => st.routes.push(s.clone()),
            }
        }
        caches.count(&memo.services, true);
        if let Some(old) = caches.routes.insert(route.kind, route.key, memo) {
            caches.count(&old.services, false);
            b.remove(&old.recorded);
        }
    }
}

/// Adds every Gateway, HTTPRoute and GRPCRoute of ours to the table; returns their status.
/// Routes compiled at the same `world` and generation come from `cache`.
pub fn build(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    endpoints: &Endpoints,
    caches: &mut Caches,
    (world, edit): (u64, bool),
) -> Statuses {
    let mut st = Statuses::default();
    let mut ours: HashSet<&str> = HashSet::new();
    for ((_, name), class) in inputs.classes {
        if class.spec.controller_name != CONTROLLER {
            continue;
        }
        ours.insert(name);
        st.classes.push(ClassStatus {
            name: name.clone(),
            generation: generation(&class.metadata),
            conditions: vec![cond(
                "Accepted",
                true,
                "Accepted",
                "Served by the Switchyard node agents",
            )],
        });
    }
    // Gateways, with their listeners checked.
    let mut gateways: Listeners<'_> = Default::default();
    let mut keys: Vec<&ObjKey> = inputs.gateways.keys().collect();
    keys.sort();
    for key in keys {
        let gw = &inputs.gateways[key];
        if !ours.contains(gw.spec.gateway_class_name.as_str()) {
            continue;
        }
        if !gw.spec.addresses.is_empty() {
            gateways.insert(key, (Vec::new(), gw));
            continue;
        }
        // Certificates claimed by two Gateways for one name: the oldest Gateway's.
        let age = age_of(
            &gw.metadata,
            Owner::new(OwnerKind::HttpRoute, &key.0, &key.1),
        );
        let checked = listeners(b, inputs, &mut caches.certs, key, gw, &age);
        gateways.insert(key, (checked, gw));
    }
    let routes = all_routes(&inputs.objects);
    for route in &routes {
        let uid = route.meta.uid.as_deref().unwrap_or("");
        let gen = generation(route.meta);
        let cached = caches.routes.of(route.kind).get(route.key);
        if let Some(memo) =
            cached.filter(|m| m.world == world && m.version.0 == uid && m.version.1 == gen)
        {
            if !edit {
                b.apply(&memo.recorded);
            }
            st.route(route, memo);
            continue;
        }
        let version = (uid.to_string(), gen);
        // Conflicts as they were; settled below, once every route is compiled.
        let lost: Vec<ListenerKey> = cached.map_or(Vec::new(), |m| m.lost().cloned().collect());
        let memo = compile_route(
            b,
            inputs,
            endpoints,
            route,
            &gateways,
            (version, world),
            &lost,
        );
        b.apply(&memo.recorded);
        caches.count(&memo.services, true);
        st.route(route, &memo);
        if let Some(old) = caches.routes.insert(route.kind, route.key, memo) {
            caches.count(&old.services, false);
            if edit {
                b.remove(&old.recorded);
            }
        }
    }
    let cached = caches.routes.http.len() + caches.routes.grpc.len();
    if cached > routes.len() {
        let now: HashSet<(&str, &ObjKey)> = routes.iter().map(|r| (r.kind, r.key)).collect();
        let gone: Vec<(&'static str, ObjKey)> = [
            (HTTP_ROUTE, &caches.routes.http),
            (GRPC_ROUTE, &caches.routes.grpc),
        ]
        .into_iter()
        .flat_map(|(kind, m)| m.keys().map(move |k| (kind, k)))
        .filter(|(kind, key)| !now.contains(&(*kind, *key)))
        .map(|(kind, key)| (kind, key.clone()))
        .collect();
        for (kind, key) in gone {
            let Some(memo) = caches.routes.remove(kind, &key) else {
                continue;
            };
            caches.count(&memo.services, false);
            if edit {
                b.remove(&memo.recorded);
            }
        }
    }
    settle_conflicts(b, inputs, endpoints, caches, &routes, &gateways, &mut st);
    for (key, (checked, _)) in gateways.iter_mut() {
        for (i, l) in checked.iter_mut().enumerate() {
            let n = caches.routes.attached.get(&((*key).clone(), i));
            l.status.attached = n.map_or(0, |[http, grpc]| http + grpc);
        }
    }
    let mut keys: Vec<&ObjKey> = gateways.keys().copied().collect();
    keys.sort();
    for key in keys {
        let (checked, gw) = &gateways[key];
        let mut conditions = Vec::new();
        let valid = checked.iter().filter(|c| c.valid).count();
        if !gw.spec.addresses.is_empty() {
            conditions.push(cond(
                "Accepted",
                false,
                "UnsupportedAddress",
                "spec.addresses is not supported: a Gateway is served on every node's address",
            ));
            conditions.push(cond("Programmed", false, "Invalid", "not served"));
        } else {
            conditions.push(match (valid, checked.len()) {
                (v, n) if v == n => cond("Accepted", true, "Accepted", "Gateway accepted"),
                (0, _) => cond(
                    "Accepted",
                    false,
                    "ListenersNotValid",
                    "no listener is valid",
                ),
                _ => cond(
                    "Accepted",
                    true,
                    "ListenersNotValid",
                    "some listeners are not valid",
                ),
            });
            conditions.push(if valid > 0 {
                cond(
                    "Programmed",
                    true,
                    "Programmed",
                    "Served by the node agents",
                )
            } else {
                cond("Programmed", false, "Invalid", "no listener is served")
            });
        }
        st.gateways.push(GatewayStatus {
            key: key.clone(),
            generation: generation(&gw.metadata),
            conditions,
            listeners: checked.iter().map(|c| c.status.clone()).collect(),
        });
    }
    st.classes.sort_by(|a, b| a.name.cmp(&b.name));
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_matches_rank_by_service_then_method() {
        let rank = |svc: Option<&str>, method: Option<&str>| {
            let rule: GrpcRule = serde_json::from_value(serde_json::json!({
                "matches": [{"method": {"service": svc, "method": method}}]
            }))
            .unwrap();
            grpc_matches(&rule).unwrap()[0].rank.unwrap()
        };
        // Lower sorts first.
        let key = |r: (u8, usize)| (r.0, std::cmp::Reverse(r.1));
        let exact = key(rank(Some("pkg.Svc"), Some("Get")));
        let service = key(rank(Some("pkg.Svc"), None));
        let longer_service = key(rank(Some("pkg.Service"), None));
        let method = key(rank(None, Some("GetEverything")));
        let any = key(rank(None, None));
        assert!(exact < service, "a method as well wins");
        assert!(
            longer_service < exact,
            "a longer service wins whatever the method"
        );
        assert!(
            service < method,
            "any service characters beat method characters"
        );
        assert!(method < any);
    }

    #[test]
    fn route_hostnames_overlap() {
        let h = |v: &[Option<&str>]| v.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
        assert!(hosts_overlap(&h(&[None]), &h(&[Some("a.example")])));
        assert!(hosts_overlap(
            &h(&[Some("*.example")]),
            &h(&[Some("a.b.example")])
        ));
        assert!(hosts_overlap(
            &h(&[Some("a.example")]),
            &h(&[Some("*.example")])
        ));
        assert!(hosts_overlap(
            &h(&[Some("*.b.example")]),
            &h(&[Some("*.example")])
        ));
        assert!(!hosts_overlap(
            &h(&[Some("a.example")]),
            &h(&[Some("b.example")])
        ));
        assert!(!hosts_overlap(
            &h(&[Some("*.example")]),
            &h(&[Some("example")])
        ));
        assert!(!hosts_overlap(&h(&[]), &h(&[None])));
    }

    #[test]
    fn mirror_shares() {
        let share = |percent: Option<i32>, fraction: Option<(i32, Option<i32>)>| {
            mirror_share(&MirrorSpec {
                backend_ref: BackendRef::default(),
                percent,
                fraction: fraction.map(|(numerator, denominator)| super::super::types::Fraction {
                    numerator,
                    denominator,
                }),
            })
        };
        assert_eq!(share(None, None), Ok((1, 1)));
        assert_eq!(share(Some(20), None), Ok((20, 100)));
        assert_eq!(share(None, Some((1, Some(3)))), Ok((1, 3)));
        assert_eq!(share(None, Some((7, None))), Ok((7, 100)));
        for bad in [
            share(Some(-1), None),
            share(Some(101), None),
            share(None, Some((4, Some(3)))),
            share(None, Some((0, Some(0)))),
            share(Some(5), Some((1, None))),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_filters_are_header_modifiers_only() {
        let modifier = HeaderModifier {
            set: vec![super::super::types::NameValue {
                name: "x-a".into(),
                value: "1".into(),
            }],
            ..Default::default()
        };
        let f = |kind: &str| Filter {
            kind: kind.into(),
            request_header_modifier: Some(modifier.clone()),
            response_header_modifier: Some(modifier.clone()),
            ..Default::default()
        };
        assert!(backend_edits(&[]).unwrap().is_none());
        let e = backend_edits(&[f("RequestHeaderModifier")])
            .unwrap()
            .unwrap();
        assert_eq!(e.request.set.len(), 1);
        assert!(e.response.is_empty());
        let e = backend_edits(&[f("ResponseHeaderModifier")])
            .unwrap()
            .unwrap();
        assert!(e.request.is_empty() && e.response.set.len() == 1);
        let err = backend_edits(&[f("RequestMirror")]).unwrap_err();
        assert_eq!(err.0, "UnsupportedValue");
    }

    #[test]
    fn hostname_intersection() {
        let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let got = |l: Option<&str>, r: &[&str]| -> Vec<Option<String>> { intersect(l, &s(r)) };
        let some = |v: &[&str]| v.iter().map(|h| Some(h.to_string())).collect::<Vec<_>>();
        assert_eq!(got(None, &[]), vec![None]);
        assert_eq!(got(None, &["a.com"]), some(&["a.com"]));
        assert_eq!(got(Some("a.com"), &[]), some(&["a.com"]));
        assert_eq!(
            got(
                Some("*.example.com"),
                &["foo.example.com", "a.b.example.com", "example.com", "x.org"]
            ),
            some(&["foo.example.com", "a.b.example.com"])
        );
        assert_eq!(
            got(Some("foo.example.com"), &["*.example.com"]),
            some(&["foo.example.com"])
        );
        assert_eq!(
            got(Some("*.example.com"), &["*.foo.example.com"]),
            some(&["*.foo.example.com"])
        );
        assert_eq!(
            got(Some("*.foo.example.com"), &["*.example.com"]),
            some(&["*.foo.example.com"])
        );
        assert!(got(Some("a.com"), &["b.com"]).is_empty());
        assert_eq!(got(Some("A.com"), &["a.COM"]), some(&["a.com"]));
    }
}
