//! The runner of a handler that the connection task drives: every job starts on a task of
//! its own, up to `concurrency` at once, until the handler has proved quick; then the
//! connection task runs it itself, and a slow job there that follows another within
//! [`CALIBRATION`] jobs sends the jobs back to tasks of their own. See
//! [`serve`](mod@crate::serve) for the whole story.
//!
//! The connection hands a [`Runner`] each job it reads and answers the outcomes the runner
//! returns at once; jobs on tasks of their own report as [`Reply`]s on the runner's channel.
//! A job the coordinator cancels is answered at once, and its handler's future is dropped
//! (a waiting job's never starts).

use std::{
    collections::{HashMap, VecDeque},
    future::{poll_fn, Future},
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use distchan_protocol::{wire::Outcome, JobId};
use futures_util::{future::BoxFuture, FutureExt};
use tokio::{sync::mpsc, task::AbortHandle};

use crate::job::Reply;

/// A handler computing longer than this before it first waits, in two jobs less than
/// [`CALIBRATION`] jobs apart, is not run on the connection task any more.
pub const LONG_HANDLER: Duration = Duration::from_micros(50);

/// Quick jobs in a row, on tasks of their own, before the connection task runs the handler
/// itself.
pub const CALIBRATION: u32 = 64;

/// The answer to a job cancelled here (the coordinator drops it; it gives the credit back).
pub(crate) const CANCELLED: &str = "cancelled";

/// Job `id` with the answer of a job cancelled here.
pub(crate) fn cancelled(id: JobId) -> (JobId, Outcome) {
    (id, Err(CANCELLED.to_owned()))
}

/// A job handler as the connection task runs it: plain MessagePack in, the outcome out.
pub(crate) type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Boxes `handler`; a handler that panics is reported as that job's failure.
pub(crate) fn boxed<F, Fut>(handler: F) -> Handler
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

/// Runs a handler on every job the connection task hands it; see the [module docs](self)
/// and [`serve`](mod@crate::serve).
pub(crate) struct Runner {
    handler: Handler,
    concurrency: usize,
    /// Jobs running on tasks of their own, to stop one the coordinator cancels.
    running: HashMap<JobId, AbortHandle>,
    /// Jobs received while `concurrency` jobs were running.
    backlog: VecDeque<(JobId, Bytes)>,
    /// True while the connection task runs the handler itself.
    inline: bool,
    /// False when the options forbid running handlers on the connection task.
    may_inline: bool,
    /// When the last job run on the connection task in this round ended (the next one's
    /// start: one clock reading per job).
    last: Option<Instant>,
    /// Jobs run on the connection task since the last one that took longer than
    /// [`LONG_HANDLER`] (from [`CALIBRATION`] when it starts running them): a slow job
    /// while this is under [`CALIBRATION`] sends the jobs back to tasks of their own.
    since_slow: u32,
    /// Jobs in a row that finished quickly without waiting on tasks of their own; those
    /// tasks keep it up to date.
    quick: Arc<AtomicU32>,
    /// Where the jobs' own tasks report.
    replies: mpsc::Sender<Reply>,
}

/// A runner dropped (its connection ended for good, or its jobs are not this worker's any
/// more) stops the jobs it still runs.
impl Drop for Runner {
    fn drop(&mut self) {
        for handle in self.running.values() {
            handle.abort();
        }
    }
}

impl Runner {
    pub fn new(
        handler: Handler,
        concurrency: usize,
        may_inline: bool,
        replies: mpsc::Sender<Reply>,
    ) -> Self {
        Runner {
            handler,
            concurrency,
            running: HashMap::new(),
            backlog: VecDeque::new(),
            inline: false,
            may_inline,
            last: None,
            since_slow: CALIBRATION,
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
        if self.running.len() >= self.concurrency {
            self.backlog.push_back((id, payload));
            return None;
        }
        let mut job = (self.handler)(payload);
        if !self.inline && self.may_inline && self.quick.load(Ordering::Relaxed) == CALIBRATION {
            tracing::debug!("the handler is quick: the connection task runs it");
            self.inline = true;
            self.since_slow = CALIBRATION;
        }
        if self.inline {
            let started = self.last.unwrap_or_else(Instant::now);
            let polled = poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await;
            let ended = Instant::now();
            self.last = Some(ended);
            // A lone slow job is most often the machine stalling the thread (another
            // process took the core), not the handler: on two busy cores that came every
            // few thousand tiny jobs, and each time the next CALIBRATION jobs paid for
            // tasks of their own. So a slow job is forgiven unless another came within
            // CALIBRATION jobs before it: where slow jobs come that often, the handler is
            // slow. That runs at most one slow job more here than leaving at the first one
            // did (which came back after CALIBRATION quick ones).
            let slow = ended - started > LONG_HANDLER;
            if slow && self.since_slow < CALIBRATION {
                tracing::debug!("slow jobs again: jobs get tasks of their own until quick again");
                self.inline = false;
                self.quick.store(0, Ordering::Relaxed);
            }
            self.since_slow = if slow {
                0
            } else {
                self.since_slow.saturating_add(1)
            };
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
        let replies = self.replies.clone();
        let quick = self.quick.clone();
        let task = tokio::spawn(async move {
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
        self.running.insert(id, task.abort_handle());
    }

    /// Job `id`, which ran on its own task, finished: `false` when it was cancelled
    /// meanwhile (it is answered already; this outcome is to be dropped).
    pub fn finished(&mut self, id: JobId) -> bool {
        self.running.remove(&id).is_some()
    }

    /// The coordinator cancelled job `id`: a waiting job is dropped, and a running one's
    /// task is aborted (its handler's future dropped). Returns the answer to send for it,
    /// or `None` when it is not here (answered already, or run on the connection task).
    pub fn cancel(&mut self, id: JobId) -> Option<(JobId, Outcome)> {
        if let Some(task) = self.running.remove(&id) {
            task.abort();
        } else {
            let at = self
                .backlog
                .iter()
                .position(|(waiting, _)| *waiting == id)?;
            self.backlog.remove(at);
        }
        Some(cancelled(id))
    }

    /// Starts waiting jobs while there is room; returns the first outcome of one that
    /// finished at once (call again until `None`).
    pub async fn pump(&mut self) -> Option<(JobId, Outcome)> {
        while self.running.len() < self.concurrency {
            let (id, payload) = self.backlog.pop_front()?;
            if let Some(done) = self.start(id, payload).await {
                return Some(done);
            }
        }
        None
    }
}
