//! A worker pausing and resuming (a volunteer pressed Pause, hid the tab, or unplugged the
//! charger): paused, it gets no jobs and finishes those it runs; the jobs it gives back,
//! which it had not started, go back to the front of the line without counting as lost.

use distchan_protocol::JobId;

use super::{Scheduler, WorkerId};

impl Scheduler {
    /// Worker `wid` pauses and gives back `released`.
    pub(super) fn pause(&mut self, wid: WorkerId, released: Vec<JobId>) {
        if self.workers.set_paused(wid, true) {
            tracing::info!(worker = wid, released = released.len(), "worker paused");
        }
        let mut back = Vec::with_capacity(released.len());
        for id in released {
            let running_here = self.ledger.runs_on(id, wid);
            if self.workers.give_back(wid, id, running_here) && running_here {
                back.push(id);
            }
        }
        // They go to others when the connection's batch is settled (`Hub::settle`).
        self.take_back(back);
    }

    /// Worker `wid` takes jobs again.
    pub(super) fn unpause(&mut self, wid: WorkerId) {
        if self.workers.set_paused(wid, false) {
            tracing::info!(worker = wid, "worker resumed after a pause");
        }
    }
}
