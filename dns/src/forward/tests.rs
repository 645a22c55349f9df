use super::*;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::Name;

fn a(ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_ascii("x.example.").unwrap(),
        ttl,
        RData::A(A::new(192, 0, 2, 1)),
    )
}

#[test]
fn ttls_for_the_cache() {
    assert_eq!(
        cache_ttl(ResponseCode::NoError, &[a(300), a(60)], &[]),
        Some(60)
    );
    assert_eq!(
        cache_ttl(ResponseCode::NoError, &[a(999_999)], &[]),
        Some(MAX_TTL)
    );
    let n = Name::from_ascii("example.").unwrap();
    let soa = Record::from_rdata(
        n.clone(),
        900,
        RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, 120)),
    );
    assert_eq!(
        cache_ttl(ResponseCode::NXDomain, &[], std::slice::from_ref(&soa)),
        Some(120)
    );
    assert_eq!(
        cache_ttl(ResponseCode::NoError, &[], &[soa]),
        Some(120),
        "NODATA is cached like NXDOMAIN"
    );
    assert_eq!(cache_ttl(ResponseCode::ServFail, &[], &[]), None);
}

/// A UDP upstream on loopback that counts the queries it gets and answers each with one A
/// record after `delay`; with `forge`, a reply for another question with the same id goes first.
async fn upstream(
    delay: Option<Duration>,
    forge: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::SeqCst);
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(delay) = delay else {
                continue;
            };
            let sock = sock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let question = q.queries[0].clone();
                let reply = |question: Query| {
                    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                    r.add_answer(Record::from_rdata(
                        question.name.clone(),
                        60,
                        RData::A(A::new(192, 0, 2, 7)),
                    ));
                    r.add_query(question);
                    r.to_vec().unwrap()
                };
                if forge {
                    let other =
                        Query::query(Name::from_ascii("forged.example.").unwrap(), RecordType::A);
                    let _ = sock.send_to(&reply(other), from).await;
                }
                let _ = sock.send_to(&reply(question), from).await;
            });
        }
    });
    (addr, seen)
}

fn forwarder(upstream: SocketAddr, max_concurrent: usize) -> Forwarder {
    Forwarder::new(Config {
        upstreams: vec![upstream],
        timeout: Duration::from_millis(500),
        cache_entries: 100,
        max_concurrent,
    })
}

fn q(name: &str) -> Query {
    Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
}

use hickory_proto::op::{MessageType, OpCode};

#[tokio::test]
async fn identical_questions_in_flight_are_asked_once() {
    let (addr, seen) = upstream(Some(Duration::from_millis(200)), false).await;
    let f = forwarder(addr, 10);
    let answers = futures_join(
        (0..50)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.resolve(&q("same.example.")).await })
            })
            .collect(),
    )
    .await;
    for a in answers {
        let a = a.expect("answered");
        assert_eq!(a.answers.len(), 1);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1, "one question went out");
    // Now cached: no second question.
    assert!(f.resolve(&q("same.example.")).await.unwrap().cached);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn past_the_limit_a_query_fails_at_once_and_sockets_are_shared() {
    // An upstream that never answers.
    let (addr, seen) = upstream(None, false).await;
    let f = forwarder(addr, 4);
    let started = Instant::now();
    let outcomes = futures_join(
        (0..40)
            .map(|i| {
                let f = f.clone();
                tokio::spawn(async move { f.resolve(&q(&format!("n{i}.example."))).await })
            })
            .collect(),
    )
    .await;
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o, Err(ForwardError::Busy)))
        .count();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Err(ForwardError::Failed(_))))
        .count();
    assert_eq!((busy, failed), (36, 4), "{outcomes:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "only four questions went out"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The permits came back: the next question goes out.
    assert!(matches!(
        f.resolve(&q("after.example.")).await,
        Err(ForwardError::Failed(_))
    ));
    assert_eq!(seen.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_forged_reply_neither_answers_nor_ends_the_query() {
    let (addr, _) = upstream(Some(Duration::from_millis(10)), true).await;
    let f = forwarder(addr, 10);
    let got = f.resolve(&q("real.example.")).await.unwrap();
    assert_eq!(got.answers.len(), 1);
    assert_eq!(
        got.answers[0].name,
        Name::from_ascii("real.example.").unwrap()
    );
}

#[tokio::test]
async fn a_forwarding_loop_is_detected_and_ends_forwarding() {
    use crate::server::{bind, serve, Handler, Observer, Served, ZoneSource};
    struct NoZone;
    impl ZoneSource for NoZone {
        fn zone(&self) -> Option<Arc<crate::zone::ClusterZone>> {
            None
        }
    }
    struct Quiet;
    impl Observer for Quiet {
        fn served(&self, _: Served) {}
    }
    // A server whose upstream is itself.
    let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let own = udp.local_addr().unwrap();
    let f = forwarder(own, 10);
    let handler = Handler::new(
        Arc::new(NoZone),
        "cluster.local",
        f.clone(),
        Arc::new(Quiet),
    )
    .unwrap();
    let server = tokio::spawn(serve(udp, tcp, handler));
    assert!(!f.looped());
    f.probe_for_loop().await;
    assert!(f.looped(), "the probe came back");
    assert!(matches!(
        f.resolve(&q("example.org.")).await,
        Err(ForwardError::Loop)
    ));
    server.abort();

    // An upstream that answers: no loop.
    let (addr, _) = upstream(Some(Duration::ZERO), false).await;
    let f = forwarder(addr, 10);
    f.probe_for_loop().await;
    assert!(!f.looped());
}
