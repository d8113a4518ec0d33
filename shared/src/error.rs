//! The error type of the protocol, shared by every distchan crate: what goes wrong in the
//! protocol, the transport and a side's setup.
//!
//! Why one job has no result is not an [`Error`]: the coordinator reports that per job,
//! with its own type (`distchan_coordinator::JobError`).

use std::fmt;

use crate::{module::ModuleError, wire::Refusal};

/// An underlying error of any type, kept as an [`Error`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the protocol, the transport or a side's setup, as
/// variants a caller can match on.
///
/// The coordinator and both workers re-export this type, so one `match` covers them all.
/// When an underlying error caused it (a MessagePack or JSON error, a WebSocket or I/O
/// error), [`source`](std::error::Error::source) returns it, and the message ends with
/// its message, so that `{err}` alone says everything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame that is not a valid protocol message: its bytes are not MessagePack of any
    /// message.
    #[error("malformed frame: {0}")]
    Malformed(#[source] rmp_serde::decode::Error),
    /// A message that is not allowed at this point of the conversation (a job before the
    /// welcome, a second hello, more jobs than the capacity), or a text frame.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// A value could not be serialized into a payload (MessagePack), or an event into JSON.
    #[error("could not encode value: {0}")]
    Encode(#[source] BoxError),
    /// A payload, through the transform chain already, is not MessagePack of the expected
    /// type.
    #[error("could not decode payload: {0}")]
    Decode(#[source] rmp_serde::decode::Error),
    /// A transform of the chain failed (for AES-GCM: another key, or tampered bytes).
    #[error("transform `{transform}` failed: {reason}")]
    Transform {
        /// Name of the failing transform.
        transform: String,
        /// What went wrong.
        reason: String,
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
    /// Something did not happen in time (connecting, the welcome, the coordinator's
    /// heartbeats).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The transport failed: connecting, sending or reading.
    #[error("connection failed: {reason}{}", Cause(.source))]
    Connection {
        /// What failed.
        reason: String,
        /// The underlying error (a WebSocket, HTTP or task error), if there is one.
        #[source]
        source: Option<BoxError>,
    },
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
    #[error("invalid configuration: {reason}{}", Cause(.source))]
    Config {
        /// What is wrong.
        reason: String,
        /// The underlying error (a URL that does not parse, a failed task), if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A task module that cannot be used: not the one announced, or not runnable.
    #[error("task module: {0}")]
    Module(#[from] ModuleError),
    /// An I/O error (binding a socket, reading a file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The other end of a channel is gone (the coordinator shut down, or the worker's
    /// connection ended).
    #[error("channel closed")]
    Closed,
}

impl Error {
    /// [`Error::Connection`] without an underlying error.
    pub fn connection(reason: impl Into<String>) -> Self {
        Error::Connection {
            reason: reason.into(),
            source: None,
        }
    }

    /// [`Error::Connection`] caused by `source`.
    pub fn connection_from(reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Connection {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// [`Error::Config`] without an underlying error.
    pub fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
            source: None,
        }
    }

    /// [`Error::Config`] caused by `source`.
    pub fn config_from(reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Config {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}

/// `: message` of an underlying error, or nothing.
struct Cause<'a>(&'a Option<BoxError>);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

/// How a worker describes the end of its connection.
fn describe_close(code: u16, reason: &str, clean: bool) -> String {
    match (reason.is_empty(), clean) {
        (false, _) => format!("the coordinator closed the connection: {reason}"),
        (true, true) => format!("the coordinator closed the connection (code {code})"),
        (true, false) => format!("the connection was lost (code {code})"),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn underlying_errors_are_sources_and_end_the_message() {
        let io = std::io::Error::other("refused by the host");
        let err = Error::connection_from("connecting to ws://host/ws", io);
        assert_eq!(
            err.to_string(),
            "connection failed: connecting to ws://host/ws: refused by the host"
        );
        assert_eq!(err.source().unwrap().to_string(), "refused by the host");

        let alone = Error::config("ws_path must start with '/'");
        assert_eq!(
            alone.to_string(),
            "invalid configuration: ws_path must start with '/'"
        );
        assert!(alone.source().is_none());

        let garbage = rmp_serde::from_slice::<u64>(&[0xc1]).unwrap_err();
        let err = Error::Malformed(garbage);
        assert!(err.source().is_some());
        assert!(err.to_string().starts_with("malformed frame: "), "{err}");
    }
}
