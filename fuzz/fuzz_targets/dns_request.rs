//! The DNS request path, from raw datagram to encoded response: parsing, the cluster zone
//! lookup, forwarding (with no upstream, so without network) and response building must never
//! panic on any input.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchyard_dns::forward::{Config, Forwarder};
use switchyard_dns::server::{answer_datagram, Handler, Observer, Served, ZoneSource};
use switchyard_dns::zone::{ClusterZone, Endpoint, Kind, Port, Service};

struct Zone(Arc<ClusterZone>);
impl ZoneSource for Zone {
    fn zone(&self) -> Option<Arc<ClusterZone>> {
        Some(self.0.clone())
    }
}
struct Quiet;
impl Observer for Quiet {
    fn served(&self, _: Served) {}
}

fn setup() -> (tokio::runtime::Runtime, Handler) {
    let services = vec![
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: Kind::ClusterIp(vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()]),
            ports: vec![Port { name: "http".into(), protocol: "tcp".into(), port: 80 }],
            endpoints: vec![],
        },
        Service {
            namespace: "db".into(),
            name: "pg".into(),
            kind: Kind::Headless,
            ports: vec![Port { name: "sql".into(), protocol: "tcp".into(), port: 5432 }],
            endpoints: (1..=40).map(|i| Endpoint { addresses: vec![format!("10.244.0.{i}").parse().unwrap()], hostname: None, ready: true }).collect(),
        },
        Service { namespace: "default".into(), name: "ext".into(), kind: Kind::ExternalName("db.example.com".into()), ports: vec![], endpoints: vec![] },
    ];
    let zone = ClusterZone::build("cluster.local", 5, &services).unwrap();
    let forwarder = Forwarder::new(Config { upstreams: vec![], timeout: Duration::from_millis(10), cache_entries: 16, max_concurrent: 16 });
    let handler = Handler::new(Arc::new(Zone(Arc::new(zone))), "cluster.local", forwarder, Arc::new(Quiet)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    (rt, handler)
}

fuzz_target!(|data: &[u8]| {
    static STATE: OnceLock<(tokio::runtime::Runtime, Handler)> = OnceLock::new();
    let (rt, handler) = STATE.get_or_init(setup);
    let _ = rt.block_on(answer_datagram(handler, data));
});
