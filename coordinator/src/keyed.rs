//! Jobs sent with a key of the caller's ([`JobSender::send_keyed`](crate::JobSender::send_keyed)):
//! with a [journal](crate::journal) (see [`Builder::journal`](crate::Builder::journal)), a key
//! whose outcome is already journaled is answered from the journal without being
//! dispatched, and every other keyed outcome is journaled before the
//! [`ResultReceiver`](crate::ResultReceiver) hands it out. A program that restarts and sends
//! its work again pays only for what is missing.
//!
//! Between the job side and the result side: [`Keyed`] is shared by every sender and the
//! receiver. A keyed job's id is noted ([`Keyed::submit`]) under the same lock the receiver
//! takes to find it ([`Keyed::journal_outcomes`]), so an outcome that arrives before the
//! sender's call returns still finds its key.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
};

use bytes::Bytes;
use distchan_protocol::JobId;

use crate::{
    journal::{Found, Journal, Record},
    scheduler::RawOutcome,
    JobError,
};

/// Ids of outcomes answered from the journal start here (apart from job ids, and below the
/// ids of emitted values).
pub(crate) const REPLAYED_ID_BASE: u64 = 1 << 62;

/// What [`JobSender::send_keyed`](crate::JobSender::send_keyed) did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedSend {
    /// Queued for the workers, with the id its outcome will carry.
    Queued(JobId),
    /// Its outcome was in the journal already: it comes from there (with this id and the
    /// key, and no worker), and the job is not run again.
    FromJournal(JobId),
}

impl KeyedSend {
    /// The id the job's outcome carries.
    pub fn id(&self) -> JobId {
        match self {
            KeyedSend::Queued(id) | KeyedSend::FromJournal(id) => *id,
        }
    }
}

/// The keyed side of a coordinator; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Keyed {
    journal: Option<Journal>,
    /// Set by the first keyed send: until then the receiver looks up nothing.
    used: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Journaled keys and where their record starts.
    done: HashMap<Vec<u8>, u64>,
    /// Keyed jobs queued and not yet answered.
    pending: HashMap<JobId, Vec<u8>>,
    /// Outcomes answered from the journal, waiting for the receiver, with their keys.
    replays: VecDeque<(RawOutcome, Vec<u8>)>,
    /// Outcomes answered from the journal so far (for their ids).
    replayed: u64,
}

impl Keyed {
    /// The keyed side over `journal`, if there is one, which holds the records `found`.
    pub(crate) fn new(journal: Option<(Journal, Vec<Found>)>) -> Self {
        let (journal, done) = match journal {
            Some((journal, found)) => (
                Some(journal),
                found.into_iter().map(|f| (f.key, f.offset)).collect(),
            ),
            None => (None, HashMap::new()),
        };
        Keyed {
            journal,
            used: AtomicBool::new(false),
            state: Mutex::new(State {
                done,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys whose outcome the journal holds.
    pub(crate) fn journaled(&self) -> usize {
        self.lock().done.len()
    }

    /// Answers `key` from the journal if it holds its outcome (the answer waits for the
    /// receiver; returns its id), or else runs `submit` and notes the key for the id it
    /// returns. `Ok(None)` when `submit` queued nothing (`Err` carries its error through).
    pub(crate) fn submit<E>(
        &self,
        key: &[u8],
        submit: impl FnOnce() -> Result<Option<JobId>, E>,
    ) -> Result<Option<KeyedSend>, E> {
        self.used.store(true, Ordering::Release);
        let mut state = self.lock();
        if let (Some(journal), Some(&offset)) = (&self.journal, state.done.get(key)) {
            let result = match journal.read(offset) {
                Ok(record) => match record.outcome {
                    Ok(bytes) => Ok(Bytes::from(bytes)),
                    Err(message) => Err(JobError::Failed(message)),
                },
                // The record was whole when the journal was opened: reading it again failed.
                Err(e) => Err(JobError::Failed(format!(
                    "the journaled outcome could not be read: {e}"
                ))),
            };
            let id = JobId(REPLAYED_ID_BASE + state.replayed);
            state.replayed += 1;
            let outcome = RawOutcome {
                id,
                worker: None,
                result,
            };
            state.replays.push_back((outcome, key.to_vec()));
            return Ok(Some(KeyedSend::FromJournal(id)));
        }
        let Some(id) = submit()? else {
            return Ok(None);
        };
        state.pending.insert(id, key.to_vec());
        Ok(Some(KeyedSend::Queued(id)))
    }

    /// The next outcome answered from the journal, with its key.
    pub(crate) fn next_replay(&self) -> Option<(RawOutcome, Vec<u8>)> {
        if !self.used.load(Ordering::Acquire) {
            return None;
        }
        self.lock().replays.pop_front()
    }

    /// Finds the keys of `outcomes` and journals those that are final (a result, or the
    /// handler's error), all in one group, before any of them is handed out; returns the
    /// keys by id. A failing journal is logged: the outcomes are still handed out, but would
    /// be computed again after a restart.
    pub(crate) fn journal_outcomes<'a>(
        &self,
        outcomes: impl Iterator<Item = &'a RawOutcome>,
        keys: &mut HashMap<JobId, Vec<u8>>,
    ) {
        if !self.used.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if state.pending.is_empty() {
            return;
        }
        let mut records = Vec::new();
        for outcome in outcomes {
            let Some(key) = state.pending.remove(&outcome.id) else {
                continue;
            };
            if self.journal.is_some() {
                match &outcome.result {
                    Ok(bytes) => records.push(Record::ok(key.clone(), bytes.to_vec())),
                    Err(JobError::Failed(message)) => {
                        records.push(Record::err(key.clone(), message.clone()))
                    }
                    // Lost or undecodable: sending the key again runs the job again.
                    Err(_) => {}
                }
            }
            keys.insert(outcome.id, key);
        }
        let Some(journal) = &self.journal else {
            return;
        };
        if records.is_empty() {
            return;
        }
        match journal.append(&records) {
            Ok(offsets) => {
                for (record, offset) in records.into_iter().zip(offsets) {
                    state.done.insert(record.key, offset);
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                outcomes = records.len(),
                "outcomes could not be journaled; they are handed out, and a restart would compute them again"
            ),
        }
    }
}
