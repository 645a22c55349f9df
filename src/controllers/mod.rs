//! Controllers that run inside the server, following the store's event feed: the EndpointSlice
//! controller, the ServiceAccount controller, the node-certificate controller, ClusterRole
//! aggregation, Event expiry and the garbage collector. They write through the store like any client and may depend on `store` and on
//! the `apiserver`'s resource table, never the other way round.

pub mod aggregation;
pub mod certificates;
pub mod endpointslice;
pub mod events;
pub mod garbage;
pub mod serviceaccounts;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::store::{Event, Store, Watch};

/// What a controller does next: read everything again (first, and whenever events were
/// missed), or handle a batch of events.
pub(crate) enum Feed {
    Resync,
    Batch(Arc<[Arc<Event>]>),
}

/// A controller's way through the store's event feed.
pub(crate) struct Follower {
    store: Arc<dyn Store>,
    watch: Option<Watch>,
    name: &'static str,
}

impl Follower {
    pub(crate) fn new(store: Arc<dyn Store>, name: &'static str) -> Self {
        Follower {
            store,
            watch: None,
            name,
        }
    }

    /// The next thing to do; `None` once the store shuts down.
    pub(crate) async fn next(&mut self) -> Option<Feed> {
        loop {
            let Some(watch) = &mut self.watch else {
                match self.store.watch(self.store.revision()) {
                    Ok(w) => {
                        self.watch = Some(w);
                        return Some(Feed::Resync);
                    }
                    Err(e) => {
                        tracing::error!(controller = self.name, error = %e, "cannot watch the store");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            };
            match watch.live.recv().await {
                Ok(batch) => return Some(Feed::Batch(batch)),
                Err(RecvError::Lagged(_)) => self.watch = None,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// A controller driven by [`drive`]: the feed's events, and a timer of its own.
pub(crate) trait Reactor: Send {
    /// Read everything again (first, and whenever events were missed).
    fn resync(&mut self) -> impl Future<Output = ()> + Send;
    /// One event of the feed.
    fn event(&mut self, ev: &Event) -> impl Future<Output = ()> + Send;
    /// How long until [`Reactor::timer`] is due (None: no timer).
    fn wait(&self) -> Option<Duration>;
    fn timer(&mut self) -> impl Future<Output = ()> + Send;
    /// After each resync, batch or timer.
    fn settle(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `r` on the store's feed until the store shuts down.
pub(crate) async fn drive(mut follower: Follower, mut r: impl Reactor) {
    loop {
        let wait = r.wait();
        tokio::select! {
            feed = follower.next() => match feed {
                None => return,
                Some(Feed::Resync) => r.resync().await,
                Some(Feed::Batch(batch)) => {
                    for ev in batch.iter() {
                        r.event(ev).await;
                    }
                }
            },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => r.timer().await,
        }
        r.settle().await;
    }
}
