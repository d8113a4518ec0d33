//! What the coordinator reports about the scheduler's state: its workers, and what was
//! left unfinished at shutdown.

use std::net::SocketAddr;

use distchan_protocol::JobId;

/// One connected worker, as [`Coordinator::workers`](crate::Coordinator::workers) describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerSnapshot {
    /// The worker's id.
    pub id: u64,
    /// What the worker calls itself.
    pub agent: String,
    /// Native, browser or other.
    pub kind: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The credit window granted now (see
    /// [`Config::adaptive_windows`](crate::Config::adaptive_windows)).
    pub capacity: usize,
    /// The capacity the worker declared (within the coordinator's limit): the largest its
    /// window gets.
    pub declared: usize,
    /// Jobs it holds now.
    pub in_flight: usize,
    /// Jobs it answered.
    pub done: u64,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
    /// Milliseconds since it joined.
    pub connected_ms: u64,
    /// True once it asked to leave.
    pub draining: bool,
}

/// What [`Coordinator::shutdown`](crate::Coordinator::shutdown) reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs sent but never answered: waiting for a worker or in flight.
    pub unfinished: Vec<JobId>,
    /// Workers connected when the coordinator shut down.
    pub workers: usize,
}
