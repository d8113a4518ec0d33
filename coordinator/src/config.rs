//! Coordinator settings, with defaults that work without any configuration file.

use std::{path::PathBuf, time::Duration};

use distchan_protocol::{module::Limits, wire::DEFAULT_MAX_FRAME};

use crate::TlsConfig;

/// Every setting of a coordinator. Start from [`Config::default`] and change what you need.
///
/// ```
/// use std::time::Duration;
/// use distchan_coordinator::Config;
///
/// let config = Config {
///     token: Some("s3cret".into()),
///     heartbeat: Duration::from_secs(2),
///     ..Config::default()
/// };
/// assert_eq!(config.ws_path, "/ws");
/// ```
///
/// Its `Debug` output never shows the access token or the TLS key.
#[derive(Clone)]
pub struct Config {
    /// Access token every worker must present in its hello; `None` accepts any worker.
    pub token: Option<String>,
    /// Interval of WebSocket pings; a worker silent for two intervals is declared dead.
    /// `Duration::ZERO` disables heartbeats.
    pub heartbeat: Duration,
    /// Longest a worker may hold one job before it is handed to another worker.
    /// `None` means no lease (a job is re-dispatched only when its worker is lost).
    pub lease: Option<Duration>,
    /// How many times a job may be lost with its worker (disconnect, missed heartbeats,
    /// overrun lease) and dispatched again before it is reported as failed.
    pub max_retries: u32,
    /// How long the jobs of a worker whose connection was lost (no close frame: a network
    /// failure, missed heartbeats) wait for it to come back before they go to others.
    /// A worker that reconnects within it with the session its welcome gave (the native
    /// worker and the browser worker do) keeps the jobs it still holds, and its results
    /// count, so a network blip costs no recomputation. `Duration::ZERO` (the default)
    /// gives them to others at once: a worker that crashed costs no wait.
    pub reconnect_grace: Duration,
    /// How many times a job whose handler returned an error is retried before the error
    /// is reported. `0` (the default) reports the first error.
    pub handler_retries: u32,
    /// Deliver results in the order the jobs were sent instead of as they complete.
    pub ordered: bool,
    /// Largest WebSocket message accepted from a worker, in bytes.
    pub max_frame: usize,
    /// Size of each worker's WebSocket read buffer, which every connection holds for its
    /// whole life: small keeps idle workers cheap. Busy connections read their socket in
    /// larger pieces through buffers lent from a shared pool, so large payloads do not need
    /// it raised.
    pub read_buffer_size: usize,
    /// How long a new connection may take to send its hello.
    pub handshake_timeout: Duration,
    /// Largest number of connected workers; more are refused with a reason.
    pub max_workers: usize,
    /// Largest credit window granted to one worker, whatever it declares.
    pub max_capacity: u32,
    /// Size each worker's credit window from its measured speed: it starts at
    /// [`start_window`](Config::start_window) jobs and doubles while that makes the worker
    /// faster, up to the capacity it declared, so a fast worker gets a deep window and a
    /// slow one (a tab computing heavy jobs) does not hoard jobs others could run. Off, every
    /// worker gets the capacity it declared at once.
    pub adaptive_windows: bool,
    /// The window a worker starts with under [`adaptive_windows`](Config::adaptive_windows)
    /// (2 by default; at most its capacity, at least 1; not used with fixed windows, nor for
    /// a worker whose capacity is 2 or less). Its first measurement, once it has answered
    /// that many jobs, resizes it either way, down to 2 for a slow worker. Above the
    /// default, a worker can take up to this many jobs before it has answered one: good for
    /// many workers on tiny jobs (each message carries more of them), bad for few, heavy
    /// jobs, where the first workers would hold what later ones could run.
    pub start_window: usize,
    /// Give each worker one job per turn of the round-robin, as the Go package did: with
    /// `N` workers that take every job they are offered, job `v` goes to worker `v mod N`.
    /// Off (the default), a worker's turn goes on while the jobs already given to it have
    /// not left yet (its connection is still busy sending), up to
    /// [`max_turn`](Config::max_turn) jobs and its free credit: when jobs come faster than
    /// connections send them, consecutive jobs travel in one message to one worker instead
    /// of one message to each of many workers. When they come slower, every turn is one job
    /// either way.
    pub strict_turns: bool,
    /// Most consecutive jobs one worker's turn carries unless turns are strict (16 by
    /// default, at least 1; see [`strict_turns`](Config::strict_turns)).
    pub max_turn: usize,
    /// Straggler speculation (on by default): at the end of a run (the job side closed,
    /// nothing waiting), a job a slow worker holds is also given to an idle worker measured
    /// at least twice as fast; the first result wins and the slower run is told to stop,
    /// so one slow worker (one that slowed down, or holds a fixed window) does not hold up
    /// the end. Never with `strict_turns`.
    pub speculation: bool,
    /// Workers that must agree on each job's result before it is delivered (1, the default:
    /// the first result is delivered). With 2 or more, for volunteers who may return wrong
    /// results, each job goes to that many distinct workers in turn and their results are
    /// compared byte for byte (errors by their message); on a disagreement it goes to one
    /// more worker, and the result `replicas` workers agree on wins. After `2 × replicas + 1`
    /// results with no such agreement the job fails with
    /// [`JobError::Disagreement`](crate::JobError::Disagreement). Workers whose result lost
    /// are counted (see [`max_wrong`](Self::max_wrong)). A run needs at least `replicas`
    /// workers connected: a job never goes twice to one worker.
    pub replicas: u32,
    /// With [`replicas`](Self::replicas), a worker whose results lost more than this many
    /// times is disconnected (close code 1008) and its jobs go to others; `None` (the
    /// default) only counts them.
    pub max_wrong: Option<u64>,
    /// Origins (e.g. `http://localhost:8080`) from which browser workers may connect.
    /// Empty accepts every origin. Connections without an `Origin` header (native
    /// workers) are not affected.
    pub allowed_origins: Vec<String>,
    /// Name of the built-in task the jobs are for, announced to workers in the welcome.
    /// A coordinator runs a built-in task or a [task module](crate::TaskModule), not both.
    pub task: Option<String>,
    /// The limits every job of a task module runs under: memory, time, output size.
    pub module_limits: Limits,
    /// Jobs that may wait in the queue before `send` waits (backpressure).
    pub queue_capacity: usize,
    /// Results that may wait for the receiver before dispatching slows down.
    pub result_capacity: usize,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
    /// How long [`Coordinator::shutdown`](crate::Coordinator::shutdown) waits, after the end
    /// of the work, for the workers to close by themselves.
    pub shutdown_grace: Duration,
    /// Folder served over HTTP at `/` (the volunteer page); `None` serves no files.
    pub static_dir: Option<PathBuf>,
    /// Serve HTTPS and `wss://` with this certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// How long a new connection may take to send its whole first HTTP request head (and,
    /// with [`tls`](Self::tls), to complete the TLS handshake before that); a connection
    /// slower than that is closed.
    pub header_read_timeout: Duration,
    /// Most connections that are not (yet) workers at once: from their accept until their
    /// WebSocket hello is accepted, or for a plain HTTP connection (page, metrics,
    /// dashboard) until it closes. Beyond it new connections are closed at once (counted
    /// in the `distchan_connections_refused` metric); connected workers are not affected.
    pub max_pending_connections: usize,
    /// Take a worker's address (as the dashboard and the logs show it) from the first
    /// address of its `X-Forwarded-For` header: only behind a reverse proxy that sets it,
    /// since any client can send one.
    pub trust_forwarded_for: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            token,
            heartbeat,
            lease,
            max_retries,
            reconnect_grace,
            handler_retries,
            ordered,
            max_frame,
            read_buffer_size,
            handshake_timeout,
            max_workers,
            max_capacity,
            adaptive_windows,
            start_window,
            strict_turns,
            max_turn,
            speculation,
            replicas,
            max_wrong,
            allowed_origins,
            task,
            module_limits,
            queue_capacity,
            result_capacity,
            ws_path,
            shutdown_grace,
            static_dir,
            tls,
            header_read_timeout,
            max_pending_connections,
            trust_forwarded_for,
        } = self;
        f.debug_struct("Config")
            .field("token", &token.as_ref().map(|_| "<redacted>"))
            .field("heartbeat", heartbeat)
            .field("lease", lease)
            .field("max_retries", max_retries)
            .field("reconnect_grace", reconnect_grace)
            .field("handler_retries", handler_retries)
            .field("ordered", ordered)
            .field("max_frame", max_frame)
            .field("read_buffer_size", read_buffer_size)
            .field("handshake_timeout", handshake_timeout)
            .field("max_workers", max_workers)
            .field("max_capacity", max_capacity)
            .field("adaptive_windows", adaptive_windows)
            .field("start_window", start_window)
            .field("strict_turns", strict_turns)
            .field("max_turn", max_turn)
            .field("speculation", speculation)
            .field("replicas", replicas)
            .field("max_wrong", max_wrong)
            .field("allowed_origins", allowed_origins)
            .field("task", task)
            .field("module_limits", module_limits)
            .field("queue_capacity", queue_capacity)
            .field("result_capacity", result_capacity)
            .field("ws_path", ws_path)
            .field("shutdown_grace", shutdown_grace)
            .field("static_dir", static_dir)
            .field("tls", tls)
            .field("header_read_timeout", header_read_timeout)
            .field("max_pending_connections", max_pending_connections)
            .field("trust_forwarded_for", trust_forwarded_for)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            heartbeat: Duration::from_secs(5),
            lease: None,
            max_retries: 3,
            reconnect_grace: Duration::ZERO,
            handler_retries: 0,
            ordered: false,
            max_frame: DEFAULT_MAX_FRAME,
            read_buffer_size: distchan_protocol::read_ahead::WEBSOCKET_READ_BUFFER,
            handshake_timeout: Duration::from_secs(10),
            max_workers: 100_000,
            max_capacity: 4096,
            adaptive_windows: true,
            start_window: crate::scheduler::START_WINDOW,
            strict_turns: false,
            max_turn: 16,
            speculation: true,
            replicas: 1,
            max_wrong: None,
            allowed_origins: Vec::new(),
            task: None,
            module_limits: Limits::default(),
            queue_capacity: 1024,
            result_capacity: 1024,
            ws_path: "/ws".into(),
            shutdown_grace: Duration::from_secs(5),
            static_dir: None,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_pending_connections: 512,
            trust_forwarded_for: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let config = Config {
            token: Some("s3cr3t-value".into()),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("token: Some(\"<redacted>\")"), "{shown}");
    }
}
