//! Running a handler on every job with bounded concurrency.
//!
//! Every job starts on a task of its own, and up to `concurrency` of those run at once, side
//! by side on every core, while the connection task keeps reading and answering heartbeats.
//! Those tasks time the handler: once it has finished [`CALIBRATION`] jobs in a row quickly
//! (within [`LONG_HANDLER`]) without waiting, the connection task runs it itself, and each
//! job is answered on the spot, in the same write as the jobs read with it, without
//! crossing a task. There every job is timed too, and one slow job (a heavier input, or the
//! machine stalling the thread) sends the jobs back to tasks of their own until the handler
//! has proved quick again. A job whose handler waits (for I/O, a timer) is moved to a task
//! of its own where it waits. [`Options::inline_handlers`](crate::Options::inline_handlers)
//! turns the connection task's part off.

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    panic::AssertUnwindSafe,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use distchan_protocol::{payload, tasks, wire::Outcome, Error, JobId, Result};
use futures_util::{future::BoxFuture, FutureExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use crate::{
    connection::{self, Client, Reply, Welcomed},
    module::Source,
    Options,
};

/// A handler computing longer than this before it first waits is not run on the connection
/// task.
pub const LONG_HANDLER: Duration = Duration::from_micros(50);

/// Quick jobs in a row, on tasks of their own, before the connection task runs the handler
/// itself.
pub const CALIBRATION: u32 = 64;

/// Connects to `url` and answers every job with `handler`, running up to
/// `options.concurrency` jobs at once, until end-of-work.
///
/// A handler error becomes that job's failed result; a handler that panics is reported as
/// a failed result too, and the worker carries on. The handler starts on the connection's
/// task: a quick one is answered without crossing a task, and a long one is moved to tasks
/// of its own (see the [module docs](self)).
///
/// ```no_run
/// # async fn demo() -> distchan_protocol::Result<()> {
/// distchan_worker::serve("ws://127.0.0.1:5678/ws", distchan_worker::Options::default(), |s: String| async move {
///     Ok::<_, String>(s.to_uppercase())
/// })
/// .await
/// # }
/// ```
pub async fn serve<J, R, F, Fut>(url: &str, options: Options, handler: F) -> Result<()>
where
    J: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(J) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, String>> + Send + 'static,
{
    let handler = Arc::new(handler);
    serve_raw(url, options, move |plain: Bytes| {
        let handler = handler.clone();
        async move {
            let job: J = payload::from_msgpack(&plain)
                .map_err(|e| format!("the job is not of the type this worker takes: {e}"))?;
            let result = handler(job).await?;
            payload::to_msgpack(&result).map_err(|e| e.to_string())
        }
    })
    .await
}

/// Connects to `url` and runs the task the coordinator names in its welcome until
/// end-of-work: its task module (fetched once, checked against its hash, compiled once and
/// run sandboxed on `options.concurrency` threads; see [`distchan_protocol::module`]), or a
/// built-in task ([`distchan_protocol::tasks`]; CPU-heavy ones run on blocking threads).
///
/// Fails with [`Error::Module`] when the module cannot be had or run here (the coordinator
/// is told why), and with [`Error::Config`] when the coordinator names no task this worker
/// knows.
///
/// ```no_run
/// # async fn demo() -> distchan_protocol::Result<()> {
/// distchan_worker::serve_task("ws://127.0.0.1:8080/ws", distchan_worker::Options::default()).await
/// # }
/// ```
pub async fn serve_task(url: &str, options: Options) -> Result<()> {
    let conn = connection::open(url, &options).await?;
    if let Some(spec) = conn.welcome().module.clone() {
        let source = Source {
            ws_url: url.to_owned(),
            spec,
            token: options.token.clone(),
            cache: options.module_cache.clone(),
        };
        let threads = options.concurrency.max(1);
        return conn.run_module(source, threads, &options).done().await;
    }
    let Some(task) = conn.welcome().task.clone() else {
        let reason = "the coordinator names no task";
        conn.leave(reason).await;
        return Err(Error::Config(reason.into()));
    };
    if !tasks::ALL.contains(&task.as_str()) {
        let reason = format!("this worker does not know the task `{task}`");
        conn.leave(&reason).await;
        return Err(Error::Config(reason));
    }
    let heavy = tasks::is_cpu_heavy(&task);
    let task: Arc<str> = task.into();
    let handler = boxed(move |plain: Bytes| {
        let task = task.clone();
        async move {
            if heavy {
                tokio::task::spawn_blocking(move || tasks::run(&task, &plain))
                    .await
                    .map_err(|e| format!("the task failed: {e}"))?
            } else {
                tasks::run(&task, &plain)
            }
        }
    });
    run(conn, handler, &options).done().await
}

/// Like [`serve`] but with untyped payloads: the handler gets and returns plain MessagePack.
///
/// The handler runs on the connection's task until it first waits; see the
/// [module docs](self) for how long computations are moved off it.
pub async fn serve_raw<F, Fut>(url: &str, options: Options, handler: F) -> Result<()>
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Bytes, String>> + Send + 'static,
{
    let conn = connection::open(url, &options).await?;
    run(conn, boxed(handler), &options).done().await
}

/// Starts the connection task of `conn` with a [`Runner`] of `handler`.
fn run<S>(conn: Welcomed<S>, handler: Handler, options: &Options) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let concurrency = options.concurrency.max(1);
    let (replies, done) = mpsc::channel(concurrency);
    let runner = Runner::new(handler, concurrency, options.inline_handlers, replies);
    conn.run(runner, done, options)
}

/// A job handler as the connection task runs it: plain MessagePack in, the outcome out.
type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Boxes `handler`; a handler that panics is reported as that job's failure.
fn boxed<F, Fut>(handler: F) -> Handler
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |payload| {
        let job = AssertUnwindSafe(handler(payload)).catch_unwind();
        Box::pin(async move {
            job.await
                .unwrap_or_else(|_| Err("the job's handler panicked".to_owned()))
        })
    })
}

/// Runs a handler on every job the connection task hands it; see the [module docs](self).
pub(crate) struct Runner {
    handler: Handler,
    concurrency: usize,
    /// Jobs running on tasks of their own.
    running: usize,
    /// Jobs received while `concurrency` jobs were running.
    backlog: VecDeque<(JobId, Bytes)>,
    /// True while the connection task runs the handler itself.
    inline: bool,
    /// False when the options forbid running handlers on the connection task.
    may_inline: bool,
    /// When the last job run on the connection task in this round ended (the next one's
    /// start: one clock reading per job).
    last: Option<Instant>,
    /// Jobs in a row that finished quickly without waiting on tasks of their own; those
    /// tasks keep it up to date.
    quick: Arc<AtomicU32>,
    /// Where the jobs' own tasks report.
    replies: mpsc::Sender<Reply>,
}

impl Runner {
    fn new(
        handler: Handler,
        concurrency: usize,
        may_inline: bool,
        replies: mpsc::Sender<Reply>,
    ) -> Self {
        Runner {
            handler,
            concurrency,
            running: 0,
            backlog: VecDeque::new(),
            inline: false,
            may_inline,
            last: None,
            quick: Arc::new(AtomicU32::new(0)),
            replies,
        }
    }

    /// A new round of jobs begins (the connection task did other things since the last).
    pub fn new_round(&mut self) {
        self.last = None;
    }

    /// Starts job `id`, or keeps it until a running job finishes. Returns its outcome when
    /// the connection task ran the handler to the end; otherwise the outcome comes as a
    /// [`Reply`].
    pub async fn start(&mut self, id: JobId, payload: Bytes) -> Option<(JobId, Outcome)> {
        if self.running >= self.concurrency {
            self.backlog.push_back((id, payload));
            return None;
        }
        let mut job = (self.handler)(payload);
        if !self.inline && self.may_inline && self.quick.load(Ordering::Relaxed) == CALIBRATION {
            tracing::debug!("the handler is quick: the connection task runs it");
            self.inline = true;
        }
        if self.inline {
            let started = self.last.unwrap_or_else(Instant::now);
            let polled = poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await;
            let ended = Instant::now();
            self.last = Some(ended);
            if ended - started > LONG_HANDLER {
                tracing::debug!("a job was slow: jobs get tasks of their own until quick again");
                self.inline = false;
                self.quick.store(0, Ordering::Relaxed);
            }
            if let Poll::Ready(outcome) = polled {
                return Some((id, outcome));
            }
            self.spawn(id, job, false);
        } else {
            self.spawn(id, job, true);
        }
        None
    }

    /// Runs `job` on a task of its own, timing its start when `timed`.
    fn spawn(&mut self, id: JobId, mut job: BoxFuture<'static, Outcome>, timed: bool) {
        self.running += 1;
        let replies = self.replies.clone();
        let quick = self.quick.clone();
        tokio::spawn(async move {
            let outcome = if timed {
                let started = Instant::now();
                let polled = poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await;
                let fast = polled.is_ready() && started.elapsed() <= LONG_HANDLER;
                // Counts quick jobs in a row, up to CALIBRATION.
                let _ = quick.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(if fast { (n + 1).min(CALIBRATION) } else { 0 })
                });
                match polled {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => job.await,
                }
            } else {
                job.await
            };
            let _ = replies.send(Reply::Result(id, outcome)).await;
        });
    }

    /// A job running on its own task finished.
    pub fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Starts waiting jobs while there is room; returns the first outcome of one that
    /// finished at once (call again until `None`).
    pub async fn pump(&mut self) -> Option<(JobId, Outcome)> {
        while self.running < self.concurrency {
            let (id, payload) = self.backlog.pop_front()?;
            if let Some(done) = self.start(id, payload).await {
                return Some(done);
            }
        }
        None
    }
}
