//! The last step of the data path: outcomes leave the scheduler in batches, are decoded
//! (transforms, MessagePack, serde) on the receiver's side, optionally put back in send
//! order, and handed to the caller.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    marker::PhantomData,
    sync::Arc,
};

use distchan_protocol::{payload, transform::TransformChain, JobId};
use serde::de::DeserializeOwned;

use crate::{
    keyed::{Keyed, REPLAYED_ID_BASE},
    scheduler::{Hub, RawOutcome, Take, EMITTED_ID_BASE},
    JobError,
};

/// The outcome of one job: its id and the worker's typed result or why there is none.
///
/// `result` is `Err` with [`JobError::Failed`] when the handler reported an error,
/// [`JobError::WorkerLost`] when the job was lost with its workers too often, and
/// [`JobError::Undecodable`] when the result could not be decoded.
#[derive(Debug)]
pub struct JobOutcome<R> {
    /// The id [`JobSender::send`](crate::JobSender::send) returned for the job. Values a
    /// worker emits on its own (results-only use) carry ids from 2^63 upward, outcomes
    /// answered from the journal ids from 2^62 up to 2^63.
    pub id: JobId,
    /// The worker whose answer this is (`None` when no worker answered: a lost job, or an
    /// outcome from the journal).
    pub worker: Option<u64>,
    /// The result, or why there is none.
    pub result: Result<R, JobError>,
    /// The key the job was sent with ([`JobSender::send_keyed`](crate::JobSender::send_keyed)).
    pub key: Option<Vec<u8>>,
}

impl<R> JobOutcome<R> {
    /// True for a value a worker sent on its own rather than in answer to a job.
    pub fn is_emitted(&self) -> bool {
        self.id.0 >= EMITTED_ID_BASE
    }

    /// True for an outcome answered from the journal (the job was not run again).
    pub fn is_from_journal(&self) -> bool {
        (REPLAYED_ID_BASE..EMITTED_ID_BASE).contains(&self.id.0)
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
    /// The scheduler the outcomes come from.
    hub: Arc<Hub>,
    /// Outcomes taken from the scheduler and not yet handed out.
    taken: VecDeque<RawOutcome>,
    /// True once the scheduler said no outcome will come any more.
    ended: bool,
    /// The transforms results are decoded through.
    chain: TransformChain,
    /// Outcomes held back until those of earlier jobs are out (`ordered` only).
    reorder: Option<Reorder>,
    /// Keyed jobs and the journal.
    keyed: Arc<Keyed>,
    /// Keys of the outcomes taken and not yet handed out.
    keys: HashMap<JobId, Vec<u8>>,
    /// The type results decode to.
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
    /// The id of the next job whose outcome goes out.
    next: u64,
    /// Outcomes of later jobs, by id.
    early: BTreeMap<u64, RawOutcome>,
}

impl<R: DeserializeOwned> ResultReceiver<R> {
    /// A receiver of `hub`'s outcomes, decoded through `chain`, in send order when `ordered`.
    pub(crate) fn new(
        hub: Arc<Hub>,
        chain: TransformChain,
        ordered: bool,
        keyed: Arc<Keyed>,
    ) -> Self {
        ResultReceiver {
            hub,
            taken: VecDeque::new(),
            ended: false,
            chain,
            reorder: ordered.then(Reorder::default),
            keyed,
            keys: HashMap::new(),
            _result: PhantomData,
        }
    }

    /// Waits for the next outcome; `None` when there will be no more.
    pub async fn recv(&mut self) -> Option<JobOutcome<R>> {
        let raw = self.recv_raw().await?;
        Some(self.decode(raw))
    }

    /// Waits for the next outcome, then appends it and up to `limit - 1` more that are
    /// already there to `buf`; returns how many were appended (0 only when there will be no
    /// more, or when `limit` is 0). Cheaper per outcome than [`ResultReceiver::recv`] when
    /// results stream in fast.
    ///
    /// ```no_run
    /// # async fn demo(mut results: distchan_coordinator::ResultReceiver<u64>) {
    /// let mut batch = Vec::with_capacity(256);
    /// while results.recv_many(&mut batch, 256).await > 0 {
    ///     for outcome in batch.drain(..) {
    ///         println!("{}: {:?}", outcome.id, outcome.result);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn recv_many(&mut self, buf: &mut Vec<JobOutcome<R>>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let Some(first) = self.recv().await else {
            return 0;
        };
        buf.push(first);
        let mut n = 1;
        while n < limit {
            match self.next_ready() {
                Some(raw) => {
                    buf.push(self.decode(raw));
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// Collects every remaining outcome until the channel ends.
    pub async fn collect_all(&mut self) -> Vec<JobOutcome<R>> {
        let mut out = Vec::new();
        while let Some(o) = self.recv().await {
            out.push(o);
        }
        out
    }

    /// Waits for the next outcome to hand out, still encoded; `None` when there will be no
    /// more.
    async fn recv_raw(&mut self) -> Option<RawOutcome> {
        loop {
            // Answers from the journal go first, outside any order.
            if let Some((raw, key)) = self.keyed.next_replay() {
                self.keys.insert(raw.id, key);
                return Some(raw);
            }
            if let Some(raw) = self.next_ready() {
                return Some(raw);
            }
            if self.ended {
                // No more outcomes: whatever is still held goes out in id order.
                let r = self.reorder.as_mut()?;
                let (id, raw) = r.early.pop_first()?;
                r.next = id + 1;
                return Some(raw);
            }
            match self.hub.take_outcomes(&mut self.taken) {
                // Durable before any of them is handed out.
                Take::Some => self
                    .keyed
                    .journal_outcomes(self.taken.iter(), &mut self.keys),
                Take::End => self.ended = true,
                Take::Wait => self.hub.outcomes_ready().await,
            }
        }
    }

    /// The next outcome to hand out among those already taken, without waiting.
    fn next_ready(&mut self) -> Option<RawOutcome> {
        loop {
            if let Some(r) = self.reorder.as_mut() {
                if let Some(raw) = r.early.remove(&r.next) {
                    r.next += 1;
                    return Some(raw);
                }
            }
            let raw = self.taken.pop_front()?;
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

    /// Decodes an outcome's result.
    fn decode(&mut self, raw: RawOutcome) -> JobOutcome<R> {
        let result = raw
            .result
            .and_then(|bytes| payload::decode(bytes, &self.chain).map_err(JobError::Undecodable));
        let key = if self.keys.is_empty() {
            None
        } else {
            self.keys.remove(&raw.id)
        };
        JobOutcome {
            id: raw.id,
            worker: raw.worker,
            result,
            key,
        }
    }
}

impl<R> Drop for ResultReceiver<R> {
    fn drop(&mut self) {
        self.hub.drop_receiver();
    }
}
