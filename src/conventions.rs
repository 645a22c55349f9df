//! Kubernetes conventions that both the control plane and the node agent rely on: one
//! definition each, whatever form (typed or JSON) the object is read in.

/// The EndpointSlice annotation with the time of the change that triggered it (written by the
/// EndpointSlice controller, read by the agent to measure network programming latency).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A Service with this label (any value) belongs to another service proxy: kube-proxy and ours
/// leave it alone.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// A Service (or EndpointSlice) with this label is headless to the service proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The annotation that named an Ingress's class before `spec.ingressClassName`; still honoured.
pub const LEGACY_INGRESS_CLASS: &str = "kubernetes.io/ingress.class";

/// Whether a Service with this `spec.clusterIP` is headless: no virtual IP, its DNS records come
/// from its endpoints.
pub fn is_headless(cluster_ip: Option<&str>) -> bool {
    cluster_ip == Some("None")
}
