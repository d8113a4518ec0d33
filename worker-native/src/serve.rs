//! Running a handler on every job with bounded concurrency.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use bytes::Bytes;
use distchan_protocol::{payload, tasks, Error, Result};
use futures_util::FutureExt;
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinSet,
};

use crate::{
    connection::{connect_raw, RawJob, Reply},
    Options,
};

/// Connects to `url` and answers every job with `handler`, running up to
/// `options.concurrency` jobs at once, until end-of-work.
///
/// A handler error becomes that job's failed result; a handler that panics is reported as
/// a failed result too, and the worker carries on.
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

/// Connects to `url` and runs the built-in task the coordinator names in its welcome
/// ([`distchan_protocol::tasks`]), on blocking threads, until end-of-work.
pub async fn serve_builtin(url: &str, options: Options) -> Result<()> {
    let (jobs, replies, client) = connect_raw(url, &options).await?;
    let Some(task) = client.task().map(str::to_owned) else {
        client.drain();
        let _ = client.done().await;
        return Err(Error::Config(
            "the coordinator names no built-in task".into(),
        ));
    };
    if !tasks::ALL.contains(&task.as_str()) {
        client.drain();
        let _ = client.done().await;
        return Err(Error::Config(format!(
            "this worker does not know the task `{task}`"
        )));
    }
    let heavy = tasks::is_cpu_heavy(&task);
    let task: Arc<str> = task.into();
    run(jobs, replies, options.concurrency, move |plain: Bytes| {
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
    })
    .await;
    client.done().await
}

/// Like [`serve`] but with untyped payloads: the handler gets and returns plain MessagePack.
pub async fn serve_raw<F, Fut>(url: &str, options: Options, handler: F) -> Result<()>
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Bytes, String>> + Send + 'static,
{
    let (jobs, replies, client) = connect_raw(url, &options).await?;
    run(jobs, replies, options.concurrency, handler).await;
    client.done().await
}

/// Feeds every job to `handler`, at most `concurrency` at a time, and sends each outcome.
///
/// A handler that finishes without waiting (a plain computation) is run inline; only jobs
/// whose handler waits get a task of their own.
async fn run<F, Fut>(
    mut jobs: mpsc::Receiver<RawJob>,
    replies: mpsc::Sender<Reply>,
    concurrency: usize,
    handler: F,
) where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Bytes, String>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    while let Some(job) = jobs.recv().await {
        // The permit is taken before the handler starts, so no more than `concurrency`
        // handlers ever run at once.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let mut outcome = Box::pin(AssertUnwindSafe(handler(job.payload)).catch_unwind());
        if let Some(done) = (&mut outcome).now_or_never() {
            drop(permit);
            if replies
                .send(Reply::Result(job.id, panic_to_error(done)))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let replies = replies.clone();
        running.spawn(async move {
            let _ = replies
                .send(Reply::Result(job.id, panic_to_error(outcome.await)))
                .await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

fn panic_to_error(
    result: std::thread::Result<std::result::Result<Bytes, String>>,
) -> std::result::Result<Bytes, String> {
    result.unwrap_or_else(|_| Err("the job's handler panicked".to_owned()))
}
