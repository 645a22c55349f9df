//! Test support: a real `switchyard server` process driven by kubectl and kube-rs ([`server`]),
//! `switchyard up` on free ports ([`up`]), and clusters built from network namespaces
//! ([`netns`], with kubectl and pods in them: [`cluster`], and service traffic from those pods:
//! [`traffic`]), and a real kube-apiserver built from its Go modules ([`kube_apiserver`]).

pub mod cluster;
pub mod kube_apiserver;
pub mod netns;
pub mod server;
pub mod traffic;
pub mod up;

pub use server::*;

/// Skips the calling test (the caller returns) with `why`, printed; under `CI=true` no test may
/// skip, so this fails the test with the reason instead.
pub fn skip(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "cannot run under CI: {why}");
    eprintln!("skipped: {why}");
}
pub use up::Up;
