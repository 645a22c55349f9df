//! The container image: `deploy/image/build.sh` builds it with buildah from the binary under
//! test (no registry); the binary and the kernel tools the proxy modes run work inside it, and an
//! agent in a new container takes over the rules an agent in an old one left, with traffic
//! flowing.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::cluster::{cluster_ip, ok, register_pod, start_server};
use crate::support::netns::Sandbox;
use crate::support::traffic::{answers, load, service, set};
use crate::support::{bin, eventually};

/// Builds the image once per test run; None (with the reason skipped) where it cannot be built.
fn image() -> Option<&'static str> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    let built = IMAGE.get_or_init(|| {
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        let buildah = Command::new("buildah").arg("--version").output().is_ok();
        if !root || !buildah {
            return Err("building the image needs root and buildah (with runc)".into());
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image/build.sh");
        let out = Command::new(script).arg(bin()).output().unwrap();
        assert!(
            out.status.success(),
            "build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    match built {
        Ok(image) => Some(image),
        Err(why) => {
            crate::support::skip(why);
            None
        }
    }
}

/// A new container from `image`; its name.
fn container(image: &str) -> String {
    let from = Command::new("buildah")
        .args(["from", image])
        .output()
        .unwrap();
    assert!(
        from.status.success(),
        "{}",
        String::from_utf8_lossy(&from.stderr)
    );
    String::from_utf8_lossy(&from.stdout).trim().to_string()
}

fn remove(container: &str) {
    let _ = Command::new("buildah").args(["rm", container]).output();
}

fn run_in(container: &str, args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(["run", container, "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_image_builds_and_runs_the_agent_and_its_tools() {
    let Some(image) = image() else { return };
    assert_eq!(
        image,
        format!("localhost/switchyard:{}", env!("CARGO_PKG_VERSION"))
    );
    let c = container(image);
    let version = run_in(&c, &["/switchyard", "--version"]);
    let tools = [
        run_in(&c, &["iptables-nft-restore", "--version"]),
        run_in(&c, &["iptables-legacy-restore", "--version"]),
        run_in(&c, &["ip6tables-nft-save", "--version"]),
        run_in(&c, &["conntrack", "--version"]),
        run_in(&c, &["ip", "-V"]),
    ];
    remove(&c);
    assert_eq!(
        version.trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        tools[0].contains("nf_tables") && tools[1].contains("legacy"),
        "{tools:?}"
    );
    assert!(
        tools[3].contains("conntrack") && tools[4].contains("iproute2"),
        "{tools:?}"
    );
}

/// A containerized agent: killed without warning when dropped (also when a test fails).
struct Agent(Child);

impl Drop for Agent {
    /// Kills the agent process of the container (found by its kubeconfig mount, as the host sees
    /// it) and the buildah that ran it.
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-9", "-f", "/switchyard node --kubeconfig /kubeconfig"])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent in iptables mode, in a container in `netns` with the capabilities the DaemonSet
/// gives it.
fn containerized_agent(container: &str, netns: &str, kubeconfig: &str) -> Agent {
    let child = Command::new("buildah")
        .args(["run", "--network", &format!("ns:/run/netns/{netns}")])
        .args(["--cap-add", "CAP_NET_ADMIN", "--cap-add", "CAP_NET_RAW"])
        .args(["-v", &format!("{kubeconfig}:/kubeconfig:ro")])
        .args([
            container,
            "--",
            "/switchyard",
            "node",
            "--kubeconfig",
            "/kubeconfig",
        ])
        .args(["--node-name", "n1", "--proxy-mode", "iptables"])
        .args([
            "--iptables-backend",
            "nft",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent(child)
}

#[test]
fn an_agent_in_a_new_container_takes_over_from_one_in_an_old_container() {
    crate::need!(Iptables);
    let Some(image) = image() else { return };
    let mut sb = Sandbox::new();
    let n1 = sb.node("n1", 1);
    let backend = sb.pod(&n1, "w1");
    let client = sb.pod(&n1, "client");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_server(&mut sb, &n1, d, "127.0.0.1:6443");
    let kubeconfig = crate::support::node_kubeconfig(d, "n1");
    let kc = kubeconfig.to_str().unwrap();
    sb.http_backend(&backend, 8080, "w1");
    register_pod(&n1.ns, d, "w1", "n1", &backend);
    ok(
        &n1.ns,
        d,
        &["apply", "-f", "-"],
        &service("web", "app: web", ""),
    );
    let ip = cluster_ip(&n1.ns, d, "web");

    let (old, new) = (container(image), container(image));
    let first = containerized_agent(&old, &n1.ns, kc);
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &format!("http://{ip}/"), 3) == set(&["w1"])).then_some(())
    });
    let rules = |sb: &Sandbox| {
        String::from_utf8_lossy(&sb.exec(&n1.ns, &["iptables-save"]).stdout).into_owned()
    };
    let before = rules(&sb);

    // The old container's agent dies; a new container's agent starts while connections keep
    // coming, adopts what the old one programmed, and traffic never stops.
    let running = load(&sb, &client, &ip, 6);
    std::thread::sleep(Duration::from_secs(1));
    drop(first);
    let second = containerized_agent(&new, &n1.ns, kc);
    let (good, failed) = running.join().unwrap();
    assert_eq!(failed, 0, "{failed} connections failed ({good} succeeded)");
    assert!(good > 30, "only {good} connections in 6 s");
    let healthy = || {
        let out = sb.exec(&n1.ns, &["curl", "-sf", "http://127.0.0.1:10249/healthz"]);
        out.status.success().then_some(())
    };
    eventually(Duration::from_secs(20), healthy);
    let after = rules(&sb);
    let sy = |r: &str| -> Vec<String> {
        r.lines()
            .filter(|l| l.contains("SY-") && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(sy(&before), sy(&after), "the new agent rewrote the rules");
    assert_eq!(after.matches("-j SY-SERVICES").count(), 2);
    drop(second);
    remove(&old);
    remove(&new);
}
