//! Network namespaces for benchmarks that program the kernel: created with `ip netns add`,
//! deleted when dropped, and entered per thread with `setns` (processes that thread starts run
//! inside too). Nothing here touches the machine's own namespace beyond creating veth pairs
//! whose both ends are moved into benchmark namespaces.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// A new namespace named `sy-bench-<tag>-<pid>`, with loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("sy-bench-{tag}-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend(args);
        ip(&all)
    }

    /// Runs a command inside the namespace to completion and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| path.clone())?;
            // SAFETY: setns with a namespace fd changes only the calling thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Links this namespace to `other` with a veth pair: `here/24` on this side, `there/24`
    /// on the other; returns the names of this side's and the other side's device.
    pub fn link(&self, other: &Netns, here: &str, there: &str) -> Result<(String, String)> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (a, b) = (format!("syb{id}a"), format!("syb{id}b"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &self.name])?;
        ip(&["link", "set", &b, "netns", &other.name])?;
        self.ip(&["addr", "add", &format!("{here}/24"), "dev", &a])?;
        other.ip(&["addr", "add", &format!("{there}/24"), "dev", &b])?;
        self.ip(&["link", "set", &a, "up"])?;
        other.ip(&["link", "set", &b, "up"])?;
        Ok((a, b))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
