//! The ingress router: Kubernetes Ingress v1 host/path routing over HTTP/1.1 and HTTP/2, with
//! TLS (certificates chosen by SNI), WebSocket and other upgrades, pooled upstream connections
//! and passive health.
//!
//! It reads a [`RouteTable`](routes::RouteTable) from a [`RouteSource`] once per request, so a
//! configuration change is one pointer swap: nothing reloads, and requests in flight and
//! upgraded connections keep running on the table they started with.

pub mod annotations;
pub mod routes;
mod server;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::{escape, header};
use routes::{IngressName, RouteTable};
use upstream::BackendStats;

/// Where the router gets the current routes.
pub trait RouteSource: Send + Sync + 'static {
    fn routes(&self) -> Arc<RouteTable>;
}

#[derive(Clone)]
pub struct Config {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// Served to TLS clients whose server name has no certificate of its own.
    pub default_cert: Arc<CertifiedKey>,
    /// A client must send its request headers (and finish a TLS handshake) within this time.
    pub header_timeout: Duration,
    /// Request headers larger than this get 431.
    pub max_header_bytes: usize,
    /// Connections beyond this wait in the kernel's accept queue.
    pub max_connections: usize,
    /// One line per request through tracing (target `switchyard::access`).
    pub access_log: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("header_timeout", &self.header_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(default_cert: Arc<CertifiedKey>) -> Config {
        Config {
            http: None,
            https: None,
            default_cert,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 16_384,
            access_log: true,
        }
    }
}

/// Picks the certificate for each TLS handshake from the current routes.
struct Resolver {
    source: Arc<dyn RouteSource>,
    default: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.source.routes().certificate(name))
            .or_else(|| Some(self.default.clone()))
    }
}

/// Bound listeners, so a taken address is an error at start.
pub struct Listeners {
    http: Option<TcpListener>,
    https: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let bind = |addr: Option<SocketAddr>| async move {
            match addr {
                Some(a) => TcpListener::bind(a).await.map(Some).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("ingress listener {a}: {e}"))
                }),
                None => Ok(None),
            }
        };
        Ok(Listeners {
            http: bind(config.http).await?,
            https: bind(config.https).await?,
        })
    }
}

/// A running router.
pub struct Router {
    shared: Arc<server::Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Router {
    /// Serves on the bound listeners until dropped.
    pub fn start(config: Config, listeners: Listeners, source: Arc<dyn RouteSource>) -> Router {
        let tls = listeners.https.as_ref().map(|_| {
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver {
                source: source.clone(),
                default: config.default_cert.clone(),
            }));
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(tls))
        });
        let shared = Arc::new(server::Shared {
            source,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            unrouted: BackendStats::new(
                &IngressName {
                    namespace: String::new(),
                    name: String::new(),
                },
                "",
            ),
        });
        let mut tasks = Vec::new();
        if let Some(l) = listeners.http {
            tasks.push(tokio::spawn(server::accept_loop(shared.clone(), l, None)));
        }
        if let Some(l) = listeners.https {
            tasks.push(tokio::spawn(server::accept_loop(shared.clone(), l, tls)));
        }
        Router { shared, tasks }
    }

    /// The router's Prometheus metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let routes = self.shared.source.routes();
        let mut backends: Vec<&BackendStats> = routes.backends().map(|b| &**b).collect();
        backends.push(&self.shared.unrouted);
        backends.sort_by(|a, b| (&a.ingress, &a.service).cmp(&(&b.ingress, &b.service)));
        let labels = |b: &BackendStats| {
            format!(
                "namespace=\"{}\",ingress=\"{}\",service=\"{}\"",
                escape(&b.ingress.namespace),
                escape(&b.ingress.name),
                escape(&b.service)
            )
        };
        let name = "switchyard_ingress_requests_total";
        header(
            name,
            "Requests by Ingress, backend service and status code.",
            "counter",
            out,
        );
        for b in &backends {
            for (status, n) in b.statuses() {
                out.push_str(&format!(
                    "{name}{{{},status=\"{status}\"}} {n}\n",
                    labels(b)
                ));
            }
        }
        let name = "switchyard_ingress_request_duration_seconds";
        header(
            name,
            "Time from a request's arrival to its response headers, by Ingress and backend service.",
            "histogram",
            out,
        );
        for b in backends.iter().filter(|b| b.latency.count() > 0) {
            b.latency.render_series(name, &labels(b), out);
        }
        let name = "switchyard_ingress_hosts";
        header(name, "Hosts with Ingress rules.", "gauge", out);
        out.push_str(&format!("{name} {}\n", routes.host_count()));
    }
}

impl Router {
    /// Stops accepting connections.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}
