//! The first step of the data path: a typed job is encoded (serde, MessagePack, transforms)
//! straight into its frame, given the next [`JobId`] and handed to the scheduler: to a
//! worker with free credit, or to the line of waiting jobs.

use std::{collections::VecDeque, fmt, marker::PhantomData, sync::Arc};

use distchan_protocol::{payload, transform::TransformChain, Error, JobId, Result};
use serde::Serialize;

use crate::{
    keyed::{Keyed, KeyedSend},
    scheduler::{Batch, Hub, Submit},
};

/// The sending half of the coordinator's job channel.
///
/// Cloning gives another sender of the same channel. Dropping every sender means
/// "no more work": once every job sent has its outcome, the workers are told end-of-work and
/// the [`ResultReceiver`](crate::ResultReceiver) ends.
///
/// ```no_run
/// # async fn demo(jobs: distchan_coordinator::JobSender<String>) -> distchan_protocol::Result<()> {
/// let id = jobs.send("hello world".to_string()).await?; // waits while the queue is full
/// println!("sent job {id}");
/// drop(jobs); // no more work
/// # Ok(()) }
/// ```
pub struct JobSender<J> {
    inner: Arc<Inner>,
    _job: PhantomData<fn(J)>,
}

/// What every clone of a sender shares; dropping the last closes the job side.
struct Inner {
    hub: Arc<Hub>,
    chain: TransformChain,
    keyed: Arc<Keyed>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.hub.close_jobs();
    }
}

impl<J> Clone for JobSender<J> {
    fn clone(&self) -> Self {
        JobSender {
            inner: self.inner.clone(),
            _job: PhantomData,
        }
    }
}

impl<J> fmt::Debug for JobSender<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSender")
            .field("transforms", &self.inner.chain)
            .finish_non_exhaustive()
    }
}

impl<J: Serialize> JobSender<J> {
    pub(crate) fn new(hub: Arc<Hub>, chain: TransformChain, keyed: Arc<Keyed>) -> Self {
        JobSender {
            inner: Arc::new(Inner { hub, chain, keyed }),
            _job: PhantomData,
        }
    }

    /// Encodes `job` and queues it, waiting while the queue is full.
    ///
    /// Returns the id its outcome will carry; ids follow the order jobs are queued in,
    /// from 0, with none skipped. Fails with [`Error::Encode`] or [`Error::Transform`] if
    /// the job cannot be encoded (nothing is queued then), and with [`Error::Closed`] once
    /// the coordinator has shut down.
    pub async fn send(&self, job: J) -> Result<JobId> {
        let mut frame = payload::encode_job(&job, &self.inner.chain)?;
        let hub = &self.inner.hub;
        match hub.try_submit(&mut frame, false) {
            Submit::Sent(id) => Ok(id),
            Submit::Closed => Err(Error::Closed),
            Submit::NoRoom => {
                if !hub.wait_for_room().await {
                    return Err(Error::Closed);
                }
                match hub.try_submit(&mut frame, true) {
                    Submit::Sent(id) => Ok(id),
                    Submit::Closed | Submit::NoRoom => Err(Error::Closed),
                }
            }
        }
    }

    /// Like [`JobSender::send`], for a job the caller names by `key` (unique within the
    /// run: a file name, a row id, a line number); its [`JobOutcome`](crate::JobOutcome)
    /// carries the key.
    ///
    /// With a journal ([`Builder::journal`](crate::Builder::journal)), a key whose outcome
    /// the journal holds (from this run or an earlier one of the same name) is answered from
    /// there: the job is not encoded or run, and [`KeyedSend::FromJournal`] says so. Every
    /// other keyed job's outcome is journaled before the receiver hands it out: a result, or
    /// the handler's error (a job lost with its workers is not, so sending its key again
    /// runs it again). So a program that restarts and sends its work again pays only for
    /// what is missing. Without a journal the key is only carried along.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distchan_coordinator::Error> {
    /// use distchan_coordinator::{Coordinator, KeyedSend};
    ///
    /// let (_coordinator, jobs, mut results) = Coordinator::builder()
    ///     .journal("squares.journal", "squares of 0..1000")
    ///     .bind::<u64, u64>("127.0.0.1:8080")
    ///     .await?;
    /// let mut computed = 0;
    /// for n in 0..1000u64 {
    ///     if let KeyedSend::Queued(_) = jobs.send_keyed(n.to_be_bytes(), n).await? {
    ///         computed += 1;
    ///     }
    /// }
    /// drop(jobs);
    /// println!("{computed} jobs to compute, the rest from the journal");
    /// while let Some(outcome) = results.recv().await {
    ///     let n = u64::from_be_bytes(outcome.key.unwrap().try_into().unwrap());
    ///     println!("{n}: {:?}", outcome.result);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_keyed(&self, key: impl AsRef<[u8]>, job: J) -> Result<KeyedSend> {
        let (key, hub, keyed) = (key.as_ref(), &self.inner.hub, &self.inner.keyed);
        let mut frame = None;
        let mut has_room = false;
        loop {
            let sent = keyed.submit(key, || {
                let encoded = match &mut frame {
                    Some(f) => f,
                    None => frame.insert(payload::encode_job(&job, &self.inner.chain)?),
                };
                match hub.try_submit(encoded, has_room) {
                    Submit::Sent(id) => Ok(Some(id)),
                    Submit::Closed => Err(Error::Closed),
                    Submit::NoRoom if has_room => Err(Error::Closed),
                    Submit::NoRoom => Ok(None),
                }
            })?;
            match sent {
                Some(sent @ KeyedSend::FromJournal(_)) => {
                    hub.wake_receiver();
                    return Ok(sent);
                }
                Some(sent) => return Ok(sent),
                None => {
                    if !hub.wait_for_room().await {
                        return Err(Error::Closed);
                    }
                    has_room = true;
                }
            }
        }
    }

    /// Encodes every job of `jobs` and queues them in order, waiting while the queue is full;
    /// returns their ids, in the same order. Cheaper per job than [`JobSender::send`] for a
    /// pile of work: the jobs go through the scheduler together, in as few steps as the
    /// queue's room allows.
    ///
    /// Fails with [`Error::Encode`] or [`Error::Transform`] if any job cannot be encoded
    /// (then none is queued), and with [`Error::Closed`] once the coordinator has shut down.
    ///
    /// Not cancel-safe: if the returned future is dropped while it waits for room, the jobs
    /// queued before that still run, but their ids are not returned (their outcomes carry
    /// them).
    ///
    /// ```no_run
    /// # async fn demo(jobs: distchan_coordinator::JobSender<u64>) -> distchan_protocol::Result<()> {
    /// let ids = jobs.send_many(0..1000u64).await?;
    /// assert_eq!(ids.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub async fn send_many(&self, jobs: impl IntoIterator<Item = J>) -> Result<Vec<JobId>> {
        let chain = &self.inner.chain;
        let mut frames = jobs
            .into_iter()
            .map(|job| payload::encode_job(&job, chain))
            .collect::<Result<VecDeque<_>>>()?;
        let mut ids = Vec::with_capacity(frames.len());
        let hub = &self.inner.hub;
        let mut has_room = false;
        while !frames.is_empty() {
            match hub.try_submit_many(&mut frames, has_room, &mut ids) {
                Batch::Done => break,
                Batch::Closed => return Err(Error::Closed),
                Batch::NoRoom => {
                    if !hub.wait_for_room().await {
                        return Err(Error::Closed);
                    }
                    has_room = true;
                }
            }
        }
        Ok(ids)
    }

    /// Like [`JobSender::send`], but fails with [`TrySendError::Full`] instead of waiting
    /// when the queue is full.
    pub fn try_send(&self, job: J) -> std::result::Result<JobId, TrySendError> {
        let mut frame =
            payload::encode_job(&job, &self.inner.chain).map_err(TrySendError::Encode)?;
        match self.inner.hub.try_submit(&mut frame, false) {
            Submit::Sent(id) => Ok(id),
            Submit::NoRoom => Err(TrySendError::Full),
            Submit::Closed => Err(TrySendError::Closed),
        }
    }

    /// Cancels job `id` (an id [`JobSender::send`] and its kin returned): returns `true`
    /// when the job had no outcome yet, and `false` when it had one already (or no job has
    /// that id).
    ///
    /// A cancelled job's outcome is [`JobError::Cancelled`](crate::JobError::Cancelled),
    /// delivered once, like any other outcome: a result the job's worker sends afterwards
    /// is dropped. A job still waiting in the line leaves it without being run. The worker
    /// that holds one is told to stop it: a native worker drops the handler's future (an
    /// async handler stops at its next `.await`; one that computes on a blocking thread
    /// runs to its end) and stops a task module's run within a few milliseconds; a browser
    /// tab's job runs to its end, and its answer is dropped. Until the worker answers, the
    /// job counts against its credit. Keyed jobs' cancelled outcomes are not journaled:
    /// sending the key again runs the job again.
    ///
    /// ```no_run
    /// # async fn demo(jobs: distchan_coordinator::JobSender<String>) -> distchan_protocol::Result<()> {
    /// let id = jobs.send("a long job".to_string()).await?;
    /// // ... the caller no longer needs its result:
    /// if jobs.cancel(id) {
    ///     println!("job {id} cancelled; its outcome says so");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self, id: JobId) -> bool {
        self.inner.hub.cancel(id)
    }

    /// True once the coordinator has stopped taking jobs.
    pub fn is_closed(&self) -> bool {
        self.inner.hub.is_shut_down()
    }
}

/// Why [`JobSender::try_send`] did not queue a job.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The queue is full; try again later or use [`JobSender::send`].
    #[error("the job queue is full")]
    Full,
    /// The coordinator has shut down.
    #[error("the coordinator has shut down")]
    Closed,
    /// The job could not be encoded.
    #[error(transparent)]
    Encode(Error),
}
