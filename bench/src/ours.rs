//! Our side of every comparison: typed jobs through the coordinator library and back.
//!
//! The coordinator runs in the bench process on 127.0.0.1; the workers are child processes
//! (`--worker` or `--swarm`). A producer task sends `n` jobs with [`JobSender::send`] and
//! then drops the sender ("no more work"); the bench task takes every outcome from
//! [`ResultReceiver::recv`], checking that each job id comes back exactly once with its own
//! payload. The clock runs from the first send to the last result; afterwards the result
//! channel must end (end-of-work), every worker must exit successfully and the coordinator
//! must report nothing unfinished.

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;
use distchan_coordinator::{Builder, Config, Coordinator, JobOutcome, JobSender, ResultReceiver};
use distchan_protocol::JobId;
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::{timeout, Instant};

use crate::{
    children::{cpu_secs, rss_bytes, Children},
    modes::Flavor,
    BenchResult, Latency, Throughput,
};

/// A running coordinator with its typed channels and its worker processes.
pub(crate) struct Setup<J = Bytes, R = Bytes> {
    /// The coordinator under test.
    pub coordinator: Coordinator,
    /// The job side; taken by the producer, whose end drops it.
    pub jobs: Option<JobSender<J>>,
    /// The result side.
    pub results: ResultReceiver<R>,
    /// The worker processes.
    pub children: Children,
}

/// Starts a coordinator from `builder`, starts worker processes with `spawn(url, children)`
/// and waits (up to `connect_within`) until `workers` workers have joined.
pub(crate) async fn setup<J: Serialize, R: DeserializeOwned>(
    builder: Builder,
    workers: usize,
    connect_within: Duration,
    spawn: impl FnOnce(&str, &mut Children) -> BenchResult<()>,
) -> BenchResult<Setup<J, R>> {
    let (coordinator, jobs, results) = builder.bind::<J, R>("127.0.0.1:0").await?;
    let mut children = Children::new("worker");
    spawn(&coordinator.ws_url(), &mut children)?;
    timeout(
        connect_within,
        children.watch(coordinator.wait_for_workers(workers)),
    )
    .await
    .map_err(|_| {
        format!(
            "only {} of {workers} workers joined within {connect_within:?}",
            coordinator.worker_count()
        )
    })??;
    Ok(Setup {
        coordinator,
        jobs: Some(jobs),
        results,
        children,
    })
}

/// Which of the jobs `first..first + n` had their outcome: each must have one once, and
/// no other job any.
pub(crate) struct Seen {
    first: u64,
    got: Vec<bool>,
}

impl Seen {
    /// None of the `n` jobs from id `first` on answered yet.
    pub fn new(first: u64, n: u64) -> Self {
        Seen {
            first,
            got: vec![false; n as usize],
        }
    }

    /// Job `id`'s outcome came: an error for a job not sent or answered before.
    pub fn mark(&mut self, id: JobId) -> BenchResult<()> {
        let slot =
            id.0.checked_sub(self.first)
                .and_then(|i| self.got.get_mut(i as usize))
                .ok_or_else(|| format!("outcome for unknown job {id}"))?;
        if std::mem::replace(slot, true) {
            return Err(format!("job {id} answered twice").into());
        }
        Ok(())
    }
}

/// Why a run stops when the result channel ends early.
pub(crate) const ENDED_EARLY: &str = "the result channel ended before every job had its outcome";

/// True when `got` is `want` (compared in full when small, by length and ends when large).
fn same_payload(got: &[u8], want: &[u8]) -> bool {
    const EDGE: usize = 64;
    if want.len() <= 4 * EDGE {
        return got == want;
    }
    got.len() == want.len()
        && got[..EDGE] == want[..EDGE]
        && got[got.len() - EDGE..] == want[want.len() - EDGE..]
}

impl Setup {
    /// Sends `n` jobs of `payload` and takes their `n` outcomes through `api`; the job side
    /// is closed afterwards.
    async fn pump(&mut self, payload: Bytes, n: u64, api: Api) -> BenchResult<Throughput> {
        let jobs = self.jobs.take().ok_or("the job side is already closed")?;
        let (cpu_here, cpu_children) = (cpu_secs(None), self.children.cpu_secs());
        let start = Instant::now();
        let sent = payload.clone();
        let producer = tokio::spawn(async move {
            match api {
                Api::OneAtATime => {
                    for _ in 0..n {
                        jobs.send(sent.clone()).await?;
                    }
                }
                Api::Batched => {
                    let mut left = n;
                    while left > 0 {
                        let m = left.min(BATCH as u64);
                        jobs.send_many((0..m).map(|_| sent.clone())).await?;
                        left -= m;
                    }
                }
            }
            BenchResult::Ok(())
        });
        let mut seen = Seen::new(0, n);
        let results = &mut self.results;
        let mut check = |outcome: JobOutcome<Bytes>| -> BenchResult<()> {
            seen.mark(outcome.id)?;
            let got = outcome
                .result
                .map_err(|e| format!("job {} failed: {e}", outcome.id))?;
            if !same_payload(&got, &payload) {
                return Err(format!("job {} came back altered", outcome.id).into());
            }
            Ok(())
        };
        let ended = ENDED_EARLY;
        self.children
            .watch(async {
                let mut got = 0;
                let mut batch = Vec::with_capacity(BATCH);
                while got < n {
                    match api {
                        Api::OneAtATime => check(results.recv().await.ok_or(ended)?)?,
                        Api::Batched => {
                            if results.recv_many(&mut batch, BATCH).await == 0 {
                                return Err(ended.into());
                            }
                            got += batch.len() as u64 - 1;
                            batch.drain(..).try_for_each(&mut check)?;
                        }
                    }
                    got += 1;
                }
                BenchResult::Ok(())
            })
            .await??;
        let secs = start.elapsed().as_secs_f64();
        let cpu_here = cpu_secs(None) - cpu_here;
        let cpu_children = self.children.cpu_secs() - cpu_children;
        producer.await??;
        Ok(Throughput {
            items: n,
            secs,
            cpu_here,
            cpu_children,
        })
    }
}

impl<J, R: DeserializeOwned> Setup<J, R> {
    /// Checks the end of the work: the result channel ends, every worker exits
    /// successfully, and the coordinator has nothing unfinished.
    pub(crate) async fn finish(self) -> BenchResult<()> {
        self.end(true).await
    }

    /// Like [`Setup::finish`]; with `exiting` false the children are not expected to exit
    /// by themselves (a browser) and are killed instead.
    pub(crate) async fn end(mut self, exiting: bool) -> BenchResult<()> {
        drop(self.jobs.take());
        match timeout(Duration::from_secs(30), self.results.recv()).await {
            Ok(None) => {}
            Ok(Some(o)) => return Err(format!("an extra outcome for job {}", o.id).into()),
            Err(_) => return Err("the result channel did not end after the last job".into()),
        }
        if exiting {
            self.children.wait_all(Duration::from_secs(30)).await?;
        }
        let report = self.coordinator.shutdown().await;
        if !report.unfinished.is_empty() {
            return Err(format!("{} jobs unfinished at shutdown", report.unfinished.len()).into());
        }
        Ok(())
    }
}

/// Arguments that start one `--worker` child.
pub(crate) fn worker_args(url: &str, capacity: u32, flavor: Flavor) -> Vec<String> {
    vec![
        "--worker".into(),
        url.into(),
        "--capacity".into(),
        capacity.to_string(),
        "--flavor".into(),
        match flavor {
            Flavor::Serve => "serve".into(),
            Flavor::Inline => "inline".into(),
            Flavor::Task => "task".into(),
            Flavor::Paced => "paced".into(),
        },
    ]
}

/// Settings of our in-process coordinators that the command line may change.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// One job per turn of the round-robin.
    pub strict_turns: bool,
    /// Every worker's window is its declared capacity.
    pub fixed_windows: bool,
    /// The window a worker starts with, when not the default.
    pub start_window: Option<usize>,
    /// Most jobs one turn carries, when not the default.
    pub max_turn: Option<usize>,
}

impl Tuning {
    /// Applies these settings to `config`.
    pub fn apply(self, config: &mut Config) {
        config.strict_turns |= self.strict_turns;
        config.adaptive_windows &= !self.fixed_windows;
        config.start_window = self.start_window.unwrap_or(config.start_window);
        config.max_turn = self.max_turn.unwrap_or(config.max_turn);
    }

    /// `defaults`, or the settings changed, for the report.
    pub fn describe(self) -> String {
        let mut changed = Vec::new();
        if self.strict_turns {
            changed.push("strict turns".to_string());
        }
        if self.fixed_windows {
            changed.push("fixed windows".to_string());
        }
        if let Some(n) = self.start_window {
            changed.push(format!("start window {n}"));
        }
        if let Some(n) = self.max_turn {
            changed.push(format!("turns of up to {n} jobs"));
        }
        match changed.is_empty() {
            true => "defaults".into(),
            false => changed.join(", "),
        }
    }
}

static TUNING: OnceLock<Tuning> = OnceLock::new();

/// Sets the settings of every coordinator the benchmark starts in-process (once, at start).
pub fn set_tuning(tuning: Tuning) {
    let _ = TUNING.set(tuning);
}

/// The settings [`set_tuning`] set.
pub fn tuning() -> Tuning {
    TUNING.get().copied().unwrap_or_default()
}

/// A configuration with the default settings (as tuned), except channel capacities when
/// `queue` is given (large payloads: a deep queue would only hold gigabytes of waiting jobs).
fn config(queue: Option<usize>) -> Config {
    let mut config = Config::default();
    tuning().apply(&mut config);
    if let Some(q) = queue {
        config.queue_capacity = q;
        config.result_capacity = q;
    }
    config
}

/// How the benchmark's program sends jobs and takes results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// [`JobSender::send_many`] in batches of 64, [`ResultReceiver::recv_many`]: what a
    /// program with a pile of work can use.
    ///
    /// [`JobSender::send_many`]: distchan_coordinator::JobSender::send_many
    /// [`ResultReceiver::recv_many`]: distchan_coordinator::ResultReceiver::recv_many
    Batched,
    /// [`JobSender::send`] and [`ResultReceiver::recv`], one job at a time.
    ///
    /// [`JobSender::send`]: distchan_coordinator::JobSender::send
    /// [`ResultReceiver::recv`]: distchan_coordinator::ResultReceiver::recv
    OneAtATime,
}

/// Jobs per `send_many` call, and most outcomes per `recv_many` call.
const BATCH: usize = 64;

/// `n` jobs of `payload` through `k` worker processes with credit window `w` each.
pub async fn throughput(
    k: usize,
    w: u32,
    flavor: Flavor,
    api: Api,
    payload: Bytes,
    n: u64,
    queue: Option<usize>,
) -> BenchResult<Throughput> {
    let builder = Coordinator::builder().config(config(queue));
    let mut s: Setup = setup(builder, k, Duration::from_secs(30), |url, c| {
        (0..k).try_for_each(|_| c.spawn(&worker_args(url, w, flavor)))
    })
    .await?;
    let t = s.pump(payload, n, api).await?;
    s.finish().await?;
    Ok(t)
}

/// One job at a time through one worker process: `warmup` unrecorded, then `n` recorded.
pub async fn latency(payload: Bytes, warmup: usize, n: usize) -> BenchResult<Latency> {
    let builder = Coordinator::builder().config(config(None));
    let mut s: Setup = setup(builder, 1, Duration::from_secs(30), |url, c| {
        c.spawn(&worker_args(url, 256, Flavor::Serve))
    })
    .await?;
    let jobs = s.jobs.take().ok_or("no job side")?;
    let mut samples = Vec::with_capacity(n);
    let results = &mut s.results;
    s.children
        .watch(async {
            for i in 0..warmup + n {
                let start = Instant::now();
                let id = jobs.send(payload.clone()).await?;
                let outcome = results.recv().await.ok_or("the result channel ended")?;
                if outcome.id != id || outcome.result.map_err(|e| e.to_string())? != payload {
                    return Err(format!("wrong outcome for job {id}").into());
                }
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            BenchResult::Ok(())
        })
        .await??;
    drop(jobs);
    s.finish().await?;
    Ok(Latency::from_samples(samples))
}

/// What one `--swarm` run measured.
pub struct SwarmRun {
    /// Resident memory of the bench process before the coordinator started.
    pub rss_before: u64,
    /// Highest resident memory seen while every worker was connected and idle.
    pub rss_idle: u64,
    /// Tiny jobs through all the connected workers.
    pub rate: Throughput,
    /// Workers that answered at least one of them.
    pub answered_by: usize,
    /// The most jobs one worker answered.
    pub most_answered: u64,
}

/// `connections` worker connections in one `--swarm` child, credit window `w` each: the
/// coordinator's memory while they sit idle (sampled for `settle`), then `n` jobs of
/// `payload` dispatched round-robin over all of them.
pub async fn swarm(
    connections: usize,
    w: u32,
    payload: Bytes,
    n: u64,
    settle: Duration,
    connect_within: Duration,
) -> BenchResult<SwarmRun> {
    let rss_before = rss_bytes()?;
    let builder = Coordinator::builder().config(config(None));
    let mut s: Setup = setup(builder, connections, connect_within, |url, c| {
        c.spawn(&[
            "--swarm".into(),
            url.into(),
            "--connections".into(),
            connections.to_string(),
            "--capacity".into(),
            w.to_string(),
        ])
    })
    .await?;
    let mut rss_idle = rss_bytes()?;
    let until = Instant::now() + settle;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.children.check_alive()?;
        rss_idle = rss_idle.max(rss_bytes()?);
    }
    if s.coordinator.worker_count() != connections {
        return Err(format!(
            "{} of {connections} idle workers still connected after {settle:?}",
            s.coordinator.worker_count()
        )
        .into());
    }
    let rate = s.pump(payload, n, Api::OneAtATime).await?;
    let done: Vec<u64> = s
        .coordinator
        .workers()
        .await
        .iter()
        .map(|w| w.done)
        .collect();
    s.finish().await?;
    Ok(SwarmRun {
        rss_before,
        rss_idle,
        rate,
        answered_by: done.iter().filter(|&&d| d > 0).count(),
        most_answered: done.into_iter().max().unwrap_or(0),
    })
}
