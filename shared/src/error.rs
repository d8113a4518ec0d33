//! The one error type shared by every distchan crate.

use crate::{module::ModuleError, wire::Refusal};

/// Everything that can go wrong in distchan, as variants a caller can match on.
///
/// The coordinator and both workers re-export this type, so one `match` covers them all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame that is not a valid protocol message (garbage bytes, wrong shape).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A valid message that is not allowed at this point of the conversation.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// A value could not be serialized into a payload.
    #[error("could not encode value: {0}")]
    Encode(String),
    /// A payload could not be turned back into a value (transform or MessagePack failure).
    #[error("could not decode payload: {0}")]
    Decode(String),
    /// A transform of the chain failed.
    #[error("transform `{transform}` failed: {reason}")]
    Transform {
        /// Name of the failing transform.
        transform: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer version {theirs}"
    )]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The coordinator refused this worker; the refusal says why.
    #[error("refused by the coordinator: {0}")]
    Refused(Refusal),
    /// A frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the offending frame.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Something did not happen in time (handshake, heartbeat).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The transport failed or closed unexpectedly.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The coordinator ended the connection, or it was lost (seen by a worker; see
    /// [`WorkerSession::close_reason`](crate::session::WorkerSession::close_reason)).
    #[error("{}", describe_close(*.code, .reason, *.clean))]
    Disconnected {
        /// The WebSocket close code (1006 when the connection dropped without a close frame).
        code: u16,
        /// The coordinator's close reason; empty when it gave none.
        reason: String,
        /// True when the closing handshake completed.
        clean: bool,
    },
    /// Invalid configuration or argument.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A task module that cannot be used: not the one announced, or not runnable.
    #[error("task module: {0}")]
    Module(#[from] ModuleError),
    /// An I/O error (binding a socket, reading a file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The job's handler reported an error (the message is the handler's).
    #[error("the job's handler failed: {0}")]
    Handler(String),
    /// The job was handed to workers that vanished (or overran its lease) too many times.
    #[error("the job was lost with its worker {attempts} times; giving up")]
    WorkerLost {
        /// How many times the job was dispatched and lost.
        attempts: u32,
    },
    /// The coordinator shut down before the job finished.
    #[error("the coordinator shut down before the job finished")]
    Shutdown,
    /// The other end of a channel is gone.
    #[error("channel closed")]
    Closed,
}

/// How a worker describes the end of its connection.
fn describe_close(code: u16, reason: &str, clean: bool) -> String {
    match (reason.is_empty(), clean) {
        (false, _) => format!("the coordinator closed the connection: {reason}"),
        (true, true) => format!("the coordinator closed the connection (code {code})"),
        (true, false) => format!("the connection was lost (code {code})"),
    }
}
