//! The iptables proxy: ClusterIPs, NodePorts, external and load-balancer IPs programmed as NAT
//! rules, kube-proxy's features without its linear chains.
//!
//! - [`render`]: the ruleset as a pure function of the service table (golden-text tests);
//!   [`tree`]: the dispatch tree that makes a new connection's cost independent of the number of
//!   services; [`rules`]: the rule blocks and chain names both share; [`restore`]: the restore
//!   text between two rulesets, and saved rules read back.
//! - [`IptablesProxy::apply`] renders both families, writes only the chains that changed with
//!   one `iptables-restore --noflush` per family, and then clears stale UDP conntrack entries
//!   ([`conntrack`]).
//! - On start it reads back what the kernel has (`iptables-save`) and reconciles it: a restarted
//!   agent rewrites nothing that is already right, so traffic never stops. [`cleanup`] removes
//!   every chain, jump and conntrack entry Switchyard made. Chains of others are never touched:
//!   everything Switchyard owns starts with `SY-`.

pub(crate) mod conntrack;
pub mod render;
pub mod restore;
pub mod rules;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::table::ServiceTable;
use crate::SyncReport;
use render::{Family, Options, Renderer, Ruleset};
use restore::JUMPS;

/// Which iptables the machine's rules go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The one `iptables` runs (nf_tables or legacy), else whichever is installed.
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub backend: Backend,
    pub options: Options,
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("no iptables found ({0}): install the iptables package (Debian: apt-get install iptables), or run with --proxy-mode userspace")]
    NotFound(String),
    #[error("{command}: {message}")]
    Command { command: String, message: String },
}

/// The binaries of one family on one backend.
#[derive(Clone, Debug)]
struct Tools {
    cli: PathBuf,
    save: PathBuf,
    restore: PathBuf,
}

const SEARCH: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

pub(crate) fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SEARCH.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Tools {
    /// `iptables` or `ip6tables` on `variant` ("nft", "legacy", or "" for the plain names).
    fn find(family: Family, variant: &str) -> Option<Tools> {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let name = |suffix: &str| {
            if variant.is_empty() {
                format!("{base}{suffix}")
            } else {
                format!("{base}-{variant}{suffix}")
            }
        };
        Some(Tools {
            cli: find(&name(""))?,
            save: find(&name("-save"))?,
            restore: find(&name("-restore"))?,
        })
    }
}

/// The variant `auto` means here: what plain `iptables` is, else what is installed.
fn resolve(backend: Backend) -> Result<&'static str, IptablesError> {
    let installed = |v: &str| Tools::find(Family::V4, v).is_some();
    match backend {
        Backend::Nft if installed("nft") => Ok("nft"),
        Backend::Legacy if installed("legacy") => Ok("legacy"),
        Backend::Nft => Err(IptablesError::NotFound("iptables-nft".into())),
        Backend::Legacy => Err(IptablesError::NotFound("iptables-legacy".into())),
        Backend::Auto => {
            let plain = find("iptables")
                .and_then(|p| std::process::Command::new(p).arg("-V").output().ok());
            let version = plain.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            match version {
                Some(v) if v.contains("nf_tables") && installed("nft") => Ok("nft"),
                Some(v) if v.contains("legacy") && installed("legacy") => Ok("legacy"),
                _ if installed("nft") => Ok("nft"),
                _ if installed("legacy") => Ok("legacy"),
                _ if installed("") => Ok(""),
                _ => Err(IptablesError::NotFound(
                    "looked for iptables-nft, iptables-legacy and iptables".into(),
                )),
            }
        }
    }
}

pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, IptablesError> {
    let command = || {
        format!(
            "{} {}",
            program.file_name().unwrap_or_default().to_string_lossy(),
            args.join(" ")
        )
    };
    let fail = |message: String| IptablesError::Command {
        command: command(),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the command's own error below.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(fail(format!("{} ({})", err.trim(), out.status)))
    }
}

/// How often the jumps from the built-in chains are checked (someone may have flushed them).
const JUMP_CHECK: Duration = Duration::from_secs(60);

struct FamilyState {
    family: Family,
    tools: Option<Tools>,
    renderer: Renderer,
    /// What the kernel has, as far as we know; `None` until read back (and after a failure).
    applied: Option<Ruleset>,
    jumps_checked: Option<Instant>,
}

impl FamilyState {
    async fn read_back(tools: &Tools) -> Result<Ruleset, IptablesError> {
        let save = tools.save.as_path();
        let mut text = run(save, &["-t", "nat"], None).await?;
        text.push_str(&run(save, &["-t", "filter"], None).await?);
        Ok(restore::parse_save(&text))
    }

    /// The jumps missing from the built-in chains.
    async fn missing_jumps(tools: &Tools) -> Result<Vec<&'static restore::Jump>, IptablesError> {
        let mut missing = Vec::new();
        for j in JUMPS {
            let mut args = vec!["-w", "5", "-t", j.table, "-C", j.chain];
            args.extend(j.args);
            match run(&tools.cli, &args, None).await {
                Ok(_) => {}
                // 1: no such rule; 2: its target chain does not exist yet.
                Err(IptablesError::Command { message, .. })
                    if message.ends_with("(exit status: 1)")
                        || message.ends_with("(exit status: 2)") =>
                {
                    missing.push(j)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(missing)
    }

    /// Brings the kernel to `next`; returns (chains written, chains deleted).
    async fn sync(&mut self, next: Ruleset) -> Result<(usize, usize), IptablesError> {
        let tools = self
            .tools
            .as_ref()
            .ok_or_else(|| IptablesError::NotFound(format!("{:?} tools", self.family)))?;
        let old = match self.applied.take() {
            Some(old) => old,
            None => {
                self.jumps_checked = None;
                Self::read_back(tools).await?
            }
        };
        let jumps = match self.jumps_checked {
            Some(t) if t.elapsed() < JUMP_CHECK => Vec::new(),
            _ => Self::missing_jumps(tools).await?,
        };
        let diff = restore::diff(&old, &next, &jumps);
        if !diff.text.is_empty() {
            run(&tools.restore, &["-w", "5", "--noflush"], Some(&diff.text)).await?;
        }
        if self.jumps_checked.is_none() || !jumps.is_empty() {
            self.jumps_checked = Some(Instant::now());
        }
        self.applied = Some(next);
        Ok((diff.written, diff.deleted))
    }
}

/// The iptables proxy mode.
pub struct IptablesProxy {
    families: Vec<FamilyState>,
    udp: conntrack::StaleUdp,
}

impl IptablesProxy {
    /// Finds the iptables binaries; fails when there are none for IPv4.
    pub fn new(config: Config) -> Result<Self, IptablesError> {
        let variant = resolve(config.backend)?;
        let families = [Family::V4, Family::V6]
            .into_iter()
            .map(|family| FamilyState {
                family,
                tools: Tools::find(family, variant),
                renderer: Renderer::new(family, config.options.clone()),
                applied: None,
                jumps_checked: None,
            })
            .collect();
        Ok(IptablesProxy {
            families,
            udp: conntrack::StaleUdp::new(config.options.node_addr),
        })
    }

    /// Programs `table`, writing only what changed since the last call.
    pub async fn apply(&mut self, table: &ServiceTable) -> SyncReport {
        let mut report = SyncReport::default();
        let mut ok = true;
        for state in &mut self.families {
            let next = state.renderer.render(table);
            let frontends = next.frontends;
            // IPv6 is optional: a machine without ip6tables (or IPv6) only fails when an IPv6
            // service needs it.
            if state.family == Family::V6 && frontends == 0 && state.tools.is_none() {
                continue;
            }
            match state.sync(next).await {
                Ok((written, deleted)) => {
                    report.frontends += frontends;
                    report.added += written;
                    report.removed += deleted;
                }
                Err(e) if state.family == Family::V6 && frontends == 0 => {
                    tracing::debug!(error = %e, "IPv6 rules not programmed (no IPv6 services)");
                }
                Err(e) => {
                    ok = false;
                    report.errors.push(e.to_string());
                }
            }
        }
        if ok {
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
    pub chains: usize,
    pub jumps: usize,
    pub conntrack_filters: usize,
}

/// Removes every chain and jump Switchyard made, in both families, and the conntrack entries
/// of the service frontends those chains served.
pub async fn cleanup(backend: Backend) -> Result<Cleanup, IptablesError> {
    let variant = resolve(backend)?;
    let mut done = Cleanup::default();
    let mut filters = Vec::new();
    for family in [Family::V4, Family::V6] {
        let Some(tools) = Tools::find(family, variant) else {
            continue;
        };
        let ours = match FamilyState::read_back(&tools).await {
            Ok(rs) => rs,
            Err(e) if family == Family::V6 => {
                tracing::debug!(error = %e, "no IPv6 rules to clean up");
                continue;
            }
            Err(e) => return Err(e),
        };
        for j in JUMPS {
            // Delete every copy.
            loop {
                let mut args = vec!["-w", "5", "-t", j.table, "-D", j.chain];
                args.extend(j.args);
                if run(&tools.cli, &args, None).await.is_err() {
                    break;
                }
                done.jumps += 1;
            }
        }
        filters.extend(conntrack::frontends_in(&ours, family));
        let d = restore::diff(&ours, &Ruleset::default(), &[]);
        if !d.text.is_empty() {
            run(&tools.restore, &["-w", "5", "--noflush"], Some(&d.text)).await?;
        }
        done.chains += d.deleted;
    }
    done.conntrack_filters = filters.len();
    conntrack::Conntrack::new().delete(&filters).await?;
    Ok(done)
}

impl crate::ServiceProxy for IptablesProxy {
    fn apply<'a>(&'a mut self, table: &'a ServiceTable) -> crate::ProxyFuture<'a, SyncReport> {
        Box::pin(IptablesProxy::apply(self, table))
    }
}

#[cfg(test)]
mod kernel_tests;
