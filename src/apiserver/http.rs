//! HTTP: TLS connections (HTTP/1.1 and HTTP/2), bearer-token authentication, the node role's
//! authorization, and routing: health, version, discovery and OpenAPI paths here; resource paths
//! parsed into a [`RequestInfo`] and handed to the verb's handler ([`super::handlers`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::discovery;
use super::error::ApiError;
use super::handlers::{header_or_json, Context};
use super::registry::{Part, Registry};
use super::request::{parse_query, RequestInfo, Verb};

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused with 413, as kube-apiserver's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

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

pub(super) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("valid response")
}

pub(super) fn value_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_response(status, serde_json::to_vec(v).expect("json"))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    value_response(status, &e.status())
}

/// What a role may do: the admin everything; a node reads everything and writes only Nodes,
/// Leases and status subresources.
fn authorize(role: Role, t: &RequestInfo) -> Result<(), ApiError> {
    let r = &t.resource;
    let allowed = match role {
        Role::Admin => true,
        Role::Node => {
            t.verb.is_read()
                || matches!(r.plural.as_str(), "nodes" | "leases")
                || t.subresource == Part::Status
        }
    };
    if allowed {
        return Ok(());
    }
    let user = match role {
        Role::Admin => "admin",
        Role::Node => "system:node",
    };
    let ns = t
        .namespace
        .as_deref()
        .map(|n| format!(" in the namespace \"{n}\""))
        .unwrap_or_default();
    Err(ApiError::forbidden(format!(
        "{} \"{}\" is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\"{ns}",
        r.group_resource(),
        t.name(),
        t.verb.as_str(),
        r.plural,
        r.group
    )))
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
            ["apis"] if get => Ok(value_response(
                StatusCode::OK,
                &discovery::api_groups(self.registry.kinds()),
            )),
            ["api", "v1"] if get => Ok(value_response(
                StatusCode::OK,
                &discovery::resource_list(self.registry.kinds(), "", "v1").expect("core"),
            )),
            ["apis", g] if get => discovery::api_group(self.registry.kinds(), g)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route),
            ["apis", g, v] if get => discovery::resource_list(self.registry.kinds(), g, v)
                .map(|v| value_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route),
            ["openapi", "v3"] if get => Ok(value_response(
                StatusCode::OK,
                &discovery::openapi_index(self.registry.kinds()),
            )),
            ["openapi", "v3", rest @ ..] if get => {
                discovery::openapi_gv_doc(self.registry.kinds(), &rest.join("/"))
                    .map(|v| value_response(StatusCode::OK, &v))
                    .ok_or_else(ApiError::no_route)
            }
            ["api", "v1", rest @ ..] => self.resource(req, role, "", "v1", rest).await,
            ["apis", g, v, rest @ ..] => self.resource(req, role, g, v, rest).await,
            _ => Err(ApiError::no_route()),
        }
    }

    /// A request on a served resource: parsed once, authorized, negotiated, then handled by its
    /// verb's handler.
    async fn resource(
        &self,
        req: Request<Incoming>,
        role: Role,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> Result<Response<Body>, ApiError> {
        let query = parse_query(req.uri().query());
        let info = RequestInfo::parse(
            self.registry.kinds(),
            req.method(),
            group,
            version,
            rest,
            &query,
        )?;
        let accept = header_or_json(&req, header::ACCEPT);
        if !accept.contains("json") && !accept.contains("*/*") && !accept.is_empty() {
            return Err(ApiError {
                code: 406,
                reason: "NotAcceptable",
                message: format!("only the following media types are accepted: application/json (got {accept:?})"),
                details: None,
            });
        }
        authorize(role, &info)?;
        let cx = Context::new(query, &accept, &info.resource)?;
        match info.verb {
            Verb::Get => self.get(&info, &cx),
            Verb::List => self.list(&info, &cx),
            Verb::Watch => self.watch(&info, &cx),
            Verb::Create | Verb::Update | Verb::Patch => self.write(req, &info, &cx).await,
            Verb::Delete => self.delete(req, &info, &cx).await,
            Verb::DeleteCollection => self.delete_collection(req, &info, &cx).await,
        }
    }
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
