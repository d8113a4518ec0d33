//! The distchan coordinator: typed job and result channels whose work is done by workers
//! connected over WebSocket, native processes and browser tabs alike.
//!
//! # Layout
//!
//! The data path walks forward through one module per step:
//!
//! - [`job`]: [`JobSender`] encodes a typed job straight into its frame and hands it to the
//!   scheduler.
//! - `queue` (private): the bounded line of jobs waiting for a worker, and its places (the
//!   senders' backpressure).
//! - `scheduler` (private): credit-based round-robin dispatch, in-flight tracking,
//!   re-dispatch of lost jobs, leases, exactly-once delivery, end-of-work; shared state
//!   behind a short lock, with no task of its own. A folder with one part per file: `hub`
//!   (the lock and every step taken under it), `dispatch`, `workers` (ring and credit),
//!   `ledger` (in-flight table, dedup, retries, leases), `outcomes`, `report`.
//! - `connection` (private): one worker's handshake, reader, writer and heartbeats, and
//!   the messages it exchanges with the scheduler; its outlet lets the sender of a job
//!   write it at once when no other job is out.
//! - [`result`]: [`ResultReceiver`] takes outcomes in batches and decodes them (optionally
//!   in send order); `job_error` (private): [`JobError`], why a job has no result (its
//!   handler failed, it was lost with its workers, its result does not decode).
//!
//! Around it: [`config`] (every setting, with defaults), [`tls`] (HTTPS and `wss://`
//! served directly), `jetstream` (feature `jetstream`: several coordinators sharing one
//! durable queue on NATS JetStream), [`journal`] (outcomes kept on disk,
//! so that a run survives the coordinator's death), `keyed` (jobs sent with a key:
//! answered from the journal, or journaled once answered; [`KeyedSend`]), [`module`] (the user's task module,
//! served to workers), `server` (HTTP, WebSocket upgrade, static files, the module's URL),
//! `websocket` (a worker's WebSocket, owner of the write path: frames queued whole and
//! written before each read), `socket` (the socket under each WebSocket: read-ahead buffers
//! lent while busy, the ordered write queue), [`stats`] (counters, and the metrics `/metrics`
//! serves), `process` (the process's own metrics, read from `/proc`) and [`memory`] (an
//! in-process transport for tests).
//!
//! The `distchan-coordinator` binary (its flags, demo, pipe mode and progress bar) is built
//! with the `cli` feature, on by default; without it the library depends on none of the
//! crates only the binary needs.
//!
//! # Example
//!
//! ```no_run
//! use distchan_coordinator::Coordinator;
//!
//! # async fn demo() -> Result<(), distchan_coordinator::Error> {
//! let (coordinator, jobs, mut results) =
//!     Coordinator::builder().bind::<String, String>("127.0.0.1:5678").await?;
//! println!("workers connect to {}", coordinator.ws_url());
//! tokio::spawn(async move {
//!     for word in ["why", "hello", "there", "world"] {
//!         jobs.send(word.to_string()).await?;
//!     }
//!     Ok::<_, distchan_coordinator::Error>(()) // dropping `jobs` means "no more work"
//! });
//! while let Some(outcome) = results.recv().await {
//!     println!("{}: {:?}", outcome.id, outcome.result);
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod config;
mod connection;
mod dashboard;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod job;
mod job_error;
pub mod journal;
mod keyed;
pub mod memory;
pub mod module;
mod process;
mod queue;
pub mod result;
mod scheduler;
mod server;
mod socket;
pub mod stats;
pub mod tls;
mod websocket;

use std::{net::SocketAddr, sync::Arc};

pub use config::Config;
pub use distchan_protocol::{transform, Error, JobId};
pub use job::{JobSender, TrySendError};
pub use job_error::JobError;
pub use keyed::KeyedSend;
pub use module::TaskModule;
pub use result::{JobOutcome, ResultReceiver};
pub use scheduler::{ShutdownReport, WorkerShare, WorkerSnapshot, MAX_SHARES};
pub use stats::Stats;
pub use tls::TlsConfig;

use distchan_protocol::{
    module::ModuleSpec,
    transform::{Transform, TransformChain},
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    net::{TcpListener, ToSocketAddrs},
    sync::{mpsc, watch, Semaphore},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{scheduler::Hub, stats::Counters};

/// State shared by the HTTP server and every connection.
pub(crate) struct Shared {
    pub config: Config,
    /// The task module the workers run, with what the welcome says of it.
    pub module: Option<(ModuleSpec, TaskModule)>,
    pub counters: Arc<Counters>,
    pub epoch: tokio::time::Instant,
    pub dashboard: dashboard::Hub,
    pub hub: Arc<Hub>,
    /// Keyed jobs and the journal.
    pub keyed: Arc<keyed::Keyed>,
    pub slots: Arc<Semaphore>,
    /// Read-ahead buffers lent to busy connections.
    pub read_pool: Arc<distchan_protocol::read_ahead::ReadPool>,
    pub workers: watch::Receiver<usize>,
    pub finished: watch::Receiver<bool>,
}

/// Configures a coordinator before it starts: settings and transforms.
///
/// Nothing flows until one of the `bind`/`listen` methods starts it, so every transform is
/// in place before the first job is encoded.
#[derive(Debug, Default)]
pub struct Builder {
    config: Config,
    chain: TransformChain,
    module: Option<TaskModule>,
    journal: Option<(std::path::PathBuf, String)>,
}

impl Builder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Adds a payload transform; transforms apply in the order they are added.
    pub fn transform(mut self, transform: impl Transform) -> Self {
        self.chain.push(transform);
        self
    }

    /// Runs every job through `module` instead of a built-in task: workers fetch it from
    /// this coordinator, check its hash and run it sandboxed under
    /// [`Config::module_limits`]. See [`module`] for how jobs and results reach it.
    pub fn module(mut self, module: TaskModule) -> Self {
        self.module = Some(module);
        self
    }

    /// Keeps the outcomes of keyed jobs ([`JobSender::send_keyed`]) in the journal at
    /// `path` (created if missing), made for the run named `identity`: sending a key whose
    /// outcome it holds answers from it, without running the job again. Opening a journal
    /// made for another identity fails with the reason; a torn tail left by a crash is
    /// dropped. See [`journal`] for the format and when an outcome is durable: before the
    /// [`ResultReceiver`] hands it out.
    pub fn journal(
        mut self,
        path: impl Into<std::path::PathBuf>,
        identity: impl Into<String>,
    ) -> Self {
        self.journal = Some((path.into(), identity.into()));
        self
    }

    /// Binds `addr` and starts, returning the coordinator and its typed channels.
    pub async fn bind<J, R>(
        self,
        addr: impl ToSocketAddrs,
    ) -> Result<(Coordinator, JobSender<J>, ResultReceiver<R>), Error>
    where
        J: Serialize,
        R: DeserializeOwned,
    {
        let listener = TcpListener::bind(addr).await?;
        self.listen(listener)
    }

    /// Starts on an already bound listener, returning the coordinator and its typed channels.
    pub fn listen<J, R>(
        self,
        listener: TcpListener,
    ) -> Result<(Coordinator, JobSender<J>, ResultReceiver<R>), Error>
    where
        J: Serialize,
        R: DeserializeOwned,
    {
        let coordinator = self.start(listener, server::tcp_nodelay, true, true)?;
        let (jobs, results) = self.channels(&coordinator);
        Ok((coordinator, jobs, results))
    }

    /// Starts on any [`Listener`](axum::serve::Listener), such as a
    /// [`memory::MemoryListener`] in tests.
    pub fn listen_on<L, J, R>(
        self,
        listener: L,
    ) -> Result<(Coordinator, JobSender<J>, ResultReceiver<R>), Error>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
        J: Serialize,
        R: DeserializeOwned,
    {
        let coordinator = self.start(listener, |_: &mut L::Io| {}, true, true)?;
        let (jobs, results) = self.channels(&coordinator);
        Ok((coordinator, jobs, results))
    }

    /// The typed channels of a coordinator started with both sides.
    fn channels<J: Serialize, R: DeserializeOwned>(
        &self,
        coordinator: &Coordinator,
    ) -> (JobSender<J>, ResultReceiver<R>) {
        let (hub, keyed) = (&coordinator.shared.hub, &coordinator.shared.keyed);
        (
            JobSender::new(hub.clone(), self.chain.clone(), keyed.clone()),
            ResultReceiver::new(
                hub.clone(),
                self.chain.clone(),
                self.config.ordered,
                keyed.clone(),
            ),
        )
    }

    /// Starts on `listener` with channels made by the caller, like Go's
    /// `NewServer(ln, out, in)`: either side may be absent.
    ///
    /// Without a job side, workers can still send values on their own (results-only use);
    /// without a result side, outcomes are counted and dropped (jobs-only use).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), distchan_coordinator::Error> {
    /// use distchan_coordinator::{Coordinator, JobOutcome};
    /// use tokio::sync::mpsc;
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let (out, jobs) = mpsc::channel::<String>(16);
    /// let (results, mut into) = mpsc::channel::<JobOutcome<String>>(16);
    /// let _coordinator = Coordinator::builder().listen_with(listener, Some(jobs), Some(results))?;
    /// out.send("hello world".into()).await.unwrap();
    /// drop(out);
    /// while let Some(outcome) = into.recv().await {
    ///     println!("{:?}", outcome.result);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn listen_with<J, R>(
        self,
        listener: TcpListener,
        jobs: Option<mpsc::Receiver<J>>,
        results: Option<mpsc::Sender<JobOutcome<R>>>,
    ) -> Result<Coordinator, Error>
    where
        J: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let chain = self.chain.clone();
        let ordered = self.config.ordered;
        let coordinator = self.start(
            listener,
            server::tcp_nodelay,
            jobs.is_some(),
            results.is_some(),
        )?;
        let (hub, keyed) = (&coordinator.shared.hub, &coordinator.shared.keyed);
        let job_sender = jobs
            .is_some()
            .then(|| JobSender::<J>::new(hub.clone(), chain.clone(), keyed.clone()));
        let result_rx = results
            .is_some()
            .then(|| ResultReceiver::<R>::new(hub.clone(), chain, ordered, keyed.clone()));
        if let (Some(mut user_jobs), Some(sender)) = (jobs, job_sender) {
            tokio::spawn(async move {
                while let Some(job) = user_jobs.recv().await {
                    match sender.send(job).await {
                        Ok(_) => {}
                        Err(Error::Closed) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "a job could not be encoded and was not sent")
                        }
                    }
                }
            });
        }
        if let (Some(user_results), Some(mut receiver)) = (results, result_rx) {
            tokio::spawn(async move {
                while let Some(outcome) = receiver.recv().await {
                    if user_results.send(outcome).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(coordinator)
    }

    fn start<L, F>(
        &self,
        listener: L,
        tap: F,
        jobs: bool,
        results: bool,
    ) -> Result<Coordinator, Error>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
        F: FnMut(&mut L::Io) + Send + 'static,
    {
        let local_addr = listener.local_addr()?;
        if !self.config.ws_path.starts_with('/') {
            return Err(Error::config(format!(
                "ws_path must start with '/', got {:?}",
                self.config.ws_path
            )));
        }
        let module = match &self.module {
            Some(_) if self.config.task.is_some() => {
                return Err(Error::config(
                    "a coordinator runs a built-in task or a task module, not both",
                ))
            }
            Some(m) => Some((m.spec(self.config.module_limits)?, m.clone())),
            None => None,
        };
        let journal = match &self.journal {
            None => None,
            Some((path, identity)) => {
                let (journal, found) = journal::Journal::open(path, identity).map_err(|e| {
                    Error::config_from(format!("cannot use the journal {}", path.display()), e)
                })?;
                tracing::info!(
                    path = %path.display(),
                    outcomes = found.len(),
                    dropped_bytes = journal.dropped(),
                    "journal opened"
                );
                Some((journal, found))
            }
        };
        let keyed = Arc::new(keyed::Keyed::new(journal));
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let epoch = tokio::time::Instant::now();
        let config = self.config.clone();
        let hub = Arc::new(Hub::new(
            config.clone(),
            jobs,
            results,
            counters.clone(),
            epoch,
        ));
        let lease_task = config
            .lease
            .is_some()
            .then(|| tokio::spawn(keep_leases(hub.clone(), cancel.clone())));
        let shared = Arc::new(Shared {
            counters: counters.clone(),
            epoch,
            dashboard: dashboard::Hub::default(),
            slots: Arc::new(Semaphore::new(config.max_workers)),
            read_pool: Arc::new(distchan_protocol::read_ahead::ReadPool::new(64)),
            workers: hub.watch_workers(),
            finished: hub.watch_finished(),
            hub,
            keyed,
            config,
            module,
        });
        let server_task = server::spawn(
            listener,
            tap,
            server::router(shared.clone()),
            shared.clone(),
            cancel.clone(),
        );
        tracing::info!(%local_addr, "coordinator listening");
        Ok(Coordinator {
            shared,
            local_addr,
            cancel,
            lease_task,
            server_task: Some(server_task),
        })
    }
}

/// Hands jobs whose lease ran out to other workers, until the coordinator stops.
async fn keep_leases(hub: Arc<Hub>, cancel: CancellationToken) {
    loop {
        let next = hub.next_lease();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hub.leases_changed() => {}
            _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                hub.expire_leases();
            }
        }
    }
}

/// A running coordinator. Dropping it shuts it down; [`Coordinator::shutdown`] also
/// reports what was left unfinished.
#[derive(Debug)]
pub struct Coordinator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    cancel: CancellationToken,
    lease_task: Option<JoinHandle<()>>,
    server_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A builder with the default [`Config`] and no transforms.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The address the coordinator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL workers connect to, e.g. `ws://127.0.0.1:5678/ws` (`wss://` with
    /// [`Config::tls`]).
    pub fn ws_url(&self) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!(
            "{scheme}://{}{}",
            self.local_addr, self.shared.config.ws_path
        )
    }

    /// The URL of the HTTP side (volunteer page, dashboard, metrics), e.g.
    /// `http://127.0.0.1:5678` (`https://` with [`Config::tls`]), without a trailing slash.
    pub fn http_url(&self) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// True while at least one worker is connected.
    pub fn ready(&self) -> bool {
        *self.shared.workers.borrow() > 0
    }

    /// Number of connected workers.
    pub fn worker_count(&self) -> usize {
        *self.shared.workers.borrow()
    }

    /// Waits until at least one worker is connected.
    pub async fn wait_until_ready(&self) {
        self.wait_for_workers(1).await;
    }

    /// Waits until at least `n` workers are connected.
    pub async fn wait_for_workers(&self, n: usize) {
        let mut rx = self.shared.workers.clone();
        let _ = rx.wait_for(|&count| count >= n).await;
    }

    /// A watch of the number of connected workers, to wait for any condition on it.
    pub fn watch_workers(&self) -> watch::Receiver<usize> {
        self.shared.workers.clone()
    }

    /// Waits until the job side is closed and every job has its outcome (end-of-work sent).
    pub async fn finished(&self) {
        let mut rx = self.shared.finished.clone();
        let _ = rx.wait_for(|&done| done).await;
    }

    /// Describes every connected worker.
    pub async fn workers(&self) -> Vec<WorkerSnapshot> {
        self.shared.hub.snapshot()
    }

    /// Every metric in the OpenMetrics text format (what `/metrics` serves); see
    /// [`stats`] for their names.
    pub fn metrics(&self) -> String {
        self.shared.hub.render_metrics()
    }

    /// Publishes an application event to every open dashboard (`/dashboard`), and to those
    /// opened later. The demo publishes each finished Mandelbrot tile this way.
    pub fn publish<T: Serialize>(&self, event: &T) -> Result<(), Error> {
        let json = serde_json::to_string(event).map_err(|e| Error::Encode(Box::new(e)))?;
        self.shared.dashboard.publish(json);
        Ok(())
    }

    /// Keys whose outcome the journal holds (0 without a journal; see
    /// [`Builder::journal`]).
    pub fn journaled(&self) -> usize {
        self.shared.keyed.journaled()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.hub.stats()
    }

    /// Stops accepting connections, tells every worker, ends the result channel and reports
    /// the jobs that never got an outcome.
    ///
    /// After the end of the work ([`Coordinator::finished`]) the workers, told end-of-work,
    /// close by themselves: they get up to [`Config::shutdown_grace`] to do so before the
    /// coordinator closes what is left, so that a normal end is a clean end on both sides.
    pub async fn shutdown(mut self) -> ShutdownReport {
        if *self.shared.finished.borrow() {
            let mut workers = self.shared.workers.clone();
            let _ = tokio::time::timeout(
                self.shared.config.shutdown_grace,
                workers.wait_for(|&n| n == 0),
            )
            .await;
        }
        self.cancel.cancel();
        let report = self.shared.hub.shut_down();
        if let Some(leases) = self.lease_task.take() {
            let _ = leases.await;
        }
        if let Some(server) = self.server_task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
        report
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.hub.shut_down();
    }
}
