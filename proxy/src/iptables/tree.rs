//! Dispatch trees: the rules that find a frontend's block without walking one rule per service.
//!
//! Keys (destination addresses, or NodePort numbers) are split on aligned prefixes of
//! [`STRIDE`] bits: a node with more than [`LEAF_KEYS`] distinct keys gets one jump rule per
//! non-empty child prefix (`-d 10.96.64.0/18 -j SY-DST-…`), a child holding a single key has
//! its block inlined instead of a chain of its own, and levels where every key falls into one
//! child are skipped. A lookup so evaluates at most `2^STRIDE` jumps per level and one leaf, and
//! the first and the last service cost the same. Chain names hash the (space, prefix, length),
//! so a change touches only the chains on its own path and restarts find the same names.

use super::rules::{hashed, Block, Chains, Line};

/// Bits a tree level splits on (a fanout of 4).
const STRIDE: u32 = 2;
/// Keys a chain holds before it is split.
pub(super) const LEAF_KEYS: usize = 16;

/// One kind of key and how rules match a prefix of it.
pub(super) struct Space<'a> {
    /// Bits in a key (32 for IPv4 addresses, 128 for IPv6, 16 for ports).
    pub bits: u32,
    /// Chain-name prefix of the tree's inner chains (`SY-DST-`).
    pub chain_prefix: &'a str,
    /// The match text for `prefix/len` (the prefix right-aligned in a u128).
    pub matcher: &'a dyn Fn(u128, u32) -> String,
}

/// Places `entries` (sorted by key; a key may carry several blocks) under the chain `root`,
/// returning the root's lines; inner chains go into `chains`.
pub(super) fn build(space: &Space, entries: &[(u128, Block)], chains: &mut Chains) -> Vec<Line> {
    let mut lines = Vec::new();
    place(space, entries, 0, &mut lines, chains);
    lines
}

fn distinct(entries: &[(u128, Block)]) -> usize {
    let mut n = 0;
    let mut last = None;
    for (k, _) in entries {
        if last != Some(*k) {
            n += 1;
            last = Some(*k);
        }
    }
    n
}

fn group_of(space: &Space, key: u128, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        key >> (space.bits - len)
    }
}

fn place(
    space: &Space,
    entries: &[(u128, Block)],
    len: u32,
    lines: &mut Vec<Line>,
    chains: &mut Chains,
) {
    if distinct(entries) <= LEAF_KEYS {
        lines.extend(entries.iter().map(|(_, b)| Line::Block(b.clone())));
        return;
    }
    // Skip levels where every key shares the next prefix.
    let mut next = len;
    loop {
        next = (next + STRIDE).min(space.bits);
        let first = group_of(space, entries[0].0, next);
        let last = group_of(space, entries[entries.len() - 1].0, next);
        if first != last || next == space.bits {
            break;
        }
    }
    let mut start = 0;
    while start < entries.len() {
        let group = group_of(space, entries[start].0, next);
        let end = start
            + entries[start..]
                .iter()
                .take_while(|(k, _)| group_of(space, *k, next) == group)
                .count();
        let part = &entries[start..end];
        if distinct(part) == 1 {
            lines.extend(part.iter().map(|(_, b)| Line::Block(b.clone())));
        } else {
            let name = hashed(space.chain_prefix, &format!("{group:x}/{next}"));
            lines.push(Line::Text(format!(
                "{} -j {name}",
                (space.matcher)(group, next)
            )));
            let mut child = Vec::new();
            place(space, part, next, &mut child, chains);
            chains.insert(name, child);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn matcher(prefix: u128, len: u32) -> String {
        format!("-d {:x}/{len}", prefix << (32 - len))
    }

    fn space() -> Space<'static> {
        Space {
            bits: 32,
            chain_prefix: "SY-DST-",
            matcher: &matcher,
        }
    }

    fn entries(keys: impl Iterator<Item = u128>) -> Vec<(u128, Block)> {
        keys.map(|k| (k, Arc::new(vec![format!("key {k:x}")])))
            .collect()
    }

    /// The rules a lookup of `key` evaluates, following jumps as the kernel would (every
    /// non-matching line counts one).
    fn cost(chains: &Chains, lines: &[Line], key: u128) -> (usize, bool) {
        let mut n = 0;
        for line in lines {
            match line {
                Line::Block(b) => {
                    for rule in b.iter() {
                        n += 1;
                        if *rule == format!("key {key:x}") {
                            return (n, true);
                        }
                    }
                }
                Line::Text(t) => {
                    n += 1;
                    let (m, chain) = t.split_once(" -j ").unwrap();
                    let (prefix, len) = m[3..].split_once('/').unwrap();
                    let (prefix, len) = (
                        u128::from_str_radix(prefix, 16).unwrap(),
                        len.parse::<u32>().unwrap(),
                    );
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) } as u128;
                    if key & mask == prefix {
                        let (inner, found) = cost(chains, &chains[chain], key);
                        n += inner;
                        if found {
                            return (n, true);
                        }
                    }
                }
            }
        }
        (n, false)
    }

    #[test]
    fn small_sets_stay_in_the_root() {
        let mut chains = Chains::new();
        let e = entries((1..=LEAF_KEYS as u128).map(|i| 0x0a60_0000 + i));
        let root = build(&space(), &e, &mut chains);
        assert!(chains.is_empty());
        assert_eq!(root.len(), LEAF_KEYS);
    }

    #[test]
    fn lookups_cost_the_same_for_the_first_and_the_last_of_ten_thousand() {
        // Spread over a /12 like allocated ClusterIPs.
        let keys: Vec<u128> = (0..10_000u128)
            .map(|i| 0x0a60_0000 + ((i * 7919) % (1 << 20)))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        let mut chains = Chains::new();
        let root = build(&space(), &entries(sorted.iter().copied()), &mut chains);
        let mut worst = 0;
        for k in &keys {
            let (n, found) = cost(&chains, &root, *k);
            assert!(found, "{k:x} not reachable");
            worst = worst.max(n);
        }
        // A linear chain would need up to 10,000 evaluations.
        assert!(worst < 120, "worst lookup {worst} rules");
        let miss = cost(&chains, &root, 0x0b00_0000);
        assert!(!miss.1 && miss.0 < 20);
        assert!(chains.len() < 2_000, "{} chains", chains.len());
    }

    #[test]
    fn adding_a_key_changes_only_its_own_path() {
        let keys: Vec<u128> = (0..2_000u128).map(|i| 0x0a60_0000 + i * 37).collect();
        let mut a = Chains::new();
        build(&space(), &entries(keys.iter().copied()), &mut a);
        let mut more = keys.clone();
        more.push(0x0a60_0000 + 5);
        more.sort();
        let mut b = Chains::new();
        build(&space(), &entries(more.iter().copied()), &mut b);
        let changed = b.iter().filter(|(n, l)| a.get(*n) != Some(l)).count();
        assert!(changed <= 12, "{changed} chains changed");
    }
}
