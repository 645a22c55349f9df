//! Service proxy modes and the ingress router for Switchyard (the `switchyard-proxy` crate).
