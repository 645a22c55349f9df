use super::*;

fn zone() -> ClusterZone {
    let services = vec![
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: Kind::ClusterIp(vec![
                "10.96.0.10".parse().unwrap(),
                "fd00::10".parse().unwrap(),
            ]),
            ports: vec![
                Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80,
                },
                Port {
                    name: String::new(),
                    protocol: "tcp".into(),
                    port: 81,
                },
            ],
            endpoints: vec![],
        },
        Service {
            namespace: "db".into(),
            name: "pg".into(),
            kind: Kind::Headless,
            ports: vec![Port {
                name: "sql".into(),
                protocol: "tcp".into(),
                port: 5432,
            }],
            endpoints: vec![
                Endpoint {
                    addresses: vec!["10.244.0.5".parse().unwrap()],
                    hostname: Some("pg-0".into()),
                    ready: true,
                },
                Endpoint {
                    addresses: vec!["10.244.0.6".parse().unwrap()],
                    hostname: None,
                    ready: true,
                },
                Endpoint {
                    addresses: vec!["10.244.0.7".parse().unwrap()],
                    hostname: Some("pg-2".into()),
                    ready: false,
                },
            ],
        },
        Service {
            namespace: "db".into(),
            name: "empty".into(),
            kind: Kind::Headless,
            ports: vec![],
            endpoints: vec![],
        },
        Service {
            namespace: "default".into(),
            name: "ext".into(),
            kind: Kind::ExternalName("db.example.com".into()),
            ports: vec![],
            endpoints: vec![],
        },
    ];
    ClusterZone::build("cluster.local", 5, &services).unwrap()
}

fn q(s: &str) -> LowerName {
    LowerName::new(&Name::from_ascii(s).unwrap())
}

fn data(a: Answer<'_>) -> Vec<String> {
    match a {
        Answer::Records { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
        other => vec![format!("{other:?}")],
    }
}

#[test]
fn cluster_ip_records() {
    let z = zone();
    assert_eq!(
        data(z.lookup(&q("web.default.svc.cluster.local."), RecordType::A)),
        ["10.96.0.10"]
    );
    assert_eq!(
        data(z.lookup(&q("WEB.Default.svc.cluster.local."), RecordType::AAAA)),
        ["fd00::10"]
    );
    assert_eq!(
        data(z.lookup(
            &q("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV
        )),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    let mut bare = data(z.lookup(&q("web.default.svc.cluster.local."), RecordType::SRV));
    bare.sort();
    assert_eq!(
        bare,
        [
            "0 50 80 web.default.svc.cluster.local.",
            "0 50 81 web.default.svc.cluster.local."
        ],
        "the service's own name has every port, named or not"
    );
    for name in ["_http._tcp.web", "web"] {
        match z.lookup(
            &q(&format!("{name}.default.svc.cluster.local.")),
            RecordType::SRV,
        ) {
            Answer::Records { additionals, .. } => {
                assert_eq!(additionals.len(), 2, "the target's A and AAAA, once")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        data(z.lookup(&q("10.0.96.10.in-addr.arpa."), RecordType::PTR)),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        data(z.lookup(&q("dns-version.cluster.local."), RecordType::TXT)),
        ["1.1.0"]
    );
    assert_eq!(
        data(z.lookup(&q("ext.default.svc.cluster.local."), RecordType::A)),
        ["db.example.com."]
    );
}

#[test]
fn headless_records() {
    let z = zone();
    let mut a = data(z.lookup(&q("pg.db.svc.cluster.local."), RecordType::A));
    a.sort();
    assert_eq!(
        a,
        ["10.244.0.5", "10.244.0.6"],
        "not-ready endpoints are not published"
    );
    assert_eq!(
        data(z.lookup(&q("pg-0.pg.db.svc.cluster.local."), RecordType::A)),
        ["10.244.0.5"]
    );
    assert_eq!(
        data(z.lookup(&q("10-244-0-6.pg.db.svc.cluster.local."), RecordType::A)),
        ["10.244.0.6"]
    );
    let mut srv = data(z.lookup(&q("_sql._tcp.pg.db.svc.cluster.local."), RecordType::SRV));
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 50 5432 10-244-0-6.pg.db.svc.cluster.local.",
            "0 50 5432 pg-0.pg.db.svc.cluster.local."
        ],
        "CoreDNS's weights: 100 shared by the records of a name"
    );
    let mut bare = data(z.lookup(&q("pg.db.svc.cluster.local."), RecordType::SRV));
    bare.sort();
    assert_eq!(
        bare, srv,
        "the service's own name: every ready endpoint and port"
    );
    assert_eq!(
        data(z.lookup(&q("5.0.244.10.in-addr.arpa."), RecordType::PTR)),
        ["pg-0.pg.db.svc.cluster.local."]
    );
    assert_eq!(
        z.lookup(&q("empty.db.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        z.lookup(&q("pg-2.pg.db.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
}

#[test]
fn incremental_changes_match_a_full_build() {
    let svc = |ns: &str, name: &str, ip: &str| Service {
        namespace: ns.into(),
        name: name.into(),
        kind: Kind::ClusterIp(vec![ip.parse().unwrap()]),
        ports: vec![Port {
            name: "http".into(),
            protocol: "tcp".into(),
            port: 80,
        }],
        endpoints: vec![],
    };
    let z1 = ClusterZone::build(
        "cluster.local",
        5,
        &[
            svc("a", "one", "10.0.0.1"),
            svc("a", "two", "10.0.0.2"),
            svc("b", "three", "10.0.0.3"),
        ],
    )
    .unwrap();
    // Replace one, remove one: the namespace stays while another Service is in it.
    let z2 = z1.with_changes(
        &[("a".into(), "two".into())],
        &[svc("a", "one", "10.0.0.9")],
    );
    assert_eq!(
        data(z2.lookup(&q("one.a.svc.cluster.local."), RecordType::A)),
        ["10.0.0.9"]
    );
    assert_eq!(
        z2.lookup(&q("two.a.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        z2.lookup(&q("_http._tcp.two.a.svc.cluster.local."), RecordType::SRV),
        Answer::NxDomain
    );
    assert_eq!(
        z2.lookup(&q("a.svc.cluster.local."), RecordType::A),
        Answer::NoData
    );
    assert_eq!(
        z2.lookup(&q("1.0.0.10.in-addr.arpa."), RecordType::PTR),
        Answer::NotOurs,
        "the old PTR is gone"
    );
    assert_eq!(
        data(z2.lookup(&q("9.0.0.10.in-addr.arpa."), RecordType::PTR)),
        ["one.a.svc.cluster.local."]
    );
    // The old zone is untouched: snapshots are immutable.
    assert_eq!(
        data(z1.lookup(&q("two.a.svc.cluster.local."), RecordType::A)),
        ["10.0.0.2"]
    );
    // The last Service of a namespace takes the namespace's name with it.
    let z3 = z2.with_changes(&[("a".into(), "one".into())], &[]);
    assert_eq!(
        z3.lookup(&q("a.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        z3.lookup(&q("svc.cluster.local."), RecordType::A),
        Answer::NoData,
        "b still has a Service"
    );
    assert_eq!(
        data(z3.lookup(&q("dns-version.cluster.local."), RecordType::TXT)),
        ["1.1.0"]
    );
    let full = ClusterZone::build("cluster.local", 5, &[svc("b", "three", "10.0.0.3")]).unwrap();
    assert_eq!(z3.names.len(), full.names.len());
}

#[test]
fn pod_records_only_when_on() {
    let off = zone();
    assert_eq!(
        off.lookup(&q("10-244-1-5.default.pod.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    let on = zone().with_pod_records(true);
    match on.lookup(&q("10-244-1-5.Default.pod.cluster.local."), RecordType::A) {
        Answer::Pod(r) => assert_eq!(r.data.to_string(), "10.244.1.5"),
        other => panic!("{other:?}"),
    }
    match on.lookup(&q("fd00--5.default.pod.cluster.local."), RecordType::AAAA) {
        Answer::Pod(r) => assert_eq!(r.data.to_string(), "fd00::5"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        on.lookup(
            &q("10-244-1-5.default.pod.cluster.local."),
            RecordType::AAAA
        ),
        Answer::NoData
    );
    assert_eq!(
        on.lookup(&q("default.pod.cluster.local."), RecordType::A),
        Answer::NoData
    );
    assert_eq!(
        on.lookup(&q("not-an-ip.default.pod.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        on.lookup(&q("a.b.c.default.pod.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
}

#[test]
fn nodata_nxdomain_and_not_ours() {
    let z = zone();
    assert_eq!(
        z.lookup(&q("web.default.svc.cluster.local."), RecordType::MX),
        Answer::NoData
    );
    assert_eq!(
        z.lookup(&q("default.svc.cluster.local."), RecordType::A),
        Answer::NoData,
        "empty non-terminal"
    );
    assert_eq!(
        z.lookup(&q("svc.cluster.local."), RecordType::A),
        Answer::NoData
    );
    assert_eq!(
        z.lookup(&q("nope.default.svc.cluster.local."), RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(z.lookup(&q("example.com."), RecordType::A), Answer::NotOurs);
    assert_eq!(
        z.lookup(&q("1.2.3.4.in-addr.arpa."), RecordType::PTR),
        Answer::NotOurs
    );
    assert!(matches!(z.soa().data, RData::SOA(_)));
}
