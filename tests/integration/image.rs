//! The container image: `deploy/image/build.sh` builds it with buildah from the binary under
//! test (no registry), and the binary and the kernel tools the proxy modes run work inside it.

use std::process::Command;

use crate::support::bin;

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
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let buildah = Command::new("buildah").arg("--version").output().is_ok();
    if !root || !buildah {
        crate::support::skip("building the image needs root and buildah (with runc)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image/build.sh");
    let out = Command::new(script).arg(bin()).output().unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        image,
        format!("localhost/switchyard:{}", env!("CARGO_PKG_VERSION"))
    );
    let from = Command::new("buildah")
        .args(["from", &image])
        .output()
        .unwrap();
    assert!(
        from.status.success(),
        "{}",
        String::from_utf8_lossy(&from.stderr)
    );
    let container = String::from_utf8_lossy(&from.stdout).trim().to_string();
    let version = run_in(&container, &["/switchyard", "--version"]);
    let tools = [
        run_in(&container, &["iptables-nft-restore", "--version"]),
        run_in(&container, &["iptables-legacy-restore", "--version"]),
        run_in(&container, &["ip6tables-nft-save", "--version"]),
        run_in(&container, &["conntrack", "--version"]),
        run_in(&container, &["ip", "-V"]),
    ];
    let _ = Command::new("buildah").args(["rm", &container]).output();
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
