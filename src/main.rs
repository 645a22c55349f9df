//! The `switchyard` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::apiserver::{self, Config};
use switchyard::controllers::allocator::{parse_port_range, Cidr};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kubernetes-compatible networking and service discovery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (control plane) with an embedded store.
    Server(ServerArgs),
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
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
        .map_err(|e: switchyard::controllers::allocator::CidrError| e.to_string())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let config = Config {
        data_dir: args.data_dir,
        listen: args.listen,
        service_cidr: args.service_cidr,
        node_port_range: args.node_port_range,
        allow_loopback_endpoints: args.allow_loopback_endpoints,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = apiserver::run(config, listener, async move {
        let _ = stop_rx.await;
    })
    .await?;
    println!("switchyard server listening on https://{}", started.addr);
    println!("kubeconfig: {}", started.kubeconfig.display());
    shutdown_signal().await;
    let _ = stop_tx.send(());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("switchyard: {e:#}");
        std::process::exit(1);
    }
}
