//! The route table for the ingress router, built from Ingresses of our classes, their Services'
//! EndpointSlices and their TLS Secrets: a pure function of the cluster state (plus a cache of
//! parsed certificates, keyed by the Secret's resourceVersion).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use switchyard_proxy::router::annotations;
use switchyard_proxy::router::routes::{
    Action, Age, BackendSpec, Builder, Owner, PathMatch, Recorded, RouteTable,
};
use switchyard_proxy::table::{usable, Protocol};

use super::build::{endpoints_by_port, ObjKey, SliceIndex};
use super::gateway::build as gateway;

/// The controller name our IngressClasses carry.
pub const CONTROLLER: &str = "switchyard.io/ingress-controller";
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The appProtocol of a Service port that speaks HTTP/2 without TLS.
const H2C: &str = "kubernetes.io/h2c";

/// Parsed certificates by Secret, with the resourceVersion they were parsed at.
pub type CertCache = HashMap<ObjKey, (String, Result<Arc<CertifiedKey>, String>)>;

/// The inputs of [`build_routes`].
pub struct Inputs<'a> {
    pub ingresses: &'a HashMap<ObjKey, Ingress>,
    pub classes: &'a HashMap<ObjKey, IngressClass>,
    pub secrets: &'a HashMap<ObjKey, Secret>,
    pub services: &'a HashMap<ObjKey, Service>,
    pub slices: &'a HashMap<ObjKey, EndpointSlice>,
    pub slice_index: &'a SliceIndex,
    pub gateway: gateway::Objects<'a>,
}

/// An Ingress the router serves, or one it does not serve whose status lists addresses (ours
/// among them, perhaps, from when it was ours), with the addresses its status lists now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub key: ObjKey,
    /// Tells a re-created Ingress from the one it replaced.
    pub uid: String,
    pub status_ips: Vec<String>,
    /// Served by the router (else: our address, if listed, is to be removed).
    pub ours: bool,
    /// What in it the router could not serve as written.
    pub problems: Vec<Problem>,
}

/// Something in an Ingress the router could not serve as written: an Event's reason and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

fn problem(reason: &str, message: String) -> Problem {
    Problem {
        reason: reason.to_string(),
        message,
    }
}

pub struct Built {
    pub table: RouteTable,
    /// The Ingresses whose status the agent writes.
    pub served: Vec<Served>,
    /// The status of the Gateway API objects of ours.
    pub gateway: gateway::Statuses,
}

/// Whether an Ingress belongs to one of our classes. A class named in `spec.ingressClassName`
/// or in the legacy annotation must be ours, and one named in both must be ours in both (an
/// Ingress the annotation gives to another controller is left alone); one that names none is
/// ours when our class is the default.
pub fn is_ours(ing: &Ingress, classes: &HashMap<ObjKey, IngressClass>) -> bool {
    let ours = |c: &IngressClass| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
    };
    let our_class = |name: &str| {
        classes
            .get(&(String::new(), name.to_string()))
            .is_some_and(ours)
    };
    let field = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::conventions::LEGACY_INGRESS_CLASS))
        .map(String::as_str);
    match (field, legacy) {
        (Some(f), Some(l)) => our_class(f) && our_class(l),
        (Some(name), None) | (None, Some(name)) => our_class(name),
        (None, None) => classes.values().any(|c| {
            ours(c)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    .is_some_and(|v| v == "true")
        }),
    }
}

/// The certificate of a `kubernetes.io/tls` Secret, parsed once per resourceVersion.
pub fn certificate(
    cache: &mut CertCache,
    secrets: &HashMap<ObjKey, Secret>,
    key: &ObjKey,
) -> Result<Arc<CertifiedKey>, String> {
    let secret = secrets
        .get(key)
        .ok_or_else(|| format!("TLS Secret {}/{} does not exist", key.0, key.1))?;
    let version = secret.metadata.resource_version.clone().unwrap_or_default();
    if let Some((v, cert)) = cache.get(key) {
        if *v == version {
            return cert.clone();
        }
    }
    let parsed = parse_tls_secret(secret)
        .map_err(|e| {
            tracing::warn!(secret = %format!("{}/{}", key.0, key.1), error = %e, "TLS secret not usable");
            format!("TLS Secret {}/{} not usable: {e}", key.0, key.1)
        })
        .map(Arc::new);
    cache.insert(key.clone(), (version, parsed.clone()));
    parsed
}

/// `tls.crt` (PEM chain) and `tls.key` (PEM key) of a Secret, checked to belong together.
pub fn parse_tls_secret(secret: &Secret) -> Result<CertifiedKey, String> {
    let data = secret.data.as_ref().ok_or("no data")?;
    let crt = data.get("tls.crt").ok_or("no tls.crt")?;
    let key = data.get("tls.key").ok_or("no tls.key")?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &crt.0[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut &key.0[..])
        .map_err(|e| format!("tls.key: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("tls.crt and tls.key do not match: {e}"))?;
    Ok(certified)
}

fn age(ing: &Ingress, key: &ObjKey) -> Age {
    (
        ing.metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
        Arc::new(Owner::ingress(&key.0, &key.1)),
    )
}

/// How a reference names a Service port.
pub enum PortRef<'a> {
    Name(&'a str),
    Number(i32),
}

/// The endpoints of each port of one Service.
type ServiceEndpoints =
    HashMap<(String, String, String, Protocol), Vec<switchyard_proxy::table::Endpoint>>;

/// The endpoints of Services, read from their slices when a compile first asks for them (only
/// the objects that changed compile).
pub struct Endpoints<'a> {
    slices: &'a HashMap<ObjKey, EndpointSlice>,
    index: &'a SliceIndex,
    read: RefCell<HashMap<ObjKey, Rc<ServiceEndpoints>>>,
}

impl<'a> Endpoints<'a> {
    pub fn new(slices: &'a HashMap<ObjKey, EndpointSlice>, index: &'a SliceIndex) -> Self {
        Endpoints {
            slices,
            index,
            read: Default::default(),
        }
    }

    fn of(&self, ns: &str, name: &str) -> Rc<ServiceEndpoints> {
        let key = (ns.to_string(), name.to_string());
        if let Some(e) = self.read.borrow().get(&key) {
            return e.clone();
        }
        // Endpoints here serve every node's ingress traffic: locality does not matter.
        let e = Rc::new(endpoints_by_port(self.index.of(&key, self.slices), ""));
        self.read.borrow_mut().insert(key, e.clone());
        e
    }
}

/// The usable endpoints of a Service port and whether it speaks h2c, or why there are none.
pub fn service_port(
    services: &HashMap<ObjKey, Service>,
    endpoints: &Endpoints,
    ns: &str,
    name: &str,
    port_ref: Option<PortRef<'_>>,
) -> Result<(Vec<std::net::SocketAddr>, bool), Problem> {
    let Some(svc) = services.get(&(ns.to_string(), name.to_string())) else {
        return Err(problem(
            "ServiceNotFound",
            format!("Service {ns}/{name} does not exist"),
        ));
    };
    let port = svc.spec.as_ref().and_then(|s| {
        s.ports.iter().flatten().find(|p| {
            p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                && match &port_ref {
                    Some(PortRef::Name(n)) => p.name.as_deref() == Some(*n),
                    Some(PortRef::Number(n)) => p.port == *n,
                    None => false,
                }
        })
    });
    let Some(port) = port else {
        let wanted = match port_ref {
            Some(PortRef::Name(n)) => n.to_string(),
            Some(PortRef::Number(n)) => n.to_string(),
            None => "(none named)".into(),
        };
        return Err(problem(
            "ServicePortNotFound",
            format!("Service {ns}/{name} has no TCP port {wanted}"),
        ));
    };
    let key = (
        ns.to_string(),
        name.to_string(),
        port.name.clone().unwrap_or_default(),
        Protocol::Tcp,
    );
    let addrs = endpoints
        .of(ns, name)
        .get(&key)
        .map(|eps| usable(eps, false).iter().map(|e| e.addr).collect())
        .unwrap_or_default();
    Ok((addrs, port.app_protocol.as_deref() == Some(H2C)))
}

/// The backend spec of an Ingress backend: the usable endpoints of the Service port it names.
fn backend_spec(
    inputs: &Inputs<'_>,
    endpoints: &Endpoints,
    ns: &str,
    ingress: &Arc<Owner>,
    settings: &switchyard_proxy::router::routes::Settings,
    backend: &IngressBackend,
) -> Option<(BackendSpec, Option<Problem>)> {
    let svc_ref = backend.service.as_ref()?;
    let port_ref = svc_ref
        .port
        .as_ref()
        .and_then(|p| match (&p.name, p.number) {
            (Some(n), _) if !n.is_empty() => Some(PortRef::Name(n)),
            (_, Some(n)) => Some(PortRef::Number(n)),
            _ => None,
        });
    let label = match &port_ref {
        Some(PortRef::Name(n)) => format!("{}:{n}", svc_ref.name),
        Some(PortRef::Number(n)) => format!("{}:{n}", svc_ref.name),
        None => svc_ref.name.clone(),
    };
    let mut spec = BackendSpec {
        owner: ingress.clone(),
        service: label,
        endpoints: vec![],
        h2c: false,
        settings: settings.clone(),
        edits: None,
    };
    match service_port(inputs.services, endpoints, ns, &svc_ref.name, port_ref) {
        Ok((addrs, h2c)) => {
            spec.endpoints = addrs;
            spec.h2c = h2c;
            Some((spec, None))
        }
        Err(mut p) => {
            p.message.push_str("; its paths answer 503");
            Some((spec, Some(p)))
        }
    }
}

fn tls_hosts(ing: &Ingress) -> impl Iterator<Item = (&str, Option<&str>)> {
    ing.spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t.hosts
                .iter()
                .flatten()
                .map(move |h| (h.as_str(), t.secret_name.as_deref()))
        })
}

/// What one Ingress compiled to, kept while neither it (resourceVersion) nor anything else the
/// route table reads (`world`) changed.
pub struct IngressMemo {
    version: String,
    world: u64,
    recorded: Recorded,
    problems: Vec<Problem>,
    /// The Services it names (whose changes rebuild it).
    services: Vec<ObjKey>,
}

/// The route builds' memory between snapshots: parsed certificates and compiled objects.
#[derive(Default)]
pub struct Caches {
    pub certs: CertCache,
    ingresses: foldhash::HashMap<ObjKey, IngressMemo>,
    pub(crate) routes: gateway::RouteCache,
    /// The `world` the last table was built at: a build at the same one edits that table.
    built_at: Option<u64>,
    /// The Services the compiled objects name, with how many name each.
    services: foldhash::HashMap<ObjKey, usize>,
}

impl Caches {
    /// Whether the route table reads this Service (a change to any other cannot change it).
    pub fn depends_on(&self, svc: &ObjKey) -> bool {
        self.services.contains_key(svc)
    }

    /// Counts the Services of an object's compiled rules in (`add`) or out.
    pub(crate) fn count(&mut self, services: &[ObjKey], add: bool) {
        for svc in services {
            if add {
                *self.services.entry(svc.clone()).or_default() += 1;
            } else if let Some(n) = self.services.get_mut(svc) {
                *n -= 1;
                if *n == 0 {
                    self.services.remove(svc);
                }
            }
        }
    }
}

/// Compiles one Ingress: its rules, default backend and certificates, and what in it could not
/// be served.
fn compile_ingress(
    b: &mut Builder<'_>,
    inputs: &Inputs<'_>,
    endpoints: &Endpoints,
    certs: &mut CertCache,
    key: &ObjKey,
    ing: &Ingress,
    world: u64,
) -> IngressMemo {
    let age = age(ing, key);
    let mut memo = IngressMemo {
        version: ing.metadata.resource_version.clone().unwrap_or_default(),
        world,
        recorded: Recorded::new(age.clone()),
        problems: Vec::new(),
        services: Vec::new(),
    };
    let rec = &mut memo.recorded;
    let problems = &mut memo.problems;
    let services = &mut memo.services;
    let Some(spec) = &ing.spec else {
        return memo;
    };
    let parsed = annotations::parse(
        ing.metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap_or_else(|e| {
        tracing::warn!(ingress = %age.1, error = %e, "annotation ignored; using defaults");
        problems.push(problem(
            "InvalidAnnotation",
            format!("{e}; the annotations are ignored"),
        ));
        annotations::Parsed::default()
    });
    let tls: Vec<&str> = tls_hosts(ing).map(|(h, _)| h).collect();
    for (host, secret) in tls_hosts(ing) {
        if let Some(secret) = secret {
            match certificate(certs, inputs.secrets, &(key.0.clone(), secret.to_string())) {
                Ok(cert) => rec.certificate(host, cert),
                Err(e) => {
                    let p = problem(
                        "InvalidTLSSecret",
                        format!("{e}; {host} is served with the default certificate"),
                    );
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
        }
    }
    let mut backend = |rec: &mut Recorded, be: &IngressBackend| {
        if let Some(s) = &be.service {
            services.push((key.0.clone(), s.name.clone()));
        }
        let (spec, missing) =
            backend_spec(inputs, endpoints, &key.0, &age.1, &parsed.settings, be)?;
        if let Some(m) = missing.filter(|m| !problems.contains(m)) {
            problems.push(m);
        }
        let be = b.backend(spec);
        rec.keep(&be);
        Some(be)
    };
    if let Some(d) = &spec.default_backend {
        if let Some(be) = backend(rec, d) {
            rec.default_backend(Arc::new(Action::forward(be, false)));
        }
    }
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        let redirect = parsed
            .ssl_redirect
            .unwrap_or_else(|| host.is_some_and(|h| tls.iter().any(|t| t.eq_ignore_ascii_case(h))));
        for path in rule.http.iter().flat_map(|h| &h.paths) {
            let Some(be) = backend(rec, &path.backend) else {
                continue;
            };
            let p = path.path.as_deref().unwrap_or("/");
            let m = match path.path_type.as_str() {
                "Exact" => PathMatch::exact(p),
                _ => PathMatch::prefix(p),
            };
            rec.rule(host, m, Arc::new(Action::forward(be, redirect)));
        }
    }
    memo
}

/// Builds the route table of every Ingress of ours; `previous` lends its upstream state.
/// Builds the route table of every Ingress and route of ours; `previous` lends its upstream
/// state. Objects compiled at the same version and `world` (a counter of every other change the
/// table depends on) are taken from `caches`.
pub fn build_routes(
    inputs: &Inputs<'_>,
    previous: &RouteTable,
    caches: &mut Caches,
    world: u64,
) -> Built {
    let ours: Vec<(&ObjKey, &Ingress)> = inputs
        .ingresses
        .iter()
        .filter(|(_, i)| is_ours(i, inputs.classes))
        .collect();
    let endpoints = Endpoints::new(inputs.slices, inputs.slice_index);
    // Only Ingresses and routes changed since the last table: edit it. Anything else: anew.
    let edit = caches.built_at == Some(world);
    let mut b = if edit {
        previous.editor()
    } else {
        previous.builder()
    };
    let mut served = Vec::new();
    let entry = |key: &ObjKey, ing: &Ingress, ours: bool, problems: Vec<Problem>| Served {
        key: key.clone(),
        uid: ing.metadata.uid.clone().unwrap_or_default(),
        status_ips: status_ips(ing),
        ours,
        problems,
    };
    let count = ours.len();
    // Default backends and certificates are claimed between Ingresses: when an edit changes
    // one, the claims are made again from every Ingress.
    let mut reclaim = false;
    for (key, ing) in &ours {
        let version = ing.metadata.resource_version.as_deref().unwrap_or("");
        let fresh = caches
            .ingresses
            .get(*key)
            .is_some_and(|m| m.world == world && m.version == version);
        if fresh {
            if !edit {
                b.apply(&caches.ingresses[*key].recorded);
            }
        } else {
            let memo = compile_ingress(
                &mut b,
                inputs,
                &endpoints,
                &mut caches.certs,
                key,
                ing,
                world,
            );
            if let Some(old) = caches.ingresses.remove(*key) {
                caches.count(&old.services, false);
                if edit {
                    reclaim |= !old.recorded.editable();
                    b.remove(&old.recorded);
                }
            }
            reclaim |= !memo.recorded.editable();
            b.apply(&memo.recorded);
            caches.count(&memo.services, true);
            caches.ingresses.insert((*key).clone(), memo);
        }
        served.push(entry(
            key,
            ing,
            true,
            caches.ingresses[*key].problems.clone(),
        ));
    }
    if caches.ingresses.len() > count {
        let keep: HashSet<&ObjKey> = ours.iter().map(|(k, _)| *k).collect();
        let gone: Vec<ObjKey> = caches
            .ingresses
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            let Some(memo) = caches.ingresses.remove(&k) else {
                continue;
            };
            caches.count(&memo.services, false);
            if edit {
                reclaim |= !memo.recorded.editable();
                b.remove(&memo.recorded);
            }
        }
    }
    if edit && reclaim {
        b.reclaim(caches.ingresses.values().map(|m| &m.recorded));
    }
    let gateway_inputs = gateway::Inputs {
        objects: inputs.gateway,
        services: inputs.services,
        secrets: inputs.secrets,
    };
    let gateway = gateway::build(&mut b, &gateway_inputs, &endpoints, caches, (world, edit));
    caches.built_at = Some(world);
    let foreign = inputs
        .ingresses
        .iter()
        .filter(|(_, i)| !is_ours(i, inputs.classes))
        .map(|(key, ing)| entry(key, ing, false, Vec::new()))
        .filter(|s| !s.status_ips.is_empty());
    served.extend(foreign);
    served.sort_by(|a, b| a.key.cmp(&b.key));
    // Forget certificates of Secrets that are gone.
    caches.certs.retain(|k, _| inputs.secrets.contains_key(k));
    Built {
        table: b.build(),
        served,
        gateway,
    }
}

fn status_ips(ing: &Ingress) -> Vec<String> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// Whether `ip` is among an Ingress's status addresses.
pub fn lists(served: &Served, ip: IpAddr) -> bool {
    served
        .status_ips
        .iter()
        .any(|s| s.parse::<IpAddr>().ok() == Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proxy::router::routes::{Req, Target};

    fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    fn keyed<K: kube::ResourceExt>(list: Vec<K>) -> HashMap<ObjKey, K> {
        list.into_iter()
            .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
            .collect()
    }

    fn ingress(name: &str, class: Option<&str>, created: &str, path: &str, svc: &str) -> Ingress {
        let mut spec = serde_json::json!({"rules": [{"host": "a.example", "http": {"paths": [
            {"path": path, "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"name": "http"}}}}]}}]});
        if let Some(c) = class {
            spec["ingressClassName"] = c.into();
        }
        obj(
            serde_json::json!({"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created}, "spec": spec}),
        )
    }

    #[test]
    fn class_ownership_and_endpoint_resolution() {
        let classes = keyed(vec![
            obj::<IngressClass>(
                serde_json::json!({"metadata": {"name": "ours", "annotations": {DEFAULT_CLASS: "true"}}, "spec": {"controller": CONTROLLER}}),
            ),
            obj(
                serde_json::json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
            ),
        ]);
        let ingresses = keyed(vec![
            ingress("named", Some("ours"), "2026-01-01T00:00:00Z", "/a", "web"),
            ingress("defaulted", None, "2026-01-02T00:00:00Z", "/b", "web"),
            ingress("other", Some("nginx"), "2026-01-01T00:00:00Z", "/c", "web"),
            ingress(
                "missing",
                Some("ours"),
                "2026-01-01T00:00:00Z",
                "/d",
                "absent",
            ),
        ]);
        let services = keyed(vec![obj::<Service>(
            serde_json::json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"ports": [{"name": "http", "port": 80, "appProtocol": H2C}]}}),
        )]);
        let slices = keyed(vec![obj::<EndpointSlice>(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]}))]);
        let secrets = HashMap::new();
        let (gc, gw, hr, rg, ns) = (
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
        );
        let index = crate::agent::build::SliceIndex::build(&slices);
        let inputs = Inputs {
            ingresses: &ingresses,
            classes: &classes,
            secrets: &secrets,
            services: &services,
            slices: &slices,
            slice_index: &index,
            gateway: gateway::Objects {
                classes: &gc,
                gateways: &gw,
                routes: &hr,
                grpc_routes: &HashMap::new(),
                grants: &rg,
                namespaces: &ns,
            },
        };
        let headers = http::HeaderMap::new();
        let get = Req {
            method: &http::Method::GET,
            headers: &headers,
            query: None,
        };
        let mut caches = Caches::default();
        let built = build_routes(&inputs, &RouteTable::default(), &mut caches, 0);
        let at = |path| built.table.route(80, true, "a.example", path, &get);
        let names: Vec<&str> = built
            .served
            .iter()
            .filter(|s| s.ours)
            .map(|s| s.key.1.as_str())
            .collect();
        assert_eq!(names, ["defaulted", "missing", "named"]);
        let Target::Route(r) = at("/a/x") else {
            panic!("no route for /a")
        };
        let addrs: Vec<String> = r
            .action
            .first_backend()
            .unwrap()
            .endpoints
            .iter()
            .map(|u| u.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["10.0.0.1:8080"],
            "only the ready endpoint, at the slice's port"
        );
        assert!(r.action.first_backend().unwrap().h2c);
        assert!(matches!(at("/b"), Target::Route(_)));
        assert!(matches!(at("/c"), Target::NotFound));
        let Target::Route(r) = at("/d") else {
            panic!("no route for /d")
        };
        assert!(
            r.action.first_backend().unwrap().endpoints.is_empty(),
            "a missing Service has no endpoints"
        );
        assert!(caches.depends_on(&("ns".into(), "web".into())));
        assert!(caches.depends_on(&("ns".into(), "absent".into())));

        // Unchanged objects keep their compiled rules; any other change recompiles them.
        let action = |t: &RouteTable| match t.route(80, true, "a.example", "/a", &get) {
            Target::Route(r) => r.action.clone(),
            _ => panic!("no route for /a"),
        };
        let again = build_routes(&inputs, &built.table, &mut caches, 0);
        assert!(Arc::ptr_eq(&action(&built.table), &action(&again.table)));
        let changed = build_routes(&inputs, &again.table, &mut caches, 1);
        assert!(!Arc::ptr_eq(&action(&again.table), &action(&changed.table)));
    }
}
