//! Admissions: jobs whose senders found the scheduler's lock taken, left numbered for its
//! holder to admit, so that a sender never sleeps on the lock while a connection settles
//! its results.
//!
//! Ids still follow the order jobs are admitted in, from 0, with none skipped. A sender
//! leaving a job takes the next id under `waiting`'s lock and appends the job there, so the
//! waiting jobs are in id order and their ids follow one another. The scheduler's holder
//! takes an id only with a compare-and-swap from the next id it admits
//! ([`Admissions::claim`]): that fails when a sender took it, and the holder then admits
//! the waiting jobs first. Whoever releases the scheduler's lock looks for waiting jobs
//! afterwards, and a sender that left one looks for the lock afterwards (`Hub::relay`), each
//! behind a sequentially consistent fence: one of them sees the other, so no job is left
//! behind. (That rests on `try_lock` failing only while someone holds the lock, as the
//! standard library's futex-based mutex does: it never fails spuriously.)
//!
//! A left job is admitted, and its clock read, by the holder: the sender reads no clock.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

use distchan_protocol::{
    wire::{JobFrame, JobFrameBuilder},
    JobId,
};

/// Jobs left for the scheduler's holder, and the id counter they share with it.
#[derive(Default)]
pub(super) struct Admissions {
    /// The id the next job gets, whoever numbers it.
    next_id: AtomicU64,
    /// True while `waiting` may hold jobs: a hint, read without its lock.
    pending: AtomicBool,
    /// The jobs left, in id order.
    waiting: Mutex<Waiting>,
}

/// The jobs left, behind their lock.
#[derive(Default)]
struct Waiting {
    /// In id order, with consecutive ids; each holds a place in the line.
    jobs: VecDeque<(JobId, JobFrame)>,
    /// True once the coordinator shut down: no job is left any more.
    closed: bool,
}

impl Admissions {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Nothing under this lock can panic halfway: the jobs are as good as ever.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers the job in `frame`, taking its frame, and leaves it (holding a place in the
    /// line) for the scheduler's holder; `None`, with `frame` untouched, once closed.
    pub(super) fn leave(&self, frame: &mut JobFrameBuilder) -> Option<JobId> {
        let mut waiting = self.waiting();
        if waiting.closed {
            return None;
        }
        let id = JobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        waiting.jobs.push_back((id, frame.take_frame(id)));
        self.pending.store(true, Ordering::Relaxed);
        Some(id)
    }

    /// For the scheduler's holder: takes id `next` (the next one it admits) for a job, unless
    /// a sender took it: then the waiting jobs go first ([`Admissions::take`]).
    pub(super) fn claim(&self, next: u64) -> bool {
        self.next_id
            .compare_exchange(next, next + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// True when jobs may be waiting (without taking the lock).
    pub(super) fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Moves the waiting jobs into `into`, in id order; waits for a sender that is leaving
    /// one.
    pub(super) fn take(&self, into: &mut VecDeque<(JobId, JobFrame)>) {
        self.move_out(&mut self.waiting(), into);
    }

    /// Moves the jobs of `waiting` (its lock held) into `into`: none is pending any more.
    fn move_out(&self, waiting: &mut Waiting, into: &mut VecDeque<(JobId, JobFrame)>) {
        into.append(&mut waiting.jobs);
        self.pending.store(false, Ordering::Relaxed);
    }

    /// For the holder, after a failed [`Admissions::claim`]: moves the waiting jobs into
    /// `into` and returns `None`; or, when none wait, takes the next id for itself. No job
    /// waits only when jobs that had ids were lost to a panic under the scheduler's lock:
    /// their ids are skipped, rather than the holder waiting for them for ever.
    pub(super) fn take_or_number(&self, into: &mut VecDeque<(JobId, JobFrame)>) -> Option<u64> {
        let mut waiting = self.waiting();
        if waiting.jobs.is_empty() {
            return Some(self.next_id.fetch_add(1, Ordering::Relaxed));
        }
        self.move_out(&mut waiting, into);
        None
    }

    /// No job is left from now on; moves those waiting into `into`.
    pub(super) fn close(&self, into: &mut VecDeque<(JobId, JobFrame)>) {
        let mut waiting = self.waiting();
        waiting.closed = true;
        self.move_out(&mut waiting, into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_jobs_are_numbered_in_order_and_a_claim_fails_until_they_are_taken() {
        let admissions = Admissions::default();
        assert!(admissions.claim(0));
        let mut frame = JobFrameBuilder::from_payload(b"one");
        assert_eq!(admissions.leave(&mut frame), Some(JobId(1)));
        assert!(frame.payload().is_empty(), "the frame was taken");
        let mut frame = JobFrameBuilder::from_payload(b"two");
        assert_eq!(admissions.leave(&mut frame), Some(JobId(2)));
        assert!(admissions.pending());
        // The holder's next id is 1: a sender took it.
        assert!(!admissions.claim(1));
        let mut taken = VecDeque::new();
        admissions.take(&mut taken);
        assert!(!admissions.pending());
        let ids: Vec<u64> = taken.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [1, 2]);
        let (_, frame) = &taken[0];
        assert_eq!(
            frame.to_bytes(),
            JobFrameBuilder::from_payload(b"one")
                .finish(JobId(1))
                .to_bytes()
        );
        // Once they are admitted the holder's next id is 3, and free.
        assert!(admissions.claim(3));
        let mut frame = JobFrameBuilder::from_payload(b"late");
        admissions.close(&mut taken);
        assert_eq!(admissions.leave(&mut frame), None);
        assert_eq!(frame.payload(), b"late", "a refused job keeps its frame");
    }

    #[test]
    fn ids_lost_to_a_panic_are_skipped_rather_than_waited_for() {
        let admissions = Admissions::default();
        let mut left = VecDeque::new();
        assert_eq!(
            admissions.leave(&mut JobFrameBuilder::from_payload(b"a")),
            Some(JobId(0))
        );
        admissions.take(&mut left);
        // Job 0 was taken, then lost before its admission: the holder's next id is still 0.
        left.clear();
        assert!(!admissions.claim(0));
        assert_eq!(admissions.take_or_number(&mut left), Some(1));
        // With jobs waiting, they are taken instead.
        assert_eq!(
            admissions.leave(&mut JobFrameBuilder::from_payload(b"b")),
            Some(JobId(2))
        );
        assert_eq!(admissions.take_or_number(&mut left), None);
        assert_eq!(left.len(), 1);
    }
}
