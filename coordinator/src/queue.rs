//! The line of jobs waiting for a worker.
//!
//! A job sent while a worker has free credit and nothing waits ahead of it goes straight to
//! that worker; otherwise it takes one of the line's `queue_capacity` places (its sender
//! waits while none is free, which is the senders' backpressure) and waits here until a
//! worker has credit. Jobs taken back from lost workers go to the front, ahead of new ones,
//! without taking a place: they were admitted already.
//!
//! The places themselves are a semaphore next to the scheduler's lock
//! ([`Hub`](crate::scheduler::Hub)), so that a sender can wait for one without holding it;
//! a job gives its place back when it is dispatched.

use std::collections::VecDeque;

use distchan_protocol::JobId;

/// The line of waiting jobs, and whether more may still come.
pub(crate) struct JobQueue {
    waiting: VecDeque<JobId>,
    side: Side,
}

/// The job side of a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// No job side (results-only use): the work never ends by itself.
    Absent,
    /// At least one sender is alive.
    Open,
    /// Every sender is gone.
    Closed,
}

impl JobQueue {
    /// A line for a coordinator with or without a job side.
    pub fn new(job_side: bool) -> Self {
        JobQueue {
            waiting: VecDeque::new(),
            side: if job_side { Side::Open } else { Side::Absent },
        }
    }

    /// Appends a new job.
    pub fn push_back(&mut self, id: JobId) {
        self.waiting.push_back(id);
    }

    /// Puts jobs taken back from a worker at the front, lowest id first.
    pub fn requeue_front(&mut self, mut ids: Vec<JobId>) {
        ids.sort_unstable();
        for id in ids.into_iter().rev() {
            self.waiting.push_front(id);
        }
    }

    /// The next job to dispatch.
    pub fn pop_front(&mut self) -> Option<JobId> {
        self.waiting.pop_front()
    }

    /// Number of jobs waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Every sender is gone: no new job will come.
    pub fn close(&mut self) {
        if self.side == Side::Open {
            self.side = Side::Closed;
        }
    }

    /// True once the job side is closed (never, for a coordinator without one: it ends only
    /// when shut down).
    pub fn is_closed(&self) -> bool {
        self.side == Side::Closed
    }
}
