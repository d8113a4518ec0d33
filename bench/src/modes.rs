//! The helper modes the bench binary runs in as a child process.
//!
//! - `--worker URL`: one distchan worker built on the `distchan-worker` library, answering
//!   every job with its own payload (a trivial handler), or (`--flavor task`) running the
//!   task the coordinator names.
//! - `--echo-client URL`: one plain tokio-tungstenite client that sends every binary message
//!   straight back: the ceiling's counterpart of a worker.
//! - `--swarm URL --connections N`: N distchan worker connections in one process, each
//!   answering its jobs with their payload; idle until jobs come.

use std::sync::Arc;

use distchan_worker::{connect_raw, serve_raw, serve_task, Options, Reply};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinSet,
};
use tokio_tungstenite::{connect_async_with_config, tungstenite::Message};

use crate::BenchResult;

/// How a `--worker` child answers its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Through [`distchan_worker::serve_raw`]: what a user of `serve`/`serve_raw` (and the
    /// `distchan-worker` binary) gets: one spawned task per job, bounded concurrency.
    Serve,
    /// Through [`distchan_worker::connect_raw`], answering each job in one loop without a
    /// task per job: the cheapest worker the library allows, to tell worker-side overhead
    /// from coordinator-side overhead.
    Inline,
    /// Through [`distchan_worker::serve_raw`], one job at a time, each answered with its
    /// payload after sleeping `--job-ms`: a worker of known speed.
    Paced,
    /// Through [`distchan_worker::serve_task`], as the `distchan-worker` binary does: the
    /// built-in task or the task module the coordinator names, on one thread (one core per
    /// worker process).
    Task,
}

/// Options of a worker connection made by the bench.
fn options(capacity: u32) -> Options {
    Options {
        capacity,
        // The handler is trivial: let every job the credit window allows run at once.
        concurrency: capacity.max(1) as usize,
        agent: Some("distchan-bench".into()),
        ..Options::default()
    }
}

/// `--worker`: serves the coordinator at `url` with an echo handler until end-of-work
/// (`job_ms`: the `paced` flavor's sleep per job).
pub async fn worker(url: &str, capacity: u32, flavor: Flavor, job_ms: u64) -> BenchResult<()> {
    match flavor {
        Flavor::Paced => {
            let options = Options {
                concurrency: 1,
                ..options(capacity)
            };
            let pace = std::time::Duration::from_millis(job_ms);
            serve_raw(url, options, move |payload| async move {
                tokio::time::sleep(pace).await;
                Ok(payload)
            })
            .await?
        }
        Flavor::Serve => {
            serve_raw(url, options(capacity), |payload| async move { Ok(payload) }).await?
        }
        Flavor::Inline => answer_inline(url, &options(capacity)).await?,
        Flavor::Task => {
            let options = Options {
                concurrency: 1,
                // Kept in memory: a benchmark writes nothing to the user's cache folder.
                module_cache: None,
                ..options(capacity)
            };
            serve_task(url, options).await?
        }
    }
    Ok(())
}

/// One worker connection that answers every job with its payload, without a task per job.
async fn answer_inline(url: &str, options: &Options) -> BenchResult<()> {
    let (mut jobs, replies, client) = connect_raw(url, options).await?;
    while let Some(job) = jobs.recv().await {
        replies
            .send(Reply::Result(job.id, Ok(job.payload)))
            .await
            .map_err(|_| "the connection task ended while jobs were held")?;
    }
    drop(replies);
    client.done().await?;
    Ok(())
}

/// `--swarm`: opens `connections` worker connections (at most 64 handshakes at a time), each
/// answering its jobs inline, and returns once every one of them has ended (end-of-work).
pub async fn swarm(url: &str, connections: usize, capacity: u32) -> BenchResult<()> {
    let options = Arc::new(options(capacity));
    let url: Arc<str> = url.into();
    let handshakes = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for _ in 0..connections {
        let permit = handshakes.clone().acquire_owned().await?;
        let (url, options) = (url.clone(), options.clone());
        set.spawn(async move {
            let (mut jobs, replies, client) = connect_raw(&url, &options).await?;
            drop(permit);
            while let Some(job) = jobs.recv().await {
                if replies
                    .send(Reply::Result(job.id, Ok(job.payload)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            drop(replies);
            client.done().await
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    Ok(())
}

/// `--echo-client`: sends every binary message back until the server closes. A reader
/// hands messages to a writer that feeds all of those waiting and flushes once per batch;
/// both run at the same time.
pub async fn echo_client(url: &str) -> BenchResult<()> {
    let (ws, _) = connect_async_with_config(url, None, true).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let reader = async move {
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            if msg.is_close() || (msg.is_binary() && tx.send(msg).is_err()) {
                break;
            }
        }
        BenchResult::Ok(())
    };
    let writer = async {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            for m in batch.drain(..) {
                sink.feed(m).await?;
            }
            sink.flush().await?;
        }
        let _ = sink.close().await;
        BenchResult::Ok(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}
