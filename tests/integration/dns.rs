//! Cluster DNS end to end: `switchyard up` with its DNS server, queried with dig and with
//! hickory's protocol library, forwarding to an upstream the test runs on loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use tokio::net::UdpSocket;

use crate::support::{eventually, eventually_async, free_port, Up};

/// An upstream resolver on loopback: `example.test` A 192.0.2.10 (TTL 60), `big.example.test`
/// TXT too large for UDP (truncated there, whole over TCP), NXDOMAIN with an SOA for the rest.
/// Counts the UDP queries it gets.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    // Both on one port, from below the ephemeral range: a UDP port the kernel picks may be in
    // use for TCP by another test's connection.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let udp = UdpSocket::bind(addr).await.unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    fn answer(req: &Message, udp: bool) -> Vec<u8> {
        let q = req.queries[0].clone();
        let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_available = true;
        resp.add_query(q.clone());
        let example = Name::from_ascii("example.test.").unwrap();
        let big = Name::from_ascii("big.example.test.").unwrap();
        if q.name == example && q.query_type == RecordType::A {
            resp.add_answer(Record::from_rdata(
                q.name.clone(),
                60,
                RData::A(A::new(192, 0, 2, 10)),
            ));
        } else if q.name == big {
            if udp {
                resp.metadata.truncation = true;
            } else {
                for i in 0..40 {
                    resp.add_answer(Record::from_rdata(
                        big.clone(),
                        60,
                        RData::TXT(TXT::new(vec![format!("{i:03}-{}", "x".repeat(60))])),
                    ));
                }
            }
        } else {
            resp.metadata.response_code = ResponseCode::NXDomain;
            let soa = SOA::new(example.clone(), example.clone(), 1, 60, 60, 60, 30);
            resp.add_authority(Record::from_rdata(example.clone(), 30, RData::SOA(soa)));
        }
        resp.to_vec().unwrap()
    }
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            c.fetch_add(1, Ordering::Relaxed);
            if let Ok(req) = Message::from_vec(&buf[..n]) {
                let _ = udp.send_to(&answer(&req, true), peer).await;
            }
        }
    });
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut req = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let Ok(req) = Message::from_vec(&req) else {
                    return;
                };
                let out = answer(&req, false);
                let _ = s.write_all(&(out.len() as u16).to_be_bytes()).await;
                let _ = s.write_all(&out).await;
            });
        }
    });
    (addr, count)
}

pub(crate) fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (dnsutils) is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn status(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The answer section as (name, type, data) triples.
pub(crate) fn answers(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[3].to_string(), f[4..].join(" "))
        })
        .collect()
}

fn start(upstream: SocketAddr, extra: &[&str]) -> Up {
    let upstream = upstream.to_string();
    let mut args = vec!["--dns-upstream", &upstream, "--node-name", "dns-node"];
    args.extend_from_slice(extra);
    let up = Up::start(&args, false);
    eventually(Duration::from_secs(20), || {
        (status(&dig(up.dns, &["dns-version.cluster.local", "TXT"])) == "NOERROR").then_some(())
    });
    up
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_records_with_dig() {
    let (up_addr, _) = upstream().await;
    let up = start(up_addr, &[]);
    let c = up.client().await;
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let web = svcs.create(&PostParams::default(), &obj(serde_json::json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}))).await.unwrap();
    let ip = web.spec.unwrap().cluster_ip.unwrap();
    svcs.create(&PostParams::default(), &obj(serde_json::json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}))).await.unwrap();
    let mut eps = vec![
        serde_json::json!({"addresses": ["10.244.0.5"], "hostname": "db-0", "conditions": {"ready": true}}),
        serde_json::json!({"addresses": ["10.244.0.6"], "conditions": {"ready": true}}),
        serde_json::json!({"addresses": ["10.244.0.7"], "hostname": "db-2", "conditions": {"ready": false}}),
    ];
    let slice = serde_json::json!({"metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}}, "addressType": "IPv4", "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}], "endpoints": eps.clone()});
    slices
        .create(&PostParams::default(), &obj(slice.clone()))
        .await
        .unwrap();
    svcs.create(&PostParams::default(), &obj(serde_json::json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}}))).await.unwrap();
    let d = up.dns;

    // Visible within a sync of the write; names echoed as asked.
    let a = eventually(Duration::from_secs(10), || {
        Some(answers(&dig(d, &["WeB.DeFault.svc.cluster.local", "A"]))).filter(|a| !a.is_empty())
    });
    assert_eq!(
        a,
        [(
            "WeB.DeFault.svc.cluster.local.".to_string(),
            "A".to_string(),
            ip.clone()
        )]
    );
    let srv = dig(d, &["_http._tcp.web.default.svc.cluster.local", "SRV"]);
    assert_eq!(
        answers(&srv)[0].2,
        "0 100 80 web.default.svc.cluster.local."
    );
    assert!(
        srv.contains(";; ADDITIONAL SECTION") && srv.contains(&ip),
        "{srv}"
    );
    let ptr_name = format!(
        "{}.in-addr.arpa",
        ip.split('.').rev().collect::<Vec<_>>().join(".")
    );
    assert_eq!(
        answers(&dig(d, &[&ptr_name, "PTR"]))[0].2,
        "web.default.svc.cluster.local."
    );

    // Headless: ready endpoints only, hostnames, SRV targets, PTR.
    let mut ips: Vec<String> = answers(&dig(d, &["db.default.svc.cluster.local", "A"]))
        .into_iter()
        .map(|a| a.2)
        .collect();
    ips.sort();
    assert_eq!(ips, ["10.244.0.5", "10.244.0.6"]);
    assert_eq!(
        answers(&dig(d, &["db-0.db.default.svc.cluster.local"]))[0].2,
        "10.244.0.5"
    );
    let mut targets: Vec<String> =
        answers(&dig(d, &["_sql._tcp.db.default.svc.cluster.local", "SRV"]))
            .into_iter()
            .map(|a| a.2)
            .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "0 50 5432 10-244-0-6.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        answers(&dig(d, &["-x", "10.244.0.5"]))[0].2,
        "db-0.db.default.svc.cluster.local."
    );

    // ExternalName, spec version, NXDOMAIN vs NODATA with the SOA.
    assert_eq!(
        answers(&dig(d, &["ext.default.svc.cluster.local", "A"]))[0],
        (
            "ext.default.svc.cluster.local.".into(),
            "CNAME".into(),
            "db.example.com.".into()
        )
    );
    assert_eq!(
        answers(&dig(d, &["dns-version.cluster.local", "TXT"]))[0].2,
        "\"1.1.0\""
    );
    let nx = dig(d, &["nope.default.svc.cluster.local", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(
        nx.contains("SOA") && nx.contains("ns.dns.cluster.local."),
        "{nx}"
    );
    let nodata = dig(d, &["web.default.svc.cluster.local", "MX"]);
    assert_eq!(
        (status(&nodata).as_str(), answers(&nodata).len()),
        ("NOERROR", 0)
    );
    assert!(nodata.contains("SOA"), "{nodata}");
    assert_eq!(
        status(&dig(d, &["default.svc.cluster.local", "A"])),
        "NOERROR",
        "an empty non-terminal exists"
    );

    // Updates follow the API: an endpoint becomes ready; the Service goes away.
    eps[2]["conditions"]["ready"] = serde_json::json!(true);
    let mut changed = slice.clone();
    changed["endpoints"] = serde_json::json!(eps);
    slices
        .replace("db-1", &PostParams::default(), &{
            let mut s: EndpointSlice = obj(changed);
            s.metadata.resource_version =
                slices.get("db-1").await.unwrap().metadata.resource_version;
            s
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        (answers(&dig(d, &["db-2.db.default.svc.cluster.local"])).len() == 1).then_some(())
    });
    svcs.delete("web", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(10), || {
        (status(&dig(d, &["web.default.svc.cluster.local"])) == "NXDOMAIN").then_some(())
    });

    // Many endpoints: truncated over UDP without EDNS, whole over TCP.
    let many: Vec<serde_json::Value> = (1..=60).map(|i| serde_json::json!({"addresses": [format!("10.245.0.{i}")], "conditions": {"ready": true}})).collect();
    svcs.create(
        &PostParams::default(),
        &obj(serde_json::json!({"metadata": {"name": "many"}, "spec": {"clusterIP": "None"}})),
    )
    .await
    .unwrap();
    slices.create(&PostParams::default(), &obj(serde_json::json!({"metadata": {"name": "many-1", "labels": {"kubernetes.io/service-name": "many"}}, "addressType": "IPv4", "endpoints": many}))).await.unwrap();
    eventually(Duration::from_secs(10), || {
        (answers(&dig(d, &["+tcp", "many.default.svc.cluster.local"])).len() == 60).then_some(())
    });
    let udp = dig(
        d,
        &[
            "+noedns",
            "+notcp",
            "+ignore",
            "many.default.svc.cluster.local",
        ],
    );
    assert!(
        udp.contains(" tc") || udp.contains("tc "),
        "expected the TC flag: {udp}"
    );
}

/// A query with hickory's protocol library over UDP.
async fn hickory_query(dns: u16, name: &str, ty: RecordType) -> Message {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), ("127.0.0.1", dns))
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, msg.metadata.id);
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_caching_and_hostile_packets() {
    let (up_addr, upstream_queries) = upstream().await;
    let up = start(up_addr, &["--dns-pod-records"]);
    let d = up.dns;
    // Pod records, when asked for.
    assert_eq!(
        answers(&dig(d, &["10-1-2-3.default.pod.cluster.local", "A"]))[0].2,
        "10.1.2.3"
    );
    let first = hickory_query(d, "example.test.", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(first.metadata.recursion_available);
    assert_eq!(first.answers[0].data, RData::A(A::new(192, 0, 2, 10)));
    let before = upstream_queries.load(Ordering::Relaxed);
    let again = hickory_query(d, "example.test.", RecordType::A).await;
    assert_eq!(again.answers[0].data, RData::A(A::new(192, 0, 2, 10)));
    assert!(again.answers[0].ttl <= 60);
    assert_eq!(
        upstream_queries.load(Ordering::Relaxed),
        before,
        "the second answer came from the cache"
    );
    // Negative answers are cached too, and keep their SOA.
    let nx = hickory_query(d, "missing.example.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let before = upstream_queries.load(Ordering::Relaxed);
    let nx2 = hickory_query(d, "missing.example.test.", RecordType::A).await;
    assert_eq!(nx2.metadata.response_code, ResponseCode::NXDomain);
    assert!(!nx2.authorities.is_empty());
    assert_eq!(upstream_queries.load(Ordering::Relaxed), before);
    // Truncated upstream answers are fetched again over TCP.
    let big = dig(d, &["+tcp", "big.example.test", "TXT"]);
    assert_eq!(answers(&big).len(), 40, "{big}");

    // Hostile packets get FORMERR or nothing, and the server keeps answering.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b""[..],
        &[0u8; 3],
        &[0xff; 12],
        &[0u8, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, 0xff, 0xff][..],
        &[0x12; 600],
    ] {
        sock.send_to(junk, ("127.0.0.1", d)).await.unwrap();
    }
    let ok = hickory_query(d, "dns-version.cluster.local.", RecordType::TXT).await;
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    assert!(ok.metadata.authoritative);
}

/// The size dig reports for the message it received.
fn received_size(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.split("MSG SIZE  rcvd: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no message size in {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_dropped_edns_and_transfers_held_to_the_rules_and_cnames_chased() {
    let (up_addr, _) = upstream().await;
    let up = start(up_addr, &[]);
    let d = up.dns;
    let client = up.client().await;

    // A message with QR=1 is a response: answering it would let two servers bounce messages
    // between them forever. It gets nothing, and the server keeps answering queries.
    let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
    msg.add_query(Query::query(
        Name::from_ascii("dns-version.cluster.local.").unwrap(),
        RecordType::TXT,
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), ("127.0.0.1", d))
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let echoed = tokio::time::timeout(Duration::from_millis(700), sock.recv_from(&mut buf)).await;
    assert!(echoed.is_err(), "a response was answered");
    let ok = hickory_query(d, "dns-version.cluster.local.", RecordType::TXT).await;
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);

    // EDNS versions after 0 get BADVERS; zone transfers are refused.
    let out = dig(
        d,
        &["+edns=1", "+noednsneg", "dns-version.cluster.local", "TXT"],
    );
    assert_eq!(status(&out), "BADVERS", "{out}");
    let axfr = hickory_query(d, "cluster.local.", RecordType::AXFR).await;
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
    let ixfr = hickory_query(d, "cluster.local.", RecordType::IXFR).await;
    assert_eq!(ixfr.metadata.response_code, ResponseCode::Refused);

    // ExternalName: an A query gets the CNAME and the target's addresses in one answer, from
    // the zone for a cluster name (through a chain of them) and from the upstream otherwise.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let external = |name: &str, target: &str| -> Service {
        obj(
            serde_json::json!({"metadata": {"name": name}, "spec": {"type": "ExternalName", "externalName": target}}),
        )
    };
    svcs.create(
        &PostParams::default(),
        &obj(serde_json::json!({"metadata": {"name": "cip"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await
    .unwrap();
    for (name, target) in [
        ("outer", "example.test"),
        ("inner", "cip.default.svc.cluster.local"),
        ("hop", "inner.default.svc.cluster.local"),
    ] {
        svcs.create(&PostParams::default(), &external(name, target))
            .await
            .unwrap();
    }
    let cip = svcs
        .get("cip")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let chain = |name: &str| -> Vec<(String, String)> {
        answers(&dig(
            d,
            &[&format!("{name}.default.svc.cluster.local"), "A"],
        ))
        .into_iter()
        .map(|(_, ty, data)| (ty, data))
        .collect()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    eventually(Duration::from_secs(10), || {
        (chain("hop").len() == 3).then_some(())
    });
    assert_eq!(
        chain("hop"),
        [
            pair("CNAME", "inner.default.svc.cluster.local."),
            pair("CNAME", "cip.default.svc.cluster.local."),
            pair("A", &cip)
        ]
    );
    assert_eq!(
        chain("outer"),
        [pair("CNAME", "example.test."), pair("A", "192.0.2.10")]
    );

    // 300 endpoints behind a headless Service: over UDP the answer never exceeds 1232 bytes,
    // whatever buffer the client advertises (truncated, TC set); over TCP it is whole.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &obj(serde_json::json!({"metadata": {"name": "wide"}, "spec": {"clusterIP": "None"}})),
    )
    .await
    .unwrap();
    for s in 0..3 {
        let eps: Vec<serde_json::Value> = (1..=100).map(|i| serde_json::json!({"addresses": [format!("10.246.{s}.{i}")], "conditions": {"ready": true}})).collect();
        slices.create(&PostParams::default(), &obj(serde_json::json!({"metadata": {"name": format!("wide-{s}"), "labels": {"kubernetes.io/service-name": "wide"}}, "addressType": "IPv4", "endpoints": eps}))).await.unwrap();
    }
    eventually(Duration::from_secs(10), || {
        (answers(&dig(d, &["+tcp", "wide.default.svc.cluster.local"])).len() == 300).then_some(())
    });
    // (`+adflag` sets a header bit the fast path leaves to the full path: both are held.)
    for (bufsize, flag) in [
        ("+bufsize=4096", "+noadflag"),
        ("+bufsize=65000", "+adflag"),
    ] {
        let udp = dig(
            d,
            &[
                bufsize,
                flag,
                "+notcp",
                "+ignore",
                "wide.default.svc.cluster.local",
            ],
        );
        assert!(received_size(&udp) <= 1232, "{udp}");
        assert!(
            udp.contains(" tc") || udp.contains("tc "),
            "expected TC: {udp}"
        );
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 3,000 queries for distinct names to an upstream that never answers: the questions out are
/// capped by `--dns-max-concurrent` (the rest get SERVFAIL at once), they share a few sockets,
/// and cluster names are answered all the while.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_names_to_forward_is_bounded() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while silent.recv_from(&mut buf).await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let up = start(silent_addr, &["--dns-max-concurrent", "100"]);
    let before = open_fds(up.pid());
    let baseline = asked.load(Ordering::Relaxed); // the loop probe

    let flood = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let replies = {
        let flood = flood.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok(n) = flood.recv(&mut buf).await {
                let reply = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            }
        })
    };
    for i in 0..3000u16 {
        let mut m = Message::new(i, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        let name = Name::from_ascii(format!("n{i}.flood.example.")).unwrap();
        m.add_query(Query::query(name, RecordType::A));
        flood
            .send_to(&m.to_vec().unwrap(), ("127.0.0.1", up.dns))
            .await
            .unwrap();
        // In bursts the socket buffers hold: the server is not to lose queries to them.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A cluster name is answered during the flood.
    let ok = hickory_query(up.dns, "dns-version.cluster.local.", RecordType::TXT).await;
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(open_fds(up.pid()));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        most <= before + 40,
        "open files went from {before} to {most} during the flood"
    );
    assert!(
        asked.load(Ordering::Relaxed) - baseline <= 100,
        "at most 100 questions out at once, and none asked again: {}",
        asked.load(Ordering::Relaxed) - baseline
    );
    // Every query is answered (SERVFAIL), the capped ones once their upstream times out. Counted
    // by the server: on a busy machine this test's socket can drop replies it is too slow to
    // read (every reply it reads must be SERVFAIL, above), and the server's socket can drop
    // queries it was too slow to read (the kernel counts those).
    let port = up.metrics;
    let dns = up.dns;
    eventually_async(Duration::from_secs(20), || async move {
        let dropped = udp_drops(dns);
        let text = crate::support::http_get(port, "/metrics").await;
        let servfail: usize = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"coredns_dns_responses_total{server="dns",zone=".",rcode="SERVFAIL"} "#,
                )
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (servfail + dropped >= 3000).then_some(())
    })
    .await;
    replies.abort();
}

/// Datagrams the kernel dropped for the UDP socket bound to 127.0.0.1:`port` (a full receive
/// buffer), from /proc/net/udp.
fn udp_drops(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    // The kernel prints the address as its 32-bit value in host order.
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&local.as_str()))
        .and_then(|f| f.last()?.parse().ok())
        .unwrap_or_else(|| panic!("no UDP socket on port {port} in /proc/net/udp"))
}
