//! One worker's connection: the handshake, then a reader and a writer running side by side.
//!
//! - **Handshake**: the first frame must be a [`Hello`] within the handshake timeout; the
//!   protocol crate decides whether it passes ([`accept::accept_hello`]). A wrong version (in
//!   the hello or the offered subprotocol), a wrong token, a disallowed origin or a full
//!   house is answered with a [`Refusal`] frame and a close frame carrying the reason.
//! - **Writing**: when woken, the connection takes everything the scheduler put in this
//!   worker's outbox and queues the frames on its [`WebSocket`]; consecutive small jobs go
//!   in one batch message ([`ToWorker::Jobs`], built from their frames without re-encoding
//!   them), a large job in a message of its own, sent from the memory it was encoded in.
//!   The WebSocket writes queued frames many at a time before each read, so reading never
//!   waits for writing. It also sends heartbeat pings; a worker
//!   silent for two heartbeat intervals is dead.
//! - **Reading**: takes every frame already received, decodes them (a batch of results into
//!   its results), and settles them with the scheduler in one step (results, emitted values,
//!   a drain request). A malformed or
//!   unexpected frame closes this connection with a reason and a log line; other workers
//!   never notice, and the frames before it still count.
//!
//! One task drives both, in one loop. The one exception is a job sent while no other job is
//! out (one job at a time): the sender writes it at once, from its own thread, through the
//! connection's [`Outlet`], which the task shares with the scheduler for that. It saves the
//! hand-over between threads that is much of a single job's latency.
//!
//! When the connection ends for any reason the scheduler is told ([`Hub::leave`]) and puts
//! the worker's unanswered jobs back in the line, or, when the connection was lost and the
//! coordinator has a reconnect grace, keeps them for the worker's return.
//!
//! What a connection and the scheduler tell each other is defined here: [`Joining`] (the
//! hello, for [`Hub::join`]), [`Incoming`] (what the reader settles) and [`Outgoing`] (what
//! the writer sends).

use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use distchan_protocol::{
    accept::{self, AcceptPolicy},
    session::{close_frame_for, truncate_reason},
    wire::{
        self, Hello, JobFrame, JobResult, Refusal, RefusalCode, Resume, ToCoordinator, ToWorker,
        Welcome, WorkerKind, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR,
    },
    Error, JobId,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
    time::{timeout, timeout_at, Instant},
};
use tokio_tungstenite::tungstenite::{
    self,
    error::CapacityError,
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};

use crate::{
    scheduler::{Hub, WorkerId},
    server,
    stats::Counters,
    websocket, Shared,
};

/// A worker's WebSocket, over the upgraded HTTP connection.
pub(crate) type WebSocket = websocket::WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// What the HTTP upgrade request told us about the peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// Protocol versions offered as `distchan.vN` subprotocols.
    pub offered_versions: Vec<u32>,
}

/// What a connection is asked to send, in order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A complete job frame, and its job's id.
    Job(JobId, JobFrame),
    /// End-of-work: no more jobs will come.
    EndOfWork,
    /// The job with this id, sent before, was cancelled.
    Cancel(JobId),
    /// Close the connection with this code and reason.
    Close {
        /// The WebSocket close code.
        code: u16,
        /// Why, for the worker and the log.
        reason: String,
    },
}

/// What a connection read from its worker, decoded, for [`Hub::settle`].
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The result of a job.
    Result(JobResult),
    /// A value the worker sent on its own.
    Emit(Bytes),
    /// The worker takes no more jobs and leaves once it answered those it holds.
    Drain,
    /// The worker pauses, and gives back these jobs, which it had not started.
    Pause(Vec<JobId>),
    /// The worker takes jobs again.
    Unpause,
}

/// What a worker announced in its hello, for [`Hub::join`].
#[derive(Debug)]
pub(crate) struct Joining {
    /// What the worker calls itself.
    pub agent: String,
    /// Native, browser or other.
    pub kind: WorkerKind,
    /// Its address.
    pub addr: SocketAddr,
    /// The jobs it takes at once, as it declared them.
    pub capacity: u32,
    /// Milliseconds since the coordinator started when the worker was last heard from.
    pub last_seen: Arc<AtomicU64>,
    /// The session it had before it lost its connection, and the jobs it still holds.
    pub resume: Option<Resume>,
    /// The group it named ([`Hello::group`](distchan_protocol::wire::Hello::group)).
    pub group: Option<String>,
}

/// Most messages read before they are settled with the scheduler.
const BATCH: usize = 256;

/// Jobs whose frame is at most this large travel in batches; a larger one goes alone.
pub(crate) const BATCHED_JOB_MAX: usize = 16 * 1024;

/// Most bytes of job frames in one batch message.
const JOBS_BATCH_BYTES: usize = 256 * 1024;

/// Serves one upgraded WebSocket until it ends. `pending`, the connection's place among
/// the connections that are not workers yet, is given up once the hello is accepted.
pub(crate) async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer: PeerInfo,
    pending: Option<server::Pending>,
) {
    let mut ws = socket;
    let hello = match handshake(&mut ws, &shared, &peer).await {
        Ok(hello) => hello,
        Err(refusal) => {
            refuse(&mut ws, &peer, refusal).await;
            return;
        }
    };
    drop(pending);
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        let refusal = Refusal::new(
            RefusalCode::TooManyWorkers,
            format!(
                "this coordinator accepts at most {} workers",
                shared.config.max_workers
            ),
        );
        refuse(&mut ws, &peer, refusal).await;
        return;
    };

    let last_seen = Arc::new(AtomicU64::new(shared.epoch.elapsed().as_millis() as u64));
    let joining = Joining {
        agent: hello.agent.clone(),
        kind: hello.kind,
        addr: peer.addr,
        capacity: hello.capacity,
        last_seen: last_seen.clone(),
        resume: hello.resume,
        group: hello.group,
    };
    let joined = match shared.hub.join(joining) {
        Ok(joined) => joined,
        Err(refusal) => {
            refuse(&mut ws, &peer, refusal).await;
            return;
        }
    };
    let worker = joined.id;
    tracing::info!(worker, peer = %peer.addr, agent = %hello.agent, capacity = hello.capacity, resumed = joined.resumed, "worker joined");

    let welcome = ToWorker::Welcome(Welcome {
        worker_id: worker,
        task: shared.config.task.clone(),
        heartbeat_ms: shared.config.heartbeat.as_millis() as u64,
        max_frame: shared.config.max_frame as u64,
        module: shared.module.as_ref().map(|(spec, _)| spec.clone()),
        session: joined.session,
        grace_ms: shared.config.reconnect_grace.as_millis() as u64,
        resumed: joined.resumed,
    });
    let silence = silence_limit(&shared, hello.kind);
    let outlet = &joined.outlet;
    let (code, reason) = match wire::encode_to_worker(&welcome) {
        Ok(frame) => match ws.send(Message::Binary(frame)).await {
            Ok(()) => {
                // From here on, a job sent while no other is out may be written by its
                // sender; the welcome went first.
                let attached = outlet.attach(ws);
                let end = run(outlet, &shared, &last_seen, silence).await;
                ws = attached.detach();
                end
            }
            Err(e) => (CLOSE_GOING_AWAY, format!("could not send the welcome: {e}")),
        },
        Err(e) => (
            CLOSE_GOING_AWAY,
            format!("could not encode the welcome: {e}"),
        ),
    };
    // Closing everyone after the end of the work is the normal end of a run.
    let normal =
        code == wire::CLOSE_NORMAL || (code == CLOSE_GOING_AWAY && *shared.finished.borrow());
    if normal {
        tracing::info!(worker, %reason, "worker left");
    } else {
        tracing::warn!(worker, code, %reason, "worker disconnected");
    }
    // The scheduler hears first, so that nothing more is given to this worker while it
    // closes. Going away without the worker's close frame (a failed read or write, a silent
    // worker) is a lost connection: the worker may come back for its jobs.
    shared.hub.leave(worker, &reason, code == CLOSE_GOING_AWAY);
    close(&mut ws, code, &reason).await;
}

/// Reads the worker's hello and has the protocol crate check it (version, origin, token,
/// capacity: [`accept::accept_hello`]); the refusal to send when it does not pass.
async fn handshake(
    stream: &mut WebSocket,
    shared: &Shared,
    peer: &PeerInfo,
) -> Result<Hello, Refusal> {
    let config = &shared.config;
    let first: Bytes = loop {
        match timeout(config.handshake_timeout, stream.next()).await {
            Err(_) => {
                return Err(Refusal::new(
                    RefusalCode::HandshakeTimeout,
                    format!("no hello within {:?}", config.handshake_timeout),
                ))
            }
            Ok(None) => {
                return Err(Refusal::new(
                    RefusalCode::Malformed,
                    "closed before the hello",
                ))
            }
            Ok(Some(Err(e))) => {
                return Err(Refusal::new(
                    RefusalCode::Malformed,
                    read_error(e).to_string(),
                ))
            }
            Ok(Some(Ok(Message::Binary(b)))) => break b,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(_))) => {
                return Err(Refusal::new(
                    RefusalCode::Malformed,
                    "expected a binary MessagePack hello",
                ))
            }
        }
    };
    let policy = AcceptPolicy {
        token: config.token.as_deref(),
        allowed_origins: &config.allowed_origins,
    };
    accept::accept_hello(
        &first,
        &peer.offered_versions,
        peer.origin.as_deref(),
        &policy,
    )
}

/// How long a worker of `kind` may stay silent before it counts as dead: two heartbeat
/// intervals (`None` without heartbeats). A browser tab answers between jobs, and a task
/// module's job in a tab cannot be interrupted: there, a job's whole time limit is allowed
/// on top.
fn silence_limit(shared: &Shared, kind: WorkerKind) -> Option<Duration> {
    let heartbeat = shared.config.heartbeat;
    if heartbeat.is_zero() {
        return None;
    }
    let module_job = match (&shared.module, kind) {
        (Some(_), WorkerKind::Browser) => {
            Duration::from_millis(shared.config.module_limits.timeout_ms)
        }
        _ => Duration::ZERO,
    };
    Some(2 * heartbeat + module_job)
}

/// Reads and writes until the connection ends, with its close code and reason.
///
/// Every heartbeat interval the worker gets a [`ToWorker::Ping`], which its own event loop
/// answers; only the worker's frames count as signs of life (a browser answers WebSocket
/// pings even when its page is frozen). Silent for `silence`, it is dead.
///
/// The WebSocket is `outlet`'s, attached; the outlet is locked for each step on it, and
/// never while the scheduler is told what was read.
async fn run(
    outlet: &Outlet,
    shared: &Shared,
    last_seen: &AtomicU64,
    silence: Option<Duration>,
) -> (u16, String) {
    let worker = outlet.worker;
    let epoch = shared.epoch;
    let start = Instant::now();
    let heartbeat = shared.config.heartbeat;
    let hub: &Hub = &shared.hub;
    let mut batch = Vec::new(); // grow on first use: idle workers stay small
    let enabled = !heartbeat.is_zero();
    let period = if enabled {
        heartbeat
    } else {
        Duration::from_secs(3600)
    };
    let silence = silence.unwrap_or(2 * period);
    let mut ping = tokio::time::interval_at(start + period, period);
    let mut pings = 0u64;
    let deadline = tokio::time::sleep_until(start + silence);
    tokio::pin!(deadline);
    // Kept across rounds of the loop, and armed again only once it fired.
    let woken = outlet.wake.notified();
    tokio::pin!(woken);
    loop {
        tokio::select! {
            // Queued frames go out first, then the next message is read.
            step = poll_fn(|cx| outlet.line().ws.poll_write_then_read(cx)) => {
                let mut next = match step {
                    Ok(msg) => msg,
                    Err(e) => return (CLOSE_GOING_AWAY, format!("write failed: {e}")),
                };
                let mut bytes = 0;
                let mut end = None;
                // Every message already there (up to BATCH), then settle them in one step.
                for taken in 1.. {
                    if let Err(e) = read_one(next, worker, &mut bytes, &mut batch) {
                        end = Some(e);
                        break;
                    }
                    if taken == BATCH {
                        break; // the rest waits for the next round
                    }
                    next = match poll_fn(|cx| Poll::Ready(outlet.line().ws.poll_read(cx))).await {
                        Poll::Ready(msg) => msg,
                        Poll::Pending => break,
                    };
                }
                if bytes > 0 {
                    // The worker itself spoke (a result, a pong): it is alive.
                    last_seen.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    shared.counters.bytes_in.inc_by(bytes);
                }
                if end.is_some() {
                    // Nothing more is written from outside: a job sent from here on stays
                    // in the outbox, and goes back to the line unsent when the worker leaves.
                    outlet.line().ending = true;
                }
                if !batch.is_empty() {
                    hub.settle(worker, &mut batch);
                }
                if let Some(end) = end {
                    return end;
                }
            }
            _ = &mut woken => {
                woken.set(outlet.wake.notified());
                let mut line = outlet.line();
                let line = &mut *line;
                hub.take_outbox(worker, &mut line.out);
                let mut out = std::mem::take(&mut line.out);
                let mut bytes = 0;
                for item in out.drain(..) {
                    let frame = match item {
                        Outgoing::Job(_, frame) => {
                            bytes += line.queue_job(frame);
                            continue;
                        }
                        Outgoing::EndOfWork | Outgoing::Cancel(_) => {
                            let msg = match item {
                                Outgoing::Cancel(id) => ToWorker::Cancel(id),
                                _ => ToWorker::EndOfWork,
                            };
                            match wire::encode_to_worker(&msg) {
                                Ok(frame) => frame,
                                Err(e) => return (CLOSE_POLICY, e.to_string()),
                            }
                        }
                        Outgoing::Close { code, reason } => return (code, reason),
                    };
                    // In order: the jobs gathered so far go first.
                    bytes += line.jobs.queue(&mut line.ws);
                    bytes += frame.len() as u64;
                    line.ws.queue_binary(frame);
                }
                line.out = out; // its room is kept for the next round
                bytes += line.jobs.queue(&mut line.ws);
                shared.counters.bytes_out.inc_by(bytes);
            }
            _ = ping.tick(), if enabled => {
                pings += 1;
                match wire::encode_to_worker(&ToWorker::Ping(pings)) {
                    Ok(frame) => outlet.line().ws.queue_binary(frame),
                    Err(e) => return (CLOSE_POLICY, e.to_string()),
                }
            }
            _ = &mut deadline, if enabled => {
                let seen_at = epoch + Duration::from_millis(last_seen.load(Ordering::Relaxed));
                if Instant::now() >= seen_at + silence {
                    return (CLOSE_GOING_AWAY, format!("no sign of life for {silence:?} (it answered no heartbeat)"));
                }
                deadline.as_mut().reset(seen_at + silence);
            }
        }
    }
}

/// A connection's way out, shared with the scheduler: the wake for its task and, while the
/// connection serves its worker, its WebSocket with what its writer keeps between rounds.
///
/// Its task writes whatever the scheduler puts in the worker's outbox when woken. But a
/// job sent while no other job is out (one job at a time) is written at once by the
/// sender, from its own thread ([`Outlet::write_now`]): one hand-over between threads
/// fewer on the way to the worker, much of a single job's latency when it is sent from
/// outside the runtime. In a flood of jobs the connections' tasks write them side by side
/// with the senders, many jobs to a message.
pub(crate) struct Outlet {
    /// The worker this connection serves.
    worker: WorkerId,
    /// Wakes the connection's task when the outbox has something for it.
    wake: Notify,
    /// The WebSocket and the writer's buffers, while the connection serves its worker
    /// (after its welcome, until it ends).
    line: Mutex<Option<Line>>,
}

/// The connection's WebSocket, and what its writer keeps between rounds (over any socket
/// `S`, for tests; a worker's is always a [`WebSocket`]).
struct Line<S = TokioIo<hyper::upgrade::Upgraded>> {
    ws: websocket::WebSocket<S>,
    /// True once the connection's end was read: [`Outlet::write_now`] leaves jobs where
    /// they are.
    ending: bool,
    /// The outbox taken from the scheduler, drained each round.
    out: Vec<Outgoing>,
    /// Small jobs gathered into one message.
    jobs: JobBatch,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Line<S> {
    /// Queues job `frame`: a small one joins the batch, a large one goes alone, after the
    /// batch. Returns the bytes queued.
    fn queue_job(&mut self, frame: JobFrame) -> u64 {
        // A batch carries small frames in one part (a shared tail is large, but a frame
        // that has one goes alone whatever its size).
        if frame.len() <= BATCHED_JOB_MAX && frame.tail().is_empty() {
            let mut bytes = 0;
            if self.jobs.bytes + frame.len() > JOBS_BATCH_BYTES {
                bytes += self.jobs.queue(&mut self.ws);
            }
            self.jobs.push(frame);
            return bytes;
        }
        let bytes = self.jobs.queue(&mut self.ws) + frame.len() as u64;
        self.ws.queue_binary_parts(&[], frame.parts(), frame.len());
        bytes
    }
}

impl Outlet {
    /// The outlet of worker `worker`'s connection, before it is attached.
    pub(crate) fn new(worker: WorkerId) -> Self {
        Outlet {
            worker,
            wake: Notify::new(),
            line: Mutex::new(None),
        }
    }

    /// Wakes the connection's task: its worker's outbox has something.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Writes the jobs in the worker's outbox from this thread, now. The scheduler calls
    /// this, its lock released, for a job sent while no other job was out.
    ///
    /// It leaves the work to the connection's task (and wakes it) whenever that is
    /// simpler: the task holds the WebSocket, the connection is not attached (or is
    /// ending), earlier frames still wait to be written or flushed (a heartbeat, say), the
    /// outbox holds something else than jobs, or the socket does not take every byte at
    /// once. Nothing written here waits for the socket: the task writes what it left, in
    /// order.
    pub(crate) fn write_now(&self, hub: &Hub, counters: &Counters) {
        let Ok(mut line) = self.line.try_lock() else {
            return self.wake();
        };
        let Some(line) = line.as_mut().filter(|line| !line.ending) else {
            return self.wake();
        };
        if line.ws.has_queued() || !hub.take_outbox_jobs(self.worker, &mut line.out) {
            return self.wake();
        }
        let mut out = std::mem::take(&mut line.out);
        let mut bytes = 0;
        for item in out.drain(..) {
            if let Outgoing::Job(_, frame) = item {
                bytes += line.queue_job(frame);
            }
        }
        line.out = out;
        bytes += line.jobs.queue(&mut line.ws);
        counters.bytes_out.inc_by(bytes);
        // No task waits here: a socket that takes only part gets the rest from the task.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(line.ws.poll_write_queued(&mut cx), Poll::Ready(Ok(()))) {
            self.wake();
        }
    }

    /// Hands the WebSocket over once the welcome is sent: from now on its task and the
    /// scheduler's [`Outlet::write_now`] share it, until the attachment returned is
    /// detached or dropped (the task's end, even by a panic, closes the socket).
    fn attach(&self, ws: WebSocket) -> Attachment<'_> {
        *self.lock() = Some(Line {
            ws,
            ending: false,
            out: Vec::new(),
            jobs: JobBatch::default(),
        });
        Attachment(self)
    }

    /// The line, locked.
    fn lock(&self) -> MutexGuard<'_, Option<Line>> {
        // A panic under the lock is a bug; the WebSocket is still the best there is.
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The line, locked, while the connection is attached (all through [`run`]).
    fn line(&self) -> Attached<'_> {
        Attached(self.lock())
    }
}

/// The WebSocket lent to an [`Outlet`]; taken back when detached or dropped.
struct Attachment<'a>(&'a Outlet);

impl Attachment<'_> {
    /// Takes the WebSocket back when the connection ends.
    fn detach(self) -> WebSocket {
        let line = self.0.lock().take();
        line.expect("attached until its attachment is detached or dropped")
            .ws
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        self.0.lock().take();
    }
}

/// The attached line, locked; see [`Outlet::line`].
struct Attached<'a>(MutexGuard<'a, Option<Line>>);

impl std::ops::Deref for Attached<'_> {
    type Target = Line;
    fn deref(&self) -> &Line {
        self.0.as_ref().expect("attached all through run")
    }
}

impl std::ops::DerefMut for Attached<'_> {
    fn deref_mut(&mut self) -> &mut Line {
        self.0.as_mut().expect("attached all through run")
    }
}

/// Job frames (each in one part) waiting to go out together as one batch message.
#[derive(Default)]
struct JobBatch {
    frames: Vec<JobFrame>,
    /// Bytes of `frames`.
    bytes: usize,
}

impl JobBatch {
    fn push(&mut self, frame: JobFrame) {
        self.bytes += frame.len();
        self.frames.push(frame);
    }

    /// Queues the jobs gathered on `ws`: one alone as its own frame, several as one
    /// [`ToWorker::Jobs`] message. Returns the bytes queued.
    fn queue<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut websocket::WebSocket<S>,
    ) -> u64 {
        let queued = match self.frames.len() {
            0 => 0,
            1 => {
                let frame = self.frames.pop().expect("one frame");
                ws.queue_binary_parts(&[], frame.parts(), frame.len());
                frame.len()
            }
            _ => {
                let (head, parts) = wire::jobs_frame_parts(&self.frames);
                ws.queue_binary_parts(head.as_bytes(), parts, head.frame_len());
                head.frame_len()
            }
        };
        self.frames.clear();
        self.bytes = 0;
        queued as u64
    }
}

/// What one message from the worker means: something for the scheduler (added to `batch`),
/// nothing (pings and pongs), or the end of the connection with its close code and reason.
fn read_one(
    msg: websocket::Read,
    worker: WorkerId,
    bytes: &mut u64,
    batch: &mut Vec<Incoming>,
) -> Result<(), (u16, String)> {
    let frame = match msg {
        None => return Err((CLOSE_GOING_AWAY, "connection lost".to_owned())),
        Some(Ok(Message::Binary(frame))) => frame,
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
        Some(Ok(Message::Close(_))) => {
            return Err((wire::CLOSE_NORMAL, "closed by the worker".to_owned()))
        }
        Some(Ok(Message::Text(_))) => {
            return Err((
                CLOSE_PROTOCOL_ERROR,
                "text frames are not part of the protocol".to_owned(),
            ))
        }
        Some(Err(e)) => return Err(close_frame_for(&read_error(e))),
    };
    *bytes += frame.len() as u64;
    let item = match wire::decode_to_coordinator_shared(&frame) {
        Ok(ToCoordinator::Result(r)) => Incoming::Result(r),
        Ok(ToCoordinator::Results(results)) => {
            batch.extend(results.into_iter().map(Incoming::Result));
            return Ok(());
        }
        Ok(ToCoordinator::Emit { payload }) => Incoming::Emit(payload),
        Ok(ToCoordinator::Drain) => Incoming::Drain,
        Ok(ToCoordinator::Pause { released }) => Incoming::Pause(released),
        Ok(ToCoordinator::Unpause) => Incoming::Unpause,
        // Its arrival is what counts (see `run`).
        Ok(ToCoordinator::Pong(_)) => return Ok(()),
        Ok(ToCoordinator::Hello(_)) => {
            return Err(close_frame_for(&Error::Unexpected("a second hello".into())))
        }
        Err(e) => {
            tracing::debug!(worker, error = %e, "unreadable frame");
            return Err(close_frame_for(&e));
        }
    };
    batch.push(item);
    Ok(())
}

/// Logs the refusal of the worker at `peer`, sends the refusal frame, then a close frame
/// with the same reason.
async fn refuse(sink: &mut WebSocket, peer: &PeerInfo, refusal: Refusal) {
    tracing::warn!(peer = %peer.addr, %refusal, "worker refused");
    let (code, reason) = close_frame_for(&Error::Refused(refusal.clone()));
    if let Ok(frame) = wire::encode_to_worker(&ToWorker::Refused(refusal)) {
        let _ = timeout(Duration::from_secs(2), sink.send(Message::Binary(frame))).await;
    }
    close(sink, code, &reason).await;
}

/// Sends a close frame with `code` and `reason`, then waits for the worker's close frame
/// (the closing handshake), dropping what it still sends meanwhile; gives up after two
/// seconds in all.
///
/// Dropping the connection at once would reset it under a worker still sending results,
/// and a reset throws away what the worker had not read yet, this close frame included: it
/// would take a deliberate close (a refusal, a worker cut off) for a lost connection, and
/// connect again.
async fn close(sink: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: truncate_reason(reason).into(),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    if !matches!(
        timeout_at(deadline, sink.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    while let Ok(Some(Ok(message))) = timeout_at(deadline, sink.next()).await {
        if message.is_close() {
            break;
        }
    }
}

/// A read error as the protocol crate's error, whose close code and reason
/// [`close_frame_for`] gives: a message over the size limit is [`Error::FrameTooLarge`],
/// anything else the connection failing.
fn read_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Error::FrameTooLarge {
                size,
                limit: max_size,
            }
        }
        other => Error::connection_from("read failed", other),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use distchan_protocol::{read_ahead::ReadPool, wire::JobFrameBuilder};
    use futures_util::StreamExt;
    use tokio_tungstenite::{
        tungstenite::protocol::{Role, WebSocketConfig},
        WebSocketStream,
    };

    use super::*;
    use crate::socket::Socket;

    #[tokio::test]
    async fn a_small_frame_with_a_shared_tail_goes_alone_not_in_a_batch() {
        let (io, peer) = tokio::io::duplex(1 << 20);
        let socket = Socket::new(io, Arc::new(ReadPool::new(1)));
        let mut line = Line {
            ws: websocket::WebSocket::server(socket, WebSocketConfig::default()).await,
            ending: false,
            out: Vec::new(),
            jobs: JobBatch::default(),
        };
        let mut client = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
        let plain = |id| JobFrame::from(wire::job_frame(JobId(id), b"plain"));
        let mut builder = JobFrameBuilder::with_capacity(2);
        builder.write_all(b"ab").unwrap();
        builder.share(Bytes::from_static(b"tail"));
        let tailed = builder.finish(JobId(1));
        assert!(!tailed.tail().is_empty() && tailed.len() <= BATCHED_JOB_MAX);
        for frame in [plain(0), tailed.clone(), plain(2), plain(3)] {
            line.queue_job(frame);
        }
        line.jobs.queue(&mut line.ws);
        line.ws.send(Message::Binary("end".into())).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(bytes) => got.push(bytes),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
        // The first job went alone ahead of the tailed one, whole; the last two in a batch.
        assert_eq!(got[0], plain(0).to_bytes());
        assert_eq!(got[1], tailed.to_bytes(), "the tail was written");
        let ToWorker::Jobs(batch) = wire::decode_to_worker(&got[2]).unwrap() else {
            panic!("the last two jobs were not a batch");
        };
        let ids: Vec<JobId> = batch.iter().map(|job| job.id).collect();
        assert_eq!(ids, [JobId(2), JobId(3)]);
        assert_eq!(&got[3][..], b"end");
    }
}
