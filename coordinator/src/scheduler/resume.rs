//! Reconnect grace: a worker whose connection was lost keeps its jobs for a while, and
//! takes them back when it returns with the session its welcome gave.
//!
//! With [`Config::reconnect_grace`](crate::Config::reconnect_grace) set, every worker gets
//! a session in its welcome. When its connection is lost (no close frame from it) while it
//! holds jobs, the worker leaves the ring but its jobs stay in the in-flight table, running
//! on it, until the grace runs out; then they go back to the line as with any lost worker.
//! A worker that connects again within the grace names the session and the jobs it still
//! holds ([`Resume`]): it becomes a new worker that inherits the old one's jobs, window and
//! counts, and its results count as the old one's would have. The jobs it no longer holds
//! (a result lost with the connection, a job never received) go back to the line at once,
//! and those it holds that the coordinator no longer counts as its own (their lease ran out
//! meanwhile) are superseded runs: their answer counts only if the job still has no
//! outcome, and a job that has its outcome is cancelled.
//!
//! A worker may come back before its old connection is seen to be lost: the old worker is
//! taken over all the same, and what its old connection still reads counts for nothing.

use std::collections::VecDeque;

use distchan_protocol::{wire::Resume, JobId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tokio::time::Instant;

use super::{hub::Wakes, workers::Worker, Scheduler, WorkerId};

/// The sessions of connected workers, and the workers whose connection was lost and whose
/// jobs wait for their return.
#[derive(Default)]
pub(super) struct Grace {
    /// The worker each live session belongs to, connected or away.
    sessions: HashMap<String, WorkerId>,
    /// Workers whose connection was lost, by id.
    away: HashMap<WorkerId, Worker>,
    /// When each away worker's grace runs out, earliest first (every grace is equally
    /// long). Entries of workers that came back stay until they come up.
    deadlines: VecDeque<(Instant, WorkerId)>,
}

impl Grace {
    /// When the first away worker's grace runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _)| at)
    }

    /// Forgets `session`, whose worker is gone for good.
    pub fn end_session(&mut self, session: Option<&str>) {
        if let Some(session) = session {
            self.sessions.remove(session);
        }
    }
}

/// A new session id: 128 random bits, in hex.
fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        tracing::warn!(error = %e, "no randomness for a session id; this worker cannot resume");
        return None;
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Scheduler {
    /// The session of worker `id`, just joined, when the coordinator has a reconnect grace.
    pub(super) fn open_session(&mut self, id: WorkerId) -> Option<String> {
        if self.config.reconnect_grace.is_zero() {
            return None;
        }
        let session = new_session_id()?;
        let w = self.workers.get_mut(id)?;
        w.session = Some(session.clone());
        self.grace.sessions.insert(session.clone(), id);
        Some(session)
    }

    /// Worker `id`, whose connection was lost, keeps its jobs for the grace, unless there
    /// is no grace, it has no session or runs no job (the jobs it holds that ran out of
    /// lease, or were given to another worker too, run elsewhere or have their outcome):
    /// returns whether it does.
    pub(super) fn keep_for_return(
        &mut self,
        id: WorkerId,
        reason: &str,
        wakes: &mut Wakes,
    ) -> bool {
        let grace = self.config.reconnect_grace;
        let keeps = self
            .workers
            .get_mut(id)
            .is_some_and(|w| w.session.is_some() && w.runs_jobs());
        if grace.is_zero() || self.shut_down || !keeps {
            return false;
        }
        let Some(w) = self.workers.remove(id) else {
            return false;
        };
        tracing::info!(
            worker = id,
            reason,
            jobs = w.held,
            "worker lost; its jobs wait {grace:?} for its return"
        );
        self.grace.away.insert(id, w);
        self.grace.deadlines.push_back((Instant::now() + grace, id));
        wakes.leases = true;
        wakes.workers = Some(self.workers.len());
        true
    }

    /// The jobs of every away worker whose grace ran out by `now` go back to the line.
    pub(super) fn expire_grace(&mut self, now: Instant, wakes: &mut Wakes) {
        while let Some(&(at, id)) = self.grace.deadlines.front() {
            if at > now {
                break;
            }
            self.grace.deadlines.pop_front();
            if let Some(w) = self.grace.away.remove(&id) {
                self.release(
                    id,
                    w,
                    "it did not come back within the reconnect grace",
                    wakes,
                );
            }
        }
    }

    /// Worker `id`, just joined, asks to resume a session: when it is kept, `id` takes over
    /// its worker's jobs (see the [module docs](self)). Returns whether it did.
    pub(super) fn resume(&mut self, id: WorkerId, resume: Resume, wakes: &mut Wakes) -> bool {
        let Some(old_id) = self.grace.sessions.remove(&resume.session) else {
            return false;
        };
        let Some(old) = self
            .grace
            .away
            .remove(&old_id)
            .or_else(|| self.workers.remove(old_id))
        else {
            return false;
        };
        let holding: HashSet<JobId> = resume.holding.iter().copied().collect();
        let unsent = old.unsent_jobs();
        let has = |job: JobId| holding.contains(&job) || unsent.contains(&job);
        let (kept, lost) = self.ledger.move_runs(old_id, id, has);
        let mut superseded: HashSet<JobId> = old
            .superseded
            .iter()
            .copied()
            .filter(|&job| has(job))
            .collect();
        let mut cancel = Vec::new();
        for &job in &holding {
            if !self.ledger.runs_on(job, id) && superseded.insert(job) && !self.ledger.contains(job)
            {
                cancel.push(job);
            }
        }
        let held = kept + superseded.len();
        tracing::info!(
            worker = id,
            was = old_id,
            kept,
            already_answered = superseded.len(),
            lost = lost.len(),
            "worker came back and resumed its session"
        );
        self.workers.inherit(id, old, held, superseded, wakes);
        for job in cancel {
            self.workers.cancel_superseded(id, job, wakes);
        }
        self.requeue_or_fail(lost, wakes);
        true
    }
}
