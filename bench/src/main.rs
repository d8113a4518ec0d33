//! `distchan-bench`: measures distchan end to end against the ceiling of its transport.
//!
//! ```text
//! cargo run --release -p distchan-bench -- [--quick] [--json PATH]
//! ```
//!
//! One run prints a table and writes a JSON file (default `target/bench/results.json`).
//! Everything happens on 127.0.0.1. The coordinator (and the echo server of the ceiling) runs
//! in the bench process; every worker or client is a child process: the bench binary
//! re-executed in a helper mode ([`modes`]), so the command needs nothing built beforehand
//! and the workers run the `distchan-worker` library, not a copy of it.
//!
//! # Measurements
//!
//! - **Tiny jobs** ([`ours::throughput`]): `n` jobs whose encoded payload is 16 bytes,
//!   sent with `JobSender::send` -> coordinator -> K `--worker` processes (K = 1, 2, 4) that
//!   answer with the payload itself through `distchan_worker::serve_raw` -> taken from
//!   `ResultReceiver::recv` and checked (every id exactly once, payload intact). Credit
//!   window W = 256 and W = 32. Two extra rows (K=2, W=256): one sends with
//!   `JobSender::send_many` in batches and takes results with `ResultReceiver::recv_many`;
//!   one uses a worker that reads its job stream itself (one loop on `connect_raw`), the
//!   stream API's cost beside `serve`'s.
//! - **Ceiling** ([`echo::throughput`]): the same number of messages, each the size of the
//!   coordinator's job frame for that payload, through plain tokio-tungstenite: server in
//!   this process, K `--echo-client` processes, W unanswered per connection, many frames
//!   fed per flush on both sides, reading and writing at the same time. Every throughput
//!   figure, ours and the echo's, is the median of three runs. The ratio distchan / echo is the
//!   figure that matters.
//! - **Large payloads**: 64 KiB (W=16) and 1 MiB (W=4) payloads through the coordinator and
//!   K=2 workers, as payload bytes per second one way; the echo of the same frames beside it.
//! - **Latency** ([`ours::latency`], [`echo::latency`]): one 16-byte job at a time through
//!   one worker (send, wait for the result, repeat), p50 and p99 of the round trip after a
//!   warm-up; the same with one echo connection; the ratio. Measured twice: driven from the
//!   runtime's main thread (the body of `#[tokio::main]`), where the result's hand-over
//!   from a connection's task crosses threads (the job is written by the sender, as no
//!   other is out), and from a task of the runtime.
//! - **Task modules** ([`tasks::throughput`]): tiny jobs (a 14-letter string) through the
//!   built-in `capitalize` task, then the same work as a task module, as a WASI command (a
//!   fresh instance per job) and as a reactor (one instance, many jobs); K=2 worker
//!   processes of one thread each, W=256. Each row beside the built-in one.
//! - **Tab** ([`tab::throughput`]): the same tiny jobs computed by one headless-Chromium tab
//!   with the volunteer page (two Web Worker threads): the built-in task, then the module as
//!   a command and as a reactor. Skipped, with the reason, when the page's wasm package or
//!   Chromium is missing (unless asked for with `--only tab`).
//! - **Pipe mode** ([`pipe::throughput`]): the real `distchan-coordinator` binary in
//!   `pipe` mode reads a file of 1,000,000 JSON lines (100,000 with `--quick`), each a short
//!   word as a JSON string, sends them through the built-in `capitalize` task to the two
//!   local `distchan-worker` processes it starts (`--local-workers 2`), and writes the
//!   results to a file; once without and once with `--journal`. Lines per second from spawn
//!   to exit, median of three runs each (one each with `--quick`), and the ratio with / without
//!   the journal. Needs both binaries next to the bench binary (`cargo build --release
//!   --bins`); skipped, with the reason, when either is missing (unless asked for with
//!   `--only pipe`).
//! - **Shared queue** ([`queue::throughput`]): the same kind of JSON lines, 200,000 (50,000
//!   with `--quick`), through coordinators sharing one durable queue on NATS JetStream: a
//!   fresh `nats-server -js` per run, then one `distchan-coordinator serve` with two local
//!   workers, or two with one each; `distchan-submit` publishes the lines and collects the
//!   results, timed from spawn to exit. Beside them, pipe mode (the in-process queue) on the
//!   same input. Jobs per second, median of three runs each (one each with `--quick`), the
//!   ratio to in-process, and the CPU per job of the broker, of the coordinators with their
//!   workers, and of `distchan-submit`. Needs the binaries next to the bench binary and
//!   `nats-server`; skipped, with the reason, when one is missing (unless asked for with
//!   `--only queue`).
//! - **Scale** ([`ours::swarm`]): a `--swarm` child opens 10,000 worker connections (1,000
//!   with `--quick`), each completing the hello handshake. While they sit idle (through a
//!   heartbeat period), this process's resident memory (`VmRSS`) is sampled; the increase
//!   over the figure before the coordinator started is what the coordinator holds for them.
//!   Then tiny jobs are dispatched round-robin over *all* of those workers (each answers
//!   its own jobs inline) and, with a fresh coordinator, over 10 workers in the same kind of
//!   child process; the ratio of the two dispatch rates. Both processes raise their
//!   open-file limit to the hard limit. This runs first, so the memory figure is not
//!   blurred by memory that earlier measurements freed but the allocator kept.
//! - **Fleet** ([`fleet::run`]): 1,000 tiny jobs (300 with `--quick`) through one worker
//!   that takes 1 ms per job and one that takes 10 ms, one job at a time each, both
//!   declaring 256: the run's length and its last tenth with adaptive windows and with
//!   fixed ones (both without speculation), and with fixed windows and straggler
//!   speculation (adaptive windows already balance the end, leaving it little to cut).
//!
//! `--strict-turns`, `--fixed-windows`, `--start-window N` and `--max-turn N` change those
//! settings of every coordinator the bench starts in-process (not the fleet's, which
//! compares windows itself, nor pipe mode's binary).
//!
//! Every measurement has a deadline and fails the run when it passes; children are killed
//! when their guard ([`children::Children`]) drops, whatever the reason, and die with the
//! bench process otherwise (`PR_SET_PDEATHSIG`). A missing, duplicated or altered result,
//! a worker that fails, or a job left unfinished fails the run (exit status 1). There are
//! no pass/fail thresholds on the figures: the comparison with the targets the README states
//! is printed (met / missed) for people to read. `--only tiny,latency` measures only those
//! parts (`scale`, `tiny`, `tasks`, `tab`, `pipe`, `queue`, `fleet`, `large`, `latency`).
//!
//! `--quick` runs the same measurements with small counts (well under a minute) for CI.

mod children;
mod cores;
mod echo;
mod fleet;
mod modes;
mod ours;
mod pipe;
mod queue;
mod report;
mod tab;
mod tasks;

use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

use bytes::Bytes;
use clap::Parser;
use distchan_protocol::{
    payload,
    wire::{self, Job, ToWorker},
    JobId,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    modes::Flavor,
    ours::Api,
    report::{
        per_s, Caller, Cpu, FleetRow, LargeRow, LatencyRow, PipeRow, QueueRow, Report, ScaleRow,
        TabRow, TaskRow, TinyRow,
    },
    tasks::Work,
};

/// The error type of the whole benchmark: any error, with a readable message.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BenchError`].
pub type BenchResult<T> = Result<T, BenchError>;

/// Measure distchan end to end against plain tokio-tungstenite on this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Small counts (1,000 idle workers instead of 10,000): well under a minute, for CI.
    #[arg(long)]
    quick: bool,
    /// Measure only these parts (comma-separated); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where to write the JSON results (default: target/bench/results.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Our in-process coordinators keep one job per turn of the round-robin
    /// (`Config::strict_turns`).
    #[arg(long)]
    strict_turns: bool,
    /// Our in-process coordinators give every worker its declared capacity at once
    /// (`Config::adaptive_windows` off).
    #[arg(long)]
    fixed_windows: bool,
    /// Our in-process coordinators start each worker's window at this many jobs
    /// (`Config::start_window`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    start_window: Option<u32>,
    /// Our in-process coordinators let one turn carry up to this many jobs
    /// (`Config::max_turn`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_turn: Option<u32>,
    /// Jobs of each dispatch-rate run of the scale measurement (default: 20 per idle
    /// worker); more jobs per worker let the windows grow to what the workers keep up with.
    #[arg(long)]
    scale_jobs: Option<u64>,
    /// Helper mode: be one worker of the coordinator at this URL.
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Helper mode: be one echo client of the server at this URL.
    #[arg(long, hide = true)]
    echo_client: Option<String>,
    /// Helper mode: open `--connections` worker connections to this URL.
    #[arg(long, hide = true)]
    swarm: Option<String>,
    /// Helper modes: credit window of each worker connection.
    #[arg(long, hide = true, default_value_t = 256)]
    capacity: u32,
    /// Helper mode `--swarm`: how many connections.
    #[arg(long, hide = true, default_value_t = 1)]
    connections: usize,
    /// Helper mode `--worker --flavor paced`: milliseconds each job takes.
    #[arg(long, hide = true, default_value_t = 1)]
    job_ms: u64,
    /// Helper mode `--worker`: how the worker answers.
    #[arg(long, hide = true, value_enum, default_value_t = Flavor::Serve)]
    flavor: Flavor,
}

/// Throughput of one run: `items` (jobs or messages) in `secs` seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    /// Jobs or messages that made the round trip.
    pub items: u64,
    /// Seconds from the first send to the last answer.
    pub secs: f64,
    /// CPU seconds the bench process (coordinator or echo server, with the typed sender
    /// and receiver) used meanwhile.
    pub cpu_here: f64,
    /// CPU seconds the child processes (workers or echo clients) used meanwhile.
    pub cpu_children: f64,
}

impl Throughput {
    /// Microseconds of CPU per item in the bench process and in the children.
    pub fn cpu_us_per_item(&self) -> (f64, f64) {
        let n = self.items.max(1) as f64;
        (self.cpu_here * 1e6 / n, self.cpu_children * 1e6 / n)
    }
}

/// Round-trip times of one-at-a-time runs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Round trips recorded.
    pub samples: usize,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of `samples`.
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: usize| {
            samples
                .get((n * q / 100).min(n.saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / n.max(1) as f64;
        Latency {
            samples: n,
            p50_us: at(50),
            p99_us: at(99),
            mean_us: mean * 1e6,
        }
    }
}

/// Counts and limits of a run.
#[derive(Debug, Clone)]
struct Plan {
    /// `full` or `quick`.
    mode: &'static str,
    /// Tiny jobs per throughput run.
    tiny_jobs: u64,
    /// Jobs per run through a built-in task or a reactor module (a tenth of them through a
    /// command module, which starts an instance per job).
    task_jobs: u64,
    /// Jobs per run in one browser tab.
    tab_jobs: u64,
    /// Input lines per pipe-mode run of the coordinator binary.
    pipe_lines: u64,
    /// Jobs per run of one fast and one slow worker.
    fleet_jobs: u64,
    /// Pipe-mode runs with and without the journal, each (the median is kept).
    pipe_runs: usize,
    /// Input lines (jobs) per run through the shared queue, and per in-process run beside it.
    queue_jobs: u64,
    /// Runs through the shared queue with one and with two coordinators, and in-process,
    /// each (the median is kept).
    queue_runs: usize,
    /// Large payloads: (raw payload bytes, credit window, jobs).
    large: Vec<(usize, u32, u64)>,
    /// One-at-a-time round trips not recorded, then recorded.
    latency: (usize, usize),
    /// Workers connected in the scale measurement.
    idle_workers: usize,
    /// Jobs per dispatch-rate run of the scale measurement.
    scale_jobs: u64,
    /// How long the idle workers sit while memory is sampled (covers a 5 s heartbeat).
    settle: Duration,
    /// Deadline of each measurement.
    deadline: Duration,
}

impl Plan {
    /// The counts for `--quick` or a full run.
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                mode: "quick",
                tiny_jobs: 100_000,
                task_jobs: 50_000,
                tab_jobs: 10_000,
                pipe_lines: 100_000,
                fleet_jobs: 300,
                pipe_runs: 1,
                queue_jobs: 50_000,
                queue_runs: 1,
                large: vec![(64 << 10, 16, 2_000), (1 << 20, 4, 200)],
                latency: (100, 1_000),
                idle_workers: 1_000,
                scale_jobs: 20_000,
                settle: Duration::from_secs(1),
                deadline: Duration::from_secs(60),
            }
        } else {
            Plan {
                mode: "full",
                tiny_jobs: 1_000_000,
                task_jobs: 500_000,
                tab_jobs: 100_000,
                pipe_lines: 1_000_000,
                fleet_jobs: 1_000,
                pipe_runs: 3,
                queue_jobs: 200_000,
                queue_runs: 3,
                large: vec![(64 << 10, 16, 20_000), (1 << 20, 4, 2_000)],
                latency: (300, 5_000),
                idle_workers: 10_000,
                scale_jobs: 200_000,
                settle: Duration::from_secs(6),
                deadline: Duration::from_secs(180),
            }
        }
    }
}

/// Runs `fut` with the plan's deadline; `what` names it in progress lines and errors.
async fn measure<T>(
    plan: &Plan,
    what: &str,
    fut: impl Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    eprintln!("distchan-bench: {what} ...");
    match tokio::time::timeout(plan.deadline, fut).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("{what}: {e}").into()),
        Err(_) => Err(format!(
            "{what}: no result within the deadline of {:?}",
            plan.deadline
        )
        .into()),
    }
}

/// The median of three runs of `run`: a run lasts a fraction of a second (a few seconds in
/// a full run), so one run alone is at the mercy of a scheduling hiccup. Both sides of every
/// comparison, ours and the plain echo, are measured this way.
async fn median_of_three<F, Fut>(run: F) -> BenchResult<Throughput>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<Throughput>>,
{
    median_of(3, run).await
}

/// The median of `n` runs of `run` (the upper median for an even `n`; `n` is at least 1).
async fn median_of<F, Fut>(n: usize, mut run: F) -> BenchResult<Throughput>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<Throughput>>,
{
    let mut runs = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        runs.push(run().await?);
    }
    runs.sort_by(|a, b| per_s(a).total_cmp(&per_s(b)));
    Ok(runs[runs.len() / 2])
}

/// The median of three runs of `n` jobs of `payload` through `k` worker processes.
async fn ours_median(
    k: usize,
    w: u32,
    (flavor, api): (Flavor, Api),
    payload: &Bytes,
    n: u64,
    queue: Option<usize>,
) -> BenchResult<Throughput> {
    median_of_three(|| ours::throughput(k, w, flavor, api, payload.clone(), n, queue)).await
}

/// The median of three echo runs of `n` messages like `msg`.
async fn echo_median(k: usize, window: usize, msg: &Bytes, n: u64) -> BenchResult<Throughput> {
    median_of_three(|| echo::throughput(k, window, msg.clone(), n)).await
}

/// `raw` bytes of patterned data (a payload, or an echo message).
fn data(raw: usize) -> Bytes {
    (0..raw)
        .map(|i| (i * 31 + 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Size of the coordinator's job frame carrying `raw` as a typed payload, for job id `id`.
fn job_frame_len(raw: &Bytes, id: u64) -> BenchResult<usize> {
    let encoded = payload::to_msgpack(raw)?;
    Ok(wire::encode_to_worker(&ToWorker::Job(Job {
        id: JobId(id),
        payload: encoded,
    }))?
    .len())
}

/// The parts of the benchmark, which `--only` picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// Idle workers' memory, and dispatch over many workers against 10.
    Scale,
    /// Tiny jobs against the plain echo, K = 1, 2, 4 and W = 256, 32.
    Tiny,
    /// 64 KiB and 1 MiB payloads against the plain echo.
    Large,
    /// One job at a time against one echo at a time.
    Latency,
    /// A built-in task against the same work as a task module, under each ABI.
    Tasks,
    /// One headless-Chromium tab: the built-in task and the task modules.
    Tab,
    /// The coordinator binary's pipe mode on JSON lines, without and with the journal.
    Pipe,
    /// One and two coordinators sharing a NATS JetStream queue, against the in-process one.
    Queue,
    /// One fast and one slow worker, with adaptive windows against equal fixed ones.
    Fleet,
}

/// The whole benchmark, or the `sections` asked for.
async fn bench(plan: Plan, sections: &[Section], json: PathBuf) -> BenchResult<Report> {
    let started = Instant::now();
    let cross_core_start = cores::round_trip_ns();
    let wants = |s: Section| sections.is_empty() || sections.contains(&s);
    // The tiny job: 14 bytes of data, 16 bytes once encoded as a MessagePack `bin`.
    let tiny = data(14);
    let tiny_payload = payload::to_msgpack(&tiny)?.len();
    let tiny_frame = job_frame_len(&tiny, plan.tiny_jobs - 1)?;
    let tiny_msg = data(tiny_frame);

    // Scale first: see the module docs.
    let scale = match wants(Section::Scale) {
        true => Some(scale(&plan, &tiny).await?),
        false => None,
    };
    let tiny_rows = match wants(Section::Tiny) {
        true => tiny_jobs(&plan, &tiny, &tiny_msg).await?,
        false => Vec::new(),
    };
    let task_rows = match wants(Section::Tasks) {
        true => task_modules(&plan).await?,
        false => Vec::new(),
    };
    let tab_rows = match wants(Section::Tab) {
        // Not asked for by name: skipped (with the reason) where no tab can run.
        true if sections.is_empty() && tab::prerequisites().is_err() => {
            let why = tab::prerequisites().err().unwrap_or_default();
            eprintln!("distchan-bench: tab: skipped ({why})");
            Vec::new()
        }
        true => tab_jobs(&plan).await?,
        false => Vec::new(),
    };
    let pipe = match wants(Section::Pipe) {
        // Not asked for by name: skipped (with the reason) without the release binaries.
        true if sections.is_empty() && pipe::prerequisites().is_err() => {
            let why = pipe::prerequisites().err().unwrap_or_default();
            eprintln!("distchan-bench: pipe: skipped ({why})");
            None
        }
        true => Some(pipe_mode(&plan).await?),
        false => None,
    };
    let queue = match wants(Section::Queue) {
        // Not asked for by name: skipped (with the reason) without nats-server or the
        // release binaries.
        true if sections.is_empty() && queue::prerequisites().is_err() => {
            let why = queue::prerequisites().err().unwrap_or_default();
            eprintln!("distchan-bench: queue: skipped ({why})");
            Vec::new()
        }
        true => shared_queue(&plan).await?,
        false => Vec::new(),
    };
    let fleet = match wants(Section::Fleet) {
        true => Some(fleet_run(&plan).await?),
        false => None,
    };
    let large = match wants(Section::Large) {
        true => large(&plan).await?,
        false => Vec::new(),
    };
    let latency = match wants(Section::Latency) {
        true => latency(&plan, &tiny, &tiny_msg).await?,
        false => Vec::new(),
    };
    let mut report = Report {
        mode: plan.mode,
        settings: ours::tuning().describe(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cross_core_ns: [cross_core_start, cores::round_trip_ns()],
        tiny_payload_bytes: tiny_payload,
        tiny_frame_bytes: tiny_frame,
        tiny: tiny_rows,
        tasks: task_rows,
        tab: tab_rows,
        pipe,
        queue,
        fleet,
        large,
        latency,
        scale,
        targets: Vec::new(),
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    report.judge(plan.mode == "quick");
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

/// Memory of idle workers, then the dispatch rate over all of them and over 10.
async fn scale(plan: &Plan, tiny: &Bytes) -> BenchResult<ScaleRow> {
    let nofile = children::raise_nofile();
    if nofile < plan.idle_workers as u64 + 256 {
        return Err(format!(
            "the open-file limit is {nofile}, too low for {} connections (raise the hard \
             limit, e.g. `ulimit -Hn 65536` as root)",
            plan.idle_workers
        )
        .into());
    }
    let many = measure(
        plan,
        &format!(
            "scale: {} idle workers, then dispatch over them",
            plan.idle_workers
        ),
        ours::swarm(
            plan.idle_workers,
            256,
            tiny.clone(),
            plan.scale_jobs,
            plan.settle,
            plan.deadline / 2,
        ),
    )
    .await?;
    let ten = measure(
        plan,
        "scale: dispatch over 10 workers",
        ours::swarm(
            10,
            256,
            tiny.clone(),
            plan.scale_jobs,
            Duration::ZERO,
            Duration::from_secs(30),
        ),
    )
    .await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let delta = many.rss_idle.saturating_sub(many.rss_before);
    Ok(ScaleRow {
        workers: plan.idle_workers,
        w: 256,
        rss_before_mib: mib(many.rss_before),
        rss_idle_mib: mib(many.rss_idle),
        delta_mib: mib(delta),
        per_worker_kib: delta as f64 / 1024.0 / plan.idle_workers as f64,
        jobs: plan.scale_jobs,
        rate_10: per_s(&ten.rate),
        rate_many: per_s(&many.rate),
        ratio: per_s(&many.rate) / per_s(&ten.rate),
        cpu_10: Cpu::of(&ten.rate),
        cpu_many: Cpu::of(&many.rate),
        answered_by: many.answered_by,
        most_answered: many.most_answered,
    })
}

/// Tiny jobs for K = 1, 2, 4 and W = 256, 32, each beside the echo of the same frames, and
/// one row with the inline worker.
async fn tiny_jobs(plan: &Plan, tiny: &Bytes, tiny_msg: &Bytes) -> BenchResult<Vec<TinyRow>> {
    let mut rows = Vec::new();
    for w in [256u32, 32] {
        for k in [1usize, 2, 4] {
            let ours = measure(
                plan,
                &format!("tiny jobs K={k} W={w}"),
                ours_median(
                    k,
                    w,
                    (Flavor::Serve, Api::OneAtATime),
                    tiny,
                    plan.tiny_jobs,
                    None,
                ),
            )
            .await?;
            let echo = measure(
                plan,
                &format!("plain echo K={k} W={w}"),
                echo_median(k, w as usize, tiny_msg, plan.tiny_jobs),
            )
            .await?;
            rows.push(TinyRow {
                k,
                w,
                flavor: Flavor::Serve,
                api: Api::OneAtATime,
                jobs: plan.tiny_jobs,
                ours_per_s: per_s(&ours),
                echo_per_s: Some(per_s(&echo)),
                ratio: Some(per_s(&ours) / per_s(&echo)),
                ours_cpu: Cpu::of(&ours),
                echo_cpu: Some(Cpu::of(&echo)),
            });
        }
    }
    let echo = rows
        .iter()
        .find(|r| r.k == 2 && r.w == 256)
        .map_or((None, None), |r| (r.echo_per_s, r.echo_cpu));
    for (what, variant) in [
        ("send_many/recv_many", (Flavor::Serve, Api::Batched)),
        ("inline worker", (Flavor::Inline, Api::OneAtATime)),
    ] {
        let ours = measure(
            plan,
            &format!("tiny jobs K=2 W=256, {what}"),
            ours_median(2, 256, variant, tiny, plan.tiny_jobs, None),
        )
        .await?;
        rows.push(TinyRow {
            k: 2,
            w: 256,
            flavor: variant.0,
            api: variant.1,
            jobs: plan.tiny_jobs,
            ours_per_s: per_s(&ours),
            echo_per_s: echo.0,
            ratio: echo.0.map(|e| per_s(&ours) / e),
            ours_cpu: Cpu::of(&ours),
            echo_cpu: echo.1,
        });
    }
    Ok(rows)
}

/// Tiny jobs through the built-in capitalize task and through the same work as a task
/// module, command and reactor, K=2 worker processes of one thread each, W=256.
async fn task_modules(plan: &Plan) -> BenchResult<Vec<TaskRow>> {
    let mut rows: Vec<TaskRow> = Vec::new();
    for work in [Work::Builtin, Work::Command, Work::Reactor] {
        let n = match work {
            Work::Command => plan.task_jobs / 10,
            _ => plan.task_jobs,
        };
        let t = measure(
            plan,
            &format!("tiny jobs K=2 W=256, {}", work.describe()),
            median_of_three(|| tasks::throughput(work, 2, 256, n)),
        )
        .await?;
        let builtin = rows.first().map(|r| r.per_s);
        rows.push(TaskRow {
            work,
            k: 2,
            w: 256,
            jobs: n,
            per_s: per_s(&t),
            vs_builtin: builtin.map(|b| per_s(&t) / b),
            cpu: Cpu::of(&t),
        });
    }
    Ok(rows)
}

/// Tiny jobs in one browser tab: the built-in capitalize task, then the same work as a task
/// module, command and reactor.
async fn tab_jobs(plan: &Plan) -> BenchResult<Vec<TabRow>> {
    let mut rows: Vec<TabRow> = Vec::new();
    for work in [Work::Builtin, Work::Command, Work::Reactor] {
        let t = measure(
            plan,
            &format!(
                "one tab, {} threads of capacity {}, {}",
                tab::THREADS,
                tab::CAPACITY,
                work.describe()
            ),
            median_of_three(|| tab::throughput(work, plan.tab_jobs)),
        )
        .await?;
        let builtin = rows.first().map(|r| r.per_s);
        rows.push(TabRow {
            work,
            threads: tab::THREADS,
            jobs: plan.tab_jobs,
            per_s: per_s(&t),
            vs_builtin: builtin.map(|b| per_s(&t) / b),
            cpu: Cpu::of(&t),
        });
    }
    Ok(rows)
}

/// One fast and one slow worker, with adaptive windows and with equal fixed windows
/// (without speculation, to compare the windows alone), then with fixed windows and
/// speculation: the tail it cuts (adaptive windows leave little of one).
async fn fleet_run(plan: &Plan) -> BenchResult<FleetRow> {
    let mut runs = Vec::new();
    for (adaptive, speculation, what) in [
        (true, false, "adaptive windows"),
        (false, false, "fixed windows"),
        (false, true, "fixed windows and speculation"),
    ] {
        let what = format!(
            "one fast ({} ms) and one slow ({} ms) worker, {} jobs, {what}",
            fleet::FAST_MS,
            fleet::SLOW_MS,
            plan.fleet_jobs
        );
        let run = fleet::run(adaptive, speculation, plan.fleet_jobs);
        runs.push(measure(plan, &what, run).await?);
    }
    Ok(FleetRow {
        jobs: plan.fleet_jobs,
        fast_ms: fleet::FAST_MS,
        slow_ms: fleet::SLOW_MS,
        capacity: fleet::CAPACITY,
        adaptive: runs[0],
        fixed: runs[1],
        sooner: 1.0 - runs[0].secs / runs[1].secs,
        speculating: runs[2],
        tail_shorter: 1.0 - runs[2].tail_secs / runs[1].tail_secs,
    })
}

/// The coordinator binary in pipe mode, without and with the journal.
async fn pipe_mode(plan: &Plan) -> BenchResult<PipeRow> {
    pipe::prerequisites().map_err(|why| format!("pipe: {why}"))?;
    let input = pipe::Input::new(plan.pipe_lines)?;
    let mut rates = Vec::new();
    for (journal, what) in [(false, "without"), (true, "with")] {
        let t = measure(
            plan,
            &format!(
                "pipe mode, {} local workers, {} lines, {what} the journal",
                pipe::WORKERS,
                plan.pipe_lines
            ),
            median_of(plan.pipe_runs, || pipe::throughput(&input, journal)),
        )
        .await?;
        rates.push(t);
    }
    let (plain, journaled) = (rates[0], rates[1]);
    let us_per_line = |t: &Throughput| t.cpu_us_per_item().1;
    Ok(PipeRow {
        workers: pipe::WORKERS,
        lines: plan.pipe_lines,
        runs: plan.pipe_runs,
        per_s: per_s(&plain),
        journal_per_s: per_s(&journaled),
        ratio: per_s(&journaled) / per_s(&plain),
        cpu_us: us_per_line(&plain),
        journal_cpu_us: us_per_line(&journaled),
    })
}

/// The same JSON lines through the in-process queue (pipe mode), then through one and two
/// coordinators sharing a JetStream queue.
async fn shared_queue(plan: &Plan) -> BenchResult<Vec<QueueRow>> {
    queue::prerequisites().map_err(|why| format!("queue: {why}"))?;
    let input = pipe::Input::new(plan.queue_jobs)?;
    let local = measure(
        plan,
        &format!(
            "queue: in-process (pipe mode), {} local workers, {} lines",
            pipe::WORKERS,
            plan.queue_jobs
        ),
        median_of(plan.queue_runs, || pipe::throughput(&input, false)),
    )
    .await?;
    let us = |secs: f64| secs * 1e6 / plan.queue_jobs.max(1) as f64;
    let mut rows = vec![QueueRow {
        queue: "in-process",
        coordinators: 1,
        workers_each: pipe::WORKERS,
        jobs: plan.queue_jobs,
        runs: plan.queue_runs,
        per_s: per_s(&local),
        vs_in_process: None,
        broker_cpu_us: None,
        coordinators_cpu_us: us(local.cpu_children),
        submit_cpu_us: None,
        taken: Vec::new(),
    }];
    for coordinators in [1, 2] {
        let each = queue::WORKERS / coordinators;
        let run = measure(
            plan,
            &format!(
                "queue: JetStream, {coordinators} coordinator(s) with {each} local worker(s) each, \
                 {} lines",
                plan.queue_jobs
            ),
            queue::median(plan.queue_runs, &input, coordinators),
        )
        .await?;
        rows.push(QueueRow {
            queue: "jetstream",
            coordinators,
            workers_each: each,
            jobs: plan.queue_jobs,
            runs: plan.queue_runs,
            per_s: per_s(&run.rate),
            vs_in_process: Some(per_s(&run.rate) / per_s(&local)),
            broker_cpu_us: Some(us(run.broker_cpu)),
            coordinators_cpu_us: us(run.rate.cpu_children),
            submit_cpu_us: Some(us(run.submit_cpu)),
            taken: run.taken,
        });
    }
    Ok(rows)
}

/// 64 KiB and 1 MiB payloads through two workers, beside the echo of the same frames.
async fn large(plan: &Plan) -> BenchResult<Vec<LargeRow>> {
    let mut rows = Vec::new();
    for &(raw, w, n) in &plan.large {
        let payload = data(raw);
        let queue = Some((4 * w as usize).max(16));
        let ours = measure(
            plan,
            &format!("{raw}-byte payloads K=2 W={w}"),
            ours_median(2, w, (Flavor::Serve, Api::OneAtATime), &payload, n, queue),
        )
        .await?;
        let msg = data(job_frame_len(&payload, n - 1)?);
        let echo = measure(
            plan,
            &format!("plain echo of {}-byte frames K=2 W={w}", msg.len()),
            echo_median(2, w as usize, &msg, n),
        )
        .await?;
        rows.push(LargeRow {
            payload_bytes: raw,
            k: 2,
            w,
            jobs: n,
            ours_bytes_per_s: per_s(&ours) * raw as f64,
            echo_bytes_per_s: per_s(&echo) * raw as f64,
            ratio: per_s(&ours) / per_s(&echo),
            ours_cpu: Cpu::of(&ours),
            echo_cpu: Cpu::of(&echo),
        });
    }
    Ok(rows)
}

/// One job at a time through one worker, beside one echo at a time: driven from this
/// runtime's main thread, then from a task of the runtime.
async fn latency(plan: &Plan, tiny: &Bytes, tiny_msg: &Bytes) -> BenchResult<Vec<LatencyRow>> {
    let (warmup, n) = plan.latency;
    let mut rows = Vec::new();
    for caller in [Caller::Main, Caller::Task] {
        let on = |what: &str| format!("{what}, from {}", caller.describe());
        let ours = measure(
            plan,
            &on("latency, one job at a time"),
            drive(caller, ours::latency(tiny.clone(), warmup, n)),
        )
        .await?;
        let echo = measure(
            plan,
            &on("latency, plain echo one at a time"),
            drive(caller, echo::latency(tiny_msg.clone(), warmup, n)),
        )
        .await?;
        rows.push(LatencyRow {
            caller,
            p50_ratio: ours.p50_us / echo.p50_us,
            p99_ratio: ours.p99_us / echo.p99_us,
            ours,
            echo,
        });
    }
    Ok(rows)
}

/// Runs `fut` from `caller`: right here (this is the runtime's main thread), or in a task.
async fn drive<T: Send + 'static>(
    caller: Caller,
    fut: impl Future<Output = BenchResult<T>> + Send + 'static,
) -> BenchResult<T> {
    match caller {
        Caller::Main => fut.await,
        Caller::Task => tokio::spawn(fut)
            .await
            .map_err(|e| format!("the measuring task failed: {e}"))?,
    }
}

/// `target/bench/results.json` beside the `target/release` folder holding this binary.
fn default_json() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bench").join("results.json")))
        .unwrap_or_else(|| PathBuf::from("target/bench/results.json"))
}

/// Runs a helper mode or the benchmark.
#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = if let Some(url) = &args.worker {
        modes::worker(url, args.capacity, args.flavor, args.job_ms).await
    } else if let Some(url) = &args.echo_client {
        modes::echo_client(url).await
    } else if let Some(url) = &args.swarm {
        children::raise_nofile();
        modes::swarm(url, args.connections, args.capacity).await
    } else if std::env::var_os(children::CHILD_ENV).is_some() {
        Err("a child of the benchmark never runs the benchmark itself".into())
    } else {
        ours::set_tuning(ours::Tuning {
            strict_turns: args.strict_turns,
            fixed_windows: args.fixed_windows,
            start_window: args.start_window.map(|n| n as usize),
            max_turn: args.max_turn.map(|n| n as usize),
        });
        let json = args.json.clone().unwrap_or_else(default_json);
        let mut plan = Plan::new(args.quick);
        plan.scale_jobs = args.scale_jobs.unwrap_or(plan.scale_jobs);
        match bench(plan, &args.only, json.clone()).await {
            Ok(report) => {
                println!("{}", report.table());
                println!("JSON: {}", json.display());
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distchan-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
