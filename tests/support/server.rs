//! Starting a real `switchyard server` for a test, and driving it with kubectl and kube-rs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A server process with its own data directory, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// A kubeconfig for node `name` (a client certificate for `system:node:NAME` in
/// `system:nodes`, signed by the CA in the server's `data_dir`), written next to the server's.
pub fn node_kubeconfig(data_dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(bin())
        .args(["kubeconfig", "--data-dir"])
        .arg(data_dir)
        .args([
            "--user",
            &format!("system:node:{name}"),
            "--group",
            "system:nodes",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = data_dir.join(format!("node-{name}.kubeconfig"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// A free loopback port (TCP and UDP) for a child process to listen on, given to one test only.
/// It comes from below the kernel's ephemeral range: a port from `bind(0)` is free only until
/// the child binds it, and any socket bound to port 0 meanwhile (other tests run in parallel)
/// could take it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    assert!(
        low > BASE + 1000,
        "the ephemeral port range starts at {low}"
    );
    let span = low - BASE;
    // Runs of the suite at the same time start at different places.
    let start = std::process::id() * 7919 % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below {low}");
        let port = (BASE + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

fn spawn(dir: &Path, listen: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(bin())
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--listen", listen])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start switchyard server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("server output");
    let addr = line
        .trim()
        .rsplit("https://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in out.lines() {});
    (child, addr)
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (child, addr) = spawn(dir.path(), "127.0.0.1:0", extra);
        Server {
            child,
            addr,
            dir,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts on a fixed address (so a restart comes back where clients expect it).
    pub fn start_at(port: u16, extra: &[&str]) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), port, extra)
    }

    /// Starts on a fixed address with its data in `dir`.
    pub fn start_in(dir: tempfile::TempDir, port: u16, extra: &[&str]) -> Server {
        let (child, addr) = spawn(dir.path(), &format!("127.0.0.1:{port}"), extra);
        Server {
            child,
            addr,
            dir,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// kill -9, then start again on the same data directory and address.
    pub fn crash_and_restart(&mut self, extra: &[&str]) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (child, addr) = spawn(self.dir.path(), &self.addr.to_string(), extra);
        assert_eq!(addr, self.addr);
        self.child = child;
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        c
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_stdin(args, "")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        super::run_with_stdin(&mut self.kubectl_cmd(args), stdin)
    }

    /// Runs kubectl and fails the test if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}{out}");
        out
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`, trimmed.
    pub fn jsonpath(&self, kind: &str, name: &str, path: &str) -> String {
        let path = format!("jsonpath={path}");
        self.ok(&["get", kind, name, "-o", &path])
            .trim()
            .to_string()
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.kubectl_stdin(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {err}{out}");
        out
    }

    /// `kubectl get ... -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some, for at most `limit` (a bound on waiting, not a timing check).
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
