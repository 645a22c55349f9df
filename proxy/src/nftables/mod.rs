//! The nftables proxy: kube-proxy's nftables-mode semantics in tables of our own (`ip
//! switchyard`, `ip6 switchyard`), where a service is data — verdict-map and map elements —
//! rather than rules, so that a change costs the elements it changes.
//!
//! - [`render`]: the desired state, updated port by port, and the `nft` transaction between
//!   two states (golden-text tests).
//! - [`NftablesProxy::apply`] sends one transaction per family: atomic, so a packet sees the old
//!   state or the new one. Element writes alone (a new Service, an endpoint change) go straight
//!   to the kernel as a netlink batch ([`netlink`]); the rest through `nft -f -`. The first sync reads the table back (`nft -j
//!   list table`) and writes only what differs, so a restarted agent rewrites nothing that is
//!   right; a table written with other options, or one a transaction failed against, is
//!   replaced whole in one transaction. Stale UDP conntrack entries are cleared as in the
//!   iptables mode.
//! - [`cleanup`] deletes both tables and the conntrack entries NATed for their frontends.
//!
//! What it leaves to the host's firewall: nftables base chains of other tables run on their own,
//! so (unlike the iptables mode's `SY-FORWARD`) it cannot accept what a FORWARD policy of DROP
//! in another table drops.

mod netlink;
pub mod render;

use std::path::PathBuf;

use crate::iptables::conntrack::{Conntrack, Filter, StaleUdp};
use crate::iptables::render::{Family, Options};
use crate::iptables::{find, run, IptablesError};
use crate::table::ServiceTable;
use crate::SyncReport;
use render::{family_name, Map, Renderer, State, TABLE};

#[derive(Clone, Debug)]
pub struct Config {
    pub options: Options,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft tool is not installed (Debian: apt-get install nftables), or run with another --proxy-mode")]
    NotFound,
    #[error("{0}")]
    Command(#[from] IptablesError),
    #[error("nft -j list table: {0}")]
    Parse(String),
}

struct FamilyState {
    family: Family,
    renderer: Renderer,
    /// The fixed part's text, and its marker chain's name.
    fixed: String,
    /// What the kernel has, as far as we know; `None` until read back, and after a failure.
    kernel: Option<State>,
    /// Transactions the kernel took as netlink element batches.
    netlink_batches: usize,
    /// The socket they go through (opened on first use, dropped after a failure).
    socket: Option<netlink::Socket>,
}

/// The nftables proxy mode.
pub struct NftablesProxy {
    nft: PathBuf,
    families: Vec<FamilyState>,
    udp: StaleUdp,
}

/// What `nft -j list table` says of our table: its state, and whether its fixed part is the
/// one `marker` names. `None`: there is no table.
async fn read_back(
    nft: &std::path::Path,
    family: Family,
    marker: &str,
) -> Result<Option<(State, bool)>, NftError> {
    let f = family_name(family);
    let text = match run(nft, &["-j", "list", "table", f, TABLE], None).await {
        Ok(t) => t,
        Err(IptablesError::Command { message, .. })
            if message.contains("No such file or directory") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| NftError::Parse(e.to_string()))?;
    let mut state = State::default();
    let mut fixed = false;
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or_else(|| NftError::Parse("no \"nftables\" array".into()))?;
    for item in items {
        if let Some(name) = item.pointer("/chain/name").and_then(|n| n.as_str()) {
            if name == marker {
                fixed = true;
            } else if name.starts_with("svc-") || name.starts_with("ep-") {
                // Content-addressed: the rules are what the name says; only the name matters.
                state.chains.insert(name.to_string(), Default::default());
            }
        }
        let set = item.get("map").or_else(|| item.get("set"));
        let Some(set) = set else { continue };
        let Some(name) = set.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        if name.starts_with("aff-") {
            let timeout = set.get("timeout").and_then(|t| t.as_u64()).unwrap_or(0);
            state.sets.insert(name.to_string(), timeout);
            continue;
        }
        let Some(map) = Map::by_name(name) else {
            continue;
        };
        for elem in set
            .get("elem")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            let (key, value) = match elem.as_array().map(Vec::as_slice) {
                Some([k, v]) => (text_of(k), text_of(v)),
                _ => (text_of(elem), Some(String::new())),
            };
            if let (Some(k), Some(v)) = (key, value) {
                state.elements.insert((map, k), v);
            }
        }
    }
    Ok(Some((state, fixed)))
}

/// An element's key or value as the renderer writes it: `a . b . c`, or `goto CHAIN`.
fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(|c| c.as_array()) {
                let parts: Option<Vec<String>> = parts.iter().map(text_of).collect();
                return Some(parts?.join(" . "));
            }
            if let Some(target) = v.pointer("/goto/target").and_then(|t| t.as_str()) {
                return Some(format!("goto {target}"));
            }
            o.get("elem").and_then(|e| e.get("val")).and_then(text_of)
        }
        _ => None,
    }
}

impl FamilyState {
    /// Brings the kernel to the renderer's state; returns the elements, chains and sets
    /// written or deleted.
    async fn sync(
        &mut self,
        nft: &std::path::Path,
        table: &ServiceTable,
    ) -> Result<usize, NftError> {
        let touched = self.renderer.update(table);
        let marker = render::marker(&self.fixed).to_string();
        let (mut kernel, touched, start) = match self.kernel.take() {
            Some(k) => (k, touched, Start::Known),
            None => match read_back(nft, self.family, &marker).await? {
                Some((k, true)) => {
                    let all = self.renderer.everything(&k);
                    (k, all, Start::Known)
                }
                found => {
                    let empty = State::default();
                    let all = self.renderer.everything(&empty);
                    let start = if found.is_some() {
                        Start::Replace
                    } else {
                        Start::Fresh
                    };
                    (empty, all, start)
                }
            },
        };
        let t = self.renderer.transaction(&mut kernel, &touched);
        let f = family_name(self.family);
        let whole = |body: String| {
            format!(
                "table {f} {TABLE}\ndelete table {f} {TABLE}\n{}{body}",
                self.fixed
            )
        };
        match start {
            // Another fixed part: replaced whole in one transaction, so traffic never sees a
            // table half written.
            Start::Replace => run(nft, &["-f", "-"], Some(&whole(t.text())))
                .await
                .map(drop)?,
            // Nothing is served yet: the chains through nft, then the elements (most of the
            // work) as netlink batches.
            Start::Fresh => {
                run(nft, &["-f", "-"], Some(&whole(t.text_of(true, false)))).await?;
                self.elements(nft, &t).await?;
            }
            Start::Known if t.elements_only() => self.elements(nft, &t).await?,
            Start::Known if !t.is_empty() => {
                run(nft, &["-f", "-"], Some(&t.text())).await.map(drop)?
            }
            Start::Known => {}
        }
        self.kernel = Some(kernel);
        Ok(t.changes())
    }

    /// `t`'s element writes, straight to the kernel; should netlink fail, the batch was undone
    /// and `nft` says why (or succeeds).
    async fn elements(
        &mut self,
        nft: &std::path::Path,
        t: &render::Transaction,
    ) -> Result<(), NftError> {
        if t.delete.is_empty() && t.add.is_empty() {
            return Ok(());
        }
        // The kernel handles the batch within the send: well under a millisecond for a change.
        let sent = netlink::batch(t).and_then(|(batch, acked)| {
            let socket = match self.socket.take() {
                Some(s) => s,
                None => netlink::Socket::open()?,
            };
            socket.send(&batch, acked)?;
            self.socket = Some(socket);
            Ok(())
        });
        match sent {
            Ok(()) => self.netlink_batches += 1,
            Err(e) => {
                tracing::debug!(error = %e, "netlink element batch refused; retrying with nft");
                run(nft, &["-f", "-"], Some(&t.text_of(false, true))).await?;
            }
        }
        Ok(())
    }
}

/// What the first sync found.
enum Start {
    /// Our table, with this fixed part (or what the last sync left).
    Known,
    /// No table.
    Fresh,
    /// A table with another fixed part.
    Replace,
}

impl NftablesProxy {
    /// Finds the `nft` tool.
    pub fn new(config: Config) -> Result<Self, NftError> {
        let nft = find("nft").ok_or(NftError::NotFound)?;
        let families = [Family::V4, Family::V6]
            .into_iter()
            .map(|family| FamilyState {
                family,
                renderer: Renderer::new(family, config.options.clone()),
                fixed: render::fixed(family, &config.options),
                kernel: None,
                netlink_batches: 0,
                socket: None,
            })
            .collect();
        Ok(NftablesProxy {
            nft,
            families,
            udp: StaleUdp::new(config.options.node_addr),
        })
    }

    /// Programs `table`, writing only what changed since the last call.
    pub async fn apply(&mut self, table: &ServiceTable) -> SyncReport {
        let mut report = SyncReport::default();
        for state in &mut self.families {
            match state.sync(&self.nft, table).await {
                Ok(changes) => {
                    report.frontends += state.renderer.frontends();
                    report.added += changes;
                }
                // IPv6 is optional: a kernel without it only fails IPv6 services.
                Err(e) if state.family == Family::V6 && state.renderer.frontends() == 0 => {
                    tracing::debug!(error = %e, "IPv6 table not programmed (no IPv6 services)");
                }
                Err(e) => {
                    // The transaction was refused whole: read the kernel back next time.
                    state.kernel = None;
                    report.errors.push(e.to_string());
                }
            }
        }
        if report.errors.is_empty() {
            if let Err(e) = self.udp.clear(table).await {
                report.errors.push(e.to_string());
            }
        }
        report
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub tables: usize,
    pub conntrack_filters: usize,
}

/// Deletes both tables, and the conntrack entries NATed for the frontends they served.
pub async fn cleanup() -> Result<Cleanup, NftError> {
    let Some(nft) = find("nft") else {
        return Ok(Cleanup::default());
    };
    let mut done = Cleanup::default();
    let mut filters = Vec::new();
    for family in [Family::V4, Family::V6] {
        let Some((state, _)) = read_back(&nft, family, "").await? else {
            continue;
        };
        for (map, key) in state.elements.keys() {
            if !matches!(map, Map::ServiceIps | Map::ServiceNodeports) {
                continue;
            }
            if let Some((ip, protocol, port)) = render::frontend_of(key) {
                filters.push(Filter::nated(family, protocol, ip, port));
            }
        }
        let f = family_name(family);
        run(&nft, &["delete", "table", f, TABLE], None).await?;
        done.tables += 1;
    }
    done.conntrack_filters = filters.len();
    Conntrack::new().delete(&filters).await?;
    Ok(done)
}

impl crate::ServiceProxy for NftablesProxy {
    fn apply<'a>(&'a mut self, table: &'a ServiceTable) -> crate::ProxyFuture<'a, SyncReport> {
        Box::pin(NftablesProxy::apply(self, table))
    }
}

#[cfg(test)]
mod kernel_tests;
