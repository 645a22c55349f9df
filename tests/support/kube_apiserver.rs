//! A real kube-apiserver on etcd, both built from their Go modules by `bench/peers/build.sh`
//! (the test command builds them once and points `SWITCHYARD_PEERS_BIN` at them), on loopback
//! ports with an admin token, RBAC, and ServiceAccount token signing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct KubeApiserver {
    etcd: Child,
    apiserver: Child,
    /// How kube-apiserver was started, to start it again.
    program: PathBuf,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The network namespace it runs in (its loopback), if not the test's own.
    netns: Option<String>,
}

/// Where the built peers are, if the test command built them.
pub fn peers() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var("SWITCHYARD_PEERS_BIN").ok()?);
    (dir.join("kube-apiserver").exists() && dir.join("etcd").exists()).then_some(dir)
}

/// `program`, run in `netns` if given.
fn command(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn spawn(netns: Option<&str>, program: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    command(netns, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

impl KubeApiserver {
    /// Starts etcd and kube-apiserver on loopback, in network namespace `netns` if given, with
    /// `advertise` (an address of that namespace) as the `kubernetes` Service's endpoint.
    pub fn start(peers: &Path, netns: Option<(&str, &str)>) -> KubeApiserver {
        let (netns, advertise) = (netns.map(|n| n.0), netns.map(|n| n.1));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let etcd = spawn(
            netns,
            &peers.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            ],
            &d.join("etcd.log"),
        );
        // The ServiceAccount token signing key (ES256).
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(d.join("sa.pub"), key.public_key_pem()).unwrap();
        std::fs::write(
            d.join("tokens.csv"),
            "admin-token,admin,admin,system:masters\n",
        )
        .unwrap();
        let program = peers.join("kube-apiserver");
        let args: Vec<String> = [
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d.join("certs").display()),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--service-node-port-range=30000-32767".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
        ]
        .into_iter()
        .chain(advertise.map(|a| format!("--advertise-address={a}")))
        .collect();
        let apiserver = spawn(netns, &program, &args, &d.join("kube-apiserver.log"));
        let mut k = KubeApiserver {
            etcd,
            apiserver,
            program,
            args,
            dir,
            port,
            netns: netns.map(str::to_string),
        };
        k.write_kubeconfig("admin.kubeconfig", "admin-token");
        k.wait_ready();
        k
    }

    /// Stops kube-apiserver (every watch ends) and starts it again on the same etcd: its watch
    /// cache starts afresh, so a watch resuming from before gets 410 and its client relists.
    pub fn restart(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        self.apiserver = spawn(
            self.netns.as_deref(),
            &self.program,
            &self.args,
            &self.dir.path().join("kube-apiserver.log"),
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                panic!("kube-apiserver exited: {status}\n{}", self.log());
            }
            let (ok, out, _) = self.kubectl(&["get", "--raw", "/readyz"]);
            if ok && out.trim() == "ok" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "kube-apiserver not ready within 2 minutes\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Writes a kubeconfig for `token` into the directory; returns its path.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // The serving certificate kube-apiserver made for itself is its own CA.
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\ncurrent-context: c\n",
            self.port,
            self.dir.path().join("certs/apiserver.crt").display()
        );
        std::fs::write(&path, kc).unwrap();
        path
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_stdin(args, "")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut cmd = command(self.netns.as_deref(), Path::new("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        super::run_with_stdin(&mut cmd, stdin)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(
            ok,
            "kubectl {args:?} against kube-apiserver failed: {err}{out}"
        );
        out
    }
}

impl Drop for KubeApiserver {
    fn drop(&mut self) {
        for c in [&mut self.apiserver, &mut self.etcd] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
