//! Counters the scheduler keeps up to date, readable at any time without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters shared between the scheduler and the [`Coordinator`](crate::Coordinator) handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub workers: AtomicU64,
    pub queued: AtomicU64,
    pub in_flight: AtomicU64,
    pub dispatched: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub redelivered: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A snapshot of the coordinator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Workers connected now.
    pub workers: u64,
    /// Jobs taken from the channel and waiting for a worker.
    pub queued: u64,
    /// Jobs sent to a worker and not yet answered.
    pub in_flight: u64,
    /// Times a job was sent to a worker (re-dispatches included).
    pub dispatched: u64,
    /// Jobs whose successful result was delivered.
    pub completed: u64,
    /// Jobs whose failure was delivered (handler error, lost too often, undecodable).
    pub failed: u64,
    /// Jobs taken back from a lost worker or an overrun lease and queued again.
    pub redelivered: u64,
    /// Late or duplicate results that were dropped.
    pub duplicates: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            workers: get(&self.workers),
            queued: get(&self.queued),
            in_flight: get(&self.in_flight),
            dispatched: get(&self.dispatched),
            completed: get(&self.completed),
            failed: get(&self.failed),
            redelivered: get(&self.redelivered),
            duplicates: get(&self.duplicates),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub(crate) fn set(counter: &AtomicU64, v: u64) {
    counter.store(v, Ordering::Relaxed);
}
