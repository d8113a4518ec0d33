//! The scheduling policy: which worker gets which job, and what happens to every job until
//! its outcome is delivered.
//!
//! One task owns all scheduling state, so there is no lock on the hot path. Connections
//! talk to it through [`Event`]s; it talks to each connection through that connection's
//! [`Outgoing`] channel.
//!
//! - **Credit**: a worker never holds more unanswered jobs than the capacity it declared.
//! - **Round-robin**: workers with free credit wait in a ring; each dispatch takes the
//!   first, gives it one job and puts it back at the end if it still has credit (O(1)).
//! - **Nothing lost**: every dispatched job stays in the in-flight table with its payload
//!   until its outcome is delivered. A lost worker's jobs (disconnect, missed heartbeats)
//!   and jobs that overrun their lease go back to the front of the queue, up to
//!   `max_retries` times, after which the job is reported as failed.
//! - **Exactly-once delivery**: the first outcome for a job wins; later ones are dropped.
//! - **End of work**: once the job side is closed, the queue is empty and the table is
//!   empty, every worker is told end-of-work and the results channel ends.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use distchan_protocol::{
    wire::{Job, Outcome, WorkerKind},
    Error, JobId,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{sleep_until, Instant},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    queue::{JobQueue, QueuedJob},
    result::RawOutcome,
    stats::Counters,
};

/// A connected worker's id, unique for the coordinator's lifetime.
pub(crate) type WorkerId = u64;

/// Ids of values workers emit on their own start here, apart from job ids.
pub const EMITTED_ID_BASE: u64 = 1 << 63;

/// What the scheduler asks a connection to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Job(Job),
    EndOfWork,
    Close { code: u16, reason: String },
}

/// What a connection reports to the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    /// A worker finished its handshake; the reply carries its id, or `None` when the
    /// coordinator is shutting down.
    Join {
        agent: String,
        kind: WorkerKind,
        addr: SocketAddr,
        capacity: u32,
        tx: mpsc::UnboundedSender<Outgoing>,
        /// Milliseconds since the coordinator started when the worker was last heard from.
        last_seen: Arc<AtomicU64>,
        reply: oneshot::Sender<Option<WorkerId>>,
    },
    /// Asks for a description of every connected worker.
    Snapshot(oneshot::Sender<Vec<WorkerSnapshot>>),
    Result {
        worker: WorkerId,
        id: JobId,
        outcome: Outcome,
    },
    Emit {
        payload: Bytes,
    },
    Drain {
        worker: WorkerId,
    },
    Leave {
        worker: WorkerId,
        reason: String,
    },
}

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
    /// The credit window granted.
    pub capacity: usize,
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
    /// Jobs sent but never answered: queued, in flight, or still in the channel.
    pub unfinished: Vec<JobId>,
    /// Workers connected when the coordinator shut down.
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running { worker: WorkerId, dispatch: u32 },
}

/// A job between leaving the channel and the delivery of its outcome.
struct Entry {
    payload: Bytes,
    /// When the job entered the line (for the dispatch-wait histogram).
    queued_at: Instant,
    /// When it was last sent to a worker (for the round-trip histogram).
    dispatched_at: Instant,
    state: State,
    /// Times the job was dispatched (for lease bookkeeping).
    dispatches: u32,
    /// Times the job was lost with its worker or its lease.
    lost: u32,
    /// Times its handler failed and it was retried.
    handler_failures: u32,
}

struct Worker {
    agent: String,
    kind: WorkerKind,
    addr: SocketAddr,
    joined: Instant,
    last_seen: Arc<AtomicU64>,
    done: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
    capacity: usize,
    held: HashSet<JobId>,
    draining: bool,
    in_ring: bool,
}

impl Worker {
    fn free(&self) -> usize {
        if self.draining {
            0
        } else {
            self.capacity.saturating_sub(self.held.len())
        }
    }
}

struct Lease {
    deadline: Instant,
    id: JobId,
    dispatch: u32,
}

/// Handles the scheduler shares with the [`Coordinator`](crate::Coordinator).
pub(crate) struct SchedulerHandles {
    /// When the coordinator started; `last_seen` values count from here.
    pub epoch: Instant,
    pub workers: watch::Sender<usize>,
    pub finished: watch::Sender<bool>,
    pub counters: Arc<Counters>,
    pub cancel: CancellationToken,
}

pub(crate) struct Scheduler {
    config: Config,
    queue: JobQueue,
    table: HashMap<JobId, Entry>,
    workers: HashMap<WorkerId, Worker>,
    ring: VecDeque<WorkerId>,
    free_credit: usize,
    /// Jobs at the front of the line that the last dispatch round could give to no one.
    stuck: usize,
    leases: VecDeque<Lease>,
    results: Option<mpsc::Sender<RawOutcome>>,
    next_worker: WorkerId,
    next_emitted: u64,
    end_sent: bool,
    handles: SchedulerHandles,
}

enum Wake {
    /// Some events arrived (in `events_buf`), or none: every sender is gone.
    Events(usize),
    NewJobs,
    Lease,
    Cancelled,
}

impl Scheduler {
    pub fn new(
        config: Config,
        jobs: Option<mpsc::Receiver<QueuedJob>>,
        results: Option<mpsc::Sender<RawOutcome>>,
        handles: SchedulerHandles,
    ) -> Self {
        Scheduler {
            config,
            queue: JobQueue::new(jobs),
            table: HashMap::default(),
            workers: HashMap::default(),
            ring: VecDeque::new(),
            free_credit: 0,
            stuck: 0,
            leases: VecDeque::new(),
            results,
            next_worker: 1,
            next_emitted: EMITTED_ID_BASE,
            end_sent: false,
            handles,
        }
    }

    /// Runs until the coordinator is cancelled (or every connection and handle is gone).
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) -> ShutdownReport {
        let mut buf = Vec::with_capacity(256);
        let mut events_buf = Vec::with_capacity(256);
        let cancel = self.handles.cancel.clone();
        loop {
            self.dispatch_waiting();
            self.publish_gauges();
            self.maybe_finish();
            // New jobs are taken when the line is empty, or when all it holds are jobs that
            // no worker with credit can take yet (their lease ran out at the only candidates).
            let all_stuck = self.queue.waiting() <= self.stuck && self.free_credit > 0;
            let want_new = self.queue.is_open() && (self.queue.waiting() == 0 || all_stuck);
            let limit = self.free_credit.clamp(1, 256);
            let lease = self.leases.front().map(|l| l.deadline);
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => Wake::Cancelled,
                n = events.recv_many(&mut events_buf, 256) => Wake::Events(n),
                _ = self.queue.recv_new(&mut buf, limit), if want_new => Wake::NewJobs,
                _ = sleep_until(lease.unwrap_or_else(Instant::now)), if lease.is_some() => Wake::Lease,
            };
            match wake {
                Wake::Cancelled | Wake::Events(0) => break,
                Wake::Events(_) => {
                    for ev in events_buf.drain(..) {
                        self.handle(ev).await;
                    }
                }
                Wake::NewJobs => {
                    let now = Instant::now();
                    for job in buf.drain(..) {
                        self.table.insert(
                            job.id,
                            Entry {
                                payload: job.payload,
                                queued_at: now,
                                dispatched_at: now,
                                state: State::Waiting,
                                dispatches: 0,
                                lost: 0,
                                handler_failures: 0,
                            },
                        );
                        self.queue.push_back(job.id);
                    }
                }
                Wake::Lease => self.expire_leases().await,
            }
        }
        self.shut_down()
    }

    fn shut_down(mut self) -> ShutdownReport {
        // Jobs in the line are in the table already; the channel's are not.
        let mut unfinished: Vec<JobId> = self.table.keys().copied().collect();
        let never_taken: Vec<JobId> = self.queue.close();
        unfinished.extend(
            never_taken
                .into_iter()
                .filter(|id| !self.table.contains_key(id)),
        );
        unfinished.sort_unstable();
        for worker in self.workers.values() {
            let _ = worker.tx.send(Outgoing::Close {
                code: distchan_protocol::wire::CLOSE_GOING_AWAY,
                reason: "the coordinator is shutting down".into(),
            });
        }
        self.results = None;
        let _ = self.handles.workers.send(0);
        ShutdownReport {
            unfinished,
            workers: self.workers.len(),
        }
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Event::Join {
                agent,
                kind,
                addr,
                capacity,
                tx,
                last_seen,
                reply,
            } => {
                let id = self.next_worker;
                self.next_worker += 1;
                tracing::debug!(worker = id, %agent, ?kind, %addr, capacity, "worker registered");
                let capacity = capacity.clamp(1, self.config.max_capacity.max(1)) as usize;
                if self.end_sent {
                    let _ = tx.send(Outgoing::EndOfWork);
                }
                self.workers.insert(
                    id,
                    Worker {
                        agent,
                        kind,
                        addr,
                        joined: Instant::now(),
                        last_seen,
                        done: 0,
                        tx,
                        capacity,
                        held: HashSet::default(),
                        draining: false,
                        in_ring: true,
                    },
                );
                self.ring.push_back(id);
                self.free_credit += capacity;
                if reply.send(Some(id)).is_err() {
                    // The connection vanished during its handshake.
                    self.remove_worker(id, "gone during handshake").await;
                }
                let _ = self.handles.workers.send(self.workers.len());
            }
            Event::Result {
                worker,
                id,
                outcome,
            } => self.on_result(worker, id, outcome).await,
            Event::Emit { payload } => {
                let id = JobId(self.next_emitted);
                self.next_emitted += 1;
                self.deliver(RawOutcome {
                    id,
                    worker: None,
                    result: Ok(payload),
                })
                .await;
            }
            Event::Drain { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    self.free_credit -= w.free();
                    w.draining = true;
                }
            }
            Event::Leave { worker, reason } => self.remove_worker(worker, &reason).await,
        }
    }

    /// Takes the first worker of the ring that still has credit.
    /// Takes the first worker of the ring that has credit and does not already hold `job`
    /// (it may, when the job's lease ran out while that worker still works on it).
    fn pick(&mut self, job: JobId) -> Option<WorkerId> {
        let mut passed = 0;
        while passed < self.ring.len() {
            let id = self.ring.pop_front()?;
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.free() == 0 {
                w.in_ring = false;
            } else if w.held.contains(&job) {
                self.ring.push_back(id);
                passed += 1;
            } else {
                return Some(id);
            }
        }
        None
    }

    fn dispatch_waiting(&mut self) {
        // Jobs every worker with credit already holds wait for the next round.
        let mut deferred = Vec::new();
        while self.free_credit > 0 {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            match self.table.get(&id) {
                Some(entry) if entry.state == State::Waiting => {}
                _ => continue, // answered meanwhile
            }
            let Some(wid) = self.pick(id) else {
                deferred.push(id);
                if self.ring.is_empty() {
                    break;
                }
                continue;
            };
            let entry = self.table.get_mut(&id).expect("checked above");
            let w = self.workers.get_mut(&wid).expect("picked workers exist");
            let now = Instant::now();
            if entry.dispatches == 0 {
                self.handles
                    .counters
                    .dispatch_wait
                    .observe(secs(now - entry.queued_at));
            }
            entry.dispatched_at = now;
            entry.dispatches += 1;
            entry.state = State::Running {
                worker: wid,
                dispatch: entry.dispatches,
            };
            w.held.insert(id);
            self.free_credit -= 1;
            // A send error means the connection is gone; its Leave event will requeue the job.
            let _ = w.tx.send(Outgoing::Job(Job {
                id,
                payload: entry.payload.clone(),
            }));
            if w.free() > 0 {
                self.ring.push_back(wid);
            } else {
                w.in_ring = false;
            }
            if let Some(lease) = self.config.lease {
                self.leases.push_back(Lease {
                    deadline: now + lease,
                    id,
                    dispatch: entry.dispatches,
                });
            }
            self.handles.counters.dispatched.inc();
        }
        self.stuck = deferred.len();
        self.queue.requeue_front(deferred);
    }

    /// Gives a worker its credit back for one job.
    fn release(&mut self, worker: WorkerId, id: JobId) -> bool {
        let Some(w) = self.workers.get_mut(&worker) else {
            return false;
        };
        if !w.held.remove(&id) {
            return false;
        }
        if !w.draining {
            self.free_credit += 1;
            if !w.in_ring {
                w.in_ring = true;
                self.ring.push_back(worker);
            }
        }
        true
    }

    async fn on_result(&mut self, worker: WorkerId, id: JobId, outcome: Outcome) {
        if !self.release(worker, id) {
            tracing::debug!(worker, %id, "result for a job this worker does not hold; dropped");
            self.handles.counters.duplicates.inc();
            return;
        }
        let Some(entry) = self.table.get_mut(&id) else {
            self.handles.counters.duplicates.inc();
            return; // already answered by another worker
        };
        if let Err(message) = &outcome {
            let running_here =
                matches!(entry.state, State::Running { worker: w, .. } if w == worker);
            if !running_here {
                return; // another worker has this job now; wait for its answer
            }
            if entry.handler_failures < self.config.handler_retries {
                entry.handler_failures += 1;
                entry.state = State::Waiting;
                tracing::debug!(%id, %message, "handler failed; retrying");
                self.queue.requeue_front(vec![id]);
                return;
            }
        }
        let entry = self.table.remove(&id).expect("checked above");
        self.handles
            .counters
            .round_trip
            .observe(secs(entry.dispatched_at.elapsed()));
        if let Some(w) = self.workers.get_mut(&worker) {
            w.done += 1;
        }
        let result = outcome.map_err(Error::Handler);
        self.deliver(RawOutcome {
            id,
            worker: Some(worker),
            result,
        })
        .await;
    }

    async fn remove_worker(&mut self, worker: WorkerId, reason: &str) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.free_credit -= w.free();
        let running_here = |entry: &Entry| {
            entry.state
                == State::Running {
                    worker,
                    dispatch: entry.dispatches,
                }
        };
        let lost: Vec<JobId> = w
            .held
            .into_iter()
            .filter(|id| self.table.get(id).is_some_and(running_here))
            .collect();
        if !lost.is_empty() {
            tracing::info!(
                worker,
                reason,
                jobs = lost.len(),
                "worker lost with jobs in flight"
            );
        }
        self.requeue_or_fail(lost).await;
        let _ = self.handles.workers.send(self.workers.len());
    }

    async fn expire_leases(&mut self) {
        let now = Instant::now();
        let mut lost = Vec::new();
        while let Some(lease) = self.leases.front() {
            if lease.deadline > now {
                break;
            }
            let lease = self.leases.pop_front().expect("front exists");
            let Some(entry) = self.table.get(&lease.id) else {
                continue;
            };
            let State::Running { worker, dispatch } = entry.state else {
                continue;
            };
            if dispatch != lease.dispatch {
                continue;
            }
            // The worker keeps the job (and its credit) until it answers or leaves; the job
            // itself goes to someone else.
            tracing::info!(worker, id = %lease.id, "lease overrun; dispatching the job again");
            lost.push(lease.id);
        }
        self.requeue_or_fail(lost).await;
    }

    /// Counts a loss for each job: puts it back at the front of the line, or reports it failed
    /// once it was lost more than `max_retries` times.
    async fn requeue_or_fail(&mut self, lost: Vec<JobId>) {
        let mut requeue = Vec::with_capacity(lost.len());
        let mut failed = Vec::new();
        for id in lost {
            let entry = self.table.get_mut(&id).expect("lost jobs are in the table");
            entry.lost += 1;
            if entry.lost > self.config.max_retries {
                failed.push((id, entry.lost));
            } else {
                entry.state = State::Waiting;
                requeue.push(id);
            }
        }
        self.handles
            .counters
            .redelivered
            .inc_by(requeue.len() as u64);
        self.queue.requeue_front(requeue);
        for (id, attempts) in failed {
            self.table.remove(&id);
            let result = Err(Error::WorkerLost { attempts });
            self.deliver(RawOutcome {
                id,
                worker: None,
                result,
            })
            .await;
        }
    }

    /// Hands an outcome to the results channel, waiting while it is full (that wait is the
    /// backpressure that slows dispatching down to the receiver's pace).
    async fn deliver(&mut self, outcome: RawOutcome) {
        let counter = if outcome.result.is_ok() {
            &self.handles.counters.completed
        } else {
            &self.handles.counters.failed
        };
        counter.inc();
        let Some(tx) = &self.results else { return };
        let outcome = match tx.try_send(outcome) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.results = None;
                return;
            }
            Err(mpsc::error::TrySendError::Full(outcome)) => outcome,
        };
        tokio::select! {
            sent = tx.send(outcome) => {
                if sent.is_err() {
                    // The receiver was dropped: outcomes from now on are counted, not kept.
                    self.results = None;
                }
            }
            _ = self.handles.cancel.cancelled() => {}
        }
    }

    fn maybe_finish(&mut self) {
        if self.end_sent
            || !self.queue.is_closed()
            || self.queue.waiting() > 0
            || !self.table.is_empty()
        {
            return;
        }
        self.end_sent = true;
        tracing::info!(
            workers = self.workers.len(),
            "all jobs answered; sending end-of-work"
        );
        for w in self.workers.values() {
            let _ = w.tx.send(Outgoing::EndOfWork);
        }
        self.results = None;
        let _ = self.handles.finished.send(true);
    }

    fn snapshot(&self) -> Vec<WorkerSnapshot> {
        let now_ms = self.handles.epoch.elapsed().as_millis() as u64;
        let mut out: Vec<WorkerSnapshot> = self
            .workers
            .iter()
            .map(|(&id, w)| WorkerSnapshot {
                id,
                agent: w.agent.clone(),
                kind: format!("{:?}", w.kind).to_lowercase(),
                addr: w.addr,
                capacity: w.capacity,
                in_flight: w.held.len(),
                done: w.done,
                last_seen_ms: now_ms.saturating_sub(w.last_seen.load(Ordering::Relaxed)),
                connected_ms: w.joined.elapsed().as_millis() as u64,
                draining: w.draining,
            })
            .collect();
        out.sort_by_key(|w| w.id);
        out
    }

    fn publish_gauges(&self) {
        let c = &self.handles.counters;
        c.workers.set(self.workers.len() as i64);
        c.queued
            .set((self.queue.waiting() + self.queue.in_channel()) as i64);
        c.in_flight
            .set(self.table.len().saturating_sub(self.queue.waiting()) as i64);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
