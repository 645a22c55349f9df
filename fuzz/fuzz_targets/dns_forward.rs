//! The forwarder's side of the request path: a client's query for a name outside the cluster
//! goes to an upstream on loopback whose reply is the fuzz input (with the query's id, so that
//! it gets past the first check). The reply is parsed, checked against the question, cached and
//! turned into the client's response, or dropped; the upstream then sends a proper reply, so a
//! dropped one costs no timeout. Nothing may panic, whatever the upstream sends.
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use libfuzzer_sys::fuzz_target;
use switchyard_dns::forward::{Config, Forwarder};
use switchyard_dns::server::{answer_datagram, Handler, Observer, Served, ZoneSource};
use switchyard_dns::zone::ClusterZone;

struct NoZone;
impl ZoneSource for NoZone {
    fn zone(&self) -> Option<Arc<ClusterZone>> {
        ClusterZone::build("cluster.local", 5, &[]).map(Arc::new)
    }
}
struct Quiet;
impl Observer for Quiet {
    fn served(&self, _: Served) {}
}

struct State {
    rt: tokio::runtime::Runtime,
    handler: Handler,
    reply: Arc<Mutex<Vec<u8>>>,
    next: AtomicU64,
}

/// The upstream: answers each query with the fuzzed reply, then a proper one.
fn upstream(reply: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut fuzzed = reply.lock().unwrap().clone();
            if fuzzed.len() >= 2 {
                fuzzed[..2].copy_from_slice(&query.metadata.id.to_be_bytes());
            }
            let _ = sock.send_to(&fuzzed, from);
            let mut proper = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            if let Some(q) = query.queries.first() {
                proper.add_query(q.clone());
                proper.add_answer(Record::from_rdata(q.name.clone(), 30, RData::A(A::new(192, 0, 2, 1))));
            }
            let _ = sock.send_to(&proper.to_vec().unwrap(), from);
        }
    });
    addr
}

fn setup() -> State {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let reply = Arc::new(Mutex::new(Vec::new()));
    let addr = upstream(reply.clone());
    let handler = rt.block_on(async {
        let forwarder = Forwarder::new(Config {
            upstreams: vec![addr],
            timeout: Duration::from_millis(200),
            cache_entries: 64,
            max_concurrent: 16,
        });
        Handler::new(Arc::new(NoZone), "cluster.local", forwarder, Arc::new(Quiet)).unwrap()
    });
    State { rt, handler, reply, next: AtomicU64::new(0) }
}

fuzz_target!(|data: &[u8]| {
    static STATE: OnceLock<State> = OnceLock::new();
    let s = STATE.get_or_init(setup);
    *s.reply.lock().unwrap() = data.to_vec();
    // A name never asked before, so the upstream is asked every time.
    let n = s.next.fetch_add(1, Ordering::Relaxed);
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    let ty = if data.first().is_some_and(|b| b & 1 == 1) { RecordType::AAAA } else { RecordType::A };
    q.add_query(Query::query(Name::from_ascii(format!("f{n}.fuzz.example.")).unwrap(), ty));
    let _ = s.rt.block_on(answer_datagram(&s.handler, &q.to_vec().unwrap()));
});
