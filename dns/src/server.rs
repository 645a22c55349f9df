//! The DNS server: hickory-server's UDP and TCP front ends (every hickory-server call is in this
//! module), our request handler, and what it reports per query.
//!
//! The handler loads the current zone once per query (no lock, no await before the answer for
//! the cluster zone), answers authoritatively for the cluster domain, and forwards everything
//! else. Until the agent has published its first zone, cluster names get SERVFAIL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::zone::{Answer, ClusterZone};

/// What happened to one query, for metrics.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    pub tcp: bool,
    pub ipv6: bool,
    /// The query type's number (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
    /// The response code's number (0 = NOERROR, 3 = NXDOMAIN, ...).
    pub rcode: u16,
    pub duration: Duration,
    /// For forwarded queries: answered from the cache.
    pub cache_hit: Option<bool>,
}

/// Receives a report of every query.
pub trait Observer: Send + Sync + 'static {
    fn served(&self, s: Served);
}

/// Where the current zone comes from (the node agent's published snapshot). `None` until the
/// first one is built.
pub trait ZoneSource: Send + Sync + 'static {
    fn zone(&self) -> Option<Arc<ClusterZone>>;
}

pub struct Handler {
    zone: Arc<dyn ZoneSource>,
    /// The largest UDP response sent, whatever the client advertises (and what we advertise).
    udp_payload: u16,
    /// The cluster domain, to refuse its names with SERVFAIL before the first zone.
    domain: LowerName,
    forwarder: Forwarder,
    observer: Arc<dyn Observer>,
}

/// What a query turned into, before it is sent.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    cache_hit: Option<bool>,
}

impl Reply {
    fn code(code: ResponseCode) -> Self {
        Reply {
            code,
            authoritative: false,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
            cache_hit: None,
        }
    }
}

/// The UDP payload limit by default: what fits a 1280-byte IPv6 minimum MTU without
/// fragmentation (the DNS Flag Day 2020 value).
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;

impl Handler {
    /// Caps UDP responses at `limit` bytes (at least 512): larger answers are truncated (TC) and
    /// the client retries over TCP.
    pub fn with_udp_payload(mut self, limit: u16) -> Self {
        self.udp_payload = limit.max(512);
        self
    }

    pub fn new(
        zone: Arc<dyn ZoneSource>,
        domain: &str,
        forwarder: Forwarder,
        observer: Arc<dyn Observer>,
    ) -> Option<Self> {
        let domain =
            LowerName::new(&Name::from_ascii(format!("{}.", domain.trim_end_matches('.'))).ok()?);
        Some(Handler {
            zone,
            udp_payload: DEFAULT_UDP_PAYLOAD,
            domain,
            forwarder,
            observer,
        })
    }

    async fn answer(&self, request: &Request) -> Reply {
        if request.metadata.message_type != MessageType::Query {
            return Reply::code(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::code(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Reply::code(ResponseCode::FormErr);
        };
        let (name, qtype) = (info.query.name(), info.query.query_type());
        // No zone transfers: the cluster zone is built from the API, not served to secondaries.
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::code(ResponseCode::Refused);
        }
        let asked: &Name = &info.query.original().name;
        let zone = self.zone.zone();
        let found = match zone.as_deref() {
            Some(z) => z.lookup(name, qtype),
            None if self.domain.zone_of(name) => return Reply::code(ResponseCode::ServFail),
            None => Answer::NotOurs,
        };
        let authoritative = |code, answers, additionals, soa: Option<&Record>| Reply {
            code,
            authoritative: true,
            answers,
            authorities: soa.into_iter().cloned().collect(),
            additionals,
            cache_hit: None,
        };
        match found {
            Answer::Records {
                answers,
                additionals,
            } => {
                // Names are echoed as asked.
                let mut answers: Vec<Record> = answers
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r.name = asked.clone();
                        r
                    })
                    .collect();
                if qtype != RecordType::CNAME {
                    self.chase(zone.as_deref(), qtype, &mut answers).await;
                }
                authoritative(
                    ResponseCode::NoError,
                    answers,
                    additionals.into_iter().cloned().collect(),
                    None,
                )
            }
            Answer::Pod(record) => {
                let mut record = *record;
                record.name = asked.clone();
                authoritative(ResponseCode::NoError, vec![record], vec![], None)
            }
            Answer::NoData => authoritative(
                ResponseCode::NoError,
                vec![],
                vec![],
                zone.as_deref().map(ClusterZone::soa),
            ),
            Answer::NxDomain => authoritative(
                ResponseCode::NXDomain,
                vec![],
                vec![],
                zone.as_deref().map(ClusterZone::soa),
            ),
            // Our own loop probe, back from the upstreams: not forwarded again.
            Answer::NotOurs if self.forwarder.is_probe(name) => Reply::code(ResponseCode::ServFail),
            Answer::NotOurs => match self.forwarder.resolve(info.query.original()).await {
                Ok(f) => Reply {
                    code: f.code,
                    authoritative: false,
                    answers: f.answers,
                    authorities: f.authorities,
                    additionals: vec![],
                    cache_hit: Some(f.cached),
                },
                Err(e) => {
                    tracing::debug!(name = %asked, error = %e, "forwarding failed");
                    Reply::code(ResponseCode::ServFail)
                }
            },
        }
    }
}

/// How many CNAMEs an answer follows (an ExternalName to an ExternalName, and so on).
const CNAME_CHAIN: usize = 8;

impl Handler {
    /// Follows a CNAME answer (an ExternalName) to the target's records of `qtype`, in the same
    /// answer as the DNS spec's example and CoreDNS give it: stub resolvers do not chase a CNAME
    /// themselves. A target in the zone is answered from the zone, any other through the
    /// forwarder (whose answer may carry its own CNAMEs). What cannot be found leaves the CNAME.
    async fn chase(
        &self,
        zone: Option<&ClusterZone>,
        qtype: RecordType,
        answers: &mut Vec<Record>,
    ) {
        for _ in 0..CNAME_CHAIN {
            let Some(RData::CNAME(target)) = answers.last().map(|r| &r.data) else {
                return;
            };
            let target = target.0.clone();
            if answers.iter().any(|r| r.name == target) {
                return; // A loop.
            }
            let found = zone.map(|z| z.lookup(&LowerName::new(&target), qtype));
            match found {
                Some(Answer::Records { answers: more, .. }) => answers.extend(more.iter().cloned()),
                Some(Answer::NotOurs) | None => {
                    let query = hickory_proto::op::Query::query(target, qtype);
                    if let Ok(f) = self.forwarder.resolve(&query).await {
                        answers.extend(f.answers);
                    }
                    return;
                }
                Some(_) => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let unanswered = || {
            let metadata = Metadata::response_from_request(&request.metadata);
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        // A response is never answered: two servers (or a spoofed source) would bounce
        // messages between them forever.
        if request.metadata.message_type != MessageType::Query {
            return unanswered();
        }
        // EDNS version 0 is the only one: a later one gets BADVERS (RFC 6891).
        let reply = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Reply::code(ResponseCode::BADVERS)
        } else {
            self.answer(request).await
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = reply.code;
        meta.authoritative = reply.authoritative;
        meta.recursion_available = true;
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(self.udp_payload);
            e.set_version(0);
            e.set_rcode_high(reply.code.high());
            e
        });
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            meta,
            reply.answers.iter(),
            std::iter::empty(),
            reply.authorities.iter(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                Header {
                    metadata,
                    counts: HeaderCounts::default(),
                }
                .into()
            }
        };
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(0, |q| u16::from(q.query_type()));
        self.observer.served(Served {
            tcp: request.protocol() == Protocol::Tcp,
            ipv6: request.src().is_ipv6(),
            qtype,
            rcode: u16::from(reply.code),
            duration: started.elapsed(),
            cache_hit: reply.cache_hit,
        });
        info
    }
}

/// A response handler that keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut buf = Vec::new();
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut buf);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(hickory_server::net::NetError::from)?;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        Ok(info)
    }
}

/// FORMERR for a datagram whose header we can read but whose body we cannot; None when there is
/// not even a header (such a packet is dropped).
fn formerr(datagram: &[u8]) -> Option<Vec<u8>> {
    let header = datagram.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None; // A response: never answer one.
    }
    let mut out = vec![header[0], header[1], 0x80 | (header[2] & 0x79), 0x01];
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// A UDP response that does not fit the client's buffer (or our `cap`) becomes the question alone
/// with TC set.
fn fit_udp(response: Vec<u8>, request: &Request, cap: u16) -> Vec<u8> {
    let limit = request.edns.as_ref().map_or(512, |e| {
        usize::from(e.max_payload().clamp(512, cap.max(512)))
    });
    if response.len() <= limit {
        return response;
    }
    match hickory_proto::op::Message::from_vec(&response) {
        Ok(mut m) => {
            m.answers.clear();
            m.authorities.clear();
            m.additionals.clear();
            m.metadata.truncation = true;
            m.to_vec().unwrap_or(response)
        }
        Err(_) => response,
    }
}

/// The full path for one UDP datagram: hickory parses it and our handler answers.
async fn full_path(handler: &Handler, datagram: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    if datagram.get(2).is_some_and(|b| b & 0x80 != 0) {
        return None; // A response (QR=1): never answered.
    }
    let Ok(request) = Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) else {
        return formerr(datagram);
    };
    let capture = Capture::default();
    handler
        .handle_request::<_, hickory_server::net::runtime::TokioTime>(&request, capture.clone())
        .await;
    let out = capture.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    Some(fit_udp(out, &request, handler.udp_payload))
}

/// The fast path, when it applies; reports the query to the observer.
fn fast_path(handler: &Handler, datagram: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
    let started = Instant::now();
    let Some(zone) = handler.zone.zone() else {
        return false;
    };
    let Some(o) = crate::fast::answer(&zone, datagram, out, handler.udp_payload) else {
        return false;
    };
    handler.observer.served(Served {
        tcp: false,
        ipv6: src.is_ipv6(),
        qtype: o.qtype,
        rcode: o.rcode,
        duration: started.elapsed(),
        cache_hit: None,
    });
    true
}

/// Answers one UDP request datagram exactly as the server does (fast path, else the full path),
/// without a socket: for tests and fuzzing. None when the datagram gets no answer at all.
pub async fn answer_datagram(handler: &Handler, datagram: &[u8]) -> Option<Vec<u8>> {
    let src = SocketAddr::from(([127, 0, 0, 1], 53));
    let mut out = Vec::new();
    if fast_path(handler, datagram, src, &mut out) {
        return Some(out);
    }
    full_path(handler, datagram, src).await
}

/// The UDP front end: the fast path inline, the full path in its own task (it may wait on an
/// upstream).
async fn serve_udp(udp: UdpSocket, handler: Arc<Handler>) {
    let udp = Arc::new(udp);
    let mut receiver = crate::batch::Receiver::new();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(crate::batch::BATCH);
    let mut spare: Vec<Vec<u8>> = Vec::with_capacity(crate::batch::BATCH);
    loop {
        let n = match receiver.recv(&udp).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "DNS receive");
                continue;
            }
        };
        for i in 0..n {
            let Some((datagram, peer)) = receiver.get(i) else {
                continue;
            };
            let mut out = spare.pop().unwrap_or_default();
            if fast_path(&handler, datagram, peer, &mut out) {
                replies.push((out, peer));
                continue;
            }
            spare.push(out);
            let (handler, udp, datagram) = (handler.clone(), udp.clone(), datagram.to_vec());
            tokio::spawn(async move {
                if let Some(resp) = full_path(&handler, &datagram, peer).await {
                    let _ = udp.send_to(&resp, peer).await;
                }
            });
        }
        crate::batch::send_all(&udp, &replies).await;
        spare.extend(replies.drain(..).map(|(buf, _)| buf));
    }
}

/// hickory-server's TCP front end shares the handler with the UDP loop.
struct Shared(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// The UDP socket and TCP listener for `listen`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((
        UdpSocket::bind(listen).await?,
        TcpListener::bind(listen).await?,
    ))
}

/// Serves DNS over UDP (our loop) and TCP (hickory-server) until the task is dropped.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, handler: Handler) {
    let handler = Arc::new(handler);
    let mut server = Server::new(Shared(handler.clone()));
    server.register_listener(tcp, Duration::from_secs(10), 65535);
    tokio::select! {
        _ = serve_udp(udp, handler) => {}
        r = server.block_until_done() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "DNS server stopped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Config, Forwarder};
    use crate::zone::{Kind, Service};
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::RecordType;

    struct Fixed(Option<Arc<ClusterZone>>);
    impl ZoneSource for Fixed {
        fn zone(&self) -> Option<Arc<ClusterZone>> {
            self.0.clone()
        }
    }
    struct Quiet;
    impl Observer for Quiet {
        fn served(&self, _: Served) {}
    }

    fn handler(zone: Option<ClusterZone>) -> Handler {
        let forwarder = Forwarder::new(Config {
            upstreams: vec![],
            timeout: Duration::from_millis(100),
            cache_entries: 10,
            max_concurrent: 10,
        });
        Handler::new(
            Arc::new(Fixed(zone.map(Arc::new))),
            "cluster.local",
            forwarder,
            Arc::new(Quiet),
        )
        .unwrap()
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn servfail_for_cluster_names_until_the_first_zone() {
        let before = handler(None);
        let reply = Message::from_vec(
            &answer_datagram(&before, &query("web.default.svc.cluster.local."))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        let svc = Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: Kind::ClusterIp(vec!["10.96.0.1".parse().unwrap()]),
            ports: vec![],
            endpoints: vec![],
        };
        let after = handler(ClusterZone::build("cluster.local", 5, &[svc]));
        let reply = Message::from_vec(
            &answer_datagram(&after, &query("web.default.svc.cluster.local."))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (reply.metadata.response_code, reply.answers.len()),
            (ResponseCode::NoError, 1)
        );
        // Outside the zone with no upstream: SERVFAIL, not a hang or a panic.
        let reply = Message::from_vec(
            &answer_datagram(&after, &query("example.org."))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(answer_datagram(&after, b"\x00").await.is_none());
    }
}
