//! Running a handler on every job with bounded concurrency.
//!
//! Every job starts on a task of its own, and up to `concurrency` of those run at once, side
//! by side on every core, while the connection task keeps reading and answering heartbeats.
//! Those tasks time the handler: once it has finished [`CALIBRATION`] jobs in a row quickly
//! (within [`LONG_HANDLER`]) without waiting, the connection task runs it itself, and each
//! job is answered on the spot, in the same write as the jobs read with it, without
//! crossing a task. There every job is timed too, and a slow job that comes within
//! [`CALIBRATION`] jobs of another sends the jobs back to tasks of their own until the
//! handler has proved quick again. A lone slow job is taken for the machine stalling the
//! thread, which a busy machine does every few thousand jobs: it runs on the connection
//! task, which reads nothing and answers no heartbeat meanwhile, as did the first slow job
//! before each return to tasks. A job whose handler waits (for I/O, a timer) is moved to a
//! task of its own where it waits. [`Options::inline_handlers`](crate::Options::inline_handlers)
//! turns the connection task's part off: do so for a handler with heavy inputs far apart
//! (one in hundreds), which would hold up the connection for each of them.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use distchan_protocol::{payload, session::should_reconnect, tasks, Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use crate::{
    connection::{self, Carry, Client, Welcomed},
    module::Source,
    runner::{boxed, Handler, Runner},
    Options,
};

pub use crate::runner::{CALIBRATION, LONG_HANDLER};

/// Connects to `url` and answers every job with `handler`, running up to
/// `options.concurrency` jobs at once, until end-of-work. A lost connection is made again
/// (see [`Options::reconnect`]); the coordinator hands the jobs it lost to any worker.
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
            let job: J = payload::from_msgpack_shared(plain)
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
/// knows. A lost connection is made again, as with [`serve`](fn@serve).
///
/// ```no_run
/// # async fn demo() -> distchan_protocol::Result<()> {
/// distchan_worker::serve_task("ws://127.0.0.1:8080/ws", distchan_worker::Options::default()).await
/// # }
/// ```
pub async fn serve_task(url: &str, options: Options) -> Result<()> {
    reconnecting(url, &options, |conn, carry| {
        serve_task_on(url, conn, carry, &options)
    })
    .await
}

/// Runs the task the welcome of `conn` names until the connection ends (the jobs `carry`
/// left running, when the session was resumed); returns how it ended, and what it leaves
/// for the next connection.
async fn serve_task_on(
    url: &str,
    conn: Welcomed<crate::connection::Socket>,
    carry: Option<Carry>,
    options: &Options,
) -> (Result<()>, Option<Carry>) {
    if let Some(carry) = carry {
        return conn.resume(carry, options).end().await;
    }
    if let Some(spec) = conn.welcome().module.clone() {
        let source = Source {
            ws_url: url.to_owned(),
            spec,
            token: options.token.clone(),
            cache: options.module_cache.clone(),
            ca_certs: options.ca_certs.clone(),
        };
        let threads = options.concurrency.max(1);
        return conn.run_module(source, threads, options).end().await;
    }
    let Some(task) = conn.welcome().task.clone() else {
        let reason = "the coordinator names no task";
        conn.leave(reason).await;
        return (Err(Error::config(reason)), None);
    };
    if !tasks::ALL.contains(&task.as_str()) {
        let reason = format!("this worker does not know the task `{task}`");
        conn.leave(&reason).await;
        return (Err(Error::config(reason)), None);
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
    run(conn, handler, options).end().await
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
    let handler = boxed(handler);
    reconnecting(url, &options, |conn, carry| {
        let client = match carry {
            Some(carry) => conn.resume(carry, &options),
            None => run(conn, handler.clone(), &options),
        };
        client.end()
    })
    .await
}

/// Connects to `url` and hands each welcomed connection to `work`, until a connection ends
/// well, or ends with an error that connecting again cannot change
/// ([`should_reconnect`]), or
/// [`Options::reconnect`] is off; waits [`Options::backoff`]'s delays in between (a welcome
/// starts them over), and returns `Ok` when a drain is asked for during a wait.
///
/// A lost connection leaves its session and the jobs still running: the next hello asks to
/// resume the session, and when the coordinator still keeps it (its reconnect grace),
/// `work` gets them, to answer them on the new connection. Otherwise they are dropped (the
/// coordinator gave their jobs to others).
async fn reconnecting<F, Fut>(url: &str, options: &Options, mut work: F) -> Result<()>
where
    F: FnMut(Welcomed<crate::connection::Socket>, Option<Carry>) -> Fut,
    Fut: Future<Output = (Result<()>, Option<Carry>)>,
{
    let mut backoff = options.backoff.clone();
    let mut carry: Option<Carry> = None;
    loop {
        let resume = carry.as_ref().map(|c| &c.session);
        let err = match connection::open(url, options, resume).await {
            Err(e) => e,
            Ok(conn) => {
                let resumed = conn.welcome().resumed;
                let kept = carry.take().filter(|_| resumed);
                match work(conn, kept).await {
                    (Ok(()), _) => return Ok(()),
                    (Err(e), left) => {
                        backoff.reset();
                        carry = left;
                        e
                    }
                }
            }
        };
        if !options.reconnect || options.drain.is_cancelled() || !should_reconnect(&err) {
            return Err(err);
        }
        let delay = backoff.next_delay(random());
        tracing::warn!(
            error = %err,
            attempt = backoff.attempts(),
            "connecting again in {:.1} s",
            delay.as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = options.drain.cancelled() => return Ok(()),
        }
    }
}

/// A random number for the backoff's jitter (std's hasher keys are random per process and
/// change with every [`RandomState`](std::hash::RandomState)).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
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
