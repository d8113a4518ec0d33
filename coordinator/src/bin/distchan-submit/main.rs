//! `distchan-submit`: puts jobs (JSON lines) into the queue that several coordinators share
//! on NATS JetStream, and writes their results as JSON lines, exactly one per job.
//!
//! Each job is published with the id `RUN.LINE` (and that id as its message id, so a
//! publish retried after a broker hiccup is stored once). Results are read back from the
//! run's own result subject and kept first-come: a job computed twice (its coordinator died
//! after storing the result but before acknowledging the job) is written once. A job the
//! broker gave up on (delivered as often as the coordinators' `--max-retries` allows, every
//! coordinator holding it lost) gets an error line. When every job has its line, the run's results are removed
//! from the results stream (unless `--keep-results`).
//!
//! Output lines are `{"line":L,"value":V}` or `{"line":L,"error":"..."}`, `L` being the input
//! line the job came from; as they arrive, or in input order with `--ordered`. A line that is
//! not JSON, or larger than the broker takes in one message, is reported on stderr with its
//! number and skipped (exit status 2).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{
    consumer::{pull::OrderedConfig, DeliverPolicy},
    context::PublishAckFuture,
};
use bytes::Bytes;
use clap::Parser;
use distchan_coordinator::{
    jetstream::{self, Link, QueueArgs, QueueSettings, JOB_HEADER},
    Error,
};
use distchan_protocol::logging::{self, notice, LogArgs};
use futures_util::StreamExt;
use serde::{de::IgnoredAny, Deserialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tracing::Level;

/// Publishes not yet confirmed stored by the broker, at most.
const WINDOW: usize = 4096;

/// Put jobs (JSON lines) into a queue shared by distchan coordinators (NATS JetStream) and
/// write their results as JSON lines, exactly one per job.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    queue: QueueArgs,
    /// File to read jobs from, one JSON value per line; `-` is standard input.
    #[arg(long, default_value = "-")]
    input: PathBuf,
    /// File to append results to (never truncated); standard output when not given.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write results in input order instead of as they arrive.
    #[arg(long)]
    ordered: bool,
    /// This run's name (letters, digits, `-`, `_`); results go to the subject PREFIX.RUN
    /// [default: made from the time and the process id]
    #[arg(long)]
    run: Option<String>,
    /// Leave the run's results in the results stream when done.
    #[arg(long)]
    keep_results: bool,
    #[command(flatten)]
    log: LogArgs,
}

const AFTER_HELP: &str = "\
Exit status:
  0  every job answered without error
  1  could not run: a bad option, the queue unreachable, an unreadable input
  2  every job answered, but some with an error, or some input lines were not JSON";

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("distchan-submit: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            notice(Level::ERROR, format_args!("distchan-submit: {e}"));
            ExitCode::FAILURE
        }
    };
    runtime.shutdown_background();
    code
}

/// What the reader did with one input line, in input order.
enum Line {
    /// Published as a job, stored by the broker at this stream sequence.
    Job { line: u64, seq: u64 },
    /// Blank, or not JSON (reported): no result comes for it.
    Nothing,
}

/// The broker's word that a job was delivered as often as allowed without an answer.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

async fn run(cli: &Cli) -> Result<bool, Error> {
    // How often a job may be delivered is the coordinators' business (their consumer).
    let settings = cli.queue.settings(0);
    let run = match &cli.run {
        Some(run) if valid_run(run) => run.clone(),
        Some(run) => {
            return Err(Error::config(format!(
                "--run {run:?}: use letters, digits, '-' and '_' only"
            )))
        }
        None => default_run(),
    };
    let (link, streams) = Link::open(&settings).await?;
    let link = Arc::new(link);
    let subject = settings.results_subject(&run);
    // Listen before publishing: nothing said about this run is missed.
    let mut given_up = link
        .context()
        .client()
        .subscribe(settings.max_deliveries_subject())
        .await
        .map_err(jetstream::error)?;
    let mut results = read_results(&streams.results, &subject).await?;
    let mut renewed = link.watch();
    let mut reconnected = link.reconnects();
    let mut stale = false;
    notice(
        Level::INFO,
        format_args!(
            "submit: run {run}: jobs to {} on {}",
            settings.jobs_subject, settings.url
        ),
    );

    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let reader = tokio::spawn(publish_input(
        cli.input.clone(),
        link.clone(),
        settings.clone(),
        run.clone(),
        lines_tx,
    ));
    let output: Box<dyn Write + Send> = match &cli.output {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    Error::config(format!("cannot open the output {}: {e}", path.display()))
                })?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut out = Output::new(output, cli.ordered);
    let mut by_seq: HashMap<u64, u64> = HashMap::new();
    let mut jobs = 0u64;
    let mut reading = true;
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    while reading || out.answered() < jobs {
        tokio::select! {
            line = lines.recv(), if reading => match line {
                Some(Line::Job { line, seq }) => {
                    jobs += 1;
                    by_seq.insert(seq, line);
                    out.expect(line)?;
                }
                Some(Line::Nothing) => {}
                None => reading = false,
            },
            message = results.next() => match message {
                Some(Ok(message)) => {
                    let job = message.headers.as_ref().and_then(|h| h.get(JOB_HEADER)).map(|v| v.as_str().to_owned());
                    match job.as_deref().and_then(jetstream::line_of) {
                        Some(line) => out.result(line, &message.payload)?,
                        None => notice(Level::WARN, format_args!("submit: a message on {subject} names no job: ignored")),
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "reading results"),
                None => return Err(Error::connection("the results stream ended")),
            },
            // A fresh connection, or the broker back after a restart (which lost the
            // consumer reading the results: it lived in the broker's memory): read again.
            Ok(()) = renewed.changed() => {
                renewed.borrow_and_update();
                stale = true;
            },
            Ok(()) = reconnected.changed() => {
                reconnected.borrow_and_update();
                stale = true;
            },
            Some(advisory) = given_up.next() => {
                if let Ok(a) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
                    if let Some(&line) = by_seq.get(&a.stream_seq) {
                        let reason = format!("no result after {} deliveries: every coordinator holding the job was lost", a.deliveries);
                        out.result(line, &jetstream::result_payload(Err(&reason)))?;
                    }
                }
            },
            _ = flush.tick() => {
                out.flush()?;
                if stale {
                    // Tried again at each tick until the broker has its streams back.
                    match reopen(&link, &settings, &subject).await {
                        Ok((r, g)) => {
                            (results, given_up) = (r, g);
                            stale = false;
                        }
                        Err(e) => tracing::debug!(error = %e, "reading the results again"),
                    }
                }
            },
        }
    }
    let bad_lines = match reader.await {
        Ok(result) => result?,
        Err(e) => return Err(Error::config(format!("the input reader failed: {e}"))),
    };
    out.flush()?;
    if !cli.keep_results {
        if let Err(e) = streams.results.purge().filter(&subject).await {
            notice(
                Level::WARN,
                format_args!("submit: could not remove the run's results from the stream: {e}"),
            );
        }
    }
    notice(
        Level::INFO,
        format_args!(
            "submit: run {run}: {jobs} jobs, {} results, {} failed, {bad_lines} bad input lines, in {:.1} s",
            out.answered(),
            out.failed,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(out.failed == 0 && bad_lines == 0)
}

/// On the current connection: the run's results from the first (those already written
/// are dropped as duplicates), and the broker's word on jobs it gave up on.
async fn reopen(
    link: &Link,
    settings: &QueueSettings,
    subject: &str,
) -> Result<
    (
        async_nats::jetstream::consumer::pull::Ordered,
        async_nats::Subscriber,
    ),
    Error,
> {
    let js = link.context();
    let stream = js
        .get_stream(&settings.results_stream)
        .await
        .map_err(jetstream::error)?;
    let results = read_results(&stream, subject).await?;
    let given_up = js
        .client()
        .subscribe(settings.max_deliveries_subject())
        .await
        .map_err(jetstream::error)?;
    Ok((results, given_up))
}

/// The results of the run whose result subject is `subject`, from the first.
async fn read_results(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, Error> {
    stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(jetstream::error)?
        .messages()
        .await
        .map_err(jetstream::error)
}

/// Reads the input and publishes a job for each JSON line, telling the main loop, in input
/// order, what became of each line once the broker has stored it. A publish that fails (the
/// broker away) is tried again with the same message id, on a fresh connection if the
/// broker does not confirm it. Returns the number of bad lines.
async fn publish_input(
    input: PathBuf,
    link: Arc<Link>,
    settings: QueueSettings,
    run: String,
    lines: mpsc::UnboundedSender<Line>,
) -> Result<u64, Error> {
    let source: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&input).await.map_err(|e| {
            Error::config(format!("cannot read the input {}: {e}", input.display()))
        })?)
    };
    let mut reader = BufReader::with_capacity(1 << 16, source).lines();
    let mut window: VecDeque<(u64, Bytes, PublishAckFuture)> = VecDeque::new();
    let mut number = 0u64;
    let mut bad = 0u64;
    while let Some(text) = reader.next_line().await? {
        number += 1;
        if text.trim().is_empty() {
            let _ = lines.send(Line::Nothing);
            continue;
        }
        if let Err(e) = serde_json::from_str::<IgnoredAny>(&text) {
            bad += 1;
            notice(
                Level::WARN,
                format_args!("line {number}: not valid JSON ({e}); skipped"),
            );
            let _ = lines.send(Line::Nothing);
            continue;
        }
        let largest = link.context().client().server_info().max_payload;
        if text.len() + jetstream::HEADROOM > largest {
            bad += 1;
            notice(
                Level::WARN,
                format_args!("line {number}: {} bytes, more than the queue takes in one message ({largest} bytes: the broker's max_payload); skipped", text.len()),
            );
            let _ = lines.send(Line::Nothing);
            continue;
        }
        let payload = Bytes::from(text);
        let stored = publish(&link, &settings, &run, number, payload.clone()).await;
        window.push_back((number, payload, stored));
        if window.len() >= WINDOW {
            settle_oldest(&mut window, &link, &settings, &run, &lines).await;
        }
    }
    while !window.is_empty() {
        settle_oldest(&mut window, &link, &settings, &run, &lines).await;
    }
    Ok(bad)
}

/// Publishes job `line` until the broker takes it (it may be reconnecting).
async fn publish(
    link: &Link,
    settings: &QueueSettings,
    run: &str,
    line: u64,
    payload: Bytes,
) -> PublishAckFuture {
    let mut pause = Duration::from_millis(50);
    loop {
        let message = jetstream::job_message(run, line, payload.clone(), settings);
        match link
            .context()
            .send_publish(settings.jobs_subject.clone(), message)
            .await
        {
            Ok(stored) => return stored,
            Err(e) => {
                tracing::warn!(line, error = %e, "publishing a job failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits until the oldest publish in the window is stored (publishing it again while the
/// broker does not confirm it), and reports its line.
async fn settle_oldest(
    window: &mut VecDeque<(u64, Bytes, PublishAckFuture)>,
    link: &Link,
    settings: &QueueSettings,
    run: &str,
    lines: &mpsc::UnboundedSender<Line>,
) {
    let Some((line, payload, mut stored)) = window.pop_front() else {
        return;
    };
    loop {
        match stored.await {
            Ok(ack) => {
                let _ = lines.send(Line::Job {
                    line,
                    seq: ack.sequence,
                });
                return;
            }
            // Each confirmation's wait starts when it is awaited: publish every job of the
            // window again on the fresh connection rather than wait for each in turn.
            Err(e) => {
                tracing::warn!(line, error = %e, "a job not confirmed stored: publishing it and the {} after it again", window.len());
                link.renew().await;
                stored = publish(link, settings, run, line, payload.clone()).await;
                for (later, payload, stored) in window.iter_mut() {
                    *stored = publish(link, settings, run, *later, payload.clone()).await;
                }
            }
        }
    }
}

/// Results as output lines: first result per job only, as they come or in input order.
struct Output {
    out: BufWriter<Box<dyn Write + Send>>,
    /// Jobs answered (their line numbers).
    answered: HashSet<u64>,
    failed: u64,
    /// In input order: the job lines not yet written, and the results waiting for them.
    order: Option<(VecDeque<u64>, BTreeMap<u64, String>)>,
}

impl Output {
    fn new(out: Box<dyn Write + Send>, ordered: bool) -> Self {
        Output {
            out: BufWriter::with_capacity(1 << 16, out),
            answered: HashSet::new(),
            failed: 0,
            order: ordered.then(Default::default),
        }
    }

    fn answered(&self) -> u64 {
        self.answered.len() as u64
    }

    /// Job `line` was published (in input order).
    fn expect(&mut self, line: u64) -> std::io::Result<()> {
        if let Some((next, _)) = &mut self.order {
            next.push_back(line);
        }
        self.write_ready()
    }

    /// A result for job `line` (its payload as stored); a second one is dropped.
    fn result(&mut self, line: u64, payload: &[u8]) -> std::io::Result<()> {
        let Some(failed) = jetstream::result_failed(payload) else {
            notice(
                Level::WARN,
                format_args!("submit: the result of line {line} is not a result: ignored"),
            );
            return Ok(());
        };
        if !self.answered.insert(line) {
            return Ok(());
        }
        self.failed += u64::from(failed);
        // `{"value":V}` becomes `{"line":L,"value":V}`.
        let text = format!(
            "{{\"line\":{line},{}",
            String::from_utf8_lossy(&payload[1..])
        );
        match &mut self.order {
            None => writeln!(self.out, "{text}"),
            Some((_, waiting)) => {
                waiting.insert(line, text);
                self.write_ready()
            }
        }
    }

    /// In input order: writes the results whose turn has come.
    fn write_ready(&mut self) -> std::io::Result<()> {
        let Some((next, waiting)) = &mut self.order else {
            return Ok(());
        };
        while let Some(line) = next.front() {
            let Some(text) = waiting.remove(line) else {
                break;
            };
            writeln!(self.out, "{text}")?;
            next.pop_front();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn valid_run(run: &str) -> bool {
    !run.is_empty()
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A run name unique enough for one queue: the time in microseconds and the process id.
fn default_run() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("run-{micros:x}-{}", std::process::id())
}
