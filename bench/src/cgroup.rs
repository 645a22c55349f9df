//! A cgroup and a bpffs of the benchmark's own, for the eBPF proxy: the programs attach to the
//! cgroup (the benchmark process joins it only while the eBPF mode is measured), maps and links
//! pin on the bpffs. Both are removed when dropped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use switchyard_proxy::ebpf;

pub struct BpfEnv {
    pub cgroup: PathBuf,
    /// Where the process was, to go back to.
    home: PathBuf,
    bpffs: tempfile::TempDir,
}

impl BpfEnv {
    pub fn new() -> Result<BpfEnv> {
        let v2 = ebpf::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo")?)
            .map_err(anyhow::Error::msg)?;
        let cgroup = v2.join(format!("sy-bench-{}", std::process::id()));
        std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = v2.join(rel.trim_start_matches('/'));
        let bpffs = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(bpffs.path())
            .output()?;
        if !out.status.success() {
            bail!("mount bpffs: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(BpfEnv {
            cgroup,
            home,
            bpffs,
        })
    }

    /// Where the proxy pins its maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.path().join("switchyard")
    }

    /// Moves this process into (or out of) the benchmark's cgroup.
    pub fn enter_cgroup(&self, inside: bool) -> Result<()> {
        let to = if inside { &self.cgroup } else { &self.home };
        std::fs::write(to.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", to.display()))
    }
}

impl Drop for BpfEnv {
    fn drop(&mut self) {
        let _ = self.enter_cgroup(false);
        let _ = ebpf::cleanup(&self.pin_dir());
        let _ = Command::new("umount").arg(self.bpffs.path()).status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}
