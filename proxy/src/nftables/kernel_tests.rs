//! The nftables proxy against the real kernel and the machine's `nft`, in a network namespace
//! of its own (created per test, deleted after). Needs root; skips otherwise.

use std::process::Command;

use super::*;
use crate::iptables::render::tests::{edit, options, sample};
use crate::testing::{block_on, in_netns, skip};

fn list() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tables_round_trip_through_the_kernel_and_clean_up() {
    if find("nft").is_none() {
        skip("the nft tool is not installed");
        return;
    }
    in_netns(|| {
        // Someone else's table, which must survive everything below.
        let st = Command::new("nft")
            .args(["add table ip other; add chain ip other c; add rule ip other c counter"])
            .status()
            .unwrap();
        assert!(st.success());
        let config = Config { options: options() };
        let table = sample();
        let mut proxy = NftablesProxy::new(config.clone()).unwrap();
        let first = block_on(proxy.apply(&table));
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.frontends, 10 + 1, "ten IPv4 frontends and one IPv6");
        let rules = list();
        assert!(
            rules.contains("10.96.0.53 . udp . 53 . 0 : 10.244.2.9 . 53"),
            "{rules}"
        );
        assert!(
            rules.contains("fd00::10 . tcp . 80 : goto pick-1"),
            "{rules}"
        );

        // A restarted agent reads the tables back and finds nothing to write.
        let mut restarted = NftablesProxy::new(config.clone()).unwrap();
        let second = block_on(restarted.apply(&table));
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        assert_eq!(second.added, 0, "the restart rewrote something");
        assert_eq!(list(), rules);

        // A new Service with a NodePort, a local endpoint (hairpin) and an IPv6 address, and an
        // endpoint change: element writes only, which go over netlink in both families; a
        // restart reads back exactly what was rendered (the encoding round-trips).
        let mut grown = table.clone();
        let web = grown.ports.iter().find(|p| p.name.name == "web").unwrap();
        let mut new = (**web).clone();
        new.name.name = "new".into();
        new.cluster_ips = vec!["10.96.9.9".parse().unwrap(), "fd00::99".parse().unwrap()];
        new.node_port = Some(30999);
        new.affinity = None;
        new.endpoints = ["10.244.1.9:8080", "10.244.2.9:8080", "[fd00:244::9]:8080"]
            .iter()
            .enumerate()
            .map(|(i, a)| crate::table::Endpoint {
                addr: a.parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                local: i == 0,
            })
            .collect();
        grown.ports.push(std::sync::Arc::new(new));
        grown
            .ports
            .sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
        let batches = |p: &NftablesProxy| -> Vec<usize> {
            p.families.iter().map(|f| f.netlink_batches).collect()
        };
        let grew = block_on(restarted.apply(&grown));
        assert!(grew.errors.is_empty(), "{:?}", grew.errors);
        assert_eq!(batches(&restarted), [1, 1]);
        let now = list();
        for want in [
            "10.96.9.9 . tcp . 80 : goto cluster-2",
            "10.96.9.9 . tcp . 80 . 1 : 10.244.2.9 . 8080",
            "tcp . 30999 : goto np-masq-2",
            "tcp . 30999 . 0 : 10.244.1.9 . 8080",
            "10.244.1.9 . 10.244.1.9",
            "fd00::99 . tcp . 80 . 0 : fd00:244::9 . 8080",
        ] {
            assert!(now.contains(want), "{want} missing:\n{now}");
        }
        let mut again = NftablesProxy::new(config.clone()).unwrap();
        let read = block_on(again.apply(&grown));
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        assert_eq!(
            read.added, 0,
            "the restart found what netlink wrote different"
        );
        let back = block_on(restarted.apply(&table));
        assert!(back.errors.is_empty(), "{:?}", back.errors);
        assert_eq!(batches(&restarted), [2, 2]);
        assert_eq!(list(), rules, "the new Service is gone without a trace");

        // Someone deletes one of our elements behind our back: the next change that touches it
        // is refused whole (netlink, then nft), and the sync after reads the table back and
        // heals it.
        let st = Command::new("nft")
            .args(["delete element ip switchyard endpoints { 10.96.0.53 . udp . 53 . 0 }"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut changed = table.clone();
        edit(&mut changed, "dns", |dns| {
            dns.endpoints[0].addr = "10.244.2.10:53".parse().unwrap()
        });
        let refused = block_on(restarted.apply(&changed));
        assert_eq!(refused.errors.len(), 1, "{:?}", refused.errors);
        let healed = block_on(restarted.apply(&changed));
        assert!(healed.errors.is_empty(), "{:?}", healed.errors);
        assert!(list().contains("10.96.0.53 . udp . 53 . 0 : 10.244.2.10 . 53"));
        let back = block_on(restarted.apply(&table));
        assert!(back.errors.is_empty(), "{:?}", back.errors);
        assert_eq!(list(), rules);

        // One service goes: only its elements, chains and sets.
        let mut smaller = table.clone();
        smaller.ports.retain(|p| p.name.name != "sticky");
        let third = block_on(restarted.apply(&smaller));
        assert!(third.errors.is_empty(), "{:?}", third.errors);
        let now = list();
        assert!(
            !now.contains("aff-") && !now.contains("10.96.0.50"),
            "{now}"
        );
        assert!(now.contains("10.96.0.53 . udp . 53"));

        // Other options: the fixed part differs, and the table is replaced whole.
        let mut other = options();
        other.masquerade_all = true;
        let mut replaced = NftablesProxy::new(Config { options: other }).unwrap();
        let fourth = block_on(replaced.apply(&smaller));
        assert!(fourth.errors.is_empty(), "{:?}", fourth.errors);
        let now = list();
        assert!(!now.contains("saddr != 10.244.0.0/16"), "{now}");
        assert_eq!(now.matches("table ip switchyard").count(), 1);

        let done = block_on(cleanup()).unwrap();
        assert_eq!(done.tables, 2);
        assert_eq!(
            done.conntrack_filters, 9,
            "the frontends with endpoints, IPv4 and IPv6"
        );
        let after = list();
        assert!(!after.contains("switchyard"), "{after}");
        assert!(after.contains("table ip other"));
    });
}
