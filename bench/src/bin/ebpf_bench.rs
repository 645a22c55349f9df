//! eBPF proxy benchmark: socket-level translation side by side with the iptables proxy (nft),
//! the nftables proxy and no service at all, on the same kernel in the same run. Needs root, a
//! kernel with BTF, and the iptables and nftables packages.
//!
//! Prints:
//! - programming time of N Services x M endpoints into empty maps / an empty namespace, and of
//!   one endpoint change at N (the proxies' whole sync: plan + map writes, render + diff +
//!   `iptables-restore`, or the nftables proxy's element batch);
//! - from a client namespace through a node namespace to a backend namespace: new connections
//!   per second and the latency of one short exchange (connect, one byte each way) through the
//!   1st and the Nth ClusterIP, for each mode, against the same straight to the backend's
//!   address, in alternating rounds.
//!
//! The programs attach to a cgroup the benchmark creates (and the benchmark moves itself into
//! it only while the eBPF mode is measured); the maps and links are pinned on a bpffs it mounts
//! itself. Both are removed at the end.
//!
//! Usage: ebpf-bench [--services 10000] [--endpoints 10]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use switchyard_bench::cgroup::BpfEnv;
use switchyard_bench::netns::Netns;
use switchyard_bench::services::{
    connect_rate, echo_backend, exchanges, fake_endpoint, port, table, vip,
};
use switchyard_bench::Samples;
use switchyard_proxy::ebpf::{self, EbpfProxy};
use switchyard_proxy::iptables::render::Options;
use switchyard_proxy::iptables::{Backend, IptablesProxy};
use switchyard_proxy::nftables::NftablesProxy;
use switchyard_proxy::table::ServiceTable;
use switchyard_proxy::SyncReport;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Single-endpoint changes timed per mode.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Seconds per connection-rate run.
    #[arg(long, default_value_t = 3)]
    rate_secs: u64,
    /// Exchanges per latency run.
    #[arg(long, default_value_t = 3000)]
    exchanges: usize,
    /// Rounds of direct / 1st / Nth per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "program,traffic")]
    parts: Vec<String>,
    /// Which proxies.
    #[arg(long, value_delimiter = ',', default_value = "ebpf,nftables,iptables")]
    modes: Vec<String>,
}

/// The proxy configuration for this run's cgroup and bpffs.
fn config(env: &BpfEnv) -> ebpf::Config {
    ebpf::Config {
        cgroup: Some(env.cgroup.clone()),
        pin_dir: env.pin_dir(),
        iptables: Some(iptables_config()),
    }
}

fn iptables_config() -> switchyard_proxy::iptables::Config {
    switchyard_proxy::iptables::Config {
        backend: Backend::Nft,
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

/// Any of the proxies, behind the one call the benchmark makes.
enum Proxy {
    Ebpf(Box<EbpfProxy>),
    Iptables(Box<IptablesProxy>),
    Nftables(Box<NftablesProxy>),
}

impl Proxy {
    fn new(mode: &str, config: ebpf::Config) -> Result<Proxy> {
        Ok(match mode {
            "ebpf" => Proxy::Ebpf(Box::new(EbpfProxy::new(config)?)),
            "nftables" => Proxy::Nftables(Box::new(NftablesProxy::new(
                switchyard_proxy::nftables::Config {
                    options: iptables_config().options,
                },
            )?)),
            _ => Proxy::Iptables(Box::new(IptablesProxy::new(iptables_config())?)),
        })
    }

    fn apply(&mut self, rt: &tokio::runtime::Runtime, table: &ServiceTable) -> Result<()> {
        let report: SyncReport = match self {
            Proxy::Ebpf(p) => rt.block_on(p.apply(table)),
            Proxy::Iptables(p) => rt.block_on(p.apply(table)),
            Proxy::Nftables(p) => rt.block_on(p.apply(table)),
        };
        if !report.errors.is_empty() {
            bail!("{:?}", report.errors);
        }
        Ok(())
    }
}

const MODES: [(&str, &str); 3] = [
    ("ebpf", "eBPF"),
    ("nftables", "nftables"),
    ("iptables", "iptables (nft)"),
];

/// The full load and `changes` single-endpoint changes, in a fresh namespace.
fn programming(args: &Args, env: &BpfEnv, mode: &'static str) -> Result<(Duration, Samples)> {
    let ns = Netns::new("program")?;
    let config = config(env);
    let pins = config.pin_dir.clone();
    let (n, per, changes) = (args.services, args.endpoints, args.changes);
    let result = ns.enter(move || -> Result<(Duration, Samples)> {
        let rt = runtime();
        let mut proxy = Proxy::new(mode, config)?;
        let mut t = table(n, per, &[]);
        let start = Instant::now();
        proxy.apply(&rt, &t)?;
        let full = start.elapsed();
        let mut samples = Samples::new();
        for k in 0..changes {
            let i = (k * 7_919 + 3) % n;
            let mut eps: Vec<SocketAddr> = t.ports[i].endpoints.iter().map(|e| e.addr).collect();
            eps[0] = fake_endpoint(i, 10 + k % 5);
            t.ports[i] = port(i, eps);
            let start = Instant::now();
            proxy.apply(&rt, &t)?;
            samples.record(start.elapsed().as_micros() as u64);
        }
        Ok((full, samples))
    })?;
    ebpf::cleanup(&pins)?;
    result
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn program(args: &Args, env: &BpfEnv) -> Result<()> {
    println!(
        "\n## programming {} Services x {} endpoints (whole sync into empty maps / an empty namespace; one endpoint change: median / p99 / max of {})",
        args.services, args.endpoints, args.changes
    );
    println!("| mode | full load | one change |");
    println!("|---|---|---|");
    for (mode, label) in MODES
        .into_iter()
        .filter(|(m, _)| args.modes.iter().any(|a| a == m))
    {
        let (full, mut s) = programming(args, env, mode)?;
        println!(
            "| {label} | {} | {} / {} / {} |",
            ms(full.as_micros() as u64),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max())
        );
    }
    Ok(())
}

/// One mode's figures over the rounds.
#[derive(Default)]
struct Figures {
    rate: [f64; 3],
    failed: u64,
    latency: [Samples; 3],
}

fn traffic(args: &Args, env: &BpfEnv) -> Result<()> {
    let n = args.services;
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
    echo_backend(&backend, backend_ip, 8080..8080 + args.endpoints as u16)?;
    let real: Vec<SocketAddr> = (0..args.endpoints as u16)
        .map(|p| SocketAddr::from((backend_ip, 8080 + p)))
        .collect();
    let t = table(n, args.endpoints, &real);
    // Direct goes to the same ten backends in turn, as the Services spread over them.
    let direct: Vec<SocketAddrV4> = (0..args.endpoints as u16)
        .map(|p| SocketAddrV4::new(backend_ip, 8080 + p))
        .collect();
    let targets = [
        direct,
        vec![SocketAddrV4::new(vip(0), 80)],
        vec![SocketAddrV4::new(vip(n - 1), 80)],
    ];
    // Warm up the path.
    connect_rate(&client, &targets[0], 1)?;
    let mut all = Vec::new();
    for (mode, label) in MODES
        .into_iter()
        .filter(|(m, _)| args.modes.iter().any(|a| a == m))
    {
        // Programmed from inside the node namespace; what is programmed outlives the proxy
        // (pinned programs and maps, iptables rules) until it is cleaned up below.
        let (config, table) = (config(env), t.clone());
        node.enter(move || -> Result<()> { Proxy::new(mode, config)?.apply(&runtime(), &table) })??;
        if mode == "ebpf" {
            env.enter_cgroup(true)?;
        }
        let mut f = Figures::default();
        for round in 0..args.rounds {
            // Each round starts at another target, so no target always goes first.
            for k in (0..3).map(|x| (x + round) % 3) {
                let to = &targets[k];
                let (r, failed) = connect_rate(&client, to, args.rate_secs)?;
                f.rate[k] += r / args.rounds as f64;
                f.failed += failed;
                f.latency[k].append(exchanges(&client, to, args.exchanges)?);
            }
        }
        env.enter_cgroup(false)?;
        ebpf::cleanup(&env.pin_dir())?;
        node.exec(&["iptables-nft", "-t", "nat", "-F"])?;
        let _ = node.exec(&["iptables-nft", "-t", "nat", "-X"]);
        let _ = node.exec(&["iptables-nft", "-F"]);
        let _ = node.exec(&["iptables-nft", "-X"]);
        for family in ["ip", "ip6"] {
            let _ = node.exec(&["nft", "delete", "table", family, "switchyard"]);
        }
        all.push((label, f));
    }
    println!(
        "\n## client ns -> node ns -> backend ns: new connections/s ({} s runs) and one short exchange (connect, 1 byte each way; {} per run), {} rounds of direct / 1st / {n}th, each round starting at the next",
        args.rate_secs, args.exchanges, args.rounds
    );
    println!("| mode | target | new conns/s | vs direct | exchange p50 / p99 | failed |");
    println!("|---|---|---|---|---|---|");
    for (label, f) in &mut all {
        let names = [
            "direct to the pod".to_string(),
            "1st Service".into(),
            format!("{n}th Service"),
        ];
        for (k, name) in names.iter().enumerate() {
            let p50 = f.latency[k].quantile(0.5);
            let p99 = f.latency[k].quantile(0.99);
            println!(
                "| {label} | {name} | {:.0}/s | {:.1}% | {p50} / {p99} µs | {} |",
                f.rate[k],
                100.0 * f.rate[k] / f.rate[0],
                if k == 0 {
                    f.failed.to_string()
                } else {
                    String::new()
                }
            );
        }
        println!(
            "| {label} | {n}th / 1st | | {:.1}% | | |",
            100.0 * f.rate[2] / f.rate[1]
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let env = BpfEnv::new()?;
    if args.parts.iter().any(|p| p == "program") {
        program(&args, &env)?;
    }
    if args.parts.iter().any(|p| p == "traffic") {
        traffic(&args, &env)?;
    }
    Ok(())
}
