//! Dispatch: admitting new jobs, and handing waiting ones to workers with free credit, in
//! line order, round-robin over the workers.

use distchan_protocol::{
    wire::{JobFrame, JobFrameBuilder},
    JobId,
};
use tokio::time::Instant;

use super::{hub::Wakes, Scheduler, WorkerId};
use crate::queue::{NewJob, Waiting};

impl Scheduler {
    /// True when a new job can be dispatched at once: credit is free, nothing dispatchable
    /// waits ahead of it, and the receiver keeps up.
    pub(super) fn can_dispatch_new(&self) -> bool {
        self.workers.free_credit() > 0
            && self.queue.waiting() == self.stuck
            && !self.outcomes_full()
    }

    /// Gives a job the next id and sends it to a worker at once when `direct`, else puts it
    /// in the line (the caller dispatches the line afterwards).
    pub(super) fn admit(
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
        match if direct {
            self.workers.pick(None, |_, _| false)
        } else {
            None
        } {
            Some(wid) => self.send_new(job, wid, now, wakes),
            None => self.queue.push_back(job),
        }
        id
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
                    Some(wid) => self.send_new(job, wid, now, wakes),
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

    /// Sends a new job to worker `wid`, which has credit for it.
    fn send_new(&mut self, job: NewJob, wid: WorkerId, now: Instant, wakes: &mut Wakes) {
        self.tallies.dispatch_wait.observe(now - job.at);
        if job.holds_room {
            wakes.room += 1;
        }
        let frame = job.frame.clone();
        self.ledger.start(job.id, job.frame, wid, now);
        self.hand_over(job.id, 1, frame, wid, now, wakes);
    }

    /// Sends job `id`, waiting again, to worker `wid`, which has credit for it.
    fn send_again(&mut self, id: JobId, wid: WorkerId, now: Instant, wakes: &mut Wakes) {
        let (dispatch, frame) = self.ledger.restart(id, wid, now);
        self.hand_over(id, dispatch, frame, wid, now, wakes);
    }

    /// Puts the frame of job `id` (dispatched for the `dispatch`th time) in the outbox of
    /// worker `wid`, which holds one more job from now on, and gives the job a lease.
    fn hand_over(
        &mut self,
        id: JobId,
        dispatch: u32,
        frame: JobFrame,
        wid: WorkerId,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        self.workers.hand_over(id, frame, wid, wakes);
        if let Some(lease) = self.config.lease {
            wakes.leases |= self.ledger.lease(id, dispatch, now + lease);
        }
        self.tallies.dispatched += 1;
    }
}
