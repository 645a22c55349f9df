//! The `iptables-restore` text that turns one ruleset into another (only the chains that
//! changed), the jumps from the built-in chains into ours, and `iptables-save` output read back
//! into a ruleset.

use std::sync::Arc;

use super::render::{Ruleset, FILTER, FORWARD, POSTROUTING, PREFIX, SERVICES};
use super::rules::{Chains, Line};

/// Whether two chains hold the same rules.
fn same(a: &[Line], b: &[Line]) -> bool {
    let fast = a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Line::Block(p), Line::Block(q)) => Arc::ptr_eq(p, q) || p == q,
            (Line::Text(s), Line::Text(t)) => s == t,
            _ => false,
        });
    fast || a
        .iter()
        .flat_map(Line::rules)
        .eq(b.iter().flat_map(Line::rules))
}

/// A rule in a built-in chain that sends packets into ours.
pub struct Jump {
    pub table: &'static str,
    pub chain: &'static str,
    /// The rule's arguments, as given to `iptables -C/-I/-D`.
    pub args: &'static [&'static str],
}

impl Jump {
    /// The rule as a restore line (quoted where iptables-save would quote).
    fn restore_text(&self) -> String {
        self.args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub const JUMPS: &[Jump] = &[
    Jump {
        table: "nat",
        chain: "PREROUTING",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard service portals",
            "-j",
            SERVICES,
        ],
    },
    Jump {
        table: "nat",
        chain: "OUTPUT",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard service portals",
            "-j",
            SERVICES,
        ],
    },
    Jump {
        table: "nat",
        chain: "POSTROUTING",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard masquerade",
            "-j",
            POSTROUTING,
        ],
    },
    Jump {
        table: "filter",
        chain: "INPUT",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard rejects",
            "-j",
            FILTER,
        ],
    },
    Jump {
        table: "filter",
        chain: "OUTPUT",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard rejects",
            "-j",
            FILTER,
        ],
    },
    Jump {
        table: "filter",
        chain: "FORWARD",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard rejects",
            "-j",
            FILTER,
        ],
    },
    Jump {
        table: "filter",
        chain: "FORWARD",
        args: &[
            "-m",
            "comment",
            "--comment",
            "switchyard forwarding",
            "-j",
            FORWARD,
        ],
    },
];

/// What a restore changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The `iptables-restore --noflush` input; empty when nothing changes.
    pub text: String,
    pub written: usize,
    pub deleted: usize,
}

/// The restore input that turns `old` into `new`: changed chains are declared (which flushes
/// them under `--noflush`) and refilled, gone ones flushed and deleted, and `jumps` inserted.
/// Chains that did not change are not mentioned.
pub fn diff(old: &Ruleset, new: &Ruleset, jumps: &[&Jump]) -> Diff {
    let mut out = Diff::default();
    for (table, o, n) in [
        ("filter", &old.filter, &new.filter),
        ("nat", &old.nat, &new.nat),
    ] {
        let changed: Vec<(&String, &Vec<Line>)> = n
            .iter()
            .filter(|(name, lines)| o.get(*name).is_none_or(|old| !same(old, lines)))
            .collect();
        let gone: Vec<&String> = o.keys().filter(|name| !n.contains_key(*name)).collect();
        let table_jumps: Vec<&&Jump> = jumps.iter().filter(|j| j.table == table).collect();
        if changed.is_empty() && gone.is_empty() && table_jumps.is_empty() {
            continue;
        }
        let t = &mut out.text;
        t.push('*');
        t.push_str(table);
        t.push('\n');
        for name in changed.iter().map(|(n, _)| *n).chain(gone.iter().copied()) {
            t.push(':');
            t.push_str(name);
            t.push_str(" - [0:0]\n");
        }
        for (name, lines) in &changed {
            for rule in lines.iter().flat_map(Line::rules) {
                t.push_str("-A ");
                t.push_str(name);
                t.push(' ');
                t.push_str(rule);
                t.push('\n');
            }
        }
        for j in table_jumps {
            t.push_str(&format!("-I {} 1 {}\n", j.chain, j.restore_text()));
        }
        for name in &gone {
            t.push_str("-X ");
            t.push_str(name);
            t.push('\n');
        }
        t.push_str("COMMIT\n");
        out.written += changed.len();
        out.deleted += gone.len();
    }
    out
}

/// Switchyard's chains in `iptables-save` output.
pub fn parse_save(text: &str) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut table: Option<&mut Chains> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = match name.trim() {
                "nat" => Some(&mut rs.nat),
                "filter" => Some(&mut rs.filter),
                _ => None,
            };
            continue;
        }
        let Some(chains) = table.as_deref_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(PREFIX) {
                chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            if let Some((name, rule)) = rest.split_once(' ') {
                if name.starts_with(PREFIX) {
                    chains
                        .entry(name.to_string())
                        .or_default()
                        .push(Line::Text(rule.to_string()));
                }
            }
        }
    }
    rs
}
