//! Dispatch: admitting new jobs, and handing waiting ones to workers with free credit, in
//! line order, round-robin over the workers.

use distchan_protocol::{wire::JobFrame, JobId};
use tokio::time::Instant;

use super::{hub::Wakes, Scheduler, WorkerId};
use crate::queue::{NewJob, Waiting};

/// How a job is dispatched this time.
#[derive(Debug, Clone, Copy)]
enum Dispatch {
    /// For the first time, as it is admitted, while no other job is out: one job at a time,
    /// where its latency is what counts. When its worker holds no other job and the job is
    /// small, it is written at once by the thread that sent it, together with any that
    /// join it in the same step (the rest of its worker's turn in a `send_many`), unless
    /// the connection is busy ([`Outlet::write_now`](crate::connection::Outlet::write_now)).
    Alone,
    /// For the `n`th time.
    Nth(u32),
}

impl Scheduler {
    /// True when a new job can be dispatched at once: credit is free, nothing dispatchable
    /// waits ahead of it, and the receiver keeps up.
    pub(super) fn can_dispatch_new(&self) -> bool {
        self.workers.free_credit() > 0
            && self.queue.waiting() == self.stuck
            && !self.outcomes_full()
    }

    /// Admits `job`, which has the next id: sends it to a worker at once when `direct`,
    /// else puts it in the line (the caller dispatches the line afterwards).
    pub(super) fn admit(&mut self, job: NewJob, direct: bool, now: Instant, wakes: &mut Wakes) {
        debug_assert_eq!(job.id, JobId(self.next_id), "jobs are admitted in id order");
        self.next_id += 1;
        // A new job is held by no one, so any worker with credit can take it.
        match if direct {
            self.workers.pick(None, |_, _| false)
        } else {
            None
        } {
            Some(wid) => {
                // Not in a flood of sends: there, writing would slow the sender, while the
                // connections' tasks write side by side with it.
                let alone = self.ledger.is_empty();
                self.send_new(job, wid, alone, now, wakes)
            }
            None => self.queue.push_back(job),
        }
    }

    /// Admits the jobs senders left (taken into `left`; they have the next ids), in order,
    /// one at a time: a panic in one leaves the rest for the next step.
    pub(super) fn admit_left(&mut self, now: Instant, wakes: &mut Wakes) {
        while let Some((id, frame)) = self.left.pop_front() {
            let job = NewJob {
                id,
                frame,
                at: now,
                holds_room: true,
            };
            let direct = self.can_dispatch_new();
            self.admit(job, direct, now, wakes);
        }
    }

    /// Gives every waiting job it can to a worker with credit, in line order.
    pub(super) fn dispatch(&mut self, now: Instant, wakes: &mut Wakes) {
        if self.queue.is_empty() || self.workers.free_credit() == 0 || self.outcomes_full() {
            return;
        }
        // Jobs every worker with credit already holds wait for the next round.
        let mut deferred = Vec::new();
        while self.workers.free_credit() > 0 {
            let Some(waiting) = self.queue.pop_front() else {
                break;
            };
            match waiting {
                Waiting::New(job) => match self.workers.pick(None, |_, _| false) {
                    Some(wid) => self.send_new(job, wid, false, now, wakes),
                    None => deferred.push(Waiting::New(job)),
                },
                Waiting::Again(id) => {
                    if !self.ledger.is_waiting(id) {
                        continue; // answered meanwhile
                    }
                    // A replicated job goes to a worker (and group) that did not answer it,
                    // nor has it in hand (a run superseded after its lease or as a
                    // straggler may still answer).
                    let ledger = &self.ledger;
                    let holder = (self.config.replicas > 1)
                        .then(|| ledger.overrun_on(id).and_then(|w| self.workers.group(w)))
                        .flatten();
                    let excluded = |w, group: Option<&str>| {
                        ledger.voted(id, w, group)
                            || (group.is_some() && group == holder.as_deref())
                    };
                    match self.workers.pick(Some(id), excluded) {
                        Some(wid) => self.send_again(id, wid, now, wakes),
                        None => deferred.push(Waiting::Again(id)),
                    }
                }
            }
            if self.workers.ring_is_empty() {
                break;
            }
        }
        self.stuck = deferred.len();
        self.queue.defer(deferred);
    }

    /// Sends a new job to worker `wid`, which has credit for it; `alone` when it is
    /// dispatched as it is admitted, while no other job is out ([`Dispatch::Alone`]).
    fn send_new(
        &mut self,
        job: NewJob,
        wid: WorkerId,
        alone: bool,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        self.tallies.dispatch_wait.observe(now - job.at);
        if job.holds_room {
            wakes.room += 1;
        }
        let frame = job.frame.clone();
        self.ledger.start(job.id, job.frame, wid, now);
        let dispatch = if alone {
            Dispatch::Alone
        } else {
            Dispatch::Nth(1)
        };
        self.hand_over(job.id, dispatch, frame, wid, now, wakes);
    }

    /// Sends job `id`, waiting again, to worker `wid`, which has credit for it.
    fn send_again(&mut self, id: JobId, wid: WorkerId, now: Instant, wakes: &mut Wakes) {
        let (dispatch, frame) = self.ledger.restart(id, wid, now);
        self.hand_over(id, Dispatch::Nth(dispatch), frame, wid, now, wakes);
    }

    /// Puts the frame of job `id` in the outbox of worker `wid`, which holds one more job
    /// from now on, and gives the job a lease.
    fn hand_over(
        &mut self,
        id: JobId,
        dispatch: Dispatch,
        frame: JobFrame,
        wid: WorkerId,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let (dispatch, alone) = match dispatch {
            Dispatch::Alone => (1, true),
            Dispatch::Nth(n) => (n, false),
        };
        self.workers.hand_over(id, frame, wid, alone, wakes);
        if let Some(lease) = self.config.lease {
            wakes.leases |= self.ledger.lease(id, dispatch, now + lease);
        }
        self.tallies.dispatched += 1;
    }
}
