//! Test support: a real `switchyard server` process driven by kubectl and kube-rs ([`server`]),
//! and clusters built from network namespaces ([`netns`]).

pub mod netns;
pub mod server;

pub use server::*;
