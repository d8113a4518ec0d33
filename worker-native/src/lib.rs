//! The native distchan worker: connect to a coordinator, take typed jobs, send back results.
//!
//! # Layout
//!
//! - [`connection`]: WebSocket connection, handshake and the frame loop, driven by the
//!   protocol crate's [`WorkerSession`](distchan_protocol::session::WorkerSession) (the
//!   browser worker drives the same one).
//! - [`job`]: jobs and replies between the connection and what runs the jobs: raw
//!   ([`RawJob`], [`Reply`]), and the typed job stream and result sink (the Go client's `in`
//!   and `out`).
//! - `runner` (private): runs a handler on every job the connection hands it, on tasks of
//!   their own or, once it has proved quick, on the connection task itself.
//! - [`serve`](mod@serve): run a handler on every job with bounded concurrency, or the task
//!   the coordinator names ([`serve_task`]): a built-in demo task or a task module; builds
//!   on [`connection`] and the runner.
//! - [`tls`]: the transport under the WebSocket, TCP or TLS (rustls) for `wss://`, and the
//!   certificates trusted besides the public roots.
//! - `module` (private): task modules (WebAssembly) fetched, checked, cached on disk,
//!   compiled once and run sandboxed by wasmtime on a pool of threads.
//!
//! The `distchan-worker` binary (its flags and log setup) is built with the `cli` feature,
//! on by default; without it the library depends on neither clap nor tracing-subscriber.
//!
//! # Example: the Go README's capitalizer worker
//!
//! ```no_run
//! # async fn demo() -> Result<(), distchan_worker::Error> {
//! let (mut jobs, results, client) =
//!     distchan_worker::connect::<String, String>("ws://127.0.0.1:5678/ws", Default::default()).await?;
//! while let Some(job) = jobs.recv().await {
//!     results.send(job.id, Ok(job.value.to_uppercase())).await?;
//! }
//! drop(results);
//! client.done().await // completes once the last result is flushed
//! # }
//! ```
#![warn(missing_docs)]

pub mod connection;
pub mod job;
mod module;
mod runner;
pub mod serve;
pub mod tls;

use std::time::Duration;

pub use connection::{connect_raw, connect_raw_io, Client, RawConnection};
pub use distchan_protocol::{
    session::{should_reconnect, Backoff},
    transform, Error, JobId, Result,
};
pub use job::{Job, JobStream, RawJob, Reply, ResultSink};
pub use module::default_cache_dir;
pub use serve::{serve, serve_raw, serve_task};
pub use tokio_util::sync::CancellationToken;

use distchan_protocol::{
    session::SessionConfig,
    transform::{Transform, TransformChain},
    wire::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION},
};
use serde::{de::DeserializeOwned, Serialize};

/// How a worker connects and what it announces.
///
/// Its `Debug` output never shows the access token (nor the AES key of a transform).
#[derive(Clone)]
pub struct Options {
    /// Most unanswered jobs the coordinator may send at once: the ceiling of the credit
    /// window, which the coordinator sizes from the worker's measured speed (256 by
    /// default: tiny jobs need that many in flight to keep a worker busy; for jobs of a
    /// megabyte or more, a lower ceiling bounds the memory they hold on both sides).
    pub capacity: u32,
    /// Jobs run at the same time by [`serve`](fn@serve) and friends.
    pub concurrency: usize,
    /// Let the connection task run a handler itself once it has proved quick (see
    /// [`serve`](mod@serve)): the fastest way to answer small jobs. Turn it off when a
    /// handler that is usually quick may suddenly compute for seconds without waiting: a
    /// job running on the connection task holds up its heartbeats until it finishes.
    pub inline_handlers: bool,
    /// Access token, if the coordinator requires one.
    pub token: Option<String>,
    /// Payload transforms; must match the coordinator's.
    pub transforms: TransformChain,
    /// Name shown on the coordinator's side; defaults to `distchan-worker/VERSION on HOST`.
    pub agent: Option<String>,
    /// The group this worker counts in when the coordinator replicates jobs
    /// ([`Hello::group`](distchan_protocol::wire::Hello::group)): workers of one group (say,
    /// one owner's machines) never compute the same job twice. `None`: on its own.
    pub group: Option<String>,
    /// Largest frame accepted from the coordinator.
    pub max_frame: usize,
    /// Longest wait for the connection and the welcome.
    pub handshake_timeout: Duration,
    /// Cancel to leave cleanly: no more jobs are taken, the ones held are finished.
    pub drain: CancellationToken,
    /// Protocol version announced; only tests need to change it.
    pub protocol_version: u32,
    /// Folder where task modules are kept between runs ([`default_cache_dir`] by default);
    /// `None` keeps them in memory only.
    pub module_cache: Option<std::path::PathBuf>,
    /// Certificates trusted for `wss://` and the module download over `https://`, besides
    /// the webpki roots: a private CA's, or a self-signed coordinator's. See
    /// [`Options::ca_cert_file`].
    pub ca_certs: Vec<tls::CertificateDer<'static>>,
    /// Whether [`serve`](fn@serve) and friends connect again when the connection is lost
    /// (the coordinator restarted or went silent, the network failed), after a delay from
    /// [`Options::backoff`]; on by default. A refusal for the token, the protocol version
    /// or the origin, and anything else [`should_reconnect`] says retrying cannot change,
    /// is final. Off, the first loss ends the run with its error.
    pub reconnect: bool,
    /// Delays between attempts to connect again (250 ms doubling up to 30 s, with full
    /// jitter, by default); a connection that is welcomed starts it over.
    pub backoff: Backoff,
}

impl Default for Options {
    fn default() -> Self {
        let concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        Options {
            capacity: 256,
            concurrency,
            inline_handlers: true,
            token: None,
            transforms: TransformChain::new(),
            agent: None,
            group: None,
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            drain: CancellationToken::new(),
            protocol_version: PROTOCOL_VERSION,
            module_cache: default_cache_dir(),
            ca_certs: Vec::new(),
            reconnect: true,
            backoff: Backoff::default(),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("inline_handlers", &self.inline_handlers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("transforms", &self.transforms)
            .field("agent", &self.agent)
            .field("group", &self.group)
            .field("max_frame", &self.max_frame)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("drain", &self.drain)
            .field("protocol_version", &self.protocol_version)
            .field("module_cache", &self.module_cache)
            .field("reconnect", &self.reconnect)
            .field("backoff", &self.backoff)
            .field("ca_certs", &self.ca_certs.len())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Adds a payload transform (builder style); transforms apply in the order they are added.
    pub fn transform(mut self, transform: impl Transform) -> Self {
        self.transforms.push(transform);
        self
    }

    /// Sets the access token (builder style).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the credit window (builder style).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Also trusts every certificate of the PEM file at `path` (builder style): a private
    /// CA's, or a self-signed coordinator's. Fails with [`Error::Config`] when the file
    /// cannot be read or holds no certificate.
    pub fn ca_cert_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        self.ca_certs.extend(tls::read_pem_certs(path)?);
        Ok(self)
    }

    /// Turns reconnecting on or off (builder style; see [`Options::reconnect`]).
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::native(self.capacity.max(1));
        config.token = self.token.clone();
        config.max_frame = self.max_frame;
        config.version = self.protocol_version;
        config.group = self.group.clone();
        config.agent = self.agent.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("{} on {host}", config.agent)
        });
        config
    }
}

/// Connects to the coordinator at `url` (e.g. `ws://host:port/ws`) and returns the typed job
/// stream, the result sink and the [`Client`] whose [`done`](Client::done) completes after
/// the last result is flushed. Like Go's `NewClient(conn, out, in).Start()`.
///
/// Fails with [`Error::Refused`] (with the coordinator's reason) when the coordinator
/// refuses this worker.
pub async fn connect<J, R>(
    url: &str,
    options: Options,
) -> Result<(JobStream<J>, ResultSink<R>, Client)>
where
    J: DeserializeOwned,
    R: Serialize,
{
    let (jobs, replies, client) = connect_raw(url, &options).await?;
    Ok((
        JobStream::new(jobs, replies.clone()),
        ResultSink::new(replies),
        client,
    ))
}

/// Like [`connect`], over a connection the caller already opened (a TLS stream, a Unix
/// socket, or an in-memory pipe in tests); `url` still names the endpoint.
pub async fn connect_io<J, R, S>(
    url: &str,
    io: S,
    options: Options,
) -> Result<(JobStream<J>, ResultSink<R>, Client)>
where
    J: DeserializeOwned,
    R: Serialize,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (jobs, replies, client) = connect_raw_io(url, io, &options).await?;
    Ok((
        JobStream::new(jobs, replies.clone()),
        ResultSink::new(replies),
        client,
    ))
}
