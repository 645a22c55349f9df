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
