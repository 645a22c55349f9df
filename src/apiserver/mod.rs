//! The Kubernetes-compatible API server behind `switchyard server`. It depends on [`crate::store`]
//! and runs the [`crate::controllers`]; nothing else in the crate depends on it but `up`.
//!
//! A request flows: [`http`] (TLS, authentication, health, discovery) -> [`request`] (parsed
//! once into a typed request: verb, resource, subresource, namespace, name) -> authorization ->
//! a handler per verb (`handlers`) -> [`registry`] -> [`admission`] -> the store.
//!
//! - [`resources`]: the table of served kinds, which can grow while the server runs;
//!   [`crd`]: CustomResourceDefinitions, the kinds they add, their schemas and CEL rules;
//!   [`schema`]: how each kind's lists merge;
//! - [`registry`]: the verbs over the store, with kube-apiserver's semantics;
//! - [`admission`]: defaulting, validation, ClusterIP/NodePort allocation;
//! - [`watch`], [`table`], [`patch`], [`selectors`]: the parts of a request that need them;
//! - [`managed`]: managed fields — who set what — and server-side apply conflicts;
//! - [`discovery`]: discovery documents, `/version`, OpenAPI v3;
//! - [`pki`]: the CA, serving certificate, tokens and kubeconfigs in the data directory;
//! - [`protobuf`]: Kubernetes protobuf request bodies, decoded to JSON.

pub mod admission;
pub mod auth;
pub mod authz;
pub mod crd;
pub mod discovery;
pub mod error;
mod handlers;
pub mod http;
pub mod managed;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod resources;
mod reviews;
pub mod schema;
pub mod selectors;
pub mod table;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpListener;

use crate::controllers::{
    aggregation, certificates, endpointslice, events, garbage, serviceaccounts,
};
use crate::store::embedded::{EmbeddedStore, Retention};
use crate::store::StoreError;
use admission::allocator::{Cidr, IpAllocator, PortAllocator};
use admission::{Admission, Allocators, Policy};
use registry::Registry;
use resources::{builtin, Builtin};

/// How `switchyard server` is configured.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub service_cidr: Cidr,
    pub node_port_range: RangeInclusive<u16>,
    pub allow_loopback_endpoints: bool,
    /// The address other machines reach the server at: in its certificate, in the kubeconfigs
    /// it writes, and the endpoint of the `kubernetes` Service (default: the listen address,
    /// loopback for a wildcard).
    pub advertise_address: Option<IpAddr>,
    /// More names and addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// How long a node's client certificate is valid.
    pub node_cert_lifetime: std::time::Duration,
    /// How long an Event lives after its last write.
    pub event_ttl: std::time::Duration,
    /// How long the store keeps its history of changes.
    pub history: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("credentials: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] error::ApiError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server: where it listens, where its kubeconfig is.
pub struct Started {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub registry: Arc<Registry>,
}

/// The URL clients use: a wildcard listen address is reached on loopback.
fn client_host(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// Where clients reach the server: the advertised address, else the listen address.
fn advertised(config: &Config, addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        config.advertise_address.unwrap_or(client_host(addr)),
        addr.port(),
    )
}

fn url(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("https://{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", addr.port()),
    }
}

/// The objects every cluster starts with.
async fn bootstrap(
    registry: &Registry,
    config: &Config,
    addr: SocketAddr,
) -> Result<(), error::ApiError> {
    let ns = builtin(Builtin::Namespace);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        registry
            .ensure(ns, None, json!({"metadata": {"name": name}}))
            .await?;
        // Before the server is ready, so the controller finds them made.
        registry
            .ensure(
                builtin(Builtin::ServiceAccount),
                Some(name),
                json!({"metadata": {"name": "default", "namespace": name}}),
            )
            .await?;
    }
    for role in authz::bootstrap::cluster_roles() {
        registry
            .ensure(builtin(Builtin::ClusterRole), None, role)
            .await?;
    }
    for binding in authz::bootstrap::cluster_role_bindings() {
        registry
            .ensure(builtin(Builtin::ClusterRoleBinding), None, binding)
            .await?;
    }
    // `admin`, `edit` and `view` show their rules from the start.
    aggregation::sync(registry).await;
    // The range ClusterIPs come from, as kube-apiserver publishes it (kube-proxy reads it).
    let cidr = json!({
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": [config.service_cidr.to_string()]},
    });
    registry
        .ensure(builtin(Builtin::ServiceCIDR), None, cidr)
        .await?;
    let ip = registry.first_cluster_ip().to_string();
    let svc = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]},
    });
    registry
        .ensure(builtin(Builtin::Service), Some("default"), svc)
        .await?;
    // The endpoint of the `kubernetes` Service is this server, where its address can be one.
    let host = advertised(config, addr).ip();
    if !host.is_loopback() || config.allow_loopback_endpoints {
        let ty = if host.is_ipv4() { "IPv4" } else { "IPv6" };
        let slice = json!({
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
            "addressType": ty,
            "endpoints": [{"addresses": [host.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": addr.port(), "protocol": "TCP"}],
        });
        registry
            .ensure(builtin(Builtin::EndpointSlice), Some("default"), slice)
            .await?;
    }
    Ok(())
}

/// Opens the store, prepares credentials and bootstrap objects, and starts serving on
/// `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Started, ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let public = advertised(&config, addr);
    let host = public.ip();
    // Every name a client may use: the advertised address, loopback, the `kubernetes`
    // Service's names and ClusterIP, and the extra names asked for.
    let mut hosts = vec![
        host.to_string(),
        client_host(addr).to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
        config.service_cidr.at(1).to_string(),
    ];
    hosts.extend(config.tls_sans.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    let creds = pki::ensure(&config.data_dir, &hosts)?;
    let kubeconfig = pki::write_kubeconfigs(&config.data_dir, &url(public), &creds)?;

    let retention = Retention {
        window: config.history,
        ..Retention::default()
    };
    let store = EmbeddedStore::open(&config.data_dir.join("store.redb"), retention)?;
    for what in pki::tighten(&config.data_dir)? {
        tracing::warn!("data directory permissions tightened: {what}");
    }
    let allocators = Allocators {
        ips: IpAllocator::new(config.service_cidr),
        ports: PortAllocator::new(config.node_port_range.clone()),
    };
    let admission = Admission::new(
        Policy {
            allow_loopback_endpoints: config.allow_loopback_endpoints,
        },
        allocators,
    );
    let registry = Arc::new(Registry::new(Arc::new(store), admission));
    registry.restore_allocations()?;
    // The kinds CRDs add are served before a terminating namespace's content is looked for.
    registry.restore_crds()?;
    registry.resume_deletions()?;
    let authz = authz::State::new();
    authz.reload_rbac(registry.store().as_ref());
    tokio::spawn(authz.clone().run(registry.store().clone()));
    let signer =
        auth::tokens::Signer::new(&creds.sa_key).map_err(|what| pki::PkiError::Invalid {
            path: config.data_dir.join("sa.key"),
            what,
        })?;

    let api = Arc::new(http::Api {
        registry: registry.clone(),
        admin_token: creds.admin_token.clone(),
        admin: Arc::new(auth::User::admin()),
        signer: Arc::new(signer),
        authz,
        server_address: format!("{}:{}", host, addr.port()),
        ready: Default::default(),
    });
    tokio::spawn(http::serve(
        api.clone(),
        listener,
        creds.tls.clone(),
        shutdown,
    ));
    bootstrap(&registry, &config, addr).await?;
    tokio::spawn(endpointslice::Controller::new(registry.clone()).run());
    tokio::spawn(serviceaccounts::run(registry.clone()));
    tokio::spawn(aggregation::run(registry.clone()));
    tokio::spawn(events::run(registry.clone(), config.event_ttl));
    tokio::spawn(garbage::run(registry.clone()));
    tokio::spawn(certificates::run(
        registry.clone(),
        creds.ca.clone(),
        config.node_cert_lifetime,
    ));
    api.ready.store(true, Ordering::Release);
    Ok(Started {
        addr,
        kubeconfig,
        registry,
    })
}
