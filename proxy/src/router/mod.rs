//! The L7 router: Kubernetes Ingress v1 and Gateway API HTTPRoute routing from one
//! [`RouteTable`](routes::RouteTable), over HTTP/1.1 and HTTP/2, with TLS (certificates chosen by
//! SNI), WebSocket upgrades, pooled upstream connections and passive health. It depends on
//! nothing of the L4 proxy modes.
//!
//! - [`routes`]: the route table (hosts, paths, backends and their stats), built off the hot
//!   path; [`annotations`]: the per-Ingress settings; [`upstream`]: pooled upstream connections;
//!   `server`: the accept loops, the request path and forwarding; `fast` and `h1`: the
//!   router's own HTTP/1.1 server and client for the common request (hyper for the rest);
//!   `h2`: its HTTP/2 server, on the h2 crate.
//!
//! It reads a [`RouteTable`](routes::RouteTable) from a [`RouteSource`] once per request, so a
//! configuration change is one pointer swap: nothing reloads, and requests in flight and
//! upgraded connections keep running on the table they started with.
//!
//! It runs as `threads` independent event loops, each a single-threaded runtime on its own OS
//! thread with its own `SO_REUSEPORT` listeners and its own upstream connection pools (the way
//! nginx runs workers): a request never crosses threads, and nothing on its path is contended.
//!
//! Listeners: the ingress ports (`http`, `https`) are bound at start. Each Gateway listener port
//! of the route table is opened on the ingress address when the table names it
//! ([`Router::sync_listeners`]) and closed when no listener names it any more; a Gateway
//! listener on an ingress port shares that port's listener (and must then speak its protocol).

mod access;
pub mod annotations;
pub mod cors;
mod fast;
mod h1;
mod h2;
mod hop;
mod mirror;
mod request;
pub mod routes;
mod server;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;

use crate::metrics::{escape, header};
pub use access::Format as AccessLogFormat;
use routes::{BackendStats, Owner, OwnerKind, RouteTable};

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
    /// One line per request (target `switchyard::access`), when the log filter lets info
    /// events of that target through.
    pub access_log: bool,
    /// The access log's line format: the process's log format.
    pub access_log_format: AccessLogFormat,
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
            .field("access_log_format", &self.access_log_format)
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
            access_log_format: AccessLogFormat::Text,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Picks the certificate for each TLS handshake on one port from the current routes.
struct Resolver {
    source: Arc<dyn RouteSource>,
    default: Arc<CertifiedKey>,
    port: u16,
    /// The ingress HTTPS port (Ingress certificates count).
    ingress: bool,
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
            .and_then(|name| {
                self.source
                    .routes()
                    .certificate(self.port, self.ingress, name)
            })
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

/// What an event loop is told to do with a Gateway listener port.
enum Command {
    Listen {
        port: u16,
        listener: std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
    Close(u16),
}

/// The Gateway listener ports that are open, and the ones that could not be.
#[derive(Default)]
struct Ports {
    open: HashMap<u16, bool>,
    errors: BTreeMap<u16, String>,
}

/// A running router.
pub struct Router {
    shared: Arc<server::Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    loops: Vec<tokio::sync::mpsc::UnboundedSender<Command>>,
    /// The event loops' threads, waited for briefly on stop.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    ports: Mutex<Ports>,
}

/// A TLS acceptor whose certificates come from the route table for `port`.
fn acceptor(
    source: &Arc<dyn RouteSource>,
    config: &Config,
    port: u16,
    ingress: bool,
) -> tokio_rustls::TlsAcceptor {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Resolver {
        source: source.clone(),
        default: config.default_cert.clone(),
        port,
        ingress,
    }));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

impl Router {
    /// Starts one event loop per listener set; they serve until [`Router::stop`].
    pub fn start(mut config: Config, listeners: Listeners, source: Arc<dyn RouteSource>) -> Router {
        // The log filter decides once, as it would for each event.
        config.access_log &= tracing::enabled!(target: "switchyard::access", tracing::Level::INFO);
        let https_port = config.https.map_or(0, |a| a.port());
        let tls = acceptor(&source, &config, https_port, true);
        let shared = Arc::new(server::Shared {
            source,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            mirror_slots: Arc::new(Semaphore::new(mirror::MAX_MIRRORS)),
            mirrored: Default::default(),
            config,
            unrouted: BackendStats::new(&Arc::new(Owner::ingress("", "")), ""),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut loops = Vec::new();
        let mut threads = Vec::new();
        for (i, (http, https)) in listeners.sets.into_iter().enumerate() {
            let (shared, tls, mut stopped) = (shared.clone(), tls.clone(), stopped.clone());
            let (commands, mut received) = tokio::sync::mpsc::unbounded_channel();
            loops.push(commands);
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
                                loops.spawn(server::accept_loop(shared.clone(), l, tls, true));
                            }
                            Err(e) => tracing::error!(error = %e, "ingress listener unusable"),
                        }
                    }
                    let mut gateway = HashMap::new();
                    loop {
                        tokio::select! {
                            _ = stopped.wait_for(|s| *s) => break,
                            command = received.recv() => match command {
                                None => break,
                                Some(Command::Listen { port, listener, tls }) => {
                                    match tokio::net::TcpListener::from_std(listener) {
                                        Ok(l) => {
                                            let run = server::accept_loop(shared.clone(), l, tls, false);
                                            if let Some(old) = gateway.insert(port, loops.spawn(run)) {
                                                old.abort();
                                            }
                                        }
                                        Err(e) => tracing::error!(port, error = %e, "gateway listener unusable"),
                                    }
                                }
                                Some(Command::Close(port)) => {
                                    if let Some(h) = gateway.remove(&port) {
                                        h.abort();
                                    }
                                }
                            },
                        }
                    }
                    loops.abort_all();
                    access::flush();
                });
            };
            match std::thread::Builder::new()
                .name(format!("ingress-{i}"))
                .spawn(run)
            {
                Ok(thread) => threads.push(thread),
                Err(e) => tracing::error!(error = %e, "could not start an ingress event loop"),
            }
        }
        Router {
            shared,
            stop,
            loops,
            threads: Mutex::new(threads),
            ports: Mutex::new(Ports::default()),
        }
    }

    /// Opens the Gateway listener ports the current route table names and closes the others;
    /// returns the ports that could not be served, with the reason. Connections already
    /// accepted on a closed port run on.
    pub fn sync_listeners(&self) -> BTreeMap<u16, String> {
        let config = &self.shared.config;
        let wanted: HashMap<u16, bool> = self.shared.source.routes().listener_ports().collect();
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        ports.errors.clear();
        let ip = config.http.or(config.https).map(|a| a.ip());
        let closing: Vec<u16> = ports
            .open
            .iter()
            .filter(|(p, tls)| wanted.get(p) != Some(tls))
            .map(|(p, _)| *p)
            .collect();
        for port in closing {
            ports.open.remove(&port);
            for l in &self.loops {
                let _ = l.send(Command::Close(port));
            }
        }
        for (&port, &tls) in &wanted {
            let shared_with = [(config.http, false), (config.https, true)]
                .into_iter()
                .find(|(a, _)| a.is_some_and(|a| a.port() == port));
            if let Some((_, ingress_tls)) = shared_with {
                if ingress_tls != tls {
                    let (is, wants) = if ingress_tls {
                        ("HTTPS", "HTTP")
                    } else {
                        ("HTTP", "HTTPS")
                    };
                    ports.errors.insert(
                        port,
                        format!("port {port} is the router's {is} ingress port; an {wants} listener cannot share it"),
                    );
                }
                continue;
            }
            if ports.open.contains_key(&port) {
                continue;
            }
            let Some(ip) = ip else {
                ports
                    .errors
                    .insert(port, "the router has no listen address".into());
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            let bound: std::io::Result<Vec<std::net::TcpListener>> = (0..self.loops.len())
                .map(|_| reuseport_listener(addr))
                .collect();
            match bound {
                Ok(listeners) => {
                    let tls = tls.then(|| acceptor(&self.shared.source, config, port, false));
                    for (l, listener) in self.loops.iter().zip(listeners) {
                        let tls = tls.clone();
                        let _ = l.send(Command::Listen {
                            port,
                            listener,
                            tls,
                        });
                    }
                    ports.open.insert(port, tls.is_some());
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "gateway listener port not served");
                    ports.errors.insert(port, format!("{addr}: {e}"));
                }
            }
        }
        ports.errors.clone()
    }

    /// The router's Prometheus metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let routes = self.shared.source.routes();
        let mut backends: Vec<&BackendStats> = routes.backends().map(|b| &**b).collect();
        backends.push(&self.shared.unrouted);
        backends.sort_by(|a, b| (&a.owner, &a.service).cmp(&(&b.owner, &b.service)));
        // Ingress backends are labelled by Ingress, route backends by route.
        let labels = |b: &BackendStats| {
            let kind = match b.owner.kind {
                OwnerKind::Ingress => "ingress",
                OwnerKind::HttpRoute => "httproute",
                OwnerKind::GrpcRoute => "grpcroute",
            };
            format!(
                "namespace=\"{}\",{kind}=\"{}\",service=\"{}\"",
                escape(&b.owner.namespace),
                escape(&b.owner.name),
                escape(&b.service)
            )
        };
        let name = "switchyard_ingress_requests_total";
        header(
            name,
            "Requests by Ingress or route, backend service and status code.",
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
            "Time from a request's arrival to its response headers, by Ingress or route and backend service.",
            "histogram",
            out,
        );
        for b in backends.iter().filter(|b| b.latency.count() > 0) {
            b.latency.render_series(name, &labels(b), out);
        }
        let name = "switchyard_ingress_mirrored_requests_total";
        header(
            name,
            "Copies of requests sent by RequestMirror filters, by outcome (answered, failed, or skipped with too many in flight).",
            "counter",
            out,
        );
        let m = &self.shared.mirrored;
        for (result, n) in [
            ("answered", &m.answered),
            ("failed", &m.failed),
            ("skipped", &m.skipped),
        ] {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            out.push_str(&format!("{name}{{result=\"{result}\"}} {n}\n"));
        }
        let name = "switchyard_ingress_hosts";
        header(name, "Hosts with Ingress rules.", "gauge", out);
        out.push_str(&format!("{name} {}\n", routes.host_count()));
    }
}

impl Router {
    /// Stops the event loops, closing their connections.
    /// Stops the event loops, and waits up to a second for them to end (they write their last
    /// access-log lines as they do).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for t in threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}
