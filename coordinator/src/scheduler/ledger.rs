//! The in-flight table: every job from its first dispatch until its outcome is delivered,
//! with its frame, its leases and its retries.
//!
//! - **First outcome wins**: a result is counted only from a worker that holds the job;
//!   once the job has its outcome, any later result for it is a duplicate and dropped.
//! - **Superseded runs**: a job whose lease ran out, or that another worker answered,
//!   is marked superseded on the worker that still holds it; that worker's credit comes
//!   back with its answer, which counts only if the job still has no outcome. Once the job
//!   has its outcome, a worker still running it is told to stop (a cancellation).
//! - **Retries**: a handler failure is retried `handler_retries` times; a job lost with
//!   its worker or its lease goes back to the front of the line, `max_retries` times,
//!   then fails with [`JobError::WorkerLost`].
//! - **Placement**: the table keeps consecutive job ids side by side (`IdHasher`), so that a
//!   table of many thousand jobs in flight costs about what a small one does per job.

use std::{
    collections::{hash_map, HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

use bytes::Bytes;
use distchan_protocol::{
    wire::{JobFrame, JobResult},
    JobId,
};
use tokio::time::Instant;

use super::{hub::Wakes, workers::Held, Scheduler, WorkerId};
use crate::JobError;

/// Where a job in the table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Back in the line, waiting for a worker again.
    Waiting,
    /// Sent to `worker`, for the `dispatch`th time.
    Running {
        /// The worker running it.
        worker: WorkerId,
        /// Which dispatch of the job this is (its lease names it).
        dispatch: u32,
    },
}

/// A job between its first dispatch and the delivery of its outcome.
pub(super) struct Entry {
    /// The complete job frame, sent again as it is when the job is dispatched again.
    frame: JobFrame,
    /// When it was last sent to a worker (for the round-trip histogram).
    at: Instant,
    /// Where it is.
    state: State,
    /// Times the job was dispatched (for lease bookkeeping).
    dispatches: u32,
    /// Times the job was lost with its worker or its lease.
    lost: u32,
    /// Times its handler failed and it was retried.
    handler_failures: u32,
    /// The last worker whose run of it was superseded when its lease ran out (it may
    /// still be running it).
    overrun_on: Option<WorkerId>,
    /// The results workers gave for it so far, with [`Config::replicas`] above 1 (see
    /// `replicate`); empty otherwise.
    ///
    /// [`Config::replicas`]: crate::Config::replicas
    pub(super) votes: Vec<Vote>,
}

/// One worker's result for a replicated job.
pub(super) struct Vote {
    /// The worker that gave it.
    pub(super) worker: WorkerId,
    /// The worker's group, if it named one.
    pub(super) group: Option<std::sync::Arc<str>>,
    /// Its result.
    pub(super) outcome: Result<Bytes, String>,
}

impl Entry {
    /// True while the job runs on `worker`.
    fn runs_on(&self, worker: WorkerId) -> bool {
        matches!(self.state, State::Running { worker: w, .. } if w == worker)
    }
}

/// How long one dispatch of a job may run before the job goes to someone else.
struct Lease {
    /// When it runs out.
    deadline: Instant,
    /// The job.
    id: JobId,
    /// Which dispatch of the job it covers; a later dispatch has a lease of its own.
    dispatch: u32,
}

/// The in-flight table and the leases of the jobs in it, earliest deadline first.
#[derive(Default)]
pub(super) struct Ledger {
    /// Every job between its first dispatch and the delivery of its outcome, placed by
    /// [`IdHasher`].
    table: HashMap<JobId, Entry, BuildHasherDefault<IdHasher>>,
    /// Leases in deadline order (every lease is equally long). Leases of answered jobs
    /// stay until they come up, or until a sweep.
    leases: VecDeque<Lease>,
    /// Jobs in the table that wait for a worker again (taken back, not yet sent again).
    waiting_again: usize,
}

impl Ledger {
    /// Jobs in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no job is in flight or waiting again.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Jobs in the table that wait for a worker again.
    pub fn waiting_again(&self) -> usize {
        self.waiting_again
    }

    /// Ids of every job in the table.
    pub fn ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.table.keys().copied()
    }

    /// True when job `id` is in the table, waiting for a worker again (not answered
    /// meanwhile).
    pub fn is_waiting(&self, id: JobId) -> bool {
        self.table
            .get(&id)
            .is_some_and(|entry| entry.state == State::Waiting)
    }

    /// Ids of the jobs running on `worker`.
    pub fn running_on(&self, worker: WorkerId) -> Vec<JobId> {
        self.table
            .iter()
            .filter(|(_, e)| e.runs_on(worker))
            .map(|(&id, _)| id)
            .collect()
    }

    /// True when job `id` is in the table: it has no outcome yet.
    pub fn contains(&self, id: JobId) -> bool {
        self.table.contains_key(&id)
    }

    /// True when job `id` runs on `worker`.
    pub fn runs_on(&self, id: JobId, worker: WorkerId) -> bool {
        self.table.get(&id).is_some_and(|e| e.runs_on(worker))
    }

    /// The worker whose run of job `id` was superseded last (after its lease, or as a
    /// straggler) and may still answer.
    pub fn overrun_on(&self, id: JobId) -> Option<WorkerId> {
        self.table.get(&id).and_then(|e| e.overrun_on)
    }

    /// The votes job `id` has so far (none when it is not in the table).
    pub fn votes(&self, id: JobId) -> &[Vote] {
        self.table.get(&id).map_or(&[], |e| e.votes.as_slice())
    }

    /// Adds `vote` to job `id`'s votes; false when the job is not in the table.
    pub fn add_vote(&mut self, id: JobId, vote: Vote) -> bool {
        self.table
            .get_mut(&id)
            .map(|e| e.votes.push(vote))
            .is_some()
    }

    /// Takes job `id`'s entry out of the table: it has its outcome (the caller closes it).
    pub fn take(&mut self, id: JobId) -> Option<Entry> {
        self.table.remove(&id)
    }

    /// Job `id`, if it runs on `worker`, waits for another worker now; returns whether it
    /// did (the caller puts it back in the line).
    pub fn wait_again(&mut self, id: JobId, worker: WorkerId) -> bool {
        let Some(entry) = self.table.get_mut(&id).filter(|e| e.runs_on(worker)) else {
            return false;
        };
        entry.state = State::Waiting;
        self.waiting_again += 1;
        true
    }

    /// True when `worker`, or a worker of its `group`, already gave a result for job `id`
    /// (a replicated job goes to distinct workers of distinct groups).
    pub fn voted(&self, id: JobId, worker: WorkerId, group: Option<&str>) -> bool {
        self.table.get(&id).is_some_and(|e| {
            e.votes
                .iter()
                .any(|v| v.worker == worker || (group.is_some() && v.group.as_deref() == group))
        })
    }

    /// Worker `from` came back as `to`: the jobs that ran on `from` and that `kept` says it
    /// still has run on `to` now, as does an overrun run of `from`'s. Returns how many
    /// moved, and the other jobs that ran on `from` (it lost them).
    pub fn move_runs(
        &mut self,
        from: WorkerId,
        to: WorkerId,
        kept: impl Fn(JobId) -> bool,
    ) -> (usize, Vec<JobId>) {
        let mut moved = 0;
        let mut lost = Vec::new();
        for (&id, entry) in &mut self.table {
            if entry.overrun_on == Some(from) {
                entry.overrun_on = Some(to);
            }
            for vote in entry.votes.iter_mut().filter(|v| v.worker == from) {
                vote.worker = to;
            }
            if let State::Running { worker, .. } = &mut entry.state {
                if *worker == from {
                    if kept(id) {
                        *worker = to;
                        moved += 1;
                    } else {
                        lost.push(id);
                    }
                }
            }
        }
        (moved, lost)
    }

    /// Up to `limit` jobs running on the workers of `slow` for at least `min_age` by `now`
    /// and never copied (nor overrun) before, oldest first, with the worker running each;
    /// each is marked overrun on that worker (its run may still win; it is stopped once the
    /// job has its outcome).
    pub fn stragglers(
        &mut self,
        slow: &rustc_hash::FxHashSet<WorkerId>,
        now: Instant,
        min_age: std::time::Duration,
        limit: usize,
    ) -> Vec<(JobId, WorkerId)> {
        let mut found: Vec<(Instant, JobId, WorkerId)> = self
            .table
            .iter()
            .filter_map(|(&id, e)| match e.state {
                State::Running { worker, .. }
                    if slow.contains(&worker)
                        && e.overrun_on.is_none()
                        && now.saturating_duration_since(e.at) >= min_age =>
                {
                    Some((e.at, id, worker))
                }
                _ => None,
            })
            .collect();
        found.sort_unstable();
        found.truncate(limit);
        for &(_, id, worker) in &found {
            if let Some(e) = self.table.get_mut(&id) {
                e.overrun_on = Some(worker);
            }
        }
        found.into_iter().map(|(_, id, w)| (id, w)).collect()
    }

    /// Takes job `id` out of the table (it was cancelled): `None` when it is not there,
    /// otherwise the worker running it, if one does (`None` while it waits again).
    pub fn remove(&mut self, id: JobId) -> Option<Option<WorkerId>> {
        let entry = self.table.remove(&id)?;
        Some(match entry.state {
            State::Running { worker, .. } => Some(worker),
            State::Waiting => {
                self.waiting_again -= 1;
                None
            }
        })
    }

    /// Enters job `id`, dispatched for the first time to `worker` at `now`.
    pub fn start(&mut self, id: JobId, frame: JobFrame, worker: WorkerId, now: Instant) {
        self.table.insert(
            id,
            Entry {
                frame,
                at: now,
                state: State::Running {
                    worker,
                    dispatch: 1,
                },
                dispatches: 1,
                lost: 0,
                handler_failures: 0,
                overrun_on: None,
                votes: Vec::new(),
            },
        );
    }

    /// Job `id`, waiting again, is dispatched to `worker` at `now`: returns which dispatch
    /// this is, and the frame to send.
    pub fn restart(&mut self, id: JobId, worker: WorkerId, now: Instant) -> (u32, JobFrame) {
        let entry = self
            .table
            .get_mut(&id)
            .expect("waiting jobs are in the table");
        self.waiting_again -= 1;
        entry.at = now;
        entry.dispatches += 1;
        entry.state = State::Running {
            worker,
            dispatch: entry.dispatches,
        };
        (entry.dispatches, entry.frame.clone())
    }

    /// Gives the `dispatch`th dispatch of job `id` a lease until `deadline`; true when it
    /// is the only lease (the lease keeper then has a deadline to wait for).
    pub fn lease(&mut self, id: JobId, dispatch: u32, deadline: Instant) -> bool {
        let first = self.leases.is_empty();
        self.leases.push_back(Lease {
            deadline,
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
        first
    }

    /// The earliest lease deadline, if any job has a lease.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.front().map(|l| l.deadline)
    }

    /// Takes the leases that ran out by `now`; returns, for each job still running under
    /// one, the job and the worker running it.
    fn overrun(&mut self, now: Instant) -> Vec<(JobId, WorkerId)> {
        let mut overrun = Vec::new();
        while let Some(lease) = self.leases.front() {
            if lease.deadline > now {
                break;
            }
            let lease = self.leases.pop_front().expect("front exists");
            let Some(entry) = self.table.get_mut(&lease.id) else {
                continue;
            };
            let State::Running { worker, dispatch } = entry.state else {
                continue;
            };
            if dispatch == lease.dispatch {
                entry.overrun_on = Some(worker);
                overrun.push((lease.id, worker));
            }
        }
        overrun
    }
}

impl Scheduler {
    /// Settles a worker's result for one job: the worker's credit comes back, then the
    /// result is dropped (a duplicate), left to the job's current runner (a superseded
    /// run's failure), retried (a handler failure with retries left), counted as a vote
    /// (with replicas, see `replicate`), or delivered.
    pub(super) fn on_result(
        &mut self,
        worker: WorkerId,
        r: JobResult,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let JobResult { id, outcome } = r;
        let job = match self.ledger.table.entry(id) {
            hash_map::Entry::Occupied(slot) => Some(slot),
            hash_map::Entry::Vacant(_) => None,
        };
        let running_here = job.as_ref().is_some_and(|slot| slot.get().runs_on(worker));
        let held = match self.workers.claim(worker, id, running_here) {
            None => return, // the worker is gone
            Some(Held::Not) => {
                tracing::debug!(worker, %id, "result for a job this worker does not hold; dropped");
                self.tallies.duplicates += 1;
                return;
            }
            Some(held) => held,
        };
        self.workers.return_credit(worker, now);
        let Some(mut job) = job else {
            self.tallies.duplicates += 1;
            return; // already answered by another worker
        };
        if let Err(message) = &outcome {
            if held == Held::Superseded {
                return; // another worker has this job now; wait for its answer
            }
            let entry = job.get_mut();
            if entry.handler_failures < self.config.handler_retries {
                entry.handler_failures += 1;
                entry.state = State::Waiting;
                self.ledger.waiting_again += 1;
                tracing::debug!(%id, %message, "handler failed; retrying");
                self.queue.requeue_front(vec![id]);
                return;
            }
        }
        if self.config.replicas > 1 {
            return self.vote(id, worker, outcome, now, wakes);
        }
        let entry = job.remove();
        self.close_entry(id, entry, worker, now, wakes);
        self.deliver(id, Some(worker), outcome.map_err(JobError::Failed), wakes);
    }

    /// The entry of job `id`, answered by `worker`, has left the table: whoever else still
    /// runs the job is superseded and told to stop it, and the round trip and the answer
    /// are counted.
    pub(super) fn close_entry(
        &mut self,
        id: JobId,
        entry: Entry,
        worker: WorkerId,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        match entry.state {
            State::Running { worker: other, .. } if other != worker => {
                // The job's current runner still holds it; its answer will be a duplicate.
                self.workers.supersede(other, id);
                self.workers.cancel_superseded(other, id, wakes);
            }
            State::Running { .. } => {}
            State::Waiting => self.ledger.waiting_again -= 1,
        }
        if let Some(overrun) = entry.overrun_on.filter(|&w| w != worker) {
            self.workers.cancel_superseded(overrun, id, wakes);
        }
        self.tallies.round_trip.observe(now - entry.at);
        if let Some(w) = self.workers.get_mut(worker) {
            w.done += 1;
        }
    }

    /// Hands every job whose lease ran out by `now` to someone else: the worker running it
    /// keeps it (and its credit) until it answers or leaves, its run superseded.
    pub(super) fn expire_leases(&mut self, now: Instant, wakes: &mut Wakes) {
        let overrun = self.ledger.overrun(now);
        let mut lost = Vec::with_capacity(overrun.len());
        for (id, worker) in overrun {
            tracing::info!(worker, %id, "lease overrun; dispatching the job again");
            self.workers.supersede(worker, id);
            lost.push(id);
        }
        self.requeue_or_fail(lost, wakes);
    }

    /// Counts a loss for each job: puts it back at the front of the line, or reports it failed
    /// once it was lost more than `max_retries` times.
    pub(super) fn requeue_or_fail(&mut self, lost: Vec<JobId>, wakes: &mut Wakes) {
        let mut requeue = Vec::with_capacity(lost.len());
        for id in lost {
            let entry = self
                .ledger
                .table
                .get_mut(&id)
                .expect("lost jobs are in the table");
            entry.lost += 1;
            if entry.lost > self.config.max_retries {
                let attempts = entry.lost;
                self.ledger.table.remove(&id);
                self.deliver(id, None, Err(JobError::WorkerLost { attempts }), wakes);
            } else {
                requeue.push(id);
            }
        }
        self.tallies.redelivered += requeue.len() as u64;
        self.take_back(requeue);
    }

    /// Puts running jobs back at the front of the line, to wait for a worker again.
    pub(super) fn take_back(&mut self, ids: Vec<JobId>) {
        for id in &ids {
            let entry = self
                .ledger
                .table
                .get_mut(id)
                .expect("running jobs are in the table");
            entry.state = State::Waiting;
        }
        self.ledger.waiting_again += ids.len();
        self.queue.requeue_front(ids);
    }
}

/// Places job ids in the in-flight table in runs of [`RUN`] consecutive ids: ids are handed
/// out in order, so the jobs dispatched together, and usually answered together, sit side by
/// side, and filling and emptying a table of many thousand jobs touches each part of it once
/// per run instead of once per job. The runs themselves are scattered by a multiplicative
/// hash (so ids a power of two apart do not pile up in one place), and the seven bits the
/// table compares first are hashed from the whole id.
#[derive(Default)]
struct IdHasher(u64);

/// Consecutive ids placed side by side (one group of the table's control bytes).
const RUN: u64 = 16;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
        const TOP: u64 = 0x7f << 57;
        // The product's high bits fold into its low ones, which alone keep the trailing
        // zeros of a run number that is a multiple of a power of two.
        let mixed = (id / RUN).wrapping_mul(MIX);
        let place = (mixed ^ (mixed >> 32)).wrapping_mul(RUN) | (id % RUN);
        self.0 = (place & !TOP) | (id.wrapping_mul(MIX) & TOP);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, hash::BuildHasher};

    use super::*;

    /// The hash of job `id` in the table.
    fn hash(id: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(JobId(id))
    }

    /// The bits of a hash that place it in a table of 4,096 buckets.
    fn place(id: u64) -> u64 {
        hash(id) % 4096
    }

    #[test]
    fn consecutive_ids_sit_side_by_side_and_runs_scatter() {
        for run in [0, 1, 7, 1000] {
            let first = place(run * RUN);
            for (i, id) in (run * RUN..(run + 1) * RUN).enumerate() {
                assert_eq!(place(id), first + i as u64, "id {id} of run {run}");
            }
        }
        // Ids a power of two apart (every 1,024th job slow, say) spread over the table's
        // 256 places for runs as random ones would (about 162 distinct), not into a few.
        let places: HashSet<u64> = (0..256).map(|k| place(k * 1024) / RUN).collect();
        assert!(
            places.len() > 140,
            "{} distinct places of 256",
            places.len()
        );
        // The bits the table compares first differ within a run.
        let tops: HashSet<u64> = (0..RUN).map(|id| hash(id) >> 57).collect();
        assert!(tops.len() > 8, "{} distinct tops of {RUN}", tops.len());
    }

    #[test]
    fn the_table_finds_every_job_with_ids_of_any_spread() {
        let mut table: HashMap<JobId, u64, BuildHasherDefault<IdHasher>> = HashMap::default();
        let ids: Vec<u64> = (0..5000)
            .map(|i| i * 4096)
            .chain(1 << 40..(1 << 40) + 5000)
            .collect();
        for &id in &ids {
            table.insert(JobId(id), id);
        }
        for &id in &ids {
            assert_eq!(table.remove(&JobId(id)), Some(id));
        }
        assert!(table.is_empty());
    }
}
