//! The scheduler's end of the data path: outcomes waiting for the result receiver (whose
//! backlog pauses dispatch), and end-of-work once every job has its outcome.

use bytes::Bytes;
use distchan_protocol::JobId;

use super::{hub::Wakes, Scheduler, WorkerId};
use crate::{connection::Outgoing, JobError};

/// An outcome as the scheduler delivers it: still encoded.
#[derive(Debug)]
pub(crate) struct RawOutcome {
    /// The job's id (or an emitted value's, from [`EMITTED_ID_BASE`](super::EMITTED_ID_BASE)
    /// up).
    pub id: JobId,
    /// The worker whose answer this is; `None` when no worker answered.
    pub worker: Option<WorkerId>,
    /// The encoded result, or why there is none.
    pub result: Result<Bytes, JobError>,
}

impl Scheduler {
    /// True when as many outcomes wait for the receiver as it may fall behind by: dispatch
    /// pauses until it takes them.
    pub(super) fn outcomes_full(&self) -> bool {
        self.receiver && self.outcomes.len() >= self.config.result_capacity.max(1)
    }

    /// Hands an outcome to the receiver (or counts it, without one).
    pub(super) fn deliver(
        &mut self,
        id: JobId,
        worker: Option<WorkerId>,
        result: Result<Bytes, JobError>,
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

    /// Delivers a value a worker sent on its own, with the next emitted id (emitted values
    /// carry no worker).
    pub(super) fn emit(&mut self, payload: Bytes, wakes: &mut Wakes) {
        let id = JobId(self.next_emitted);
        self.next_emitted += 1;
        self.deliver(id, None, Ok(payload), wakes);
    }

    /// Tells every worker end-of-work, and ends the results, once the job side is closed
    /// and every job has its outcome.
    pub(super) fn maybe_finish(&mut self, wakes: &mut Wakes) {
        // With the table empty, jobs waiting again were all answered meanwhile: only new
        // jobs still count.
        if self.end_sent
            || !self.queue.is_closed()
            || !self.ledger.is_empty()
            || self.queue.waiting() > self.queue.again()
        {
            return;
        }
        self.end_sent = true;
        tracing::info!(
            workers = self.workers.len(),
            "all jobs answered; sending end-of-work"
        );
        // A draining worker had its end-of-work already, in answer to its drain.
        for w in self.workers.values_mut().filter(|w| !w.draining) {
            w.send(Outgoing::EndOfWork, wakes);
        }
        wakes.results = true;
        wakes.finished = true;
    }
}
