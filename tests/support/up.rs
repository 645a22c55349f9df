//! `switchyard up` for a test: every listener on a free loopback port, so tests run in
//! parallel, killed on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{bin, free_port};

pub struct Up {
    child: Child,
    pub dir: tempfile::TempDir,
    pub api: u16,
    pub metrics: u16,
    pub dns: u16,
    pub http: u16,
    pub https: u16,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

impl Up {
    /// Starts `up` with `extra` flags; with `unprivileged`, as the user nobody when the tests
    /// run as root. Returns once the agent's metrics endpoint and the kubeconfig exist.
    pub fn start(extra: &[&str], unprivileged: bool) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let [api, metrics, dns, http, https] = [(); 5].map(|_| free_port());
        let drop_root = unprivileged && is_root();
        // As root, `up` runs as nobody from a copy of the binary in its own directory (the
        // checkout's directories may not be open to other users).
        let program = if drop_root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let copy = dir.path().join("switchyard");
            std::fs::copy(bin(), &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            copy
        } else {
            std::path::PathBuf::from(bin())
        };
        let mut cmd = Command::new(program);
        cmd.args(["up", "--data-dir"]).arg(dir.path().join("data"));
        let addr = |p: u16| format!("127.0.0.1:{p}");
        cmd.args(["--listen", &addr(api), "--metrics-listen", &addr(metrics)])
            .args(["--dns-listen", &addr(dns)])
            .args([
                "--ingress-http",
                &addr(http),
                "--ingress-https",
                &addr(https),
            ])
            .args(extra);
        if !extra.contains(&"--node-name") {
            cmd.args(["--node-name", "test-node"]);
        }
        // Its log (and access log) goes to a file in its directory; see [`Up::log`].
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        if drop_root {
            cmd.uid(65534).gid(65534);
        }
        let child = cmd.spawn().unwrap();
        let mut up = Up {
            child,
            dir,
            api,
            metrics,
            dns,
            http,
            https,
        };
        let kubeconfig = up.kubeconfig();
        for _ in 0..600 {
            if let Ok(Some(status)) = up.child.try_wait() {
                panic!("switchyard up exited at start: {status}");
            }
            let listening = |p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if listening(metrics) && listening(api) && kubeconfig.exists() {
                return up;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("switchyard up did not serve its API and metrics within a minute")
    }

    /// Stops the process as kubelet would (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("switchyard up did not exit within 30 s of SIGTERM")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written to its standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("data/admin.kubeconfig")
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}
