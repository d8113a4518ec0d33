//! The scheduling policy: which worker gets which job, and what happens to every job until
//! its outcome is delivered.
//!
//! All scheduling state is one `Scheduler` inside a `Hub`, behind a mutex that is held
//! for a few microseconds at a time and never across an `.await`. There is no scheduler task:
//! each party does its own step under the lock and leaves, so a job crosses no task of ours
//! on its way. [`JobSender::send`](crate::JobSender::send) hands a job straight to a
//! connection's outbox when a worker has credit; the connection that reads a result settles
//! it and gives the freed credit its next job; the result receiver takes outcomes in
//! batches. Tasks are woken only after the lock is released, and only when they wait.
//!
//! - **Credit**: a worker never holds more unanswered jobs than the capacity it declared.
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

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::Bytes;
use distchan_protocol::{
    wire::{JobFrameBuilder, JobResult, WorkerKind},
    Error, JobId,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use smallvec::SmallVec;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use crate::{
    config::Config,
    connection::{Incoming, Joining, Outgoing},
    queue::{JobQueue, NewJob, Room, RoomError, Waiting},
    stats::{Counters, Gauges, Stats, Tallies},
};

/// An outcome as the scheduler delivers it: still encoded.
#[derive(Debug)]
pub(crate) struct RawOutcome {
    /// The job's id (or an emitted value's, from [`EMITTED_ID_BASE`] up).
    pub id: JobId,
    /// The worker whose answer this is; `None` when no worker answered.
    pub worker: Option<WorkerId>,
    /// The encoded result, or why there is none.
    pub result: Result<Bytes, Error>,
}

/// A connected worker's id, unique for the coordinator's lifetime.
pub(crate) type WorkerId = u64;

/// Ids of values workers emit on their own start here, apart from job ids.
pub const EMITTED_ID_BASE: u64 = 1 << 63;

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
    /// Jobs sent but never answered: waiting for a worker or in flight.
    pub unfinished: Vec<JobId>,
    /// Workers connected when the coordinator shut down.
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running { worker: WorkerId, dispatch: u32 },
}

/// A job between its first dispatch and the delivery of its outcome.
struct Entry {
    /// The complete job frame, sent again as it is when the job is dispatched again.
    frame: Bytes,
    /// When it was last sent to a worker (for the round-trip histogram).
    at: Instant,
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
    capacity: usize,
    /// Jobs it holds: those running on it, and those in `superseded`.
    held: usize,
    /// Jobs it still holds that run elsewhere now, or were answered by another worker or
    /// are waiting again after their lease ran out. Usually empty.
    superseded: HashSet<JobId>,
    draining: bool,
    in_ring: bool,
    /// What the connection's writer sends next.
    outbox: Vec<Outgoing>,
    /// Wakes the connection's writer.
    wake: Arc<Notify>,
}

impl Worker {
    fn free(&self) -> usize {
        if self.draining {
            0
        } else {
            self.capacity.saturating_sub(self.held)
        }
    }

    fn send(&mut self, out: Outgoing, wakes: &mut Wakes) {
        if self.outbox.is_empty() {
            wakes.writers.push(self.wake.clone());
        }
        self.outbox.push(out);
    }
}

struct Lease {
    deadline: Instant,
    id: JobId,
    dispatch: u32,
}

/// What to do once the lock is released: tasks to wake.
#[derive(Default)]
pub(crate) struct Wakes {
    writers: SmallVec<[Arc<Notify>; 4]>,
    results: bool,
    room: usize,
    leases: bool,
    workers: Option<usize>,
    finished: bool,
}

/// Every job, worker and undelivered outcome; see the [module docs](self).
pub(crate) struct Scheduler {
    config: Config,
    queue: JobQueue,
    table: HashMap<JobId, Entry>,
    next_id: u64,
    workers: HashMap<WorkerId, Worker>,
    ring: VecDeque<WorkerId>,
    free_credit: usize,
    /// Jobs at the front of the line that the last dispatch round could give to no one
    /// (every worker with credit already holds them, after their lease ran out).
    stuck: usize,
    leases: VecDeque<Lease>,
    /// Outcomes waiting for the result receiver.
    outcomes: VecDeque<RawOutcome>,
    /// True while a result receiver exists to take outcomes.
    receiver: bool,
    next_worker: WorkerId,
    next_emitted: u64,
    end_sent: bool,
    shut_down: bool,
    /// Counts not yet published to the Prometheus metrics.
    tallies: Tallies,
    /// Jobs in the table that wait for a worker again (taken back, not yet sent again).
    waiting_again: usize,
}

/// The scheduler behind its lock, and what is woken outside it.
pub(crate) struct Hub {
    state: Mutex<Scheduler>,
    /// Places in the line of waiting jobs; a sender that finds none waits here.
    room: Room,
    /// Wakes the result receiver.
    results_ready: Notify,
    /// Wakes the lease keeper when the first lease is taken.
    leases_changed: Notify,
    counters: Arc<Counters>,
    /// When the coordinator started; `last_seen` values count from here.
    epoch: Instant,
    workers_watch: watch::Sender<usize>,
    finished_watch: watch::Sender<bool>,
}

/// What [`Hub::try_submit`] did with a job.
pub(crate) enum Submit {
    /// Admitted with this id.
    Sent(JobId),
    /// The line is full: wait for room, then submit again with it.
    NoRoom(JobFrameBuilder),
    /// The coordinator has shut down.
    Closed,
}

/// What [`Hub::try_submit_many`] did with a batch of jobs.
pub(crate) enum Batch {
    /// Every job was admitted.
    Done,
    /// The line is full: wait for room, then submit the rest with it.
    NoRoom,
    /// The coordinator has shut down.
    Closed,
}

/// What [`Hub::take_outcomes`] found.
pub(crate) enum Take {
    /// Some outcomes were moved into the caller's buffer.
    Some,
    /// None yet: wait for [`Hub::outcomes_ready`].
    Wait,
    /// None, and none will come.
    End,
}

impl Hub {
    /// A hub for a coordinator with (`jobs`) or without a job side, and with (`results`) or
    /// without a result side.
    pub fn new(
        config: Config,
        jobs: bool,
        results: bool,
        counters: Arc<Counters>,
        epoch: Instant,
    ) -> Self {
        let room = Room::new(config.queue_capacity);
        Hub {
            state: Mutex::new(Scheduler {
                queue: JobQueue::new(jobs),
                table: HashMap::default(),
                next_id: 0,
                workers: HashMap::default(),
                ring: VecDeque::new(),
                free_credit: 0,
                stuck: 0,
                leases: VecDeque::new(),
                outcomes: VecDeque::new(),
                receiver: results,
                next_worker: 1,
                next_emitted: EMITTED_ID_BASE,
                end_sent: false,
                shut_down: false,
                tallies: Tallies::default(),
                waiting_again: 0,
                config,
            }),
            room,
            results_ready: Notify::new(),
            leases_changed: Notify::new(),
            counters,
            epoch,
            workers_watch: watch::channel(0).0,
            finished_watch: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // A panic under the lock is a bug; the state is still the best there is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` under the lock, then wakes whom it asked for.
    fn with<T>(&self, f: impl FnOnce(&mut Scheduler, &mut Wakes) -> T) -> T {
        let mut wakes = Wakes::default();
        let out = {
            let mut s = self.lock();
            let out = f(&mut s, &mut wakes);
            // Under the lock: counts from joins and leaves on other threads are never
            // published out of order.
            if let Some(n) = wakes.workers.take() {
                self.workers_watch
                    .send_replace(if s.shut_down { 0 } else { n });
            }
            out
        };
        self.wake(wakes);
        out
    }

    /// Publishes what the scheduler counted to the Prometheus metrics.
    pub fn publish_metrics(&self) {
        let (tallies, gauges) = {
            let mut s = self.lock();
            let gauges = Gauges {
                workers: s.workers.len(),
                queued: s.queue.waiting() - s.queue.again() + s.waiting_again,
                in_flight: s.table.len() - s.waiting_again,
            };
            (std::mem::take(&mut s.tallies), gauges)
        };
        self.counters.publish(&tallies, gauges);
    }

    /// A snapshot of the counters, up to date.
    pub fn stats(&self) -> Stats {
        self.publish_metrics();
        self.counters.snapshot()
    }

    /// Every metric in the Prometheus text format, up to date.
    pub fn render_metrics(&self) -> String {
        self.publish_metrics();
        self.counters.render()
    }

    fn wake(&self, wakes: Wakes) {
        for writer in &wakes.writers {
            writer.notify_one();
        }
        if wakes.results {
            self.results_ready.notify_one();
        }
        if wakes.room > 0 {
            self.room.give_back(wakes.room);
        }
        if wakes.leases {
            self.leases_changed.notify_one();
        }
        if wakes.finished {
            self.finished_watch.send_replace(true);
        }
    }

    /// Admits a job: gives it the next id and dispatches it, or puts it in the line. With
    /// `has_room` the caller holds a place in the line (from [`Hub::wait_for_room`]).
    pub fn try_submit(&self, frame: JobFrameBuilder, has_room: bool) -> Submit {
        self.with(|s, wakes| {
            let now = Instant::now();
            let submitted = self.admit_one(s, frame, has_room, now, wakes);
            s.dispatch(now, wakes);
            submitted
        })
    }

    /// Admits jobs from the front of `frames`, in order, in one step, until none is left,
    /// the line is full ([`Batch::NoRoom`]: the rest stay in `frames`) or the coordinator
    /// has shut down. Their ids are appended to `ids`. With `has_room` the caller holds a
    /// place in the line for the first of them.
    pub fn try_submit_many(
        &self,
        frames: &mut VecDeque<JobFrameBuilder>,
        mut has_room: bool,
        ids: &mut Vec<JobId>,
    ) -> Batch {
        self.with(|s, wakes| {
            let now = Instant::now();
            let mut outcome = Batch::Done;
            while let Some(frame) = frames.pop_front() {
                match self.admit_one(s, frame, std::mem::take(&mut has_room), now, wakes) {
                    Submit::Sent(id) => ids.push(id),
                    Submit::NoRoom(frame) => {
                        frames.push_front(frame);
                        outcome = Batch::NoRoom;
                        break;
                    }
                    Submit::Closed => {
                        outcome = Batch::Closed;
                        break;
                    }
                }
            }
            s.dispatch(now, wakes);
            outcome
        })
    }

    /// [`Hub::try_submit`]'s step for one job, under the lock (the caller dispatches).
    fn admit_one(
        &self,
        s: &mut Scheduler,
        frame: JobFrameBuilder,
        mut has_room: bool,
        now: Instant,
        wakes: &mut Wakes,
    ) -> Submit {
        if s.shut_down {
            if has_room {
                wakes.room += 1;
            }
            return Submit::Closed;
        }
        let direct = s.can_dispatch_new();
        if !direct && !has_room {
            match self.room.try_take() {
                Ok(()) => has_room = true,
                Err(RoomError::Full) => return Submit::NoRoom(frame),
                Err(RoomError::Closed) => return Submit::Closed,
            }
        }
        Submit::Sent(s.admit(frame, has_room, direct, now, wakes))
    }

    /// Waits for a place in the line; `false` once the coordinator has shut down.
    pub async fn wait_for_room(&self) -> bool {
        self.room.take().await
    }

    /// Every sender is gone: no more jobs will come.
    pub fn close_jobs(&self) {
        self.with(|s, wakes| {
            s.queue.close();
            s.maybe_finish(wakes);
        });
    }

    /// True once the coordinator has shut down.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Registers a worker that finished its handshake; `None` when shutting down. The
    /// writer waits on the returned [`Notify`] for its outbox.
    pub fn join(&self, joining: Joining) -> Option<(WorkerId, Arc<Notify>)> {
        self.with(|s, wakes| s.join(joining, wakes))
    }

    /// Moves what the worker's writer must send next into `out` (which should be empty).
    pub fn take_outbox(&self, worker: WorkerId, out: &mut Vec<Outgoing>) {
        let mut s = self.lock();
        if let Some(w) = s.workers.get_mut(&worker) {
            std::mem::swap(&mut w.outbox, out);
        }
    }

    /// Settles what a connection read, in order.
    pub fn settle(&self, worker: WorkerId, batch: &mut Vec<Incoming>) {
        self.with(|s, wakes| {
            let now = Instant::now();
            for item in batch.drain(..) {
                match item {
                    Incoming::Result(r) => s.on_result(worker, r, now, wakes),
                    Incoming::Emit(payload) => {
                        let id = JobId(s.next_emitted);
                        s.next_emitted += 1;
                        s.deliver(id, None, Ok(payload), wakes);
                    }
                    Incoming::Drain => {
                        tracing::info!(worker, "worker is draining");
                        if let Some(w) = s.workers.get_mut(&worker) {
                            s.free_credit -= w.free();
                            w.draining = true;
                        }
                    }
                }
            }
            s.dispatch(now, wakes);
            s.maybe_finish(wakes);
        });
    }

    /// The worker's connection ended: its unanswered jobs go to others.
    pub fn leave(&self, worker: WorkerId, reason: &str) {
        self.with(|s, wakes| {
            s.remove_worker(worker, reason, wakes);
            let now = Instant::now();
            s.dispatch(now, wakes);
            s.maybe_finish(wakes);
        });
    }

    /// Moves the outcomes waiting for the receiver into `into`.
    pub fn take_outcomes(&self, into: &mut VecDeque<RawOutcome>) -> Take {
        self.with(|s, wakes| {
            if s.outcomes.is_empty() {
                return if s.end_sent || s.shut_down {
                    Take::End
                } else {
                    Take::Wait
                };
            }
            let was_full = s.outcomes_full();
            std::mem::swap(&mut s.outcomes, into);
            if was_full {
                s.dispatch(Instant::now(), wakes);
            }
            Take::Some
        })
    }

    /// Waits until [`Hub::take_outcomes`] may find something.
    pub async fn outcomes_ready(&self) {
        self.results_ready.notified().await;
    }

    /// The result receiver is gone: outcomes are counted from now on, not kept.
    pub fn drop_receiver(&self) {
        self.with(|s, wakes| {
            let was_full = s.outcomes_full();
            s.receiver = false;
            s.outcomes = VecDeque::new();
            if was_full {
                s.dispatch(Instant::now(), wakes);
            }
        });
    }

    /// The earliest lease deadline, if any job has a lease.
    pub fn next_lease(&self) -> Option<Instant> {
        self.lock().leases.front().map(|l| l.deadline)
    }

    /// Waits until a lease is taken while none was.
    pub async fn leases_changed(&self) {
        self.leases_changed.notified().await;
    }

    /// Hands every job whose lease ran out to another worker.
    pub fn expire_leases(&self) {
        self.with(|s, wakes| {
            let now = Instant::now();
            s.expire_leases(now, wakes);
            s.dispatch(now, wakes);
            s.maybe_finish(wakes);
        });
    }

    /// Describes every connected worker.
    pub fn snapshot(&self) -> Vec<WorkerSnapshot> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let s = self.lock();
        let mut out: Vec<WorkerSnapshot> = s
            .workers
            .iter()
            .map(|(&id, w)| WorkerSnapshot {
                id,
                agent: w.agent.clone(),
                kind: format!("{:?}", w.kind).to_lowercase(),
                addr: w.addr,
                capacity: w.capacity,
                in_flight: w.held,
                done: w.done,
                last_seen_ms: now_ms.saturating_sub(w.last_seen.load(Ordering::Relaxed)),
                connected_ms: w.joined.elapsed().as_millis() as u64,
                draining: w.draining,
            })
            .collect();
        drop(s);
        out.sort_by_key(|w| w.id);
        out
    }

    /// Stops everything: tells every worker, ends the results, and reports the jobs that
    /// never got an outcome. Calling it again reports nothing new.
    pub fn shut_down(&self) -> ShutdownReport {
        self.room.close();
        self.with(|s, wakes| {
            if s.shut_down {
                return ShutdownReport::default();
            }
            s.shut_down = true;
            let mut unfinished: Vec<JobId> = s.table.keys().copied().collect();
            unfinished.extend(s.queue.new_ids());
            unfinished.sort_unstable();
            for w in s.workers.values_mut() {
                w.send(
                    Outgoing::Close {
                        code: distchan_protocol::wire::CLOSE_GOING_AWAY,
                        reason: "the coordinator is shutting down".into(),
                    },
                    wakes,
                );
            }
            wakes.results = true;
            wakes.workers = Some(0);
            ShutdownReport {
                unfinished,
                workers: s.workers.len(),
            }
        })
    }

    /// The number of connected workers, watched.
    pub fn watch_workers(&self) -> watch::Receiver<usize> {
        self.workers_watch.subscribe()
    }

    /// Whether end-of-work has been sent, watched.
    pub fn watch_finished(&self) -> watch::Receiver<bool> {
        self.finished_watch.subscribe()
    }
}

impl Scheduler {
    /// True when a new job can be dispatched at once: credit is free, nothing dispatchable
    /// waits ahead of it, and the receiver keeps up.
    fn can_dispatch_new(&self) -> bool {
        self.free_credit > 0 && self.queue.waiting() == self.stuck && !self.outcomes_full()
    }

    fn outcomes_full(&self) -> bool {
        self.receiver && self.outcomes.len() >= self.config.result_capacity.max(1)
    }

    /// Gives a job the next id and sends it to a worker at once when `direct`, else puts it
    /// in the line (the caller dispatches the line afterwards).
    fn admit(
        &mut self,
        frame: JobFrameBuilder,
        holds_room: bool,
        direct: bool,
        now: Instant,
        wakes: &mut Wakes,
    ) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        let job = NewJob {
            id,
            frame: frame.finish(id),
            at: now,
            holds_room,
        };
        // A new job is held by no one, so any worker with credit can take it.
        match if direct { self.pick(None) } else { None } {
            Some(wid) => self.send_new(job, wid, now, wakes),
            None => self.queue.push_back(job),
        }
        id
    }

    fn join(&mut self, j: Joining, wakes: &mut Wakes) -> Option<(WorkerId, Arc<Notify>)> {
        if self.shut_down {
            return None;
        }
        let id = self.next_worker;
        self.next_worker += 1;
        tracing::debug!(worker = id, agent = %j.agent, kind = ?j.kind, addr = %j.addr, capacity = j.capacity, "worker registered");
        let capacity = j.capacity.clamp(1, self.config.max_capacity.max(1)) as usize;
        let wake = Arc::new(Notify::new());
        let mut worker = Worker {
            agent: j.agent,
            kind: j.kind,
            addr: j.addr,
            joined: Instant::now(),
            last_seen: j.last_seen,
            done: 0,
            capacity,
            held: 0,
            superseded: HashSet::default(),
            draining: false,
            in_ring: true,
            outbox: Vec::new(),
            wake: wake.clone(),
        };
        if self.end_sent {
            worker.send(Outgoing::EndOfWork, wakes);
        }
        self.workers.insert(id, worker);
        self.ring.push_back(id);
        self.free_credit += capacity;
        wakes.workers = Some(self.workers.len());
        self.dispatch(Instant::now(), wakes);
        Some((id, wake))
    }

    /// Takes the first worker of the ring that has credit and does not already hold `job`
    /// (it may, when the job's lease ran out while that worker still works on it).
    fn pick(&mut self, job: Option<JobId>) -> Option<WorkerId> {
        let mut passed = 0;
        while passed < self.ring.len() {
            let id = self.ring.pop_front()?;
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.free() == 0 {
                w.in_ring = false;
            } else if job.is_some_and(|job| w.superseded.contains(&job)) {
                self.ring.push_back(id);
                passed += 1;
            } else {
                return Some(id);
            }
        }
        None
    }

    /// Gives every waiting job it can to a worker with credit, in line order.
    fn dispatch(&mut self, now: Instant, wakes: &mut Wakes) {
        if self.queue.is_empty() || self.free_credit == 0 || self.outcomes_full() {
            return;
        }
        // Jobs every worker with credit already holds wait for the next round.
        let mut deferred = Vec::new();
        while self.free_credit > 0 {
            let Some(waiting) = self.queue.pop_front() else {
                break;
            };
            match waiting {
                Waiting::New(job) => match self.pick(None) {
                    Some(wid) => self.send_new(job, wid, now, wakes),
                    None => deferred.push(Waiting::New(job)),
                },
                Waiting::Again(id) => {
                    match self.table.get(&id) {
                        Some(entry) if entry.state == State::Waiting => {}
                        _ => continue, // answered meanwhile
                    }
                    match self.pick(Some(id)) {
                        Some(wid) => self.send_again(id, wid, now, wakes),
                        None => deferred.push(Waiting::Again(id)),
                    }
                }
            }
            if self.ring.is_empty() {
                break;
            }
        }
        self.stuck = deferred.len();
        self.queue.defer(deferred);
    }

    /// Sends a new job to worker `wid`, which has credit for it.
    fn send_new(&mut self, job: NewJob, wid: WorkerId, now: Instant, wakes: &mut Wakes) {
        self.tallies.dispatch_wait.observe(now - job.at);
        if job.holds_room {
            wakes.room += 1;
        }
        let frame = job.frame.clone();
        self.table.insert(
            job.id,
            Entry {
                frame: job.frame,
                at: now,
                state: State::Running {
                    worker: wid,
                    dispatch: 1,
                },
                dispatches: 1,
                lost: 0,
                handler_failures: 0,
            },
        );
        self.hand_over(job.id, 1, frame, wid, now, wakes);
    }

    /// Sends job `id`, waiting again, to worker `wid`, which has credit for it.
    fn send_again(&mut self, id: JobId, wid: WorkerId, now: Instant, wakes: &mut Wakes) {
        let entry = self
            .table
            .get_mut(&id)
            .expect("waiting jobs are in the table");
        self.waiting_again -= 1;
        entry.at = now;
        entry.dispatches += 1;
        entry.state = State::Running {
            worker: wid,
            dispatch: entry.dispatches,
        };
        let (dispatch, frame) = (entry.dispatches, entry.frame.clone());
        self.hand_over(id, dispatch, frame, wid, now, wakes);
    }

    /// Puts the frame of job `id` (dispatched for the `dispatch`th time) in the outbox of
    /// worker `wid`, which holds one more job from now on.
    fn hand_over(
        &mut self,
        id: JobId,
        dispatch: u32,
        frame: Bytes,
        wid: WorkerId,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let w = self.workers.get_mut(&wid).expect("picked workers exist");
        w.held += 1;
        self.free_credit -= 1;
        w.send(Outgoing::Job(id, frame), wakes);
        if w.free() > 0 {
            self.ring.push_back(wid);
        } else {
            w.in_ring = false;
        }
        if let Some(lease) = self.config.lease {
            wakes.leases |= self.leases.is_empty();
            self.leases.push_back(Lease {
                deadline: now + lease,
                id,
                dispatch,
            });
            // Leases of answered jobs stay until their deadline; when they are most of the
            // line, drop them (amortized: at most one sweep per table's worth of dispatches).
            if self.leases.len() > 2 * self.table.len() + 1024 {
                let table = &self.table;
                self.leases.retain(|l| {
                    table.get(&l.id).is_some_and(
                        |e| matches!(e.state, State::Running { dispatch, .. } if dispatch == l.dispatch),
                    )
                });
            }
        }
        self.tallies.dispatched += 1;
    }

    fn on_result(&mut self, worker: WorkerId, r: JobResult, now: Instant, wakes: &mut Wakes) {
        let JobResult { id, outcome } = r;
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let mut slot = match self.table.entry(id) {
            std::collections::hash_map::Entry::Occupied(slot) => Some(slot),
            std::collections::hash_map::Entry::Vacant(_) => None,
        };
        let running_here = slot.as_ref().is_some_and(
            |e| matches!(e.get().state, State::Running { worker: r, .. } if r == worker),
        );
        if !running_here && !w.superseded.remove(&id) {
            tracing::debug!(worker, %id, "result for a job this worker does not hold; dropped");
            self.tallies.duplicates += 1;
            return;
        }
        // The worker gets its credit back for the job.
        w.held -= 1;
        if !w.draining {
            self.free_credit += 1;
            if !w.in_ring {
                w.in_ring = true;
                self.ring.push_back(worker);
            }
        }
        let Some(mut slot) = slot.take() else {
            self.tallies.duplicates += 1;
            return; // already answered by another worker
        };
        if let Err(message) = &outcome {
            if !running_here {
                return; // another worker has this job now; wait for its answer
            }
            let entry = slot.get_mut();
            if entry.handler_failures < self.config.handler_retries {
                entry.handler_failures += 1;
                entry.state = State::Waiting;
                self.waiting_again += 1;
                tracing::debug!(%id, %message, "handler failed; retrying");
                self.queue.requeue_front(vec![id]);
                return;
            }
        }
        let entry = slot.remove();
        match entry.state {
            State::Running { worker: other, .. } if other != worker => {
                // The job's current runner still holds it; its answer will be a duplicate.
                if let Some(o) = self.workers.get_mut(&other) {
                    o.superseded.insert(id);
                }
            }
            State::Running { .. } => {}
            State::Waiting => self.waiting_again -= 1,
        }
        self.tallies.round_trip.observe(now - entry.at);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.done += 1;
        }
        self.deliver(id, Some(worker), outcome.map_err(Error::Handler), wakes);
    }

    fn remove_worker(&mut self, worker: WorkerId, reason: &str, wakes: &mut Wakes) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.free_credit -= w.free();
        // The jobs it ran go to others; those it held that run elsewhere stay there.
        let running: Vec<JobId> = if w.held > w.superseded.len() {
            self.table
                .iter()
                .filter(|(_, e)| matches!(e.state, State::Running { worker: r, .. } if r == worker))
                .map(|(&id, _)| id)
                .collect()
        } else {
            Vec::new()
        };
        if !running.is_empty() {
            tracing::info!(
                worker,
                reason,
                jobs = running.len(),
                "worker lost with jobs in flight"
            );
        }
        // Jobs still in its outbox never left: they go back without counting as an attempt.
        let unsent: HashSet<JobId> = w
            .outbox
            .iter()
            .filter_map(|out| match out {
                Outgoing::Job(id, _) => Some(*id),
                _ => None,
            })
            .collect();
        let (unsent, lost): (Vec<JobId>, Vec<JobId>) =
            running.into_iter().partition(|id| unsent.contains(id));
        self.take_back(unsent);
        self.requeue_or_fail(lost, wakes);
        // Workers that left stay in the ring until picked; do not let them pile up.
        if self.ring.len() > 2 * self.workers.len() + 64 {
            let workers = &self.workers;
            self.ring.retain(|id| workers.contains_key(id));
        }
        wakes.workers = Some(self.workers.len());
    }

    fn expire_leases(&mut self, now: Instant, wakes: &mut Wakes) {
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
            if let Some(w) = self.workers.get_mut(&worker) {
                w.superseded.insert(lease.id);
            }
            lost.push(lease.id);
        }
        self.requeue_or_fail(lost, wakes);
    }

    /// Counts a loss for each job: puts it back at the front of the line, or reports it failed
    /// once it was lost more than `max_retries` times.
    fn requeue_or_fail(&mut self, lost: Vec<JobId>, wakes: &mut Wakes) {
        let mut requeue = Vec::with_capacity(lost.len());
        for id in lost {
            let entry = self.table.get_mut(&id).expect("lost jobs are in the table");
            entry.lost += 1;
            if entry.lost > self.config.max_retries {
                let attempts = entry.lost;
                self.table.remove(&id);
                self.deliver(id, None, Err(Error::WorkerLost { attempts }), wakes);
            } else {
                requeue.push(id);
            }
        }
        self.tallies.redelivered += requeue.len() as u64;
        self.take_back(requeue);
    }

    /// Puts running jobs back at the front of the line, to wait for a worker again.
    fn take_back(&mut self, ids: Vec<JobId>) {
        for id in &ids {
            let entry = self
                .table
                .get_mut(id)
                .expect("running jobs are in the table");
            entry.state = State::Waiting;
        }
        self.waiting_again += ids.len();
        self.queue.requeue_front(ids);
    }

    /// Hands an outcome to the receiver (or counts it, without one).
    fn deliver(
        &mut self,
        id: JobId,
        worker: Option<WorkerId>,
        result: Result<Bytes, Error>,
        wakes: &mut Wakes,
    ) {
        if result.is_ok() {
            self.tallies.completed += 1;
        } else {
            self.tallies.failed += 1;
        }
        if !self.receiver {
            return;
        }
        wakes.results |= self.outcomes.is_empty();
        self.outcomes.push_back(RawOutcome { id, worker, result });
    }

    fn maybe_finish(&mut self, wakes: &mut Wakes) {
        // With the table empty, jobs waiting again were all answered meanwhile: only new
        // jobs still count.
        if self.end_sent
            || !self.queue.is_closed()
            || !self.table.is_empty()
            || self.queue.waiting() > self.queue.again()
        {
            return;
        }
        self.end_sent = true;
        tracing::info!(
            workers = self.workers.len(),
            "all jobs answered; sending end-of-work"
        );
        for w in self.workers.values_mut() {
            w.send(Outgoing::EndOfWork, wakes);
        }
        wakes.results = true;
        wakes.finished = true;
    }
}
