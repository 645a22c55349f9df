//! Clusters made of network namespaces, for end-to-end tests of the data plane.
//!
//! A node is a namespace with a bridge (`br0`, the pod CIDR's first address) and forwarding on;
//! a pod is a namespace whose `eth0` is one end of a veth pair, the other end on its node's
//! bridge (in hairpin mode), with a default route via the bridge. Nodes can be linked by a veth pair, with routes to
//! each other's pod CIDR. No namespace has a route to the outside: a packet for anything else is
//! dropped at the node. Names are unique per sandbox; dropping the sandbox (also while a test
//! panics) kills the processes it started and deletes every namespace, and with them every link.
//!
//! For the eBPF proxy, [`Sandbox::cgroup`] makes a cgroup v2 of the sandbox's own (and a bpffs
//! for pins); from then on every process the sandbox starts runs in it. Both are mounted under
//! `/tmp` because `ip netns exec` remounts `/sys`. Dropping the sandbox unmounts the bpffs
//! (releasing whatever was pinned there) and removes the cgroup.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What a sandbox test needs beyond root and iproute2.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    Sandbox,
    /// The iptables package (iptables-restore): the iptables proxy, and the eBPF proxy's
    /// NodePort half.
    Iptables,
    /// A kernel with BTF and bpftool, besides iptables.
    Ebpf,
    /// The nftables package (nft), besides iptables (the tests' own rules use it).
    Nftables,
}

/// Why the sandbox cannot run here with `needs`, if it cannot.
pub fn unavailable(needs: Needs) -> Option<String> {
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").ok()?) == 0;
    if !root {
        return Some("network namespaces need root".into());
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("the `ip` command (iproute2) is not installed".into());
    }
    let iptables = ["/usr/sbin/iptables-restore", "/sbin/iptables-restore"]
        .iter()
        .any(|p| Path::new(p).exists());
    if needs >= Needs::Iptables && !iptables {
        return Some("iptables is not installed".into());
    }
    if needs == Needs::Nftables && Command::new("nft").arg("--version").output().is_err() {
        return Some("nft (the nftables package) is not installed".into());
    }
    if needs == Needs::Ebpf && !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF".into());
    }
    if needs == Needs::Ebpf && Command::new("bpftool").arg("version").output().is_err() {
        return Some("bpftool is not installed".into());
    }
    None
}

/// Skips the calling test, saying why, when the sandbox cannot run with these needs (under
/// `CI=true` the test fails instead: see [`crate::support::skip`]).
#[macro_export]
macro_rules! need {
    ($needs:ident) => {
        if let Some(why) =
            $crate::support::netns::unavailable($crate::support::netns::Needs::$needs)
        {
            $crate::support::skip(&why);
            return;
        }
    };
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Sandbox {
    id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    links: usize,
    cgroup: Option<Cgroup>,
}

/// A cgroup v2 and a bpffs made for one sandbox.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Where the cgroup2 and bpffs mounts live.
    root: PathBuf,
    /// The sandbox's cgroup (what `--cgroup-path` gets).
    pub path: PathBuf,
    /// A directory on the sandbox's bpffs (what `--bpf-pin-path` gets).
    pub pins: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub ns: String,
    /// The node's address on its bridge: the pod CIDR's first address (pods' gateway).
    pub gateway: Ipv4Addr,
    /// The /24 pod CIDR's network address.
    pub cidr: Ipv4Addr,
    next_pod: std::rc::Rc<std::cell::Cell<u8>>,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Sandbox {
            id,
            namespaces: Vec::new(),
            children: Vec::new(),
            links: 0,
            cgroup: None,
        }
    }

    /// The sandbox's cgroup, made on first use; every process started afterwards joins it.
    pub fn cgroup(&mut self) -> Cgroup {
        if let Some(c) = &self.cgroup {
            return c.clone();
        }
        let root = PathBuf::from(format!("/tmp/sy{}-bpf", self.id));
        std::fs::create_dir_all(root.join("cg")).unwrap();
        std::fs::create_dir_all(root.join("fs")).unwrap();
        let (cg, fs) = (root.join("cg"), root.join("fs"));
        run(&["mount", "-t", "cgroup2", "none", cg.to_str().unwrap()]);
        run(&["mount", "-t", "bpf", "bpf", fs.to_str().unwrap()]);
        let c = Cgroup {
            path: cg.join(format!("sy{}", self.id)),
            pins: fs.join("switchyard"),
            root,
        };
        std::fs::create_dir(&c.path).unwrap();
        self.cgroup = Some(c.clone());
        c
    }

    fn namespace(&mut self, name: &str) -> String {
        let ns = format!("sy{}-{name}", self.id);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth name that is unique on the machine and fits in 15 bytes.
    fn veth(&mut self) -> String {
        self.links += 1;
        format!("v{}x{}", self.id, self.links)
    }

    /// A node with the /24 pod CIDR `10.244.<n>.0/24`.
    pub fn node(&mut self, name: &str, n: u8) -> Node {
        let ns = self.namespace(name);
        let cidr = Ipv4Addr::new(10, 244, n, 0);
        let gateway = Ipv4Addr::new(10, 244, n, 1);
        run(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        Node {
            ns,
            gateway,
            cidr,
            next_pod: std::rc::Rc::new(std::cell::Cell::new(2)),
        }
    }

    /// A pod on `node`, with the next free address of the node's pod CIDR.
    pub fn pod(&mut self, node: &Node, name: &str) -> Pod {
        let ns = self.namespace(name);
        let host = node.next_pod.get();
        node.next_pod.set(host + 1);
        let o = node.cidr.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], host);
        let (outside, inside) = (self.veth(), self.veth());
        run(&[
            "ip", "-n", &node.ns, "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            "netns", &ns,
        ]);
        run(&[
            "ip", "-n", &node.ns, "link", "set", &outside, "master", "br0", "up",
        ]);
        // Hairpin mode, as the CNI bridge plugin sets it: a pod's packet to a service that
        // NATs back to the same pod leaves through the port it came in on.
        run(&[
            "ip",
            "-n",
            &node.ns,
            "link",
            "set",
            &outside,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        run(&["ip", "-n", &ns, "link", "set", &inside, "name", "eth0"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &node.gateway.to_string(),
        ]);
        Pod { ns, ip }
    }

    /// Links two nodes with a veth pair (`172.31.<n>.1` and `.2`/30) and routes each node's pod
    /// CIDR to the other. Returns the two nodes' link addresses.
    pub fn link(&mut self, a: &Node, b: &Node, n: u8) -> (Ipv4Addr, Ipv4Addr) {
        let (ea, eb) = (self.veth(), self.veth());
        let (ia, ib) = (Ipv4Addr::new(172, 31, n, 1), Ipv4Addr::new(172, 31, n, 2));
        run(&[
            "ip", "-n", &a.ns, "link", "add", &ea, "type", "veth", "peer", "name", &eb, "netns",
            &b.ns,
        ]);
        run(&[
            "ip",
            "-n",
            &a.ns,
            "addr",
            "add",
            &format!("{ia}/30"),
            "dev",
            &ea,
        ]);
        run(&[
            "ip",
            "-n",
            &b.ns,
            "addr",
            "add",
            &format!("{ib}/30"),
            "dev",
            &eb,
        ]);
        run(&["ip", "-n", &a.ns, "link", "set", &ea, "up"]);
        run(&["ip", "-n", &b.ns, "link", "set", &eb, "up"]);
        run(&[
            "ip",
            "-n",
            &a.ns,
            "route",
            "add",
            &format!("{}/24", b.cidr),
            "via",
            &ib.to_string(),
        ]);
        run(&[
            "ip",
            "-n",
            &b.ns,
            "route",
            "add",
            &format!("{}/24", a.cidr),
            "via",
            &ia.to_string(),
        ]);
        (ia, ib)
    }

    /// `args` as a command run inside namespace `ns` (and in the sandbox's cgroup, if any).
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = match &self.cgroup {
            Some(cg) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(cg.path.join("cgroup.procs"))
                    .arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Starts a process inside a namespace; it is killed when the sandbox is dropped.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> usize {
        let child = self
            .command(ns, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?} in {ns}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// The pid of a process started with [`Sandbox::spawn`] (`ip netns exec` becomes it).
    pub fn pid(&self, handle: usize) -> u32 {
        self.children[handle].id()
    }

    /// Kills a process started with [`Sandbox::spawn`].
    pub fn kill(&mut self, handle: usize) {
        let _ = self.children[handle].kill();
        let _ = self.children[handle].wait();
    }

    /// Runs a command inside a namespace to completion.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        self.command(ns, args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?} in {ns}: {e}"))
    }

    /// A pod-side HTTP server on `port` that answers every GET with `name`.
    pub fn http_backend(&mut self, pod: &Pod, port: u16, name: &str) {
        let script = format!(
            "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(s):\n        s.send_response(200); s.end_headers(); s.wfile.write(b'{name}')\n    def log_message(s, *a): pass\nhttp.server.ThreadingHTTPServer(('0.0.0.0', {port}), H).serve_forever()\n"
        );
        let ns = pod.ns.clone();
        self.spawn(&ns, &["python3", "-c", &script]);
    }

    /// A pod-side UDP server on `port` that answers every datagram with `name`.
    pub fn udp_backend(&mut self, pod: &Pod, port: u16, name: &str) {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', {port}))\nwhile True:\n    d, a = s.recvfrom(512)\n    s.sendto(b'{name}', a)\n"
        );
        let ns = pod.ns.clone();
        self.spawn(&ns, &["python3", "-c", &script]);
    }

    /// One TCP connect from inside `ns`: `ok`, `refused`, `timeout` or another error's name.
    pub fn connect(&self, ns: &str, addr: &str, port: u16) -> String {
        let script = format!(
            "import socket\ntry:\n    socket.create_connection(('{addr}', {port}), timeout=2).close(); print('ok')\nexcept ConnectionRefusedError: print('refused')\nexcept socket.timeout: print('timeout')\nexcept OSError as e: print(type(e).__name__, e.errno)\n"
        );
        let out = self.exec(ns, &["python3", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// From inside `pod`, `n` HTTP GETs to `url`; the bodies, with `!err` for failures.
    pub fn http_get(&self, pod: &Pod, url: &str, n: usize) -> Vec<String> {
        let script = format!(
            "import urllib.request\nfor _ in range({n}):\n    try:\n        print(urllib.request.urlopen('{url}', timeout=2).read().decode())\n    except Exception as e:\n        print('!err')\n"
        );
        let out = self.exec(&pod.ns, &["python3", "-c", &script]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Some(cg) = &self.cgroup {
            unmount_cgroup(cg);
        }
    }
}

fn unmount_cgroup(cg: &Cgroup) {
    // Unmounting the bpffs drops its pins, and so detaches whatever they kept attached.
    let umount = |dir: &Path| {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    };
    umount(&cg.root.join("fs"));
    // A killed process leaves its cgroup a moment later.
    for _ in 0..50 {
        if std::fs::remove_dir(&cg.path).is_ok() || !cg.path.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    umount(&cg.root.join("cg"));
    // One directory at a time: never a recursive removal near a cgroup mount.
    for dir in [cg.root.join("cg"), cg.root.join("fs"), cg.root.clone()] {
        let _ = std::fs::remove_dir(dir);
    }
}
