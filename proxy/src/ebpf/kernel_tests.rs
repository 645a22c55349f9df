//! The eBPF proxy against the real kernel: the committed object loads and attaches to a cgroup
//! this test creates, a restarted proxy adopts the pinned maps without a write, and cleanup
//! detaches everything. The test's cgroup is made below the cgroup v2 root that
//! [`cgroup2_mount`] finds, as the agent finds it; pins go to a bpffs the test mounts. Needs root,
//! BTF and bpftool; skips otherwise (under `CI=true` it fails instead). (Traffic through the programs is tested end to end in tests/integration/ebpf.rs.)

use std::process::Command;

use super::*;
use crate::table::{Endpoint, ServicePortName};
use crate::testing::{root, skip};

/// A cgroup and a bpffs of the test's own, removed when dropped.
struct Scratch {
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Scratch {
    fn new() -> Option<Scratch> {
        if !root() || !Path::new("/sys/kernel/btf/vmlinux").exists() {
            skip("needs root and a kernel with BTF");
            return None;
        }
        if Command::new("bpftool").arg("version").output().is_err() {
            skip("bpftool is not installed");
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let v2 = match cgroup2_mount(&mountinfo) {
            Ok(p) => p,
            Err(why) => {
                skip(&why);
                return None;
            }
        };
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let s = Scratch {
            cgroup: v2.join(format!("sy-kt-{id}")),
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
            cgroup: Some(self.cgroup.clone()),
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
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool cgroup show {}",
        cgroup.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|n| n.starts_with("sy_"))
        .collect()
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
    let mut names = attached(&s.cgroup);
    names.sort();
    let mut want: Vec<String> = PROGRAMS.iter().map(|p| p.name.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "one link per program survives the proxy");

    // A restarted proxy finds the pinned maps and writes nothing; its links replace the old
    // ones (still one per hook).
    let mut again = EbpfProxy::new(s.config()).unwrap();
    let report = again.apply(&table()).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.added, 0);
    assert_eq!(attached(&s.cgroup).len(), PROGRAMS.len());
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
    c.cgroup = Some(std::env::temp_dir());
    let err = EbpfProxy::new(c).err().expect("refused").to_string();
    assert!(err.contains("not a cgroup v2 directory"), "{err}");
    assert!(err.contains("--proxy-mode iptables"), "{err}");
}
