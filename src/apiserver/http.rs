//! HTTP: TLS connections (HTTP/1.1 and HTTP/2), bearer-token authentication, the node role's
//! authorization, routing of Kubernetes REST paths to the registry, and content negotiation
//! (JSON, YAML request bodies, Tables for `kubectl get`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::discovery;
use super::error::ApiError;
use super::patch::{Patch, PatchType};
use super::registry::{DeleteOptions, FieldValidation, ListOptions, Part, Registry, WriteOptions};
use super::resources::{self, Resource};
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::watch::{self, Format, WatchOptions};

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused with 413, as kube-apiserver's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// How much of an oversized body is read (and dropped) so that the client gets its 413.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;
/// How long a watch lasts when the client does not say (kube-apiserver: 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Who a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Node,
}

pub struct Api {
    pub registry: Arc<Registry>,
    pub admin_token: String,
    pub node_token: String,
    /// The address clients reach us at, for `/api`'s serverAddressByClientCIDRs.
    pub server_address: String,
    pub ready: AtomicBool,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("valid response")
}

fn value_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_response(status, serde_json::to_vec(v).expect("json"))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    value_response(status, &e.status())
}

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

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

/// A parsed resource path.
struct Target {
    r: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    part: Part,
}

fn route(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (ns, rest) = if namespaced {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    if rest.is_empty() || rest.len() > 3 || rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_route());
    }
    let r = resources::find(group, version, rest[0]).ok_or_else(ApiError::no_route)?;
    let part = match rest.get(2) {
        None => Part::Main,
        Some(&"status") if r.status => Part::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    Ok(Target {
        r,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        part,
    })
}

fn wants_table(req_accept: &str) -> bool {
    req_accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// kube-apiserver names a manager that gives no `fieldManager` after its User-Agent's product.
fn default_manager(user_agent: Option<&str>) -> String {
    let ua = user_agent
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .trim();
    if ua.is_empty() {
        "unknown".into()
    } else {
        ua.chars().take(128).collect()
    }
}

fn write_options(
    q: &HashMap<String, String>,
    user_agent: Option<&str>,
) -> Result<WriteOptions, ApiError> {
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is not supported (Ignore, Warn, Strict)"
            )))
        }
    };
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun {other:?} is not supported (All)"
            )))
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
        field_manager: q.get("fieldManager").filter(|m| !m.is_empty()).cloned(),
        default_manager: default_manager(user_agent),
        force: flag(q, "force"),
    })
}

fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode(body);
    }
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    let yaml = matches!(ct, "application/yaml" | "application/apply-patch+yaml");
    if yaml {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// `{"kind": "<Kind>List", ...}` built from stored bytes without re-encoding them.
fn list_bytes(r: &Resource, items: &[Bytes], rv: i64, cont: Option<&str>) -> Bytes {
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut b = BytesMut::with_capacity(size + 256);
    b.put_slice(format!("{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"", r.kind, r.api_version()).as_bytes());
    if let Some(c) = cont {
        b.put_slice(format!(",\"continue\":\"{c}\"").as_bytes());
    }
    b.put_slice(b"},\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(item);
    }
    b.put_slice(b"]}");
    b.freeze()
}

fn forbidden(role: Role, verb: &str, t: &Target) -> ApiError {
    let user = match role {
        Role::Admin => "admin",
        Role::Node => "system:node",
    };
    let ns =
        t.ns.as_deref()
            .map(|n| format!(" in the namespace \"{n}\""))
            .unwrap_or_default();
    let name = t.name.as_deref().unwrap_or("");
    ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\"{ns}",
        t.r.group_resource(),
        t.r.plural,
        t.r.group
    ))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Api {
    fn authenticate(&self, req: &Request<Incoming>) -> Option<Role> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        if same(token, &self.admin_token) {
            Some(Role::Admin)
        } else if same(token, &self.node_token) {
            Some(Role::Node)
        } else {
            None
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
        Ok(resp)
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" | "/healthz/ping" | "/livez/ping"
            | "/readyz/ping" => {
                return if path.starts_with("/readyz") && !self.ready.load(Ordering::Acquire) {
                    Err(ApiError::service_unavailable("not ready"))
                } else {
                    Ok(Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                        .body(full("ok"))
                        .expect("response"))
                };
            }
            "/version" => return Ok(value_response(StatusCode::OK, &discovery::version())),
            _ => {}
        }
        let role = self.authenticate(&req).ok_or_else(ApiError::unauthorized)?;
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let get = req.method() == Method::GET;
        match segs.as_slice() {
            ["api"] if get => Ok(value_response(
                StatusCode::OK,
                &discovery::api_versions(&self.server_address),
            )),
            ["apis"] if get => Ok(value_response(StatusCode::OK, &discovery::api_groups())),
            ["api", "v1"] if get => Ok(value_response(
                StatusCode::OK,
                &discovery::resource_list("", "v1").expect("core"),
            )),
            ["apis", g] if get => discovery::api_group(g)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route),
            ["apis", g, v] if get => discovery::resource_list(g, v)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route),
            ["openapi", "v3"] if get => {
                Ok(value_response(StatusCode::OK, &discovery::openapi_index()))
            }
            ["openapi", "v3", rest @ ..] if get => discovery::openapi_gv_doc(&rest.join("/"))
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route),
            ["api", "v1", rest @ ..] => {
                let t = route("", "v1", rest)?;
                self.resource(req, role, t).await
            }
            ["apis", g, v, rest @ ..] => {
                let t = route(g, v, rest)?;
                self.resource(req, role, t).await
            }
            _ => Err(ApiError::no_route()),
        }
    }

    /// Reads the body, at most [`MAX_BODY`] bytes. A larger body is read on (up to
    /// [`DRAIN_LIMIT`]) and dropped, so the client sees the 413 instead of a broken connection.
    async fn read_body(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > DRAIN_LIMIT) {
            return Err(ApiError::too_large(MAX_BODY));
        }
        let mut body = req.into_body();
        let mut buf = BytesMut::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_LIMIT {
                    break;
                }
                if seen <= MAX_BODY {
                    buf.extend_from_slice(&data);
                }
            }
        }
        if seen > MAX_BODY {
            return Err(ApiError::too_large(MAX_BODY));
        }
        Ok((ct, buf.freeze()))
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        role: Role,
        t: Target,
    ) -> Result<Response<Body>, ApiError> {
        let q = parse_query(req.uri().query());
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        if !accept.contains("json") && !accept.contains("*/*") && !accept.is_empty() {
            return Err(ApiError {
                code: 406,
                reason: "NotAcceptable",
                message: format!("only the following media types are accepted: application/json (got {accept:?})"),
                details: None,
            });
        }
        let table = wants_table(&accept);
        let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
        let method = req.method().clone();
        let verb = match (&method, &t.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if flag(&q, "watch") => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, None) => "create",
            (&Method::PUT, Some(_)) => "update",
            (&Method::PATCH, Some(_)) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({method})"
                )))
            }
        };
        if !t.r.namespaced && t.ns.is_some() {
            return Err(ApiError::no_route());
        }
        if t.r.namespaced && t.ns.is_none() && !matches!(verb, "list" | "watch") {
            return Err(ApiError::no_route());
        }
        let read = matches!(verb, "get" | "list" | "watch");
        if role == Role::Node
            && !read
            && !(matches!(t.r.plural, "nodes" | "leases") || t.part == Part::Status)
        {
            return Err(forbidden(role, verb, &t));
        }
        let ns = t.ns.as_deref();
        let r = t.r;
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
        let fields =
            FieldSelector::parse(r.kind, q.get("fieldSelector").map_or("", String::as_str))?;
        match verb {
            "get" => {
                let kv = self
                    .registry
                    .get(r, ns, t.name.as_deref().unwrap_or_default())?;
                if table {
                    let obj = super::registry::decode(&kv)?;
                    let tab = table::table(
                        r,
                        &[obj],
                        serde_json::json!({"resourceVersion": kv.mod_revision.to_string()}),
                        include,
                    );
                    return Ok(value_response(StatusCode::OK, &tab));
                }
                Ok(json_response(StatusCode::OK, kv.value))
            }
            "list" => {
                let opts = ListOptions {
                    labels: labels.clone(),
                    fields: fields.clone(),
                    limit: match q.get("limit").filter(|l| !l.is_empty()) {
                        Some(l) => l.parse::<usize>().map_err(|_| {
                            ApiError::bad_request(format!("limit {l:?} is not a number"))
                        })?,
                        None => 0,
                    },
                    continue_token: q.get("continue").cloned(),
                    resource_version: q.get("resourceVersion").cloned(),
                    resource_version_match: q.get("resourceVersionMatch").cloned(),
                };
                let list = self.registry.list(r, ns, &opts)?;
                if table {
                    let objs = list
                        .items
                        .iter()
                        .map(|b| {
                            serde_json::from_slice(b).map_err(|e| ApiError::internal(e.to_string()))
                        })
                        .collect::<Result<Vec<Value>, _>>()?;
                    let mut meta =
                        serde_json::json!({"resourceVersion": list.revision.to_string()});
                    if let Some(c) = &list.continue_token {
                        meta["continue"] = Value::String(c.clone());
                    }
                    return Ok(value_response(
                        StatusCode::OK,
                        &table::table(r, &objs, meta, include),
                    ));
                }
                Ok(json_response(
                    StatusCode::OK,
                    list_bytes(
                        r,
                        &list.items,
                        list.revision,
                        list.continue_token.as_deref(),
                    ),
                ))
            }
            "watch" => {
                let timeout = match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
                    Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("timeoutSeconds {s:?} is not a number"))
                    })?),
                    None => DEFAULT_WATCH_TIMEOUT,
                };
                let opts = WatchOptions {
                    labels: labels.clone(),
                    fields: fields.clone(),
                    resource_version: q.get("resourceVersion").cloned(),
                    allow_bookmarks: flag(&q, "allowWatchBookmarks"),
                    send_initial_events: flag(&q, "sendInitialEvents"),
                    timeout,
                    format: if table {
                        Format::Table(include)
                    } else {
                        Format::Object
                    },
                };
                let rx = watch::start(self.registry.store().clone(), r, ns, opts)?;
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                Ok(Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CACHE_CONTROL, "no-cache, private")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .expect("response"))
            }
            "create" | "update" | "patch" => {
                let ua = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok());
                let opts = write_options(&q, ua)?;
                let (ct, body) = Self::read_body(req).await?;
                let written = match verb {
                    "create" => {
                        if t.part == Part::Status {
                            return Err(ApiError::method_not_allowed(
                                "create is not allowed on a status subresource",
                            ));
                        }
                        self.registry
                            .create(r, ns, parse_body(&ct, &body)?, &opts)
                            .await?
                    }
                    "update" => {
                        self.registry
                            .update(
                                r,
                                ns,
                                t.name.as_deref().unwrap_or_default(),
                                parse_body(&ct, &body)?,
                                t.part,
                                &opts,
                            )
                            .await?
                    }
                    _ => {
                        let ty = PatchType::from_content_type(&ct)
                            .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                        self.registry
                            .patch(
                                r,
                                ns,
                                t.name.as_deref().unwrap_or_default(),
                                Patch {
                                    ty,
                                    body: parse_body(&ct, &body)?,
                                },
                                t.part,
                                &opts,
                            )
                            .await?
                    }
                };
                let status = if written.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let mut resp = json_response(status, written.object);
                for w in written.warnings.iter().take(20) {
                    let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
                    if let Ok(v) = header::HeaderValue::from_str(&text) {
                        resp.headers_mut().append(header::WARNING, v);
                    }
                }
                Ok(resp)
            }
            "delete" => {
                let (ct, body) = Self::read_body(req).await?;
                let opts = delete_options(&q, &ct, &body)?;
                let name = t.name.as_deref().unwrap_or_default();
                let obj = self.registry.delete(r, ns, name, &opts).await?;
                Ok(json_response(StatusCode::OK, obj))
            }
            _ => {
                let (ct, body) = Self::read_body(req).await?;
                let opts = delete_options(&q, &ct, &body)?;
                let list_opts = ListOptions {
                    labels: labels.clone(),
                    fields: fields.clone(),
                    ..Default::default()
                };
                let list = self.registry.list(r, ns, &list_opts)?;
                let mut deleted = Vec::new();
                for item in &list.items {
                    let obj: Value = serde_json::from_slice(item)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    let name = obj
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                    match self.registry.delete(r, ns, name, &opts).await {
                        Ok(b) => deleted.push(b),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(json_response(
                    StatusCode::OK,
                    list_bytes(r, &deleted, self.registry.store().revision(), None),
                ))
            }
        }
    }
}

fn delete_options(
    q: &HashMap<String, String>,
    ct: &str,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        ..Default::default()
    };
    if let Some(g) = q.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        opts.grace_period_seconds = Some(g.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {g:?} is not a number"))
        })?);
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_body(ct, body)?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period_seconds = Some(g);
        }
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            opts.dry_run = true;
        }
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(opts)
}

/// Accepts TLS connections until `shutdown` resolves.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(move |req| api.clone().handle(req));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000);
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
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

    #[test]
    fn routes() {
        let t = route(
            "",
            "v1",
            &["namespaces", "default", "services", "web", "status"],
        )
        .unwrap();
        assert_eq!(
            (t.r.plural, t.ns.as_deref(), t.name.as_deref(), t.part),
            ("services", Some("default"), Some("web"), Part::Status)
        );
        let t = route("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (t.r.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = route("", "v1", &["namespaces", "default", "status"]).unwrap();
        assert_eq!(t.part, Part::Status);
        assert!(route(
            "",
            "v1",
            &["namespaces", "default", "configmaps", "x", "status"]
        )
        .is_err());
        assert!(route("", "v1", &["bogus"]).is_err());
        assert!(route("networking.k8s.io", "v1", &["ingresses"])
            .unwrap()
            .ns
            .is_none());
    }
}
