//! The worker's end of the wire: connects, says hello, then shuttles frames between the
//! WebSocket and the job and result channels, with every protocol decision taken by the
//! shared [`WorkerSession`].

use std::time::Duration;

use bytes::Bytes;
use distchan_protocol::{
    session::{close_frame_for, truncate_reason, Event, WorkerSession},
    wire::{Outcome, Welcome, CLOSE_GOING_AWAY, CLOSE_NORMAL},
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
    client_async_with_config, connect_async_with_config,
    tungstenite::{
        self,
        client::IntoClientRequest,
        http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue},
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use tokio_util::sync::CancellationToken;

use crate::Options;

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

/// The connection's lifetime: what the coordinator said, and how the connection ended.
///
/// Mirrors the Go client's `Done()`: [`Client::done`] completes once the last result has
/// been flushed and the connection closed.
#[derive(Debug)]
pub struct Client {
    welcome: Welcome,
    drain: CancellationToken,
    task: JoinHandle<Result<()>>,
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
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Connection(format!(
                "the connection task failed: {e}"
            ))),
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
    let (request, subprotocol) = request(url, options)?;
    let connecting = connect_async_with_config(request, Some(ws_config(options)), true);
    let ws = match timeout(options.handshake_timeout, connecting).await {
        Err(_) => return Err(Error::Timeout(format!("connecting to {url}"))),
        Ok(result) => upgrade_result(url, &subprotocol, result)?,
    };
    start(url, ws, options).await
}

/// Like [`connect_raw`], over a connection the caller already opened (a TLS stream, a
/// Unix socket, or an in-memory pipe in tests). `url` still names the endpoint.
pub async fn connect_raw_io<S>(url: &str, io: S, options: &Options) -> Result<RawConnection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (request, subprotocol) = request(url, options)?;
    let connecting = client_async_with_config(request, io, Some(ws_config(options)));
    let ws = match timeout(options.handshake_timeout, connecting).await {
        Err(_) => return Err(Error::Timeout(format!("connecting to {url}"))),
        Ok(result) => upgrade_result(url, &subprotocol, result)?,
    };
    start(url, ws, options).await
}

fn request(
    url: &str,
    options: &Options,
) -> Result<(tungstenite::handshake::client::Request, String)> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::Config(format!("bad coordinator URL {url:?}: {e}")))?;
    let subprotocol = options.session_config().subprotocol();
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&subprotocol).map_err(|e| Error::Config(e.to_string()))?,
    );
    Ok((request, subprotocol))
}

fn ws_config(options: &Options) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(options.max_frame))
        .max_frame_size(Some(options.max_frame))
}

fn upgrade_result<S, R>(
    url: &str,
    subprotocol: &str,
    result: std::result::Result<(WebSocketStream<S>, R), tungstenite::Error>,
) -> Result<WebSocketStream<S>> {
    match result {
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
        )) => Err(Error::Connection(format!(
            "the coordinator at {url} does not speak {subprotocol} (another protocol version?)"
        ))),
        Err(e) => Err(Error::Connection(format!("connecting to {url}: {e}"))),
        Ok((ws, _response)) => Ok(ws),
    }
}

/// Says hello, waits for the welcome and spawns the connection task.
async fn start<S>(url: &str, mut ws: WebSocketStream<S>, options: &Options) -> Result<RawConnection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut session = WorkerSession::new(options.session_config(), options.transforms.clone());
    ws.send(Message::Binary(session.hello_frame()?))
        .await
        .map_err(|e| Error::Connection(e.to_string()))?;
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
    tracing::info!(worker_id = welcome.worker_id, task = ?welcome.task, "connected to {url}");
    let capacity = options.capacity.max(1) as usize;
    let (jobs_tx, jobs_rx) = mpsc::channel(capacity);
    let (replies_tx, replies_rx) = mpsc::channel(capacity);
    let drain = options.drain.clone();
    let task = tokio::spawn(drive(ws, session, jobs_tx, replies_rx, drain.clone()));
    Ok((
        jobs_rx,
        replies_tx,
        Client {
            welcome,
            drain,
            task,
        },
    ))
}

/// Reads frames until one means something to the session.
async fn next_event<S>(ws: &mut WebSocketStream<S>, session: &mut WorkerSession) -> Result<Event>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(frame))) => return session.handle_frame_shared(&frame),
            Some(Ok(Message::Close(frame))) => return Err(closed_by_coordinator(frame)),
            Some(Ok(Message::Text(_))) => {
                return Err(Error::Malformed(
                    "text frames are not part of the protocol".into(),
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(read_error(e)),
            None => {
                return Err(Error::Connection(
                    "the coordinator closed the connection".into(),
                ))
            }
        }
    }
}

fn closed_by_coordinator(frame: Option<CloseFrame>) -> Error {
    match frame {
        Some(f) if !f.reason.is_empty() => Error::Connection(format!(
            "the coordinator closed the connection: {}",
            f.reason
        )),
        _ => Error::Connection("the coordinator closed the connection".into()),
    }
}

fn read_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Capacity(c) => Error::Connection(format!("frame too large: {c}")),
        other => Error::Connection(other.to_string()),
    }
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
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
        while ws.next().await.is_some() {}
    })
    .await;
}

/// Closes the connection with the code and reason `err` calls for, and hands `err` back.
async fn fail<S>(ws: &mut WebSocketStream<S>, err: Error) -> Error
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (code, reason) = close_frame_for(&err);
    close(ws, code, &reason).await;
    err
}

/// Most result frames written per flush.
const BATCH: usize = 256;

async fn drive<S>(
    mut ws: WebSocketStream<S>,
    mut session: WorkerSession,
    jobs_tx: mpsc::Sender<RawJob>,
    mut replies: mpsc::Receiver<Reply>,
    drain: CancellationToken,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut jobs_tx = Some(jobs_tx);
    let mut replies_open = true;
    let mut draining = false;
    let mut batch = Vec::with_capacity(BATCH);
    let idle = session.idle_timeout();
    let mut last_seen = Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    let deadline = tokio::time::sleep(idle.unwrap_or(far));
    tokio::pin!(deadline);

    let outcome: Result<()> = loop {
        if session.is_finished() {
            let reason = if session.end_of_work() {
                "end of work"
            } else {
                "worker left"
            };
            close(&mut ws, CLOSE_NORMAL, reason).await;
            break Ok(());
        }
        tokio::select! {
            biased;
            _ = drain.cancelled(), if !draining => {
                draining = true;
                tracing::info!(outstanding = session.outstanding(), "draining: finishing the jobs held, then leaving");
                match session.drain_frame() {
                    Ok(frame) => if let Err(e) = ws.send(Message::Binary(frame)).await {
                        break Err(Error::Connection(e.to_string()));
                    },
                    Err(e) => break Err(e),
                }
            }
            msg = ws.next() => {
                last_seen = Instant::now();
                let frame = match msg {
                    Some(Ok(Message::Binary(frame))) => frame,
                    Some(Ok(Message::Close(frame))) => break Err(closed_by_coordinator(frame)),
                    Some(Ok(Message::Text(_))) => {
                        let e = Error::Malformed("text frames are not part of the protocol".into());
                        break Err(fail(&mut ws, e).await);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(read_error(e)),
                    None => break Err(Error::Connection("the coordinator closed the connection".into())),
                };
                match session.handle_frame_shared(&frame) {
                    Ok(Event::Job { id, payload }) => {
                        let delivered = jobs_tx.as_ref().map(|tx| tx.try_send(RawJob { id, payload }));
                        match delivered {
                            Some(Ok(())) => {}
                            // The session refuses jobs beyond the capacity, which is also the
                            // channel's size: this only guards the invariant.
                            Some(Err(mpsc::error::TrySendError::Full(_))) => {
                                let e = Error::Unexpected("more jobs than the declared capacity".into());
                                break Err(fail(&mut ws, e).await);
                            }
                            // Nobody takes jobs any more: the worker is leaving, and the
                            // coordinator re-dispatches what it does not answer.
                            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {
                                close(&mut ws, CLOSE_GOING_AWAY, "the worker stopped taking jobs").await;
                                break Ok(());
                            }
                        }
                    }
                    Ok(Event::EndOfWork) => {
                        jobs_tx = None; // the job stream ends
                    }
                    Ok(Event::Welcomed(_)) => unreachable!("the session rejects a second welcome"),
                    Err(e) => {
                        tracing::warn!(error = %e, "closing the connection");
                        break Err(fail(&mut ws, e).await);
                    }
                }
            }
            n = replies.recv_many(&mut batch, BATCH), if replies_open => {
                if n == 0 {
                    replies_open = false;
                    if session.outstanding() > 0 || !session.end_of_work() {
                        let reason = format!("the worker stopped with {} jobs unanswered", session.outstanding());
                        close(&mut ws, CLOSE_GOING_AWAY, &reason).await;
                        break Ok(());
                    }
                    continue;
                }
                let mut failed = None;
                for reply in batch.drain(..) {
                    let frame = match reply {
                        Reply::Result(id, outcome) => session.result_frame(id, outcome),
                        Reply::Emit(value) => session.emit_frame(value),
                    };
                    match frame {
                        Ok(frame) => {
                            if let Err(e) = ws.feed(Message::Binary(frame)).await {
                                failed = Some(Error::Connection(e.to_string()));
                                break;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "reply not sent"),
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
                if let Err(e) = ws.flush().await {
                    break Err(Error::Connection(e.to_string()));
                }
            }
            _ = &mut deadline, if idle.is_some() => {
                let limit = idle.unwrap_or(far);
                if last_seen.elapsed() >= limit {
                    let e = Error::Timeout(format!("the coordinator was silent for {limit:?}"));
                    close(&mut ws, CLOSE_GOING_AWAY, &e.to_string()).await;
                    break Err(e);
                }
                deadline.as_mut().reset(last_seen + limit);
            }
        }
    };
    drop(jobs_tx);
    outcome
}
