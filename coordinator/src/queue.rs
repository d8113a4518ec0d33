//! The job queue between the senders and the scheduler.
//!
//! New jobs wait in a bounded channel, so senders feel backpressure while no worker has
//! free credit. The scheduler takes jobs out of the channel only as fast as workers have
//! credit for them; they wait in its `waiting` line, behind jobs taken back from lost
//! workers, which go to the front.

use std::collections::VecDeque;

use bytes::Bytes;
use distchan_protocol::JobId;
use tokio::sync::mpsc;

/// An encoded job on its way to the scheduler.
#[derive(Debug)]
pub(crate) struct QueuedJob {
    pub id: JobId,
    pub payload: Bytes,
}

/// The bounded channel of new jobs and the line of jobs waiting for a worker.
pub(crate) struct JobQueue {
    new: Option<mpsc::Receiver<QueuedJob>>,
    waiting: VecDeque<JobId>,
    closed: bool,
}

impl JobQueue {
    /// A queue fed by `rx`; `None` for a coordinator without a job side.
    pub fn new(rx: Option<mpsc::Receiver<QueuedJob>>) -> Self {
        JobQueue {
            new: rx,
            waiting: VecDeque::new(),
            closed: false,
        }
    }

    /// Appends a job taken from the channel.
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

    /// Number of jobs waiting for a worker (not counting the channel).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Number of jobs still in the channel.
    pub fn in_channel(&self) -> usize {
        self.new.as_ref().map_or(0, |rx| rx.len())
    }

    /// True once every sender is gone and the channel has been emptied.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True when the job side exists and may still deliver new jobs.
    pub fn is_open(&self) -> bool {
        self.new.is_some() && !self.closed
    }

    /// Stops taking new jobs; returns the ids of every job never dispatched.
    pub fn close(&mut self) -> Vec<JobId> {
        self.closed = true;
        let mut left: Vec<JobId> = self.waiting.drain(..).collect();
        if let Some(rx) = self.new.as_mut() {
            rx.close();
            while let Ok(job) = rx.try_recv() {
                left.push(job.id);
            }
        }
        left
    }

    /// Waits for up to `limit` new jobs. Zero means every sender is gone.
    pub async fn recv_new(&mut self, buf: &mut Vec<QueuedJob>, limit: usize) -> usize {
        let Some(rx) = self.new.as_mut() else {
            return std::future::pending().await;
        };
        let n = rx.recv_many(buf, limit.max(1)).await;
        if n == 0 {
            self.closed = true;
        }
        n
    }
}
