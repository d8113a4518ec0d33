//! The wire format: one MessagePack value per WebSocket binary message.
//!
//! Messages travelling to a worker are [`ToWorker`]; messages travelling to the
//! coordinator are [`ToCoordinator`]. Handshake messages ([`Hello`], [`Welcome`],
//! [`Refusal`]) are encoded with field names so that other protocol versions can still
//! read the version and the refusal reason; the hot-path messages ([`Job`],
//! [`JobResult`]) are encoded compactly.
//!
//! Serde defines every message's layout. The frames on the hot path (a job, a batch of
//! jobs, a batch of results) are also written and read by hand, with the bytes serde writes
//! or reads, so that a job frame can be completed around its payload without copying it
//! ([`JobFrameBuilder`]), a batch of jobs is put together from job frames already encoded
//! ([`jobs_frame_parts`]), and the common frames skip serde's generic machinery. Anything
//! the hand-written readers do not recognise is handed to serde, which decides.
//!
//! **Batches** (version 3): when a connection has several jobs to send at once, they travel
//! in one [`ToWorker::Jobs`] message, and a worker answers the jobs it finished in one turn
//! with one [`ToCoordinator::Results`] message ([`ResultsWriter`]). A WebSocket message costs
//! a frame header, a wake-up, a system call and, in a browser, an event and an
//! `ArrayBuffer`: per batch instead of per job. Every guarantee stays per job: each job of a
//! batch is leased, answered, redelivered and deduplicated on its own.
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

use crate::{module::ModuleSpec, pool, Error, Result};

/// The protocol version this crate speaks.
///
/// Version 5: a worker may pause and resume ([`ToCoordinator::Pause`],
/// [`ToCoordinator::Unpause`]), giving back the jobs it had not started; a peer of version 4
/// would not understand them.
///
/// Version 4: the coordinator may tell a worker that a job it holds was cancelled
/// ([`ToWorker::Cancel`]); a peer of version 3 would not understand it.
///
/// Version 3: jobs may come in batches ([`ToWorker::Jobs`]) and results may go in batches
/// ([`ToCoordinator::Results`]); a peer of version 2 would not understand them, so it is
/// refused with a version mismatch at the handshake.
///
/// Version 2: the coordinator checks that a worker's own event loop is alive with
/// [`ToWorker::Ping`] (answered by [`ToCoordinator::Pong`]), and answers a worker's
/// [`ToCoordinator::Drain`] with [`ToWorker::EndOfWork`] once every job it gave that worker
/// has been sent.
pub const PROTOCOL_VERSION: u32 = 5;

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
/// WebSocket close code when a side is going away (its peer went quiet, or its transport
/// failed).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The close code a WebSocket reports for a close frame that carried none (never sent).
pub const CLOSE_NO_STATUS: u16 = 1005;
/// The close code a WebSocket reports for a connection lost without a close frame (never
/// sent).
pub const CLOSE_ABNORMAL: u16 = 1006;

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
    /// Set when the worker lost its connection and is back: the session it had, and the
    /// jobs it still holds (see [`Resume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// Workers that name the same group count as one when a coordinator has each job
    /// computed by several workers (replication): a job never goes to two of them. A
    /// browser's tabs and threads name one random id, kept in the browser's storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What a worker that lost its connection says in its next hello, so that it keeps the
/// jobs it holds (reconnect grace): the coordinator that still keeps them for it
/// ([`Welcome::grace_ms`]) welcomes it back with [`Welcome::resumed`] and takes their
/// results on the new connection; the jobs the worker no longer holds go to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The [`Welcome::session`] of the connection it lost.
    pub session: String,
    /// Every job it still holds: running, or finished with the result not yet sent.
    pub holding: Vec<JobId>,
}

fn default_kind() -> WorkerKind {
    WorkerKind::Other
}

/// The coordinator's answer to an accepted [`Hello`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The task module the jobs are for, if the coordinator runs one instead of a built-in
    /// task: the worker fetches it from the coordinator, checks its hash and runs every job
    /// through it (see [`module`](crate::module)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleSpec>,
    /// This worker's session, when the coordinator keeps a lost worker's jobs for its
    /// return: a worker that loses its connection names it in its next hello
    /// ([`Hello::resume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// How long, in milliseconds, the coordinator keeps a lost worker's jobs for its
    /// return (0: it gives them to others at once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub grace_ms: u64,
    /// True when the hello's [`Resume`] was taken: the worker keeps the jobs it holds and
    /// answers them on this connection. False after a resume means the coordinator no
    /// longer knew the session (the grace ran out, or it restarted): the jobs held are
    /// not this worker's any more and their results would not count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// The worker's group was cut off for results the other workers disagreed with (see
    /// [`Hello::group`]); it may not join again during this run.
    CutOff,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl RefusalCode {
    /// Every code, in declaration order (a test keeps it whole).
    pub const ALL: [RefusalCode; 9] = [
        RefusalCode::VersionMismatch,
        RefusalCode::BadToken,
        RefusalCode::OriginNotAllowed,
        RefusalCode::TooManyWorkers,
        RefusalCode::Malformed,
        RefusalCode::HandshakeTimeout,
        RefusalCode::ShuttingDown,
        RefusalCode::CutOff,
        RefusalCode::Other,
    ];
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
            RefusalCode::CutOff => "cut off",
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
    /// Several jobs to run, each answered on its own (version 3).
    Jobs(Vec<Job>),
    /// No more work will come: finish, send the outstanding results, close. Also the answer
    /// to a [`ToCoordinator::Drain`]: every job for this worker was sent before it.
    EndOfWork,
    /// Is the worker's event loop alive? Answer with [`ToCoordinator::Pong`] carrying the
    /// same number. (WebSocket pings cannot tell: a browser answers them even when the
    /// page is frozen.)
    Ping(u64),
    /// The job with this id, sent to this worker, was cancelled (version 4): its outcome is
    /// settled and its answer will be dropped, so stop it if it still runs. The worker
    /// answers it all the same (an error result will do): the answer gives the credit back.
    /// It may name a job already answered; then there is nothing to do.
    Cancel(JobId),
}

/// Messages from a worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// The first message of a connection.
    Hello(Hello),
    /// The answer to a job.
    Result(JobResult),
    /// The answers to several jobs (version 3).
    Results(Vec<JobResult>),
    /// The worker is leaving: send it no more jobs; it answers the ones it holds and, once
    /// the coordinator's [`ToWorker::EndOfWork`] says nothing more is on its way, closes.
    Drain,
    /// The answer to a [`ToWorker::Ping`], with its number.
    Pong(u64),
    /// A value the worker produced on its own, not in answer to a job (results-only use,
    /// like a Go client that only sends).
    Emit {
        /// The encoded value: MessagePack bytes passed through the transform chain.
        payload: Bytes,
    },
    /// The worker pauses (version 5): send it no more jobs until [`ToCoordinator::Unpause`].
    /// It finishes the jobs it is running and gives back those it had not started.
    Pause {
        /// Jobs it held and will not run: they go to other workers.
        released: Vec<JobId>,
    },
    /// The worker takes jobs again after a [`ToCoordinator::Pause`] (version 5).
    Unpause,
}

fn encode_with<T: Serialize>(msg: &T, named: bool, payload_len: usize) -> Result<Bytes> {
    // Sized up front so a large payload is copied once, not once per growth of the buffer.
    let mut out = pool::take(payload_len + 48);
    let written = if named {
        msg.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
    } else {
        msg.serialize(&mut rmp_serde::Serializer::new(&mut out))
    };
    written.map_err(|e| Error::Encode(Box::new(e)))?;
    Ok(pool::share(out))
}

/// Encodes a message for a worker as one binary frame.
pub fn encode_to_worker(msg: &ToWorker) -> Result<Bytes> {
    match msg {
        ToWorker::Job(job) => Ok(job_frame(job.id, &job.payload)),
        ToWorker::Jobs(jobs) => {
            let frames: Vec<JobFrame> = jobs
                .iter()
                .map(|j| JobFrame::from(job_frame(j.id, &j.payload)))
                .collect();
            let (head, parts) = jobs_frame_parts(&frames);
            let mut out = pool::take(head.frame_len());
            out.extend_from_slice(head.as_bytes());
            parts.for_each(|part| out.extend_from_slice(part.as_ref()));
            Ok(pool::share(out))
        }
        _ => encode_with(msg, true, 0),
    }
}

/// Encodes a message for the coordinator as one binary frame.
pub fn encode_to_coordinator(msg: &ToCoordinator) -> Result<Bytes> {
    match msg {
        ToCoordinator::Hello(_) => encode_with(msg, true, 0),
        ToCoordinator::Result(r) => Ok(result_frame(r.id, &r.outcome)),
        ToCoordinator::Results(results) => {
            let mut writer = ResultsWriter::new();
            results.iter().for_each(|r| writer.push(r.id, &r.outcome));
            Ok(writer.finish())
        }
        ToCoordinator::Emit { payload } => encode_with(msg, false, payload.len()),
        ToCoordinator::Drain
        | ToCoordinator::Pong(_)
        | ToCoordinator::Pause { .. }
        | ToCoordinator::Unpause => encode_with(msg, false, 0),
    }
}

// --- The hot path, by hand -------------------------------------------------------------------
//
// A job frame is `{"Job": [id, payload]}`: fixmap(1), fixstr "Job", fixarray(2), the id as
// the shortest MessagePack unsigned integer, the payload as `bin`. A result frame is
// `{"Result": [id, {"Ok": bin}]}` or `{"Result": [id, {"Err": str}]}`. These are exactly
// the bytes rmp-serde writes for [`ToWorker::Job`] and [`ToCoordinator::Result`].
//
// A batch is `{"Jobs": [[id, payload], ...]}` or `{"Results": [[id, outcome], ...]}`: the
// same elements behind an array header. The jobs' array header is the shortest, as serde
// writes it; the results' is always `array32`, whose count is written once the batch is
// complete (serde reads either).

/// `{"Job": [` : fixmap(1), fixstr(3) "Job", fixarray(2).
const JOB_TAG: &[u8] = &[0x81, 0xa3, b'J', b'o', b'b', 0x92];
/// `{"Result": [` : fixmap(1), fixstr(6) "Result", fixarray(2).
const RESULT_TAG: &[u8] = &[0x81, 0xa6, b'R', b'e', b's', b'u', b'l', b't', 0x92];
/// `{"Jobs": ` : fixmap(1), fixstr(4) "Jobs".
const JOBS_TAG: &[u8] = &[0x81, 0xa4, b'J', b'o', b'b', b's'];
/// `{"Results": ` : fixmap(1), fixstr(7) "Results".
const RESULTS_TAG: &[u8] = &[0x81, 0xa7, b'R', b'e', b's', b'u', b'l', b't', b's'];
/// `{"Ok": ` : fixmap(1), fixstr(2) "Ok".
const OK_TAG: &[u8] = &[0x81, 0xa2, b'O', b'k'];
/// `{"Err": ` : fixmap(1), fixstr(3) "Err".
const ERR_TAG: &[u8] = &[0x81, 0xa3, b'E', b'r', b'r'];

/// Longest header in front of a job's payload: the tag, a 9-byte id and a 5-byte `bin32`
/// length.
pub const JOB_HEADER_MAX: usize = JOB_TAG.len() + 9 + 5;

/// Writes `v` as the shortest MessagePack unsigned integer into `out`; returns its length.
fn put_uint(out: &mut [u8; 9], v: u64) -> usize {
    match v {
        0..=0x7f => {
            out[0] = v as u8;
            1
        }
        0x80..=0xff => {
            out[..2].copy_from_slice(&[0xcc, v as u8]);
            2
        }
        0x100..=0xffff => {
            out[0] = 0xcd;
            out[1..3].copy_from_slice(&(v as u16).to_be_bytes());
            3
        }
        0x1_0000..=0xffff_ffff => {
            out[0] = 0xce;
            out[1..5].copy_from_slice(&(v as u32).to_be_bytes());
            5
        }
        _ => {
            out[0] = 0xcf;
            out[1..9].copy_from_slice(&v.to_be_bytes());
            9
        }
    }
}

/// Writes the MessagePack header of a `bin` (`str` when `text`) of `len` bytes into `out`;
/// returns its length. Lengths beyond `u32::MAX` cannot be framed (frames are far smaller).
pub(crate) fn put_len(out: &mut [u8; 5], len: usize, text: bool) -> usize {
    let (one, two, four) = if text {
        (0xd9, 0xda, 0xdb)
    } else {
        (0xc4, 0xc5, 0xc6)
    };
    match len {
        0..=31 if text => {
            out[0] = 0xa0 | len as u8;
            1
        }
        0..=0xff => {
            out[..2].copy_from_slice(&[one, len as u8]);
            2
        }
        0x100..=0xffff => {
            out[0] = two;
            out[1..3].copy_from_slice(&(len as u16).to_be_bytes());
            3
        }
        _ => {
            out[0] = four;
            out[1..5].copy_from_slice(&(len as u32).to_be_bytes());
            5
        }
    }
}

/// The header of a job frame for `id` and a payload of `len` bytes, and its length.
fn job_header(id: JobId, len: usize) -> ([u8; JOB_HEADER_MAX], usize) {
    // Every part is copied whole (fixed sizes, moved in place rather than by a call to
    // `memcpy`); the next part overwrites what lies past the end of the one before.
    let mut header = [0u8; JOB_HEADER_MAX];
    let mut n = JOB_TAG.len();
    header[..n].copy_from_slice(JOB_TAG);
    let mut int = [0u8; 9];
    let k = put_uint(&mut int, id.0);
    header[n..n + 9].copy_from_slice(&int);
    n += k;
    let mut bin = [0u8; 5];
    let k = put_len(&mut bin, len, false);
    header[n..n + 5].copy_from_slice(&bin);
    (header, n + k)
}

/// The frame of job `id` carrying `payload` (copied once into the frame).
pub fn job_frame(id: JobId, payload: &[u8]) -> Bytes {
    let (header, n) = job_header(id, payload.len());
    let mut out = pool::take(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    pool::share(out)
}

/// A job's whole frame, in one part or two: its encoded bytes, then (for a large payload
/// shared with the caller instead of copied, see [`JobFrameBuilder::share`]) the bytes
/// that end it. Sent one part after the other, the two are one WebSocket message.
///
/// A small frame (a tiny job's) is kept in place, in the `JobFrame` itself: the
/// coordinator copies it into its table of jobs in flight and into a worker's outbox, and
/// frees it on another thread, with no allocation, reference count or free on the way.
/// Larger ones are shared bytes.
///
/// ```
/// use bytes::Bytes;
/// use distchan_protocol::wire::JobFrame;
///
/// let frame = JobFrame::from(Bytes::from_static(b"one part"));
/// assert_eq!((frame.len(), frame.tail().is_empty()), (8, true));
/// assert_eq!(frame.to_bytes(), Bytes::from_static(b"one part"));
/// ```
#[derive(Clone)]
pub struct JobFrame(Repr);

/// How a [`JobFrame`] holds its bytes.
#[derive(Clone)]
enum Repr {
    /// A small frame, in place: copied with the frame, with nothing to allocate, count or
    /// free on the way (a tiny job's frame is copied a few times and freed on another
    /// thread; shared bytes would cost an allocation and an atomic count per copy).
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    /// The frame's bytes, and (an `Option` rather than an empty `Bytes`: nothing to clone
    /// or drop without one) the shared tail that ends it.
    Shared { head: Bytes, tail: Option<Bytes> },
}

/// Longest frame a [`JobFrame`] keeps in place rather than in shared bytes.
pub(crate) const INLINE_MAX: usize = 62;

/// One piece of a frame on its way out: bytes to copy, or shared bytes to send as they are.
#[derive(Debug, Clone)]
pub enum FramePart<'a> {
    /// Bytes to copy (a small frame kept in place).
    Copy(&'a [u8]),
    /// Shared bytes.
    Shared(Bytes),
}

impl FramePart<'_> {
    /// Its length.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsRef<[u8]> for FramePart<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            FramePart::Copy(bytes) => bytes,
            FramePart::Shared(bytes) => bytes,
        }
    }
}

impl JobFrame {
    /// A small frame of `bytes`, kept in place; `None` when longer than [`INLINE_MAX`].
    #[inline]
    fn inline(bytes: &[u8]) -> Option<Self> {
        (bytes.len() <= INLINE_MAX).then(|| {
            let mut inline = [0u8; INLINE_MAX];
            inline[..bytes.len()].copy_from_slice(bytes);
            JobFrame(Repr::Inline {
                len: bytes.len() as u8, // at most INLINE_MAX
                bytes: inline,
            })
        })
    }

    /// The frame's bytes, without the shared tail (the whole frame when in one part).
    pub fn head(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared { head, .. } => head,
        }
    }

    /// The shared bytes that end the frame (empty for a frame in one part).
    pub fn tail(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { .. } => &[],
            Repr::Shared { tail, .. } => tail.as_deref().unwrap_or_default(),
        }
    }

    /// The length of the whole frame.
    pub fn len(&self) -> usize {
        self.head().len() + self.tail().len()
    }

    /// True for a frame of no bytes at all (never a job's).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts to send one after the other: the head, and the tail if there is one.
    pub fn parts(&self) -> impl Iterator<Item = FramePart<'_>> + '_ {
        let (head, tail) = match &self.0 {
            Repr::Inline { .. } => (FramePart::Copy(self.head()), None),
            Repr::Shared { head, tail } => (FramePart::Shared(head.clone()), tail.clone()),
        };
        std::iter::once(head).chain(tail.map(FramePart::Shared))
    }

    /// The whole frame in one piece: a copy when it is in two parts or kept in place.
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self.head()),
            Repr::Shared { head, tail: None } => head.clone(),
            Repr::Shared {
                head,
                tail: Some(tail),
            } => {
                let mut whole = pool::take(self.len());
                whole.extend_from_slice(head);
                whole.extend_from_slice(tail);
                pool::share(whole)
            }
        }
    }
}

impl fmt::Debug for JobFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobFrame")
            .field("head", &Bytes::copy_from_slice(self.head()))
            .field("tail_len", &self.tail().len())
            .finish()
    }
}

impl PartialEq for JobFrame {
    /// Frames are equal when their bytes are, however each holds them.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && (self.head().iter().chain(self.tail())).eq(other.head().iter().chain(other.tail()))
    }
}

impl Eq for JobFrame {}

impl From<Bytes> for JobFrame {
    fn from(head: Bytes) -> Self {
        JobFrame::inline(&head).unwrap_or(JobFrame(Repr::Shared { head, tail: None }))
    }
}

/// A job frame built around its payload: the payload is written first, behind room for
/// the header, and [`JobFrameBuilder::finish`] writes the header in front of it once the
/// job's id is known. The payload is never copied; a large one (from [`pool::LARGE`] bytes
/// on) is written into a buffer of the [`pool`], which takes it back once the frame is
/// dropped, or shared with its owner ([`JobFrameBuilder::share`]).
///
/// ```
/// use std::io::Write;
/// use distchan_protocol::{wire::{self, JobFrameBuilder, ToWorker}, JobId};
///
/// let mut builder = JobFrameBuilder::with_capacity(16);
/// builder.write_all(b"payload")?;
/// let frame = builder.finish(JobId(300));
/// let ToWorker::Job(job) = wire::decode_to_worker(&frame.to_bytes())? else { unreachable!() };
/// assert_eq!((job.id, &job.payload[..]), (JobId(300), &b"payload"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct JobFrameBuilder {
    /// The frame so far: room for the header, then the payload.
    buf: Space,
    /// Bytes shared with their owner that end the payload.
    tail: Option<Bytes>,
}

/// Where a [`JobFrameBuilder`] writes.
#[derive(Debug, Clone)]
enum Space {
    /// In place, while the frame fits: nothing to allocate or free for a small job.
    Small { len: u8, bytes: [u8; SMALL_BUILD] },
    /// An allocated buffer (of the [`pool`] once large).
    Heap(Vec<u8>),
}

impl Space {
    /// Room for the header and no payload yet, in place.
    const EMPTY: Space = Space::Small {
        len: JOB_HEADER_MAX as u8,
        bytes: [0; SMALL_BUILD],
    };
}

/// Most bytes a [`JobFrameBuilder`] writes in place: the header's room and a payload that
/// makes a frame of up to [`INLINE_MAX`] bytes with any header. Also what lets
/// [`JobFrameBuilder::finish`] copy a small frame out in one fixed-size move.
const SMALL_BUILD: usize = JOB_HEADER_MAX + INLINE_MAX;

impl JobFrameBuilder {
    /// An empty payload with room for `capacity` bytes of it.
    pub fn with_capacity(capacity: usize) -> Self {
        let buf = if JOB_HEADER_MAX + capacity <= SMALL_BUILD {
            Space::EMPTY
        } else {
            let mut buf = pool::take(JOB_HEADER_MAX + capacity);
            buf.extend_from_slice(&[0; JOB_HEADER_MAX]);
            Space::Heap(buf)
        };
        JobFrameBuilder { buf, tail: None }
    }

    /// Ends the payload with `tail`, shared instead of copied: the frame goes out in two
    /// parts ([`JobFrame`]). Whatever is written or shared after it comes behind it as
    /// before, but then the tail is copied in first: share last.
    ///
    /// ```
    /// use std::io::Write;
    /// use bytes::Bytes;
    /// use distchan_protocol::{wire::{self, JobFrameBuilder, ToWorker}, JobId};
    ///
    /// let data = Bytes::from(vec![7u8; 1 << 20]);
    /// let mut builder = JobFrameBuilder::with_capacity(5);
    /// builder.write_all(&[0xc6, 0x00, 0x10, 0x00, 0x00])?; // MessagePack: a bin of 1 MiB
    /// builder.share(data.clone());
    /// let frame = builder.finish(JobId(1));
    /// assert_eq!(frame.tail().as_ptr(), data.as_ptr(), "not copied");
    /// let ToWorker::Job(job) = wire::decode_to_worker(&frame.to_bytes())? else { unreachable!() };
    /// assert_eq!(&job.payload[5..], &data[..]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn share(&mut self, tail: Bytes) {
        self.copy_tail_in();
        self.tail = Some(tail);
    }

    /// Copies a shared tail into the buffer, for more bytes to follow it.
    #[inline]
    fn copy_tail_in(&mut self) {
        if self.tail.is_some() {
            let tail = self.tail.take().expect("checked");
            self.append(&tail);
        }
    }

    /// Appends `data`; a payload outgrowing the room in place moves to an allocated
    /// buffer, and one growing large to a buffer of the [`pool`].
    fn append(&mut self, data: &[u8]) {
        self.copy_tail_in();
        match &mut self.buf {
            Space::Small { len, bytes } => {
                let used = usize::from(*len);
                if let Some(room) = bytes.get_mut(used..used + data.len()) {
                    room.copy_from_slice(data);
                    // At most SMALL_BUILD, so it fits a u8.
                    *len = (used + data.len()) as u8;
                    return;
                }
                let mut buf = pool::take((used + data.len()).max(2 * SMALL_BUILD));
                buf.extend_from_slice(&bytes[..used]);
                buf.extend_from_slice(data);
                self.buf = Space::Heap(buf);
            }
            Space::Heap(buf) => {
                pool::reserve(buf, data.len());
                buf.extend_from_slice(data);
            }
        }
    }

    /// A builder holding a copy of `payload`.
    pub fn from_payload(payload: &[u8]) -> Self {
        let mut builder = Self::with_capacity(payload.len());
        builder.append(payload);
        builder
    }

    /// The frame so far: the header's room, then the payload.
    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Space::Small { len, bytes } => &mut bytes[..usize::from(*len)],
            Space::Heap(buf) => buf,
        }
    }

    /// The payload written so far (without a shared tail).
    pub fn payload(&self) -> &[u8] {
        match &self.buf {
            Space::Small { len, bytes } => &bytes[JOB_HEADER_MAX..usize::from(*len)],
            Space::Heap(buf) => &buf[JOB_HEADER_MAX..],
        }
    }

    /// Completes the frame of job `id`.
    pub fn finish(mut self, id: JobId) -> JobFrame {
        self.take_frame(id)
    }

    /// Completes the frame of job `id` like [`JobFrameBuilder::finish`], and leaves the
    /// builder empty, as [`JobFrameBuilder::with_capacity`]`(0)` makes it. For a caller that
    /// lends the builder on its way (`&mut` instead of a move: a builder is over a hundred
    /// bytes, so each move is a copy).
    ///
    /// ```
    /// use distchan_protocol::{wire::JobFrameBuilder, JobId};
    ///
    /// let mut builder = JobFrameBuilder::from_payload(b"payload");
    /// let frame = builder.take_frame(JobId(300));
    /// let finished = JobFrameBuilder::from_payload(b"payload").finish(JobId(300));
    /// assert_eq!(frame.to_bytes(), finished.to_bytes());
    /// assert!(builder.payload().is_empty());
    /// ```
    pub fn take_frame(&mut self, id: JobId) -> JobFrame {
        let tail = self.tail.take();
        let tail_len = tail.as_ref().map_or(0, Bytes::len);
        let (header, n) = job_header(id, self.payload().len() + tail_len);
        let start = JOB_HEADER_MAX - n;
        // The header ends where the payload starts: copied whole from a window that
        // ends with it (a fixed size, so no call to `memcpy` for a few bytes).
        let mut padded = [0u8; 2 * JOB_HEADER_MAX];
        padded[JOB_HEADER_MAX..].copy_from_slice(&header);
        self.bytes_mut()[..JOB_HEADER_MAX].copy_from_slice(&padded[n..n + JOB_HEADER_MAX]);
        let head = match &mut self.buf {
            Space::Small { len, bytes } => {
                let end = usize::from(std::mem::replace(len, JOB_HEADER_MAX as u8));
                let frame = &bytes[start..end];
                if tail.is_none() && frame.len() <= INLINE_MAX {
                    // A fixed-size move: `start + INLINE_MAX` is within SMALL_BUILD.
                    let mut inline = [0u8; INLINE_MAX];
                    inline.copy_from_slice(&bytes[start..start + INLINE_MAX]);
                    return JobFrame(Repr::Inline {
                        len: frame.len() as u8, // at most INLINE_MAX
                        bytes: inline,
                    });
                }
                Bytes::copy_from_slice(frame)
            }
            Space::Heap(buf) => {
                let buf = std::mem::take(buf);
                self.buf = Space::EMPTY;
                if tail.is_none() {
                    if let Some(frame) = JobFrame::inline(&buf[start..]) {
                        return frame;
                    }
                }
                let mut head = pool::share(buf);
                bytes::Buf::advance(&mut head, start);
                head
            }
        };
        JobFrame(Repr::Shared { head, tail })
    }
}

impl std::io::Write for JobFrameBuilder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.append(data);
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.append(data);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The frame of the result of job `id`: the result payload, or the handler's error.
pub fn result_frame(id: JobId, outcome: &Outcome) -> Bytes {
    let mut out = pool::take(RESULT_TAG.len() + 20 + outcome_len(outcome));
    out.extend_from_slice(without_pair(RESULT_TAG));
    put_result_element(&mut out, id, outcome);
    pool::share(out)
}

/// The tag of a frame without the fixarray(2) that opens its `[id, body]` element.
fn without_pair(tag: &[u8]) -> &[u8] {
    &tag[..tag.len() - 1]
}

/// Bytes of an outcome's body.
pub(crate) fn outcome_len(outcome: &Outcome) -> usize {
    match outcome {
        Ok(payload) => payload.len(),
        Err(message) => message.len(),
    }
}

/// Appends `[id, {"Ok": bin}]` or `[id, {"Err": str}]` to `out`.
fn put_result_element(out: &mut Vec<u8>, id: JobId, outcome: &Outcome) {
    let (body, text) = match outcome {
        Ok(payload) => (&payload[..], false),
        Err(message) => (message.as_bytes(), true),
    };
    // The element's head is put together in place, every part copied whole (fixed sizes,
    // no call to `memcpy`; each part overwrites what lies past the end of the one before),
    // then appended whole and cut to its length.
    let mut head = [0u8; 1 + 9 + 5 + 5];
    head[0] = PAIR;
    let mut int = [0u8; 9];
    let mut n = 1 + put_uint(&mut int, id.0);
    head[1..10].copy_from_slice(&int);
    n += if text {
        head[n..n + ERR_TAG.len()].copy_from_slice(ERR_TAG);
        ERR_TAG.len()
    } else {
        head[n..n + OK_TAG.len()].copy_from_slice(OK_TAG);
        OK_TAG.len()
    };
    let mut len = [0u8; 5];
    let len_len = put_len(&mut len, body.len(), text);
    head[n..n + 5].copy_from_slice(&len);
    n += len_len;
    let at = out.len();
    out.extend_from_slice(&head);
    out.truncate(at + n);
    out.extend_from_slice(body);
}

/// The fixarray(2) that opens a job's or a result's `[id, body]`.
const PAIR: u8 = 0x92;

/// Writes the shortest MessagePack array header for `n` items into `out`; returns its
/// length.
fn put_array_len(out: &mut [u8; 5], n: usize) -> usize {
    match n {
        0..=15 => {
            out[0] = 0x90 | n as u8;
            1
        }
        16..=0xffff => {
            out[0] = 0xdc;
            out[1..3].copy_from_slice(&(n as u16).to_be_bytes());
            3
        }
        _ => {
            out[0] = 0xdd;
            out[1..5].copy_from_slice(&(n as u32).to_be_bytes());
            5
        }
    }
}

/// The first bytes of a [`ToWorker::Jobs`] frame: its tag and the array header for `count`
/// jobs.
#[derive(Debug, Clone, Copy)]
pub struct BatchHead {
    bytes: [u8; 11],
    len: usize,
    frame_len: usize,
}

impl BatchHead {
    /// The bytes to write before the jobs.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The length of the whole batch frame: the head and every part.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }
}

/// The parts of one [`ToWorker::Jobs`] frame carrying the jobs of `frames`, each a job
/// frame in one part, as [`job_frame`] and [`JobFrameBuilder`] write them (a small job's):
/// the head, then one part per frame, copied from a frame kept in place and shared from
/// one in shared bytes. Written one after the other they are the batch; its length is the
/// head's plus the parts'.
///
/// ```
/// use distchan_protocol::{wire::{self, JobFrame, ToWorker}, JobId};
///
/// let frames = [(1, &b"a"[..]), (2, b"bc")]
///     .map(|(id, payload)| JobFrame::from(wire::job_frame(JobId(id), payload)));
/// let (head, parts) = wire::jobs_frame_parts(&frames);
/// let mut batch = head.as_bytes().to_vec();
/// parts.for_each(|part| batch.extend_from_slice(part.as_ref()));
/// let ToWorker::Jobs(jobs) = wire::decode_to_worker(&batch)? else { unreachable!() };
/// assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [JobId(1), JobId(2)]);
/// # Ok::<(), distchan_protocol::Error>(())
/// ```
pub fn jobs_frame_parts(
    frames: &[JobFrame],
) -> (BatchHead, impl Iterator<Item = FramePart<'_>> + '_) {
    let mut bytes = [0u8; 11];
    bytes[..JOBS_TAG.len()].copy_from_slice(JOBS_TAG);
    let mut array = [0u8; 5];
    let k = put_array_len(&mut array, frames.len());
    bytes[JOBS_TAG.len()..JOBS_TAG.len() + k].copy_from_slice(&array[..k]);
    let skip = without_pair(JOB_TAG).len();
    let len = JOBS_TAG.len() + k;
    let head = BatchHead {
        bytes,
        len,
        frame_len: len + frames.iter().map(|f| f.len() - skip).sum::<usize>(),
    };
    let parts = frames.iter().map(move |frame| {
        debug_assert!(frame.head().starts_with(JOB_TAG), "not a job frame");
        debug_assert!(frame.tail().is_empty(), "a job frame in two parts");
        match &frame.0 {
            Repr::Inline { .. } => FramePart::Copy(&frame.head()[skip..]),
            Repr::Shared { head, .. } => FramePart::Shared(head.slice(skip..)),
        }
    });
    (head, parts)
}

/// Writes one [`ToCoordinator::Results`] frame, result by result, into one buffer; a
/// single result becomes a [`ToCoordinator::Result`] frame (without a copy). A frame that
/// grows large is written into a buffer of the [`pool`].
///
/// ```
/// use distchan_protocol::{wire::{self, ResultsWriter, ToCoordinator}, JobId};
/// use bytes::Bytes;
///
/// let mut writer = ResultsWriter::new();
/// writer.push(JobId(1), &Ok(Bytes::from_static(b"\xa1A")));
/// writer.push(JobId(2), &Err("no".into()));
/// assert_eq!(writer.len(), 2);
/// let ToCoordinator::Results(results) = wire::decode_to_coordinator(&writer.finish())? else {
///     unreachable!()
/// };
/// assert_eq!(results[1].outcome, Err("no".to_string()));
/// # Ok::<(), distchan_protocol::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResultsWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for ResultsWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ResultsWriter {
    /// Bytes before the first result: the tag and an `array32` header.
    const HEAD: usize = 9 + 5;

    /// An empty batch.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(RESULTS_TAG);
        buf.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
        ResultsWriter { buf, count: 0 }
    }

    /// Appends the result of job `id`.
    pub fn push(&mut self, id: JobId, outcome: &Outcome) {
        // One growth, so a large result is copied once.
        pool::reserve(&mut self.buf, outcome_len(outcome) + 24);
        put_result_element(&mut self.buf, id, outcome);
        self.count += 1;
    }

    /// Results pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first result.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the frame would have now.
    pub fn frame_len(&self) -> usize {
        self.buf.len()
    }

    /// The frame: a batch, or the one result's own frame.
    pub fn finish(mut self) -> Bytes {
        if self.count == 1 {
            let tag = without_pair(RESULT_TAG);
            let start = Self::HEAD - tag.len();
            self.buf[start..Self::HEAD].copy_from_slice(tag);
            let mut frame = pool::share(self.buf);
            bytes::Buf::advance(&mut frame, start);
            return frame;
        }
        self.buf[Self::HEAD - 4..Self::HEAD].copy_from_slice(&self.count.to_be_bytes());
        pool::share(self.buf)
    }
}

/// Reads a MessagePack unsigned integer at the start of `b`: its value and length.
fn get_uint(b: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = b.split_first()?;
    let be = |n: usize| -> Option<u64> {
        let bytes = rest.get(..n)?;
        Some(bytes.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    };
    Some(match first {
        0x00..=0x7f => (u64::from(first), 1),
        0xcc => (be(1)?, 2),
        0xcd => (be(2)?, 3),
        0xce => (be(4)?, 5),
        0xcf => (be(8)?, 9),
        _ => return None,
    })
}

/// Reads a MessagePack `bin` (`str` when `text`) header at the start of `b`: the length it
/// announces and its own length.
pub(crate) fn get_len(b: &[u8], text: bool) -> Option<(usize, usize)> {
    let (&first, rest) = b.split_first()?;
    let be = |n: usize| -> Option<usize> {
        let bytes = rest.get(..n)?;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, &x| acc << 8 | usize::from(x)),
        )
    };
    Some(match (first, text) {
        (0xa0..=0xbf, true) => (usize::from(first & 0x1f), 1),
        (0xc4, false) | (0xd9, true) => (be(1)?, 2),
        (0xc5, false) | (0xda, true) => (be(2)?, 3),
        (0xc6, false) | (0xdb, true) => (be(4)?, 5),
        _ => return None,
    })
}

/// Reads a MessagePack array header at the start of `b`: the count it announces and its
/// own length.
fn get_array_len(b: &[u8]) -> Option<(usize, usize)> {
    let (&first, rest) = b.split_first()?;
    Some(match first {
        0x90..=0x9f => (usize::from(first & 0x0f), 1),
        0xdc => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            3,
        ),
        0xdd => (
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return None,
    })
}

/// The id and body of an element `[id, body-tag body]` at the start of `b`; the body's
/// range, in `b`, ends where the element does. Inlined, so that each caller's constant tag is
/// compared in place (a call to `memcmp` per job cost the worker about 7% of its time).
#[inline(always)]
fn split_element(b: &[u8], body_tag: &[u8], text: bool) -> Option<(u64, std::ops::Range<usize>)> {
    let rest = b.strip_prefix(&[PAIR])?;
    let (id, n) = get_uint(rest)?;
    let rest = rest[n..].strip_prefix(body_tag)?;
    let (len, k) = get_len(rest, text)?;
    let start = b.len() - rest.len() + k;
    let end = start.checked_add(len)?;
    (end <= b.len()).then_some((id, start..end))
}

/// The id and body of a frame `tag [id, body-tag body]` that the body ends exactly.
#[inline(always)]
fn split_tagged(
    frame: &[u8],
    tag: &[u8],
    body_tag: &[u8],
    text: bool,
) -> Option<(u64, std::ops::Range<usize>)> {
    let at = without_pair(tag).len();
    let rest = frame.strip_prefix(without_pair(tag))?;
    let (id, body) = split_element(rest, body_tag, text)?;
    (body.end == rest.len()).then_some((id, at + body.start..frame.len()))
}

/// The elements of a batch frame `tag [element, ...]` read by `element`, which returns an
/// item and where it ends; `None` unless they end the frame exactly.
fn split_batch<T>(
    frame: &Bytes,
    tag: &[u8],
    mut element: impl FnMut(&Bytes, usize) -> Option<(T, usize)>,
) -> Option<Vec<T>> {
    let rest = frame.strip_prefix(tag)?;
    let (n, k) = get_array_len(rest)?;
    let mut at = frame.len() - rest.len() + k;
    // An element takes at least three bytes: a claimed count cannot make a large allocation.
    let mut items = Vec::with_capacity(n.min((frame.len() - at) / 3));
    for _ in 0..n {
        let (item, end) = element(frame, at)?;
        items.push(item);
        at = end;
    }
    (at == frame.len()).then_some(items)
}

/// A job batch read by hand, or `None` for serde to decide.
fn fast_jobs(frame: &Bytes) -> Option<Vec<Job>> {
    split_batch(frame, JOBS_TAG, |frame, at| {
        let (id, body) = split_element(&frame[at..], &[], false)?;
        let job = Job {
            id: JobId(id),
            payload: payload_of(frame, at + body.start..at + body.end),
        };
        Some((job, at + body.end))
    })
}

/// A result batch read by hand, or `None` for serde to decide.
fn fast_results(frame: &Bytes) -> Option<Vec<JobResult>> {
    split_batch(frame, RESULTS_TAG, |frame, at| {
        let b = &frame[at..];
        if let Some((id, body)) = split_element(b, OK_TAG, false) {
            let result = JobResult {
                id: JobId(id),
                outcome: Ok(payload_of(frame, at + body.start..at + body.end)),
            };
            return Some((result, at + body.end));
        }
        let (id, body) = split_element(b, ERR_TAG, true)?;
        let message = std::str::from_utf8(&b[body.clone()]).ok()?;
        let result = JobResult {
            id: JobId(id),
            outcome: Err(message.to_owned()),
        };
        Some((result, at + body.end))
    })
}

/// A job frame read by hand, or `None` for serde to decide.
fn fast_job(frame: &Bytes) -> Option<Job> {
    let (id, body) = split_tagged(frame, JOB_TAG, &[], false)?;
    Some(Job {
        id: JobId(id),
        payload: payload_of(frame, body),
    })
}

/// A result frame read by hand, or `None` for serde to decide.
fn fast_result(frame: &Bytes) -> Option<JobResult> {
    if let Some((id, body)) = split_tagged(frame, RESULT_TAG, OK_TAG, false) {
        return Some(JobResult {
            id: JobId(id),
            outcome: Ok(payload_of(frame, body)),
        });
    }
    let (id, body) = split_tagged(frame, RESULT_TAG, ERR_TAG, true)?;
    let message = std::str::from_utf8(&frame[body]).ok()?;
    Some(JobResult {
        id: JobId(id),
        outcome: Err(message.to_owned()),
    })
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
        #[serde(borrow)]
        Jobs(Vec<Job<'a>>),
        EndOfWork,
        Ping(u64),
        Cancel(JobId),
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
        #[serde(borrow)]
        Results(Vec<JobResult<'a>>),
        Drain,
        Emit {
            #[serde(borrow, with = "serde_bytes")]
            payload: &'a [u8],
        },
        Pong(u64),
        Pause {
            released: Vec<JobId>,
        },
        Unpause,
    }
}

/// Decodes a frame received by a worker.
pub fn decode_to_worker(frame: &[u8]) -> Result<ToWorker> {
    decode_to_worker_shared(&Bytes::copy_from_slice(frame))
}

/// Decodes a frame received by a worker; a job's payload shares the frame's memory (natively,
/// a large one is copied into a [`pool`] buffer, so the frame's memory is free at once).
pub fn decode_to_worker_shared(frame: &Bytes) -> Result<ToWorker> {
    if let Some(job) = fast_job(frame) {
        return Ok(ToWorker::Job(job));
    }
    if let Some(jobs) = fast_jobs(frame) {
        return Ok(ToWorker::Jobs(jobs));
    }
    serde_to_worker(frame)
}

/// [`decode_to_worker_shared`] through serde alone.
fn serde_to_worker(frame: &Bytes) -> Result<ToWorker> {
    let msg: borrowed::ToWorker<'_> = rmp_serde::from_slice(frame).map_err(Error::Malformed)?;
    Ok(match msg {
        borrowed::ToWorker::Welcome(w) => ToWorker::Welcome(w),
        borrowed::ToWorker::Refused(r) => ToWorker::Refused(r),
        borrowed::ToWorker::Job(job) => ToWorker::Job(Job {
            id: job.id,
            payload: share(frame, job.payload),
        }),
        borrowed::ToWorker::Jobs(jobs) => ToWorker::Jobs(
            jobs.into_iter()
                .map(|job| Job {
                    id: job.id,
                    payload: share(frame, job.payload),
                })
                .collect(),
        ),
        borrowed::ToWorker::EndOfWork => ToWorker::EndOfWork,
        borrowed::ToWorker::Ping(n) => ToWorker::Ping(n),
        borrowed::ToWorker::Cancel(id) => ToWorker::Cancel(id),
    })
}

/// Decodes a frame received by the coordinator.
pub fn decode_to_coordinator(frame: &[u8]) -> Result<ToCoordinator> {
    decode_to_coordinator_shared(&Bytes::copy_from_slice(frame))
}

/// Decodes a frame received by the coordinator; a result's payload shares the frame's
/// memory (natively, a large one is copied into a [`pool`] buffer, so the frame's memory is
/// free at once).
pub fn decode_to_coordinator_shared(frame: &Bytes) -> Result<ToCoordinator> {
    if let Some(result) = fast_result(frame) {
        return Ok(ToCoordinator::Result(result));
    }
    if let Some(results) = fast_results(frame) {
        return Ok(ToCoordinator::Results(results));
    }
    serde_to_coordinator(frame)
}

/// [`decode_to_coordinator_shared`] through serde alone.
fn serde_to_coordinator(frame: &Bytes) -> Result<ToCoordinator> {
    let msg: borrowed::ToCoordinator<'_> =
        rmp_serde::from_slice(frame).map_err(Error::Malformed)?;
    Ok(match msg {
        borrowed::ToCoordinator::Hello(h) => ToCoordinator::Hello(h),
        borrowed::ToCoordinator::Result(r) => ToCoordinator::Result(JobResult {
            id: r.id,
            outcome: r.outcome.map(|b| share(frame, b)),
        }),
        borrowed::ToCoordinator::Results(results) => ToCoordinator::Results(
            results
                .into_iter()
                .map(|r| JobResult {
                    id: r.id,
                    outcome: r.outcome.map(|b| share(frame, b)),
                })
                .collect(),
        ),
        borrowed::ToCoordinator::Drain => ToCoordinator::Drain,
        borrowed::ToCoordinator::Pong(n) => ToCoordinator::Pong(n),
        borrowed::ToCoordinator::Pause { released } => ToCoordinator::Pause { released },
        borrowed::ToCoordinator::Unpause => ToCoordinator::Unpause,
        borrowed::ToCoordinator::Emit { payload } => ToCoordinator::Emit {
            payload: share(frame, payload),
        },
    })
}

/// A [`Bytes`] for `part`, which lies inside `frame`: a slice of the frame, no copy.
///
/// A frame carrying a large payload is a message of its own that the native coordinator
/// and worker read past the WebSocket into a [`pool`] buffer (see `read_ahead`, feature
/// `io`), which the pool takes back once the payload is dropped; in a browser, memory is
/// never given back to the system anyway. (A large message sent in fragments is put
/// together by the WebSocket library instead; its payloads then keep that buffer alive.)
fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        Bytes::new()
    } else {
        frame.slice_ref(part)
    }
}

/// The payload at `range` of `frame`.
fn payload_of(frame: &Bytes, range: std::ops::Range<usize>) -> Bytes {
    share(frame, &frame[range])
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
    use proptest::prelude::*;

    #[test]
    fn every_refusal_code_is_listed_once_in_order() {
        for (i, code) in RefusalCode::ALL.iter().enumerate() {
            // Exhaustive: a new code does not compile until it has its place here and in ALL.
            let place = match code {
                RefusalCode::VersionMismatch => 0,
                RefusalCode::BadToken => 1,
                RefusalCode::OriginNotAllowed => 2,
                RefusalCode::TooManyWorkers => 3,
                RefusalCode::Malformed => 4,
                RefusalCode::HandshakeTimeout => 5,
                RefusalCode::ShuttingDown => 6,
                RefusalCode::CutOff => 7,
                RefusalCode::Other => 8,
            };
            assert_eq!(place, i, "{code:?} out of place in RefusalCode::ALL");
        }
    }

    fn hello(version: u32) -> Hello {
        Hello {
            version,
            token: Some("t".into()),
            capacity: 4,
            agent: "test".into(),
            kind: WorkerKind::Native,
            resume: None,
            group: None,
        }
    }

    /// A payload of `len` bytes that differ from one place to the next.
    fn large_payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// True when `part` lies inside `frame`'s memory.
    fn inside(frame: &[u8], part: &[u8]) -> bool {
        let range = frame.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn a_large_job_reads_back_whole_sharing_its_frame() {
        use std::io::Write;
        let want = large_payload(pool::LARGE + 3);
        let mut builder = JobFrameBuilder::with_capacity(16);
        // Written in pieces, as serde writes, so the payload moves to a large buffer midway.
        for piece in want.chunks(1000) {
            builder.write_all(piece).unwrap();
        }
        let frame = builder.finish(JobId(1 << 40)).to_bytes();
        let ToWorker::Job(job) = decode_to_worker_shared(&frame).unwrap() else {
            panic!("not a job frame");
        };
        assert_eq!(job.id, JobId(1 << 40));
        assert!(job.payload == want, "the payload changed on its way");
        assert!(
            inside(&frame, &job.payload),
            "a large payload is not copied either"
        );
        let small = job_frame(JobId(2), b"small");
        let ToWorker::Job(job) = decode_to_worker_shared(&small).unwrap() else {
            panic!("not a job frame");
        };
        assert!(
            inside(&small, &job.payload),
            "a small payload is not copied"
        );
        let jobs: Vec<Job> = (0..2)
            .map(|i| Job {
                id: JobId(i),
                payload: want.clone().into(),
            })
            .collect();
        let batch = encode_to_worker(&ToWorker::Jobs(jobs.clone())).unwrap();
        let ToWorker::Jobs(back) = decode_to_worker_shared(&batch).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(back, jobs);
        assert!(back.iter().all(|j| inside(&batch, &j.payload)));
    }

    #[test]
    fn small_job_frames_are_kept_in_place_and_larger_ones_shared() {
        for (len, room) in [0, 1, 16, 49, 50, 300]
            .into_iter()
            .flat_map(|n| [(n, n), (n, 500)])
        {
            let payload = vec![9u8; len];
            // Written in place, or into an allocated buffer when more room was asked for.
            let mut builder = JobFrameBuilder::with_capacity(room);
            std::io::Write::write_all(&mut builder, &payload).unwrap();
            let frame = builder.finish(JobId(1 << 20));
            let whole = job_frame(JobId(1 << 20), &payload);
            assert_eq!(frame.to_bytes(), whole, "{len} bytes");
            assert_eq!(frame, JobFrame::from(whole.clone()), "{len} bytes");
            let in_place = matches!(frame.0, Repr::Inline { .. });
            assert_eq!(in_place, whole.len() <= INLINE_MAX, "{len} bytes");
            let copied = frame.parts().all(|p| matches!(p, FramePart::Copy(_)));
            assert_eq!(copied, in_place, "{len} bytes");
        }
        // Written a byte at a time, past the room the builder has in place.
        let mut builder = JobFrameBuilder::with_capacity(1);
        let mut payload = Vec::new();
        for i in 0..=2 * SMALL_BUILD {
            assert_eq!(builder.payload(), &payload[..]);
            let frame = builder.clone().finish(JobId(i as u64));
            assert_eq!(
                frame.to_bytes(),
                job_frame(JobId(i as u64), &payload),
                "{i} bytes"
            );
            std::io::Write::write_all(&mut builder, &[i as u8]).unwrap();
            payload.push(i as u8);
        }
    }

    #[test]
    fn a_taken_frame_leaves_its_builder_empty_and_reusable() {
        let tail = Bytes::from(vec![3u8; 300]);
        for (len, room) in [(16, 16), (16, 500), (300, 300)] {
            let payload = vec![9u8; len];
            for shared in [false, true] {
                let mut builder = JobFrameBuilder::with_capacity(room);
                std::io::Write::write_all(&mut builder, &payload).unwrap();
                let mut want = payload.clone();
                if shared {
                    builder.share(tail.clone());
                    want.extend_from_slice(&tail);
                }
                let case = format!("{len} bytes, room {room}, shared tail {shared}");
                let frame = builder.clone().finish(JobId(5));
                assert_eq!(builder.take_frame(JobId(5)), frame, "{case}");
                assert_eq!(frame.to_bytes(), job_frame(JobId(5), &want), "{case}");
                // Empty, with nothing of the first job's left, tail included.
                assert!(builder.payload().is_empty(), "{case}");
                assert_eq!(
                    builder.take_frame(JobId(6)).to_bytes(),
                    job_frame(JobId(6), b"")
                );
                std::io::Write::write_all(&mut builder, b"next").unwrap();
                let next = builder.take_frame(JobId(1 << 40)).to_bytes();
                assert_eq!(next, job_frame(JobId(1 << 40), b"next"), "{case}");
            }
        }
    }

    #[test]
    fn bytes_written_after_a_shared_tail_follow_it() {
        use std::io::Write;
        let (a, b) = (Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 200]));
        let mut builder = JobFrameBuilder::with_capacity(4);
        builder.write_all(b"head").unwrap();
        builder.share(a.clone());
        builder.share(b.clone()); // the first tail is copied in, the second shared
        builder.write_all(b"end").unwrap(); // and so is the second
        let frame = builder.finish(JobId(7));
        assert!(frame.tail().is_empty());
        let want = [&b"head"[..], &a, &b, b"end"].concat();
        assert_eq!(frame.to_bytes(), job_frame(JobId(7), &want));
    }

    #[test]
    fn large_results_read_back_whole_alone_and_in_a_batch() {
        let big = Bytes::from(large_payload(pool::LARGE + 5));
        for count in [1, 3] {
            let mut writer = ResultsWriter::new();
            for i in 0..count {
                writer.push(JobId(i), &Ok(big.clone()));
            }
            let frame = writer.finish();
            let results = match decode_to_coordinator_shared(&frame).unwrap() {
                ToCoordinator::Result(r) => vec![r],
                ToCoordinator::Results(results) => results,
                other => panic!("{other:?}"),
            };
            assert_eq!(results.len(), count as usize);
            for (i, r) in results.iter().enumerate() {
                assert_eq!(r.id, JobId(i as u64));
                let payload = r.outcome.as_ref().unwrap();
                assert!(payload == &big, "result {i} of {count} changed");
                assert!(inside(&frame, payload));
            }
            assert_eq!(serde_to_coordinator(&frame).unwrap().clone(), {
                if count == 1 {
                    ToCoordinator::Result(results[0].clone())
                } else {
                    ToCoordinator::Results(results)
                }
            });
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
                module: None,
                ..Default::default()
            }),
            ToWorker::Refused(Refusal::new(RefusalCode::BadToken, "wrong token")),
            ToWorker::Job(Job {
                id: JobId(u64::MAX),
                payload: Bytes::from_static(&[0, 1, 2, 255]),
            }),
            ToWorker::Jobs(vec![
                Job {
                    id: JobId(1),
                    payload: Bytes::from_static(b"a"),
                },
                Job {
                    id: JobId(2),
                    payload: Bytes::new(),
                },
            ]),
            ToWorker::EndOfWork,
            ToWorker::Ping(u64::MAX),
        ];
        for msg in to_worker {
            assert_eq!(
                decode_to_worker(&encode_to_worker(&msg).unwrap()).unwrap(),
                msg
            );
        }
        let to_coordinator = [
            ToCoordinator::Hello(hello(PROTOCOL_VERSION)),
            ToCoordinator::Hello(Hello {
                group: Some("browser 1".into()),
                ..hello(PROTOCOL_VERSION)
            }),
            ToCoordinator::Result(JobResult {
                id: JobId(1),
                outcome: Ok(Bytes::from_static(b"x")),
            }),
            ToCoordinator::Result(JobResult {
                id: JobId(2),
                outcome: Err("boom".into()),
            }),
            ToCoordinator::Results(vec![
                JobResult {
                    id: JobId(3),
                    outcome: Ok(Bytes::from_static(b"y")),
                },
                JobResult {
                    id: JobId(4),
                    outcome: Err("no".into()),
                },
            ]),
            ToCoordinator::Drain,
            ToCoordinator::Pong(7),
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

    /// Payload and message lengths around every MessagePack length boundary.
    fn lengths() -> impl Strategy<Value = usize> {
        prop_oneof![
            0usize..40,
            prop::sample::select(vec![31, 32, 255, 256, 257, 65_535, 65_536, 65_537, 100_000]),
        ]
    }

    fn ids() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..300,
            prop::sample::select(vec![
                127,
                128,
                255,
                256,
                65_535,
                65_536,
                u32::MAX as u64,
                u32::MAX as u64 + 1,
                u64::MAX
            ]),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn hand_written_job_frames_are_serdes_bytes(id in ids(), len in lengths(), fill in any::<u8>()) {
            let payload = Bytes::from(vec![fill; len]);
            let msg = ToWorker::Job(Job { id: JobId(id), payload: payload.clone() });
            let reference = rmp_serde::to_vec(&msg).unwrap();
            prop_assert_eq!(&job_frame(JobId(id), &payload)[..], &reference[..]);
            let mut builder = JobFrameBuilder::with_capacity(1);
            std::io::Write::write_all(&mut builder, &payload).unwrap();
            let built = builder.finish(JobId(id)).to_bytes();
            prop_assert_eq!(&built[..], &reference[..]);
            prop_assert_eq!(fast_job(&built), Some(Job { id: JobId(id), payload }));
            prop_assert_eq!(serde_to_worker(&built).unwrap(), msg);
        }

        #[test]
        fn hand_written_result_frames_are_serdes_bytes(
            id in ids(),
            len in lengths(),
            ok in any::<bool>(),
            c in any::<char>(),
        ) {
            let outcome = if ok {
                Ok(Bytes::from(vec![7u8; len]))
            } else {
                Err(std::iter::repeat_n(c, len / c.len_utf8()).collect::<String>())
            };
            let msg = ToCoordinator::Result(JobResult { id: JobId(id), outcome: outcome.clone() });
            let reference = rmp_serde::to_vec(&msg).unwrap();
            let frame = result_frame(JobId(id), &outcome);
            prop_assert_eq!(&frame[..], &reference[..]);
            prop_assert_eq!(fast_result(&frame), Some(JobResult { id: JobId(id), outcome }));
            prop_assert_eq!(serde_to_coordinator(&frame).unwrap(), msg);
        }

        /// Whatever the hand-written readers accept, serde reads the same way.
        #[test]
        fn hand_written_readers_agree_with_serde(
            head in prop::sample::select(vec![
                JOB_TAG.to_vec(),
                [RESULT_TAG, &[1], OK_TAG].concat(),
                [RESULT_TAG, &[1], ERR_TAG].concat(),
                [RESULT_TAG, &[0xcd, 1, 0], OK_TAG].concat(),
            ]),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let frame = Bytes::from([head, tail].concat());
            if let Some(job) = fast_job(&frame) {
                prop_assert_eq!(serde_to_worker(&frame).unwrap(), ToWorker::Job(job));
            }
            if let Some(result) = fast_result(&frame) {
                prop_assert_eq!(serde_to_coordinator(&frame).unwrap(), ToCoordinator::Result(result));
            }
        }
    }

    fn jobs_of(ids: &[u64], len: usize) -> Vec<Job> {
        ids.iter()
            .map(|&id| Job {
                id: JobId(id),
                payload: Bytes::from(vec![id as u8; len]),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A batch put together from job frames is what serde writes for the same jobs, and
        /// both readers give the jobs back, each payload inside the frame.
        #[test]
        fn job_batches_are_serdes_bytes(ids in prop::collection::vec(ids(), 0..40), len in lengths()) {
            let len = len.min(3000);
            let jobs = jobs_of(&ids, len);
            let frames: Vec<JobFrame> = jobs
                .iter()
                .map(|j| JobFrame::from(job_frame(j.id, &j.payload)))
                .collect();
            let (head, parts) = jobs_frame_parts(&frames);
            let mut batch = head.as_bytes().to_vec();
            parts.for_each(|part| batch.extend_from_slice(part.as_ref()));
            prop_assert_eq!(batch.len(), head.frame_len());
            let msg = ToWorker::Jobs(jobs.clone());
            prop_assert_eq!(&batch[..], &rmp_serde::to_vec(&msg).unwrap()[..]);
            // The same batch from frames as the coordinator keeps them (small ones in place).
            let built: Vec<JobFrame> = jobs
                .iter()
                .map(|j| JobFrameBuilder::from_payload(&j.payload).finish(j.id))
                .collect();
            let (head, parts) = jobs_frame_parts(&built);
            let mut again = head.as_bytes().to_vec();
            parts.for_each(|part| again.extend_from_slice(part.as_ref()));
            prop_assert_eq!(&again[..], &batch[..]);
            let batch = Bytes::from(batch);
            prop_assert_eq!(fast_jobs(&batch), Some(jobs));
            let decoded = decode_to_worker_shared(&batch).unwrap();
            prop_assert_eq!(&decoded, &serde_to_worker(&batch).unwrap());
            if let ToWorker::Jobs(decoded) = decoded {
                for job in decoded.iter().filter(|j| !j.payload.is_empty()) {
                    prop_assert!(batch.as_ptr_range().contains(&job.payload.as_ptr()));
                }
            }
        }

        /// A batch of results reads back the same through the hand-written reader and serde;
        /// one result alone is an ordinary result frame.
        #[test]
        fn result_batches_read_back(
            items in prop::collection::vec((ids(), any::<bool>(), 0usize..300), 1..40),
        ) {
            let results: Vec<JobResult> = items
                .iter()
                .map(|&(id, ok, len)| JobResult {
                    id: JobId(id),
                    outcome: if ok { Ok(Bytes::from(vec![1u8; len])) } else { Err("é".repeat(len / 2)) },
                })
                .collect();
            let mut writer = ResultsWriter::new();
            for r in &results {
                writer.push(r.id, &r.outcome);
            }
            let frame = writer.finish();
            let want = if results.len() == 1 {
                prop_assert_eq!(&frame[..], &result_frame(results[0].id, &results[0].outcome)[..]);
                ToCoordinator::Result(results[0].clone())
            } else {
                prop_assert_eq!(fast_results(&frame), Some(results.clone()));
                ToCoordinator::Results(results)
            };
            prop_assert_eq!(serde_to_coordinator(&frame).unwrap(), want.clone());
            prop_assert_eq!(decode_to_coordinator_shared(&frame).unwrap(), want);
        }

        /// Whatever the hand-written batch readers accept, serde reads the same way; a cut or
        /// damaged batch is an error, never a panic.
        #[test]
        fn hand_written_batch_readers_agree_with_serde(
            ids in prop::collection::vec(0u64..300, 2..6),
            cut in 0usize..64,
            flip in any::<(usize, u8)>(),
        ) {
            let jobs = jobs_of(&ids, 3);
            let mut jobs_frame = encode_to_worker(&ToWorker::Jobs(jobs)).unwrap().to_vec();
            let mut writer = ResultsWriter::new();
            for &id in &ids {
                writer.push(JobId(id), &Ok(Bytes::from_static(b"ok")));
            }
            let mut results_frame = writer.finish().to_vec();
            for frame in [&mut jobs_frame, &mut results_frame] {
                let at = flip.0 % frame.len();
                frame[at] ^= flip.1;
                frame.truncate(frame.len().saturating_sub(cut % 8));
            }
            let jobs_frame = Bytes::from(jobs_frame);
            let results_frame = Bytes::from(results_frame);
            if let Some(jobs) = fast_jobs(&jobs_frame) {
                prop_assert_eq!(serde_to_worker(&jobs_frame).unwrap(), ToWorker::Jobs(jobs));
            }
            if let Some(results) = fast_results(&results_frame) {
                prop_assert_eq!(serde_to_coordinator(&results_frame).unwrap(), ToCoordinator::Results(results));
            }
            let _ = decode_to_worker_shared(&jobs_frame);
            let _ = decode_to_coordinator_shared(&results_frame);
        }
    }

    #[test]
    fn a_batch_claiming_more_jobs_than_it_holds_is_malformed() {
        let mut frame = JOBS_TAG.to_vec();
        frame.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        frame.extend_from_slice(&job_frame(JobId(1), b"x")[5..]);
        assert!(matches!(decode_to_worker(&frame), Err(Error::Malformed(_))));
        let mut frame = RESULTS_TAG.to_vec();
        frame.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_to_coordinator(&frame),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn frames_from_other_encoders_still_decode() {
        // The id as a signed 16-bit integer and "Job" as a str8: valid MessagePack that
        // the hand-written reader leaves to serde.
        let frame = [
            &[0x81, 0xd9, 3][..],
            b"Job",
            &[0x92, 0xd1, 0, 9, 0xc4, 1, 42],
        ]
        .concat();
        assert_eq!(
            decode_to_worker(&frame).unwrap(),
            ToWorker::Job(Job {
                id: JobId(9),
                payload: Bytes::from_static(&[42])
            })
        );
    }

    #[test]
    fn subprotocol_names() {
        assert_eq!(subprotocol(1), "distchan.v1");
        assert_eq!(parse_subprotocol("distchan.v12"), Some(12));
        assert_eq!(parse_subprotocol("chat"), None);
    }
}
