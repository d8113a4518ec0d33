//! `distchan-coordinator pipe`: jobs as JSON lines from stdin or a file, results as JSON lines
//! on stdout, progress on stderr. The workers run a built-in task (`--task`) or the user's
//! task module (`--module`), which gets each line's JSON value on its standard input.
//!
//! Each output line is `{"id":N,"line":L,"value":V}` or `{"id":N,"line":L,"error":"..."}`,
//! where `L` is the input line the job came from. A line that is not JSON is reported on
//! stderr with its number and skipped (or ends the run with `--on-bad-line fail`); nothing
//! is dropped silently.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use distchan_coordinator::Error;
use distchan_protocol::{
    logging::{self, notice},
    tasks,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tracing::Level;

use crate::{announce, ServerArgs};

/// Options of pipe mode.
#[derive(Debug, Clone, Args)]
pub struct PipeArgs {
    /// The built-in task the workers run on each job (or give a task module with `--module`).
    #[arg(long, env = "DISTCHAN_TASK", value_parser = clap::builder::PossibleValuesParser::new(tasks::ALL))]
    pub task: Option<String>,
    /// File to read jobs from, one JSON value per line; `-` is standard input.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// Write results in input order instead of as they complete.
    #[arg(long)]
    pub ordered: bool,
    /// What to do with a line that is not JSON.
    #[arg(long, value_enum, default_value_t = OnBadLine::Skip)]
    pub on_bad_line: OnBadLine,
}

/// What to do with an input line that is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBadLine {
    /// Report it on stderr with its line number and go on.
    Skip,
    /// Report it and stop reading (jobs already sent still finish).
    Fail,
}

/// What the input reader found.
#[derive(Debug, Default)]
struct InputSummary {
    jobs: usize,
    bad_lines: usize,
    stopped_early: bool,
}

/// Runs pipe mode; `Ok(true)` when every line became a successful result.
pub async fn run(server: &ServerArgs, args: &PipeArgs) -> Result<bool, Error> {
    let task =
        match (&args.task, &server.module) {
            (Some(task), None) => task.as_str(),
            (None, Some(_)) => "",
            (Some(_), Some(_)) => return Err(Error::config(
                "--task and --module are exclusive: a run uses a built-in task or a task module",
            )),
            (None, None) => {
                return Err(Error::config(format!(
                    "name what the workers run: --task ({}) or --module FILE.wasm",
                    tasks::ALL.join(", ")
                )))
            }
        };
    let listener = tokio::net::TcpListener::bind(&server.listen).await?;
    let mut builder = server.builder(task)?;
    if args.ordered {
        builder = builder.configure(|c| c.ordered = true);
    }
    let (coordinator, jobs, mut results) =
        builder.listen::<serde_json::Value, rmpv::Value>(listener)?;
    let _local = announce(&coordinator, server, true);

    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<(u64, usize)>();
    let input = args.input.clone();
    let on_bad_line = args.on_bad_line;
    let reader = tokio::spawn(async move {
        let source: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input.as_os_str() == "-" {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(tokio::fs::File::open(&input).await?)
        };
        let mut lines = BufReader::new(source).lines();
        let mut summary = InputSummary::default();
        let mut number = 0usize;
        while let Some(line) = lines.next_line().await? {
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(value) => {
                    let id = jobs.send(value).await?;
                    let _ = lines_tx.send((id.0, number));
                    summary.jobs += 1;
                }
                Err(e) => {
                    summary.bad_lines += 1;
                    notice(
                        Level::WARN,
                        format_args!(
                            "line {number}: not valid JSON ({e}); {}",
                            match on_bad_line {
                                OnBadLine::Skip => "skipped",
                                OnBadLine::Fail => "stopping",
                            }
                        ),
                    );
                    if on_bad_line == OnBadLine::Fail {
                        summary.stopped_early = true;
                        break;
                    }
                }
            }
        }
        Ok::<_, Error>(summary) // dropping `jobs` here means "no more work"
    });

    let progress = Reporter::new();
    let mut line_of: HashMap<u64, usize> = HashMap::new();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut done, mut failed) = (0usize, 0usize);
    while let Some(outcome) = results.recv().await {
        let line = loop {
            if let Some(line) = line_of.remove(&outcome.id.0) {
                break Some(line);
            }
            match lines_rx.recv().await {
                Some((id, line)) => {
                    line_of.insert(id, line);
                }
                None => break None,
            }
        };
        let record = match outcome.result {
            Ok(value) => serde_json::json!({"id": outcome.id.0, "line": line, "value": value}),
            Err(e) => {
                failed += 1;
                serde_json::json!({"id": outcome.id.0, "line": line, "error": e.to_string()})
            }
        };
        done += 1;
        writeln!(stdout, "{record}")?;
        if done % 256 == 0 {
            stdout.flush()?;
        }
        progress.update(done, failed, None);
    }
    stdout.flush()?;
    let summary = match reader.await {
        Ok(result) => result?,
        Err(e) => return Err(Error::config_from("the input reader failed", e)),
    };
    progress.update(done, failed, Some(summary.jobs));
    progress.finish();
    notice(
        Level::INFO,
        format_args!(
            "pipe: {} jobs, {} results, {failed} failed, {} bad input lines{}",
            summary.jobs,
            done,
            summary.bad_lines,
            if summary.stopped_early {
                " (stopped at the first bad line)"
            } else {
                ""
            }
        ),
    );
    coordinator.shutdown().await;
    Ok(failed == 0 && summary.bad_lines == 0 && done == summary.jobs)
}

/// A progress bar when stderr is a terminal showing text logs, plain periodic lines
/// otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: std::cell::Cell<Instant>,
}

impl Reporter {
    fn new() -> Self {
        let bar = (std::io::stderr().is_terminal() && !logging::json()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {pos}/{len} jobs {wide_bar} {per_sec} ETA {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Reporter {
            bar,
            started: now,
            last_line: std::cell::Cell::new(now),
        }
    }

    fn update(&self, done: usize, failed: usize, total: Option<usize>) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                if let Some(total) = total {
                    bar.set_length(total as u64);
                }
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(2) {
                    self.last_line.set(Instant::now());
                    let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                    notice(
                        Level::INFO,
                        format_args!("progress: {done} results, {failed} failed, {rate:.1} jobs/s"),
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
