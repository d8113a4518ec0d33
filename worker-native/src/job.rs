//! Jobs and their answers as they pass between the connection and whoever runs the jobs:
//! raw ([`RawJob`] in, [`Reply`] out), and typed: a stream of jobs and a sink for their
//! results, like the Go client's `in` and `out` channels.

use std::marker::PhantomData;

use bytes::Bytes;
use distchan_protocol::{payload, wire::Outcome, Error, JobId, Result};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

/// A job as it arrives: its id and plain MessagePack payload (transforms already undone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJob {
    /// The job's id.
    pub id: JobId,
    /// The plain MessagePack payload.
    pub payload: Bytes,
}

/// What a worker sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The outcome of a job: plain MessagePack bytes or an error message.
    Result(JobId, Outcome),
    /// A value sent on the worker's own initiative (plain MessagePack).
    Emit(Bytes),
}

/// One job: its id (pass it back with the result) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Job<J> {
    /// The id to answer with.
    pub id: JobId,
    /// The job itself.
    pub value: J,
}

/// Jobs from the coordinator, in the order they arrive; ends at end-of-work.
///
/// A job whose payload is not a `J` is answered with an error result on the spot and
/// skipped, so it is never silently lost.
#[derive(Debug)]
pub struct JobStream<J> {
    rx: mpsc::Receiver<RawJob>,
    replies: Option<mpsc::Sender<Reply>>,
    _job: PhantomData<fn() -> J>,
}

impl<J: DeserializeOwned> JobStream<J> {
    pub(crate) fn new(rx: mpsc::Receiver<RawJob>, replies: mpsc::Sender<Reply>) -> Self {
        JobStream {
            rx,
            replies: Some(replies),
            _job: PhantomData,
        }
    }

    /// The next job, or `None` once the coordinator said end-of-work (or the connection ended).
    pub async fn recv(&mut self) -> Option<Job<J>> {
        loop {
            let Some(raw) = self.rx.recv().await else {
                self.replies = None;
                return None;
            };
            match payload::from_msgpack(&raw.payload) {
                Ok(value) => return Some(Job { id: raw.id, value }),
                Err(e) => {
                    tracing::warn!(id = %raw.id, error = %e, "job of the wrong type answered with an error");
                    if let Some(tx) = &self.replies {
                        let message = format!("the job is not of the type this worker takes: {e}");
                        let _ = tx.send(Reply::Result(raw.id, Err(message))).await;
                    }
                }
            }
        }
    }
}

/// Where results go. Cloneable; the connection finishes once end-of-work has come and every
/// job received has been answered.
#[derive(Debug)]
pub struct ResultSink<R> {
    tx: mpsc::Sender<Reply>,
    _result: PhantomData<fn(R)>,
}

impl<R> Clone for ResultSink<R> {
    fn clone(&self) -> Self {
        ResultSink {
            tx: self.tx.clone(),
            _result: PhantomData,
        }
    }
}

impl<R: Serialize> ResultSink<R> {
    pub(crate) fn new(tx: mpsc::Sender<Reply>) -> Self {
        ResultSink {
            tx,
            _result: PhantomData,
        }
    }

    /// Sends the result of job `id`: a value, or an error message reported to the
    /// coordinator as that job's failure.
    pub async fn send(&self, id: JobId, result: std::result::Result<R, String>) -> Result<()> {
        let outcome = result.and_then(|v| payload::to_msgpack(&v).map_err(|e| e.to_string()));
        self.tx
            .send(Reply::Result(id, outcome))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends a value that answers no job (results-only use, like a Go client that only sends).
    pub async fn emit(&self, value: R) -> Result<()> {
        let bytes = payload::to_msgpack(&value)?;
        self.tx
            .send(Reply::Emit(bytes))
            .await
            .map_err(|_| Error::Closed)
    }
}
