//! The scheduler behind its lock: every step the rest of the coordinator takes with it
//! (submit, join, settle, leave, take outcomes, expire leases, shut down), each one short
//! and under the lock, and the tasks woken once the lock is released. A job sent while no
//! other is out is written to its worker's connection then and there, by the sender.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{fence, Ordering},
        Arc, Mutex, MutexGuard, TryLockError,
    },
};

use distchan_protocol::{wire::JobFrameBuilder, JobId};
use smallvec::SmallVec;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use super::{
    admissions::Admissions, RawOutcome, Scheduler, ShutdownReport, WorkerId, WorkerSnapshot,
};
use crate::{
    config::Config,
    connection::{Incoming, Joining, Outgoing, Outlet},
    queue::{NewJob, Room, RoomError},
    stats::{self, Counters, Gauges, Stats},
};

/// What to do once the lock is released: tasks to wake.
#[derive(Default)]
pub(super) struct Wakes {
    /// Connection writers with something new in their outbox.
    pub(super) writers: SmallVec<[Writer; 4]>,
    /// True when the result receiver may find outcomes (or their end).
    pub(super) results: bool,
    /// Places in the line given back by jobs dispatched.
    pub(super) room: usize,
    /// True when the lease keeper has a new first deadline to wait for (a first lease, or
    /// a lost worker's grace).
    pub(super) leases: bool,
    /// The number of connected workers to publish, when it changed.
    pub(super) workers: Option<usize>,
    /// True once end-of-work was sent.
    pub(super) finished: bool,
}

/// A connection writer with something new in its outbox.
pub(super) struct Writer {
    /// The connection's way out.
    pub(super) outlet: Arc<Outlet>,
    /// True when the outbox holds the only job out, which its worker's idle connection
    /// gets written at once rather than through its task.
    pub(super) at_once: bool,
}

/// The scheduler behind its lock, and what is woken outside it.
pub(crate) struct Hub {
    /// Every job, worker and undelivered outcome.
    state: Mutex<Scheduler>,
    /// Jobs whose senders found `state` locked, left for its holder, and the job ids.
    admissions: Admissions,
    /// Places in the line of waiting jobs; a sender that finds none waits here.
    room: Room,
    /// Wakes the result receiver.
    results_ready: Notify,
    /// Wakes the lease keeper when the first lease is taken.
    leases_changed: Notify,
    /// The metrics the scheduler's counts are published to.
    counters: Arc<Counters>,
    /// When the coordinator started; `last_seen` values count from here.
    epoch: Instant,
    /// The number of connected workers, for those waiting for workers.
    workers_watch: watch::Sender<usize>,
    /// Whether end-of-work has been sent, for those waiting for the end.
    finished_watch: watch::Sender<bool>,
}

/// What [`Hub::try_submit`] did with a job.
pub(crate) enum Submit {
    /// Admitted with this id.
    Sent(JobId),
    /// The line is full: wait for room, then submit the job (still in its builder) again
    /// with it.
    NoRoom,
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

/// A worker [`Hub::join`] registered.
pub(crate) struct Joined {
    /// Its id.
    pub id: WorkerId,
    /// Its connection's way out, which the scheduler wakes (or writes to) when the
    /// worker's outbox has something.
    pub outlet: Arc<Outlet>,
    /// The session to give it in the welcome (with a reconnect grace only).
    pub session: Option<String>,
    /// True when it resumed the session its hello named, with the jobs it holds.
    pub resumed: bool,
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
            state: Mutex::new(Scheduler::new(config, jobs, results)),
            admissions: Admissions::default(),
            room,
            results_ready: Notify::new(),
            leases_changed: Notify::new(),
            counters,
            epoch,
            workers_watch: watch::channel(0).0,
            finished_watch: watch::channel(false).0,
        }
    }

    /// The scheduler, locked. Whoever unlocks it calls [`Hub::relay`] afterwards.
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // A panic under the lock is a bug; the state is still the best there is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scheduler, locked, unless someone holds it.
    fn try_lock(&self) -> Option<MutexGuard<'_, Scheduler>> {
        match self.state.try_lock() {
            Ok(s) => Some(s),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `f` under the lock (after admitting the jobs left meanwhile, as every step
    /// does), when it wakes no one.
    fn read<T>(&self, f: impl FnOnce(&mut Scheduler) -> T) -> T {
        self.with(|s, _| f(s))
    }

    /// Runs `f` under the lock, after admitting the jobs left meanwhile, then wakes whom it
    /// asked for.
    fn with<T>(&self, f: impl FnOnce(&mut Scheduler, &mut Wakes) -> T) -> T {
        self.with_held(self.lock(), f)
    }

    /// [`Hub::with`] on the scheduler `s`, already locked.
    fn with_held<T>(
        &self,
        s: MutexGuard<'_, Scheduler>,
        f: impl FnOnce(&mut Scheduler, &mut Wakes) -> T,
    ) -> T {
        let out = self.step(s, f);
        self.relay();
        out
    }

    /// [`Hub::with`] on the scheduler `s`, locked, without the relay.
    fn step<T>(
        &self,
        mut s: MutexGuard<'_, Scheduler>,
        f: impl FnOnce(&mut Scheduler, &mut Wakes) -> T,
    ) -> T {
        let mut wakes = Wakes::default();
        if self.admissions.pending() {
            self.take_left(&mut s, Instant::now(), &mut wakes);
        }
        let out = f(&mut s, &mut wakes);
        // Under the lock: counts from joins and leaves on other threads are never
        // published out of order.
        if let Some(n) = wakes.workers.take() {
            self.workers_watch
                .send_replace(if s.shut_down { 0 } else { n });
        }
        drop(s);
        self.wake(wakes);
        out
    }

    /// Admits the jobs senders left while the lock was taken (see [`Admissions`]), in order,
    /// and dispatches them.
    fn take_left(&self, s: &mut Scheduler, now: Instant, wakes: &mut Wakes) {
        self.admissions.take(&mut s.left);
        s.admit_left(now, wakes);
        s.dispatch(now, wakes);
    }

    /// After the lock was released: admits the jobs senders left meanwhile, unless someone
    /// else holds the lock again (then they will). Senders that leave a job call it too:
    /// with the fence on both sides, either the sender sees the lock free or the one who
    /// released it sees the job.
    ///
    /// It goes on while jobs keep coming, so under a steady stream of senders whoever
    /// relays admits (and may write) the others' jobs for a while: a job must not be left
    /// behind, so there is no bound. A stress run on two cores (six senders, three
    /// workers) saw it go round at most 12 times.
    fn relay(&self) {
        loop {
            fence(Ordering::SeqCst);
            if !self.admissions.pending() {
                return;
            }
            let Some(s) = self.try_lock() else {
                return;
            };
            self.step(s, |_, _| ());
        }
    }

    /// Publishes what the scheduler counted to the Prometheus metrics.
    pub fn publish_metrics(&self) {
        let (tallies, gauges) = self.read(|s| {
            let gauges = Gauges {
                workers: s.workers.by_kind(),
                queued: s.queue.waiting() - s.queue.again() + s.ledger.waiting_again(),
                in_flight: s.ledger.len() - s.ledger.waiting_again(),
            };
            (std::mem::take(&mut s.tallies), gauges)
        });
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

    /// Wakes whom a step asked for, once the lock is released.
    fn wake(&self, wakes: Wakes) {
        // First, so that whoever the other wakes reach sees the work as finished.
        if wakes.finished {
            self.finished_watch.send_replace(true);
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
        // Last: writing at once takes a system call.
        for writer in &wakes.writers {
            if writer.at_once {
                writer.outlet.write_now(self, &self.counters);
            } else {
                writer.outlet.wake();
            }
        }
    }

    /// Admits a job: gives it the next id and dispatches it, or puts it in the line; its
    /// frame is then taken from `frame`. With `has_room` the caller holds a place in the
    /// line (from [`Hub::wait_for_room`]).
    ///
    /// When another thread holds the scheduler, the job is numbered and left for it
    /// instead (holding a place in the line), rather than waiting for the lock.
    pub fn try_submit(&self, frame: &mut JobFrameBuilder, has_room: bool) -> Submit {
        let s = match self.try_lock() {
            Some(s) => s,
            None => match self.leave_job(frame, has_room) {
                Some(submitted) => return submitted,
                None => self.lock(),
            },
        };
        self.with_held(s, |s, wakes| {
            let now = Instant::now();
            let submitted = self.admit_one(s, frame, has_room, now, wakes);
            s.dispatch(now, wakes);
            submitted
        })
    }

    /// Leaves the job in `frame` for the scheduler's holder; `None` when the line has no
    /// room for it (the caller then takes the lock: a worker may have credit for it).
    fn leave_job(&self, frame: &mut JobFrameBuilder, has_room: bool) -> Option<Submit> {
        if !has_room {
            match self.room.try_take() {
                Ok(()) => {}
                Err(RoomError::Full) => return None,
                Err(RoomError::Closed) => return Some(Submit::Closed),
            }
        }
        let Some(id) = self.admissions.leave(frame) else {
            self.room.give_back(1);
            return Some(Submit::Closed);
        };
        self.relay();
        Some(Submit::Sent(id))
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
            let mut admitted = 0;
            for frame in frames.iter_mut() {
                match self.admit_one(s, frame, std::mem::take(&mut has_room), now, wakes) {
                    Submit::Sent(id) => ids.push(id),
                    Submit::NoRoom => {
                        outcome = Batch::NoRoom;
                        break;
                    }
                    Submit::Closed => {
                        outcome = Batch::Closed;
                        break;
                    }
                }
                admitted += 1;
            }
            frames.drain(..admitted);
            s.dispatch(now, wakes);
            outcome
        })
    }

    /// [`Hub::try_submit`]'s step for one job, under the lock (the caller dispatches).
    fn admit_one(
        &self,
        s: &mut Scheduler,
        frame: &mut JobFrameBuilder,
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
        loop {
            let direct = s.can_dispatch_new();
            if !direct && !has_room {
                match self.room.try_take() {
                    Ok(()) => has_room = true,
                    Err(RoomError::Full) => return Submit::NoRoom,
                    Err(RoomError::Closed) => return Submit::Closed,
                }
            }
            if !self.admissions.claim(s.next_id) {
                // Senders left jobs with the next ids meanwhile: they go first.
                match self.admissions.take_or_number(&mut s.left) {
                    None => {
                        s.admit_left(now, wakes);
                        continue;
                    }
                    Some(id) => {
                        tracing::error!(
                            from = s.next_id,
                            to = id,
                            "job ids skipped: their jobs were lost to a panic"
                        );
                        s.next_id = id;
                    }
                }
            }
            let id = JobId(s.next_id);
            let job = NewJob {
                id,
                frame: frame.take_frame(id),
                at: now,
                holds_room: has_room,
            };
            s.admit(job, direct, now, wakes);
            return Submit::Sent(id);
        }
    }

    /// Runs `meanwhile` while this thread holds the scheduler, as a connection settling its
    /// results would.
    #[cfg(test)]
    pub(super) fn hold<T>(&self, meanwhile: impl FnOnce() -> T) -> T {
        self.read(|_| meanwhile())
    }

    /// Runs `meanwhile` while this thread holds the scheduler, then submits the job in
    /// `frame` in the same hold, without first admitting what was left meanwhile.
    #[cfg(test)]
    pub(super) fn submit_after(
        &self,
        meanwhile: impl FnOnce(),
        frame: &mut JobFrameBuilder,
    ) -> Submit {
        self.with(|s, wakes| {
            meanwhile();
            let now = Instant::now();
            self.admit_one(s, frame, false, now, wakes)
        })
    }

    /// Waits for a place in the line; `false` once the coordinator has shut down.
    pub async fn wait_for_room(&self) -> bool {
        self.room.take().await
    }

    /// Cancels job `id`; see [`JobSender::cancel`](crate::JobSender::cancel).
    pub fn cancel(&self, id: JobId) -> bool {
        self.with(|s, wakes| s.cancel(id, wakes))
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
        self.read(|s| s.shut_down)
    }

    /// Registers a worker that finished its handshake (resuming its session, when its hello
    /// asks and the session is still kept); the refusal to send when shutting down, or when
    /// its group was cut off.
    pub fn join(&self, joining: Joining) -> Result<Joined, distchan_protocol::wire::Refusal> {
        self.with(|s, wakes| s.join(joining, wakes))
    }

    /// Moves what the worker's writer must send next into `out` (which should be empty).
    pub fn take_outbox(&self, worker: WorkerId, out: &mut Vec<Outgoing>) {
        self.read(|s| {
            if let Some(w) = s.workers.get_mut(worker) {
                std::mem::swap(&mut w.outbox, out);
            }
        });
    }

    /// Moves the jobs in the worker's outbox into `out` (which should be empty), unless
    /// it holds anything else: then it leaves it for the connection's task, and returns
    /// false.
    pub fn take_outbox_jobs(&self, worker: WorkerId, out: &mut Vec<Outgoing>) -> bool {
        self.read(|s| {
            let Some(w) = s.workers.get_mut(worker) else {
                return true;
            };
            let jobs_only = w
                .outbox
                .iter()
                .all(|item| matches!(item, Outgoing::Job(..)));
            if jobs_only {
                std::mem::swap(&mut w.outbox, out);
            }
            jobs_only
        })
    }

    /// Settles what a connection read, in order.
    pub fn settle(&self, worker: WorkerId, batch: &mut Vec<Incoming>) {
        self.with(|s, wakes| {
            let now = Instant::now();
            for item in batch.drain(..) {
                match item {
                    Incoming::Result(r) => s.on_result(worker, r, now, wakes),
                    Incoming::Emit(payload) => s.emit(payload, wakes),
                    Incoming::Drain => s.drain(worker, wakes),
                    Incoming::Pause(released) => s.pause(worker, released),
                    Incoming::Unpause => s.unpause(worker),
                }
            }
            s.dispatch(now, wakes);
            s.speculate(worker, now, wakes);
            s.maybe_finish(wakes);
        });
    }

    /// The worker's connection ended: its unanswered jobs go to others, or, when the
    /// connection was `lost` and the coordinator has a reconnect grace, wait for its return.
    pub fn leave(&self, worker: WorkerId, reason: &str, lost: bool) {
        self.with(|s, wakes| {
            if !(lost && s.keep_for_return(worker, reason, wakes)) {
                s.remove_worker(worker, reason, wakes);
            }
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

    /// Wakes the receiver for outcomes that come from elsewhere (the journal).
    pub fn wake_receiver(&self) {
        self.results_ready.notify_one();
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

    /// The earliest deadline the lease keeper waits for: a job's lease, or the end of a
    /// lost worker's grace.
    pub fn next_lease(&self) -> Option<Instant> {
        self.read(
            |s| match (s.ledger.next_deadline(), s.grace.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        )
    }

    /// Waits until a lease is taken while none was.
    pub async fn leases_changed(&self) {
        self.leases_changed.notified().await;
    }

    /// Hands every job whose lease ran out, and the jobs of every lost worker whose grace
    /// ran out, to other workers.
    pub fn expire_leases(&self) {
        self.with(|s, wakes| {
            let now = Instant::now();
            s.expire_leases(now, wakes);
            s.expire_grace(now, wakes);
            s.dispatch(now, wakes);
            s.maybe_finish(wakes);
        });
    }

    /// Describes every connected worker.
    pub fn snapshot(&self) -> Vec<WorkerSnapshot> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let mut out: Vec<WorkerSnapshot> = self.read(|s| {
            s.workers
                .iter()
                .map(|(&id, w)| WorkerSnapshot {
                    id,
                    agent: w.agent.clone(),
                    kind: stats::kind_label(w.kind).to_owned(),
                    addr: w.addr,
                    capacity: w.window.size(),
                    declared: w.window.ceiling(),
                    in_flight: w.held,
                    done: w.done,
                    last_seen_ms: now_ms.saturating_sub(w.last_seen.load(Ordering::Relaxed)),
                    connected_ms: w.joined.elapsed().as_millis() as u64,
                    draining: w.draining,
                    paused: w.paused,
                    wrong: w.wrong,
                })
                .collect()
        });
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
            // The jobs left until now are admitted, and no more are left.
            self.admissions.close(&mut s.left);
            s.admit_left(Instant::now(), wakes);
            s.shut_down = true;
            let mut unfinished: Vec<JobId> = s.ledger.ids().collect();
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
            let mut shares = std::mem::take(&mut s.departed);
            let connected = s.workers.iter().filter(|(_, w)| w.done > 0);
            shares.extend(connected.map(|(&id, w)| w.share(id)));
            shares.sort_unstable_by_key(|share| share.id);
            shares.truncate(super::MAX_SHARES);
            ShutdownReport {
                unfinished,
                workers: s.workers.len(),
                shares,
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
