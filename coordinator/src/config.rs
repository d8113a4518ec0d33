//! Coordinator settings, with defaults that work without any configuration file.

use std::{path::PathBuf, time::Duration};

use distchan_protocol::{module::Limits, wire::DEFAULT_MAX_FRAME};

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
#[derive(Debug, Clone)]
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            heartbeat: Duration::from_secs(5),
            lease: None,
            max_retries: 3,
            handler_retries: 0,
            ordered: false,
            max_frame: DEFAULT_MAX_FRAME,
            read_buffer_size: 2 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_workers: 100_000,
            max_capacity: 4096,
            allowed_origins: Vec::new(),
            task: None,
            module_limits: Limits::default(),
            queue_capacity: 1024,
            result_capacity: 1024,
            ws_path: "/ws".into(),
            shutdown_grace: Duration::from_secs(5),
            static_dir: None,
        }
    }
}
