//! Cancelling a job: it leaves the line or the in-flight table, the worker holding it is
//! told to stop it, and its outcome is reported as cancelled, once.

use distchan_protocol::JobId;

use super::{hub::Wakes, Scheduler};
use crate::JobError;

impl Scheduler {
    /// Cancels job `id`, unless it has its outcome already (or never existed): returns
    /// whether it did.
    ///
    /// A job waiting in the line leaves it (and gives its place back). A job a worker holds
    /// stays counted against that worker's credit until the worker answers it, like a
    /// superseded run, and that answer is dropped; the worker is told to stop the job. Either
    /// way, the job's outcome is [`JobError::Cancelled`], delivered now.
    pub(super) fn cancel(&mut self, id: JobId, wakes: &mut Wakes) -> bool {
        if let Some(runner) = self.ledger.remove(id) {
            if let Some(wid) = runner {
                self.workers.supersede(wid, id);
                self.workers.cancel_superseded(wid, id, wakes);
            }
        } else if let Some(job) = self.queue.remove_new(id) {
            if job.holds_room {
                wakes.room += 1;
            }
            self.stuck = self.stuck.min(self.queue.waiting());
        } else {
            return false;
        }
        tracing::debug!(%id, "job cancelled");
        self.deliver(id, None, Err(JobError::Cancelled), wakes);
        self.maybe_finish(wakes);
        true
    }
}
