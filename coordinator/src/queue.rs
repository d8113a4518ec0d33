//! The line of jobs waiting for a worker.
//!
//! A job sent while a worker has free credit and nothing waits ahead of it goes straight to
//! that worker; otherwise it takes one of the line's `queue_capacity` places (its sender
//! waits while none is free, which is the senders' backpressure) and waits here, frame and
//! all, until a worker has credit. A job whose sender found the scheduler busy and left it
//! for the scheduler's holder takes a place in any case, until it is dispatched. Jobs taken
//! back from workers (lost, or overrun) go to the front, ahead of new ones, without taking a
//! place: they were admitted already, and wait by id, their frame staying in the
//! scheduler's in-flight table.
//!
//! The places themselves are [`Room`], a semaphore kept next to the scheduler's lock rather
//! than under it, so that a sender can wait for one without holding the lock; a job gives
//! its place back when it is dispatched.

use std::collections::VecDeque;

use distchan_protocol::{wire::JobFrame, JobId};
use tokio::{
    sync::{Semaphore, TryAcquireError},
    time::Instant,
};

/// A job in the line.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A job never dispatched yet.
    New(NewJob),
    /// A job taken back from a worker; the scheduler's table holds it.
    Again(JobId),
}

/// A job never dispatched yet.
#[derive(Debug)]
pub(crate) struct NewJob {
    /// Its id.
    pub id: JobId,
    /// Its complete frame.
    pub frame: JobFrame,
    /// When it was admitted.
    pub at: Instant,
    /// True when it holds one of the line's places (given back when it is dispatched).
    pub holds_room: bool,
}

/// The line of waiting jobs, and whether more may still come.
pub(crate) struct JobQueue {
    /// The jobs, in dispatch order.
    waiting: VecDeque<Waiting>,
    /// How many of `waiting` are [`Waiting::Again`].
    again: usize,
    /// Whether more jobs may still come.
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
            again: 0,
            side: if job_side { Side::Open } else { Side::Absent },
        }
    }

    /// Appends a new job.
    pub fn push_back(&mut self, job: NewJob) {
        self.waiting.push_back(Waiting::New(job));
    }

    /// Puts jobs taken back from a worker at the front, lowest id first.
    pub fn requeue_front(&mut self, mut ids: Vec<JobId>) {
        ids.sort_unstable();
        self.again += ids.len();
        for id in ids.into_iter().rev() {
            self.waiting.push_front(Waiting::Again(id));
        }
    }

    /// Puts jobs that no worker could take back at the front, in the same order.
    pub fn defer(&mut self, jobs: Vec<Waiting>) {
        for job in jobs.into_iter().rev() {
            self.again += usize::from(matches!(job, Waiting::Again(_)));
            self.waiting.push_front(job);
        }
    }

    /// Takes new job `id` out of the line (it was cancelled before any dispatch); `None`
    /// when it is not there as a new job.
    pub fn remove_new(&mut self, id: JobId) -> Option<NewJob> {
        let at = self
            .waiting
            .iter()
            .position(|w| matches!(w, Waiting::New(job) if job.id == id))?;
        match self.waiting.remove(at) {
            Some(Waiting::New(job)) => Some(job),
            _ => None,
        }
    }

    /// The next job to dispatch.
    pub fn pop_front(&mut self) -> Option<Waiting> {
        let job = self.waiting.pop_front()?;
        self.again -= usize::from(matches!(job, Waiting::Again(_)));
        Some(job)
    }

    /// Number of jobs waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Number of waiting jobs that were taken back from a worker.
    pub fn again(&self) -> usize {
        self.again
    }

    /// True when no job waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Ids of the new jobs waiting (never dispatched).
    pub fn new_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.waiting.iter().filter_map(|w| match w {
            Waiting::New(job) => Some(job.id),
            Waiting::Again(_) => None,
        })
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

/// The line's places: a job that cannot go straight to a worker takes one to wait in the
/// line, and gives it back when it is dispatched.
pub(crate) struct Room(Semaphore);

/// Why [`Room::try_take`] took no place.
pub(crate) enum RoomError {
    /// Every place is taken.
    Full,
    /// The coordinator has shut down.
    Closed,
}

impl Room {
    /// `capacity` places (at least one).
    pub fn new(capacity: usize) -> Self {
        Room(Semaphore::new(capacity.max(1)))
    }

    /// Takes a place if one is free, without waiting.
    pub fn try_take(&self) -> Result<(), RoomError> {
        match self.0.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(TryAcquireError::NoPermits) => Err(RoomError::Full),
            Err(TryAcquireError::Closed) => Err(RoomError::Closed),
        }
    }

    /// Waits for a place and takes it; `false` once the coordinator has shut down.
    pub async fn take(&self) -> bool {
        match self.0.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back `n` places, taken by jobs dispatched since.
    pub fn give_back(&self, n: usize) {
        self.0.add_permits(n);
    }

    /// Takes no place any more: every sender waiting for one, and every later one, is
    /// told the coordinator has shut down.
    pub fn close(&self) {
        self.0.close();
    }
}
