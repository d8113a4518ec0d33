//! Helpers shared by the coordinator's integration tests: a coordinator on 127.0.0.1 port 0
//! and a raw WebSocket client that speaks the protocol by hand (to misbehave on purpose).
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    ops::{Deref, DerefMut},
    time::Duration,
};

use bytes::Bytes;
use distchan_coordinator::{Config, Coordinator, JobSender, ResultReceiver};
use distchan_protocol::{
    payload,
    wire::{self, Hello, ToCoordinator, ToWorker, WorkerKind, PROTOCOL_VERSION},
};
use futures_util::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

/// A raw client's WebSocket, with the jobs of a batch not handed out yet: the helpers below
/// read a batch of jobs ([`ToWorker::Jobs`]) as that many [`ToWorker::Job`] messages, so a
/// test sees each job as the coordinator dispatched it, however it was framed.
pub struct Raw<S> {
    ws: WebSocketStream<S>,
    pending: VecDeque<ToWorker>,
}

impl<S> Raw<S> {
    /// Wraps a client WebSocket whose opening handshake is done.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Raw {
            ws,
            pending: VecDeque::new(),
        }
    }

    /// The next message of `frame`, splitting a batch of jobs; later ones wait here.
    fn take(&mut self, frame: &[u8]) -> ToWorker {
        match wire::decode_to_worker(frame).unwrap() {
            ToWorker::Jobs(jobs) => {
                self.pending.extend(jobs.into_iter().map(ToWorker::Job));
                self.pending.pop_front().expect("a batch holds jobs")
            }
            other => other,
        }
    }
}

impl<S> Deref for Raw<S> {
    type Target = WebSocketStream<S>;
    fn deref(&self) -> &Self::Target {
        &self.ws
    }
}

impl<S> DerefMut for Raw<S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ws
    }
}

pub type Ws = Raw<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
pub const LIMIT: Duration = Duration::from_secs(20);

pub async fn start<J: Serialize, R: DeserializeOwned>(
    config: Config,
) -> (Coordinator, JobSender<J>, ResultReceiver<R>) {
    Coordinator::builder()
        .config(config)
        .bind::<J, R>("127.0.0.1:0")
        .await
        .expect("coordinator starts")
}

pub fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: None,
        capacity: 4,
        agent: "raw test client".into(),
        kind: WorkerKind::Other,
        resume: None,
        group: None,
    }
}

/// Opens a WebSocket to `url` offering the current subprotocol, with optional extra headers.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&wire::subprotocol(PROTOCOL_VERSION)).unwrap(),
    );
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket opens");
    Raw::new(ws)
}

pub async fn send_hello(ws: &mut Ws, hello: Hello) {
    let frame = wire::encode_to_coordinator(&ToCoordinator::Hello(hello)).unwrap();
    ws.send(Message::Binary(frame)).await.unwrap();
}

/// Opens a connection and completes the handshake; returns the socket and the worker id.
pub async fn raw_worker(url: &str, hello: Hello) -> (Ws, u64) {
    let mut ws = open(url, &[]).await;
    send_hello(&mut ws, hello).await;
    match next_msg(&mut ws).await {
        Some(ToWorker::Welcome(w)) => (ws, w.worker_id),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The next protocol message, or `None` once the connection is closed.
pub async fn next_msg(ws: &mut Ws) -> Option<ToWorker> {
    if let Some(msg) = ws.pending.pop_front() {
        return Some(msg);
    }
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Binary(b))) => return Some(ws.take(&b)),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the close frame and returns its code and reason.
pub async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Close(Some(f)))) => {
                return Some((f.code.into(), f.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends a result for `id` carrying `value`.
pub async fn answer<T: Serialize>(ws: &mut Ws, id: distchan_protocol::JobId, value: &T) {
    let payload: Bytes = payload::to_msgpack(value).unwrap();
    let frame = wire::encode_to_coordinator(&ToCoordinator::Result(wire::JobResult {
        id,
        outcome: Ok(payload),
    }))
    .unwrap();
    ws.send(Message::Binary(frame)).await.unwrap();
}

/// A worker that upper-cases strings until end-of-work, returning what it received.
pub async fn capitalizer(url: String, options: distchan_worker::Options) -> Vec<String> {
    let connection = distchan_worker::connect::<String, String>(&url, options)
        .await
        .expect("worker connects");
    capitalize_until_end_of_work(connection).await
}

/// Upper-cases every job of a connected worker until end-of-work; returns what it received.
pub async fn capitalize_until_end_of_work(
    (mut jobs, results, client): (
        distchan_worker::JobStream<String>,
        distchan_worker::ResultSink<String>,
        distchan_worker::Client,
    ),
) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(job) = jobs.recv().await {
        seen.push(job.value.clone());
        results
            .send(job.id, Ok(job.value.to_uppercase()))
            .await
            .unwrap();
    }
    drop(results);
    client.done().await.expect("worker ends cleanly");
    seen
}

/// A coordinator served over the in-memory transport (deterministic under paused time).
pub async fn start_mem<J: Serialize, R: DeserializeOwned>(
    config: Config,
) -> (
    Coordinator,
    distchan_coordinator::memory::MemoryConnector,
    JobSender<J>,
    ResultReceiver<R>,
) {
    let (listener, connector) = distchan_coordinator::memory::channel();
    let (coordinator, jobs, results) = Coordinator::builder()
        .config(config)
        .listen_on::<_, J, R>(listener)
        .expect("coordinator starts");
    (coordinator, connector, jobs, results)
}

pub type MemWs = Raw<tokio::io::DuplexStream>;

/// Opens a WebSocket over the in-memory transport, offering the current subprotocol.
pub async fn open_mem(connector: &distchan_coordinator::memory::MemoryConnector) -> MemWs {
    let mut request = "ws://memory/ws".into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&wire::subprotocol(PROTOCOL_VERSION)).unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, connector.connect().unwrap())
        .await
        .expect("websocket opens");
    Raw::new(ws)
}

/// A raw client over the in-memory transport that has completed its handshake.
pub async fn raw_mem_worker(
    connector: &distchan_coordinator::memory::MemoryConnector,
    hello: Hello,
) -> (MemWs, u64) {
    let mut ws = open_mem(connector).await;
    let frame = wire::encode_to_coordinator(&ToCoordinator::Hello(hello)).unwrap();
    ws.send(Message::Binary(frame)).await.unwrap();
    match next_mem(&mut ws).await {
        Some(ToWorker::Welcome(w)) => (ws, w.worker_id),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The next protocol message on an in-memory client, or `None` once closed.
pub async fn next_mem(ws: &mut MemWs) -> Option<ToWorker> {
    if let Some(msg) = ws.pending.pop_front() {
        return Some(msg);
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Some(ws.take(&b)),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// The next job on an in-memory client.
pub async fn next_job(ws: &mut MemWs) -> wire::Job {
    match next_mem(ws).await {
        Some(ToWorker::Job(job)) => job,
        other => panic!("expected a job, got {other:?}"),
    }
}

/// Reads until the close frame of an in-memory client and returns its code and reason.
pub async fn mem_close_of(ws: &mut MemWs) -> Option<(u16, String)> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                return Some((f.code.into(), f.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends a result for `id` on an in-memory client.
pub async fn mem_answer<T: Serialize>(ws: &mut MemWs, id: distchan_protocol::JobId, value: &T) {
    let frame = wire::encode_to_coordinator(&ToCoordinator::Result(wire::JobResult {
        id,
        outcome: Ok(payload::to_msgpack(value).unwrap()),
    }))
    .unwrap();
    ws.send(Message::Binary(frame)).await.unwrap();
}

/// A library capitalizer worker over the in-memory transport.
pub async fn mem_capitalizer(
    connector: distchan_coordinator::memory::MemoryConnector,
    options: distchan_worker::Options,
) -> Vec<String> {
    let io = connector.connect().unwrap();
    let connection =
        distchan_worker::connect_io::<String, String, _>("ws://memory/ws", io, options)
            .await
            .expect("worker connects");
    capitalize_until_end_of_work(connection).await
}

/// The `distchan-coordinator` binary, with the `distchan-worker` binary it starts as local
/// workers checked to be next to it.
pub fn coordinator_bin() -> std::path::PathBuf {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_distchan-coordinator"));
    let worker = exe.with_file_name("distchan-worker");
    assert!(
        worker.is_file(),
        "{} is missing: run the tests for the whole workspace (`cargo test --workspace`)",
        worker.display()
    );
    exe
}

/// Runs `distchan-coordinator pipe --listen 127.0.0.1:0 ARGS` with `input` on its standard
/// input (RUST_LOG=warn) until it exits; returns the exit code, stdout and stderr.
pub fn run_pipe_process(input: &str, args: &[&str]) -> (i32, String, String) {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let mut child = Command::new(coordinator_bin())
        .args(["pipe", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the coordinator starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("the output is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
