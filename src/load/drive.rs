//! The connection loops of every mode, the open-loop schedule, and connection set-up (TCP, TLS).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use super::stats::{ErrorClass, Recorder};
use super::target::{query, Scheme, Target};
use super::{http1, Config, LoadError, Shared};

/// One connection's assignment.
pub struct Lane {
    pub index: usize,
    pub target: Target,
    pub addr: SocketAddr,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Runs `lanes` on this thread until the run ends; returns what they recorded.
pub fn thread(
    lanes: Vec<Lane>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    tls: Option<Arc<rustls::ClientConfig>>,
    queries: Arc<Vec<Vec<u8>>>,
) -> Recorder {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start a runtime: {e}");
            return Recorder::default();
        }
    };
    let origin = Instant::now();
    rt.block_on(async move {
        let runs = lanes.into_iter().map(|lane| {
            let (shared, config, tls, queries) =
                (shared.clone(), config.clone(), tls.clone(), queries.clone());
            async move {
                let ctx = Ctx {
                    shared: &shared,
                    config: &config,
                    tls: tls.map(TlsConnector::from),
                    origin,
                };
                match lane.target.scheme {
                    Scheme::Http | Scheme::Https if config.http2 => ctx.http2(&lane).await,
                    Scheme::Http | Scheme::Https => ctx.http1(&lane).await,
                    Scheme::Tcp => ctx.tcp(&lane).await,
                    Scheme::Dns => ctx.dns(&lane, &queries).await,
                }
            }
        });
        let mut total = Recorder::default();
        for r in futures::future::join_all(runs).await {
            total.merge(r);
        }
        total
    })
}

const TIMER_TICK: Duration = Duration::from_millis(1);

/// When each request of one lane is due: now (closed loop), or every `lanes / rate` seconds,
/// staggered across lanes (open loop).
struct Schedule {
    interval: Option<Duration>,
    next: Instant,
}

impl Schedule {
    fn new(rate: Option<f64>, lanes: usize, lane: usize, origin: Instant) -> Schedule {
        let interval = rate.map(|r| Duration::from_secs_f64(lanes as f64 / r));
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(lane as f64 / lanes as f64));
        Schedule {
            interval,
            next: origin + offset,
        }
    }

    /// Waits until the next request is due and returns when it was due.
    async fn due(&mut self) -> Instant {
        match self.interval {
            None => Instant::now(),
            Some(i) => {
                let due = self.next;
                self.next += i;
                // tokio's timer ticks in milliseconds: sleep to within one, then yield until
                // the request is due, so the generator's own lateness stays out of the latency.
                let coarse = due.checked_sub(TIMER_TICK).filter(|t| *t > Instant::now());
                if let Some(t) = coarse {
                    tokio::time::sleep_until(t.into()).await;
                }
                while Instant::now() < due {
                    tokio::task::yield_now().await;
                }
                due
            }
        }
    }
}

/// An HTTP status code as text, without allocating.
fn status_text(code: u16, buf: &mut [u8; 3]) -> &str {
    let code = code.min(999);
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("???")
}

struct Ctx<'a> {
    shared: &'a Shared,
    config: &'a Config,
    tls: Option<TlsConnector>,
    origin: Instant,
}

impl Ctx<'_> {
    fn schedule(&self, lane: usize, streams: usize) -> Schedule {
        Schedule::new(
            self.config.rate,
            self.config.connections * streams,
            lane,
            self.origin,
        )
    }

    /// A connection to the lane's address (and TLS on it for https).
    async fn connect(&self, lane: &Lane) -> io::Result<Box<dyn Io>> {
        let tcp = tokio::time::timeout(self.config.timeout, TcpStream::connect(lane.addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        tcp.set_nodelay(true)?;
        match (&self.tls, lane.target.scheme) {
            (Some(tls), Scheme::Https) => {
                let name = self
                    .config
                    .host
                    .clone()
                    .unwrap_or_else(|| lane.target.host.clone());
                let name = name.split(':').next().unwrap_or_default().to_string();
                let server = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = tokio::time::timeout(self.config.timeout, tls.connect(server, tcp))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                Ok(Box::new(s))
            }
            _ => Ok(Box::new(tcp)),
        }
    }

    /// Records a connect failure (it counts as a request) and waits a little before the next
    /// attempt; false when the run is over.
    async fn connect_failed(&self, rec: &mut Recorder) -> bool {
        if !self.shared.next() {
            return false;
        }
        if self.shared.measuring(Instant::now()) {
            rec.error(ErrorClass::Connect);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        true
    }

    fn host(&self, lane: &Lane) -> String {
        self.config
            .host
            .clone()
            .unwrap_or_else(|| lane.target.authority())
    }

    async fn http1(&self, lane: &Lane) -> Recorder {
        let c = self.config;
        let mut rec = Recorder::default();
        let request = http1::request(
            &c.method,
            &lane.target.path,
            &self.host(lane),
            &c.headers,
            &c.body,
        );
        let head_only = c.method.eq_ignore_ascii_case("HEAD");
        let peer = lane.addr.to_string();
        let mut schedule = self.schedule(lane.index, 1);
        let mut code = [0u8; 3];
        'connection: while !self.shared.stopped() {
            let Ok(stream) = self.connect(lane).await else {
                if self.connect_failed(&mut rec).await {
                    continue;
                }
                break;
            };
            let mut conn = http1::Conn::new(stream);
            loop {
                if !self.shared.next() {
                    break 'connection;
                }
                let due = schedule.due().await;
                let answer = tokio::time::timeout(
                    c.timeout,
                    conn.exchange(&request, head_only, c.backend_header.as_deref()),
                )
                .await;
                let took = due.elapsed();
                let measuring = self.shared.measuring(due);
                match answer {
                    Ok(Ok(resp)) => {
                        self.shared
                            .done
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if measuring {
                            let backend = if c.by_peer {
                                Some(peer.as_str())
                            } else {
                                resp.backend.as_deref()
                            };
                            rec.ok(
                                took,
                                status_text(resp.status, &mut code),
                                backend,
                                resp.bytes,
                            );
                        }
                        if resp.close {
                            continue 'connection;
                        }
                    }
                    Ok(Err(e)) => {
                        if measuring {
                            rec.error(ErrorClass::of(&e));
                        }
                        continue 'connection;
                    }
                    Err(_) => {
                        if measuring {
                            rec.error(ErrorClass::Timeout);
                        }
                        continue 'connection;
                    }
                }
            }
        }
        rec
    }

    async fn http2(&self, lane: &Lane) -> Recorder {
        let c = self.config;
        let mut rec = Recorder::default();
        let scheme = if lane.target.scheme == Scheme::Https {
            "https"
        } else {
            "http"
        };
        let uri: http::Uri =
            match format!("{scheme}://{}{}", self.host(lane), lane.target.path).parse() {
                Ok(u) => u,
                Err(_) => return rec,
            };
        let body = Bytes::from(c.body.clone());
        let peer = lane.addr.to_string();
        let mut schedules: Vec<Schedule> = (0..c.streams)
            .map(|s| self.schedule(lane.index * c.streams + s, c.streams))
            .collect();
        while !self.shared.stopped() {
            let Ok(stream) = self.connect(lane).await else {
                if self.connect_failed(&mut rec).await {
                    continue;
                }
                break;
            };
            let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await;
            let (sender, connection) = match handshake {
                Ok(h) => h,
                Err(_) => {
                    if self.connect_failed(&mut rec).await {
                        continue;
                    }
                    break;
                }
            };
            tokio::spawn(connection);
            let streams = schedules.iter_mut().map(|schedule| {
                let mut sender = sender.clone();
                let (uri, body, peer) = (uri.clone(), body.clone(), peer.as_str());
                async move {
                    let mut rec = Recorder::default();
                    let mut code = [0u8; 3];
                    while self.shared.next() {
                        let due = schedule.due().await;
                        let req = http::Request::builder()
                            .method(c.method.as_str())
                            .uri(uri.clone());
                        let req = c.headers.iter().fold(req, |r, (k, v)| r.header(k, v));
                        let Ok(req) = req.body(Full::new(body.clone())) else {
                            rec.error(ErrorClass::Protocol);
                            return rec;
                        };
                        let exchange = async {
                            let resp = sender.send_request(req).await?;
                            let status = resp.status().as_u16();
                            let backend = c
                                .backend_header
                                .as_deref()
                                .and_then(|h| resp.headers().get(h))
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                            let bytes = resp.into_body().collect().await?.to_bytes().len();
                            Ok::<_, hyper::Error>((status, backend, bytes))
                        };
                        let answer = tokio::time::timeout(c.timeout, exchange).await;
                        let measuring = self.shared.measuring(due);
                        match answer {
                            Ok(Ok((status, backend, bytes))) => {
                                self.shared
                                    .done
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if measuring {
                                    let backend = if c.by_peer {
                                        Some(peer)
                                    } else {
                                        backend.as_deref()
                                    };
                                    rec.ok(
                                        due.elapsed(),
                                        status_text(status, &mut code),
                                        backend,
                                        bytes as u64,
                                    );
                                }
                            }
                            Ok(Err(e)) => {
                                if measuring {
                                    rec.error(if e.is_parse() || e.is_user() {
                                        ErrorClass::Protocol
                                    } else {
                                        ErrorClass::Reset
                                    });
                                }
                                return rec;
                            }
                            Err(_) => {
                                if measuring {
                                    rec.error(ErrorClass::Timeout);
                                }
                                return rec;
                            }
                        }
                    }
                    rec
                }
            });
            for r in futures::future::join_all(streams).await {
                rec.merge(r);
            }
        }
        rec
    }

    async fn tcp(&self, lane: &Lane) -> Recorder {
        let mut rec = Recorder::default();
        let mut schedule = self.schedule(lane.index, 1);
        let peer = lane.addr.to_string();
        while self.shared.next() {
            let due = schedule.due().await;
            let conn =
                tokio::time::timeout(self.config.timeout, TcpStream::connect(lane.addr)).await;
            let measuring = self.shared.measuring(due);
            match conn {
                Ok(Ok(s)) => {
                    // Close with a reset: no TIME_WAIT to run the client out of ports.
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                    self.shared
                        .done
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if measuring {
                        rec.ok(
                            due.elapsed(),
                            "connected",
                            self.config.by_peer.then_some(peer.as_str()),
                            0,
                        );
                    }
                }
                Ok(Err(_)) => {
                    if measuring {
                        rec.error(ErrorClass::Connect);
                    }
                }
                Err(_) => {
                    if measuring {
                        rec.error(ErrorClass::Timeout);
                    }
                }
            }
        }
        rec
    }

    async fn dns(&self, lane: &Lane, queries: &[Vec<u8>]) -> Recorder {
        let mut rec = Recorder::default();
        let bind = if lane.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = match UdpSocket::bind(bind).await {
            Ok(s) if s.connect(lane.addr).await.is_ok() => s,
            _ => {
                rec.error(ErrorClass::Connect);
                return rec;
            }
        };
        let mut schedule = self.schedule(lane.index, 1);
        let mut buf = vec![0u8; 4096];
        let mut k = lane.index;
        while self.shared.next() {
            let mut q = queries[k % queries.len()].clone();
            let id = (k as u16).wrapping_mul(7919);
            k += 1;
            q[..2].copy_from_slice(&id.to_be_bytes());
            let due = schedule.due().await;
            let exchange = async {
                sock.send(&q).await?;
                loop {
                    let n = sock.recv(&mut buf).await?;
                    if n >= 12 && buf[..2] == id.to_be_bytes() {
                        return Ok::<_, io::Error>((buf[3] & 0x0f, n));
                    }
                }
            };
            let answer = tokio::time::timeout(self.config.timeout, exchange).await;
            let measuring = self.shared.measuring(due);
            match answer {
                Ok(Ok((rcode, n))) => {
                    self.shared
                        .done
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if measuring {
                        let name = match rcode {
                            0 => "NOERROR",
                            1 => "FORMERR",
                            2 => "SERVFAIL",
                            3 => "NXDOMAIN",
                            4 => "NOTIMP",
                            5 => "REFUSED",
                            _ => "OTHER",
                        };
                        rec.ok(due.elapsed(), name, None, n as u64);
                    }
                }
                Ok(Err(_)) => {
                    if measuring {
                        rec.error(ErrorClass::Reset);
                    }
                }
                Err(_) => {
                    if measuring {
                        rec.error(ErrorClass::Timeout);
                    }
                }
            }
        }
        rec
    }
}

/// The queries of a dnsperf-style file (`name type` per line; `#` comments), as wire messages.
pub fn load_queries(path: &Path) -> Result<Vec<Vec<u8>>, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| LoadError::Config(format!("{}:{}: {why}", path.display(), i + 1));
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let rtype = words.next().unwrap_or("A");
        let rtype = hickory_proto::rr::RecordType::from_str(&rtype.to_ascii_uppercase())
            .map_err(|e| bad(format!("record type {rtype:?}: {e}")))?;
        out.push(query(name, rtype).map_err(bad)?);
    }
    if out.is_empty() {
        return Err(LoadError::Config(format!("{}: no queries", path.display())));
    }
    Ok(out)
}

/// Accepts any certificate (`--insecure`).
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The TLS client for https targets: the system's CA bundle, or any certificate with
/// `--insecure`; ALPN offers h2 with `--http2`, else http/1.1.
pub fn tls_config(c: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, LoadError> {
    if !c.targets.iter().any(|t| t.starts_with("https://")) {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Config(e.to_string()))?;
    let mut tls = if c.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        let bundle = "/etc/ssl/certs/ca-certificates.crt";
        let pem = std::fs::read(bundle).map_err(|e| {
            LoadError::Config(format!(
                "{bundle}: {e} (install ca-certificates, or use --insecure)"
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tls.alpn_protocols = if c.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(Arc::new(tls)))
}
