//! The connected workers: each one's credit (within its [`Window`]), outbox and superseded
//! jobs, and the round-robin ring of those with credit to spare.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
};

use distchan_protocol::{
    wire::{Refusal, RefusalCode, WorkerKind},
    JobId,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tokio::time::Instant;

use super::{
    hub::{Joined, Wakes, Writer},
    window::Window,
    Scheduler, WorkerId, WorkerShare, MAX_SHARES,
};
use crate::{
    connection::{Joining, Outgoing, Outlet, BATCHED_JOB_MAX},
    stats,
};

/// One connected worker.
pub(super) struct Worker {
    /// What the worker calls itself.
    pub(super) agent: String,
    /// Native, browser or other.
    pub(super) kind: WorkerKind,
    /// Its address.
    pub(super) addr: SocketAddr,
    /// When it joined.
    pub(super) joined: Instant,
    /// Milliseconds since the coordinator started when it was last heard from (its
    /// connection keeps this up to date).
    pub(super) last_seen: Arc<AtomicU64>,
    /// Jobs it answered.
    pub(super) done: u64,
    /// The credit window granted: most jobs it holds at once.
    pub(super) window: Window,
    /// Jobs it holds: those running on it, and those in `superseded`.
    pub(super) held: usize,
    /// Jobs it still holds that run elsewhere now, or were answered by another worker or
    /// are waiting again after their lease ran out. Usually empty.
    pub(super) superseded: HashSet<JobId>,
    /// True once it asked to leave: it gets no more jobs.
    pub(super) draining: bool,
    /// True while it is paused: it gets no jobs until it resumes.
    pub(super) paused: bool,
    /// Its results that lost to the result other workers agreed on (with replicas).
    pub(super) wrong: u64,
    /// The group it named: workers of one group count as one voter (with replicas).
    pub(super) group: Option<Arc<str>>,
    /// True while its id is in the ring, or it has its turn.
    in_ring: bool,
    /// What the connection's writer sends next.
    pub(super) outbox: Vec<Outgoing>,
    /// Its connection's way out: the writer to wake, or to write to at once.
    outlet: Arc<Outlet>,
    /// The session its welcome gave (with a reconnect grace only).
    pub(super) session: Option<String>,
}

impl Worker {
    /// Jobs it may still be given.
    fn free(&self) -> usize {
        if self.draining || self.paused {
            0
        } else {
            self.window.size().saturating_sub(self.held)
        }
    }

    /// Its average rate since it joined, in jobs per second, at `now`; `None` before two
    /// answers or 20 ms.
    pub(super) fn rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.joined).as_secs_f64();
        (self.done >= 2 && elapsed >= 0.02).then(|| self.done as f64 / elapsed)
    }

    /// True when a job it holds runs on it: not every one is superseded.
    pub(super) fn runs_jobs(&self) -> bool {
        self.held > self.superseded.len()
    }

    /// The jobs still in its outbox: they never left.
    pub(super) fn unsent_jobs(&self) -> HashSet<JobId> {
        self.outbox
            .iter()
            .filter_map(|out| match out {
                Outgoing::Job(id, _) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Its part of the work so far; `id` is its id.
    pub(super) fn share(&self, id: WorkerId) -> WorkerShare {
        WorkerShare {
            id,
            agent: self.agent.clone(),
            kind: stats::kind_label(self.kind).to_owned(),
            done: self.done,
            wrong: self.wrong,
            connected: self.joined.elapsed(),
        }
    }

    /// Puts `out` in the outbox, and has the writer woken if the outbox was empty.
    pub(super) fn send(&mut self, out: Outgoing, wakes: &mut Wakes) {
        self.send_or_write(out, false, wakes);
    }

    /// Puts `out` in the outbox, and has the writer woken if the outbox was empty; with
    /// `at_once`, a small job for a worker that holds no other is written at once instead,
    /// by whoever handed it over ([`Outlet::write_now`]). A large one is left to the
    /// connection's task: its transfer dwarfs a hand-over, and the sender's thread would
    /// pay for it.
    fn send_or_write(&mut self, out: Outgoing, at_once: bool, wakes: &mut Wakes) {
        if self.outbox.is_empty() {
            let at_once = at_once
                && self.held == 1
                && matches!(&out, Outgoing::Job(_, frame) if frame.len() <= BATCHED_JOB_MAX);
            wakes.writers.push(Writer {
                outlet: self.outlet.clone(),
                at_once,
            });
        }
        self.outbox.push(out);
    }
}

/// How the worker that sent a result held its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// The job runs on it.
    Running,
    /// It held the job, which runs elsewhere now, was answered by another worker, or waits
    /// again after its lease ran out.
    Superseded,
    /// It does not hold the job: its result is a duplicate.
    Not,
}

/// Every connected worker, the ring of those with free credit, and the credit free in all.
pub(super) struct Workers {
    /// The connected workers by id.
    map: HashMap<WorkerId, Worker>,
    /// Workers with free credit, in turn order. Ids of workers that left or ran out of
    /// credit stay until they come up, and are dropped then.
    ring: VecDeque<WorkerId>,
    /// Credit free over every worker.
    free_credit: usize,
    /// Connected workers by kind (see [`stats::kind_index`]).
    by_kind: [usize; stats::KINDS.len()],
    /// The id the next worker gets.
    next_id: WorkerId,
    /// The worker whose turn it is (out of the ring meanwhile), and how many more jobs its
    /// turn may carry.
    turn: Option<(WorkerId, usize)>,
    /// Most jobs one turn carries (1: strict round-robin).
    turn_max: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            map: HashMap::default(),
            ring: VecDeque::new(),
            free_credit: 0,
            by_kind: [0; stats::KINDS.len()],
            next_id: 1,
            turn: None,
            turn_max: 1,
        }
    }
}

impl Workers {
    /// Number of connected workers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Number of connected workers of each kind (see [`stats::kind_index`]).
    pub fn by_kind(&self) -> [usize; stats::KINDS.len()] {
        self.by_kind
    }

    /// The connected worker `id`.
    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.map.get_mut(&id)
    }

    /// Every connected worker, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (&WorkerId, &Worker)> {
        self.map.iter()
    }

    /// Every connected worker.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.map.values_mut()
    }

    /// Distinct groups among the connected workers (a worker that named none is one). It
    /// goes over every worker: replication asks at most once a second.
    pub fn groups(&self) -> usize {
        let mut named: HashSet<&str> = HashSet::default();
        let mut ungrouped = 0;
        for w in self.map.values() {
            match &w.group {
                Some(g) => {
                    named.insert(g);
                }
                None => ungrouped += 1,
            }
        }
        named.len() + ungrouped
    }

    /// The group worker `wid` named, if it is connected and named one.
    pub fn group(&self, wid: WorkerId) -> Option<Arc<str>> {
        self.map.get(&wid).and_then(|w| w.group.clone())
    }

    /// Credit free over every worker.
    pub fn free_credit(&self) -> usize {
        self.free_credit
    }

    /// True when no worker waits in the ring and none has its turn.
    pub fn ring_is_empty(&self) -> bool {
        self.ring.is_empty() && self.turn.is_none()
    }

    /// Lets one turn carry up to `jobs` jobs (1: strict round-robin).
    pub fn set_turn_max(&mut self, jobs: usize) {
        self.turn_max = jobs.max(1);
    }

    /// Adds a worker with `window`, at the end of the ring; `end_sent` tells it end-of-work
    /// at once.
    fn add(
        &mut self,
        j: Joining,
        window: Window,
        end_sent: bool,
        wakes: &mut Wakes,
    ) -> (WorkerId, Arc<Outlet>) {
        let id = self.next_id;
        self.next_id += 1;
        tracing::debug!(worker = id, agent = %j.agent, kind = ?j.kind, addr = %j.addr, capacity = j.capacity, "worker registered");
        let outlet = Arc::new(Outlet::new(id));
        let mut worker = Worker {
            agent: j.agent,
            kind: j.kind,
            addr: j.addr,
            joined: Instant::now(),
            last_seen: j.last_seen,
            done: 0,
            window,
            held: 0,
            superseded: HashSet::default(),
            draining: false,
            paused: false,
            wrong: 0,
            group: j.group.map(Arc::from),
            in_ring: true,
            outbox: Vec::new(),
            outlet: outlet.clone(),
            session: None,
        };
        if end_sent {
            worker.send(Outgoing::EndOfWork, wakes);
        }
        self.by_kind[stats::kind_index(worker.kind)] += 1;
        self.free_credit += worker.free();
        self.map.insert(id, worker);
        self.ring.push_back(id);
        (id, outlet)
    }

    /// Removes worker `id` and its free credit.
    pub(super) fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let w = self.map.remove(&id)?;
        if self.turn.is_some_and(|(wid, _)| wid == id) {
            self.turn = None;
        }
        self.free_credit -= w.free();
        self.by_kind[stats::kind_index(w.kind)] -= 1;
        // Workers that left stay in the ring until picked; do not let them pile up.
        if self.ring.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ring.retain(|id| map.contains_key(id));
        }
        Some(w)
    }

    /// Worker `id` takes no more jobs: its free credit goes. Returns the worker, the first
    /// time it asks.
    pub(super) fn drain(&mut self, id: WorkerId) -> Option<&mut Worker> {
        let w = self.map.get_mut(&id).filter(|w| !w.draining)?;
        self.free_credit -= w.free();
        w.draining = true;
        Some(w)
    }

    /// The worker for the next job: the one whose turn it is while its turn goes on (see
    /// [`Workers::turn_goes_on`]), else the first of the ring that has credit, does not
    /// already hold `job` (it may, when the job's lease ran out while that worker still
    /// works on it) and is not `excluded` by its id and group (it, or its group, answered
    /// the job already), whose turn starts.
    pub fn pick(
        &mut self,
        job: Option<JobId>,
        excluded: impl Fn(WorkerId, Option<&str>) -> bool,
    ) -> Option<WorkerId> {
        if let Some((wid, left)) = self.turn {
            let allowed = || {
                self.map
                    .get(&wid)
                    .is_some_and(|w| !excluded(wid, w.group.as_deref()))
            };
            if self.turn_goes_on(wid, left, job) && allowed() {
                self.turn = Some((wid, left - 1));
                return Some(wid);
            }
            self.end_turn();
        }
        let mut passed = 0;
        while passed < self.ring.len() {
            let id = self.ring.pop_front()?;
            let Some(w) = self.map.get_mut(&id) else {
                continue;
            };
            if w.free() == 0 {
                w.in_ring = false;
            } else if job.is_some_and(|job| w.superseded.contains(&job))
                || excluded(id, w.group.as_deref())
            {
                self.ring.push_back(id);
                passed += 1;
            } else {
                self.turn = Some((id, self.turn_max - 1));
                return Some(id);
            }
        }
        None
    }

    /// True when worker `wid`, whose turn may carry `left` more jobs, takes `job` too: it
    /// has credit, does not hold `job` already, and the jobs of its turn are still in its
    /// outbox (they leave together; once its connection took them, the turn is over).
    fn turn_goes_on(&self, wid: WorkerId, left: usize, job: Option<JobId>) -> bool {
        left > 0
            && self.map.get(&wid).is_some_and(|w| {
                w.free() > 0
                    && !w.outbox.is_empty()
                    && !job.is_some_and(|job| w.superseded.contains(&job))
            })
    }

    /// Ends the current turn: its worker goes back to the end of the ring if it has credit.
    fn end_turn(&mut self) {
        let Some((wid, _)) = self.turn.take() else {
            return;
        };
        if let Some(w) = self.map.get_mut(&wid) {
            if w.free() > 0 {
                self.ring.push_back(wid);
            } else {
                w.in_ring = false;
            }
        }
    }

    /// Hands job `id`'s frame to worker `wid`, picked for it: the worker uses one credit.
    /// With `alone` (dispatched as it was sent, while no other job is out), the job is
    /// written at once by the caller, once the scheduler's lock is released.
    pub fn hand_over(
        &mut self,
        id: JobId,
        frame: distchan_protocol::wire::JobFrame,
        wid: WorkerId,
        alone: bool,
        wakes: &mut Wakes,
    ) {
        let w = self.map.get_mut(&wid).expect("picked workers exist");
        w.held += 1;
        self.free_credit -= 1;
        w.send_or_write(Outgoing::Job(id, frame), alone, wakes);
        if w.free() == 0 || self.turn_max == 1 {
            self.end_turn();
        }
    }

    /// How worker `wid`, which sent a result for job `id`, held the job; `running_here`
    /// tells whether the job runs on it. A superseded job's mark comes off with its
    /// answer. `None` when the worker is gone.
    pub fn claim(&mut self, wid: WorkerId, id: JobId, running_here: bool) -> Option<Held> {
        let w = self.map.get_mut(&wid)?;
        if running_here {
            return Some(Held::Running);
        }
        let was_superseded = w.superseded.remove(&id);
        Some(if was_superseded {
            Held::Superseded
        } else {
            Held::Not
        })
    }

    /// Worker `wid` answered one of the jobs it held at `now`: the credit comes back (unless
    /// it is draining; its window may have changed size meanwhile), and it takes its turn in
    /// the ring again if it had left it.
    pub fn return_credit(&mut self, wid: WorkerId, now: Instant) {
        self.update(wid, |w| {
            w.window.on_result(now);
            w.held -= 1;
        });
    }

    /// Changes worker `wid` with `change`, keeping the credit free in all right; a worker
    /// left with free credit takes its turn in the ring again. `None` when it is gone.
    fn update<R>(&mut self, wid: WorkerId, change: impl FnOnce(&mut Worker) -> R) -> Option<R> {
        let w = self.map.get_mut(&wid)?;
        let before = w.free();
        let out = change(w);
        let after = w.free();
        self.free_credit = self.free_credit + after - before;
        if after > 0 && !w.in_ring {
            w.in_ring = true;
            self.ring.push_back(wid);
        }
        Some(out)
    }

    /// Worker `id`, just added, is worker `old` back after a lost connection, holding
    /// `held` jobs of which `superseded` run elsewhere or have their outcome: it keeps
    /// `old`'s window, counts and unsent messages (before its own).
    pub fn inherit(
        &mut self,
        id: WorkerId,
        old: Worker,
        held: usize,
        superseded: HashSet<JobId>,
        wakes: &mut Wakes,
    ) {
        self.update(id, |w| {
            w.window = old.window;
            w.done = old.done;
            w.wrong = old.wrong;
            w.joined = old.joined;
            w.held = held;
            w.superseded = superseded;
            let mut outbox = old.outbox;
            let ended = outbox.iter().any(|out| matches!(out, Outgoing::EndOfWork));
            // Its end-of-work (the run's end came meanwhile) goes once.
            outbox.extend(
                w.outbox
                    .drain(..)
                    .filter(|out| !(ended && matches!(out, Outgoing::EndOfWork))),
            );
            if !outbox.is_empty() {
                wakes.writers.push(Writer {
                    outlet: w.outlet.clone(),
                    at_once: false,
                });
            }
            w.outbox = outbox;
        })
        .expect("the worker was just added");
    }

    /// The rate (see [`Worker::rate`]) of worker `wid` and its free credit, when it holds
    /// no job and may take some; `None` otherwise, or before it has a rate.
    pub fn idle(&self, wid: WorkerId, now: Instant) -> Option<(f64, usize)> {
        let w = self.map.get(&wid).filter(|w| w.held == 0 && w.free() > 0)?;
        Some((w.rate(now)?, w.free()))
    }

    /// Pauses worker `wid` or ends its pause: paused, it gets no jobs; back, it takes its
    /// turn in the ring again. Returns false when it is gone or already so.
    pub fn set_paused(&mut self, wid: WorkerId, paused: bool) -> bool {
        if self.map.get(&wid).is_none_or(|w| w.paused == paused) {
            return false;
        }
        self.update(wid, |w| w.paused = paused).is_some()
    }

    /// Worker `wid` no longer holds job `id` (it gave it back unrun): one credit comes
    /// back, and the job's superseded mark goes, if it had one. Returns whether it held it.
    pub fn give_back(&mut self, wid: WorkerId, id: JobId, running_here: bool) -> bool {
        self.update(wid, |w| {
            let held = running_here || w.superseded.remove(&id);
            if held {
                w.held -= 1;
            }
            held
        })
        .unwrap_or(false)
    }

    /// Marks job `id` superseded on worker `wid`, which still holds it: its answer will not
    /// count.
    pub fn supersede(&mut self, wid: WorkerId, id: JobId) {
        if let Some(w) = self.map.get_mut(&wid) {
            w.superseded.insert(id);
        }
    }

    /// Tells worker `wid` to stop job `id`, if its run of it is superseded and not
    /// answered yet (the job has its outcome from someone else).
    pub fn cancel_superseded(&mut self, wid: WorkerId, id: JobId, wakes: &mut Wakes) {
        if let Some(w) = self.map.get_mut(&wid) {
            if w.superseded.contains(&id) {
                w.send(Outgoing::Cancel(id), wakes);
            }
        }
    }
}

impl Scheduler {
    /// Registers a worker (which takes over the jobs of the session it resumes, if its
    /// hello asks and the session is kept) and gives it jobs; the refusal to send when
    /// shutting down, or when its group was cut off (see `replicate`).
    pub(super) fn join(&mut self, mut j: Joining, wakes: &mut Wakes) -> Result<Joined, Refusal> {
        if self.shut_down {
            return Err(Refusal::new(
                RefusalCode::ShuttingDown,
                "the coordinator is shutting down",
            ));
        }
        if j.group
            .as_deref()
            .is_some_and(|g| self.replication.cut_off.contains(g))
        {
            return Err(Refusal::new(
                RefusalCode::CutOff,
                "this worker's group was cut off for results the other workers disagreed with",
            ));
        }
        let resume = j.resume.take();
        let capacity = j.capacity.clamp(1, self.config.max_capacity.max(1)) as usize;
        let window = Window::new(
            capacity,
            self.config
                .adaptive_windows
                .then_some(self.config.start_window),
        );
        let (id, outlet) = self.workers.add(j, window, self.end_sent, wakes);
        let resumed = resume.is_some_and(|r| self.resume(id, r, wakes));
        let session = self.open_session(id);
        wakes.workers = Some(self.workers.len());
        self.dispatch(Instant::now(), wakes);
        Ok(Joined {
            id,
            outlet,
            session,
            resumed,
        })
    }

    /// Worker `wid` asked to leave: it gets no more jobs, and answers those it holds. Its
    /// end-of-work, after every job already in its outbox, tells it that nothing more is on
    /// its way: then it may close without losing a job (unless the end-of-work of the whole
    /// run went out already).
    pub(super) fn drain(&mut self, wid: WorkerId, wakes: &mut Wakes) {
        tracing::info!(worker = wid, "worker is draining");
        let end_sent = self.end_sent;
        if let Some(w) = self.workers.drain(wid) {
            if !end_sent {
                w.send(Outgoing::EndOfWork, wakes);
            }
        }
    }

    /// Removes a worker whose connection ended: the jobs it ran go back to the line (or
    /// fail, out of retries); those it held that run elsewhere stay there.
    pub(super) fn remove_worker(&mut self, worker: WorkerId, reason: &str, wakes: &mut Wakes) {
        let Some(w) = self.workers.remove(worker) else {
            return;
        };
        self.release(worker, w, reason, wakes);
        wakes.workers = Some(self.workers.len());
    }

    /// Worker `worker`, removed, is gone for good: its session ends, and the jobs it ran go
    /// back to the line (or fail, out of retries).
    pub(super) fn release(&mut self, worker: WorkerId, w: Worker, reason: &str, wakes: &mut Wakes) {
        self.grace.end_session(w.session.as_deref());
        if w.done > 0 && self.departed.len() < MAX_SHARES {
            self.departed.push(w.share(worker));
        }
        let running = if w.runs_jobs() {
            self.ledger.running_on(worker)
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
        let unsent = w.unsent_jobs();
        let (unsent, lost): (Vec<JobId>, Vec<JobId>) =
            running.into_iter().partition(|id| unsent.contains(id));
        self.take_back(unsent);
        self.requeue_or_fail(lost, wakes);
    }
}
