//! The vocabulary of rendered rules, shared by the renderer ([`render`](super::render)) and the
//! dispatch trees ([`tree`](super::tree)): rule blocks, chain lines, and stable chain names.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A run of rule bodies (the text after `-A CHAIN `), shared between syncs while unchanged.
pub type Block = Arc<Vec<String>>;

/// One line of a chain, or a block of them.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Text(String),
    Block(Block),
}

impl Line {
    pub(crate) fn rules(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Line::Text(t) => (Some(t.as_str()), None),
            Line::Block(b) => (None, Some(b.iter().map(String::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Chains by name.
pub type Chains = BTreeMap<String, Vec<Line>>;

/// `prefix` + 16 hex digits of a stable 64-bit FNV-1a hash of `what`.
pub fn hashed(prefix: &str, what: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{prefix}{h:016X}")
}
