//! Cluster DNS for Switchyard (the `switchyard-dns` crate). No Kubernetes types live here, and it
//! depends on no other crate of the workspace: the node agent turns its snapshot into
//! [`zone::Service`]s.
//!
//! - [`zone`]: the cluster zone, built off the hot path and read without locks;
//! - [`forward`]: everything else, to the upstream resolvers, with a TTL-honouring cache;
//! - [`server`]: the UDP/TCP server (hickory-server) and the request handler.
mod batch;
pub mod fast;
pub mod forward;
pub mod server;
pub mod zone;
