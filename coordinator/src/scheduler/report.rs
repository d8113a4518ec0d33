//! What the coordinator reports about the scheduler's state: its workers, and what was
//! left unfinished at shutdown.

use std::{net::SocketAddr, time::Duration};

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
    /// True while it is paused (a volunteer pressed Pause, or hid the tab): it gets no jobs.
    pub paused: bool,
    /// Its results that lost to the result other workers agreed on (with
    /// [`Config::replicas`](crate::Config::replicas)).
    pub wrong: u64,
}

/// What [`Coordinator::shutdown`](crate::Coordinator::shutdown) reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs sent but never answered: waiting for a worker or in flight.
    pub unfinished: Vec<JobId>,
    /// Workers connected when the coordinator shut down.
    pub workers: usize,
    /// Every worker that answered at least one job, connected or gone, by id (the first
    /// [`MAX_SHARES`] of them): who did what.
    pub shares: Vec<WorkerShare>,
}

/// Most workers a [`ShutdownReport`] lists in its shares (a long run with volunteers
/// coming and going may see more).
pub const MAX_SHARES: usize = 100_000;

/// One worker's part of the work, as a [`ShutdownReport`] lists it.
///
/// ```
/// use std::time::Duration;
/// use distchan_coordinator::WorkerShare;
///
/// let share = WorkerShare {
///     id: 3,
///     agent: "local worker 1".into(),
///     kind: "native".into(),
///     done: 5_000,
///     wrong: 0,
///     connected: Duration::from_secs(2),
/// };
/// assert_eq!(share.rate(), 2_500.0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerShare {
    /// The worker's id (as the dashboard and the logs show it).
    pub id: u64,
    /// What the worker called itself.
    pub agent: String,
    /// Native, browser or other.
    pub kind: String,
    /// Jobs it answered.
    pub done: u64,
    /// Its results that lost to the result other workers agreed on (with
    /// [`Config::replicas`](crate::Config::replicas)).
    pub wrong: u64,
    /// How long it was connected.
    pub connected: Duration,
}

impl WorkerShare {
    /// Jobs it answered per second of its connection.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.connected.as_secs_f64().max(1e-3)
    }
}
