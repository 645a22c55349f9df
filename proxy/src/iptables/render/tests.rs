//! Golden-text tests of the rendered rules: `SY_UPDATE_GOLDEN=1 cargo test -p switchyard-proxy`
//! rewrites the files under `golden/` after a deliberate change; review the diff.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::iptables::restore::{diff, parse_save, Diff};
use crate::table::{Endpoint, ServicePort, ServicePortName};

pub(crate) fn ep(addr: &str, local: bool) -> Endpoint {
    Endpoint {
        addr: addr.parse().unwrap(),
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

fn port(name: &str, protocol: Protocol, number: u16, cluster: &[&str]) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: "p".into(),
        },
        protocol,
        port: number,
        cluster_ips: cluster.iter().map(|s| s.parse().unwrap()).collect(),
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity: None,
        internal_local: false,
        external_local: false,
        endpoints: vec![],
    }
}

/// One port of every shape the renderer knows.
pub(crate) fn sample() -> ServiceTable {
    let mut web = port("web", Protocol::Tcp, 80, &["10.96.0.10", "fd00::10"]);
    web.endpoints = vec![
        ep("10.244.1.2:8080", true),
        ep("10.244.2.2:8080", false),
        ep("10.244.2.3:8080", false),
        ep("[fd00:244::2]:8080", false),
    ];
    let mut dns = port("dns", Protocol::Udp, 53, &["10.96.0.53"]);
    dns.endpoints = vec![ep("10.244.2.9:53", false)];
    let empty = port("empty", Protocol::Tcp, 80, &["10.96.0.20"]);
    let mut np = port("np", Protocol::Tcp, 80, &["10.96.0.30"]);
    np.node_port = Some(30080);
    np.external_ips = vec!["192.0.2.7".parse().unwrap()];
    np.endpoints = vec![ep("10.244.1.3:80", true), ep("10.244.2.4:80", false)];
    let mut local = port("local", Protocol::Tcp, 443, &["10.96.0.40"]);
    local.node_port = Some(30443);
    local.external_local = true;
    local.endpoints = vec![ep("10.244.1.4:443", true), ep("10.244.2.5:443", false)];
    let mut sticky = port("sticky", Protocol::Tcp, 80, &["10.96.0.50"]);
    sticky.affinity = Some(Duration::from_secs(600));
    sticky.endpoints = vec![ep("10.244.1.5:80", true), ep("10.244.2.6:80", false)];
    let mut sctp = port("sctp", Protocol::Sctp, 9000, &["10.96.0.60"]);
    sctp.endpoints = vec![ep("10.244.2.7:9000", false)];
    let mut ports: Vec<Arc<ServicePort>> = [web, dns, empty, np, local, sticky, sctp]
        .into_iter()
        .map(Arc::new)
        .collect();
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    ServiceTable { ports }
}

/// Replaces the port named `name` of `table` with a copy `f` changed (a new `Arc`).
pub(crate) fn edit(table: &mut ServiceTable, name: &str, f: impl FnOnce(&mut ServicePort)) {
    let i = table
        .ports
        .iter()
        .position(|p| p.name.name == name)
        .unwrap_or_else(|| panic!("no port {name}"));
    let mut port = (*table.ports[i]).clone();
    f(&mut port);
    table.ports[i] = Arc::new(port);
}

pub(crate) fn options() -> Options {
    Options {
        node_addr: "0.0.0.0".parse().unwrap(),
        cluster_cidrs: vec![("10.244.0.0".parse().unwrap(), 16)],
        masquerade_all: false,
    }
}

fn golden(name: &str, actual: &str) {
    crate::testing::golden("iptables", name, actual);
}

#[test]
fn ipv4_ruleset_matches_the_golden_file() {
    let rs = Renderer::new(Family::V4, options()).render(&sample());
    golden("ipv4.txt", &diff(&Ruleset::default(), &rs, &[]).text);
}

#[test]
fn ipv6_ruleset_matches_the_golden_file() {
    let rs = Renderer::new(Family::V6, options()).render(&sample());
    golden("ipv6.txt", &diff(&Ruleset::default(), &rs, &[]).text);
}

#[test]
fn probabilities_are_printed_as_iptables_save_does() {
    assert_eq!(probability(2), "0.50000000000");
    assert_eq!(probability(3), "0.33333333349");
    assert_eq!(probability(10), "0.10000000009");
}

#[test]
fn an_unchanged_table_needs_no_restore_and_one_change_touches_one_chain() {
    let mut r = Renderer::new(Family::V4, options());
    let table = sample();
    let first = r.render(&table);
    assert_eq!(first.frontends, 10);
    let again = r.render(&table);
    assert_eq!(diff(&first, &again, &[]), Diff::default());

    // The read-back form (plain text lines) compares equal to the rendered blocks.
    let saved = parse_save(&format!(
        "*nat\n{}*filter\n{}",
        diff(&Ruleset::default(), &first, &[])
            .text
            .split("*filter")
            .nth(1)
            .unwrap()
            .split_once("COMMIT\n")
            .unwrap()
            .1
            .trim_start_matches("*nat\n"),
        diff(&Ruleset::default(), &first, &[])
            .text
            .split("*nat")
            .next()
            .unwrap()
            .trim_start_matches("*filter\n")
    ));
    assert_eq!(diff(&saved, &first, &[]).written, 0);

    let mut changed = table.clone();
    edit(&mut changed, "dns", |dns| {
        dns.endpoints.push(ep("10.244.1.9:53", true))
    });
    let next = r.render(&changed);
    let d = diff(&first, &next, &[]);
    // The chain holding the dns block, and the hairpin list (a new local endpoint); not the
    // chains of other services.
    assert_eq!((d.written, d.deleted), (2, 0), "{}", d.text);
    assert!(d.text.contains("--to-destination 10.244.1.9:53"));
    assert!(!d.text.contains(":SY-SVC-"), "{}", d.text);
}

#[test]
fn removed_services_delete_their_chains() {
    let mut r = Renderer::new(Family::V4, options());
    let table = sample();
    let first = r.render(&table);
    let mut smaller = table.clone();
    smaller.ports.retain(|p| p.name.name != "sticky");
    let d = diff(&first, &r.render(&smaller), &[]);
    // The affinity chain and its two endpoint chains go.
    assert_eq!(d.deleted, 3, "{}", d.text);
    assert_eq!(d.text.matches("-X SY-").count(), 3);
}

#[test]
fn masquerade_all_marks_cluster_traffic_and_a_specific_node_address_limits_node_ports() {
    let o = Options {
        node_addr: "172.31.1.1".parse().unwrap(),
        cluster_cidrs: vec![],
        masquerade_all: true,
    };
    let rs = Renderer::new(Family::V4, o).render(&sample());
    let text = diff(&Ruleset::default(), &rs, &[]).text;
    assert!(text.contains("-A SY-SERVICES -d 172.31.1.1/32 -j SY-NODEPORTS"));
    assert!(text.contains("-d 10.96.0.53/32 -p udp -m udp --dport 53 -j SY-MARK-MASQ"));
    // No IPv6 node ports when the node address is IPv4.
    let v6 = Renderer::new(
        Family::V6,
        Options {
            node_addr: "172.31.1.1".parse::<IpAddr>().unwrap(),
            cluster_cidrs: vec![],
            masquerade_all: false,
        },
    )
    .render(&sample());
    assert!(!v6.nat.contains_key("SY-NODEPORTS"));
}

#[test]
fn a_port_without_cluster_ips_keeps_its_node_port_in_its_endpoints_family() {
    // What the eBPF proxy hands iptables: the ClusterIPs are served at the socket.
    let mut np = port("np", Protocol::Tcp, 80, &[]);
    np.node_port = Some(30080);
    np.endpoints = vec![ep("10.244.1.3:80", true)];
    let table = ServiceTable {
        ports: vec![Arc::new(np)],
    };
    let v4 = Renderer::new(Family::V4, options()).render(&table);
    let v6 = Renderer::new(Family::V6, options()).render(&table);
    let text = |rs: &Ruleset| diff(&Ruleset::default(), rs, &[]).text;
    assert!(text(&v4).contains("--dport 30080"), "{}", text(&v4));
    assert!(!text(&v4).contains("10.96."), "{}", text(&v4));
    assert!(!text(&v6).contains("30080"), "{}", text(&v6));
}
