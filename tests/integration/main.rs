//! Integration tests: a real `switchyard server` driven by the real kubectl and kube-rs.

mod agent;
mod bad_input;
mod client;
mod crash;
mod crd;
mod dns;
mod ebpf;
mod gateway;
mod image;
mod incumbents;
mod ingress;
mod ingress_hostile;
mod kernel_proxy;
mod kube_apiserver;
mod kubectl;
mod lifecycle;
mod load;
mod python;
mod sandbox;
#[path = "../support/mod.rs"]
mod support;
mod watch;
