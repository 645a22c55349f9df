//! Pure functions from the cluster state to the views the data plane consumes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_dns::zone::ClusterZone;
use switchyard_proxy::table::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceTable};

/// `namespace/name` of an object.
pub type ObjKey = (String, String);

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn ips(list: Option<&Vec<String>>) -> Vec<IpAddr> {
    list.into_iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The endpoints of each (service, port name, protocol), from its EndpointSlices.
pub(super) fn endpoints_by_port<'a>(
    slices: impl IntoIterator<Item = (&'a ObjKey, &'a EndpointSlice)>,
    node: &str,
) -> HashMap<(String, String, String, Protocol), Vec<Endpoint>> {
    let mut out: HashMap<(String, String, String, Protocol), Vec<Endpoint>> = HashMap::new();
    for ((ns, _), slice) in slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for port in slice.ports.iter().flatten() {
            let (Some(number), Some(proto)) = (port.port, protocol(port.protocol.as_deref()))
            else {
                continue;
            };
            let Ok(number) = u16::try_from(number) else {
                continue;
            };
            let key = (
                ns.clone(),
                svc.clone(),
                port.name.clone().unwrap_or_default(),
                proto,
            );
            let list = out.entry(key).or_default();
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                // Unset conditions mean ready and serving, as the API documents.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let local = ep.node_name.as_deref() == Some(node);
                for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let addr = SocketAddr::new(addr, number);
                    // One address can appear in two slices while it moves: keep it once.
                    if !list.iter().any(|e| e.addr == addr) {
                        list.push(Endpoint {
                            addr,
                            ready,
                            serving,
                            terminating,
                            local,
                        });
                    }
                }
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|e| e.addr);
    }
    out
}

/// Builds the service table. Ports equal to one in `previous` keep its `Arc`, so consumers can
/// tell by pointer what did not change.
pub fn build_services(
    services: &HashMap<ObjKey, Service>,
    slices: &HashMap<ObjKey, EndpointSlice>,
    node: &str,
    previous: &ServiceTable,
) -> ServiceTable {
    ServiceTable {
        ports: ports_of(services, slices, node, previous)
            .into_values()
            .collect(),
    }
}

/// The ports of `services`, sorted; one equal to its namesake in `previous` (found by binary
/// search: the table is sorted) keeps its `Arc`.
fn ports_of<'a>(
    services: impl IntoIterator<Item = (&'a ObjKey, &'a Service)>,
    slices: impl IntoIterator<Item = (&'a ObjKey, &'a EndpointSlice)>,
    node: &str,
    previous: &ServiceTable,
) -> BTreeMap<(ServicePortName, Protocol), Arc<ServicePort>> {
    let mut eps = endpoints_by_port(slices, node);
    let prev = |name: &ServicePortName, proto: Protocol| {
        previous
            .ports
            .binary_search_by(|p| (&p.name, p.protocol).cmp(&(name, proto)))
            .ok()
            .map(|i| &previous.ports[i])
    };
    let mut ports: BTreeMap<(ServicePortName, Protocol), Arc<ServicePort>> = BTreeMap::new();
    for ((ns, name), svc) in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") || !proxied(svc) {
            continue;
        }
        let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(list) if !list.is_empty() => ips(Some(list)),
            _ => spec
                .cluster_ip
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        let headless = is_headless(svc);
        let lb_ips: Vec<IpAddr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Duration::from_secs(secs.max(1) as u64)
        });
        for p in spec.ports.iter().flatten() {
            let (Some(proto), Ok(port)) = (protocol(p.protocol.as_deref()), u16::try_from(p.port))
            else {
                continue;
            };
            if headless {
                continue;
            }
            let port_name = p.name.clone().unwrap_or_default();
            let endpoints = eps
                .remove(&(ns.clone(), name.clone(), port_name.clone(), proto))
                .unwrap_or_default();
            let sp = ServicePort {
                name: ServicePortName {
                    namespace: ns.clone(),
                    name: name.clone(),
                    port: port_name,
                },
                protocol: proto,
                port,
                cluster_ips: cluster_ips.clone(),
                node_port: p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0),
                external_ips: ips(spec.external_ips.as_ref()),
                load_balancer_ips: lb_ips.clone(),
                affinity,
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                endpoints,
            };
            let arc = match prev(&sp.name, proto) {
                Some(old) if **old == sp => old.clone(),
                _ => Arc::new(sp),
            };
            ports.insert((arc.name.clone(), proto), arc);
        }
    }
    ports
}

/// The ports of `svc` (the cluster DNS Service, with `--dns-service`) served by this node's own
/// DNS listener at `listen`: every node answers its pods' DNS itself, where CoreDNS's endpoints
/// would be. Other ports keep their `Arc`s; these get new ones only when they change.
pub fn with_local_dns(mut table: ServiceTable, svc: &ObjKey, listen: SocketAddr) -> ServiceTable {
    let want = (svc.0.as_str(), svc.1.as_str());
    let start = table.ports.partition_point(|p| service_of(p) < want);
    let end = start + table.ports[start..].partition_point(|p| service_of(p) == want);
    let local = Endpoint {
        addr: listen,
        ready: true,
        serving: true,
        terminating: false,
        local: true,
    };
    for p in &mut table.ports[start..end] {
        let dns = matches!(p.protocol, Protocol::Udp | Protocol::Tcp);
        if dns && p.endpoints.as_slice() != std::slice::from_ref(&local) {
            let mut served = (**p).clone();
            served.endpoints = vec![local.clone()];
            *p = Arc::new(served);
        }
    }
    table
}

/// Whether the service proxy serves a Service: not when its labels give it to another proxy
/// (`service.kubernetes.io/service-proxy-name`) or mark it headless
/// (`service.kubernetes.io/headless`), the two labels kube-proxy's watch selects away.
fn proxied(svc: &Service) -> bool {
    svc.metadata.labels.as_ref().is_none_or(|l| {
        !l.contains_key(crate::conventions::SERVICE_PROXY_NAME_LABEL)
            && !l.contains_key(crate::conventions::HEADLESS_LABEL)
    })
}

/// Whether a Service's DNS records come from its endpoints.
pub fn is_headless(svc: &Service) -> bool {
    crate::conventions::is_headless(svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()))
}

/// The Service of a port, as `(namespace, name)`.
fn service_of(p: &ServicePort) -> (&str, &str) {
    (&p.name.namespace, &p.name.name)
}

/// EndpointSlices by the Service they belong to (`kubernetes.io/service-name`), so that a
/// change to one Service reads only its own slices.
#[derive(Debug, Default)]
pub struct SliceIndex(HashMap<ObjKey, HashSet<ObjKey>>);

/// The Service a slice belongs to.
pub fn slice_service(namespace: &str, s: &EndpointSlice) -> Option<ObjKey> {
    let svc = s
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?;
    Some((namespace.to_string(), svc.clone()))
}

impl SliceIndex {
    pub fn build(slices: &HashMap<ObjKey, EndpointSlice>) -> Self {
        let mut index = SliceIndex::default();
        for (key, s) in slices {
            index.update(key, None, Some(s));
        }
        index
    }

    /// The slice `key` was `old` and is now `new`.
    pub fn update(
        &mut self,
        key: &ObjKey,
        old: Option<&EndpointSlice>,
        new: Option<&EndpointSlice>,
    ) {
        let before = old.and_then(|s| slice_service(&key.0, s));
        let after = new.and_then(|s| slice_service(&key.0, s));
        if before == after {
            return;
        }
        if let Some(svc) = before {
            if let Some(set) = self.0.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.0.remove(&svc);
                }
            }
        }
        if let Some(svc) = after {
            self.0.entry(svc).or_default().insert(key.clone());
        }
    }

    /// The slices of `svc`.
    pub fn of<'a>(
        &'a self,
        svc: &ObjKey,
        slices: &'a HashMap<ObjKey, EndpointSlice>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a EndpointSlice)> {
        self.0
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| slices.get_key_value(k))
    }
}

/// The service table after `changed`: built whole on a relist, otherwise `previous` with only
/// the changed Services' ports rebuilt, spliced in where they sort. The cost is the changed
/// Services' and their slices', plus copying `previous`'s pointers; unchanged ports keep their
/// `Arc`.
pub fn update_services(
    previous: &ServiceTable,
    changed: &Changed,
    services: &HashMap<ObjKey, Service>,
    slices: &HashMap<ObjKey, EndpointSlice>,
    index: &SliceIndex,
    node: &str,
) -> ServiceTable {
    if changed.all {
        return build_services(services, slices, node, previous);
    }
    let mut keys: Vec<&ObjKey> = changed.services.iter().collect();
    keys.sort();
    let rebuilt = ports_of(
        keys.iter().filter_map(|k| services.get_key_value(*k)),
        keys.iter().flat_map(|k| index.of(k, slices)),
        node,
        previous,
    );
    let mut rebuilt = rebuilt.into_values().peekable();
    let old = &previous.ports;
    let mut ports = Vec::with_capacity(old.len() + 8);
    let mut cursor = 0;
    for (ns, name) in keys {
        let svc = (ns.as_str(), name.as_str());
        let start = cursor + old[cursor..].partition_point(|p| service_of(p) < svc);
        let end = start + old[start..].partition_point(|p| service_of(p) == svc);
        ports.extend_from_slice(&old[cursor..start]);
        while let Some(p) = rebuilt.next_if(|p| service_of(p) == svc) {
            ports.push(p);
        }
        cursor = end;
    }
    ports.extend_from_slice(&old[cursor..]);
    ServiceTable { ports }
}

/// What the DNS zone needs of one Service (and its slices, for a headless one).
fn dns_service(
    key: &ObjKey,
    svc: &Service,
    slices: &[&EndpointSlice],
) -> Option<switchyard_dns::zone::Service> {
    use switchyard_dns::zone::{Endpoint as DnsEndpoint, Kind, Port, Service as DnsService};
    let spec = svc.spec.as_ref()?;
    let lower = |p: Option<&str>| p.unwrap_or("TCP").to_ascii_lowercase();
    let mut entry = DnsService {
        namespace: key.0.clone(),
        name: key.1.clone(),
        kind: Kind::Headless,
        ports: vec![],
        endpoints: vec![],
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        entry.kind = Kind::ExternalName(spec.external_name.clone().unwrap_or_default());
    } else if is_headless(svc) {
        for slice in slices {
            for p in slice.ports.iter().flatten() {
                let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()) else {
                    continue;
                };
                let port = Port {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: lower(p.protocol.as_deref()),
                    port,
                };
                if !entry.ports.contains(&port) {
                    entry.ports.push(port);
                }
            }
            for ep in &slice.endpoints {
                entry.endpoints.push(DnsEndpoint {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    hostname: ep.hostname.clone(),
                    ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                });
            }
        }
    } else {
        let ips = match &spec.cluster_ips {
            Some(list) if !list.is_empty() => ips(Some(list)),
            _ => spec
                .cluster_ip
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        entry.kind = Kind::ClusterIp(ips);
        for p in spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            entry.ports.push(Port {
                name: p.name.clone().unwrap_or_default(),
                protocol: lower(p.protocol.as_deref()),
                port,
            });
        }
    }
    Some(entry)
}

/// How the DNS zone is built.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    pub domain: String,
    pub ttl: u32,
    /// Answer `<a-b-c-d>.<ns>.pod.<zone>`.
    pub pods: bool,
}

/// Which Services changed since the zone was last built.
#[derive(Debug, Default)]
pub struct Changed {
    /// Everything (a relist, or no zone yet).
    pub all: bool,
    pub services: HashSet<ObjKey>,
}

impl Changed {
    pub fn any(&self) -> bool {
        self.all || !self.services.is_empty()
    }
}

/// The DNS zone after `changed`: built whole when there is no zone yet or everything changed,
/// otherwise `previous` with only the changed Services replaced.
pub fn update_dns(
    previous: Option<&ClusterZone>,
    changed: &Changed,
    services: &HashMap<ObjKey, Service>,
    slices: &HashMap<ObjKey, EndpointSlice>,
    index: &SliceIndex,
    zone: &ZoneSettings,
) -> Option<ClusterZone> {
    let entry = |(k, svc): (&ObjKey, &Service)| {
        let own: Vec<&EndpointSlice> = index.of(k, slices).map(|(_, s)| s).collect();
        dns_service(k, svc, &own)
    };
    let upserted: Vec<switchyard_dns::zone::Service> = if changed.all || previous.is_none() {
        services.iter().filter_map(entry).collect()
    } else {
        changed
            .services
            .iter()
            .filter_map(|k| services.get_key_value(k))
            .filter_map(entry)
            .collect()
    };
    match previous {
        Some(zone) if !changed.all => {
            let removed: Vec<ObjKey> = changed
                .services
                .iter()
                .filter(|k| !services.contains_key(*k))
                .cloned()
                .collect();
            Some(zone.with_changes(&removed, &upserted))
        }
        _ => ClusterZone::build(&zone.domain, zone.ttl, &upserted)
            .map(|z| z.with_pod_records(zone.pods)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DNS view of the cluster, built whole.
    fn build_dns(
        services: &HashMap<ObjKey, Service>,
        slices: &HashMap<ObjKey, EndpointSlice>,
        domain: &str,
        ttl: u32,
    ) -> Option<ClusterZone> {
        update_dns(
            None,
            &Changed {
                all: true,
                ..Default::default()
            },
            services,
            slices,
            &SliceIndex::build(slices),
            &settings(domain, ttl),
        )
    }

    fn settings(domain: &str, ttl: u32) -> ZoneSettings {
        ZoneSettings {
            domain: domain.into(),
            ttl,
            pods: false,
        }
    }

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn state() -> (HashMap<ObjKey, Service>, HashMap<ObjKey, EndpointSlice>) {
        let svc: Service = obj(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "NodePort", "sessionAffinity": "ClientIP",
                     "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let headless: Service = obj(
            serde_json::json!({"metadata": {"name": "h", "namespace": "ns"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}),
        );
        let ext: Service = obj(
            serde_json::json!({"metadata": {"name": "e", "namespace": "ns"}, "spec": {"type": "ExternalName", "externalName": "x.example.com"}}),
        );
        let slice: EndpointSlice = obj(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
            ]
        }));
        let services = [("web", svc), ("h", headless), ("e", ext)]
            .into_iter()
            .map(|(n, s)| (("ns".to_string(), n.to_string()), s))
            .collect();
        let slices = [(("ns".to_string(), "web-1".to_string()), slice)]
            .into_iter()
            .collect();
        (services, slices)
    }

    #[test]
    fn the_dns_service_is_served_by_the_local_listener() {
        let (services, slices) = state();
        let t = build_services(&services, &slices, "n1", &ServiceTable::default());
        let listen: SocketAddr = "10.244.1.1:53".parse().unwrap();
        let other = with_local_dns(t.clone(), &("ns".into(), "nope".into()), listen);
        assert!(other
            .ports
            .iter()
            .zip(&t.ports)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        let served = with_local_dns(t.clone(), &("ns".into(), "web".into()), listen);
        for p in &served.ports {
            assert_eq!(p.endpoints.len(), 1, "{}", p.name);
            assert_eq!(p.endpoints[0].addr, listen);
            assert!(p.endpoints[0].ready && p.endpoints[0].local);
        }
        // Applied again, nothing changes.
        let again = with_local_dns(served.clone(), &("ns".into(), "web".into()), listen);
        assert!(again
            .ports
            .iter()
            .zip(&served.ports)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
    }

    #[test]
    fn builds_ports_with_endpoints_and_policies() {
        let (services, slices) = state();
        let t = build_services(&services, &slices, "n1", &ServiceTable::default());
        let names: Vec<String> = t
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.name, p.protocol))
            .collect();
        assert_eq!(
            names,
            ["ns/web:dns/UDP", "ns/web:http/TCP"],
            "headless and ExternalName services have no ports"
        );
        let http = &t.ports[1];
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity, Some(Duration::from_secs(10800)));
        assert!(http.external_local && !http.internal_local);
        let eps: Vec<(String, bool, bool)> = http
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.ready, e.local))
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.1:8080".to_string(), false, false),
                ("10.0.0.2:8080".to_string(), true, true)
            ]
        );
        assert!(t.ports[0].endpoints.is_empty(), "no slice port named dns");
    }

    #[test]
    fn dns_view_of_services() {
        use hickory_proto::rr::{LowerName, Name, RecordType};
        use switchyard_dns::zone::Answer;
        let (mut services, mut slices) = state();
        services.insert(("ns".into(), "db".into()), obj(serde_json::json!({"metadata": {"name": "db", "namespace": "ns"}, "spec": {"clusterIP": "None"}})));
        slices.insert(
            ("ns".into(), "db-1".into()),
            obj(serde_json::json!({"metadata": {"name": "db-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4", "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.0.0.9"], "hostname": "db-0", "conditions": {"ready": true}}]})),
        );
        let z = build_dns(&services, &slices, "cluster.local", 5).unwrap();
        let q = |s: &str| LowerName::new(&Name::from_ascii(s).unwrap());
        let a = |name: &str, t| match z.lookup(&q(name), t) {
            Answer::Records { answers, .. } => answers
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>(),
            other => vec![format!("{other:?}")],
        };
        assert_eq!(
            a("web.ns.svc.cluster.local.", RecordType::A),
            ["10.96.0.10"]
        );
        assert_eq!(
            a("_dns._udp.web.ns.svc.cluster.local.", RecordType::SRV),
            ["0 100 53 web.ns.svc.cluster.local."]
        );
        assert_eq!(
            a("db-0.db.ns.svc.cluster.local.", RecordType::A),
            ["10.0.0.9"]
        );
        assert_eq!(
            a("_sql._tcp.db.ns.svc.cluster.local.", RecordType::SRV),
            ["0 100 5432 db-0.db.ns.svc.cluster.local."]
        );
        assert_eq!(
            a("e.ns.svc.cluster.local.", RecordType::A),
            ["x.example.com."]
        );
    }

    #[test]
    fn incremental_dns_follows_changes() {
        use hickory_proto::rr::{LowerName, Name, RecordType};
        use switchyard_dns::zone::Answer;
        let (mut services, slices) = state();
        let z = build_dns(&services, &slices, "cluster.local", 5).unwrap();
        let web = ("ns".to_string(), "web".to_string());
        let mut svc = services[&web].clone();
        svc.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.77".into()]);
        services.insert(web.clone(), svc);
        services.remove(&("ns".to_string(), "e".to_string()));
        let changed = Changed {
            all: false,
            services: [web, ("ns".to_string(), "e".to_string())]
                .into_iter()
                .collect(),
        };
        let z2 = update_dns(
            Some(&z),
            &changed,
            &services,
            &slices,
            &SliceIndex::build(&slices),
            &settings("cluster.local", 5),
        )
        .unwrap();
        let q = |s: &str| LowerName::new(&Name::from_ascii(s).unwrap());
        match z2.lookup(&q("web.ns.svc.cluster.local."), RecordType::A) {
            Answer::Records { answers, .. } => {
                assert_eq!(answers[0].data.to_string(), "10.96.0.77")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            z2.lookup(&q("e.ns.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn incremental_service_table_matches_a_full_build() {
        let (mut services, mut slices) = state();
        let first = build_services(&services, &slices, "n1", &ServiceTable::default());
        slices.values_mut().next().unwrap().endpoints.pop();
        services.remove(&("ns".to_string(), "h".to_string()));
        let changed = Changed {
            all: false,
            services: [
                ("ns".to_string(), "web".to_string()),
                ("ns".to_string(), "h".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let index = SliceIndex::build(&slices);
        let inc = update_services(&first, &changed, &services, &slices, &index, "n1");
        assert_eq!(
            inc,
            build_services(&services, &slices, "n1", &ServiceTable::default())
        );
    }

    #[test]
    fn services_added_between_others_and_slices_that_move_are_spliced_in_order() {
        let (mut services, mut slices) = state();
        let mut index = SliceIndex::build(&slices);
        let first = build_services(&services, &slices, "n1", &ServiceTable::default());
        // A new Service that sorts between the others, with a slice of its own; the web
        // slice is relabelled to it.
        let mut mid = services[&("ns".to_string(), "web".to_string())].clone();
        mid.metadata.name = Some("m".into());
        mid.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.11".into()]);
        services.insert(("ns".into(), "m".into()), mid);
        let key = ("ns".to_string(), "web-1".to_string());
        let old = slices[&key].clone();
        let mut moved = old.clone();
        moved
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/service-name".into(), "m".into());
        index.update(&key, Some(&old), Some(&moved));
        slices.insert(key, moved);
        let changed = Changed {
            all: false,
            services: [("ns".into(), "m".into()), ("ns".into(), "web".into())]
                .into_iter()
                .collect(),
        };
        let inc = update_services(&first, &changed, &services, &slices, &index, "n1");
        let full = build_services(&services, &slices, "n1", &ServiceTable::default());
        assert_eq!(inc, full);
        let web = inc.ports.iter().find(|p| p.name.name == "web").unwrap();
        assert!(web.endpoints.is_empty(), "the slice left web");
        assert_eq!(
            index.of(&("ns".into(), "m".into()), &slices).count(),
            1,
            "the index follows the label"
        );
    }

    #[test]
    fn unchanged_ports_keep_their_arc() {
        let (services, mut slices) = state();
        let first = build_services(&services, &slices, "n1", &ServiceTable::default());
        let second = build_services(&services, &slices, "n1", &first);
        assert!(Arc::ptr_eq(&first.ports[1], &second.ports[1]));
        slices.values_mut().next().unwrap().endpoints.pop();
        let third = build_services(&services, &slices, "n1", &second);
        assert!(!Arc::ptr_eq(&second.ports[1], &third.ports[1]));
        assert!(Arc::ptr_eq(&second.ports[0], &third.ports[0]));
    }
}
