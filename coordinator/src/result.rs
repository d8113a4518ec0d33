//! The last step of the data path: outcomes leave the scheduler, are decoded (transforms,
//! MessagePack, serde) on the receiver's side, optionally put back in send order, and
//! handed to the caller.

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use bytes::Bytes;
use distchan_protocol::{payload, transform::TransformChain, Error, JobId};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::scheduler::EMITTED_ID_BASE;

/// An outcome as the scheduler delivers it: still encoded.
#[derive(Debug)]
pub(crate) struct RawOutcome {
    pub id: JobId,
    pub worker: Option<u64>,
    pub result: Result<Bytes, Error>,
}

/// The outcome of one job: its id and the worker's typed result or why there is none.
///
/// `result` is `Err` with [`Error::Handler`] when the handler reported an error,
/// [`Error::WorkerLost`] when the job was lost with its workers too often, and
/// [`Error::Decode`]/[`Error::Transform`] when the result could not be decoded.
#[derive(Debug)]
pub struct JobOutcome<R> {
    /// The id [`JobSender::send`](crate::JobSender::send) returned for the job. Values a
    /// worker emits on its own (results-only use) carry ids from 2^63 upward.
    pub id: JobId,
    /// The worker whose answer this is (`None` when no worker answered, e.g. a lost job).
    pub worker: Option<u64>,
    /// The result, or why there is none.
    pub result: Result<R, Error>,
}

impl<R> JobOutcome<R> {
    /// True for a value a worker sent on its own rather than in answer to a job.
    pub fn is_emitted(&self) -> bool {
        self.id.0 >= EMITTED_ID_BASE
    }
}

/// The receiving half of the coordinator's result channel.
///
/// Yields one [`JobOutcome`] per job sent, exactly once, and `None` once the job side is
/// closed and every job has its outcome (or the coordinator shut down).
///
/// ```no_run
/// # async fn demo(mut results: distchan_coordinator::ResultReceiver<String>) {
/// while let Some(outcome) = results.recv().await {
///     match outcome.result {
///         Ok(text) => println!("job {}: {text}", outcome.id),
///         Err(e) => eprintln!("job {} failed: {e}", outcome.id),
///     }
/// }
/// # }
/// ```
pub struct ResultReceiver<R> {
    rx: mpsc::Receiver<RawOutcome>,
    chain: TransformChain,
    reorder: Option<Reorder>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ResultReceiver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultReceiver")
            .field("ordered", &self.reorder.is_some())
            .finish_non_exhaustive()
    }
}

/// Holds outcomes that arrived before an earlier job's.
#[derive(Default)]
struct Reorder {
    next: u64,
    early: BTreeMap<u64, RawOutcome>,
}

impl<R: DeserializeOwned> ResultReceiver<R> {
    pub(crate) fn new(
        rx: mpsc::Receiver<RawOutcome>,
        chain: TransformChain,
        ordered: bool,
    ) -> Self {
        ResultReceiver {
            rx,
            chain,
            reorder: ordered.then(Reorder::default),
            _result: PhantomData,
        }
    }

    /// Waits for the next outcome; `None` when there will be no more.
    pub async fn recv(&mut self) -> Option<JobOutcome<R>> {
        let raw = self.recv_raw().await?;
        Some(self.decode(raw))
    }

    /// Collects every remaining outcome until the channel ends.
    pub async fn collect_all(&mut self) -> Vec<JobOutcome<R>> {
        let mut out = Vec::new();
        while let Some(o) = self.recv().await {
            out.push(o);
        }
        out
    }

    async fn recv_raw(&mut self) -> Option<RawOutcome> {
        loop {
            if let Some(r) = self.reorder.as_mut() {
                if let Some(raw) = r.early.remove(&r.next) {
                    r.next += 1;
                    return Some(raw);
                }
            }
            let Some(raw) = self.rx.recv().await else {
                // Channel over: whatever is still held goes out in id order.
                let r = self.reorder.as_mut()?;
                let (id, raw) = r.early.pop_first()?;
                r.next = id + 1;
                return Some(raw);
            };
            match self.reorder.as_mut() {
                Some(r) if raw.id.0 < EMITTED_ID_BASE && raw.id.0 != r.next => {
                    r.early.insert(raw.id.0, raw);
                }
                Some(r) if raw.id.0 == r.next => {
                    r.next += 1;
                    return Some(raw);
                }
                _ => return Some(raw),
            }
        }
    }

    fn decode(&self, raw: RawOutcome) -> JobOutcome<R> {
        let result = raw
            .result
            .and_then(|bytes| payload::decode(bytes, &self.chain));
        JobOutcome {
            id: raw.id,
            worker: raw.worker,
            result,
        }
    }
}
