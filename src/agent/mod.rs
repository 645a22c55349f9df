//! The node agent behind `switchyard node`. It talks to any Kubernetes API server through
//! kube-rs (never to [`crate::apiserver`] directly), and turns what it watches into the view
//! types of `switchyard-proxy` and `switchyard-dns`.
//!
//! Data flow (see DESIGN.md):
//! 1. one kube-rs watcher per kind ([`watch`]) sends its events to one channel;
//! 2. one task owns the cluster state ([`State`]): relists replace a kind atomically (`Init` ..
//!    `InitDone`), and nothing is published before every kind has synced once;
//! 3. the same task is the bounded-frequency runner: after a change it waits out the minimum
//!    interval, builds a [`Snapshot`] with the pure functions in [`build`], and publishes it with
//!    one `ArcSwap::store`;
//! 4. the proxy programmer ([`programmer`]) runs in its own task, applies the newest snapshot,
//!    retries with backoff when something could not be programmed, resyncs at the maximum
//!    interval, and records the timings ([`metrics`]);
//! 5. the ingress router reads the snapshot's route table ([`routes`]) once per request, and
//!    [`status`] writes the node's address into the Ingresses it serves.
//!
//! If the API goes away, the watchers back off and reconnect while the last snapshot keeps
//! serving.

pub mod build;
mod events;
pub mod gateway;
pub mod metrics;
pub mod node;
mod programmer;
pub mod routes;
mod serve;
mod status;
mod watch;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use switchyard_dns::zone::ClusterZone;
use switchyard_proxy::router::routes::RouteTable;
use switchyard_proxy::table::ServiceTable;
use tokio::sync::{mpsc, watch as notify};

use build::ObjKey;
use gateway::types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};
pub use metrics::Metrics;

/// How the agent moves service traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// Sockets on every frontend, bytes moved by the agent; needs no privilege for loopback
    /// service addresses.
    Userspace,
    /// NAT rules in the kernel, loaded with iptables-restore; needs CAP_NET_ADMIN.
    Iptables,
    /// Verdict maps and maps in nftables tables of our own (kube-proxy's nftables mode),
    /// changed element by element with `nft`; needs CAP_NET_ADMIN.
    Nftables,
    /// ClusterIPs translated at the socket by BPF programs on a cgroup; NodePorts and external
    /// addresses by iptables. Needs root.
    Ebpf,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub proxy_mode: ProxyMode,
    pub metrics_listen: Option<SocketAddr>,
    /// The runner publishes at most once per `min_sync` ...
    pub min_sync: Duration,
    /// ... and the programmer resyncs at least once per `max_sync`.
    pub max_sync: Duration,
    pub userspace: switchyard_proxy::userspace::Config,
    pub iptables: switchyard_proxy::iptables::Config,
    pub nftables: switchyard_proxy::nftables::Config,
    pub ebpf: switchyard_proxy::ebpf::Config,
    /// Cluster DNS, when it should be served.
    pub dns: Option<DnsConfig>,
    /// The cluster DNS Service (`--dns-service`, e.g. kube-system/kube-dns) whose ports this
    /// node serves with its own DNS listener.
    pub dns_service: Option<ObjKey>,
    /// The ingress router, when it should run.
    pub ingress: Option<IngressConfig>,
}

#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub router: switchyard_proxy::router::Config,
    /// Written into `status.loadBalancer.ingress` of the Ingresses the router serves.
    pub status_address: Option<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    pub ttl: u32,
    /// Answer `<a-b-c-d>.<ns>.pod.<zone>` (CoreDNS's "pods insecure").
    pub pod_records: bool,
    /// The largest UDP response.
    pub udp_payload: u16,
    pub forward: switchyard_dns::forward::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS listener {addr}: {source}")]
    Dns {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cluster domain {0:?} is not a valid DNS name")]
    Domain(String),
    #[error("{0}")]
    Ingress(std::io::Error),
    #[error("iptables proxy: {0}")]
    Iptables(#[from] switchyard_proxy::iptables::IptablesError),
    #[error("nftables proxy: {0}")]
    Nftables(#[from] switchyard_proxy::nftables::NftError),
    #[error("eBPF proxy: {0}")]
    Ebpf(#[from] switchyard_proxy::ebpf::EbpfError),
}

/// One immutable view of what the data plane should do.
#[derive(Default)]
pub struct Snapshot {
    pub generation: u64,
    pub services: Arc<ServiceTable>,
    /// The cluster DNS zone (None until built, or when DNS is off).
    pub dns: Option<Arc<ClusterZone>>,
    /// The ingress router's routes (empty when the router is off).
    pub routes: Arc<RouteTable>,
    /// When the changes this snapshot carries happened (for network programming latency), with
    /// the generation that first carried each.
    pub triggers: Arc<[(u64, SystemTime)]>,
    /// When it was published (for the time it waits for the programmer).
    pub published_at: Option<Instant>,
}

/// What the watchers send.
pub(crate) enum Update {
    Services(Box<Event<Service>>),
    Slices(Box<Event<EndpointSlice>>),
    Ingresses(Box<Event<Ingress>>),
    Classes(Box<Event<IngressClass>>),
    Secrets(Box<Event<Secret>>),
    Namespaces(Box<Event<Namespace>>),
    GatewayClasses(Box<Event<GatewayClass>>),
    Gateways(Box<Event<Gateway>>),
    HttpRoutes(Box<Event<HttpRoute>>),
    GrpcRoutes(Box<Event<GrpcRoute>>),
    Grants(Box<Event<ReferenceGrant>>),
}

/// One kind's objects, with the buffer of a relist in progress.
struct Kind<K> {
    objects: HashMap<ObjKey, K>,
    relist: Option<HashMap<ObjKey, K>>,
    synced: bool,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Kind {
            objects: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

fn key<K: ResourceExt>(o: &K) -> ObjKey {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: ResourceExt + Clone> Kind<K> {
    /// Applies an event; returns whether the objects changed.
    fn apply(&mut self, ev: Event<K>) -> bool {
        match ev {
            Event::Apply(o) => {
                self.objects.insert(key(&o), o);
                true
            }
            Event::Delete(o) => self.objects.remove(&key(&o)).is_some(),
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(o) => {
                if let Some(buf) = self.relist.as_mut() {
                    buf.insert(key(&o), o);
                }
                false
            }
            Event::InitDone => {
                // The relisted state replaces the old one in one step: never half empty.
                if let Some(buf) = self.relist.take() {
                    self.objects = buf;
                }
                self.synced = true;
                true
            }
        }
    }
}

/// The cluster state, owned by one task.
#[derive(Default)]
struct State {
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    /// The slices of each Service.
    slice_index: build::SliceIndex,
    ingresses: Kind<Ingress>,
    classes: Kind<IngressClass>,
    secrets: Kind<Secret>,
    namespaces: Kind<Namespace>,
    gateway_classes: Kind<GatewayClass>,
    gateways: Kind<Gateway>,
    http_routes: Kind<HttpRoute>,
    grpc_routes: Kind<GrpcRoute>,
    grants: Kind<ReferenceGrant>,
}

impl State {
    /// Every watched kind has listed once (the ingress and Gateway API kinds only count with
    /// `ingress`; a Gateway API kind the API does not serve counts as listed).
    fn synced(&self, ingress: bool) -> bool {
        self.services.synced
            && self.slices.synced
            && (!ingress
                || (self.ingresses.synced
                    && self.classes.synced
                    && self.secrets.synced
                    && self.namespaces.synced
                    && self.gateway_classes.synced
                    && self.gateways.synced
                    && self.http_routes.synced
                    && self.grpc_routes.synced
                    && self.grants.synced))
    }

    fn gateway_objects(&self) -> gateway::build::Objects<'_> {
        gateway::build::Objects {
            classes: &self.gateway_classes.objects,
            gateways: &self.gateways.objects,
            routes: &self.http_routes.objects,
            grpc_routes: &self.grpc_routes.objects,
            grants: &self.grants.objects,
            namespaces: &self.namespaces.objects,
        }
    }

    fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Services(ev) => self.services.apply(*ev),
            Update::Slices(ev) => {
                let relisted = matches!(*ev, Event::InitDone);
                if let Event::Apply(s) | Event::Delete(s) = &*ev {
                    let k = key(s);
                    let old = self.slices.objects.get(&k);
                    let new = matches!(*ev, Event::Apply(_)).then_some(s);
                    self.slice_index.update(&k, old, new);
                }
                let changed = self.slices.apply(*ev);
                if relisted {
                    self.slice_index = build::SliceIndex::build(&self.slices.objects);
                }
                changed
            }
            Update::Ingresses(ev) => self.ingresses.apply(*ev),
            Update::Classes(ev) => self.classes.apply(*ev),
            Update::Secrets(ev) => self.secrets.apply(*ev),
            Update::Namespaces(ev) => self.namespaces.apply(*ev),
            Update::GatewayClasses(ev) => self.gateway_classes.apply(*ev),
            Update::Gateways(ev) => self.gateways.apply(*ev),
            Update::HttpRoutes(ev) => self.http_routes.apply(*ev),
            Update::GrpcRoutes(ev) => self.grpc_routes.apply(*ev),
            Update::Grants(ev) => self.grants.apply(*ev),
        }
    }
}

/// The time an EndpointSlice controller stamped on a slice: when the change that caused the
/// write happened.
fn stamped(s: &EndpointSlice) -> Option<SystemTime> {
    s.annotations()
        .get(crate::conventions::TRIGGER_TIME_ANNOTATION)
        .and_then(|t| crate::time::parse(t))
}

/// When the change an update carries happened (now, when nothing says).
fn trigger_time(ev: &Update) -> Option<SystemTime> {
    match ev {
        Update::Slices(ev) => match &**ev {
            Event::Apply(s) => Some(stamped(s).unwrap_or_else(SystemTime::now)),
            Event::Delete(_) => Some(SystemTime::now()),
            _ => None,
        },
        Update::Services(ev) => changed(ev),
        Update::Ingresses(ev) => changed(ev),
        Update::Classes(ev) => changed(ev),
        Update::Secrets(ev) => changed(ev),
        Update::Namespaces(ev) => changed(ev),
        Update::GatewayClasses(ev) => changed(ev),
        Update::Gateways(ev) => changed(ev),
        Update::HttpRoutes(ev) => changed(ev),
        Update::GrpcRoutes(ev) => changed(ev),
        Update::Grants(ev) => changed(ev),
    }
}

fn changed<K>(ev: &Event<K>) -> Option<SystemTime> {
    matches!(ev, Event::Apply(_) | Event::Delete(_)).then(SystemTime::now)
}

/// Whether an update can change the route table, which depends on the ingress kinds and on
/// the Services (and their slices) that Ingresses name.
/// A write to an Ingress's status alone (ours included) changes nothing here.
fn affects_routes(state: &State, update: &Update, routes: &routes::Caches) -> bool {
    match update {
        Update::Ingresses(ev) => match &**ev {
            Event::Apply(new) => state.ingresses.objects.get(&key(new)).is_none_or(|old| {
                old.spec != new.spec || old.metadata.annotations != new.metadata.annotations
            }),
            _ => true,
        },
        Update::Classes(_) | Update::Secrets(_) | Update::Grants(_) => true,
        // A status write of ours (or another controller's) changes no route.
        Update::GatewayClasses(ev) => spec_changed(&state.gateway_classes, ev, |o| &o.spec),
        Update::Gateways(ev) => spec_changed(&state.gateways, ev, |o| &o.spec),
        // A route's status counts when it gains or loses entries of ours (the watch keeps only
        // those): a route that is not ours has them taken out.
        Update::HttpRoutes(ev) => {
            spec_changed(&state.http_routes, ev, |o| &o.spec)
                || spec_changed(&state.http_routes, ev, |o| &o.status)
        }
        Update::GrpcRoutes(ev) => {
            spec_changed(&state.grpc_routes, ev, |o| &o.spec)
                || spec_changed(&state.grpc_routes, ev, |o| &o.status)
        }
        Update::Namespaces(ev) => match &**ev {
            Event::Apply(new) => state
                .namespaces
                .objects
                .get(&key(new))
                .is_none_or(|old| old.metadata.labels != new.metadata.labels),
            _ => true,
        },
        Update::Services(ev) => match &**ev {
            Event::Apply(s) | Event::Delete(s) => routes.depends_on(&key(s)),
            Event::InitDone => true,
            _ => false,
        },
        Update::Slices(ev) => match &**ev {
            Event::Apply(s) | Event::Delete(s) => routes.depends_on(&slice_service(s)),
            Event::InitDone => true,
            _ => false,
        },
    }
}

/// An event of an Ingress or a route: these are compiled one by one and their compiled rules are
/// kept by version, so such an event leaves the others' compiled rules valid.
fn is_route_object(update: &Update) -> bool {
    matches!(
        update,
        Update::Ingresses(_) | Update::HttpRoutes(_) | Update::GrpcRoutes(_)
    )
}

/// Whether an event changes an object's spec (or adds or removes one).
fn spec_changed<K: ResourceExt, S: PartialEq>(
    kind: &Kind<K>,
    ev: &Event<K>,
    spec: fn(&K) -> &S,
) -> bool {
    match ev {
        Event::Apply(new) => kind.objects.get(&key(new)).is_none_or(|old| {
            spec(old) != spec(new) || old.meta().generation != new.meta().generation
        }),
        // A relist counts once it is whole.
        Event::Init | Event::InitApply(_) => false,
        Event::Delete(_) | Event::InitDone => true,
    }
}

fn slice_service(s: &EndpointSlice) -> ObjKey {
    let ns = s.namespace().unwrap_or_default();
    build::slice_service(&ns, s).unwrap_or((ns, String::new()))
}

/// Records which Services an update changes: for the service table any Service and the Service
/// of any slice; for the DNS zone the same, except slices of ClusterIP Services (their records
/// do not depend on endpoints). A relist changes everything.
fn track(state: &State, update: &Update, services: &mut build::Changed, dns: &mut build::Changed) {
    let (key, via_slice) = match update {
        Update::Services(ev) => match &**ev {
            Event::Apply(s) | Event::Delete(s) => (key(s), false),
            Event::InitDone => {
                services.all = true;
                dns.all = true;
                return;
            }
            _ => return,
        },
        Update::Slices(ev) => match &**ev {
            Event::Apply(s) | Event::Delete(s) => (slice_service(s), true),
            Event::InitDone => {
                services.all = true;
                dns.all = true;
                return;
            }
            _ => return,
        },
        Update::Ingresses(_)
        | Update::Classes(_)
        | Update::Secrets(_)
        | Update::Namespaces(_)
        | Update::GatewayClasses(_)
        | Update::Gateways(_)
        | Update::HttpRoutes(_)
        | Update::GrpcRoutes(_)
        | Update::Grants(_) => return,
    };
    if !via_slice
        || state
            .services
            .objects
            .get(&key)
            .is_none_or(build::is_headless)
    {
        dns.services.insert(key.clone());
    }
    services.services.insert(key);
}

/// What the state task works with.
struct StateTask {
    node: String,
    /// The zone's settings, when DNS is on.
    dns: Option<build::ZoneSettings>,
    /// The cluster DNS Service this node serves itself, and its listener.
    local_dns: Option<(ObjKey, SocketAddr)>,
    /// Where the Ingresses the router serves go, when the router is on.
    served: Option<notify::Sender<Arc<Vec<routes::Served>>>>,
    /// Where the status of the Gateway API objects of ours goes, when the router is on.
    gateway_status: Option<notify::Sender<Arc<gateway::build::Statuses>>>,
    min_sync: Duration,
    updates: mpsc::Receiver<Update>,
    published: Arc<ArcSwap<Snapshot>>,
    generations: notify::Sender<u64>,
    applied: notify::Receiver<u64>,
    metrics: Arc<Metrics>,
}

/// What the state task keeps between snapshots: the cluster state and what changed in it since
/// the last one.
struct Pending {
    state: State,
    /// Something changed since the last snapshot.
    dirty: bool,
    services: build::Changed,
    dns: build::Changed,
    routes_dirty: bool,
    caches: routes::Caches,
    /// Counts the changes the route table depends on other than Ingresses and routes
    /// themselves: compiled objects are reused while it holds.
    world: u64,
    /// Trigger times of changes not yet applied by the proxy, with their generation.
    triggers: Vec<(u64, SystemTime)>,
    generation: u64,
}

impl Pending {
    fn new() -> Pending {
        let all = || build::Changed {
            all: true,
            ..Default::default()
        };
        Pending {
            state: State::default(),
            dirty: false,
            services: all(),
            dns: all(),
            routes_dirty: true,
            caches: routes::Caches::default(),
            world: 0,
            triggers: Vec::new(),
            generation: 0,
        }
    }

    /// Takes one watch update into the state, noting what it changes.
    fn absorb(&mut self, update: Update, ingress: bool) {
        if let Some(t) = trigger_time(&update) {
            self.triggers.push((self.generation + 1, t));
        }
        track(&self.state, &update, &mut self.services, &mut self.dns);
        let affects = ingress && affects_routes(&self.state, &update, &self.caches);
        if affects && !is_route_object(&update) {
            self.world += 1;
        }
        self.routes_dirty |= affects;
        self.dirty |= self.state.apply(update);
    }

    /// Builds the next snapshot from `previous`, rebuilding only the views that changed.
    fn build(&mut self, task: &StateTask, previous: &Snapshot) -> Snapshot {
        let state = &self.state;
        let mut services = build::update_services(
            &previous.services,
            &self.services,
            &state.services.objects,
            &state.slices.objects,
            &state.slice_index,
            &task.node,
        );
        if let Some((svc, listen)) = &task.local_dns {
            services = build::with_local_dns(services, svc, *listen);
        }
        let zone = match &task.dns {
            Some(z) if self.dns.any() => build::update_dns(
                previous.dns.as_deref(),
                &self.dns,
                &state.services.objects,
                &state.slices.objects,
                &state.slice_index,
                z,
            )
            .map(Arc::new),
            _ => previous.dns.clone(),
        };
        let route_table = match &task.served {
            Some(served) if self.routes_dirty => {
                let inputs = routes::Inputs {
                    ingresses: &state.ingresses.objects,
                    classes: &state.classes.objects,
                    secrets: &state.secrets.objects,
                    services: &state.services.objects,
                    slices: &state.slices.objects,
                    slice_index: &state.slice_index,
                    gateway: state.gateway_objects(),
                };
                let built =
                    routes::build_routes(&inputs, &previous.routes, &mut self.caches, self.world);
                if let Some(tx) = &task.gateway_status {
                    tx.send_if_modified(|s| {
                        let new = **s != built.gateway;
                        if new {
                            *s = Arc::new(built.gateway);
                        }
                        new
                    });
                }
                served.send_if_modified(|s| {
                    let new = **s != built.served;
                    if new {
                        *s = Arc::new(built.served);
                    }
                    new
                });
                Arc::new(built.table)
            }
            _ => previous.routes.clone(),
        };
        self.services = build::Changed::default();
        self.dns = build::Changed::default();
        self.routes_dirty = false;
        self.dirty = false;
        self.generation += 1;
        let generation = self.generation;
        for p in self.triggers.iter_mut() {
            p.0 = p.0.min(generation);
        }
        Snapshot {
            generation,
            services: Arc::new(services),
            dns: zone,
            routes: route_table,
            triggers: self.triggers.clone().into(),
            published_at: None,
        }
    }
}

/// Owns the state; publishes snapshots at most once per `min_sync`.
async fn run_state(mut task: StateTask) {
    let ingress = task.served.is_some();
    let mut p = Pending::new();
    let mut last_publish = Instant::now() - task.min_sync;
    loop {
        let ready = p.dirty && p.state.synced(ingress);
        let wait = if ready {
            (last_publish + task.min_sync).saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            update = task.updates.recv() => {
                let Some(mut update) = update else { return };
                let started = Instant::now();
                // Take everything already queued before deciding to publish: a burst of
                // changes makes one snapshot.
                loop {
                    if let Update::Slices(ev) = &update {
                        if let Event::Apply(s) = &**ev {
                            if let Some(t) = stamped(s) {
                                let age = SystemTime::now().duration_since(t).unwrap_or_default();
                                task.metrics.stages.receive.observe(age);
                            }
                        }
                    }
                    p.absorb(update, ingress);
                    match task.updates.try_recv() {
                        Ok(next) => update = next,
                        Err(_) => break,
                    }
                }
                task.metrics.stages.apply.observe(started.elapsed());
            }
            _ = tokio::time::sleep(wait), if ready => {
                let started = Instant::now();
                // What the proxy has applied no longer waits for its trigger times.
                let done = *task.applied.borrow_and_update();
                p.triggers.retain(|(g, _)| *g > done);
                let mut snapshot = p.build(&task, &task.published.load());
                let generation = snapshot.generation;
                task.metrics.build_duration.observe(started.elapsed());
                task.metrics.stages.build.observe(started.elapsed());
                snapshot.published_at = Some(Instant::now());
                task.metrics.published(generation, snapshot.services.ports.len(), snapshot.services.endpoint_count());
                task.published.store(Arc::new(snapshot));
                let _ = task.generations.send(generation);
                last_publish = Instant::now();
                tracing::debug!(generation, took = ?started.elapsed(), "snapshot published");
            }
        }
    }
}

/// Opens and closes the router's Gateway listener ports after each published snapshot, and
/// tells the status writer which ports this node could not open.
async fn sync_listeners(
    router: Arc<switchyard_proxy::router::Router>,
    mut generations: notify::Receiver<u64>,
    errors: notify::Sender<Arc<gateway::status::PortErrors>>,
) {
    loop {
        let now = router.sync_listeners();
        errors.send_if_modified(|e| {
            let new = **e != now;
            if new {
                *e = Arc::new(now);
            }
            new
        });
        if generations.changed().await.is_err() {
            return;
        }
    }
}

/// The DNS server reads the zone from the published snapshot: one load per query.
struct SnapshotZone(Arc<ArcSwap<Snapshot>>);

impl switchyard_dns::server::ZoneSource for SnapshotZone {
    fn zone(&self) -> Option<Arc<ClusterZone>> {
        self.0.load().dns.clone()
    }
}

/// The ingress router reads the routes from the published snapshot: one load per request.
struct SnapshotRoutes(Arc<ArcSwap<Snapshot>>);

impl switchyard_proxy::router::RouteSource for SnapshotRoutes {
    fn routes(&self) -> Arc<RouteTable> {
        self.0.load().routes.clone()
    }
}

/// A self-signed certificate for TLS clients whose server name has none of its own.
pub fn default_certificate() -> Arc<rustls::sign::CertifiedKey> {
    let cert = rcgen::generate_simple_self_signed(vec!["switchyard-ingress.invalid".to_string()])
        .expect("a self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).expect("an ECDSA key");
    Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.cert.der().clone()],
        signer,
    ))
}

async fn spawn_dns(
    config: &DnsConfig,
    published: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let forwarder = switchyard_dns::forward::Forwarder::new(config.forward.clone());
    let handler = switchyard_dns::server::Handler::new(
        Arc::new(SnapshotZone(published)),
        &config.domain,
        forwarder.clone(),
        metrics,
    )
    .ok_or_else(|| AgentError::Domain(config.domain.clone()))?
    .with_udp_payload(config.udp_payload);
    let listen = config.listen;
    // Bind here so a taken address is an error at start, not a log line later.
    let (udp, tcp) = switchyard_dns::server::bind(listen)
        .await
        .map_err(|source| AgentError::Dns {
            addr: listen,
            source,
        })?;
    // The loop probe goes out once the socket is bound (it is answered once serving starts).
    tokio::spawn(async move { forwarder.probe_for_loop().await });
    Ok(tokio::spawn(async move {
        switchyard_dns::server::serve(udp, tcp, handler).await;
    }))
}

/// Runs the agent against `client` until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let proxy: Box<dyn switchyard_proxy::ServiceProxy> = match config.proxy_mode {
        ProxyMode::Userspace => Box::new(switchyard_proxy::userspace::UserspaceProxy::new(
            config.userspace.clone(),
        )),
        ProxyMode::Iptables => Box::new(switchyard_proxy::iptables::IptablesProxy::new(
            config.iptables.clone(),
        )?),
        ProxyMode::Nftables => Box::new(switchyard_proxy::nftables::NftablesProxy::new(
            config.nftables.clone(),
        )?),
        ProxyMode::Ebpf => Box::new(switchyard_proxy::ebpf::EbpfProxy::new(config.ebpf.clone())?),
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        tokio::spawn(serve::metrics(listener, metrics.clone()));
    }
    let node_task = tokio::spawn(node::run(client.clone(), config.node_name.clone()));
    let recorder = events::Recorder::spawn(client.clone(), &config.node_name);
    recorder.record(
        events::node_ref(&config.node_name),
        false,
        "Starting",
        "StartAgent",
        format!(
            "switchyard node agent {} starting, proxy mode {:?}",
            env!("CARGO_PKG_VERSION"),
            config.proxy_mode
        ),
    );
    let (tx, rx) = mpsc::channel(1024);
    let watchers = watch::spawn_all(&client, tx, config.ingress.is_some());
    let published = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let mut served_tx = None;
    let mut gateway_tx = None;
    let mut ingress_tasks = Vec::new();
    let (gen_tx, gen_rx) = notify::channel(0u64);
    let router = match &config.ingress {
        Some(ing) => {
            let listeners = switchyard_proxy::router::Listeners::bind(&ing.router)
                .map_err(AgentError::Ingress)?;
            let (tx, rx) = notify::channel(Arc::new(Vec::new()));
            served_tx = Some(tx);
            ingress_tasks.push(tokio::spawn(events::ingress_problems(
                recorder.clone(),
                rx.clone(),
            )));
            if let Some(ip) = ing.status_address {
                ingress_tasks.push(tokio::spawn(status::run(client.clone(), ip, rx)));
            }
            let router = Arc::new(switchyard_proxy::router::Router::start(
                ing.router.clone(),
                listeners,
                Arc::new(SnapshotRoutes(published.clone())),
            ));
            let (ports_tx, ports_rx) = notify::channel(Arc::new(Default::default()));
            ingress_tasks.push(tokio::spawn(sync_listeners(
                router.clone(),
                gen_rx.clone(),
                ports_tx,
            )));
            let (tx, rx) = notify::channel(Arc::new(Default::default()));
            gateway_tx = Some(tx);
            ingress_tasks.push(tokio::spawn(gateway::status::run(
                client.clone(),
                ing.status_address,
                rx,
                ports_rx,
            )));
            Some(router)
        }
        None => None,
    };
    if let Some(r) = &router {
        let _ = metrics.ingress.set(r.clone());
    }
    let (applied_tx, applied_rx) = notify::channel(0u64);
    let dns = match &config.dns {
        Some(d) => Some(spawn_dns(d, published.clone(), metrics.clone()).await?),
        None => None,
    };
    let state = tokio::spawn(run_state(StateTask {
        node: config.node_name.clone(),
        dns: config.dns.as_ref().map(|d| build::ZoneSettings {
            domain: d.domain.clone(),
            ttl: d.ttl,
            pods: d.pod_records,
        }),
        local_dns: config
            .dns_service
            .clone()
            .zip(config.dns.as_ref().map(|d| d.listen)),
        served: served_tx,
        gateway_status: gateway_tx,
        min_sync: config.min_sync,
        updates: rx,
        published: published.clone(),
        generations: gen_tx,
        applied: applied_rx,
        metrics: metrics.clone(),
    }));
    let (stop_tx, stop_rx) = notify::channel(false);
    let outputs = programmer::Outputs {
        applied: applied_tx,
        metrics,
        recorder,
    };
    let programmer = tokio::spawn(programmer::run(
        proxy, config, published, gen_rx, outputs, stop_rx,
    ));
    shutdown.await;
    for w in watchers {
        w.abort();
    }
    state.abort();
    node_task.abort();
    if let Some(d) = dns {
        d.abort();
    }
    for t in ingress_tasks {
        t.abort();
    }
    if let Some(r) = router {
        r.stop();
    }
    let _ = stop_tx.send(true);
    let _ = programmer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "ns"}}))
            .unwrap()
    }

    #[test]
    fn relists_replace_state_in_one_step() {
        let mut k: Kind<Service> = Kind::default();
        assert!(k.apply(Event::Apply(svc("a"))));
        assert!(!k.synced);
        assert!(!k.apply(Event::Init));
        assert!(!k.apply(Event::InitApply(svc("b"))));
        // Mid-relist the old state is still whole.
        assert!(k.objects.contains_key(&("ns".into(), "a".into())));
        assert!(k.apply(Event::InitDone));
        assert!(k.synced);
        let names: Vec<&String> = k.objects.keys().map(|(_, n)| n).collect();
        assert_eq!(names, ["b"]);
        assert!(k.apply(Event::Delete(svc("b"))));
        assert!(
            !k.apply(Event::Delete(svc("b"))),
            "deleting what is gone changes nothing"
        );
    }
}
