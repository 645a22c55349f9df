//! Switchyard: a Kubernetes-compatible networking and service-discovery data plane.
//!
//! This crate is the only one that knows Kubernetes; it depends on `switchyard-proxy` (the data
//! plane's proxies and router, fed view types) and `switchyard-dns` (the zone and server), never
//! on the benchmarks. What lives where:
//! - [`store`]: the etcd-shaped key-value store (trait) and its embedded redb backend;
//! - [`apiserver`]: the Kubernetes-compatible API server — REST handlers, discovery, OpenAPI,
//!   authentication, admission (validation, defaulting, ClusterIP/NodePort allocation), watch;
//! - [`controllers`]: the EndpointSlice, ServiceAccount and node-certificate controllers;
//! - [`agent`]: the node agent — watchers, the cluster state, the snapshot runner, the service
//!   proxy programmer, metrics, node registration;
//! - [`join`]: a node joining from another machine with a bootstrap token and a pinned CA;
//! - [`load`]: the load generator behind `switchyard load`;
//! - [`time`]: RFC 3339 times as Kubernetes writes them;
//! - [`conventions`]: Kubernetes conventions the control plane and the agent share.

pub mod agent;
pub mod apiserver;
pub mod controllers;
pub mod conventions;
pub mod join;
pub mod load;
pub mod store;
pub mod time;
