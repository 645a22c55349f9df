//! Golden-text tests of the nftables transactions: `SY_UPDATE_GOLDEN=1 cargo test -p
//! switchyard-proxy` rewrites the files under `golden/` after a deliberate change.

use std::time::Duration;

use super::*;
use crate::iptables::render::tests::{edit, ep, options, sample};
use crate::table::Endpoint;

fn full(family: Family, table: &ServiceTable) -> String {
    let mut r = Renderer::new(family, options());
    r.update(table);
    let mut empty = State::default();
    let all = r.everything(&empty);
    fixed(family, &options()) + &r.transaction(&mut empty, &all).text()
}

#[test]
fn ipv4_table_matches_the_golden_file() {
    crate::testing::golden("nftables", "ipv4.txt", &full(Family::V4, &sample()));
}

#[test]
fn ipv6_table_matches_the_golden_file() {
    crate::testing::golden("nftables", "ipv6.txt", &full(Family::V6, &sample()));
}

#[test]
fn the_fixed_part_has_every_picker_and_a_marker_of_its_own() {
    let t = fixed(Family::V4, &options());
    for n in [1, PICK_MAX] {
        for chain in ["pick", "np-pick", "masq", "np-masq", "cluster"] {
            assert!(
                t.contains(&format!("\tchain {chain}-{n} {{")),
                "{chain}-{n}"
            );
        }
    }
    assert!(t.contains("ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000"));
    assert!(t.contains("fib daddr type local meta l4proto . th dport vmap @service-nodeports"));
    let m = marker(&t);
    assert!(m.starts_with("fixed-") && m.len() == 22, "{m}");
    let mut other = options();
    other.masquerade_all = true;
    let t2 = fixed(Family::V4, &other);
    assert_ne!(marker(&t2), m, "other options, another marker");
    assert!(!t2.contains("saddr != 10.244.0.0/16"));
}

fn endpoint(addr: &str) -> Endpoint {
    ep(addr, false)
}

/// Applies `table` to a renderer and a simulated kernel; returns the transaction text.
fn step(r: &mut Renderer, kernel: &mut State, table: &ServiceTable) -> String {
    let touched = r.update(table);
    r.transaction(kernel, &touched).text()
}

#[test]
fn an_endpoint_change_writes_only_elements_of_its_service() {
    let mut r = Renderer::new(Family::V4, options());
    let mut kernel = State::default();
    let mut table = sample();
    step(&mut r, &mut kernel, &table);
    // Nothing changed: nothing to write.
    assert_eq!(step(&mut r, &mut kernel, &table), "");

    edit(&mut table, "dns", |dns| {
        dns.endpoints.push(endpoint("10.244.3.9:53"))
    });
    let text = step(&mut r, &mut kernel, &table);
    assert_eq!(
        text,
        "delete element ip switchyard service-ips { 10.96.0.53 . udp . 53 }\n\
         add element ip switchyard service-ips { 10.96.0.53 . udp . 53 : goto cluster-2 }\n\
         add element ip switchyard endpoints { 10.96.0.53 . udp . 53 . 1 : 10.244.3.9 . 53 }\n"
    );
    // The kernel state is what a fresh render says.
    let mut fresh = Renderer::new(Family::V4, options());
    fresh.update(&table);
    let mut from_scratch = State::default();
    let all = fresh.everything(&from_scratch);
    fresh.transaction(&mut from_scratch, &all);
    assert_eq!(kernel.elements, from_scratch.elements);
    assert_eq!(
        kernel.chains.keys().collect::<HashSet<_>>(),
        from_scratch.chains.keys().collect::<HashSet<_>>()
    );
}

#[test]
fn affinity_and_many_endpoints_get_chains_that_go_with_their_service() {
    let mut r = Renderer::new(Family::V4, options());
    let mut kernel = State::default();
    let mut table = sample();
    let mut big = (*table.ports[0]).clone();
    big.name.name = "big".into();
    big.cluster_ips = vec!["10.96.1.1".parse().unwrap()];
    big.affinity = None;
    big.endpoints = (0..PICK_MAX + 1)
        .map(|i| endpoint(&format!("10.245.{}.{}:80", i / 200, i % 200 + 1)))
        .collect();
    table.ports.push(Arc::new(big));
    let first = step(&mut r, &mut kernel, &table);
    assert!(first.contains(&format!("numgen random mod {} vmap {{", PICK_MAX + 1)));
    let sticky: Vec<&String> = kernel.sets.keys().collect();
    assert_eq!(
        sticky.len(),
        2,
        "one affinity set per endpoint of the sticky service"
    );
    assert_eq!(kernel.sets.values().next(), Some(&600));
    let chains = kernel.chains.len();
    assert_eq!(chains, 2 + 1 + (PICK_MAX + 1) + 1);

    // The sticky service goes: its chains and sets are deleted after the element that led
    // to them, in one transaction.
    table.ports.retain(|p| p.name.name != "sticky");
    let text = step(&mut r, &mut kernel, &table);
    let element = text
        .find("delete element ip switchyard service-ips")
        .unwrap();
    let svc = text.find("delete chain ip switchyard svc-").unwrap();
    let ep = text.find("delete chain ip switchyard ep-").unwrap();
    let set = text.find("delete set ip switchyard aff-").unwrap();
    assert!(element < svc && svc < ep && ep < set, "{text}");
    assert!(kernel.sets.is_empty());
    assert_eq!(kernel.chains.len(), chains - 3);
}

#[test]
fn a_timeout_change_makes_new_affinity_sets() {
    let mut r = Renderer::new(Family::V4, options());
    let mut kernel = State::default();
    let mut table = sample();
    step(&mut r, &mut kernel, &table);
    let before: HashSet<String> = kernel.sets.keys().cloned().collect();
    edit(&mut table, "sticky", |sticky| {
        sticky.affinity = Some(Duration::from_secs(60))
    });
    step(&mut r, &mut kernel, &table);
    let after: HashSet<String> = kernel.sets.keys().cloned().collect();
    assert!(before.is_disjoint(&after));
    assert!(kernel.sets.values().all(|t| *t == 60));
}

#[test]
fn two_ports_claiming_one_element_write_it_once() {
    // Two Services with one ClusterIP and port (a conflict the API should refuse): the first
    // claim wins, and the element stays while either remains.
    let mut r = Renderer::new(Family::V4, options());
    let mut kernel = State::default();
    let mut table = sample();
    let dns = table.ports.iter().find(|p| p.name.name == "dns").unwrap();
    let mut twin = (**dns).clone();
    twin.name.name = "dns-twin".into();
    twin.endpoints = vec![endpoint("10.244.7.7:53")];
    table.ports.push(Arc::new(twin));
    let text = step(&mut r, &mut kernel, &table);
    assert_eq!(text.matches("10.96.0.53 . udp . 53 :").count(), 1, "{text}");
    table.ports.retain(|p| p.name.name != "dns");
    step(&mut r, &mut kernel, &table);
    let key = (Map::ServiceIps, "10.96.0.53 . udp . 53".to_string());
    assert!(kernel.elements.contains_key(&key));
    table.ports.retain(|p| p.name.name != "dns-twin");
    step(&mut r, &mut kernel, &table);
    assert!(!kernel.elements.contains_key(&key));
}

#[test]
fn frontends_are_read_from_dispatch_keys() {
    assert_eq!(
        frontend_of("10.96.0.53 . udp . 53"),
        Some((Some("10.96.0.53".parse().unwrap()), "udp", 53))
    );
    assert_eq!(frontend_of("udp . 30053"), Some((None, "udp", 30053)));
    assert_eq!(frontend_of("nonsense"), None);
}
