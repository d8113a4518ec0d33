//! The worker's end of the wire: connects, says hello, then shuttles frames between the
//! WebSocket and the jobs' consumer, with every protocol decision taken by the shared
//! [`WorkerSession`].
//!
//! The consumer is either the caller's job stream and result sender ([`connect_raw`]), or a
//! runner of a handler that the connection task drives itself ([`serve`](fn@crate::serve)
//! and friends): then a job whose handler finishes without waiting is answered in the same
//! flush as the frames read with it, without crossing a task. Frames are read in batches
//! (every frame already there; a frame may itself carry a batch of jobs) and written in
//! batches: the results finished in one round go out in one frame, with one flush.

use std::{
    future::poll_fn,
    ops::ControlFlow::{self, Break, Continue},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use distchan_protocol::{
    read_ahead::{End, ReadAhead, ReadPool, WEBSOCKET_READ_BUFFER},
    session::{close_frame_for, truncate_reason, Event, WorkerSession},
    wire::{Outcome, Welcome, CLOSE_ABNORMAL, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_NO_STATUS},
    Error, JobId, Result,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
    task::JoinHandle,
    time::{timeout, Instant},
};
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{
        self,
        client::IntoClientRequest,
        error::CapacityError,
        http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue},
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use tokio_util::sync::CancellationToken;

use crate::{
    job::{RawJob, Reply},
    module::{Done, ModulePool, Source},
    runner::Runner,
    tls, Options,
};

/// The connection's lifetime: what the coordinator said, and how the connection ended.
///
/// Mirrors the Go client's `Done()`: [`Client::done`] completes once the last result has
/// been flushed and the connection closed.
#[derive(Debug)]
pub struct Client {
    welcome: Welcome,
    drain: CancellationToken,
    task: JoinHandle<(Result<()>, Carry)>,
}

/// What a connection that ended leaves for the next one, so that a worker that connects
/// again can resume its session (see [`WorkerSession::reconnect`]): the session, the jobs'
/// runner with the jobs still running, and where it reports.
pub(crate) struct Carry {
    /// The session, readied for its resume.
    pub session: WorkerSession,
    jobs: Option<Jobs>,
    replies: Option<mpsc::Receiver<Reply>>,
}

impl std::fmt::Debug for Carry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carry")
            .field("outstanding", &self.session.outstanding())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The coordinator's welcome (worker id, task name, heartbeat).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The built-in task the coordinator named, if any.
    pub fn task(&self) -> Option<&str> {
        self.welcome.task.as_deref()
    }

    /// Asks to leave: the coordinator sends no more jobs; the connection closes once the jobs
    /// already received are answered.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Waits until the connection is over: `Ok` after end-of-work (or a drain) once every
    /// result has been flushed, `Err` when it ended for another reason.
    pub async fn done(self) -> Result<()> {
        self.end().await.0
    }

    /// Like [`Client::done`], with what the connection leaves for the next one when it was
    /// lost (`None` once the session is over).
    pub(crate) async fn end(self) -> (Result<()>, Option<Carry>) {
        match self.task.await {
            Ok((Ok(()), _)) => (Ok(()), None),
            Ok((Err(e), mut carry)) => {
                carry.session.reconnect();
                (Err(e), Some(carry))
            }
            Err(e) => (
                Err(Error::connection_from("the connection task failed", e)),
                None,
            ),
        }
    }
}

/// What [`connect_raw`] returns: the raw job stream, the reply sender and the [`Client`].
pub type RawConnection = (mpsc::Receiver<RawJob>, mpsc::Sender<Reply>, Client);

/// Connects to `url`, completes the handshake and starts the connection task.
///
/// Returns when the coordinator has welcomed the worker; a refusal is
/// [`Error::Refused`] with the coordinator's reason.
pub async fn connect_raw(url: &str, options: &Options) -> Result<RawConnection> {
    Ok(open(url, options, None).await?.stream(options))
}

/// Like [`connect_raw`], over a connection the caller already opened (a TLS stream, a
/// Unix socket, or an in-memory pipe in tests). `url` still names the endpoint.
pub async fn connect_raw_io<S>(url: &str, io: S, options: &Options) -> Result<RawConnection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (request, subprotocol) = request(url, options)?;
    let connecting = upgrade(request, io, options);
    let ws = match timeout(options.handshake_timeout, connecting).await {
        Err(_) => return Err(Error::Timeout(format!("connecting to {url}"))),
        Ok(result) => upgrade_result(url, &subprotocol, result)?,
    };
    Ok(handshake(url, ws, options, None).await?.stream(options))
}

/// The socket under a worker's WebSocket: TCP or TLS (read ahead while busy, see [`Ws`]).
pub(crate) type Socket = tls::Stream;

/// Connects to `url` (over TLS for `wss://`, see [`tls`]) and completes the
/// handshake, without starting the connection task; `resume` is the session of a lost
/// connection, readied for its resume.
pub(crate) async fn open(
    url: &str,
    options: &Options,
    resume: Option<&WorkerSession>,
) -> Result<Welcomed<Socket>> {
    let (request, subprotocol) = request(url, options)?;
    let connecting = async {
        let io = tls::connect(request.uri(), &options.ca_certs).await?;
        let upgraded = upgrade(request, io, options).await;
        upgrade_result(url, &subprotocol, upgraded)
    };
    let ws = match timeout(options.handshake_timeout, connecting).await {
        Err(_) => return Err(Error::Timeout(format!("connecting to {url}"))),
        Ok(result) => result?,
    };
    handshake(url, ws, options, resume).await
}

fn request(
    url: &str,
    options: &Options,
) -> Result<(tungstenite::handshake::client::Request, String)> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::config_from(format!("bad coordinator URL {url:?}"), e))?;
    let subprotocol = options.session_config().subprotocol();
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&subprotocol)
            .map_err(|e| Error::config_from(format!("bad subprotocol {subprotocol:?}"), e))?,
    );
    Ok((request, subprotocol))
}

/// The WebSocket client handshake over `io`, read ahead under a small WebSocket read buffer
/// (the two go together; see [`read_ahead`](distchan_protocol::read_ahead)).
async fn upgrade<S>(
    request: tungstenite::handshake::client::Request,
    io: S,
    options: &Options,
) -> std::result::Result<
    (
        WebSocketStream<ReadAhead<S>>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
        .max_message_size(Some(options.max_frame))
        .max_frame_size(Some(options.max_frame));
    let io =
        ReadAhead::new(io, ReadPool::process()).read_large_messages(End::Client, options.max_frame);
    client_async_with_config(request, io, Some(config)).await
}

fn upgrade_result<S, R>(
    url: &str,
    subprotocol: &str,
    result: std::result::Result<(WebSocketStream<S>, R), tungstenite::Error>,
) -> Result<WebSocketStream<S>> {
    match result {
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
        )) => Err(Error::connection(format!(
            "the coordinator at {url} does not speak {subprotocol} (another protocol version?)"
        ))),
        Err(e) => Err(Error::connection_from(format!("connecting to {url}"), e)),
        Ok((ws, _response)) => Ok(ws),
    }
}

/// A connection the coordinator has welcomed, before its task starts.
pub(crate) struct Welcomed<S> {
    ws: Ws<S>,
    session: WorkerSession,
    welcome: Welcome,
}

/// Says hello (asking to resume the session of a lost connection, if given) and waits for
/// the welcome.
async fn handshake<S>(
    url: &str,
    mut ws: Ws<S>,
    options: &Options,
    resume: Option<&WorkerSession>,
) -> Result<Welcomed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = match resume {
        Some(session) => session.clone(),
        None => WorkerSession::new(options.session_config(), options.transforms.clone()),
    };
    ws.send(Message::Binary(session.hello_frame()?))
        .await
        .map_err(|e| Error::connection_from("sending the hello", e))?;
    let welcome = match timeout(options.handshake_timeout, next_event(&mut ws, &mut session)).await
    {
        Err(_) => Err(Error::Timeout("no welcome from the coordinator".into())),
        Ok(Ok(Event::Welcomed(welcome))) => Ok(welcome),
        Ok(Ok(other)) => Err(Error::Unexpected(format!(
            "expected a welcome, got {other:?}"
        ))),
        Ok(Err(e)) => Err(e),
    };
    let welcome = match welcome {
        Ok(w) => w,
        Err(e) => return Err(fail(&mut ws, e).await),
    };
    tracing::info!(worker_id = welcome.worker_id, task = ?welcome.task, resumed = welcome.resumed, "connected to {url}");
    Ok(Welcomed {
        ws,
        session,
        welcome,
    })
}

impl<S> Welcomed<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// What the coordinator said.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Starts the connection task feeding the caller's job stream.
    fn stream(self, options: &Options) -> RawConnection {
        let capacity = options.capacity.max(1) as usize;
        let (jobs_tx, jobs_rx) = mpsc::channel(capacity);
        let (replies_tx, replies_rx) = mpsc::channel(capacity);
        let client = self.spawn(Some(Jobs::Stream(jobs_tx)), Some(replies_rx), options);
        (jobs_rx, replies_tx, client)
    }

    /// Starts the connection task running `runner` on every job; `replies` is where the
    /// runner's own tasks report.
    pub(crate) fn run(
        self,
        runner: Runner,
        replies: mpsc::Receiver<Reply>,
        options: &Options,
    ) -> Client {
        self.spawn(Some(Jobs::Run(runner)), Some(replies), options)
    }

    /// Starts the connection task running every job through the task module of `source`
    /// on a [`ModulePool`] of `threads` threads.
    pub(crate) fn run_module(self, source: Source, threads: usize, options: &Options) -> Client {
        // The pool reports on a channel of its own.
        self.spawn(
            Some(Jobs::Module(ModulePool::start(source, threads))),
            None,
            options,
        )
    }

    /// Starts the connection task of a resumed session with what the lost connection left:
    /// the jobs still running answer on this connection.
    pub(crate) fn resume(self, carry: Carry, options: &Options) -> Client {
        self.spawn(carry.jobs, carry.replies, options)
    }

    /// Leaves before taking any job, telling the coordinator why.
    pub(crate) async fn leave(mut self, reason: &str) {
        close(&mut self.ws, CLOSE_NORMAL, reason).await;
    }

    /// Starts the connection task; `replies` is where the jobs' consumer answers, when it
    /// answers through a channel.
    fn spawn(
        self,
        jobs: Option<Jobs>,
        replies: Option<mpsc::Receiver<Reply>>,
        options: &Options,
    ) -> Client {
        let drain = options.drain.clone();
        let driver = Driver {
            ws: self.ws,
            session: self.session,
            jobs,
            unflushed: false,
        };
        let task = tokio::spawn(driver.drive(replies, drain.clone()));
        Client {
            welcome: self.welcome,
            drain,
            task,
        }
    }
}

/// A worker's WebSocket: over a socket read ahead, which reads large binary messages past
/// the WebSocket (see [`read_ahead`](distchan_protocol::read_ahead)).
type Ws<S> = WebSocketStream<ReadAhead<S>>;

/// The next message: a large one read past the WebSocket first (it came before anything
/// the WebSocket holds), else the WebSocket's.
fn poll_message<S>(ws: &mut Ws<S>, cx: &mut Context<'_>) -> Poll<Option<WsResult>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ws.get_mut().take_large_message() {
        Some(large) => Poll::Ready(Some(Ok(Message::Binary(large)))),
        None => ws.poll_next_unpin(cx),
    }
}

/// Waits for the next message (see [`poll_message`]).
async fn next_message<S>(ws: &mut Ws<S>) -> Option<WsResult>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| poll_message(ws, cx)).await
}

/// Reads frames until one means something to the session.
async fn next_event<S>(ws: &mut Ws<S>, session: &mut WorkerSession) -> Result<Event>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Some(frame) = binary(next_message(ws).await, session)? {
            return session.handle_frame_shared(&frame);
        }
    }
}

/// The binary frame a message carries; `None` for messages that carry none (pings, pongs).
/// An error ends the connection: a text frame is unexpected; a close frame, or the stream
/// ending, means what the session says ([`WorkerSession::close_reason`]); a read error is
/// the connection failing.
fn binary(msg: Option<WsResult>, session: &WorkerSession) -> Result<Option<Bytes>> {
    match msg {
        Some(Ok(Message::Binary(frame))) => Ok(Some(frame)),
        Some(Ok(Message::Close(Some(frame)))) => {
            Err(session.close_reason(frame.code.into(), &frame.reason, true))
        }
        Some(Ok(Message::Close(None))) => Err(session.close_reason(CLOSE_NO_STATUS, "", true)),
        Some(Ok(Message::Text(_))) => Err(Error::Unexpected(
            "a text frame (the protocol uses binary frames only)".into(),
        )),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(read_error(e)),
        None => Err(session.close_reason(CLOSE_ABNORMAL, "", false)),
    }
}

/// A read error as the protocol crate's error: a message over the size limit is
/// [`Error::FrameTooLarge`], anything else the connection failing.
fn read_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Error::FrameTooLarge {
                size,
                limit: max_size,
            }
        }
        other => Error::connection_from("reading", other),
    }
}

async fn close<S>(ws: &mut Ws<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: truncate_reason(reason).into(),
    };
    let _ = timeout(Duration::from_secs(2), ws.send(Message::Close(Some(frame)))).await;
    // Wait briefly for the coordinator's answering close so it sees a clean end.
    let _ = timeout(Duration::from_secs(2), async {
        while next_message(ws).await.is_some() {}
    })
    .await;
}

/// Closes the connection with the code and reason `err` calls for, and hands `err` back.
async fn fail<S>(ws: &mut Ws<S>, err: Error) -> Error
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (code, reason) = close_frame_for(&err);
    close(ws, code, &reason).await;
    err
}

/// Most frames read, or replies written, per batch.
const BATCH: usize = 256;

/// Where the connection task hands the jobs it receives.
enum Jobs {
    /// Into the caller's job stream ([`connect_raw`]).
    Stream(mpsc::Sender<RawJob>),
    /// To a handler the connection task runs itself.
    Run(Runner),
    /// To threads running a task module.
    Module(ModulePool),
}

/// What a step of the connection task says: go on, or stop with how the connection ended
/// (for [`Client::done`]).
type Step = ControlFlow<Result<()>>;

/// The connection task's state.
struct Driver<S> {
    ws: Ws<S>,
    session: WorkerSession,
    /// `None` once the caller's job stream has ended (end-of-work).
    jobs: Option<Jobs>,
    /// True when frames were fed since the last flush.
    unflushed: bool,
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Runs the connection until it ends; returns how, and what it leaves for the next
    /// connection.
    async fn drive(
        mut self,
        replies: Option<mpsc::Receiver<Reply>>,
        drain: CancellationToken,
    ) -> (Result<()>, Carry) {
        let had_replies = replies.is_some();
        let mut replies_open = had_replies;
        let (_, unused) = mpsc::channel(1);
        let mut replies = replies.unwrap_or(unused);
        let mut draining = false;
        let mut batch = Vec::new();
        let idle = self.session.idle_timeout();
        let mut last_seen = Instant::now();
        let far = Duration::from_secs(86_400 * 365);
        let deadline = tokio::time::sleep(idle.unwrap_or(far));
        tokio::pin!(deadline);

        let end = 'run: {
            // Results a resumed session sends again go out at once.
            self.unflushed = true;
            if let Break(end) = self.flush().await {
                break 'run end;
            }
            loop {
                if self.session.is_finished() {
                    close(&mut self.ws, CLOSE_NORMAL, self.session.finish_reason()).await;
                    break Ok(());
                }
                tokio::select! {
                    biased;
                    _ = drain.cancelled(), if !draining => {
                        draining = true;
                        tracing::info!(outstanding = self.session.outstanding(), "draining: finishing the jobs held, then leaving");
                        let sent = match self.session.drain_frame() {
                            Ok(frame) => self.ws.send(Message::Binary(frame)).await.map_err(|e| Error::connection_from("sending the drain", e)),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            break Err(e);
                        }
                    }
                    msg = next_message(&mut self.ws) => {
                        last_seen = Instant::now();
                        if let Break(end) = self.read_batch(msg).await {
                            break end;
                        }
                    }
                    n = replies.recv_many(&mut batch, BATCH), if replies_open => {
                        if n == 0 {
                            replies_open = false;
                            if self.session.outstanding() > 0 || !self.session.end_of_work() {
                                let reason = format!("the worker stopped with {} jobs unanswered", self.session.outstanding());
                                close(&mut self.ws, CLOSE_GOING_AWAY, &reason).await;
                                break Ok(());
                            }
                            continue;
                        }
                        if let Break(end) = self.send_replies(&mut batch).await {
                            break end;
                        }
                    }
                    Some(done) = module_done(&mut self.jobs) => {
                        if let Break(end) = self.on_module(done).await {
                            break end;
                        }
                    }
                    _ = &mut deadline, if idle.is_some() => {
                        let limit = idle.unwrap_or(far);
                        if last_seen.elapsed() >= limit {
                            let e = Error::Timeout(format!("the coordinator was silent for {limit:?}"));
                            break Err(fail(&mut self.ws, e).await);
                        }
                        deadline.as_mut().reset(last_seen + limit);
                    }
                }
            }
        };
        let jobs = match self.jobs.take() {
            // The caller's job stream ends with the connection.
            Some(Jobs::Stream(_)) | None => None,
            jobs => jobs,
        };
        let carry = Carry {
            session: self.session,
            jobs,
            replies: had_replies.then_some(replies),
        };
        (end, carry)
    }

    /// Handles `first` and every other message already received, then flushes what they
    /// produced.
    async fn read_batch(&mut self, first: Option<WsResult>) -> Step {
        self.new_round();
        let mut msg = first;
        for taken in 1.. {
            self.on_message(msg).await?;
            if taken == BATCH {
                break; // the rest waits for the next round, after this batch's answers
            }
            msg = match poll_fn(|cx| Poll::Ready(poll_message(&mut self.ws, cx))).await {
                Poll::Ready(msg) => msg,
                Poll::Pending => break,
            };
        }
        if let Some(Jobs::Module(pool)) = &mut self.jobs {
            pool.dispatch();
        }
        self.flush().await
    }

    /// Answers the jobs a task module finished, or ends the connection when the module
    /// could not be loaded.
    async fn on_module(&mut self, done: Done) -> Step {
        match done {
            Done::Results(outcomes) => {
                for (id, outcome) in outcomes {
                    self.answer(id, outcome).await?;
                }
                self.flush().await
            }
            Done::Failed(e) => {
                tracing::error!(error = %e, "the task module cannot run here; leaving");
                Break(Err(fail(&mut self.ws, e).await))
            }
        }
    }

    async fn on_message(&mut self, msg: Option<WsResult>) -> Step {
        let frame = match binary(msg, &self.session) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Continue(()),
            // The coordinator closing once the work is over and every job is answered is the
            // normal end, whoever goes first.
            Err(Error::Disconnected { .. }) if self.session.is_finished() => return Break(Ok(())),
            // A text frame is answered with a close frame giving the reason.
            Err(e @ Error::Unexpected(_)) => return Break(Err(fail(&mut self.ws, e).await)),
            Err(e) => return Break(Err(e)),
        };
        match self.session.handle_frame_shared(&frame) {
            Ok(Event::Jobs(jobs)) => {
                for job in jobs {
                    self.take_job(job.id, job.payload).await?;
                }
                Continue(())
            }
            Ok(Event::EndOfWork) => {
                if let Some(Jobs::Stream(_)) = self.jobs {
                    self.jobs = None; // the job stream ends
                }
                Continue(())
            }
            Ok(Event::Ping(n)) => match self.session.pong_frame(n) {
                Ok(frame) => self.feed(frame).await,
                Err(e) => Break(Err(fail(&mut self.ws, e).await)),
            },
            Ok(Event::Cancel(id)) => self.cancel(id).await,
            Ok(Event::Welcomed(_)) => unreachable!("the session rejects a second welcome"),
            Err(e) => {
                tracing::warn!(error = %e, "closing the connection");
                Break(Err(fail(&mut self.ws, e).await))
            }
        }
    }

    async fn take_job(&mut self, id: JobId, payload: Bytes) -> Step {
        let tx = match &mut self.jobs {
            Some(Jobs::Run(runner)) => {
                return match runner.start(id, payload).await {
                    Some((id, outcome)) => self.answer(id, outcome).await,
                    None => Continue(()), // the outcome comes as a reply
                };
            }
            Some(Jobs::Module(pool)) => {
                pool.push(id, payload);
                return Continue(());
            }
            Some(Jobs::Stream(tx)) => tx,
            None => return self.stop_taking_jobs().await,
        };
        match tx.try_send(RawJob { id, payload }) {
            Ok(()) => Continue(()),
            // The session refuses jobs beyond the capacity, which is also the channel's
            // size: this only guards the invariant.
            Err(mpsc::error::TrySendError::Full(_)) => {
                let e = Error::Unexpected("more jobs than the declared capacity".into());
                Break(Err(fail(&mut self.ws, e).await))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.stop_taking_jobs().await,
        }
    }

    /// Nobody takes jobs any more: the worker leaves, and the coordinator re-dispatches what
    /// it does not answer.
    async fn stop_taking_jobs(&mut self) -> Step {
        close(
            &mut self.ws,
            CLOSE_GOING_AWAY,
            "the worker stopped taking jobs",
        )
        .await;
        Break(Ok(()))
    }

    /// Writes every reply of `batch`, then flushes.
    async fn send_replies(&mut self, batch: &mut Vec<Reply>) -> Step {
        self.new_round();
        for reply in batch.drain(..) {
            match reply {
                Reply::Result(id, outcome) => {
                    if let Some(Jobs::Run(runner)) = &mut self.jobs {
                        if !runner.finished(id) {
                            continue; // cancelled, and answered then
                        }
                    }
                    self.answer(id, outcome).await?;
                    self.pump().await?;
                }
                Reply::Emit(value) => match self.session.emit_frame(value) {
                    Ok(frame) => self.feed(frame).await?,
                    Err(e) => tracing::warn!(error = %e, "value not sent"),
                },
            }
        }
        self.flush().await
    }

    /// The coordinator cancelled job `id`: the runner stops it and it is answered now, and
    /// a job that waited for its place starts; a task module's job leaves its pool or has
    /// its run stopped. The jobs of a job stream go on to their end (their answers give the
    /// credit back).
    async fn cancel(&mut self, id: JobId) -> Step {
        let answer = match &mut self.jobs {
            Some(Jobs::Run(runner)) => runner.cancel(id),
            Some(Jobs::Module(pool)) => pool.cancel(id),
            _ => None,
        };
        let Some((id, outcome)) = answer else {
            return Continue(());
        };
        tracing::debug!(%id, "job cancelled by the coordinator");
        self.answer(id, outcome).await?;
        self.pump().await
    }

    /// Tells the runner that a new round of jobs begins.
    fn new_round(&mut self) {
        if let Some(Jobs::Run(runner)) = &mut self.jobs {
            runner.new_round();
        }
    }

    /// Lets the runner start the jobs it kept waiting, answering those that finish at once.
    async fn pump(&mut self) -> Step {
        while let Some(Jobs::Run(runner)) = &mut self.jobs {
            let Some((id, outcome)) = runner.pump().await else {
                break;
            };
            self.answer(id, outcome).await?;
        }
        Continue(())
    }

    /// Adds the outcome of job `id` to the results sent with the next flush; a frame of
    /// results that is full already (a large result) is fed at once.
    async fn answer(&mut self, id: JobId, outcome: Outcome) -> Step {
        match self.session.push_result(id, outcome) {
            Ok(()) => self.unflushed = true,
            Err(e) => tracing::warn!(error = %e, "reply not sent"),
        }
        while let Some(frame) = self.session.next_full_result_frame() {
            self.feed(frame).await?;
        }
        Continue(())
    }

    async fn feed(&mut self, frame: Bytes) -> Step {
        self.unflushed = true;
        match self.ws.feed(Message::Binary(frame)).await {
            Ok(()) => Continue(()),
            Err(e) => Break(Err(Error::connection_from("sending", e))),
        }
    }

    /// Sends the results gathered since the last flush, and everything fed.
    async fn flush(&mut self) -> Step {
        if !std::mem::take(&mut self.unflushed) {
            return Continue(());
        }
        while let Some(frame) = self.session.next_result_frame() {
            self.feed(frame).await?;
        }
        match self.ws.flush().await {
            Ok(()) => Continue(()),
            Err(e) => Break(Err(Error::connection_from("sending", e))),
        }
    }
}

/// The next report of the task module's threads; never, when the jobs go elsewhere.
async fn module_done(jobs: &mut Option<Jobs>) -> Option<Done> {
    match jobs {
        Some(Jobs::Module(pool)) => pool.next().await,
        _ => std::future::pending().await,
    }
}

/// One message as the WebSocket stream yields it.
type WsResult = std::result::Result<Message, tungstenite::Error>;
