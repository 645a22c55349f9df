//! The iptables proxy against the real kernel and the machine's iptables, in a network
//! namespace of its own (created per test, deleted after). Needs root; skips otherwise.

use std::process::Command;
use std::sync::Arc;

use super::render::tests::{options, sample};
use super::*;
use crate::testing::{block_on, in_netns, skip};

/// The rules of this namespace, without iptables-save's timestamped comment lines.
fn save(variant: &str) -> String {
    let out = Command::new(format!("iptables-{variant}-save"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn round_trip(backend: Backend, variant: &'static str) {
    if Tools::find(Family::V4, variant).is_none() {
        skip(&format!("iptables-{variant} is not installed"));
        return;
    }
    in_netns(move || {
        // Someone else's chain and rule, which must survive everything below.
        sh(&format!("iptables-{variant} -t nat -N OTHER && iptables-{variant} -t nat -A OTHER -j RETURN && iptables-{variant} -t nat -A PREROUTING -j OTHER"));
        let config = Config {
            backend,
            options: options(),
        };
        let table = sample();
        let mut proxy = IptablesProxy::new(config.clone()).unwrap();
        let first = block_on(proxy.apply(&table));
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.frontends, 10 + 1, "ten IPv4 frontends and one IPv6");
        let rules = save(variant);
        assert!(
            rules.contains(
                "-A PREROUTING -m comment --comment \"switchyard service portals\" -j SY-SERVICES"
            ),
            "{rules}"
        );
        assert!(rules.contains("--to-destination 10.244.2.9:53"));

        // A restarted agent reads the rules back and finds nothing to rewrite: every rule is
        // rendered the way iptables-save prints it.
        let mut restarted = IptablesProxy::new(config.clone()).unwrap();
        let second = block_on(restarted.apply(&table));
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        assert_eq!(
            (second.added, second.removed),
            (0, 0),
            "the restart rewrote chains"
        );
        assert_eq!(save(variant), rules);

        // One service goes: its three chains are deleted, nothing else is written but the
        // chains that referenced it.
        let mut smaller = table.clone();
        smaller.ports.retain(|p| p.name.name != "sticky");
        let third = block_on(restarted.apply(&smaller));
        assert!(third.errors.is_empty(), "{:?}", third.errors);
        assert_eq!(third.removed, 3);
        assert!(third.added <= 2, "wrote {} chains", third.added);
        assert!(!save(variant).contains("default/sticky"));

        let done = block_on(cleanup(backend)).unwrap();
        assert!(done.chains >= 10 && done.jumps == 7 * 2, "{done:?}");
        let after = save(variant);
        assert!(!after.contains("SY-"), "{after}");
        assert!(after.contains("-A OTHER -j RETURN") && after.contains("-A PREROUTING -j OTHER"));
    });
}

#[test]
fn nft_rules_round_trip_through_the_kernel_and_clean_up() {
    round_trip(Backend::Nft, "nft");
}

#[test]
fn legacy_rules_round_trip_through_the_kernel_and_clean_up() {
    round_trip(Backend::Legacy, "legacy");
}

#[test]
fn an_empty_table_still_installs_the_base_chains() {
    if Tools::find(Family::V4, "nft").is_none() {
        skip("iptables-nft is not installed");
        return;
    }
    in_netns(|| {
        let mut proxy = IptablesProxy::new(Config {
            backend: Backend::Nft,
            options: options(),
        })
        .unwrap();
        let r = block_on(proxy.apply(&Arc::new(crate::table::ServiceTable::default())));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let rules = save("nft");
        assert!(rules.contains(":SY-SERVICES") && rules.contains("-j SY-POSTROUTING"));
    });
}
