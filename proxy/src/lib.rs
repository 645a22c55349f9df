//! Service proxy modes and the ingress router for Switchyard (the `switchyard-proxy` crate).
//!
//! This crate knows no Kubernetes types. It consumes view types built by the node agent:
//! - [`table`]: the [`ServiceTable`](table::ServiceTable) — every service port with its
//!   frontends (ClusterIPs, NodePort, external and load-balancer IPs) and endpoints — and the
//!   endpoint selection rules shared by every proxy mode;
//! - [`userspace`]: the userspace proxy, which moves the bytes itself where the kernel cannot be
//!   programmed;
//! - [`ingress`]: the HTTP ingress router, which consumes a [`RouteTable`](ingress::routes::RouteTable);
//! - [`metrics`]: the Prometheus histogram both the agent and the router use.

pub mod ingress;
pub mod metrics;
pub mod table;
pub mod userspace;
