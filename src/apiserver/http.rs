//! HTTP: TLS connections (HTTP/1.1 and HTTP/2, client certificates verified against our CA),
//! authentication ([`super::auth`]) and authorization ([`super::authz`]) of every request but
//! health and version, and routing: discovery and OpenAPI paths here, the reviews and
//! TokenRequest in [`super::reviews`], resource paths parsed into a [`RequestInfo`] and handed to
//! the verb's handler ([`super::handlers`]).

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

use super::auth::{self, tokens, Impersonation, User};
use super::authz;
use super::discovery;
use super::error::ApiError;
use super::handlers::{header_or_json, Context};
use super::registry::Registry;
use super::request::{parse_query, RequestInfo, Verb};
use tokens::Signer;

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused with 413, as kube-apiserver's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Api {
    pub registry: Arc<Registry>,
    pub admin_token: String,
    /// The admin, built once.
    pub admin: Arc<User>,
    pub signer: Arc<Signer>,
    pub authz: Arc<authz::State>,
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
    json_response(status, e.status_json())
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Api {
    /// The user of a bearer token, if it proves one.
    fn token_user(&self, token: &str) -> Option<Arc<User>> {
        if same(token, &self.admin_token) {
            return Some(self.admin.clone());
        }
        if tokens::is_jwt(token) {
            let v = self.signer.verify(token, unix_now()).ok()?;
            let k = &v.claims.kubernetes;
            // Bound to the account: a deleted (or re-created) ServiceAccount's tokens stop.
            let uid = self
                .authz
                .service_account_uid(&k.namespace, &k.serviceaccount.name)?;
            return (uid == k.serviceaccount.uid).then(|| v.user.clone());
        }
        let id = auth::bootstrap_token_id(token)?;
        let secret = self.authz.bootstrap_secret(id)?;
        bootstrap_user(&secret, id, &token[7..], unix_now()).map(Arc::new)
    }

    /// Who the request is from (a bearer token, else the client certificate), and who it acts
    /// as when it impersonates (which needs the `impersonate` verb).
    fn authenticate(
        &self,
        req: &Request<Incoming>,
        cert: Option<&Arc<User>>,
    ) -> Result<Arc<User>, ApiError> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let user = match bearer {
            Some(t) => self.token_user(t).ok_or_else(ApiError::unauthorized)?,
            None => cert.cloned().ok_or_else(ApiError::unauthorized)?,
        };
        let Some(imp) =
            Impersonation::from_headers(req.headers()).map_err(ApiError::bad_request)?
        else {
            return Ok(user);
        };
        let target = imp.user();
        let check = |group: &str, resource: &str, ns: Option<&str>, name: &str| {
            self.authz.authorize(&authz::Attributes {
                user: &user,
                verb: "impersonate",
                namespace: ns,
                group,
                resource,
                subresource: "",
                name,
                path: None,
            })
        };
        match target.service_account_of() {
            Some((ns, sa)) => check("", "serviceaccounts", Some(ns), sa)?,
            None => check("", "users", None, &target.name)?,
        }
        for g in &imp.groups {
            check("", "groups", None, g)?;
        }
        if let Some(uid) = &imp.uid {
            check("authentication.k8s.io", "uids", None, uid)?;
        }
        Ok(Arc::new(target))
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        cert: Option<Arc<User>>,
    ) -> Result<Response<Body>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = match self.dispatch(req, cert.as_ref()).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
        Ok(resp)
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        cert: Option<&Arc<User>>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" | "/healthz/ping" | "/livez/ping"
            | "/readyz/ping" => {
                let unwritable = self.registry.store().unwritable();
                return if path.starts_with("/readyz") && !self.ready.load(Ordering::Acquire) {
                    Err(ApiError::service_unavailable("not ready"))
                } else if let (true, Some(why)) = (path.starts_with("/readyz"), unwritable) {
                    Err(ApiError::service_unavailable(format!(
                        "not ready: the store cannot write: {why}"
                    )))
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
        let user = self.authenticate(&req, cert)?;
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let get = req.method() == Method::GET;
        let post = req.method() == Method::POST;
        // The reviews and TokenRequest are answered, not stored.
        match segs.as_slice() {
            ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if post => {
                return self.self_subject_review(req, &user).await;
            }
            ["apis", "authorization.k8s.io", "v1", kind @ ("selfsubjectaccessreviews" | "subjectaccessreviews")]
                if post =>
            {
                return self.access_review(req, &user, kind).await;
            }
            ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] if post => {
                return self.token_request(req, &user, ns, name).await;
            }
            _ => {}
        }
        let is_resource = matches!(
            segs.as_slice(),
            ["api", "v1", _, ..] | ["apis", _, _, _, ..]
        );
        if !is_resource {
            let verb = req.method().as_str().to_ascii_lowercase();
            self.authz.authorize(&authz::Attributes {
                user: &user,
                verb: &verb,
                namespace: None,
                group: "",
                resource: "",
                subresource: "",
                name: "",
                path: Some(&path),
            })?;
        }
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
            ["api", "v1", rest @ ..] => self.resource(req, &user, "", "v1", rest).await,
            ["apis", g, v, rest @ ..] => self.resource(req, &user, g, v, rest).await,
            _ => Err(ApiError::no_route()),
        }
    }

    /// A request on a served resource: parsed once, authorized, negotiated, then handled by its
    /// verb's handler.
    async fn resource(
        &self,
        req: Request<Incoming>,
        user: &Arc<User>,
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
        let r = &info.resource;
        let attrs = authz::Attributes {
            user,
            verb: info.verb.as_str(),
            namespace: info.namespace.as_deref(),
            group: &r.group,
            resource: &r.plural,
            subresource: info.subresource.as_str(),
            name: info.name(),
            path: None,
        };
        self.authz.authorize(&attrs)?;
        let cx = Context::new(query, &accept, &info.resource)?;
        match info.verb {
            Verb::Get => self.get(&info, &cx),
            Verb::List => self.list(&info, &cx),
            Verb::Watch => self.watch(&info, &cx).await,
            Verb::Create | Verb::Update | Verb::Patch => {
                let guard = super::reviews::write_guard(self, user, &info);
                self.write(req, &info, &cx, guard).await
            }
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
            // A client certificate (verified against our CA by the handshake) names the user.
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::from_certificate(c))
                .map(Arc::new);
            let service =
                hyper::service::service_fn(move |req| api.clone().handle(req, cert.clone()));
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

/// The user of a bootstrap token (`id.secret`) whose Secret says it may authenticate and has not
/// expired: `system:bootstrap:ID` in `system:bootstrappers` and the Secret's extra groups.
fn bootstrap_user(secret: &Value, id: &str, token_secret: &str, now: u64) -> Option<User> {
    use base64::Engine;
    let field = |k: &str| -> Option<String> {
        let v = secret.pointer(&format!("/data/{k}"))?.as_str()?;
        let b = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        String::from_utf8(b).ok()
    };
    if secret.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token")
        || field("token-id")? != id
        || !same(&field("token-secret")?, token_secret)
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(exp) = field("expiration") {
        let exp = crate::time::parse(&exp)?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        if exp <= now {
            return None;
        }
    }
    let extra = field("auth-extra-groups").unwrap_or_default();
    let mut groups = vec![auth::BOOTSTRAPPERS];
    groups.extend(
        extra
            .split(',')
            .map(str::trim)
            .filter(|g| g.starts_with("system:bootstrappers:")),
    );
    Some(User::new(format!("system:bootstrap:{id}"), &groups))
}
