//! The wire format: one MessagePack value per WebSocket binary message.
//!
//! Messages travelling to a worker are [`ToWorker`]; messages travelling to the
//! coordinator are [`ToCoordinator`]. Handshake messages ([`Hello`], [`Welcome`],
//! [`Refusal`]) are encoded with field names so that other protocol versions can still
//! read the version and the refusal reason; the hot-path messages ([`Job`],
//! [`JobResult`]) are encoded compactly.
//!
//! ```
//! use distchan_protocol::wire::{self, Job, ToWorker};
//! use distchan_protocol::JobId;
//!
//! let frame = wire::encode_to_worker(&ToWorker::Job(Job { id: JobId(7), payload: "hi".into() }))?;
//! match wire::decode_to_worker(&frame)? {
//!     ToWorker::Job(job) => assert_eq!(job.id, JobId(7)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), distchan_protocol::Error>(())
//! ```

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Prefix of the WebSocket subprotocol name; the version number follows it.
pub const SUBPROTOCOL_PREFIX: &str = "distchan.v";

/// Default largest frame either side accepts: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// WebSocket close code sent with a refusal (RFC 6455 "policy violation").
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a protocol error (malformed or unexpected frame).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket close code for a frame that is too large.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for a normal end (end of work, worker leaving).
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the coordinator is going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The WebSocket subprotocol name for a protocol version, e.g. `distchan.v1`.
pub fn subprotocol(version: u32) -> String {
    format!("{SUBPROTOCOL_PREFIX}{version}")
}

/// Parses a subprotocol name such as `distchan.v1` back into its version.
pub fn parse_subprotocol(name: &str) -> Option<u32> {
    name.trim().strip_prefix(SUBPROTOCOL_PREFIX)?.parse().ok()
}

/// Identifies one job from the moment it is sent until its outcome is delivered.
///
/// Ids are assigned by the coordinator in send order, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What kind of program a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerKind {
    /// The native `distchan-worker` binary or library.
    Native,
    /// A browser tab running the wasm worker.
    Browser,
    /// Any other implementation.
    #[serde(other)]
    Other,
}

/// The first message of every connection, from worker to coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the worker speaks ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// Access token, if the coordinator requires one.
    #[serde(default)]
    pub token: Option<String>,
    /// How many unanswered jobs the worker accepts at once (its credit window).
    pub capacity: u32,
    /// Human-readable name, e.g. `distchan-worker/0.1 on host` or the browser's user agent.
    #[serde(default)]
    pub agent: String,
    /// Native, browser or other.
    #[serde(default = "default_kind")]
    pub kind: WorkerKind,
}

fn default_kind() -> WorkerKind {
    WorkerKind::Other
}

/// The coordinator's answer to an accepted [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The id the coordinator gave this worker (shown in logs and on the dashboard).
    pub worker_id: u64,
    /// Name of the built-in task the jobs are for, if the coordinator names one.
    #[serde(default)]
    pub task: Option<String>,
    /// Interval of the coordinator's heartbeat pings in milliseconds (0 = none).
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// Largest frame the coordinator accepts, in bytes.
    #[serde(default)]
    pub max_frame: u64,
}

/// Why a worker was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The worker speaks another protocol version.
    VersionMismatch,
    /// The access token is missing or wrong.
    BadToken,
    /// The page's origin is not on the coordinator's allow-list.
    OriginNotAllowed,
    /// The coordinator already has as many workers as it accepts.
    TooManyWorkers,
    /// The hello could not be understood.
    Malformed,
    /// The hello did not arrive in time.
    HandshakeTimeout,
    /// The coordinator is shutting down.
    ShuttingDown,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RefusalCode::VersionMismatch => "version mismatch",
            RefusalCode::BadToken => "bad token",
            RefusalCode::OriginNotAllowed => "origin not allowed",
            RefusalCode::TooManyWorkers => "too many workers",
            RefusalCode::Malformed => "malformed hello",
            RefusalCode::HandshakeTimeout => "handshake timeout",
            RefusalCode::ShuttingDown => "shutting down",
            RefusalCode::Other => "refused",
        };
        f.write_str(s)
    }
}

/// The coordinator's answer to a refused [`Hello`]; its layout never changes between versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// Human-readable reason, fit to show to a volunteer.
    pub reason: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// One unit of work: an id and the encoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id; the result must carry it back.
    pub id: JobId,
    /// The payload: MessagePack bytes passed through the transform chain.
    pub payload: Bytes,
}

/// The outcome of one job: the encoded result payload, or the handler's error message.
pub type Outcome = std::result::Result<Bytes, String>;

/// A worker's answer to one [`Job`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The id of the job this answers.
    pub id: JobId,
    /// The encoded result, or the error the handler reported.
    pub outcome: Outcome,
}

/// Messages from the coordinator to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The hello was accepted.
    Welcome(Welcome),
    /// The hello was refused; the connection closes next.
    Refused(Refusal),
    /// A job to run.
    Job(Job),
    /// No more work will come: finish, send the outstanding results, close.
    EndOfWork,
}

/// Messages from a worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// The first message of a connection.
    Hello(Hello),
    /// The answer to a job.
    Result(JobResult),
    /// The worker is leaving: send it no more jobs; it answers the ones it holds, then closes.
    Drain,
    /// A value the worker produced on its own, not in answer to a job (results-only use,
    /// like a Go client that only sends).
    Emit {
        /// The encoded value: MessagePack bytes passed through the transform chain.
        payload: Bytes,
    },
}

fn encode_with<T: Serialize>(msg: &T, named: bool, payload_len: usize) -> Result<Bytes> {
    // Sized up front so a large payload is copied once, not once per growth of the buffer.
    let mut out = Vec::with_capacity(payload_len + 48);
    let written = if named {
        msg.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
    } else {
        msg.serialize(&mut rmp_serde::Serializer::new(&mut out))
    };
    written.map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out.into())
}

/// Encodes a message for a worker as one binary frame.
pub fn encode_to_worker(msg: &ToWorker) -> Result<Bytes> {
    match msg {
        ToWorker::Job(job) => encode_with(msg, false, job.payload.len()),
        _ => encode_with(msg, true, 0),
    }
}

/// Encodes a message for the coordinator as one binary frame.
pub fn encode_to_coordinator(msg: &ToCoordinator) -> Result<Bytes> {
    match msg {
        ToCoordinator::Hello(_) => encode_with(msg, true, 0),
        ToCoordinator::Result(r) => encode_with(
            msg,
            false,
            r.outcome.as_ref().map_or_else(String::len, Bytes::len),
        ),
        ToCoordinator::Emit { payload } => encode_with(msg, false, payload.len()),
        ToCoordinator::Drain => encode_with(msg, false, 0),
    }
}

/// Borrowed mirrors of the messages that carry payloads, so that decoding a frame held in
/// [`Bytes`] hands out payloads that share its memory instead of copies.
mod borrowed {
    use serde::Deserialize;

    use super::{JobId, Refusal, Welcome};

    #[derive(Deserialize)]
    pub struct Job<'a> {
        pub id: JobId,
        #[serde(borrow, with = "serde_bytes")]
        pub payload: &'a [u8],
    }

    #[derive(Deserialize)]
    pub enum ToWorker<'a> {
        Welcome(Welcome),
        Refused(Refusal),
        #[serde(borrow)]
        Job(Job<'a>),
        EndOfWork,
    }

    #[derive(Deserialize)]
    pub struct JobResult<'a> {
        pub id: JobId,
        #[serde(borrow)]
        pub outcome: Result<&'a serde_bytes::Bytes, String>,
    }

    #[derive(Deserialize)]
    pub enum ToCoordinator<'a> {
        Hello(super::Hello),
        #[serde(borrow)]
        Result(JobResult<'a>),
        Drain,
        Emit {
            #[serde(borrow, with = "serde_bytes")]
            payload: &'a [u8],
        },
    }
}

/// Decodes a frame received by a worker.
pub fn decode_to_worker(frame: &[u8]) -> Result<ToWorker> {
    decode_to_worker_shared(&Bytes::copy_from_slice(frame))
}

/// Decodes a frame received by a worker; a job's payload shares the frame's memory.
pub fn decode_to_worker_shared(frame: &Bytes) -> Result<ToWorker> {
    let msg: borrowed::ToWorker<'_> =
        rmp_serde::from_slice(frame).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(match msg {
        borrowed::ToWorker::Welcome(w) => ToWorker::Welcome(w),
        borrowed::ToWorker::Refused(r) => ToWorker::Refused(r),
        borrowed::ToWorker::Job(job) => ToWorker::Job(Job {
            id: job.id,
            payload: share(frame, job.payload),
        }),
        borrowed::ToWorker::EndOfWork => ToWorker::EndOfWork,
    })
}

/// Decodes a frame received by the coordinator.
pub fn decode_to_coordinator(frame: &[u8]) -> Result<ToCoordinator> {
    decode_to_coordinator_shared(&Bytes::copy_from_slice(frame))
}

/// Decodes a frame received by the coordinator; a result's payload shares the frame's memory.
pub fn decode_to_coordinator_shared(frame: &Bytes) -> Result<ToCoordinator> {
    let msg: borrowed::ToCoordinator<'_> =
        rmp_serde::from_slice(frame).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(match msg {
        borrowed::ToCoordinator::Hello(h) => ToCoordinator::Hello(h),
        borrowed::ToCoordinator::Result(r) => ToCoordinator::Result(JobResult {
            id: r.id,
            outcome: r.outcome.map(|b| share(frame, b)),
        }),
        borrowed::ToCoordinator::Drain => ToCoordinator::Drain,
        borrowed::ToCoordinator::Emit { payload } => ToCoordinator::Emit {
            payload: share(frame, payload),
        },
    })
}

/// A [`Bytes`] for `part`, which lies inside `frame`, without copying.
fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        Bytes::new()
    } else {
        frame.slice_ref(part)
    }
}

/// Reads only the protocol version out of a hello frame, whatever else it holds.
///
/// Lets a coordinator tell "another version" apart from "garbage" even when the rest of a
/// foreign hello no longer matches this version's layout.
pub fn peek_hello_version(frame: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    #[derive(Deserialize)]
    enum HelloOnly {
        Hello(VersionOnly),
    }
    match rmp_serde::from_slice::<HelloOnly>(frame) {
        Ok(HelloOnly::Hello(v)) => Some(v.version),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32) -> Hello {
        Hello {
            version,
            token: Some("t".into()),
            capacity: 4,
            agent: "test".into(),
            kind: WorkerKind::Native,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let to_worker = [
            ToWorker::Welcome(Welcome {
                worker_id: 3,
                task: Some("add".into()),
                heartbeat_ms: 5000,
                max_frame: 1024,
            }),
            ToWorker::Refused(Refusal::new(RefusalCode::BadToken, "wrong token")),
            ToWorker::Job(Job {
                id: JobId(u64::MAX),
                payload: Bytes::from_static(&[0, 1, 2, 255]),
            }),
            ToWorker::EndOfWork,
        ];
        for msg in to_worker {
            assert_eq!(
                decode_to_worker(&encode_to_worker(&msg).unwrap()).unwrap(),
                msg
            );
        }
        let to_coordinator = [
            ToCoordinator::Hello(hello(PROTOCOL_VERSION)),
            ToCoordinator::Result(JobResult {
                id: JobId(1),
                outcome: Ok(Bytes::from_static(b"x")),
            }),
            ToCoordinator::Result(JobResult {
                id: JobId(2),
                outcome: Err("boom".into()),
            }),
            ToCoordinator::Drain,
            ToCoordinator::Emit {
                payload: Bytes::from_static(b"e"),
            },
        ];
        for msg in to_coordinator {
            assert_eq!(
                decode_to_coordinator(&encode_to_coordinator(&msg).unwrap()).unwrap(),
                msg
            );
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for frame in [&b""[..], b"\xc1", b"\x81\xa3Job\x01", &[0xff; 64]] {
            assert!(matches!(
                decode_to_coordinator(frame),
                Err(Error::Malformed(_))
            ));
            assert!(matches!(decode_to_worker(frame), Err(Error::Malformed(_))));
        }
    }

    #[test]
    fn version_is_readable_from_a_foreign_hello() {
        // A future hello with an extra field and a changed capacity type still yields its version.
        #[derive(Serialize)]
        struct FutureHello {
            version: u32,
            capacity: String,
            colour: &'static str,
        }
        #[derive(Serialize)]
        enum Msg {
            Hello(FutureHello),
        }
        let frame = rmp_serde::to_vec_named(&Msg::Hello(FutureHello {
            version: 9,
            capacity: "lots".into(),
            colour: "blue",
        }))
        .unwrap();
        assert!(decode_to_coordinator(&frame).is_err());
        assert_eq!(peek_hello_version(&frame), Some(9));
        let ours = encode_to_coordinator(&ToCoordinator::Hello(hello(1))).unwrap();
        assert_eq!(peek_hello_version(&ours), Some(1));
    }

    #[test]
    fn unknown_refusal_code_still_decodes() {
        #[derive(Serialize)]
        struct FutureRefusal {
            code: &'static str,
            reason: &'static str,
        }
        #[derive(Serialize)]
        enum Msg {
            Refused(FutureRefusal),
        }
        let frame = rmp_serde::to_vec_named(&Msg::Refused(FutureRefusal {
            code: "SolarFlare",
            reason: "try later",
        }))
        .unwrap();
        assert_eq!(
            decode_to_worker(&frame).unwrap(),
            ToWorker::Refused(Refusal::new(RefusalCode::Other, "try later"))
        );
    }

    #[test]
    fn decoded_payloads_share_the_frame() {
        let payload = Bytes::from(vec![7u8; 1000]);
        let frame = encode_to_worker(&ToWorker::Job(Job {
            id: JobId(1),
            payload: payload.clone(),
        }))
        .unwrap();
        let ToWorker::Job(job) = decode_to_worker_shared(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(job.payload, payload);
        let inside = frame.as_ptr_range();
        assert!(
            inside.contains(&job.payload.as_ptr()),
            "no copy of the payload"
        );
        let frame = encode_to_coordinator(&ToCoordinator::Result(JobResult {
            id: JobId(1),
            outcome: Ok(payload.clone()),
        }))
        .unwrap();
        let ToCoordinator::Result(r) = decode_to_coordinator_shared(&frame).unwrap() else {
            panic!()
        };
        assert!(frame.as_ptr_range().contains(&r.outcome.unwrap().as_ptr()));
    }

    #[test]
    fn subprotocol_names() {
        assert_eq!(subprotocol(1), "distchan.v1");
        assert_eq!(parse_subprotocol("distchan.v12"), Some(12));
        assert_eq!(parse_subprotocol("chat"), None);
    }
}
