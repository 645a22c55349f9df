//! The `switchyard` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cli_load;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::agent::{self, ProxyMode};
use switchyard::apiserver::admission::allocator::{parse_port_range, Cidr};
use switchyard::apiserver::{self, Config};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kubernetes-compatible networking and service discovery"
)]
struct Cli {
    /// How log lines (and the ingress access log) are written.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (control plane) with an embedded store.
    Server(ServerArgs),
    /// Run the node agent against an API server (ours or kube-apiserver).
    Node(NodeArgs),
    /// Run the server and a node agent in one process, on embedded defaults, for one machine.
    Up(UpArgs),
    /// Load-test a Service, an Ingress or any HTTP, TCP or DNS server.
    Load(cli_load::LoadArgs),
    /// Bootstrap tokens, for nodes joining from other machines.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a kubeconfig whose user is a client certificate signed by the server's CA (an
    /// admin task on the server's machine, as `kubeadm kubeconfig user`). A node's is
    /// `--user system:node:NAME --group system:nodes`.
    Kubeconfig(KubeconfigArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token and print it, the CA hash, and the command that joins a node.
    Create {
        /// An admin kubeconfig for the server.
        #[arg(long, default_value = ".switchyard/admin.kubeconfig")]
        kubeconfig: PathBuf,
        /// How long the token may be used to join.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

#[derive(clap::Args)]
struct KubeconfigArgs {
    /// The server's data directory (its CA signs the certificate).
    #[arg(long)]
    data_dir: PathBuf,
    /// The user name (the certificate's CN).
    #[arg(long)]
    user: String,
    /// A group (the certificate's O; repeatable).
    #[arg(long)]
    group: Vec<String>,
    /// The server URL (default: the one in the data directory's admin.kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, the CA, the tokens and the kubeconfigs live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cidr: Cidr,
    /// The range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    node_port_range: std::ops::RangeInclusive<u16>,
    /// Accept loopback addresses in EndpointSlices (for Services backed by local processes).
    #[arg(long)]
    allow_loopback_endpoints: bool,
    /// The address nodes on other machines reach this server at: in its certificate, in the
    /// kubeconfigs it writes, and the `kubernetes` Service's endpoint (default: the listen
    /// address).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Another name or address for the serving certificate (repeatable).
    #[arg(long)]
    tls_san: Vec<String>,
    /// How long the client certificates of joining nodes are valid (e.g. 8760h).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    node_certificate_lifetime: Duration,
    /// How long an Event lives after its last write (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: Duration,
    /// How long the store keeps the history of changes (watches resume and paged lists read
    /// within it; older revisions get 410 Expired), across restarts too.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
}

/// What `node` and `up` share.
#[derive(clap::Args)]
struct AgentArgs {
    /// The name this node registers as (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// How Services are programmed.
    #[arg(long, value_enum, default_value = "userspace")]
    proxy_mode: ProxyMode,
    /// Where /metrics and /healthz are served.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_listen: SocketAddr,
    /// The address NodePorts listen on (the unspecified address: all of the node's). Default:
    /// 0.0.0.0 for `node`; 127.0.0.1 for `up`, which accepts loopback endpoints and so must
    /// not expose them on the node's other addresses.
    #[arg(long)]
    nodeport_address: Option<IpAddr>,
    /// The least time between two proxy syncs (e.g. 0s, 100ms, 1s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// The longest time between two proxy syncs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sync_period: Duration,
    /// Serve cluster DNS on this address, UDP and TCP (`up` defaults to 127.0.0.1:1053).
    #[arg(long)]
    dns_listen: Option<SocketAddr>,
    /// The cluster DNS Service (NAMESPACE/NAME, e.g. kube-system/kube-dns) whose ports this
    /// node serves with its own DNS listener, in place of CoreDNS's endpoints (needs
    /// --dns-listen on one of the node's addresses). Empty: none.
    #[arg(long, default_value = "")]
    dns_service: String,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where names outside the cluster domain are resolved (repeatable; default: the
    /// nameservers in /etc/resolv.conf).
    #[arg(long)]
    dns_upstream: Vec<SocketAddr>,
    /// The TTL of cluster records, in seconds.
    #[arg(long, default_value_t = 5)]
    dns_ttl: u32,
    /// Answer `<a-b-c-d>.<ns>.pod.<zone>` with the address in its name (CoreDNS's "pods
    /// insecure"; off by default, as in CoreDNS).
    #[arg(long)]
    dns_pod_records: bool,
    /// The largest UDP response, in bytes, whatever a client advertises with EDNS (larger
    /// answers are truncated and the client retries over TCP).
    #[arg(long, default_value_t = switchyard_dns::server::DEFAULT_UDP_PAYLOAD)]
    dns_udp_payload_limit: u16,
    /// Distinct questions out to the upstream resolvers at once (eight times as many queries may
    /// wait on them); past it, queries for names outside the cluster get SERVFAIL at once.
    #[arg(long, default_value_t = switchyard_dns::forward::DEFAULT_MAX_CONCURRENT)]
    dns_max_concurrent: usize,
    /// Serve Ingresses over HTTP on this address (`up` defaults to 127.0.0.1:8080).
    #[arg(long)]
    ingress_http: Option<SocketAddr>,
    /// Serve Ingresses over HTTPS on this address (`up` defaults to 127.0.0.1:8443).
    #[arg(long)]
    ingress_https: Option<SocketAddr>,
    /// The address written into the status of the Ingresses this node serves (default: the
    /// ingress listen address, when it is a specific one).
    #[arg(long)]
    ingress_status_address: Option<IpAddr>,
    /// Clients must send request headers (and finish TLS handshakes) within this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ingress_header_timeout: Duration,
    /// Open ingress connections at most; more wait to be accepted.
    #[arg(long, default_value_t = 16_384)]
    ingress_max_connections: usize,
    /// Event loops (threads) of the ingress router (default: one per CPU).
    #[arg(long)]
    ingress_threads: Option<usize>,
    /// Log one line per ingress request (target `switchyard::access`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ingress_access_log: bool,
    /// The pods' address range (repeatable, one per family): with the iptables and nftables
    /// proxies, cluster-IP traffic from outside it is masqueraded. External traffic always is.
    #[arg(long, value_parser = parse_cidr)]
    cluster_cidr: Vec<Cidr>,
    /// With the iptables and nftables proxies, masquerade all service traffic.
    #[arg(long)]
    masquerade_all: bool,
    /// Which iptables the iptables proxy uses (auto: the one `iptables` is).
    #[arg(long, value_enum, default_value = "auto")]
    iptables_backend: IptablesBackend,
    /// With the eBPF proxy, the cgroup v2 whose processes' sockets are translated (with every
    /// cgroup below it). Default: the cgroup v2 root, as /proc/self/mountinfo shows it
    /// (/sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one).
    #[arg(long)]
    cgroup_path: Option<PathBuf>,
    /// With the eBPF proxy, the directory on a bpffs where its maps and links are pinned.
    #[arg(long, default_value = switchyard_proxy::ebpf::DEFAULT_PIN_DIR)]
    bpf_pin_path: PathBuf,
    /// With the userspace proxy, connections one TCP frontend holds at most (more are reset).
    #[arg(long, default_value_t = 4096)]
    userspace_max_connections: usize,
    /// With the userspace proxy, a TCP connection idle this long either way is closed.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    userspace_idle_timeout: Duration,
    /// With the userspace proxy, client flows one UDP frontend keeps at most (a new client
    /// ends the oldest).
    #[arg(long, default_value_t = 1024)]
    userspace_max_udp_flows: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IptablesBackend {
    Auto,
    Nft,
    Legacy,
}

impl From<IptablesBackend> for switchyard_proxy::iptables::Backend {
    fn from(b: IptablesBackend) -> Self {
        match b {
            IptablesBackend::Auto => Self::Auto,
            IptablesBackend::Nft => Self::Nft,
            IptablesBackend::Legacy => Self::Legacy,
        }
    }
}

#[derive(clap::Args)]
struct NodeArgs {
    /// A kubeconfig for the API server (or join with --server, --token, --ca-cert-hash; with
    /// neither, in a pod, its ServiceAccount's in-cluster credentials).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Join the server at this URL (https://ADDRESS:6443) as this node, with a client
    /// certificate obtained with --token and kept in --data-dir.
    #[arg(long, conflicts_with = "kubeconfig", requires = "ca_cert_hash")]
    server: Option<String>,
    /// A bootstrap token (`switchyard token create` prints one) to obtain the node's
    /// credential; not needed while the stored one is valid.
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// The pinned hash of the server's CA (sha256:HEX, as `switchyard token create` prints it).
    #[arg(long, requires = "server")]
    ca_cert_hash: Option<String>,
    /// Where a joined node keeps its key, certificate and kubeconfig.
    #[arg(long, default_value = ".switchyard-node")]
    data_dir: PathBuf,
    /// Remove every iptables rule and chain, the nftables tables and the conntrack entries the
    /// agent made, the userspace proxy's local routes, and the pinned BPF programs and maps of
    /// the eBPF proxy, then exit.
    #[arg(long)]
    cleanup: bool,
    /// The ClusterIP ranges of the cluster (repeatable, one per family): the userspace proxy
    /// makes only addresses inside them local.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cidr: Vec<Cidr>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Where the store, credentials and kubeconfigs live.
    #[arg(long, default_value = ".switchyard")]
    data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The ClusterIP range: in 127.0.0.0/8 by default, so that ClusterIPs are reachable on
    /// this machine without privileges.
    #[arg(long, default_value = "127.10.0.0/16", value_parser = parse_cidr)]
    service_cidr: Cidr,
    /// The range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    node_port_range: std::ops::RangeInclusive<u16>,
    #[command(flatten)]
    agent: AgentArgs,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
        .map_err(|e: switchyard::apiserver::admission::allocator::CidrError| e.to_string())
}

/// A flag's duration: the router's units (ms, s, m), and hours for lifetimes (24h, 8760h).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Some(hours) = s.strip_suffix('h') {
        return hours
            .parse::<u64>()
            .ok()
            .and_then(|h| h.checked_mul(3600))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is not a duration (e.g. 100ms, 2s, 1m, 24h)"));
    }
    switchyard_proxy::router::annotations::parse_duration(s)
}

/// `NAMESPACE/NAME`, or nothing for "".
fn parse_service_ref(s: &str) -> Result<Option<(String, String)>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Some((ns.to_string(), name.to_string())))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| {
            !h.is_empty() && switchyard::apiserver::admission::names::dns1123_subdomain(h).is_none()
        })
        .unwrap_or_else(|| "localhost".to_string())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The nameservers of /etc/resolv.conf, on port 53.
fn system_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The ingress router's settings, when it listens anywhere.
fn ingress_config(
    args: &AgentArgs,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
) -> Option<agent::IngressConfig> {
    if http.is_none() && https.is_none() {
        return None;
    }
    let mut router = switchyard_proxy::router::Config::new(agent::default_certificate());
    router.http = http;
    router.https = https;
    router.header_timeout = args.ingress_header_timeout;
    router.max_connections = args.ingress_max_connections;
    router.access_log = args.ingress_access_log;
    // The access log writes its lines itself, in the format of the process's other lines.
    router.access_log_format = match LOG_FORMAT.get() {
        Some(LogFormat::Json) => switchyard_proxy::router::AccessLogFormat::Json,
        _ => switchyard_proxy::router::AccessLogFormat::Text,
    };
    if let Some(n) = args.ingress_threads {
        router.threads = n.max(1);
    }
    let status_address = args.ingress_status_address.or_else(|| {
        [http, https]
            .into_iter()
            .flatten()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified())
    });
    Some(agent::IngressConfig {
        router,
        status_address,
    })
}

/// The agent's settings; `defaults` are the DNS and ingress addresses used when no flag names
/// one (`up` has them, `node` does not).
fn agent_config(
    args: &AgentArgs,
    defaults: Option<UpDefaults>,
    service_cidrs: &[Cidr],
) -> anyhow::Result<agent::Config> {
    let node_addr = args
        .nodeport_address
        .or(defaults.map(|d| d.nodeport))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let default_dns = defaults.map(|d| d.dns);
    let dns = args
        .dns_listen
        .or(default_dns)
        .map(|listen| agent::DnsConfig {
            listen,
            domain: args.cluster_domain.clone(),
            ttl: args.dns_ttl,
            pod_records: args.dns_pod_records,
            udp_payload: args.dns_udp_payload_limit,
            forward: switchyard_dns::forward::Config {
                upstreams: if args.dns_upstream.is_empty() {
                    system_resolvers()
                } else {
                    args.dns_upstream.clone()
                },
                timeout: Duration::from_secs(2),
                cache_entries: 10_000,
                max_concurrent: args.dns_max_concurrent,
            },
        });
    let ingress = ingress_config(
        args,
        args.ingress_http.or(defaults.map(|d| d.ingress_http)),
        args.ingress_https.or(defaults.map(|d| d.ingress_https)),
    );
    let iptables = switchyard_proxy::iptables::Config {
        backend: args.iptables_backend.into(),
        options: switchyard_proxy::iptables::render::Options {
            node_addr,
            cluster_cidrs: args
                .cluster_cidr
                .iter()
                .map(|c| (c.addr, c.prefix))
                .collect(),
            masquerade_all: args.masquerade_all,
        },
    };
    let dns_service =
        parse_service_ref(&args.dns_service).map_err(|e| anyhow::anyhow!("--dns-service: {e}"))?;
    if let Some((ns, name)) = &dns_service {
        if dns.as_ref().is_none_or(|d| d.listen.ip().is_unspecified()) {
            anyhow::bail!("--dns-service {ns}/{name} needs --dns-listen on one of the node's addresses (its ClusterIP is sent there)");
        }
    }
    Ok(agent::Config {
        dns,
        dns_service,
        ingress,
        node_name: args.node_name.clone().unwrap_or_else(hostname),
        proxy_mode: args.proxy_mode,
        metrics_listen: Some(args.metrics_listen),
        min_sync: args.min_sync_period,
        max_sync: args.sync_period,
        userspace: switchyard_proxy::userspace::Config {
            node_addr,
            service_ranges: service_cidrs.iter().map(|c| (c.addr, c.prefix)).collect(),
            max_connections: args.userspace_max_connections,
            idle_timeout: args.userspace_idle_timeout,
            max_udp_flows: args.userspace_max_udp_flows,
            ..Default::default()
        },
        ebpf: switchyard_proxy::ebpf::Config {
            cgroup: args.cgroup_path.clone(),
            pin_dir: args.bpf_pin_path.clone(),
            iptables: Some(iptables.clone()),
        },
        nftables: switchyard_proxy::nftables::Config {
            options: iptables.options.clone(),
        },
        iptables,
    })
}

/// Where `up` serves what `node` serves only when asked.
#[derive(Clone, Copy)]
struct UpDefaults {
    nodeport: IpAddr,
    dns: SocketAddr,
    ingress_http: SocketAddr,
    ingress_https: SocketAddr,
}

const UP_DEFAULTS: UpDefaults = UpDefaults {
    nodeport: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    dns: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1053),
    ingress_http: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080),
    ingress_https: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443),
};

async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("using {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(cfg)?)
}

async fn start_server(
    config: Config,
) -> anyhow::Result<(apiserver::Started, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = apiserver::run(config, listener, async move {
        let _ = stop_rx.await;
    })
    .await?;
    Ok((started, stop_tx))
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let (started, stop) = start_server(Config {
        data_dir: args.data_dir,
        listen: args.listen,
        service_cidr: args.service_cidr,
        node_port_range: args.node_port_range,
        allow_loopback_endpoints: args.allow_loopback_endpoints,
        advertise_address: args.advertise_address,
        tls_sans: args.tls_san,
        node_cert_lifetime: args.node_certificate_lifetime,
        event_ttl: args.event_ttl,
        history: args.compaction_interval,
    })
    .await?;
    println!("switchyard server listening on https://{}", started.addr);
    println!("kubeconfig: {}", started.kubeconfig.display());
    shutdown_signal().await;
    let _ = stop.send(());
    Ok(())
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    if args.cleanup {
        let done = switchyard_proxy::iptables::cleanup(args.agent.iptables_backend.into()).await?;
        println!(
            "removed {} chains, {} jump rules; cleared conntrack entries of {} frontends",
            done.chains, done.jumps, done.conntrack_filters
        );
        let nft = switchyard_proxy::nftables::cleanup().await?;
        println!(
            "removed {} nftables tables; cleared conntrack entries of {} frontends",
            nft.tables, nft.conntrack_filters
        );
        let routes = switchyard_proxy::userspace::cleanup()
            .await
            .context("removing the userspace proxy's local routes")?;
        println!("removed {routes} local routes of the userspace proxy");
        let bpf = switchyard_proxy::ebpf::cleanup(&args.agent.bpf_pin_path)?;
        println!(
            "removed {} pinned BPF links and {} pinned maps from {}",
            bpf.links,
            bpf.maps,
            args.agent.bpf_pin_path.display()
        );
        return Ok(());
    }
    let config = agent_config(&args.agent, None, &args.service_cidr)?;
    let client = match (&args.kubeconfig, &args.server) {
        (Some(k), _) => client_from(k).await?,
        (None, Some(server)) => {
            let join = switchyard::join::Join {
                server,
                token: args.token.as_deref(),
                ca_cert_hash: args.ca_cert_hash.as_deref().unwrap_or_default(),
                node_name: &config.node_name,
                data_dir: &args.data_dir,
            };
            let kubeconfig = switchyard::join::node_credential(&join).await?;
            let (client, renew) = switchyard::join::renewing_client(&join, &kubeconfig).await?;
            tokio::spawn(renew);
            client
        }
        (None, None) => {
            // In a pod: the ServiceAccount's token and CA, and KUBERNETES_SERVICE_HOST/PORT
            // (a DaemonSet that replaces kube-proxy sets these to the API server's own address).
            let cfg = kube::Config::incluster().map_err(|e| {
                anyhow::anyhow!("--kubeconfig or --server is required outside a pod (in-cluster credentials: {e})")
            })?;
            kube::Client::try_from(cfg)?
        }
    };
    println!(
        "switchyard node {} ({:?} proxy); metrics on http://{}/metrics",
        config.node_name, config.proxy_mode, args.agent.metrics_listen
    );
    agent::run(client, config, shutdown_signal()).await?;
    Ok(())
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let (started, stop) = start_server(Config {
        data_dir: args.data_dir,
        listen: args.listen,
        service_cidr: args.service_cidr,
        node_port_range: args.node_port_range,
        allow_loopback_endpoints: true,
        advertise_address: None,
        tls_sans: Vec::new(),
        node_cert_lifetime: Duration::from_secs(365 * 24 * 3600),
        event_ttl: Duration::from_secs(3600),
        history: Duration::from_secs(300),
    })
    .await?;
    started.registry.ensure_default_ingress_class().await?;
    let client = client_from(&started.kubeconfig).await?;
    let config = agent_config(&args.agent, Some(UP_DEFAULTS), &[args.service_cidr])?;
    println!("switchyard up");
    println!("  API server    https://{}", started.addr);
    println!("  kubeconfig    {}", started.kubeconfig.display());
    println!(
        "  services      ClusterIPs from {} ({:?} proxy), node {}",
        args.service_cidr, config.proxy_mode, config.node_name
    );
    if let Some(d) = &config.dns {
        println!("  DNS           {} (udp, tcp), zone {}", d.listen, d.domain);
    }
    if let Some(i) = &config.ingress {
        if let Some(a) = i.router.http {
            println!("  ingress http  http://{a}");
        }
        if let Some(a) = i.router.https {
            println!("  ingress https https://{a}");
        }
    }
    println!(
        "  metrics       http://{}/metrics",
        args.agent.metrics_listen
    );
    println!("Ctrl-C stops everything.");
    agent::run(client, config, shutdown_signal()).await?;
    let _ = stop.send(());
    Ok(())
}

/// Creates a bootstrap token Secret (kubeadm's format) and prints the token, the CA hash and the
/// join command.
async fn token_create(kubeconfig: &Path, ttl: Duration) -> anyhow::Result<()> {
    use base64::Engine;
    use rand::Rng;
    if ttl.is_zero() {
        anyhow::bail!("--ttl must be more than 0");
    }
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("no cluster in the kubeconfig")?;
    let server = cluster.server.context("no server in the kubeconfig")?;
    let ca_pem = cluster
        .certificate_authority_data
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .context("no certificate-authority-data in the kubeconfig")?;
    let hash = switchyard::apiserver::pki::ca_hash(&ca_pem).context("the CA does not parse")?;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect()
    };
    let (id, secret) = (pick(6), pick(16));
    let expires = switchyard::time::rfc3339(std::time::SystemTime::now() + ttl);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let obj: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "token-id": b64(&id),
            "token-secret": b64(&secret),
            "expiration": b64(&expires),
            "usage-bootstrap-authentication": b64("true"),
            "usage-bootstrap-signing": b64("true"),
            "auth-extra-groups": b64("system:bootstrappers:switchyard:default-node-token"),
        },
    }))?;
    let client = client_from(kubeconfig).await?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "kube-system");
    api.create(&Default::default(), &obj)
        .await
        .context("creating the bootstrap token Secret")?;
    println!("{id}.{secret}");
    println!("{hash}");
    println!(
        "switchyard node --server {server} --token {id}.{secret} --ca-cert-hash {hash} --node-name NAME"
    );
    Ok(())
}

fn kubeconfig(args: KubeconfigArgs) -> anyhow::Result<()> {
    use switchyard::apiserver::pki;
    if args.user.is_empty() || !(1..=3650).contains(&args.days) {
        anyhow::bail!("--user must not be empty and --days must be 1 to 3650");
    }
    if !args.data_dir.join("ca.key").exists() {
        anyhow::bail!(
            "{} holds no CA (ca.key): is it a server's data directory?",
            args.data_dir.display()
        );
    }
    let server = match args.server {
        Some(s) => s,
        None => {
            let admin = args.data_dir.join("admin.kubeconfig");
            let text = std::fs::read_to_string(&admin)
                .with_context(|| format!("reading {} (or give --server)", admin.display()))?;
            text.lines()
                .find_map(|l| l.trim().strip_prefix("server: "))
                .context("no server in admin.kubeconfig")?
                .to_string()
        }
    };
    let (ca_pem, ca) = pki::ca(&args.data_dir)?;
    let groups: Vec<&str> = args.group.iter().map(String::as_str).collect();
    let (cert, key) = pki::client_certificate(&ca, &args.user, &groups, args.days)?;
    print!(
        "{}",
        pki::cert_kubeconfig(&server, &ca_pem, &args.user, &cert, &key)
    );
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (proxies, the router, the DNS forwarder
/// and the load generator hold a descriptor per connection or query in flight); returns the
/// limit in force.
fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not read the open-file limit");
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open-file limit");
        }
    }
    Some(lim.rlim_cur)
}

/// The `--log-format` this process runs with.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn main() {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let files = raise_open_files();
    if !matches!(
        cli.command,
        Command::Load(_) | Command::Kubeconfig(_) | Command::Token(_)
    ) {
        tracing::info!(open_files = ?files, "open-file limit");
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server(args).await,
            Command::Node(args) => node(args).await,
            Command::Up(args) => up(args).await,
            Command::Load(args) => cli_load::run(args).await,
            Command::Kubeconfig(args) => kubeconfig(args),
            Command::Token(TokenCommand::Create { kubeconfig, ttl }) => {
                token_create(&kubeconfig, ttl).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("switchyard: {e:#}");
        std::process::exit(1);
    }
}
