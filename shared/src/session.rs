//! The worker side of a connection, as a state machine without I/O.
//!
//! The native worker and the browser worker both feed received frames into a
//! [`WorkerSession`] and send the frames it produces; the session decides what each
//! frame means. So the handshake, refusals, transform handling, result bookkeeping and
//! end-of-work behave the same on every worker.
//!
//! ```
//! use distchan_protocol::session::{Event, SessionConfig, WorkerSession};
//! use distchan_protocol::transform::TransformChain;
//! use distchan_protocol::wire::{self, Job, ToWorker, Welcome};
//! use distchan_protocol::{payload, JobId};
//!
//! let mut session = WorkerSession::new(SessionConfig::native(8), TransformChain::new());
//! let _hello = session.hello_frame()?; // send this first
//! let welcome = wire::encode_to_worker(&ToWorker::Welcome(Welcome {
//!     worker_id: 1, ..Welcome::default()
//! }))?;
//! assert!(matches!(session.handle_frame(&welcome)?, Event::Welcomed(_)));
//! let job = wire::encode_to_worker(&ToWorker::Job(Job {
//!     id: JobId(0),
//!     payload: payload::to_msgpack("hi")?,
//! }))?;
//! let Event::Jobs(jobs) = session.handle_frame(&job)? else { unreachable!() };
//! for job in jobs {
//!     let answer: String = payload::from_msgpack(&job.payload)?;
//!     session.push_result(job.id, Ok(payload::to_msgpack(&answer.to_uppercase())?))?;
//! }
//! // Every result pushed since the last call goes out in one frame.
//! let _results = session.next_result_frame().expect("one result");
//! assert_eq!(session.outstanding(), 0);
//! # Ok::<(), distchan_protocol::Error>(())
//! ```

use std::time::Duration;

use rustc_hash::FxHashMap as HashMap;

use bytes::Bytes;

use crate::{
    module::ModuleSpec,
    transform::TransformChain,
    wire::{
        self, Hello, Job, JobResult, Refusal, RefusalCode, ResultsWriter, Resume, ToCoordinator,
        ToWorker, Welcome, WorkerKind, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY,
        CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
    },
    Error, JobId, Result,
};

/// What a worker announces about itself.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest number of unanswered jobs this worker accepts.
    pub capacity: u32,
    /// Access token to present, if any.
    pub token: Option<String>,
    /// Human-readable name shown on the coordinator's side.
    pub agent: String,
    /// Native or browser.
    pub kind: WorkerKind,
    /// Largest frame accepted from the coordinator.
    pub max_frame: usize,
    /// The protocol version to announce (tests use other values to check refusals).
    pub version: u32,
    /// The group this worker belongs to ([`Hello::group`]): workers of one group count as
    /// one when jobs are replicated. `None` for a worker on its own.
    pub group: Option<String>,
}

impl SessionConfig {
    /// Defaults for a native worker with the given capacity.
    pub fn native(capacity: u32) -> Self {
        SessionConfig {
            capacity,
            token: None,
            agent: format!("distchan-worker/{}", env!("CARGO_PKG_VERSION")),
            kind: WorkerKind::Native,
            max_frame: DEFAULT_MAX_FRAME,
            version: PROTOCOL_VERSION,
            group: None,
        }
    }

    /// Defaults for a browser worker with the given capacity and user agent.
    pub fn browser(capacity: u32, agent: impl Into<String>) -> Self {
        SessionConfig {
            agent: agent.into(),
            kind: WorkerKind::Browser,
            ..Self::native(capacity)
        }
    }

    /// The WebSocket subprotocol a worker with this configuration offers.
    pub fn subprotocol(&self) -> String {
        wire::subprotocol(self.version)
    }
}

/// What a received frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The coordinator accepted the hello.
    Welcomed(Welcome),
    /// Jobs to run (one, or a batch the coordinator sent at once), each payload already
    /// through the transform chain (plain MessagePack). Answer each with
    /// [`WorkerSession::push_result`].
    Jobs(Vec<Job>),
    /// No more work will come (after a drain: nothing more is on its way). Finish the
    /// outstanding jobs, then close.
    EndOfWork,
    /// The coordinator checks that this worker's event loop is alive: send
    /// [`WorkerSession::pong_frame`] with this number.
    Ping(u64),
    /// The coordinator cancelled this job: its answer will be dropped, so stop it if it
    /// still runs, and answer it anyway (an error will do) to give the credit back. It may
    /// name a job already answered: then there is nothing to do.
    Cancel(JobId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingWelcome,
    Running,
    /// The worker asked to leave; the coordinator's end-of-work has not come yet.
    Draining,
    /// End-of-work came (`left`: in answer to the worker's drain).
    EndOfWork {
        left: bool,
    },
    Failed,
}

/// The worker-side protocol state machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct WorkerSession {
    config: SessionConfig,
    chain: TransformChain,
    phase: Phase,
    welcome: Option<Welcome>,
    outstanding: HashMap<JobId, u32>,
    outstanding_total: usize,
    /// Results pushed and not yet taken, in frames: full ones, then the one being written.
    ready: std::collections::VecDeque<Bytes>,
    results: ResultsWriter,
    /// The session to resume, named in the next hello (see [`WorkerSession::reconnect`]).
    resuming: Option<String>,
    /// The latest results (up to the capacity, and [`REPLAY_BYTES`]), kept while the
    /// coordinator gave a session: those sent just before a connection was lost may not
    /// have arrived, and are sent again once the session is resumed.
    replay: std::collections::VecDeque<(JobId, wire::Outcome)>,
    /// Bytes of the outcomes in `replay`.
    replay_bytes: usize,
    /// True while the worker is paused (see [`WorkerSession::pause_frame`]).
    paused: bool,
}

/// Most bytes of results a session keeps to send again after a resume.
pub const REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// Most bytes of results gathered into one frame (a larger result goes alone).
pub const RESULTS_BATCH_BYTES: usize = 256 * 1024;

impl WorkerSession {
    /// A new session that has not said hello yet.
    pub fn new(config: SessionConfig, chain: TransformChain) -> Self {
        WorkerSession {
            config,
            chain,
            phase: Phase::AwaitingWelcome,
            welcome: None,
            outstanding: HashMap::default(),
            outstanding_total: 0,
            ready: Default::default(),
            results: ResultsWriter::new(),
            resuming: None,
            replay: Default::default(),
            replay_bytes: 0,
            paused: false,
        }
    }

    /// Readies the session for a new connection after the last one was lost, keeping the
    /// jobs it holds: the next [`WorkerSession::hello_frame`] asks the coordinator to
    /// resume the session its welcome gave ([`Welcome::session`]), naming every job still
    /// held ([`Resume`]). If the welcome then says [`Welcome::resumed`], answer them on the
    /// new connection as usual; if not, or when the coordinator gave no session (it keeps
    /// no jobs for lost workers), the session forgets them: their jobs went to others, and
    /// [`WorkerSession::holds`] tells the worker to drop their results.
    ///
    /// Results sent just before the loss may not have arrived: the latest of them (up to
    /// the capacity, and [`REPLAY_BYTES`]) are named in the hello too, and sent again once
    /// the session is resumed (the coordinator counts each job's first result only). Older
    /// results that did not arrive, and results pushed and not yet taken beyond those, are
    /// lost with the connection: the coordinator gives their jobs to a worker again, since
    /// the hello does not name them.
    pub fn reconnect(&mut self) {
        if self.phase == Phase::AwaitingWelcome {
            return; // already readied
        }
        self.resuming = self.welcome.take().and_then(|w| w.session);
        self.phase = Phase::AwaitingWelcome;
        // A new connection starts unpaused.
        self.paused = false;
        self.ready.clear();
        self.results = ResultsWriter::new();
        if self.resuming.is_none() {
            self.forget();
        }
    }

    /// Drops every job held and every result kept: none of them is this worker's any more.
    fn forget(&mut self) {
        self.outstanding.clear();
        self.outstanding_total = 0;
        self.replay.clear();
        self.replay_bytes = 0;
    }

    /// The session was resumed: the latest results go out again, first.
    fn replay(&mut self) {
        // Kept: the new connection may be lost too.
        let replay = std::mem::take(&mut self.replay);
        for (id, outcome) in &replay {
            self.queue_result(*id, outcome);
        }
        self.replay = replay;
    }

    /// True while job `id` is held: received and not answered yet. A job the session forgot
    /// (see [`WorkerSession::reconnect`]) is not.
    pub fn holds(&self, id: JobId) -> bool {
        self.outstanding.contains_key(&id)
    }

    /// The session's configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The frame to send right after the WebSocket opens.
    pub fn hello_frame(&self) -> Result<Bytes> {
        wire::encode_to_coordinator(&ToCoordinator::Hello(Hello {
            version: self.config.version,
            token: self.config.token.clone(),
            capacity: self.config.capacity,
            agent: self.config.agent.clone(),
            kind: self.config.kind,
            group: self.config.group.clone(),
            resume: self.resuming.as_ref().map(|session| Resume {
                session: session.clone(),
                holding: (self.outstanding.keys().copied())
                    .chain(self.replay.iter().map(|&(id, _)| id))
                    .collect(),
            }),
        }))
    }

    /// The coordinator's welcome, once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The task the coordinator named in its welcome, if any.
    pub fn task(&self) -> Option<&str> {
        self.welcome.as_ref()?.task.as_deref()
    }

    /// The task module the coordinator named in its welcome, if any.
    pub fn module(&self) -> Option<&ModuleSpec> {
        self.welcome.as_ref()?.module.as_ref()
    }

    /// How long the coordinator may stay silent before the worker gives up on it:
    /// three heartbeat intervals, or `None` when the coordinator sends no heartbeats.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.welcome.as_ref()?.heartbeat_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms.saturating_mul(3))),
        }
    }

    /// Interprets one received binary frame.
    ///
    /// An error means the connection must close (use [`close_frame_for`] for the code and
    /// reason); the session does not accept further frames after it.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Event> {
        self.handle_frame_shared(&Bytes::copy_from_slice(frame))
    }

    /// Like [`WorkerSession::handle_frame`], for a frame already in [`Bytes`]: a job's
    /// payload then shares the frame's memory instead of being copied.
    pub fn handle_frame_shared(&mut self, frame: &Bytes) -> Result<Event> {
        let result = self.interpret(frame);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn interpret(&mut self, frame: &Bytes) -> Result<Event> {
        if frame.len() > self.config.max_frame {
            return Err(Error::FrameTooLarge {
                size: frame.len(),
                limit: self.config.max_frame,
            });
        }
        let msg = wire::decode_to_worker_shared(frame)?;
        match (self.phase, msg) {
            (Phase::Failed, _) => Err(Error::Unexpected("frame after the session failed".into())),
            (_, ToWorker::Refused(refusal)) => Err(Error::Refused(refusal)),
            (Phase::AwaitingWelcome, ToWorker::Welcome(welcome)) => {
                if self.resuming.take().is_some() {
                    if welcome.resumed {
                        self.replay();
                    } else {
                        self.forget();
                    }
                }
                self.phase = Phase::Running;
                self.welcome = Some(welcome.clone());
                Ok(Event::Welcomed(welcome))
            }
            (Phase::AwaitingWelcome, other) => Err(Error::Unexpected(format!(
                "expected a welcome, got {}",
                to_worker_name(&other)
            ))),
            (Phase::Running | Phase::Draining, ToWorker::Job(job)) => self.take_jobs(vec![job]),
            (Phase::Running | Phase::Draining, ToWorker::Jobs(jobs)) => self.take_jobs(jobs),
            (Phase::Running | Phase::Draining, ToWorker::EndOfWork) => {
                self.phase = Phase::EndOfWork {
                    left: self.phase == Phase::Draining,
                };
                Ok(Event::EndOfWork)
            }
            (Phase::Running | Phase::Draining | Phase::EndOfWork { .. }, ToWorker::Ping(n)) => {
                Ok(Event::Ping(n))
            }
            (Phase::Running | Phase::Draining | Phase::EndOfWork { .. }, ToWorker::Cancel(id)) => {
                Ok(Event::Cancel(id))
            }
            (_, other) => Err(Error::Unexpected(format!(
                "{} is not expected now",
                to_worker_name(&other)
            ))),
        }
    }

    /// Counts `jobs` as held (within the capacity) and decodes their payloads.
    fn take_jobs(&mut self, mut jobs: Vec<Job>) -> Result<Event> {
        if self.outstanding_total + jobs.len() > self.config.capacity as usize {
            return Err(Error::Unexpected(format!(
                "the coordinator sent more than the {} unanswered jobs this worker accepts",
                self.config.capacity
            )));
        }
        for job in &mut jobs {
            job.payload = self.chain.decode(std::mem::take(&mut job.payload))?;
        }
        for job in &jobs {
            *self.outstanding.entry(job.id).or_insert(0) += 1;
        }
        self.outstanding_total += jobs.len();
        Ok(Event::Jobs(jobs))
    }

    /// Encodes the result of a job received from [`WorkerSession::handle_frame`] as a frame
    /// of its own (see [`WorkerSession::push_result`] to send several in one frame).
    ///
    /// `outcome` is the plain MessagePack result or the handler's error message. If the
    /// transform chain fails on the result, the coordinator gets an error outcome for the
    /// job instead, so the job is never silently lost. Fails only for an id this session
    /// does not hold.
    pub fn result_frame(&mut self, id: JobId, outcome: Result<Bytes, String>) -> Result<Bytes> {
        let outcome = self.answered(id, outcome)?;
        wire::encode_to_coordinator(&ToCoordinator::Result(JobResult { id, outcome }))
    }

    /// Adds the result of a job to the results waiting to be sent; take them with
    /// [`WorkerSession::next_result_frame`] (once per turn of the worker's event loop, so
    /// that the results finished together travel in one frame). Otherwise as
    /// [`WorkerSession::result_frame`].
    pub fn push_result(&mut self, id: JobId, outcome: Result<Bytes, String>) -> Result<()> {
        let outcome = self.answered(id, outcome)?;
        self.queue_result(id, &outcome);
        Ok(())
    }

    /// Adds an answered job's outcome, already through the transform chain, to the results
    /// waiting to be sent.
    fn queue_result(&mut self, id: JobId, outcome: &wire::Outcome) {
        let size = wire::outcome_len(outcome);
        let limit = match self.welcome.as_ref().map(|w| w.max_frame as usize) {
            Some(max) if max > 0 => (max / 2).min(RESULTS_BATCH_BYTES),
            _ => RESULTS_BATCH_BYTES,
        };
        if !self.results.is_empty() && self.results.frame_len() + size > limit {
            let full = self.seal_results();
            self.ready.push_back(full);
        }
        self.results.push(id, outcome);
        if self.results.frame_len() >= limit {
            // Full: it may go at once (see `next_full_result_frame`).
            let full = self.seal_results();
            self.ready.push_back(full);
        }
    }

    /// Keeps the outcome of job `id` among the latest results, to send again if the
    /// connection is lost and the session resumed (only when the coordinator gave one).
    fn keep_for_replay(&mut self, id: JobId, outcome: &wire::Outcome) {
        if self.welcome.as_ref().is_none_or(|w| w.session.is_none()) {
            return;
        }
        self.replay_bytes += wire::outcome_len(outcome);
        self.replay.push_back((id, outcome.clone()));
        while self.replay.len() > self.config.capacity as usize || self.replay_bytes > REPLAY_BYTES
        {
            match self.replay.pop_front() {
                Some((_, old)) => self.replay_bytes -= wire::outcome_len(&old),
                None => break,
            }
        }
    }

    /// The frame of the results being written; a new one begins.
    fn seal_results(&mut self) -> Bytes {
        std::mem::take(&mut self.results).finish()
    }

    /// The next frame of results that is full already (a large result fills one alone),
    /// oldest first: a worker may send it at once instead of at the end of its turn.
    pub fn next_full_result_frame(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// The next frame of results pushed with [`WorkerSession::push_result`], oldest first;
    /// `None` once every one was taken.
    pub fn next_result_frame(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.ready.pop_front() {
            return Some(frame);
        }
        if self.results.is_empty() {
            return None;
        }
        Some(self.seal_results())
    }

    /// Counts job `id` as answered and runs `outcome` through the transform chain.
    fn answered(&mut self, id: JobId, outcome: Result<Bytes, String>) -> Result<wire::Outcome> {
        if !self.release(id) {
            return Err(Error::Unexpected(format!(
                "a result for job {id}, which this worker does not hold"
            )));
        }
        let outcome = outcome.and_then(|plain| {
            self.chain
                .encode(plain)
                .map_err(|e| format!("result could not be encoded: {e}"))
        });
        self.keep_for_replay(id, &outcome);
        Ok(outcome)
    }

    /// The answer to [`Event::Ping`] number `n`.
    pub fn pong_frame(&self, n: u64) -> Result<Bytes> {
        wire::encode_to_coordinator(&ToCoordinator::Pong(n))
    }

    /// The frame that tells the coordinator this worker is leaving. The coordinator sends
    /// no more jobs, and answers with end-of-work once every job it gave this worker is on
    /// its way; the session is finished when that has come and every job is answered, so
    /// no job is lost in between.
    pub fn drain_frame(&mut self) -> Result<Bytes> {
        if self.phase == Phase::Running {
            self.phase = Phase::Draining;
        }
        wire::encode_to_coordinator(&ToCoordinator::Drain)
    }

    /// The frame that pauses this worker: the coordinator sends it no more jobs until
    /// [`WorkerSession::unpause_frame`]. `released` are jobs it holds and will not run (it
    /// had not started them): they are no longer held, and go to other workers; it answers
    /// the others as usual. After a reconnection, a paused worker sends this again (with
    /// nothing released) once welcomed: a new connection starts unpaused.
    pub fn pause_frame(&mut self, released: &[JobId]) -> Result<Bytes> {
        for &id in released {
            if !self.release(id) {
                return Err(Error::Unexpected(format!(
                    "releasing job {id}, which this worker does not hold"
                )));
            }
        }
        self.paused = true;
        wire::encode_to_coordinator(&ToCoordinator::Pause {
            released: released.to_vec(),
        })
    }

    /// The frame that ends a pause: the coordinator gives this worker jobs again.
    pub fn unpause_frame(&mut self) -> Result<Bytes> {
        self.paused = false;
        wire::encode_to_coordinator(&ToCoordinator::Unpause)
    }

    /// True while the worker is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Counts job `id` as no longer held; false when it was not.
    fn release(&mut self, id: JobId) -> bool {
        match self.outstanding.get_mut(&id) {
            Some(1) => {
                self.outstanding.remove(&id);
            }
            Some(n) => *n -= 1,
            None => return false,
        }
        self.outstanding_total -= 1;
        true
    }

    /// Encodes a value the worker sends on its own (results-only use); `plain` is
    /// MessagePack and goes through the transform chain.
    pub fn emit_frame(&self, plain: Bytes) -> Result<Bytes> {
        let payload = self.chain.encode(plain)?;
        wire::encode_to_coordinator(&ToCoordinator::Emit { payload })
    }

    /// Number of jobs received and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding_total
    }

    /// True once the coordinator said end-of-work (or answered the worker's drain) and every
    /// job received has been answered: the worker may close the connection.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::EndOfWork { .. }) && self.outstanding_total == 0
    }

    /// True once end-of-work has been received for the end of the work (not in answer to a
    /// drain).
    pub fn end_of_work(&self) -> bool {
        self.phase == Phase::EndOfWork { left: false }
    }

    /// True once the worker has asked to leave.
    pub fn draining(&self) -> bool {
        matches!(
            self.phase,
            Phase::Draining | Phase::EndOfWork { left: true }
        )
    }

    /// The close reason a finished worker sends: `end of work`, or `worker left` after a
    /// drain.
    pub fn finish_reason(&self) -> &'static str {
        if self.end_of_work() {
            "end of work"
        } else {
            "worker left"
        }
    }

    /// What it means that the coordinator closed the connection: `Ok` when the session was
    /// over anyway (end-of-work received and every job answered: the coordinator only went
    /// first), otherwise the error [`WorkerSession::close_reason`] gives.
    pub fn closed_by_peer(&self, code: u16, reason: &str, clean: bool) -> Result<()> {
        if self.is_finished() {
            Ok(())
        } else {
            Err(self.close_reason(code, reason, clean))
        }
    }

    /// What it means that the coordinator ended the connection, as the worker's WebSocket
    /// reported it: the close `code` and `reason` (1006 and an empty reason when the
    /// connection dropped without a close frame) and whether the closing handshake
    /// completed (`clean`).
    ///
    /// Before the welcome, a policy or protocol close with a reason is the coordinator's
    /// refusal ([`Error::Refused`], read back from the reason [`close_frame_for`] wrote) even
    /// when the refusal frame itself was lost; otherwise the connection is over with the
    /// coordinator's reason, or without one when it was lost.
    pub fn close_reason(&self, code: u16, reason: &str, clean: bool) -> Error {
        let reason = reason.trim();
        if self.phase == Phase::AwaitingWelcome
            && (code == CLOSE_POLICY || code == CLOSE_PROTOCOL_ERROR)
            && !reason.is_empty()
        {
            return Error::Refused(refusal_from_close(reason));
        }
        Error::Disconnected {
            code,
            reason: reason.to_owned(),
            clean,
        }
    }
}

/// The WebSocket close code and reason a side sends when it ends a connection because of
/// `err`. The reason is cut to the 123 bytes a close frame can carry.
///
/// Refusals are 1008 (policy), or 1002 (protocol error) for another version; malformed and
/// unexpected frames 1002; an oversized frame 1009; a failed transport, a timeout or a lost
/// peer 1001 (going away); any other error 1008.
///
/// A refusal's reason is the [`Refusal`]'s own text (`bad token: wrong access token`), which
/// [`WorkerSession::close_reason`] reads back into the refusal when the refusal frame
/// itself is lost.
pub fn close_frame_for(err: &Error) -> (u16, String) {
    let code = match err {
        Error::Refused(r) if r.code == RefusalCode::VersionMismatch => CLOSE_PROTOCOL_ERROR,
        Error::Refused(_) => CLOSE_POLICY,
        Error::FrameTooLarge { .. } => CLOSE_TOO_BIG,
        Error::Closed => CLOSE_NORMAL,
        Error::Malformed(_) | Error::Unexpected(_) => CLOSE_PROTOCOL_ERROR,
        // The transport failed or the peer went quiet: this side leaves.
        Error::Connection { .. } | Error::Disconnected { .. } | Error::Timeout(_) => {
            CLOSE_GOING_AWAY
        }
        _ => CLOSE_POLICY,
    };
    let reason = match err {
        Error::Refused(refusal) => refusal.to_string(),
        other => other.to_string(),
    };
    (code, truncate_reason(&reason))
}

/// The refusal a close frame's reason describes: `code: reason` as [`close_frame_for`]
/// writes it, or the whole text under [`RefusalCode::Other`].
fn refusal_from_close(reason: &str) -> Refusal {
    RefusalCode::ALL
        .into_iter()
        .find_map(|code| {
            let rest = reason.strip_prefix(&code.to_string())?.strip_prefix(": ")?;
            Some(Refusal::new(code, rest))
        })
        .unwrap_or_else(|| Refusal::new(RefusalCode::Other, reason))
}

/// Cuts a close reason to the 123 bytes allowed by RFC 6455, on a character boundary.
pub fn truncate_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_owned();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn to_worker_name(msg: &ToWorker) -> &'static str {
    match msg {
        ToWorker::Welcome(_) => "a welcome",
        ToWorker::Refused(_) => "a refusal",
        ToWorker::Job(_) => "a job",
        ToWorker::Jobs(_) => "jobs",
        ToWorker::EndOfWork => "end-of-work",
        ToWorker::Ping(_) => "a ping",
        ToWorker::Cancel(_) => "a cancellation",
    }
}

/// Whether a worker whose connection ended with `err` should connect again (after a
/// [`Backoff`] delay): yes for a lost connection, a silent or departing coordinator and a
/// full house; no for what trying again cannot change (a refusal for the token, the protocol
/// version or the origin, a close for the coordinator's policy, such as a worker cut off for
/// wrong results, a task module that cannot run here, a configuration error).
pub fn should_reconnect(err: &Error) -> bool {
    match err {
        Error::Refused(r) => matches!(
            r.code,
            RefusalCode::TooManyWorkers | RefusalCode::ShuttingDown | RefusalCode::HandshakeTimeout
        ),
        // The coordinator closed the connection for its policy (it cut this worker off,
        // say for wrong results): it would do so again.
        Error::Disconnected {
            code: CLOSE_POLICY, ..
        } => false,
        Error::Connection { .. }
        | Error::Disconnected { .. }
        | Error::Timeout(_)
        | Error::Io(_) => true,
        _ => false,
    }
}

/// Delays between attempts to connect again: exponential (from `first`, doubling up to
/// `cap`) with full jitter, so that many workers dropped at once do not come back at once.
///
/// ```
/// use std::time::Duration;
/// use distchan_protocol::session::Backoff;
///
/// let mut backoff = Backoff::default();
/// let first = backoff.next_delay(u64::MAX);
/// assert!(first <= Duration::from_millis(250));
/// for _ in 0..20 {
///     assert!(backoff.next_delay(u64::MAX) <= Duration::from_secs(30));
/// }
/// backoff.reset();
/// assert_eq!(backoff.attempts(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempts: u32,
}

impl Default for Backoff {
    /// 250 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays from `first` doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            attempts: 0,
        }
    }

    /// The delay before the next attempt: a share `random / u64::MAX` of the current
    /// ceiling (`random` from any source of randomness).
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << self.attempts.min(20))
            .min(self.cap);
        self.attempts = self.attempts.saturating_add(1);
        let share = random as f64 / u64::MAX as f64;
        ceiling.mul_f64(share)
    }

    /// Attempts made since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A connection succeeded: the next loss starts from the first delay again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{payload, transform::Aes256GcmTransform, wire::Job};

    fn welcome() -> Bytes {
        wire::encode_to_worker(&ToWorker::Welcome(Welcome {
            worker_id: 1,
            task: Some("capitalize".into()),
            heartbeat_ms: 100,
            max_frame: 0,
            module: None,
            ..Default::default()
        }))
        .unwrap()
    }

    fn job(id: u64, payload: Bytes) -> Bytes {
        wire::encode_to_worker(&ToWorker::Job(Job {
            id: JobId(id),
            payload,
        }))
        .unwrap()
    }

    /// A welcome giving `session`, saying whether it `resumed` one.
    fn welcome_with(session: &str, resumed: bool) -> Bytes {
        wire::encode_to_worker(&ToWorker::Welcome(Welcome {
            worker_id: 1,
            session: Some(session.into()),
            grace_ms: 10_000,
            resumed,
            ..Default::default()
        }))
        .unwrap()
    }

    /// The resume the session's next hello carries, with its jobs sorted.
    fn resume_of(s: &WorkerSession) -> Option<Resume> {
        let ToCoordinator::Hello(hello) =
            wire::decode_to_coordinator(&s.hello_frame().unwrap()).unwrap()
        else {
            panic!("a hello");
        };
        hello.resume.map(|mut r| {
            r.holding.sort();
            r
        })
    }

    fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<JobId> {
        range.map(JobId).collect()
    }

    /// The job ids of a frame of results.
    fn result_ids(frame: Option<Bytes>) -> Vec<JobId> {
        match wire::decode_to_coordinator(&frame.expect("a frame")).unwrap() {
            ToCoordinator::Results(results) => results.iter().map(|r| r.id).collect(),
            ToCoordinator::Result(r) => vec![r.id],
            other => panic!("expected results, got {other:?}"),
        }
    }

    #[test]
    fn the_results_kept_to_send_again_are_bounded_by_the_capacity() {
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        s.handle_frame(&welcome_with("s1", false)).unwrap();
        for id in 1..=5 {
            s.handle_frame(&job(id, payload::to_msgpack(&id).unwrap()))
                .unwrap();
            s.push_result(JobId(id), Ok(Bytes::new())).unwrap();
        }
        s.reconnect();
        assert_eq!(resume_of(&s).unwrap().holding, ids(4..=5));
        // Without a session, nothing is kept.
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(1, payload::to_msgpack(&1).unwrap()))
            .unwrap();
        s.push_result(JobId(1), Ok(Bytes::new())).unwrap();
        assert!(s.replay.is_empty());
    }

    /// A session welcomed with session `s1`, holding jobs 1, 2 and 3, that answered job 1
    /// (sent) and job 2 (not sent yet).
    fn session_that_lost_its_connection() -> WorkerSession {
        let mut s = WorkerSession::new(SessionConfig::native(4), TransformChain::new());
        s.handle_frame(&welcome_with("s1", false)).unwrap();
        for id in 1..=3 {
            s.handle_frame(&job(id, payload::to_msgpack(&id).unwrap()))
                .unwrap();
        }
        s.push_result(JobId(1), Ok(Bytes::new())).unwrap();
        assert!(s.next_result_frame().is_some());
        s.push_result(JobId(2), Ok(Bytes::new())).unwrap();
        s
    }

    #[test]
    fn a_reconnecting_session_resumes_with_the_jobs_it_holds() {
        let mut s = session_that_lost_its_connection();
        assert_eq!(resume_of(&s), None, "no resume on the first connection");
        s.reconnect();
        assert_eq!(
            resume_of(&s),
            Some(Resume {
                session: "s1".into(),
                holding: ids(1..=3),
            }),
            "the job held, and the latest results, which may not have arrived"
        );
        assert!(s.next_result_frame().is_none());
        s.handle_frame(&welcome_with("s2", true)).unwrap();
        assert!(s.holds(JobId(3)));
        assert_eq!(result_ids(s.next_result_frame()), ids(1..=2), "sent again");
        s.push_result(JobId(3), Ok(Bytes::new())).unwrap();
        assert!(s.next_result_frame().is_some());
        // A second loss resumes the new session.
        s.reconnect();
        assert_eq!(resume_of(&s).map(|r| r.session), Some("s2".into()));
    }

    #[test]
    fn a_session_the_coordinator_no_longer_knows_forgets_its_jobs() {
        let mut s = session_that_lost_its_connection();
        s.reconnect();
        s.handle_frame(&welcome_with("s9", false)).unwrap();
        assert!(!s.holds(JobId(3)));
        assert_eq!(s.outstanding(), 0);
        assert!(s.push_result(JobId(3), Ok(Bytes::new())).is_err());
        // Without a session to resume, the jobs are forgotten at once.
        let mut s = WorkerSession::new(SessionConfig::native(4), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(1, payload::to_msgpack(&1).unwrap()))
            .unwrap();
        s.reconnect();
        assert_eq!(resume_of(&s), None);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_pause_gives_back_the_jobs_not_started() {
        let mut s = session_that_lost_its_connection(); // holds job 3
        let pause = s.pause_frame(&[JobId(3)]).unwrap();
        assert_eq!(
            wire::decode_to_coordinator(&pause).unwrap(),
            ToCoordinator::Pause {
                released: vec![JobId(3)]
            }
        );
        assert!(s.paused());
        assert!(!s.holds(JobId(3)));
        assert_eq!(s.outstanding(), 0);
        assert!(s.pause_frame(&[JobId(3)]).is_err(), "not held any more");
        s.unpause_frame().unwrap();
        assert!(!s.paused());
    }

    #[test]
    fn full_conversation() {
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        let hello = wire::decode_to_coordinator(&s.hello_frame().unwrap()).unwrap();
        assert!(
            matches!(hello, ToCoordinator::Hello(h) if h.capacity == 2 && h.version == PROTOCOL_VERSION)
        );
        assert!(matches!(
            s.handle_frame(&welcome()).unwrap(),
            Event::Welcomed(_)
        ));
        assert_eq!(s.task(), Some("capitalize"));
        assert_eq!(s.idle_timeout(), Some(Duration::from_millis(300)));
        let p = payload::to_msgpack("a").unwrap();
        assert_eq!(
            s.handle_frame(&job(5, p.clone())).unwrap(),
            Event::Jobs(vec![Job {
                id: JobId(5),
                payload: p
            }])
        );
        assert_eq!(
            s.handle_frame(&wire::encode_to_worker(&ToWorker::EndOfWork).unwrap())
                .unwrap(),
            Event::EndOfWork
        );
        assert!(!s.is_finished(), "a job is still outstanding");
        let frame = s.result_frame(JobId(5), Err("nope".into())).unwrap();
        assert_eq!(
            wire::decode_to_coordinator(&frame).unwrap(),
            ToCoordinator::Result(JobResult {
                id: JobId(5),
                outcome: Err("nope".into())
            })
        );
        assert!(s.is_finished());
        assert!(
            s.result_frame(JobId(5), Ok(Bytes::new())).is_err(),
            "no double answers"
        );
    }

    fn batch(ids: &[u64]) -> Bytes {
        let jobs = ids
            .iter()
            .map(|&id| Job {
                id: JobId(id),
                payload: payload::to_msgpack(&id).unwrap(),
            })
            .collect();
        wire::encode_to_worker(&ToWorker::Jobs(jobs)).unwrap()
    }

    #[test]
    fn a_batch_is_held_job_by_job_and_answered_in_one_frame() {
        let mut s = WorkerSession::new(SessionConfig::native(4), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        let Event::Jobs(jobs) = s.handle_frame(&batch(&[7, 8, 9])).unwrap() else {
            panic!("jobs expected")
        };
        assert_eq!(jobs.iter().map(|j| j.id.0).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(s.outstanding(), 3);
        assert_eq!(s.next_result_frame(), None, "nothing pushed yet");
        s.push_result(JobId(9), Ok(payload::to_msgpack(&90).unwrap()))
            .unwrap();
        s.push_result(JobId(7), Err("no".into())).unwrap();
        assert!(
            s.push_result(JobId(1), Ok(Bytes::new())).is_err(),
            "not held"
        );
        assert_eq!(s.outstanding(), 1);
        let frame = s.next_result_frame().expect("a frame");
        assert_eq!(s.next_result_frame(), None, "both went in one frame");
        let ToCoordinator::Results(results) = wire::decode_to_coordinator(&frame).unwrap() else {
            panic!("a batch of results expected")
        };
        assert_eq!(
            results.iter().map(|r| r.id.0).collect::<Vec<_>>(),
            [9, 7],
            "in the order they finished"
        );
        assert_eq!(results[1].outcome, Err("no".into()));
        // Four more would exceed the capacity of 4 with one still held.
        let err = s.handle_frame(&batch(&[10, 11, 12, 13])).unwrap_err();
        assert!(err.to_string().contains("more than the 4"), "{err}");
    }

    #[test]
    fn results_beyond_the_batch_size_go_in_further_frames() {
        let mut s = WorkerSession::new(SessionConfig::native(8), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&batch(&[1, 2, 3])).unwrap();
        let big = Bytes::from(vec![0u8; RESULTS_BATCH_BYTES - 100]);
        s.push_result(JobId(1), Ok(Bytes::from_static(b"\xa1a")))
            .unwrap();
        assert_eq!(
            s.next_full_result_frame(),
            None,
            "a small result waits for the turn"
        );
        // A result as large as a batch: what waited goes first, then it, alone, at once.
        let huge = Bytes::from(vec![0u8; RESULTS_BATCH_BYTES]);
        s.push_result(JobId(2), Ok(huge.clone())).unwrap();
        for id in [1, 2] {
            let full = s
                .next_full_result_frame()
                .expect("full frames may go at once");
            assert!(matches!(
                wire::decode_to_coordinator(&full).unwrap(),
                ToCoordinator::Result(r) if r.id == JobId(id)
            ));
        }
        s.push_result(JobId(3), Ok(huge.clone())).unwrap();
        assert!(
            s.next_full_result_frame().is_some(),
            "a large result fills a frame alone"
        );
        s.handle_frame(&batch(&[4, 5, 6])).unwrap();
        for id in 4..=6 {
            s.push_result(JobId(id), Ok(big.clone())).unwrap();
        }
        let frames: Vec<Bytes> = std::iter::from_fn(|| s.next_result_frame()).collect();
        assert_eq!(
            frames.len(),
            3,
            "each near-limit result in a frame of its own"
        );
        for (frame, id) in frames.iter().zip(4..) {
            let ToCoordinator::Result(r) = wire::decode_to_coordinator(frame).unwrap() else {
                panic!("one result per frame")
            };
            assert_eq!(r.id, JobId(id));
        }
    }

    #[test]
    fn more_jobs_than_the_capacity_fail_the_session() {
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(1, payload::to_msgpack("a").unwrap()))
            .unwrap();
        let err = s
            .handle_frame(&job(2, payload::to_msgpack("b").unwrap()))
            .unwrap_err();
        assert!(
            err.to_string().contains("more than the 1 unanswered jobs"),
            "{err}"
        );
    }

    #[test]
    fn refusal_is_an_error_with_the_reason() {
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        let frame = wire::encode_to_worker(&ToWorker::Refused(Refusal::new(
            RefusalCode::BadToken,
            "wrong token",
        )))
        .unwrap();
        match s.handle_frame(&frame) {
            Err(Error::Refused(r)) => assert_eq!(r.reason, "wrong token"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_before_welcome_is_unexpected() {
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        assert!(matches!(
            s.handle_frame(&job(1, Bytes::new())),
            Err(Error::Unexpected(_))
        ));
        assert!(
            s.handle_frame(&welcome()).is_err(),
            "a failed session stays failed"
        );
    }

    #[test]
    fn undecodable_job_fails_the_session() {
        let sender = TransformChain::new().with(Aes256GcmTransform::new(&[1; 32]));
        let mut s = WorkerSession::new(
            SessionConfig::native(1),
            TransformChain::new().with(Aes256GcmTransform::new(&[2; 32])),
        );
        s.handle_frame(&welcome()).unwrap();
        let sealed = sender.encode(payload::to_msgpack("x").unwrap()).unwrap();
        let err = s.handle_frame(&job(0, sealed)).unwrap_err();
        assert!(
            matches!(&err, Error::Transform { transform, .. } if transform == "aes-256-gcm"),
            "{err:?}"
        );
        assert_eq!(close_frame_for(&err).0, CLOSE_POLICY);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut config = SessionConfig::native(1);
        config.max_frame = 8;
        let mut s = WorkerSession::new(config, TransformChain::new());
        let err = s.handle_frame(&[0u8; 9]).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { size: 9, limit: 8 }));
        assert_eq!(close_frame_for(&err).0, CLOSE_TOO_BIG);
    }

    #[test]
    fn drain_finishes_once_the_coordinator_says_nothing_more_is_coming() {
        let mut s = WorkerSession::new(SessionConfig::native(4), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(1, payload::to_msgpack("a").unwrap()))
            .unwrap();
        s.drain_frame().unwrap();
        assert!(s.draining());
        s.result_frame(JobId(1), Ok(Bytes::new())).unwrap();
        assert!(
            !s.is_finished(),
            "a job may still be on its way until the coordinator answers the drain"
        );
        // It was: the coordinator had sent it before it read the drain.
        assert!(matches!(
            s.handle_frame(&job(2, payload::to_msgpack("b").unwrap())),
            Ok(Event::Jobs(_))
        ));
        let end = wire::encode_to_worker(&ToWorker::EndOfWork).unwrap();
        assert_eq!(s.handle_frame(&end).unwrap(), Event::EndOfWork);
        assert!(!s.is_finished(), "job 2 is not answered yet");
        s.result_frame(JobId(2), Ok(Bytes::new())).unwrap();
        assert!(s.is_finished());
        assert!(!s.end_of_work(), "the end came in answer to the drain");
        assert_eq!(s.finish_reason(), "worker left");
    }

    #[test]
    fn pings_are_answered_with_their_number() {
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        let ping = wire::encode_to_worker(&ToWorker::Ping(41)).unwrap();
        assert!(s.handle_frame(&ping).is_err(), "no ping before the welcome");
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        assert_eq!(s.handle_frame(&ping).unwrap(), Event::Ping(41));
        assert_eq!(
            wire::decode_to_coordinator(&s.pong_frame(41).unwrap()).unwrap(),
            ToCoordinator::Pong(41)
        );
    }

    #[test]
    fn a_cancellation_reaches_the_worker_and_the_job_is_still_answered() {
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        let cancel = wire::encode_to_worker(&ToWorker::Cancel(JobId(7))).unwrap();
        assert!(
            s.handle_frame(&cancel).is_err(),
            "no cancellation before the welcome"
        );
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(7, payload::to_msgpack("a").unwrap()))
            .unwrap();
        assert_eq!(s.handle_frame(&cancel).unwrap(), Event::Cancel(JobId(7)));
        assert_eq!(
            s.outstanding(),
            1,
            "a cancelled job is answered all the same"
        );
        s.push_result(JobId(7), Err("cancelled".into())).unwrap();
        assert_eq!(s.outstanding(), 0);
    }
    #[test]
    fn a_close_after_the_end_of_the_work_is_a_clean_end() {
        let mut s = WorkerSession::new(SessionConfig::native(2), TransformChain::new());
        s.handle_frame(&welcome()).unwrap();
        s.handle_frame(&job(1, payload::to_msgpack("a").unwrap()))
            .unwrap();
        let end = wire::encode_to_worker(&ToWorker::EndOfWork).unwrap();
        s.handle_frame(&end).unwrap();
        let going_away = (CLOSE_GOING_AWAY, "the coordinator is shutting down", true);
        assert!(
            s.closed_by_peer(going_away.0, going_away.1, going_away.2)
                .is_err(),
            "job 1 was not answered: that close lost it"
        );
        s.result_frame(JobId(1), Ok(Bytes::new())).unwrap();
        assert!(s
            .closed_by_peer(going_away.0, going_away.1, going_away.2)
            .is_ok());
        assert_eq!(s.finish_reason(), "end of work");
    }

    #[test]
    fn only_what_may_change_is_worth_connecting_again_for() {
        let lost = Error::Disconnected {
            code: 1006,
            reason: String::new(),
            clean: false,
        };
        assert!(should_reconnect(&lost));
        assert!(should_reconnect(&Error::Timeout("silent".into())));
        let going_away = Error::Disconnected {
            code: CLOSE_GOING_AWAY,
            reason: "the coordinator is shutting down".into(),
            clean: true,
        };
        assert!(should_reconnect(&going_away));
        let cut_off = Error::Disconnected {
            code: CLOSE_POLICY,
            reason: "too many results the other workers disagreed with".into(),
            clean: true,
        };
        assert!(!should_reconnect(&cut_off));
        for (code, again) in [
            (RefusalCode::BadToken, false),
            (RefusalCode::VersionMismatch, false),
            (RefusalCode::OriginNotAllowed, false),
            (RefusalCode::TooManyWorkers, true),
            (RefusalCode::ShuttingDown, true),
            (RefusalCode::CutOff, false),
        ] {
            let refused = Error::Refused(crate::wire::Refusal::new(code, "no"));
            assert_eq!(should_reconnect(&refused), again, "{code:?}");
        }
        assert!(!should_reconnect(&Error::config("bad flag")));
    }

    #[test]
    fn backoff_grows_to_its_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings: Vec<Duration> = (0..6).map(|_| b.next_delay(u64::MAX)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        assert!(b.next_delay(u64::MAX / 2) <= Duration::from_millis(500));
        assert_eq!(b.next_delay(0), Duration::ZERO, "full jitter");
        b.reset();
        assert_eq!(b.next_delay(u64::MAX), Duration::from_millis(100));
    }

    #[test]
    fn a_refusal_travels_in_a_close_frame_and_is_read_back() {
        let s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        let every_code = RefusalCode::ALL.map(|code| Refusal::new(code, "for a reason"));
        for refusal in [
            Refusal::new(RefusalCode::BadToken, "wrong access token"),
            Refusal::new(RefusalCode::VersionMismatch, "distchan.v1 vs distchan.v2"),
            Refusal::new(RefusalCode::CutOff, "this worker's group was cut off"),
            Refusal::new(RefusalCode::Other, "go away: now"),
        ]
        .into_iter()
        .chain(every_code)
        {
            let (code, reason) = close_frame_for(&Error::Refused(refusal.clone()));
            assert_eq!(reason, refusal.to_string());
            match s.close_reason(code, &reason, true) {
                Error::Refused(back) => assert_eq!(back, refusal),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_close_after_the_welcome_or_without_a_reason_is_no_refusal() {
        let mut s = WorkerSession::new(SessionConfig::native(1), TransformChain::new());
        let before = s.close_reason(CLOSE_POLICY, "", true);
        assert_eq!(
            before.to_string(),
            "the coordinator closed the connection (code 1008)"
        );
        s.handle_frame(&welcome()).unwrap();
        let after = s.close_reason(CLOSE_POLICY, " bad token: wrong access token ", true);
        assert!(
            matches!(&after, Error::Disconnected { code: CLOSE_POLICY, reason, clean: true } if reason == "bad token: wrong access token"),
            "{after:?}"
        );
        assert_eq!(
            after.to_string(),
            "the coordinator closed the connection: bad token: wrong access token"
        );
        let lost = s.close_reason(1006, "", false);
        assert_eq!(lost.to_string(), "the connection was lost (code 1006)");
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(200);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(&cut));
    }
}
