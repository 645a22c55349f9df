//! iptables proxy benchmark: Switchyard's ruleset side by side with kube-proxy's layout, on the
//! same kernel in the same run, each in network namespaces of its own. Needs root.
//!
//! Prints:
//! - full load time of N Services x 10 endpoints (1,000 / 10,000 / 30,000) with the nft and the
//!   legacy backend: Switchyard's whole sync (render + diff + `iptables-restore --noflush`)
//!   against `iptables-restore --noflush` of kube-proxy's rules (its generation not counted);
//! - one endpoint change at 10,000 Services: Switchyard's sync against kube-proxy's partial
//!   restore (since 1.27 it rewrites KUBE-SERVICES and the changed service's chains);
//! - network programming latency at 10,000 Services with the real agent (`switchyard up
//!   --proxy-mode iptables`): API acknowledges an EndpointSlice change -> a connection through
//!   the ClusterIP reaches the new endpoint;
//! - new-connection rate from one client namespace through a node namespace holding 10,000
//!   Services to a backend namespace, to the first and to the last Service, for both layouts.
//!
//! Usage: iptables-bench --switchyard target/release/switchyard

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_bench::api::{api_creates, Up};
use switchyard_bench::netns::Netns;
use switchyard_bench::services::{
    connect_rate, endpoints_of, fake_endpoint, port, service_json, sink_backend, table, vip,
};
use switchyard_bench::{http_get, Samples};
use switchyard_proxy::iptables::render::Options;
use switchyard_proxy::iptables::{Backend, Config, IptablesProxy};
use switchyard_proxy::table::ServiceTable;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Service counts for the full-load comparison.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// The Service count of the change, latency and connection-rate measurements.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// A restore that runs longer than this is stopped and reported as "> limit".
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Single-endpoint changes timed per layout.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// EndpointSlice changes for the programming latency.
    #[arg(long, default_value_t = 100)]
    latency_changes: usize,
    /// Seconds per connection-rate run (alternating first and last, `rounds` times each).
    #[arg(long, default_value_t = 3)]
    rate_secs: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// What to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "load,change,rate,latency"
    )]
    parts: Vec<String>,
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// kube-proxy's iptables layout for ClusterIP services (as kube-proxy 1.3x writes it, with its
/// comments; chain names hashed the same length).
mod kube_proxy {
    use super::*;

    fn hash(what: &str) -> String {
        switchyard_proxy::iptables::rules::hashed("", what)
    }
    pub fn svc(i: usize) -> String {
        format!("KUBE-SVC-{}", hash(&format!("svc-{i}")))
    }
    pub fn sep(i: usize, ep: &SocketAddr) -> String {
        format!("KUBE-SEP-{}", hash(&format!("svc-{i}/{ep}")))
    }
    pub fn service_rule(i: usize) -> String {
        format!("-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {}\n", vip(i), svc(i))
    }
    /// The service chain and its endpoints' chains: (declarations, rules).
    pub fn chains(i: usize, eps: &[SocketAddr]) -> (String, String) {
        let (s, v) = (svc(i), vip(i));
        let mut decl = format!(":{s} - [0:0]\n");
        let mut rules = format!("-A {s} ! -s {CLUSTER_CIDR} -d {v}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n");
        for (k, ep) in eps.iter().enumerate() {
            let sep = sep(i, ep);
            decl.push_str(&format!(":{sep} - [0:0]\n"));
            let left = eps.len() - k;
            if left > 1 {
                let p = (2_147_483_648.0 / left as f64).round() / 2_147_483_648.0;
                rules.push_str(&format!("-A {s} -m comment --comment \"default/svc-{i}:http -> {ep}\" -m statistic --mode random --probability {p:.11} -j {sep}\n"));
            } else {
                rules.push_str(&format!(
                    "-A {s} -m comment --comment \"default/svc-{i}:http -> {ep}\" -j {sep}\n"
                ));
            }
            rules.push_str(&format!("-A {sep} -s {}/32 -m comment --comment \"default/svc-{i}:http\" -j KUBE-MARK-MASQ\n", ep.ip()));
            rules.push_str(&format!("-A {sep} -p tcp -m comment --comment \"default/svc-{i}:http\" -m tcp -j DNAT --to-destination {ep}\n"));
        }
        (decl, rules)
    }
    const NODEPORTS: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

    /// The whole ruleset, with the jumps from the built-in chains.
    pub fn full(n: usize, per: usize, real: &[SocketAddr]) -> String {
        let mut decl = String::from("*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
        let mut rules = String::from("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
        for i in 0..n {
            rules.push_str(&service_rule(i));
        }
        rules.push_str(NODEPORTS);
        for i in 0..n {
            let (d, r) = chains(i, &endpoints_of(i, n, per, real));
            decl.push_str(&d);
            rules.push_str(&r);
        }
        format!("{decl}{rules}COMMIT\n")
    }

    /// kube-proxy's partial sync for one changed service: KUBE-SERVICES in full, the service's
    /// chains, and the removed endpoint's chain deleted.
    pub fn change(n: usize, i: usize, old: &[SocketAddr], new: &[SocketAddr]) -> String {
        let (d, r) = chains(i, new);
        let mut text = format!("*nat\n:KUBE-SERVICES - [0:0]\n{d}");
        let gone: Vec<&SocketAddr> = old.iter().filter(|e| !new.contains(e)).collect();
        for ep in &gone {
            text.push_str(&format!(":{} - [0:0]\n", sep(i, ep)));
        }
        for k in 0..n {
            text.push_str(&service_rule(k));
        }
        text.push_str(NODEPORTS);
        text.push_str(&r);
        for ep in gone {
            text.push_str(&format!("-X {}\n", sep(i, ep)));
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// `iptables-<variant>-restore --noflush` of `text` inside `ns`; None when it ran past `limit`.
fn restore(ns: &Netns, variant: &str, text: &str, limit: Duration) -> Result<Option<Duration>> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(format!("iptables-{variant}-restore"))
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = text.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let took = start.elapsed();
            let _ = writer.join();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("iptables-{variant}-restore failed: {}", err.trim());
            }
            return Ok(Some(took));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn config(backend: Backend) -> Config {
    Config {
        backend,
        options: Options {
            node_addr: Ipv4Addr::UNSPECIFIED.into(),
            cluster_cidrs: vec![(Ipv4Addr::new(10, 244, 0, 0).into(), 16)],
            masquerade_all: false,
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Switchyard's full load of `table`, then `changes` single-endpoint changes: (full, changes).
fn ours(
    ns: &Netns,
    backend: Backend,
    table: ServiceTable,
    changes: usize,
) -> Result<(Duration, Samples)> {
    ns.enter(move || -> Result<(Duration, Samples)> {
        let rt = runtime();
        let mut proxy = IptablesProxy::new(config(backend))?;
        let start = Instant::now();
        let report = rt.block_on(proxy.apply(&table));
        let full = start.elapsed();
        if !report.errors.is_empty() {
            bail!("{:?}", report.errors);
        }
        let mut table = table;
        let mut samples = Samples::new();
        let n = table.ports.len();
        for k in 0..changes {
            let i = (k * 7_919 + 3) % n;
            let mut eps: Vec<SocketAddr> =
                table.ports[i].endpoints.iter().map(|e| e.addr).collect();
            eps[0] = fake_endpoint(i, 10 + k % 5);
            table.ports[i] = port(i, eps);
            let start = Instant::now();
            let report = rt.block_on(proxy.apply(&table));
            samples.record(start.elapsed().as_micros() as u64);
            if !report.errors.is_empty() {
                bail!("{:?}", report.errors);
            }
        }
        Ok((full, samples))
    })?
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn full_loads(args: &Args) -> Result<()> {
    println!("\n## full load, Services x {} endpoints (one iptables-restore --noflush into an empty namespace)", args.endpoints);
    println!("| Services | backend | Switchyard (lines) | kube-proxy layout (lines) |");
    println!("|---|---|---|---|");
    let limit = Duration::from_secs(args.timeout_secs);
    for &n in &args.sizes {
        for (backend, variant) in [(Backend::Nft, "nft"), (Backend::Legacy, "legacy")] {
            let t = table(n, args.endpoints, &[]);
            let ns = Netns::new("load")?;
            let (took, _) = ours(&ns, backend, t, 0)?;
            let lines = ns
                .exec(&[&format!("iptables-{variant}-save")])?
                .lines()
                .count();
            drop(ns);
            let text = kube_proxy::full(n, args.endpoints, &[]);
            let ns = Netns::new("load")?;
            let kp = match restore(&ns, variant, &text, limit)? {
                Some(d) => ms(d),
                None => format!("> {} s (stopped)", args.timeout_secs),
            };
            println!(
                "| {n} | {variant} | {} ({lines}) | {kp} ({}) |",
                ms(took),
                text.lines().count()
            );
        }
    }
    Ok(())
}

fn one_change(args: &Args) -> Result<()> {
    let n = args.services;
    println!(
        "\n## one endpoint change at {n} Services ({} changes each; median / max)",
        args.changes
    );
    println!("| backend | Switchyard sync | kube-proxy partial restore |");
    println!("|---|---|---|");
    let limit = Duration::from_secs(args.timeout_secs);
    for (backend, variant) in [(Backend::Nft, "nft"), (Backend::Legacy, "legacy")] {
        let ns = Netns::new("change")?;
        let (_, mut s) = ours(&ns, backend, table(n, args.endpoints, &[]), args.changes)?;
        drop(ns);
        let ns = Netns::new("change")?;
        let kp = match restore(
            &ns,
            variant,
            &kube_proxy::full(n, args.endpoints, &[]),
            limit,
        )? {
            None => "(full load did not finish)".to_string(),
            Some(_) => {
                let mut kp = Samples::new();
                for k in 0..args.changes.min(5) {
                    let i = (k * 7_919 + 3) % n;
                    let old: Vec<SocketAddr> =
                        (0..args.endpoints).map(|e| fake_endpoint(i, e)).collect();
                    let mut new = old.clone();
                    new[0] = fake_endpoint(i, 10);
                    for (a, b) in [(&old, &new), (&new, &old)] {
                        match restore(&ns, variant, &kube_proxy::change(n, i, a, b), limit)? {
                            Some(d) => kp.record(d.as_micros() as u64),
                            None => bail!("kube-proxy change restore ran past the limit"),
                        }
                    }
                }
                format!(
                    "{:.1} / {:.1} ms",
                    kp.quantile(0.5) as f64 / 1000.0,
                    kp.max() as f64 / 1000.0
                )
            }
        };
        println!(
            "| {variant} | {:.1} / {:.1} ms | {kp} |",
            s.quantile(0.5) as f64 / 1000.0,
            s.max() as f64 / 1000.0
        );
    }
    Ok(())
}

fn connection_rates(args: &Args) -> Result<()> {
    let n = args.services;
    println!("\n## new connections per second through {n} Services, client ns -> node ns (rules) -> backend ns ({} s runs, {} rounds, alternating; mean)", args.rate_secs, args.rounds);
    let (client, node, backend) = (
        Netns::new("client")?,
        Netns::new("node")?,
        Netns::new("backend")?,
    );
    node.link(&client, "10.1.0.1", "10.1.0.2")?;
    node.link(&backend, "10.2.0.1", "10.2.0.2")?;
    client.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    backend.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let backend_ip = Ipv4Addr::new(10, 2, 0, 2);
    sink_backend(&backend, backend_ip, 8080..8080 + args.endpoints as u16)?;
    let real: Vec<SocketAddr> = (0..args.endpoints as u16)
        .map(|p| SocketAddr::from((backend_ip, 8080 + p)))
        .collect();
    // Warm up, and the rate straight to a backend for reference.
    connect_rate(&client, &[SocketAddrV4::new(backend_ip, 8080)], 1)?;
    let (direct, _) = connect_rate(
        &client,
        &[SocketAddrV4::new(backend_ip, 8080)],
        args.rate_secs,
    )?;
    println!("direct to the backend (no service rules hit): {direct:.0}/s");
    println!("| layout | backend | 1st Service | {n}th Service | last / first | failed |");
    println!("|---|---|---|---|---|---|");
    let layouts: [(&str, Backend, &str); 3] = [
        ("Switchyard", Backend::Nft, "nft"),
        ("Switchyard", Backend::Legacy, "legacy"),
        ("kube-proxy", Backend::Legacy, "legacy"),
    ];
    for (layout, backend, variant) in layouts {
        node.exec(&[&format!("iptables-{variant}"), "-t", "nat", "-F"])?;
        if layout == "Switchyard" {
            ours(&node, backend, table(n, args.endpoints, &real), 0)?;
        } else {
            restore(
                &node,
                variant,
                &kube_proxy::full(n, args.endpoints, &real),
                Duration::from_secs(args.timeout_secs),
            )?
            .context("the kube-proxy rules did not load in time")?;
        }
        let (first, last) = (
            SocketAddrV4::new(vip(0), 80),
            SocketAddrV4::new(vip(n - 1), 80),
        );
        let (mut a, mut b, mut failed) = (0.0, 0.0, 0);
        for _ in 0..args.rounds {
            let (r, f) = connect_rate(&client, &[first], args.rate_secs)?;
            a += r;
            failed += f;
            let (r, f) = connect_rate(&client, &[last], args.rate_secs)?;
            b += r;
            failed += f;
        }
        let (a, b) = (a / args.rounds as f64, b / args.rounds as f64);
        println!(
            "| {layout} | {variant} | {a:.0}/s | {b:.0}/s | {:.1}% | {failed} |",
            100.0 * b / a
        );
        // Clean the namespace for the next layout.
        node.exec(&[&format!("iptables-{variant}"), "-t", "nat", "-F"])?;
        let _ = node.exec(&[&format!("iptables-{variant}"), "-t", "nat", "-X"]);
        let _ = node.exec(&[&format!("iptables-{variant}"), "-F"]);
        let _ = node.exec(&[&format!("iptables-{variant}"), "-X"]);
    }
    Ok(())
}

/// A slice of `per` endpoints on 10.200.0.10.. port 8080, where nothing listens (connections
/// are refused at once).
fn slice_json(i: usize, per: usize) -> String {
    let eps: Vec<String> = (0..per)
        .map(|e| {
            format!(
                r#"{{"addresses":["10.200.0.{}"],"conditions":{{"ready":true}}}}"#,
                10 + e
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-0","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":[{}]}}"#,
        eps.join(",")
    )
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

async fn programming(args: &Args) -> Result<()> {
    let n = args.services;
    let dir = tempfile::tempdir()?;
    let up = Up::start(
        &args.switchyard,
        &dir.path().join("data"),
        &[],
        &[
            "--proxy-mode",
            "iptables",
            "--service-cidr",
            "10.96.0.0/16",
            "--cluster-cidr",
            CLUSTER_CIDR,
        ],
    )
    .await?;
    let target = up.target.clone();
    let setup = Instant::now();
    api_creates(
        &target,
        32,
        n,
        "/api/v1/namespaces/default/services",
        service_json,
    )
    .await?;
    let per = args.endpoints;
    api_creates(&target, 32, n, SLICES, move |i| slice_json(i, per)).await?;
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Programmed: every endpoint is in the snapshot, and the proxy applied that snapshot.
    loop {
        let text = http_get(up.metrics, "/metrics").await?;
        if gauge(&text, "switchyard_endpoints") >= (n * per) as f64
            && gauge(&text, "switchyard_proxy_applied_generation")
                >= gauge(&text, "switchyard_snapshot_generation")
        {
            break;
        }
        if setup.elapsed() > Duration::from_secs(300) {
            bail!("the agent never programmed {n} Services");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{n} Services x {per} endpoints created through the API (32 clients) and programmed in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    // The new endpoint: answers "B".
    let b = std::net::TcpListener::bind(("10.200.0.1", 9100))?;
    std::thread::spawn(move || {
        for mut c in b.incoming().flatten() {
            let _ = c.write_all(b"B");
        }
    });
    let mut conn = target.connect().await?;
    let (_, list) = conn
        .request(
            "GET",
            "/api/v1/namespaces/default/services",
            bytes::Bytes::new(),
        )
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    let vip_of = |i: usize| -> Option<SocketAddr> {
        let item = list["items"]
            .as_array()?
            .iter()
            .find(|s| s["metadata"]["name"] == format!("svc-{i}"))?;
        Some(SocketAddr::new(
            item["spec"]["clusterIP"].as_str()?.parse().ok()?,
            80,
        ))
    };
    let reaches_b = |addr: SocketAddr| -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let mut buf = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
            && s.read_exact(&mut buf).is_ok()
            && buf == *b"B"
    };
    let mut samples = Samples::new();
    let step = (n / args.latency_changes).max(1);
    for k in 0..args.latency_changes.min(n) {
        let i = k * step;
        let addr = vip_of(i).context("no ClusterIP")?;
        conn.merge_patch(
            &format!("{SLICES}/svc-{i}-0"),
            r#"{"endpoints":[{"addresses":["10.200.0.1"],"conditions":{"ready":true}}],"ports":[{"name":"http","port":9100,"protocol":"TCP"}]}"#.into(),
        )
        .await?;
        let acked = Instant::now();
        while !reaches_b(addr) {
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("service {i} never reached the new endpoint");
            }
        }
        samples.record(acked.elapsed().as_micros() as u64);
    }
    println!(
        "\n## network programming latency at {n} Services (switchyard up --proxy-mode iptables; {} EndpointSlice changes, API ack -> a connection reaches the new endpoint)",
        samples.count()
    );
    println!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.quantile(0.5) as f64 / 1000.0,
        samples.quantile(0.99) as f64 / 1000.0,
        samples.max() as f64 / 1000.0
    );
    Ok(())
}

fn programming_latency(args: Args) -> Result<()> {
    let ns = Netns::new("agent")?;
    // A veth pair inside the namespace carries the endpoint addresses (this kernel has no dummy
    // devices) and the route for the service range.
    ns.ip(&["link", "add", "ep0", "type", "veth", "peer", "name", "ep1"])?;
    ns.ip(&["link", "set", "ep0", "up"])?;
    ns.ip(&["link", "set", "ep1", "up"])?;
    ns.ip(&["addr", "add", "10.200.0.1/24", "dev", "ep0"])?;
    for e in 0..args.endpoints {
        ns.ip(&[
            "addr",
            "add",
            &format!("10.200.0.{}/32", 10 + e),
            "dev",
            "ep0",
        ])?;
    }
    ns.ip(&["route", "add", "10.96.0.0/16", "dev", "ep0"])?;
    ns.enter(move || runtime().block_on(programming(&args)))?
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        bail!("iptables-bench programs network namespaces and needs root");
    }
    let version = Command::new("iptables").arg("-V").output()?;
    println!(
        "# iptables-bench on {} cores, {}",
        std::thread::available_parallelism()?.get(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let part = |p: &str| args.parts.iter().any(|x| x == p);
    if part("load") {
        full_loads(&args)?;
    }
    if part("change") {
        one_change(&args)?;
    }
    if part("rate") {
        connection_rates(&args)?;
    }
    if part("latency") {
        programming_latency(args)?;
    }
    Ok(())
}
