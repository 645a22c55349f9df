//! The L7 router: Kubernetes Ingress v1 host/path routing (Gateway API routes will share the same
//! [`RouteTable`](routes::RouteTable)) over HTTP/1.1 and HTTP/2, with TLS (certificates chosen by
//! SNI), WebSocket and other upgrades, pooled upstream connections and passive health. It
//! depends on nothing of the L4 proxy modes.
//!
//! - [`routes`]: the route table (hosts, paths, backends and their stats), built off the hot
//!   path; [`annotations`]: the per-Ingress settings; [`upstream`]: pooled upstream connections;
//!   `server`: the accept loops, the request path and forwarding.
//!
//! It reads a [`RouteTable`](routes::RouteTable) from a [`RouteSource`] once per request, so a
//! configuration change is one pointer swap: nothing reloads, and requests in flight and
//! upgraded connections keep running on the table they started with.
//!
//! It runs as `threads` independent event loops, each a single-threaded runtime on its own OS
//! thread with its own `SO_REUSEPORT` listeners and its own upstream connection pools (the way
//! nginx runs workers): a request never crosses threads, and nothing on its path is contended.

pub mod annotations;
mod request;
pub mod routes;
mod server;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;

use crate::metrics::{escape, header};
use routes::{BackendStats, IngressName, RouteTable};

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
    /// Event loops (OS threads), each accepting on its own `SO_REUSEPORT` listeners.
    pub threads: usize,
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
            .field("threads", &self.threads)
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
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
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

/// A listening socket that other sockets may share with `SO_REUSEPORT`.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One listener per event loop and address, bound before anything runs, so a taken address is
/// an error at start.
pub struct Listeners {
    /// Per event loop: (HTTP, HTTPS).
    sets: Vec<(Option<std::net::TcpListener>, Option<std::net::TcpListener>)>,
}

impl Listeners {
    pub fn bind(config: &Config) -> std::io::Result<Listeners> {
        let bind = |addr: Option<SocketAddr>,
                    n: usize|
         -> std::io::Result<Vec<Option<std::net::TcpListener>>> {
            let Some(addr) = addr else {
                return Ok((0..n).map(|_| None).collect());
            };
            let err = |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("ingress listener {addr}: {e}"))
            };
            let first = reuseport_listener(addr).map_err(err)?;
            // With port 0, the others share the port the first one got.
            let addr = first.local_addr()?;
            let mut out = vec![Some(first)];
            for _ in 1..n {
                out.push(Some(reuseport_listener(addr).map_err(err)?));
            }
            Ok(out)
        };
        let n = config.threads.max(1);
        let http = bind(config.http, n)?;
        let https = bind(config.https, n)?;
        Ok(Listeners {
            sets: http.into_iter().zip(https).collect(),
        })
    }
}

/// A running router.
pub struct Router {
    shared: Arc<server::Shared>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Router {
    /// Starts one event loop per listener set; they serve until [`Router::stop`].
    pub fn start(config: Config, listeners: Listeners, source: Arc<dyn RouteSource>) -> Router {
        let tls = {
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
        };
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        for (i, (http, https)) in listeners.sets.into_iter().enumerate() {
            let (shared, tls, mut stopped) = (shared.clone(), tls.clone(), stopped.clone());
            let run = move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("an ingress event loop");
                rt.block_on(async move {
                    let mut loops = tokio::task::JoinSet::new();
                    for (l, tls) in [(http, None), (https, Some(tls))] {
                        let Some(l) = l else { continue };
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => {
                                loops.spawn(server::accept_loop(shared.clone(), l, tls));
                            }
                            Err(e) => tracing::error!(error = %e, "ingress listener unusable"),
                        }
                    }
                    let _ = stopped.wait_for(|s| *s).await;
                    loops.abort_all();
                });
            };
            if let Err(e) = std::thread::Builder::new()
                .name(format!("ingress-{i}"))
                .spawn(run)
            {
                tracing::error!(error = %e, "could not start an ingress event loop");
            }
        }
        Router { shared, stop }
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
    /// Stops the event loops, closing their connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}
