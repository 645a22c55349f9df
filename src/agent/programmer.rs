//! The service proxy programmer: applies the newest snapshot to the proxy in its own task, so a
//! slow apply never delays anything else; retries with backoff while something could not be
//! programmed, and resyncs at the maximum interval.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use switchyard_proxy::ServiceProxy;
use tokio::sync::watch;

use super::events::{node_ref, Recorder};
use super::{Config, Metrics, Snapshot};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where the programmer says what it did: the generation applied, metrics, and Events.
pub(super) struct Outputs {
    pub applied: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

pub(super) async fn run(
    mut proxy: Box<dyn ServiceProxy>,
    config: Config,
    published: Arc<ArcSwap<Snapshot>>,
    mut generations: watch::Receiver<u64>,
    outputs: Outputs,
    mut stop: watch::Receiver<bool>,
) {
    let Outputs {
        applied,
        metrics,
        recorder,
    } = outputs;
    let mut retry: Option<Duration> = None;
    // The errors last recorded as an Event: one is recorded when they change, not per retry.
    let mut reported: Vec<String> = Vec::new();
    let mut last_observed = 0u64;
    loop {
        let wait = retry.unwrap_or(config.max_sync);
        tokio::select! {
            _ = stop.changed() => break,
            changed = generations.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(wait) => {}
        }
        let snapshot = published.load_full();
        if snapshot.generation == 0 {
            continue;
        }
        let new = snapshot.generation > last_observed;
        if let (true, Some(t)) = (new, snapshot.published_at) {
            metrics.stages.wait.observe(t.elapsed());
        }
        let started = Instant::now();
        let report = proxy.apply(&snapshot.services).await;
        let took = started.elapsed();
        metrics.applied(snapshot.generation, took, report.frontends);
        metrics.stages.program.observe(took);
        if new {
            let now = SystemTime::now();
            for (g, t) in snapshot.triggers.iter().filter(|(g, _)| *g > last_observed) {
                let _ = g;
                metrics
                    .programming
                    .observe(now.duration_since(*t).unwrap_or_default());
            }
            last_observed = snapshot.generation;
            let _ = applied.send(snapshot.generation);
        }
        if report.errors != reported && !report.errors.is_empty() {
            recorder.record(
                node_ref(&config.node_name),
                true,
                "SyncProxyRulesFailed",
                "SyncProxyRules",
                report.errors.join("; "),
            );
        }
        reported = report.errors.clone();
        if report.errors.is_empty() {
            retry = None;
            tracing::info!(generation = snapshot.generation, ports = snapshot.services.ports.len(), frontends = report.frontends, added = report.added, removed = report.removed, took = ?took, "proxy synced");
        } else {
            metrics
                .sync_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = retry.map_or(FIRST_RETRY, |r| (r * 2).min(MAX_RETRY));
            tracing::warn!(generation = snapshot.generation, errors = ?report.errors, retry_in = ?next, "proxy sync incomplete");
            retry = Some(next);
        }
    }
    proxy.shutdown().await;
}
