//! [`BrowserWorker`]: one connection from a browser to a coordinator, driving the protocol
//! crate's [`WorkerSession`] exactly as the native worker does.
//!
//! The connection is one async loop ([`BrowserWorker::run`]) fed by a single channel of
//! inputs: the WebSocket's events, finished jobs and the page's stop request. Every
//! protocol decision (what a frame means, when the worker may close, what a refusal says)
//! is the session's; this file only moves frames and reports what happened.
//!
//! What the loop does, in order:
//! 1. opens the WebSocket offering the protocol's subprotocol (`distchan.v5`) and, once
//!    open, sends the hello
//!    ([`WorkerKind::Browser`](distchan_protocol::wire::WorkerKind::Browser), the
//!    capacity, the token, the agent);
//! 2. waits for the welcome, at most the handshake timeout; a refusal (the `Refused` frame,
//!    or failing that the close frame's reason) ends the run with state `refused` and the
//!    coordinator's reason;
//! 3. answers each job with the [`JobHandler`] (the page's function, or the built-in task
//!    the welcome names), at most `capacity` at once because the coordinator never sends
//!    more; a built-in task or a task module answers at once, a page's function when its
//!    promise settles. Every input already waiting is handled before anything is sent, so
//!    the results of one turn of the loop go out in one frame (and the status is reported
//!    at most once a turn);
//! 4. after end-of-work (or after [`BrowserWorker::stop`], which drains), once every job
//!    held is answered, closes with 1000 and resolves;
//! 5. when the connection is lost instead (the coordinator restarted or went silent, the
//!    network failed), connects again after a jittered, exponentially growing delay
//!    ([`Backoff`]; state `reconnecting`, with `attempt` and `retryInMs`), keeping its
//!    counts and its compiled task module; a refusal for the token, the protocol version or
//!    the origin is final, as is anything [`should_reconnect`] says retrying cannot change.
//!    The option `reconnect: false` makes every end final. When the coordinator keeps a lost
//!    worker's jobs (its reconnect grace), the jobs held go on meanwhile: the hello asks to
//!    resume the session ([`WorkerSession::reconnect`]), and once resumed they are answered
//!    on the new connection, with the latest results sent again; otherwise they are
//!    dropped (the coordinator gave them to others).
//!
//! Liveness: every `heartbeat_ms` the coordinator sends a protocol ping, which this loop
//! answers itself (a WebSocket ping would be answered by the browser even while the page
//! is frozen), so a frozen tab is declared dead and its jobs move on. The welcome's idle
//! timeout is reported in the status (`idleTimeoutMs`); a dead coordinator is noticed
//! through the WebSocket closing. The handshake and the closing handshake are bounded by
//! timers.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
};

use bytes::Bytes;
use distchan_protocol::{
    module::ModuleSpec,
    session::{close_frame_for, should_reconnect, Backoff, Event, SessionConfig, WorkerSession},
    transform::{Aes256GcmTransform, TransformChain},
    wire::{Outcome, CLOSE_NORMAL, DEFAULT_MAX_FRAME},
    Error, JobId,
};
use futures_channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures_util::{
    future::{select, Either},
    StreamExt,
};
use gloo_timers::future::TimeoutFuture;
use js_sys::{Function, Promise, Reflect};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

use crate::{
    handler::{result_to_js, JobHandler},
    module::{LoadedModule, ModuleRuntime, NoRoom, RoomWaits},
    socket::{Socket, SocketEvent},
};

/// Capacity announced when the page gives none: two jobs in hand keeps one thread busy
/// while the next job is on its way.
pub const DEFAULT_CAPACITY: u32 = 2;
/// Longest wait for the connection and the welcome, when the page gives no other.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 10_000;
/// Longest wait for the coordinator's answer to our close frame.
const CLOSE_WAIT_MS: u32 = 2_000;
/// Most jobs that create a WebAssembly instance of their own (a command-ABI task module)
/// started in one turn of the event loop.
const INSTANCES_PER_TURN: usize = 8;
/// Least time between two progress reports to `onStatus`.
const PROGRESS_INTERVAL_MS: f64 = 250.0;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `new BrowserWorker(url, options)`; every field is optional. */
export interface BrowserWorkerOptions {
  /** Jobs the coordinator may hand this worker at once (default 2). */
  capacity?: number;
  /** Access token, if the coordinator requires one. */
  token?: string;
  /** Name shown on the coordinator's side (default: the browser's user agent). */
  agent?: string;
  /**
   * Workers naming the same group count as one when the coordinator has each job computed
   * by several workers (`--replicas`): give every tab and thread of one browser the same id
   * (the volunteer page keeps a random one in `localStorage`). Default: none.
   */
  group?: string;
  /** AES-256-GCM key (64 hex digits), if the coordinator encrypts payloads. */
  aesKey?: string;
  /** Longest wait for the connection and the welcome, in ms (default 10000). */
  handshakeTimeoutMs?: number;
  /** Largest frame accepted from the coordinator, in bytes (default 64 MiB). */
  maxFrame?: number;
  /** Runs the coordinator's task module, if it names one (see `TaskModuleRuntime`). */
  moduleRuntime?: TaskModuleRuntime;
  /**
   * Connect again, after a growing random delay, when the connection is lost (default
   * true); false ends the run at the first loss.
   */
  reconnect?: boolean;
}

/** The task module a worker runs, as its status shows it. */
export interface BrowserWorkerModule {
  name: string;
  sha256: string;
  /** The first 12 hex digits of the hash. */
  shortHash: string;
  /** "command" or "reactor", once the module is compiled. */
  abi: string | null;
  /** The time a job may take, in ms. */
  timeoutMs: number;
}

/** What `onStatus` receives, `status()` returns and `run()` resolves with. */
export interface BrowserWorkerStatus {
  state: "idle" | "connecting" | "connected" | "draining" | "reconnecting" | "closed" | "refused";
  /** Why the connection ended (or was refused, or was lost while reconnecting). */
  reason: string | null;
  /** Attempts to connect again since the connection was lost (0 while connected). */
  attempt: number;
  /** While reconnecting: the wait before the next attempt, in ms. */
  retryInMs: number | null;
  /** True when the run ended as it should: end of work, or a stop that drained. */
  clean: boolean;
  task: string | null;
  /** The task module the coordinator named, if any. */
  module: BrowserWorkerModule | null;
  workerId: number | null;
  jobsDone: number;
  jobsFailed: number;
  outstanding: number;
  /** True while paused (`pause()`): the coordinator sends no jobs. */
  paused: boolean;
  capacity: number;
  idleTimeoutMs: number | null;
  url: string;
}

/** What `run()` rejects with: an `Error` whose message is the reason. */
export interface BrowserWorkerError extends Error {
  /** The final status. */
  status: BrowserWorkerStatus;
  /** True when the coordinator refused this worker. */
  refused: boolean;
}

/** The second argument of a handler set with `setHandler`. */
export interface BrowserWorkerJobInfo {
  /** The job's id. */
  id: number;
  /** The task the coordinator named, if any. */
  task: string | null;
}

/**
 * Answers one job (a plain value) with its result, or a promise of it; a throw or a
 * rejection is that job's error result.
 */
export type BrowserWorkerHandler = (job: unknown, info: BrowserWorkerJobInfo) => unknown;
"#;

/// How the page configures a worker (`new BrowserWorker(url, options)`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct WorkerOptions {
    capacity: Option<u32>,
    token: Option<String>,
    agent: Option<String>,
    group: Option<String>,
    aes_key: Option<String>,
    handshake_timeout_ms: Option<u32>,
    max_frame: Option<u32>,
    #[serde(with = "serde_wasm_bindgen::preserve")]
    module_runtime: JsValue,
    reconnect: Option<bool>,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started.
    Idle,
    /// Opening the WebSocket, saying hello, waiting for the welcome.
    Connecting,
    /// Welcomed: taking jobs.
    Connected,
    /// Leaving: no new jobs, finishing the ones held.
    Draining,
    /// The connection was lost; `reason` says how, `retry_in_ms` when the next attempt is.
    Reconnecting,
    /// Over; `reason` says why and `clean` whether that was the expected end.
    Closed,
    /// The coordinator refused this worker; `reason` is the coordinator's.
    Refused,
}

/// A snapshot of a connection, as the page sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Where the connection stands.
    pub state: State,
    /// Why it ended or was refused, once it has (while reconnecting: how it was lost).
    pub reason: Option<String>,
    /// Attempts to connect again since the connection was lost (0 while connected).
    pub attempt: u32,
    /// While reconnecting: the wait before the next attempt, in milliseconds.
    pub retry_in_ms: Option<u64>,
    /// True when it ended as it should (end of work, or a stop that drained).
    pub clean: bool,
    /// The task the coordinator named in its welcome.
    pub task: Option<String>,
    /// The task module the coordinator named in its welcome.
    pub module: Option<ModuleStatus>,
    /// The id the coordinator gave this worker.
    pub worker_id: Option<u64>,
    /// Jobs answered (successes and failures).
    pub jobs_done: u64,
    /// Jobs answered with an error.
    pub jobs_failed: u64,
    /// Jobs held and not yet answered.
    pub outstanding: u32,
    /// True while paused ([`BrowserWorker::pause`]).
    pub paused: bool,
    /// The capacity announced in the hello.
    pub capacity: u32,
    /// Three heartbeat intervals, from the welcome (see the module docs).
    pub idle_timeout_ms: Option<u64>,
    /// The coordinator's WebSocket URL.
    pub url: String,
}

/// The task module a worker runs, as its [`Status`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// The module's name (its file name on the coordinator).
    pub name: String,
    /// SHA-256 of the module.
    pub sha256: String,
    /// The first 12 hex digits of the hash.
    pub short_hash: String,
    /// `command` or `reactor`, once compiled.
    pub abi: Option<String>,
    /// The time a job may take, in milliseconds.
    pub timeout_ms: u64,
}

impl ModuleStatus {
    fn new(spec: &ModuleSpec) -> Self {
        ModuleStatus {
            name: spec.name.clone(),
            sha256: spec.sha256.clone(),
            short_hash: spec.short_hash().to_owned(),
            abi: None,
            timeout_ms: spec.limits.timeout_ms,
        }
    }
}

impl Status {
    fn new(url: &str, capacity: u32) -> Self {
        Status {
            state: State::Idle,
            reason: None,
            attempt: 0,
            retry_in_ms: None,
            clean: false,
            task: None,
            module: None,
            worker_id: None,
            jobs_done: 0,
            jobs_failed: 0,
            outstanding: 0,
            paused: false,
            capacity,
            idle_timeout_ms: None,
            url: url.to_owned(),
        }
    }

    /// The status as a plain JavaScript object (`null` for absent fields).
    pub fn to_js(&self) -> JsValue {
        let serializer = serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true);
        self.serialize(&serializer).unwrap_or(JsValue::NULL)
    }

    /// The error `run()` rejects with: a JavaScript `Error` whose message is the reason,
    /// with the status as its `status` property and `refused` telling refusals apart.
    pub fn to_js_error(&self) -> JsValue {
        let reason = self.reason.as_deref().unwrap_or("the connection ended");
        let error = js_sys::Error::new(reason);
        let _ = Reflect::set(&error, &"status".into(), &self.to_js());
        let _ = Reflect::set(
            &error,
            &"refused".into(),
            &JsValue::from_bool(self.state == State::Refused),
        );
        error.into()
    }
}

/// What the connection loop reacts to.
#[derive(Debug)]
enum Input {
    /// The WebSocket of connection number `.0` reported something (inputs of a connection
    /// that ended are ignored).
    Socket(u32, SocketEvent),
    /// A job's handler finished; `job` is its payload when the page wants results.
    Done {
        id: JobId,
        outcome: Outcome,
        job: Option<Bytes>,
    },
    /// The page asked the worker to leave.
    Stop,
    /// The page paused the worker or ended its pause (see `Inner::pause_requested`).
    Pause,
    /// The event loop had a turn: jobs put off for it may start.
    Resume,
    /// The wait for room for a fresh instance is over (see [`RoomWaits`]): the jobs put off
    /// may start.
    TryAgain,
    /// The task module is compiled (or could not be had).
    ModuleLoaded(Result<Rc<LoadedModule>, Error>),
}

/// A browser worker: one WebSocket connection to a coordinator.
///
/// ```js
/// const worker = new BrowserWorker("ws://localhost:8080/ws", { capacity: 2 });
/// worker.onStatus((s) => console.log(s.state, s.reason, s.jobsDone));
/// worker.setHandler((job, { id, task }) => job.toUpperCase()); // optional
/// const status = await worker.run(); // end of work; rejects with the reason otherwise
/// ```
#[wasm_bindgen]
pub struct BrowserWorker {
    inner: Rc<Inner>,
}

struct Inner {
    url: String,
    config: SessionConfig,
    chain: TransformChain,
    handshake_timeout_ms: u32,
    module_runtime: Option<ModuleRuntime>,
    reconnect: bool,
    handler: RefCell<Option<Function>>,
    on_status: RefCell<Option<Function>>,
    on_result: RefCell<Option<Function>>,
    status: RefCell<Status>,
    control: RefCell<Option<UnboundedSender<Input>>>,
    stop_requested: Cell<bool>,
    /// Whether the page wants the worker paused (see [`BrowserWorker::pause`]).
    pause_requested: Cell<bool>,
    started: Cell<bool>,
    last_progress: Cell<f64>,
}

#[wasm_bindgen]
impl BrowserWorker {
    /// A worker for the coordinator at `url` (`ws://host:port/ws`); `options`, if given
    /// (not `undefined` or `null`), is a `BrowserWorkerOptions` object. Nothing connects
    /// before `run()`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        url: &str,
        #[wasm_bindgen(unchecked_optional_param_type = "BrowserWorkerOptions | null")]
        options: JsValue,
    ) -> Result<BrowserWorker, JsError> {
        crate::install_panic_hook();
        let options: WorkerOptions = if options.is_undefined() || options.is_null() {
            WorkerOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options)
                .map_err(|e| JsError::new(&format!("invalid BrowserWorker options: {e}")))?
        };
        let capacity = options.capacity.unwrap_or(DEFAULT_CAPACITY);
        if capacity == 0 {
            return Err(JsError::new("capacity must be at least 1"));
        }
        let agent = options.agent.unwrap_or_else(default_agent);
        let mut config = SessionConfig::browser(capacity, agent);
        config.token = options.token.filter(|t| !t.is_empty());
        config.group = options.group.filter(|g| !g.is_empty());
        config.max_frame = options.max_frame.map_or(DEFAULT_MAX_FRAME, |n| n as usize);
        let mut chain = TransformChain::new();
        if let Some(key) = options.aes_key.filter(|k| !k.is_empty()) {
            chain.push(
                Aes256GcmTransform::from_hex(&key).map_err(|e| JsError::new(&e.to_string()))?,
            );
        }
        Ok(BrowserWorker {
            inner: Rc::new(Inner {
                url: url.to_owned(),
                config,
                chain,
                handshake_timeout_ms: options
                    .handshake_timeout_ms
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS),
                module_runtime: (!options.module_runtime.is_undefined()
                    && !options.module_runtime.is_null())
                .then(|| options.module_runtime.unchecked_into()),
                reconnect: options.reconnect.unwrap_or(true),
                handler: RefCell::new(None),
                on_status: RefCell::new(None),
                on_result: RefCell::new(None),
                status: RefCell::new(Status::new(url, capacity)),
                control: RefCell::new(None),
                stop_requested: Cell::new(false),
                pause_requested: Cell::new(false),
                started: Cell::new(false),
                last_progress: Cell::new(0.0),
            }),
        })
    }

    /// Calls `callback(status)` on every change of state and, at most four times a second,
    /// as jobs complete. `null` removes it.
    #[wasm_bindgen(js_name = onStatus)]
    pub fn on_status(
        &self,
        #[wasm_bindgen(
            unchecked_optional_param_type = "((status: BrowserWorkerStatus) => void) | null"
        )]
        callback: Option<Function>,
    ) {
        *self.inner.on_status.borrow_mut() = callback;
    }

    /// Calls `callback(result, job, id)` with every successful result as a plain value (a
    /// Mandelbrot tile's `rgba` is a `Uint8Array`). `null` removes it.
    #[wasm_bindgen(js_name = onResult)]
    pub fn on_result(
        &self,
        #[wasm_bindgen(
            unchecked_optional_param_type = "((result: unknown, job: unknown, id: number) => void) | null"
        )]
        callback: Option<Function>,
    ) {
        *self.inner.on_result.borrow_mut() = callback;
    }

    /// Answers jobs with `handler(job, {id, task})` instead of the built-in task: it returns
    /// the result or a promise of it; a throw or a rejection becomes that job's error
    /// result. Must be set before `run()`; `null` goes back to the built-in tasks.
    #[wasm_bindgen(js_name = setHandler)]
    pub fn set_handler(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "BrowserWorkerHandler | null")]
        handler: Option<Function>,
    ) {
        *self.inner.handler.borrow_mut() = handler;
    }

    /// The current status (see `BrowserWorkerStatus`).
    #[wasm_bindgen(js_name = status, unchecked_return_type = "BrowserWorkerStatus")]
    pub fn status_js(&self) -> JsValue {
        self.inner.status.borrow().to_js()
    }

    /// Connects and works until the end, connecting again when the connection is lost
    /// (unless the option `reconnect` is false). Resolves with the final status after
    /// end-of-work or a stop; rejects otherwise with a `BrowserWorkerError`: an `Error` whose message is
    /// the reason (its `refused` property is true for a refusal, and `status` holds the
    /// final status). A worker runs once.
    #[wasm_bindgen(unchecked_return_type = "Promise<BrowserWorkerStatus>")]
    pub fn run(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            match drive(inner).await {
                Ok(status) => Ok(status.to_js()),
                Err(status) => Err(status.to_js_error()),
            }
        })
    }

    /// Pauses: the coordinator sends no more jobs until [`resume`](Self::resume); the jobs
    /// running finish and are answered, and those held but not started go back to the
    /// coordinator, for other workers. The connection stays open (the coordinator's
    /// dashboard shows the worker paused); a pause asked for before the welcome, or kept
    /// through a reconnection, is told to the coordinator once welcomed.
    pub fn pause(&self) {
        self.set_paused(true);
    }

    /// Ends a pause: the coordinator gives this worker jobs again.
    pub fn resume(&self) {
        self.set_paused(false);
    }

    /// Leaves cleanly: tells the coordinator to send no more jobs, finishes the jobs held,
    /// then closes; `run()` then resolves. Before the welcome it just closes.
    pub fn stop(&self) {
        self.inner.stop_requested.set(true);
        if let Some(control) = self.inner.control.borrow().as_ref() {
            let _ = control.unbounded_send(Input::Stop);
        }
    }
}

impl BrowserWorker {
    fn set_paused(&self, paused: bool) {
        self.inner.pause_requested.set(paused);
        if let Some(control) = self.inner.control.borrow().as_ref() {
            let _ = control.unbounded_send(Input::Pause);
        }
    }

    /// The Rust face of [`run`](Self::run): the final status, `Err` when the run did not
    /// end cleanly (refused, connection lost, ...).
    pub async fn run_to_end(&self) -> Result<Status, Status> {
        drive(self.inner.clone()).await
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }
}

impl Inner {
    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.borrow_mut());
    }

    /// Sends the current status to the page's callback (no borrow is held during the call,
    /// so the callback may call back into the worker).
    fn report(&self) {
        let callback = self.on_status.borrow().clone();
        if let Some(callback) = callback {
            let status = self.status.borrow().to_js();
            if let Err(e) = callback.call1(&JsValue::NULL, &status) {
                web_sys::console::warn_2(&"distchan: the onStatus callback threw".into(), &e);
            }
        }
        self.last_progress.set(js_sys::Date::now());
    }

    fn report_progress(&self) {
        if js_sys::Date::now() - self.last_progress.get() >= PROGRESS_INTERVAL_MS {
            self.report();
        }
    }
}

fn default_agent() -> String {
    let ua = Reflect::get(&js_sys::global(), &"navigator".into())
        .ok()
        .filter(|n| n.is_object())
        .and_then(|n| Reflect::get(&n, &"userAgent".into()).ok())
        .and_then(|ua| ua.as_string());
    let name = format!("distchan-worker-wasm/{}", env!("CARGO_PKG_VERSION"));
    match ua {
        Some(ua) => format!("{name} ({ua})"),
        None => name,
    }
}

/// How a connection ended.
#[derive(Debug)]
struct Ending {
    state: State,
    clean: bool,
    /// Whether connecting again may help.
    retry: bool,
    reason: String,
}

impl Ending {
    /// The worker left when asked to, holding no job.
    fn left() -> Self {
        Ending {
            state: State::Closed,
            clean: true,
            retry: false,
            reason: "worker left".into(),
        }
    }
}

impl From<Error> for Ending {
    /// A run ended by `err`: refused with the coordinator's reason, or closed with the
    /// error's message.
    fn from(err: Error) -> Self {
        match err {
            Error::Refused(refusal) => Ending {
                state: State::Refused,
                clean: false,
                retry: should_reconnect(&Error::Refused(refusal.clone())),
                reason: refusal.to_string(),
            },
            other => Ending {
                state: State::Closed,
                clean: false,
                retry: should_reconnect(&other),
                reason: other.to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The WebSocket is opening.
    Connecting,
    /// The hello is sent; the welcome is awaited.
    AwaitingWelcome,
    /// Welcomed.
    Running,
    /// Our close frame is sent; the coordinator's answer (or the timer) ends the run.
    Closing,
}

/// What outlives a connection, for the next one to resume: the session, the handler, the
/// jobs held that have not started, and the inputs that came while no connection was up
/// (jobs that finished meanwhile).
struct Kept {
    session: WorkerSession,
    handler: Option<JobHandler>,
    /// Jobs received while the task module is being fetched and compiled.
    held: Vec<(JobId, Bytes)>,
    /// Jobs put off to a later turn of the event loop (see [`INSTANCES_PER_TURN`]).
    put_off: std::collections::VecDeque<(JobId, Bytes)>,
    /// Inputs for a welcomed connection that came before it was.
    backlog: Vec<Input>,
}

impl Kept {
    fn new(inner: &Inner) -> Self {
        Kept {
            session: WorkerSession::new(inner.config.clone(), inner.chain.clone()),
            handler: None,
            held: Vec::new(),
            put_off: Default::default(),
            backlog: Vec::new(),
        }
    }

    /// The connection was lost: the session is readied for its resume.
    fn lost(mut self) -> Self {
        self.session.reconnect();
        self
    }
}

/// The state of one run of the loop.
struct Run {
    inner: Rc<Inner>,
    /// The connection's number, in the inputs of its socket.
    conn: u32,
    socket: Socket,
    tx: UnboundedSender<Input>,
    phase: Phase,
    kept: Kept,
    /// The jobs that created an instance in this turn (see [`INSTANCES_PER_TURN`]).
    instances_this_turn: usize,
    /// The waits for room for a fresh instance, and whether one is under way.
    room: RoomWaits,
    waiting_for_room: bool,
    draining: bool,
    deadline: Option<f64>,
    closing: Option<Ending>,
    ended: Option<Ending>,
    saw_error: bool,
}

/// Runs the worker from start to end: connections, and the waits between them (see the
/// module docs).
async fn drive(inner: Rc<Inner>) -> Result<Status, Status> {
    if inner.started.replace(true) {
        let mut status = inner.status.borrow().clone();
        status.reason = Some("this BrowserWorker has already run; create a new one".into());
        return Err(status);
    }
    let mut backoff = Backoff::default();
    // One channel for the worker's life: jobs still running when a connection is lost
    // report on it to the next connection.
    let (tx, mut rx) = mpsc::unbounded();
    *inner.control.borrow_mut() = Some(tx.clone());
    let mut kept = Kept::new(&inner);
    let mut conn = 0;
    let ending = loop {
        conn += 1;
        let (ending, welcomed, left) = connect_once(&inner, conn, &tx, &mut rx, kept).await;
        kept = left.lost();
        if welcomed {
            backoff.reset();
        }
        if !ending.retry || !inner.reconnect || inner.stop_requested.get() {
            break ending;
        }
        let delay = backoff.next_delay((js_sys::Math::random() * u64::MAX as f64) as u64);
        let outstanding = kept.session.outstanding() as u32;
        inner.update(|s| {
            s.state = State::Reconnecting;
            s.reason = Some(ending.reason.clone());
            s.attempt = backoff.attempts();
            s.retry_in_ms = Some(delay.as_millis() as u64);
            s.outstanding = outstanding;
        });
        inner.report();
        // A stop while waiting ends the run cleanly: the coordinator gives the jobs held
        // to others. Jobs finishing meanwhile wait for the next connection.
        let deadline = js_sys::Date::now() + delay.as_secs_f64() * 1000.0;
        let stopped = loop {
            if inner.stop_requested.get() {
                break true;
            }
            match next_input(&mut rx, Some(deadline)).await {
                None => break false,
                Some(Input::Stop) => break true,
                Some(Input::Socket(..)) => {} // from the connection that ended
                Some(other) => kept.backlog.push(other),
            }
        };
        if stopped {
            break Ending::left();
        }
        inner.update(|s| s.retry_in_ms = None);
    };
    inner.control.borrow_mut().take();
    inner.update(|s| {
        s.state = ending.state;
        s.clean = ending.clean;
        s.reason = Some(ending.reason);
        s.retry_in_ms = None;
    });
    inner.report();
    let status = inner.status.borrow().clone();
    if status.clean {
        Ok(status)
    } else {
        Err(status)
    }
}

/// Runs connection number `conn` from opening to its end, with what the last one left
/// (`kept`); returns how it ended, whether the coordinator welcomed this worker on it, and
/// what it leaves for the next one.
async fn connect_once(
    inner: &Rc<Inner>,
    conn: u32,
    tx: &UnboundedSender<Input>,
    rx: &mut UnboundedReceiver<Input>,
    kept: Kept,
) -> (Ending, bool, Kept) {
    inner.update(|s| s.state = State::Connecting);
    inner.report();

    let events = tx.clone();
    let subprotocol = kept.session.config().subprotocol();
    let opened = Socket::open(&inner.url, &subprotocol, move |event| {
        let _ = events.unbounded_send(Input::Socket(conn, event));
    });
    match opened {
        // A URL the browser refuses: trying again cannot help.
        Err(reason) => (
            Ending {
                state: State::Closed,
                clean: false,
                retry: false,
                reason,
            },
            false,
            kept,
        ),
        Ok(socket) => {
            if inner.stop_requested.get() {
                let _ = tx.unbounded_send(Input::Stop);
            }
            let mut run = Run {
                deadline: Some(js_sys::Date::now() + f64::from(inner.handshake_timeout_ms)),
                inner: inner.clone(),
                conn,
                socket,
                tx: tx.clone(),
                phase: Phase::Connecting,
                kept,
                instances_this_turn: 0,
                room: RoomWaits::default(),
                waiting_for_room: false,
                draining: false,
                closing: None,
                ended: None,
                saw_error: false,
            };
            let ending = loop {
                match next_input(rx, run.deadline).await {
                    Some(input) => run.on_input(input),
                    None => run.on_timeout(),
                }
                // Every input already waiting, then what they produced goes out at once.
                while run.ended.is_none() {
                    match rx.try_recv() {
                        Ok(input) => run.on_input(input),
                        Err(_) => break,
                    }
                }
                run.end_of_turn();
                if let Some(ending) = run.ended.take() {
                    break ending;
                }
            };
            let welcomed = run.kept.session.welcome().is_some();
            // Dropping the socket detaches and frees its handlers.
            (ending, welcomed, run.kept)
        }
    }
}

/// The next input, or `None` when `deadline` (a `Date.now()` time) passes first.
async fn next_input(rx: &mut UnboundedReceiver<Input>, deadline: Option<f64>) -> Option<Input> {
    match deadline {
        // The loop holds a sender, so the channel never ends.
        None => rx.next().await,
        Some(at) => {
            let wait = (at - js_sys::Date::now()).clamp(0.0, f64::from(u32::MAX)) as u32;
            match select(rx.next(), TimeoutFuture::new(wait)).await {
                Either::Left((input, _)) => input,
                Either::Right(_) => None,
            }
        }
    }
}

impl Run {
    fn on_input(&mut self, input: Input) {
        match input {
            Input::Socket(conn, event) if conn == self.conn => self.on_socket(event),
            Input::Socket(..) => {} // from a connection that ended
            Input::Stop => self.stop(),
            Input::Pause => self.follow_pause(),
            // Until the welcome, the rest waits (a job that finished before a resume).
            other if self.phase != Phase::Running => self.kept.backlog.push(other),
            Input::Done { id, outcome, job } => self.on_done(id, outcome, job),
            Input::Resume => self.resume(),
            Input::TryAgain => {
                self.waiting_for_room = false;
                self.resume();
            }
            Input::ModuleLoaded(loaded) => self.on_module(loaded),
        }
        if self.phase == Phase::Running && !self.kept.backlog.is_empty() {
            for input in std::mem::take(&mut self.kept.backlog) {
                self.on_input(input);
            }
        }
        // A pause asked for before the welcome (or kept through a reconnection).
        if self.phase == Phase::Running
            && self.inner.pause_requested.get() != self.kept.session.paused()
        {
            self.follow_pause();
        }
    }

    fn on_timeout(&mut self) {
        match self.phase {
            Phase::Connecting | Phase::AwaitingWelcome => {
                let secs = f64::from(self.inner.handshake_timeout_ms) / 1000.0;
                let what = if self.phase == Phase::Connecting {
                    "the connection did not open"
                } else {
                    "no welcome from the coordinator"
                };
                self.fail(Error::Timeout(format!("{what} within {secs} s")));
            }
            Phase::Closing => self.ended = self.closing.take(),
            Phase::Running => self.deadline = None,
        }
    }

    fn on_socket(&mut self, event: SocketEvent) {
        match event {
            SocketEvent::Open => self.on_open(),
            SocketEvent::Binary(frame) => self.on_frame(&frame.into()),
            SocketEvent::Text => {
                if self.phase != Phase::Closing {
                    self.fail(Error::Unexpected(
                        "a text frame (the protocol uses binary frames only)".into(),
                    ));
                }
            }
            SocketEvent::Error => self.saw_error = true,
            SocketEvent::Closed {
                code,
                reason,
                clean,
            } => self.on_closed(code, reason, clean),
        }
    }

    fn on_open(&mut self) {
        if self.phase != Phase::Connecting {
            return;
        }
        if self.inner.stop_requested.get() {
            self.leave("worker left", true, None);
            return;
        }
        match self.kept.session.hello_frame() {
            Ok(hello) => match self.socket.send(&hello) {
                Ok(()) => self.phase = Phase::AwaitingWelcome,
                Err(e) => self.fail(Error::connection(e)),
            },
            Err(e) => self.fail(e),
        }
    }

    fn on_frame(&mut self, frame: &Bytes) {
        if !matches!(self.phase, Phase::AwaitingWelcome | Phase::Running) {
            return; // after our close frame, or before the hello: nothing counts
        }
        match self.kept.session.handle_frame_shared(frame) {
            Ok(Event::Welcomed(welcome)) => {
                self.phase = Phase::Running;
                self.deadline = None;
                let idle = self
                    .kept
                    .session
                    .idle_timeout()
                    .map(|d| d.as_millis() as u64);
                self.inner.update(|s| {
                    s.state = State::Connected;
                    s.attempt = 0;
                    s.reason = None;
                    s.task = welcome.task.clone();
                    s.worker_id = Some(welcome.worker_id);
                    s.idle_timeout_ms = idle;
                });
                self.inner.report();
                if !welcome.resumed {
                    // The jobs held are not this worker's any more (the session forgot them).
                    self.kept.held.clear();
                    self.kept.put_off.clear();
                    self.kept.handler = None;
                }
                if self.kept.handler.is_some() {
                    // Resumed: the jobs held go on with the same handler.
                    if self.inner.stop_requested.get() {
                        self.stop();
                    }
                    return;
                }
                let js = self.inner.handler.borrow().clone();
                if let (None, Some(spec)) = (&js, welcome.module) {
                    self.load_module(spec);
                    if self.inner.stop_requested.get() {
                        self.stop();
                    }
                    return;
                }
                match JobHandler::choose(js, welcome.task.as_deref()) {
                    Ok(handler) => self.kept.handler = Some(handler),
                    Err(reason) => {
                        // Like the native worker: say we are leaving, then go, with the reason.
                        if let Ok(drain) = self.kept.session.drain_frame() {
                            let _ = self.socket.send(&drain);
                        }
                        self.leave("worker left", false, Some(reason));
                        return;
                    }
                }
                if self.inner.stop_requested.get() {
                    self.stop();
                }
            }
            Ok(Event::Jobs(jobs)) => {
                for job in jobs {
                    self.start_job(job.id, job.payload);
                }
            }
            Ok(Event::EndOfWork) => self.finish_if_done(),
            // Answered from this event loop, so a frozen page is seen as silent.
            Ok(Event::Ping(n)) => {
                let pong = self.kept.session.pong_frame(n);
                self.send(pong);
            }
            // A job in a tab runs to its end (a module's or a handler's run cannot be
            // interrupted from here); its answer, dropped by the coordinator, gives the
            // credit back.
            Ok(Event::Cancel(_)) => {}
            Err(e) => self.fail(e),
        }
    }

    fn on_closed(&mut self, code: u16, reason: String, clean: bool) {
        if self.phase == Phase::Closing {
            self.ended = self.closing.take();
            return;
        }
        if self.phase == Phase::Connecting {
            // Nothing answered: the coordinator may be restarting.
            self.ended = Some(Ending {
                state: State::Closed,
                clean: false,
                retry: true,
                reason: format!(
                    "could not connect to {} (is the coordinator running, and does it speak {}?)",
                    self.inner.url,
                    self.kept.session.config().subprotocol()
                ),
            });
            return;
        }
        // A refusal whose Refused frame was lost still says why in the close frame; a
        // coordinator that closes once the session is over anyway only went first.
        self.ended = Some(
            match self
                .kept
                .session
                .closed_by_peer(code, &reason, clean || !self.saw_error)
            {
                Ok(()) => Ending {
                    state: State::Closed,
                    clean: true,
                    retry: false,
                    reason: self.kept.session.finish_reason().to_owned(),
                },
                Err(err) => Ending::from(err),
            },
        );
    }

    /// Fetches and compiles the task module `spec` names; jobs wait meanwhile.
    fn load_module(&mut self, spec: ModuleSpec) {
        self.inner
            .update(|s| s.module = Some(ModuleStatus::new(&spec)));
        self.inner.report();
        let Some(runtime) = self.inner.module_runtime.clone() else {
            // Like an unknown task: say we are leaving, then go, with the reason.
            if let Ok(drain) = self.kept.session.drain_frame() {
                let _ = self.socket.send(&drain);
            }
            let reason =
                "the coordinator runs a task module and this page gave no moduleRuntime to run it";
            self.leave("worker left", false, Some(reason.to_owned()));
            return;
        };
        let tx = self.tx.clone();
        let url = self.inner.url.clone();
        let token = self.kept.session.config().token.clone();
        spawn_local(async move {
            let loaded = LoadedModule::load(spec, &url, token.as_deref(), runtime).await;
            let _ = tx.unbounded_send(Input::ModuleLoaded(loaded));
        });
    }

    /// The task module is ready: the jobs that waited for it start.
    fn on_module(&mut self, loaded: Result<Rc<LoadedModule>, Error>) {
        if self.phase != Phase::Running {
            return;
        }
        match loaded {
            Ok(module) => {
                let abi = module.abi().to_string();
                self.inner.update(|s| {
                    if let Some(m) = s.module.as_mut() {
                        m.abi = Some(abi);
                    }
                });
                self.inner.report();
                self.kept.handler = Some(JobHandler::Module(module));
                for (id, payload) in std::mem::take(&mut self.kept.held) {
                    self.start_job(id, payload);
                }
            }
            Err(e) => self.fail(e),
        }
    }

    fn start_job(&mut self, id: JobId, payload: Bytes) {
        let Some(handler) = self.kept.handler.clone() else {
            // Jobs come only after the welcome; without a handler yet, the task module is
            // still being fetched: the job waits for it.
            self.kept.held.push((id, payload));
            return;
        };
        if handler.instance_per_job() {
            // A fresh WebAssembly instance per job: the browser frees the memory of those
            // that ran only once its event loop turns, so a batch of them in one turn could
            // run out of it. The rest wait for the next turn.
            if self.instances_this_turn >= INSTANCES_PER_TURN || !self.kept.put_off.is_empty() {
                if self.kept.put_off.is_empty() {
                    let tx = self.tx.clone();
                    spawn_local(async move {
                        TimeoutFuture::new(0).await;
                        let _ = tx.unbounded_send(Input::Resume);
                    });
                }
                self.kept.put_off.push_back((id, payload));
                return;
            }
            self.instances_this_turn += 1;
        }
        let keep_job = self.inner.on_result.borrow().is_some();
        match handler.handle_now(&payload) {
            Some(Ok(outcome)) => {
                if handler.instance_per_job() {
                    self.room.reset();
                }
                self.on_done(id, outcome, keep_job.then_some(payload));
                return;
            }
            Some(Err(NoRoom)) => return self.wait_for_room(id, payload),
            None => {}
        }
        let tx = self.tx.clone();
        spawn_local(async move {
            let outcome = handler.handle(id, &payload).await;
            let job = keep_job.then_some(payload);
            let _ = tx.unbounded_send(Input::Done { id, outcome, job });
        });
    }

    fn on_done(&mut self, id: JobId, outcome: Outcome, job: Option<Bytes>) {
        if self.phase != Phase::Running || !self.kept.session.holds(id) {
            // The connection is going away, or the job is not this worker's any more (a
            // session the coordinator no longer knew): it is given to others.
            return;
        }
        let ok = job
            .is_some()
            .then(|| outcome.as_ref().ok().cloned())
            .flatten();
        let failed = outcome.is_err();
        if let Err(e) = self.kept.session.push_result(id, outcome) {
            web_sys::console::warn_1(&format!("distchan: result not sent: {e}").into());
        }
        self.inner.update(|s| {
            s.jobs_done += 1;
            s.jobs_failed += u64::from(failed);
        });
        if let (Some(result), Some(job)) = (ok, job) {
            self.show_result(id, &result, &job);
        }
    }

    /// Tells the coordinator about a pause the page asked for, or its end, once welcomed:
    /// pausing gives back the jobs held that have not started.
    fn follow_pause(&mut self) {
        let wanted = self.inner.pause_requested.get();
        if self.phase != Phase::Running || wanted == self.kept.session.paused() {
            return;
        }
        let frame = if wanted {
            let mut released: Vec<JobId> = self.kept.held.drain(..).map(|(id, _)| id).collect();
            released.extend(self.kept.put_off.drain(..).map(|(id, _)| id));
            self.kept.session.pause_frame(&released)
        } else {
            self.kept.session.unpause_frame()
        };
        if !self.send(frame) {
            return;
        }
        self.inner.update(|s| s.paused = wanted);
        self.inner.report();
        self.finish_if_done();
    }

    /// Job `id` found no room for its instance: it goes first among the jobs put off, and
    /// they all wait (or, past [`RoomWaits::PATIENCE_MS`], it fails).
    fn wait_for_room(&mut self, id: JobId, payload: Bytes) {
        let Some(ms) = self.room.next_wait() else {
            return self.on_done(id, Err(RoomWaits::gave_up()), None);
        };
        self.kept.put_off.push_front((id, payload));
        self.waiting_for_room = true;
        let tx = self.tx.clone();
        spawn_local(async move {
            TimeoutFuture::new(ms).await;
            let _ = tx.unbounded_send(Input::TryAgain);
        });
    }

    /// A new turn of the event loop: the jobs put off start (as many as one turn takes),
    /// unless they wait for room for their instances.
    fn resume(&mut self) {
        if self.waiting_for_room {
            return;
        }
        self.instances_this_turn = 0;
        let waiting = std::mem::take(&mut self.kept.put_off);
        for (id, payload) in waiting {
            self.start_job(id, payload);
        }
    }

    /// Sends the results of this turn in one frame, reports progress, and closes if that
    /// was the last job.
    fn end_of_turn(&mut self) {
        self.instances_this_turn = 0;
        if self.phase != Phase::Running {
            return;
        }
        let mut answered = false;
        while let Some(frame) = self.kept.session.next_result_frame() {
            answered = true;
            if let Err(e) = self.socket.send(&frame) {
                self.fail(Error::connection(e));
                return;
            }
        }
        let outstanding = self.kept.session.outstanding() as u32;
        self.inner.update(|s| s.outstanding = outstanding);
        if answered {
            self.inner.report_progress();
            self.finish_if_done();
        }
    }

    fn show_result(&self, id: JobId, result: &Bytes, job: &Bytes) {
        let callback = self.inner.on_result.borrow().clone();
        let Some(callback) = callback else { return };
        let (Ok(result), Ok(job)) = (result_to_js(result), result_to_js(job)) else {
            return;
        };
        let id = JsValue::from_f64(id.0 as f64);
        if let Err(e) = callback.call3(&JsValue::NULL, &result, &job, &id) {
            web_sys::console::warn_2(&"distchan: the onResult callback threw".into(), &e);
        }
    }

    /// Sends `frame`, or ends the connection when it could not be made or sent: returns
    /// whether it went.
    fn send(&mut self, frame: Result<Bytes, Error>) -> bool {
        let sent = frame.and_then(|frame| self.socket.send(&frame).map_err(Error::connection));
        match sent {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn stop(&mut self) {
        self.inner.stop_requested.set(true);
        match self.phase {
            Phase::Connecting | Phase::AwaitingWelcome => self.leave("worker left", true, None),
            Phase::Running if !self.draining => {
                self.draining = true;
                let drain = self.kept.session.drain_frame();
                if !self.send(drain) {
                    return;
                }
                self.inner.update(|s| s.state = State::Draining);
                self.inner.report();
                self.finish_if_done();
            }
            Phase::Running | Phase::Closing => {}
        }
    }

    /// Closes normally once the session says every job held is answered after end-of-work
    /// or a drain.
    fn finish_if_done(&mut self) {
        if self.phase == Phase::Running && self.kept.session.is_finished() {
            self.leave(self.kept.session.finish_reason(), true, None);
        }
    }

    /// Closes with 1000 and `reason`; the run ends with `shown` (or `reason`) once the
    /// coordinator answers the close.
    fn leave(&mut self, reason: &str, clean: bool, shown: Option<String>) {
        self.socket.close(CLOSE_NORMAL, reason);
        self.begin_closing(Ending {
            state: State::Closed,
            clean,
            retry: false,
            reason: shown.unwrap_or_else(|| reason.to_owned()),
        });
    }

    /// Ends the connection because of `err`, with the close code and reason the protocol
    /// crate gives for it.
    fn fail(&mut self, err: Error) {
        let (code, reason) = close_frame_for(&err);
        self.socket.close(code, &reason);
        self.begin_closing(Ending::from(err));
    }

    fn begin_closing(&mut self, ending: Ending) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.deadline = Some(js_sys::Date::now() + f64::from(CLOSE_WAIT_MS));
        self.closing = Some(ending);
    }
}
