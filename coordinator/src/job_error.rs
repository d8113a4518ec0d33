//! Why a job has no result: [`JobError`], the error of a [`JobOutcome`](crate::JobOutcome).

use distchan_protocol::Error;

/// Why a job has no result, in its [`JobOutcome`](crate::JobOutcome).
///
/// Failures of the coordinator itself (binding, encoding a job, a closed channel) are the
/// protocol crate's [`Error`]; a `JobError` concerns one job only, and the other jobs go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The worker ran the job and its handler (or task module) reported an error, after
    /// the retries [`Config::handler_retries`](crate::Config::handler_retries) allows; the
    /// message is the worker's.
    #[error("the job's handler failed: {0}")]
    Failed(String),
    /// The job was handed to workers that vanished (or overran its lease) more often than
    /// [`Config::max_retries`](crate::Config::max_retries) allows.
    #[error("the job was lost with its worker {attempts} times; giving up")]
    WorkerLost {
        /// How many times the job was dispatched and lost.
        attempts: u32,
    },
    /// The worker answered, but its result could not be decoded into the result type: a
    /// transform failed ([`Error::Transform`]), or the MessagePack is not of that type
    /// ([`Error::Decode`]).
    #[error("the result could not be decoded: {0}")]
    Undecodable(#[source] Error),
    /// The job was cancelled ([`JobSender::cancel`](crate::JobSender::cancel)) before it
    /// had an outcome. (The metrics count it with the failed jobs.)
    #[error("the job was cancelled")]
    Cancelled,
    /// With [`Config::replicas`](crate::Config::replicas), the workers that computed the
    /// job disagreed and no result was returned by enough of them.
    #[error("{votes} workers returned results for the job and not enough of them agree")]
    Disagreement {
        /// How many results the job had.
        votes: u32,
    },
}
