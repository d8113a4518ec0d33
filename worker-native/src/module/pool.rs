//! The threads that run a task module's jobs.
//!
//! wasmtime runs a job synchronously, for as long as the job's time limit allows, so jobs run
//! on threads of their own (one per unit of `concurrency`), never on the async runtime that
//! keeps the connection and its heartbeats going. The connection task hands over the jobs of
//! each batch it reads in one step ([`ModulePool::push`], then [`ModulePool::dispatch`]); each
//! thread takes its share of the waiting jobs, runs them (a reactor module on the thread's
//! own reused instance) and sends their outcomes back together.
//!
//! A job the coordinator cancels ([`ModulePool::cancel`]) leaves the pool if no thread took
//! it yet (it is answered at once), is skipped by the thread that took it, or has its run
//! stopped within an epoch tick (see [`Interrupt`]).
//!
//! The module is fetched and compiled while the first jobs already arrive: they wait in the
//! pool until it is ready. If it cannot be had (unreachable, not the announced hash, not a
//! valid module) the pool reports [`Done::Failed`] and the connection ends with that reason.

use std::{
    collections::{HashSet, VecDeque},
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
};

use bytes::Bytes;
use distchan_protocol::{
    module::{ModuleError, ModuleSpec},
    wire::Outcome,
    Error, JobId,
};
use tokio::sync::mpsc;

use super::{
    fetch,
    runtime::{Interrupt, Loaded},
};
use crate::runner::cancelled;

/// Most jobs a thread takes at once.
const MOST_TAKEN: usize = 64;

/// What the pool reports to the connection task.
#[derive(Debug)]
pub(crate) enum Done {
    /// Outcomes of finished jobs.
    Results(Vec<(JobId, Outcome)>),
    /// The module could not be loaded: no job will run.
    Failed(Error),
}

/// Where a pool gets its module from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The coordinator's WebSocket URL.
    pub ws_url: String,
    /// The module the welcome named.
    pub spec: ModuleSpec,
    /// The access token, sent with the download.
    pub token: Option<String>,
    /// Folder of cached modules.
    pub cache: Option<PathBuf>,
    /// Certificates trusted for an `https://` download, besides the webpki roots.
    pub ca_certs: Vec<crate::tls::CertificateDer<'static>>,
}

/// Threads running one module's jobs; see the [module docs](self).
pub(crate) struct ModulePool {
    shared: Arc<Shared>,
    /// Jobs of the batch being read, handed to the threads together.
    pending: Vec<(JobId, Bytes)>,
    done: mpsc::UnboundedReceiver<Done>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    threads: usize,
    /// Each thread's, to stop the job it runs.
    interrupts: Vec<Arc<Interrupt>>,
    /// True while `state.cancelled` is not empty (threads look there only then).
    any_cancelled: AtomicBool,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<(JobId, Bytes)>,
    module: Option<Arc<Loaded>>,
    closed: bool,
    /// Jobs the threads took and have not finished.
    taken: HashSet<JobId>,
    /// Jobs of `taken` that were cancelled: skipped if not started yet.
    cancelled: HashSet<JobId>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.jobs.clear();
        drop(state);
        self.work.notify_all();
    }
}

impl ModulePool {
    /// Starts `threads` threads and loads the module of `source` for them.
    pub fn start(source: Source, threads: usize) -> ModulePool {
        let threads = threads.max(1);
        let (tx, done) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            threads,
            interrupts: (0..threads).map(|_| Arc::default()).collect(),
            any_cancelled: AtomicBool::new(false),
        });
        let mut started = 0;
        // WASI's host functions finish their (in-memory) I/O on the runtime they find: enter
        // this one, or each call would go through a runtime of wasmtime-wasi's own.
        let runtime = tokio::runtime::Handle::current();
        for i in 0..threads {
            let (shared, tx, runtime) = (shared.clone(), tx.clone(), runtime.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("distchan-module-{i}"))
                .spawn(move || {
                    let _entered = runtime.enter();
                    work(&shared, i, &tx)
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "could not start a module thread"),
            }
        }
        if started == 0 {
            let _ = tx.send(Done::Failed(Error::config(
                "no thread could be started to run the task module",
            )));
        } else {
            let shared = shared.clone();
            tokio::spawn(async move {
                match load(&source, threads).await {
                    Ok(module) => {
                        tracing::info!(
                            module = %source.spec.name,
                            sha256 = %source.spec.short_hash(),
                            abi = %module.abi(),
                            "task module ready"
                        );
                        shared.lock().module = Some(module);
                        shared.work.notify_all();
                    }
                    Err(e) => {
                        shared.close();
                        let _ = tx.send(Done::Failed(e));
                    }
                }
            });
        }
        ModulePool {
            shared,
            pending: Vec::new(),
            done,
        }
    }

    /// Adds a job to the batch being read.
    pub fn push(&mut self, id: JobId, payload: Bytes) {
        self.pending.push((id, payload));
    }

    /// Hands the jobs of the batch read to the threads.
    pub fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let many = self.pending.len() > 1;
        self.shared.lock().jobs.extend(self.pending.drain(..));
        if many {
            self.shared.work.notify_all();
        } else {
            self.shared.work.notify_one();
        }
    }

    /// The coordinator cancelled job `id`: returns its answer when it has not reached a
    /// thread yet (it leaves the pool); otherwise the thread that took it skips it, or
    /// stops its run, and reports its outcome as for any job. `None` as well for a job
    /// the pool does not hold.
    pub fn cancel(&mut self, id: JobId) -> Option<(JobId, Outcome)> {
        if let Some(at) = self.pending.iter().position(|(job, _)| *job == id) {
            self.pending.remove(at);
            return Some(cancelled(id));
        }
        let mut state = self.shared.lock();
        if let Some(at) = state.jobs.iter().position(|(job, _)| *job == id) {
            state.jobs.remove(at);
            return Some(cancelled(id));
        }
        if state.taken.contains(&id) {
            state.cancelled.insert(id);
            self.shared.any_cancelled.store(true, Ordering::SeqCst);
            for interrupt in &self.shared.interrupts {
                interrupt.stop(id);
            }
        }
        None
    }

    /// The next report: outcomes of finished jobs, or the module's failure to load.
    pub async fn next(&mut self) -> Option<Done> {
        self.done.recv().await
    }
}

impl Drop for ModulePool {
    fn drop(&mut self) {
        // Threads finish the jobs they took, then end; queued jobs are dropped (the
        // coordinator hands them to other workers when the connection closes).
        self.shared.close();
    }
}

/// The module, from this process's compiled modules or fetched (or read from the cache) and
/// compiled.
async fn load(source: &Source, threads: usize) -> Result<Arc<Loaded>, Error> {
    let spec = &source.spec;
    if let Some(loaded) = Loaded::cached(spec) {
        return Ok(loaded);
    }
    let bytes = fetch::fetch(
        &source.ws_url,
        spec,
        source.token.as_deref(),
        source.cache.as_deref(),
        &source.ca_certs,
    )
    .await?;
    let spec = spec.clone();
    let compiled = tokio::task::spawn_blocking(move || Loaded::get(&spec, &bytes, threads)).await;
    match compiled {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(reason)) => Err(ModuleError::Invalid(reason).into()),
        Err(e) => Err(Error::config_from("compiling the module failed", e)),
    }
}

/// Thread `index`: takes its share of the waiting jobs, runs them (skipping those cancelled
/// meanwhile), reports their outcomes.
fn work(shared: &Shared, index: usize, done: &mpsc::UnboundedSender<Done>) {
    let interrupt = &shared.interrupts[index];
    let mut reactor = None;
    loop {
        let (module, batch) = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                if let (Some(module), false) = (&state.module, state.jobs.is_empty()) {
                    let module = module.clone();
                    let take = state
                        .jobs
                        .len()
                        .div_ceil(shared.threads)
                        .clamp(1, MOST_TAKEN);
                    let batch: Vec<_> = state.jobs.drain(..take).collect();
                    state.taken.extend(batch.iter().map(|(id, _)| *id));
                    break (module, batch);
                }
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for (id, payload) in batch {
            // Said before the check, so that a cancellation after it stops the run.
            interrupt.start(id);
            if shared.any_cancelled.load(Ordering::SeqCst) && shared.lock().cancelled.contains(&id)
            {
                outcomes.push(cancelled(id));
                continue;
            }
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                module.run(&mut reactor, &payload, interrupt)
            }));
            let outcome = ran.unwrap_or_else(|_| {
                reactor = None;
                Err("the worker's module runner failed on this job".to_owned())
            });
            outcomes.push((id, outcome));
        }
        interrupt.end();
        {
            let mut state = shared.lock();
            for (id, _) in &outcomes {
                state.taken.remove(id);
                state.cancelled.remove(id);
            }
            let any = !state.cancelled.is_empty();
            shared.any_cancelled.store(any, Ordering::SeqCst);
        }
        if done.send(Done::Results(outcomes)).is_err() {
            return;
        }
    }
}
