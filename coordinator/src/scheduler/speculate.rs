//! Straggler speculation: at the end of a run, when a worker is idle while a much slower
//! one still holds jobs, those jobs are also given to the idle one. The first result wins
//! (see `ledger`); the other run is superseded, and told to stop once the job has its
//! outcome.
//!
//! It applies when a worker answers its last job once the job side is closed and no job
//! waits in the line, to jobs held by a worker whose rate (jobs answered since it joined,
//! over that time) is at most half the idle worker's, and held for longer than the idle
//! worker takes for two jobs; each job is copied once. Adaptive windows already size each
//! worker's share to about a quarter second of its own work, so the end of a run is
//! balanced unless a worker slows down after its window was sized, or windows are fixed:
//! those are the tails it cuts. Strict one-job turns (the Go package's semantics: job `v`
//! goes to worker `v mod N`) never speculate, nor does a coordinator with
//! [`Config::speculation`](crate::Config::speculation) off.

use std::time::Duration;

use rustc_hash::FxHashSet as HashSet;
use tokio::time::Instant;

use super::{hub::Wakes, Scheduler, WorkerId};

/// How many times faster than the worker holding a job an idle worker must be measured.
const FASTER: f64 = 2.0;

/// Shortest time between two looks for stragglers: a look goes over every worker, and with
/// thousands of workers at the end of a run one becomes idle at nearly every result.
const LOOK_EVERY: Duration = Duration::from_millis(10);

impl Scheduler {
    /// Gives the jobs slow workers hold at the end of a run to worker `idle` too, when it
    /// has just answered its last job; see the [module docs](self). (Looking only when a
    /// worker becomes idle keeps the look, which goes over every worker, off most results.)
    pub(super) fn speculate(&mut self, idle: WorkerId, now: Instant, wakes: &mut Wakes) {
        if !self.config.speculation
            || self.config.strict_turns
            || !self.queue.is_closed()
            || !self.queue.is_empty()
            || self.ledger.is_empty()
        {
            return;
        }
        if self
            .speculated_at
            .is_some_and(|at| now.saturating_duration_since(at) < LOOK_EVERY)
        {
            return;
        }
        let Some((fastest, free)) = self.workers.idle(idle, now) else {
            return;
        };
        self.speculated_at = Some(now);
        let slow: HashSet<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.runs_jobs() && w.rate(now).is_some_and(|rate| fastest >= FASTER * rate)
            })
            .map(|(&id, _)| id)
            .collect();
        if slow.is_empty() {
            return;
        }
        let min_age = Duration::from_secs_f64(2.0 / fastest);
        let copies = self.ledger.stragglers(&slow, now, min_age, free);
        if copies.is_empty() {
            return;
        }
        tracing::debug!(
            jobs = copies.len(),
            "speculation: straggling jobs also go to idle workers"
        );
        let mut ids = Vec::with_capacity(copies.len());
        for (id, worker) in copies {
            self.workers.supersede(worker, id);
            ids.push(id);
        }
        self.tallies.speculated += ids.len() as u64;
        self.take_back(ids);
        self.dispatch(now, wakes);
    }
}
