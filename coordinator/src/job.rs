//! The first step of the data path: a typed job is encoded (serde, MessagePack, transforms),
//! given the next [`JobId`] and put into the bounded [`queue`](crate::queue).

use std::{
    fmt,
    marker::PhantomData,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use distchan_protocol::{payload, transform::TransformChain, Error, JobId, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::queue::QueuedJob;

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
    tx: mpsc::Sender<QueuedJob>,
    next_id: Arc<AtomicU64>,
    chain: TransformChain,
    _job: PhantomData<fn(J)>,
}

impl<J> Clone for JobSender<J> {
    fn clone(&self) -> Self {
        JobSender {
            tx: self.tx.clone(),
            next_id: self.next_id.clone(),
            chain: self.chain.clone(),
            _job: PhantomData,
        }
    }
}

impl<J> fmt::Debug for JobSender<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSender")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl<J: Serialize> JobSender<J> {
    pub(crate) fn new(tx: mpsc::Sender<QueuedJob>, chain: TransformChain) -> Self {
        JobSender {
            tx,
            next_id: Arc::new(AtomicU64::new(0)),
            chain,
            _job: PhantomData,
        }
    }

    /// Encodes `job` and queues it, waiting while the queue is full.
    ///
    /// Returns the id its outcome will carry. Fails with [`Error::Encode`] or
    /// [`Error::Transform`] if the job cannot be encoded (nothing is queued then), and with
    /// [`Error::Closed`] once the coordinator has shut down.
    pub async fn send(&self, job: J) -> Result<JobId> {
        let payload = payload::encode(&job, &self.chain)?;
        let permit = self.tx.reserve().await.map_err(|_| Error::Closed)?;
        // No await between taking the id and queueing: ids are never skipped, which
        // ordered delivery relies on.
        let id = JobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        permit.send(QueuedJob { id, payload });
        Ok(id)
    }

    /// Like [`JobSender::send`], but fails with [`TrySendError::Full`] instead of waiting
    /// when the queue is full.
    pub fn try_send(&self, job: J) -> std::result::Result<JobId, TrySendError> {
        let payload = payload::encode(&job, &self.chain).map_err(TrySendError::Encode)?;
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(()) => TrySendError::Closed,
        })?;
        let id = JobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        permit.send(QueuedJob { id, payload });
        Ok(id)
    }

    /// True once the coordinator has stopped taking jobs.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
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
