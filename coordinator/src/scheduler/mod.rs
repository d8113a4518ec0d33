//! The scheduling policy: which worker gets which job, and what happens to every job until
//! its outcome is delivered.
//!
//! All scheduling state is one `Scheduler` inside a [`Hub`], behind a mutex that is held
//! for a few microseconds at a time and never across an `.await`. There is no scheduler task:
//! each party does its own step under the lock and leaves, so a job crosses no task of ours
//! on its way. A sender that finds the lock taken does not wait for it: it numbers its job
//! and leaves it for the holder to admit (see `admissions`).
//! [`JobSender::send`](crate::JobSender::send) hands a job straight to a connection's outbox
//! when a worker has credit; the connection that reads a result settles it and gives the
//! freed credit its next job; the result receiver takes outcomes in batches. Tasks are
//! woken only after the lock is released, and only when they wait.
//!
//! - **Credit**: a worker never holds more unanswered jobs than the capacity it declared;
//!   with adaptive windows (the default), than the window it has earned by answering
//!   faster with more in hand (see `window`).
//! - **Round-robin**: workers with free credit wait in a ring; each dispatch takes the
//!   first, gives it one job and puts it back at the end if it still has credit (O(1)).
//! - **Nothing lost**: every job stays in the in-flight table with its frame until its
//!   outcome is delivered. A lost worker's jobs (disconnect, missed heartbeats) and jobs
//!   that overrun their lease go back to the front of the line, up to `max_retries` times,
//!   after which the job is reported as failed.
//! - **Exactly-once delivery**: the first outcome for a job wins; later ones are dropped.
//! - **Backpressure**: jobs wait in a bounded line (see [`queue`](crate::queue)); once
//!   `result_capacity` outcomes wait for the receiver, dispatching pauses until it catches up.
//! - **End of work**: once the job side is closed and every job has its outcome, every
//!   worker is told end-of-work and the results end.
//!
//! One file per part:
//!
//! - `admissions`: jobs left, numbered, by senders that found the lock taken.
//! - `hub`: the scheduler behind its lock, every step the rest of the coordinator takes
//!   with it, the tasks woken once the lock is released, and the metrics it counts.
//! - `dispatch`: admitting new jobs, and handing waiting jobs to workers with credit.
//! - `workers`: the connected workers, their credit, and the round-robin ring.
//! - `window`: each worker's credit window, grown while a larger one makes it faster.
//! - `ledger`: the in-flight table (first outcome wins, handler failures retried, lost
//!   jobs requeued) and the leases.
//! - `outcomes`: outcomes waiting for the result receiver, and the end of work.
//! - `cancel`: a job cancelled by its sender, wherever it is.
//! - `pause`: a worker pausing (giving back the jobs it had not started) and resuming.
//! - `replicate`: replication: a job's results are votes, delivered once enough workers
//!   agree; the workers whose results lost are counted.
//! - `resume`: reconnect grace: a lost worker's jobs kept for its return with its session.
//! - `speculate`: straggler speculation: at the end of a run, a slow worker's jobs also go
//!   to an idle, faster one.
//! - `report`: what the coordinator reports about its workers and at shutdown.
//! - `tests`: the scheduler driven directly, without sockets.

mod admissions;
mod cancel;
mod dispatch;
mod hub;
mod ledger;
mod outcomes;
mod pause;
mod replicate;
mod report;
mod resume;
mod speculate;
#[cfg(test)]
mod tests;
mod window;
mod workers;

use std::collections::VecDeque;

use distchan_protocol::{wire::JobFrame, JobId};
use tokio::time::Instant;

use crate::{config::Config, queue::JobQueue, stats::Tallies};

pub(crate) use hub::{Batch, Hub, Submit, Take};
pub(crate) use outcomes::RawOutcome;
pub use report::{ShutdownReport, WorkerShare, WorkerSnapshot, MAX_SHARES};
pub(crate) use window::START as START_WINDOW;

use ledger::Ledger;
use resume::Grace;
use workers::Workers;

/// A connected worker's id, unique for the coordinator's lifetime.
pub(crate) type WorkerId = u64;

/// Ids of values workers emit on their own start here, apart from job ids.
pub(crate) const EMITTED_ID_BASE: u64 = 1 << 63;

/// Every job, worker and undelivered outcome; see the [module docs](self).
struct Scheduler {
    /// The settings in force.
    config: Config,
    /// Jobs waiting for a worker.
    queue: JobQueue,
    /// Jobs between their first dispatch and the delivery of their outcome, and their leases.
    ledger: Ledger,
    /// The connected workers, their credit and the ring of those with some free.
    workers: Workers,
    /// Sessions, and the lost workers whose jobs wait for their return.
    grace: Grace,
    /// The id the next admitted job gets.
    next_id: u64,
    /// Jobs senders left while the lock was taken (see `admissions`), taken from there and
    /// being admitted, in id order.
    left: VecDeque<(JobId, JobFrame)>,
    /// Jobs at the front of the line that the last dispatch round could give to no one
    /// (every worker with credit already holds them, after their lease ran out).
    stuck: usize,
    /// Outcomes waiting for the result receiver.
    outcomes: VecDeque<RawOutcome>,
    /// True while a result receiver exists to take outcomes.
    receiver: bool,
    /// The id the next value a worker emits on its own gets.
    next_emitted: u64,
    /// The workers that left after answering jobs (up to [`MAX_SHARES`]).
    departed: Vec<WorkerShare>,
    /// What replication keeps between jobs (see `replicate`); boxed, as most runs do not
    /// replicate.
    replication: Box<replicate::Replication>,
    /// When speculation last looked for stragglers (see `speculate`).
    speculated_at: Option<Instant>,
    /// True once every worker was told end-of-work.
    end_sent: bool,
    /// True once the coordinator has shut down.
    shut_down: bool,
    /// Counts not yet published to the Prometheus metrics.
    tallies: Tallies,
}

impl Scheduler {
    /// A scheduler for a coordinator with (`jobs`) or without a job side, and with
    /// (`results`) or without a result side.
    fn new(config: Config, jobs: bool, results: bool) -> Self {
        let mut workers = Workers::default();
        workers.set_turn_max(if config.strict_turns {
            1
        } else {
            config.max_turn
        });
        Scheduler {
            queue: JobQueue::new(jobs),
            ledger: Ledger::default(),
            workers,
            grace: Grace::default(),
            next_id: 0,
            left: VecDeque::new(),
            stuck: 0,
            outcomes: VecDeque::new(),
            receiver: results,
            next_emitted: EMITTED_ID_BASE,
            departed: Vec::new(),
            replication: Box::default(),
            speculated_at: None,
            end_sent: false,
            shut_down: false,
            tallies: Tallies::default(),
            config,
        }
    }
}
