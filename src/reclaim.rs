//! Making room at `max_connections`: when every slot is taken and a new
//! client is waiting, the connection that has been idle longest is closed
//! for it (what nginx does when it runs short of connections). Without
//! this, one client holding `max_connections` idle keep-alive connections
//! (one small request each per `idle_timeout`) locked every other client
//! out.
//!
//! Idle means a parked HTTP/1 connection (between requests, holding no
//! byte of the next one) or an HTTP/2 connection with no stream in flight
//! (`Activity::idle_since`); a connection with a request in flight is never
//! a candidate. The registry is touched once when a connection opens and
//! once when it closes; parking and requests only set the connection's own
//! atomics, and the registry is searched only when a client waits for a slot.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::conn::Activity;

/// While a client waits, how often the registry is searched again when
/// nothing woke the search earlier: an HTTP/2 connection whose last stream
/// ended, or one asked to close that has not (a stream raced in).
const SEARCH_AGAIN: Duration = crate::conn::PARK_AFTER;

/// Every open connection's `Activity`, for finding the one idle longest.
#[derive(Default)]
pub struct Idle {
    conns: Mutex<HashMap<u64, Arc<Activity>, foldhash::fast::RandomState>>,
    next_id: std::sync::atomic::AtomicU64,
    /// The accept loop has a client waiting for a slot.
    waiting: AtomicBool,
    /// A connection parked while a client waited.
    parked: Notify,
}

/// A connection's place in the registry, left when dropped (with the
/// connection's slot, so after an upgraded connection's tunnel ends).
pub struct Registration {
    idle: Arc<Idle>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.idle.conns.lock() {
            conns.remove(&self.id);
        }
    }
}

impl Idle {
    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registration {
        let id = self.next_id.fetch_add(1, Relaxed);
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(id, activity);
        }
        Registration { idle: self.clone(), id }
    }

    /// A connection parked: a waiting client may have it.
    pub fn on_park(&self) {
        if self.waiting.load(Relaxed) {
            self.parked.notify_one();
        }
    }

    /// Asks the connection idle longest to close; false when none is idle.
    fn reclaim_oldest(&self) -> bool {
        let Ok(conns) = self.conns.lock() else { return false };
        let mut tried = std::collections::HashSet::new();
        loop {
            let oldest = conns
                .iter()
                .filter(|(id, _)| !tried.contains(*id))
                .filter_map(|(id, a)| Some((a.idle_since()?, *id, a)))
                .min_by_key(|c| c.0);
            let Some((_, id, activity)) = oldest else { return false };
            // False only when it stopped being idle since `idle_since`.
            if activity.reclaim() {
                tracing::debug!("at max_connections: closing the connection idle longest for a waiting client");
                return true;
            }
            tried.insert(id);
        }
    }

    /// With every slot taken and a client accepted: closes idle connections,
    /// the one idle longest first, until a slot frees; None when `shutdown`
    /// resolves first. One at a time: the next only when the last has not
    /// freed its slot within `SEARCH_AGAIN`.
    pub async fn make_room<F: Future<Output = ()>>(
        &self,
        slots: &Arc<Semaphore>,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<OwnedSemaphorePermit> {
        self.waiting.store(true, Relaxed);
        let permit = loop {
            let asked = self.reclaim_oldest();
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.ok(),
                // Nothing to close yet: the first connection to park will do.
                () = self.parked.notified(), if !asked => {}
                () = tokio::time::sleep(SEARCH_AGAIN) => {}
                () = shutdown.as_mut() => break None,
            }
        };
        self.waiting.store(false, Relaxed);
        permit
    }
}
