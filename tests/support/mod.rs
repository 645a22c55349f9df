//! Test support: a real `switchyard server` process driven by kubectl and kube-rs ([`server`]),
//! `switchyard up` on free ports ([`up`]), and clusters built from network namespaces
//! ([`netns`], with kubectl and pods in them: [`cluster`], and service traffic from those pods:
//! [`traffic`]).

pub mod cluster;
pub mod netns;
pub mod server;
pub mod traffic;
pub mod up;

pub use server::*;
pub use up::Up;
