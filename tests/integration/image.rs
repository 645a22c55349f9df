//! The container image: `deploy/image/build.sh` builds it with buildah from the binary under
//! test (no registry); the binary and the kernel tools the proxy modes run work inside it, and an
//! agent in a new container takes over the rules an agent in an old one left, with traffic
//! flowing.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::cluster::{register_pod, start_server, web_service};
use crate::support::netns::Sandbox;
use crate::support::traffic::{answers, load, set};
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

/// A working container of the image, removed when dropped (also when a test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["rm", &self.0]).output();
    }
}

/// A new container from `image`. Seccomp is off, as kubelet leaves it unless a pod asks for a
/// profile.
fn container(image: &str) -> Container {
    let from = Command::new("buildah")
        .args(["from", "--security-opt", "seccomp=unconfined", image])
        .output()
        .unwrap();
    assert!(
        from.status.success(),
        "{}",
        String::from_utf8_lossy(&from.stderr)
    );
    Container(String::from_utf8_lossy(&from.stdout).trim().to_string())
}

/// Runs `args` in `container` without a network: buildah's default would set one up on the host
/// (a bridge and firewall rules of its own).
fn run_in(container: &str, args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(["run", "--network", "none", container, "--"])
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
    let version = run_in(&c.0, &["/switchyard", "--version"]);
    let tools = [
        run_in(&c.0, &["iptables-nft-restore", "--version"]),
        run_in(&c.0, &["iptables-legacy-restore", "--version"]),
        run_in(&c.0, &["ip6tables-nft-save", "--version"]),
        run_in(&c.0, &["conntrack", "--version"]),
        run_in(&c.0, &["ip", "-V"]),
        run_in(&c.0, &["nft", "--version"]),
    ];
    drop(c);
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
    assert!(tools[5].contains("nftables"), "{tools:?}");
}

/// A containerized agent: killed without warning when dropped (also when a test fails).
struct Agent {
    run: Child,
    /// Where its kubeconfig is mounted: unique, so that its process can be found.
    mount: String,
}

impl Drop for Agent {
    /// Kills the agent process of the container (found by its kubeconfig mount, as the host sees
    /// it) and the buildah that ran it.
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args([
                "-9",
                "-f",
                &format!("/switchyard node --kubeconfig {}", self.mount),
            ])
            .status();
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// The capabilities the DaemonSet gives the agent.
const CAPS: [&str; 6] = [
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_NET_BIND_SERVICE",
    "CAP_BPF",
    "CAP_SYS_ADMIN",
    "CAP_PERFMON",
];

/// The agent, in a container in `netns` with the DaemonSet's capabilities, `mounts` (host paths
/// at the same place) and `extra` flags.
fn containerized_agent(
    container: &str,
    netns: &str,
    kubeconfig: &str,
    mounts: &[&std::path::Path],
    extra: &[&str],
) -> Agent {
    let mount = format!("/kubeconfig-{netns}");
    let mut cmd = Command::new("buildah");
    cmd.args(["run", "--network", &format!("ns:/run/netns/{netns}")])
        .args(["-v", &format!("{kubeconfig}:{mount}:ro")]);
    for cap in CAPS {
        cmd.args(["--cap-add", cap]);
    }
    for m in mounts {
        cmd.arg("-v")
            .arg(format!("{}:{}", m.display(), m.display()));
    }
    let child = cmd
        .args([
            container,
            "--",
            "/switchyard",
            "node",
            "--kubeconfig",
            &mount,
        ])
        .args(["--node-name", "n1", "--iptables-backend", "nft"])
        .args(["--cluster-cidr", "10.244.0.0/16"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent { run: child, mount }
}

#[test]
fn an_agent_in_a_new_container_takes_over_from_one_in_an_old_container() {
    crate::need!(Iptables);
    let Some(image) = image() else { return };
    takeover(image, Mode::Iptables);
}

#[test]
fn an_nftables_agent_in_a_new_container_adopts_the_tables_of_one_in_an_old_container() {
    crate::need!(Nftables);
    let Some(image) = image() else { return };
    takeover(image, Mode::Nftables);
}

#[test]
fn an_ebpf_agent_in_a_new_container_adopts_the_maps_of_one_in_an_old_container() {
    crate::need!(Ebpf);
    let Some(image) = image() else { return };
    takeover(image, Mode::Ebpf);
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Iptables,
    Nftables,
    Ebpf,
}

/// An agent in a container, then (killed without warning while connections flow) another in a
/// new container: traffic never stops, and the new one adopts what the old one programmed —
/// iptables rules or nftables tables unchanged, or the very BPF maps it pinned.
fn takeover(image: &str, mode: Mode) {
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
    let ip = web_service(&n1.ns, d);

    let (old, new) = (container(image), container(image));
    // The eBPF agent's cgroup and the bpffs its pins go under (the pin directory itself is
    // made by the agent), and where it pins.
    let (mounts, extra, pins): (
        Vec<std::path::PathBuf>,
        Vec<String>,
        Option<std::path::PathBuf>,
    ) = match mode {
        Mode::Iptables | Mode::Nftables => (
            Vec::new(),
            vec![
                "--proxy-mode".into(),
                if mode == Mode::Iptables {
                    "iptables"
                } else {
                    "nftables"
                }
                .into(),
            ],
            None,
        ),
        Mode::Ebpf => {
            let cg = sb.cgroup();
            let args = [
                "--proxy-mode",
                "ebpf",
                "--cgroup-path",
                cg.path.to_str().unwrap(),
                "--bpf-pin-path",
                cg.pins.to_str().unwrap(),
            ];
            (
                vec![cg.path.clone(), cg.pins.parent().unwrap().to_path_buf()],
                args.map(str::to_string).to_vec(),
                Some(cg.pins.clone()),
            )
        }
    };
    let mounts: Vec<&std::path::Path> = mounts.iter().map(|p| p.as_path()).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // The maps the agent pinned, by file identity: a new agent that made its own maps would pin
    // new files. (Its program links are attached anew by design: the new ones before the old go.)
    let pinned = || -> Vec<(String, u64)> {
        let Some(dir) = &pins else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with("link-"))
                    .map(|e| {
                        let ino = std::os::unix::fs::MetadataExt::ino(&e.metadata().unwrap());
                        (e.file_name().to_string_lossy().into_owned(), ino)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let first = containerized_agent(&old.0, &n1.ns, kc, &mounts, &extra);
    eventually(Duration::from_secs(30), || {
        (answers(&sb, &client, &format!("http://{ip}/"), 3) == set(&["w1"])).then_some(())
    });
    let rules = |sb: &Sandbox| {
        let cmd: &[&str] = if mode == Mode::Nftables {
            &["nft", "list", "table", "ip", "switchyard"]
        } else {
            &["iptables-save"]
        };
        String::from_utf8_lossy(&sb.exec(&n1.ns, cmd).stdout).into_owned()
    };
    let before = rules(&sb);
    let maps_before = pinned();
    if mode == Mode::Ebpf {
        assert!(!maps_before.is_empty(), "the eBPF agent pinned nothing");
    }

    // The old container's agent dies; a new container's agent starts while connections keep
    // coming, adopts what the old one programmed, and traffic never stops.
    let running = load(&sb, &client, &ip, 6);
    std::thread::sleep(Duration::from_secs(1));
    drop(first);
    let second = containerized_agent(&new.0, &n1.ns, kc, &mounts, &extra);
    let (good, failed) = running.join().unwrap();
    assert_eq!(failed, 0, "{failed} connections failed ({good} succeeded)");
    assert!(good > 30, "only {good} connections in 6 s");
    let healthy = || {
        let out = sb.exec(&n1.ns, &["curl", "-sf", "http://127.0.0.1:10249/healthz"]);
        out.status.success().then_some(())
    };
    eventually(Duration::from_secs(20), healthy);
    let after = rules(&sb);
    // Ours: the SY- chains of iptables-save, or all of our nftables table.
    let sy = |r: &str| -> Vec<String> {
        r.lines()
            .filter(|l| mode == Mode::Nftables || (l.contains("SY-") && !l.starts_with('#')))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(sy(&before), sy(&after), "the new agent rewrote the rules");
    if mode == Mode::Iptables {
        assert_eq!(after.matches("-j SY-SERVICES").count(), 2);
    }
    if mode == Mode::Nftables {
        assert!(
            after.contains(&format!("{ip} . tcp . 80 : goto")),
            "{after}"
        );
    }
    assert_eq!(
        maps_before,
        pinned(),
        "the new agent did not adopt the pinned maps"
    );
    drop(second);
}
