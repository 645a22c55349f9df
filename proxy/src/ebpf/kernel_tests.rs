//! The eBPF proxy against the real kernel: the committed object loads and attaches to a cgroup
//! this test creates, a restarted proxy adopts the pinned maps without a write, and cleanup
//! detaches everything. Pins go to a bpffs the test mounts. Needs root and BTF; skips
//! otherwise. (Traffic through the programs is tested end to end in tests/integration/ebpf.rs.)

use std::process::Command;

use super::*;
use crate::table::{Endpoint, ServicePortName};

/// A cgroup and a bpffs of the test's own, removed when dropped.
struct Scratch {
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Scratch {
    fn new() -> Option<Scratch> {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        if !root || !Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: needs root and a kernel with BTF");
            return None;
        }
        if fs_type(Path::new(DEFAULT_CGROUP)).ok() != Some(CGROUP2_SUPER_MAGIC) {
            eprintln!("skipped: no cgroup v2 at {DEFAULT_CGROUP}");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let s = Scratch {
            cgroup: Path::new(DEFAULT_CGROUP).join(format!("sy-kt-{id}")),
            bpffs: std::env::temp_dir().join(format!("sy-kt-bpf-{id}")),
        };
        std::fs::create_dir(&s.cgroup).unwrap();
        std::fs::create_dir(&s.bpffs).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&s.bpffs)
            .status();
        assert!(mounted.is_ok_and(|st| st.success()));
        Some(s)
    }

    fn config(&self) -> Config {
        Config {
            cgroup: self.cgroup.clone(),
            pin_dir: self.bpffs.join("switchyard"),
            iptables: None,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn table() -> ServiceTable {
    let port = |name: &str, protocol, ip: &str, eps: &[&str]| {
        Arc::new(ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: String::new(),
            },
            protocol,
            port: 80,
            cluster_ips: vec![ip.parse().unwrap()],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity: None,
            internal_local: false,
            external_local: false,
            endpoints: eps
                .iter()
                .map(|e| Endpoint {
                    addr: e.parse().unwrap(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        })
    };
    ServiceTable {
        ports: vec![
            port(
                "a",
                Protocol::Tcp,
                "10.96.0.1",
                &["10.0.0.1:80", "10.0.0.2:80"],
            ),
            port("b", Protocol::Udp, "fd00::53", &["[fd00:1::2]:53"]),
        ],
    }
}

fn attached(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .filter(|n| n.starts_with("sy_"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn programs_load_adopt_and_clean_up() {
    let Some(s) = Scratch::new() else {
        return;
    };
    let rt_report = {
        let mut p = EbpfProxy::new(s.config()).expect("the committed object loads");
        p.apply(&table()).await
    };
    assert!(rt_report.errors.is_empty(), "{:?}", rt_report.errors);
    // 3 backends, 3 slots, 2 frontends.
    assert_eq!(rt_report.added, 8);
    assert_eq!(rt_report.frontends, 2);
    for m in MAPS {
        assert!(s.config().pin_dir.join(m).exists(), "{m} not pinned");
    }
    if Command::new("bpftool").arg("version").output().is_ok() {
        let mut names = attached(&s.cgroup);
        names.sort();
        let mut want: Vec<String> = PROGRAMS.iter().map(|p| p.name.to_string()).collect();
        want.sort();
        assert_eq!(names, want, "one link per program survives the proxy");
    }

    // A restarted proxy finds the pinned maps and writes nothing; its links replace the old
    // ones (still one per hook).
    let mut again = EbpfProxy::new(s.config()).unwrap();
    let report = again.apply(&table()).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.added, 0);
    if Command::new("bpftool").arg("version").output().is_ok() {
        assert_eq!(attached(&s.cgroup).len(), PROGRAMS.len());
    }
    // A port gone: its frontend, slot and backend go.
    let one = ServiceTable {
        ports: table().ports[..1].to_vec(),
    };
    let report = again.apply(&one).await;
    assert_eq!((report.added, report.frontends), (3, 1));
    drop(again);

    let done = cleanup(&s.config().pin_dir).unwrap();
    assert_eq!((done.links, done.maps), (PROGRAMS.len(), MAPS.len()));
    assert!(!s.config().pin_dir.exists());
    assert!(attached(&s.cgroup).is_empty());
}

#[test]
fn a_cgroup_that_is_not_v2_is_refused_with_the_fallback() {
    let Some(s) = Scratch::new() else {
        return;
    };
    let mut c = s.config();
    c.cgroup = std::env::temp_dir();
    let err = EbpfProxy::new(c).err().expect("refused").to_string();
    assert!(err.contains("not a cgroup v2 directory"), "{err}");
    assert!(err.contains("--proxy-mode iptables"), "{err}");
}
