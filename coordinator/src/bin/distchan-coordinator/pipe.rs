//! `distchan-coordinator pipe`: jobs as JSON lines from stdin or a file, results as JSON lines
//! on stdout or appended to a file, progress on stderr. The workers run a built-in task
//! (`--task`) or the user's task module (`--module`), which gets each line's JSON value on
//! its standard input.
//!
//! Each output line is `{"id":N,"line":L,"value":V}` or `{"error":"...","id":N,"line":L}`,
//! where `L` is the input line the job came from and `N` the job's id in the run that
//! computed it. A line that is not JSON is reported on stderr with its number and skipped
//! (or ends the run with `--on-bad-line fail`); nothing is dropped silently.
//!
//! # Resumable runs
//!
//! With `--journal FILE` (which needs `--input FILE` and `--output FILE`), every result is
//! made durable in the journal (see [`distchan_coordinator::journal`]) *before* its line is
//! written to the output, in groups (one disk sync for many results). Killed at any moment
//! and started again with the same command, the run first makes the output agree with the
//! journal (a torn last line is cut; a result journaled but not yet written is written; a
//! line written but whose journal record was torn is journaled again), then skips every
//! input line that has its result and computes only the rest. The output ends with exactly
//! one result line per job line. A journal made for another input, task or module is
//! refused with the reason.
//!
//! # Interrupting
//!
//! The first Ctrl-C stops reading the input; the jobs already sent are finished and their
//! results written, and the run exits with code 130, saying how many input lines were not
//! read. A second Ctrl-C quits at once (with a journal, what was written stays, and the next
//! run resumes).

use std::{
    collections::VecDeque,
    fmt,
    fs::{File, OpenOptions},
    io::{BufRead, IsTerminal, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use distchan_coordinator::{
    journal::{Journal, Record},
    Error, JobSender,
};
use distchan_protocol::{
    logging::{self, notice},
    module, tasks,
};
use indicatif::{ProgressBar, ProgressStyle};
// Keys are job ids and line numbers, not chosen by anyone outside: a fast hash is enough.
use rustc_hash::FxHashMap as HashMap;
use serde::{de::IgnoredAny, Deserialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::{
    announce,
    json::{task_of, JsonText, ResultJson},
    shares, ServerArgs,
};

/// Results written (and journaled) per group.
const GROUP: usize = 4096;

/// Groups that may wait for the writer; those waiting when it is free are written (and
/// synced) together.
const WAITING_GROUPS: usize = 8;

/// Options of pipe mode.
#[derive(Debug, Clone, Args)]
pub struct PipeArgs {
    /// The built-in task the workers run on each job (or give a task module with `--module`).
    #[arg(long, env = "DISTCHAN_TASK", value_parser = clap::builder::PossibleValuesParser::new(tasks::ALL))]
    pub task: Option<String>,
    /// File to read jobs from, one JSON value per line; `-` is standard input.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// File to append results to (never truncated); standard output when not given.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Journal file that makes the run resumable: run the same command again after a crash
    /// and only the missing results are computed. Needs --input FILE and --output FILE.
    #[arg(long)]
    pub journal: Option<PathBuf>,
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

/// What became of one input line, in input order.
enum Line {
    /// A job was sent for it.
    Job { line: u64, id: u64 },
    /// Its result is in the journal but not in the output yet: written from there.
    Replay { line: u64, offset: u64 },
    /// Blank, not JSON, or already in the output: nothing to write.
    Nothing { line: u64 },
}

/// What the input reader found.
#[derive(Debug, Default)]
struct InputSummary {
    lines: u64,
    jobs: u64,
    replayed: u64,
    already_written: u64,
    bad_lines: u64,
    stopped_early: bool,
    interrupted: bool,
}

/// A result line to write, and the input line it answers.
struct Written {
    line: u64,
    text: String,
    failed: bool,
}

/// Results written so far.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, group: &[Written]) {
        self.done += group.len() as u64;
        self.failed += group.iter().filter(|w| w.failed).count() as u64;
    }
}

/// How a pipe run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every line became a successful result.
    Success,
    /// Every line was answered, but some results are errors (or some lines were not JSON).
    Failures,
    /// Ctrl-C: the input was not read to its end.
    Interrupted,
}

/// Runs pipe mode.
pub async fn run(server: &ServerArgs, args: &PipeArgs) -> Result<RunEnd, Error> {
    let task = task_of(server, args.task.as_deref())?;
    if args.journal.is_some() && (args.output.is_none() || args.input.as_os_str() == "-") {
        return Err(Error::config(
            "--journal needs --input FILE and --output FILE: a resumed run reads the same input \
             again and appends to the same output",
        ));
    }
    let resume = match &args.journal {
        Some(journal) => Some(Resume::prepare(server, args, journal)?),
        None => None,
    };
    let output: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(open_output(path)?),
        None => Box::new(std::io::stdout()),
    };
    let listener = tokio::net::TcpListener::bind(&server.listen).await?;
    let builder = server.builder(task)?;
    let (coordinator, jobs, mut results) = builder.listen::<JsonText, ResultJson>(listener)?;
    let _local = announce(&coordinator, server, true);

    let stop = CancellationToken::new();
    let interrupts = watch_interrupts(stop.clone());
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<Vec<Line>>();
    let (journal, skip, prior) = match resume {
        Some(r) => (Some(r.journal), r.skip, r.prior),
        None => (None, HashMap::default(), Tally::default()),
    };
    let reader = tokio::spawn(read_input(
        args.input.clone(),
        args.on_bad_line,
        jobs,
        lines_tx,
        skip,
        stop.clone(),
    ));

    let mut sink = Sink::start(journal, output);
    let progress = Reporter::new();
    let mut order = Order::new(args.ordered);
    let mut batch = Vec::with_capacity(GROUP);
    let mut group = Vec::with_capacity(GROUP);
    let mut tally = prior;
    let mut lines_open = true;
    loop {
        tokio::select! {
            biased;
            lines = lines_rx.recv(), if lines_open => match lines {
                Some(lines) => order.lines(lines, &sink, &mut group)?,
                None => lines_open = false,
            },
            n = results.recv_many(&mut batch, GROUP) => {
                if n == 0 {
                    break;
                }
                // Take what the reader reported meanwhile first, so results find their line.
                while let Ok(lines) = lines_rx.try_recv() {
                    order.lines(lines, &sink, &mut group)?;
                }
                for outcome in batch.drain(..) {
                    let answer = match outcome.result {
                        Ok(value) => Ok(value.0),
                        Err(e) => Err(e.to_string()),
                    };
                    order.result(outcome.id.0, answer, &mut group);
                }
            }
        }
        if !group.is_empty() && (group.len() >= GROUP || lines_rx.is_empty()) {
            tally.add(&group);
            sink.write(std::mem::take(&mut group))?;
            progress.update(tally, None);
        }
    }
    // Every job is answered: what the reader still reported (lines replayed from the
    // journal, or in ordered mode the lines after the last job) goes out too.
    while let Some(lines) = lines_rx.recv().await {
        order.lines(lines, &sink, &mut group)?;
    }
    order.finish(&mut group)?;
    tally.add(&group);
    sink.write(group)?;
    sink.close()?;
    interrupts.abort();
    let summary = match reader.await {
        Ok(result) => result?,
        Err(e) => return Err(Error::config(format!("the input reader failed: {e}"))),
    };
    let lines = summary.jobs + summary.replayed + summary.already_written;
    progress.update(tally, Some(lines));
    progress.finish();
    let report = coordinator.shutdown().await;
    notice(Level::INFO, summary.describe(tally));
    for line in shares::describe(&report.shares) {
        notice(Level::INFO, line);
    }
    Ok(if summary.interrupted {
        RunEnd::Interrupted
    } else if tally.failed == 0 && summary.bad_lines == 0 && tally.done == lines {
        RunEnd::Success
    } else {
        RunEnd::Failures
    })
}

impl InputSummary {
    fn describe(&self, tally: Tally) -> String {
        let mut s = format!(
            "pipe: {} jobs, {} results, {} failed, {} bad input lines",
            self.jobs + self.replayed + self.already_written,
            tally.done,
            tally.failed,
            self.bad_lines
        );
        if self.replayed + self.already_written > 0 {
            s += &format!(
                " ({} from the journal, {} computed now)",
                self.replayed + self.already_written,
                self.jobs
            );
        }
        if self.stopped_early {
            s += " (stopped at the first bad line)";
        }
        if self.interrupted {
            s += &format!(
                "; interrupted after input line {}: the lines after it were not read",
                self.lines
            );
        }
        s
    }
}

/// Opens `path` for appending (creating it), never truncating.
fn open_output(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::config(format!("cannot open the output {}: {e}", path.display())))
}

/// Reads the input a buffer at a time: the lines complete in it go to the workers in one
/// [`JobSender::send_many`] (one step through the scheduler, not one per line), and the
/// writer learns what became of each line, in order, in one message per buffer.
async fn read_input(
    input: PathBuf,
    on_bad_line: OnBadLine,
    jobs: JobSender<JsonText>,
    lines: mpsc::UnboundedSender<Vec<Line>>,
    skip: HashMap<u64, Skip>,
    stop: CancellationToken,
) -> Result<InputSummary, Error> {
    let source: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&input).await.map_err(|e| {
            Error::config(format!("cannot read the input {}: {e}", input.display()))
        })?)
    };
    let mut reader = BufReader::with_capacity(1 << 16, source);
    let mut lines_in = LineSplitter::default();
    let mut read = Reading {
        summary: InputSummary::default(),
        on_bad_line,
        skip,
        events: Vec::new(),
        texts: Vec::new(),
        slots: Vec::new(),
    };
    let mut eof = false;
    while !eof && !read.summary.stopped_early {
        // An interruption stops the reading even while it waits for input (a terminal, or
        // a producer that is still writing).
        let chunk = tokio::select! {
            biased;
            () = stop.cancelled() => {
                read.summary.interrupted = true;
                break;
            }
            chunk = reader.fill_buf() => chunk?,
        };
        eof = chunk.is_empty();
        let used = lines_in.split(chunk, eof, |text| read.line(text));
        reader.consume(used);
        if !read.texts.is_empty() {
            let ids = jobs.send_many(read.texts.drain(..)).await?;
            for (slot, id) in read.slots.drain(..).zip(ids) {
                if let Line::Job { id: job, .. } = &mut read.events[slot] {
                    *job = id.0;
                }
            }
        }
        if !read.events.is_empty() {
            let _ = lines.send(std::mem::take(&mut read.events));
        }
    }
    Ok(read.summary) // dropping `jobs` here means "no more work"
}

/// Cuts a byte stream into lines (without their `\n` or `\r\n`), holding a line that spans
/// buffers until its end arrives.
#[derive(Default)]
struct LineSplitter {
    /// The start of a line whose end is not read yet.
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Hands every line completed by `chunk` to `line` (the last one, without a newline,
    /// at the end of the input: `eof`) until it returns `false`; returns the bytes of
    /// `chunk` used up.
    fn split(&mut self, chunk: &[u8], eof: bool, mut line: impl FnMut(&[u8]) -> bool) -> usize {
        let mut used = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[used..end];
            used = end + 1;
            let go_on = if self.partial.is_empty() {
                line(trim_cr(piece))
            } else {
                self.partial.extend_from_slice(piece);
                let whole = std::mem::take(&mut self.partial);
                line(trim_cr(&whole))
            };
            if !go_on {
                return used;
            }
        }
        self.partial.extend_from_slice(&chunk[used..]);
        if eof && !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            line(trim_cr(&last));
        }
        chunk.len()
    }
}

/// `line` without the `\r` of a `\r\n` ending.
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The reader's state while it goes through one buffer of lines.
struct Reading {
    summary: InputSummary,
    on_bad_line: OnBadLine,
    /// Lines whose result is already durable.
    skip: HashMap<u64, Skip>,
    /// What became of each line of the buffer, in order.
    events: Vec<Line>,
    /// The jobs of the buffer's lines, in order.
    texts: Vec<JsonText>,
    /// Where each job's event is in `events` (its id is filled in once sent).
    slots: Vec<usize>,
}

impl Reading {
    /// Takes the next input line; `false` once the reading must stop (a bad line with
    /// `--on-bad-line fail`).
    fn line(&mut self, bytes: &[u8]) -> bool {
        self.summary.lines += 1;
        let number = self.summary.lines;
        let event = match self.skip.get(&number) {
            Some(Skip::Written) => {
                self.summary.already_written += 1;
                Line::Nothing { line: number }
            }
            Some(Skip::Journaled(offset)) => {
                self.summary.replayed += 1;
                Line::Replay {
                    line: number,
                    offset: *offset,
                }
            }
            None if bytes.trim_ascii().is_empty() => Line::Nothing { line: number },
            None => match json_text(bytes) {
                Ok(text) => {
                    self.summary.jobs += 1;
                    self.slots.push(self.events.len());
                    self.texts.push(text);
                    Line::Job {
                        line: number,
                        id: 0,
                    }
                }
                Err(e) => {
                    self.summary.bad_lines += 1;
                    notice(
                        Level::WARN,
                        format_args!(
                            "line {number}: {e}; {}",
                            match self.on_bad_line {
                                OnBadLine::Skip => "skipped",
                                OnBadLine::Fail => "stopping",
                            }
                        ),
                    );
                    if self.on_bad_line == OnBadLine::Fail {
                        self.summary.stopped_early = true;
                    }
                    Line::Nothing { line: number }
                }
            },
        };
        self.events.push(event);
        !self.summary.stopped_early
    }
}

/// The job of an input line, or why the line is not one JSON value.
fn json_text(bytes: &[u8]) -> Result<JsonText, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| format!("not valid JSON ({e})"))?;
    Ok(JsonText(text.to_owned()))
}

/// A job's result before its input line is known: the value as JSON text, or the error.
type Answer = Result<String, String>;

/// Where results go in which order: as they complete, or in input order.
struct Order {
    ordered: bool,
    /// Input line of each job sent and not yet answered, by job id.
    line_of: HashMap<u64, u64>,
    /// Results that arrived before the reader reported their job.
    early: HashMap<u64, Answer>,
    /// Ordered mode: every line from `front` on, in input order, with its result line once
    /// settled (`Some(None)`: a line that writes nothing).
    pending: VecDeque<Option<Option<Written>>>,
    /// Ordered mode: the input line of `pending`'s front.
    front: u64,
}

impl Order {
    fn new(ordered: bool) -> Self {
        Order {
            ordered,
            line_of: HashMap::default(),
            early: HashMap::default(),
            pending: VecDeque::new(),
            front: 1,
        }
    }

    /// The reader's account of some lines, in order.
    fn lines(
        &mut self,
        lines: Vec<Line>,
        sink: &Sink,
        out: &mut Vec<Written>,
    ) -> Result<(), Error> {
        lines
            .into_iter()
            .try_for_each(|line| self.line(line, sink, out))
    }

    /// The reader's account of one line.
    fn line(&mut self, line: Line, sink: &Sink, out: &mut Vec<Written>) -> Result<(), Error> {
        let (number, settled) = match line {
            Line::Job { line, id } => match self.early.remove(&id) {
                Some(answer) => (line, Some(Some(render(line, id, answer)))),
                None => {
                    self.line_of.insert(id, line);
                    (line, None)
                }
            },
            Line::Replay { line, offset } => (line, Some(Some(sink.replay(line, offset)?))),
            Line::Nothing { line } => (line, Some(None)),
        };
        self.settle(number, settled, out);
        Ok(())
    }

    /// The answer of job `id`.
    fn result(&mut self, id: u64, answer: Answer, out: &mut Vec<Written>) {
        match self.line_of.remove(&id) {
            Some(line) => self.settle(line, Some(Some(render(line, id, answer))), out),
            None => {
                self.early.insert(id, answer);
            }
        }
    }

    /// Line `line` is known (`None`: its result is still to come) or settled.
    fn settle(&mut self, line: u64, settled: Option<Option<Written>>, out: &mut Vec<Written>) {
        if !self.ordered {
            if let Some(Some(written)) = settled {
                out.push(written);
            }
            return;
        }
        let at = (line - self.front) as usize;
        if at >= self.pending.len() {
            self.pending.resize_with(at + 1, || None);
        }
        if settled.is_some() {
            self.pending[at] = settled;
        }
        // The settled lines at the front go out, in order.
        while let Some(Some(_)) = self.pending.front() {
            if let Some(Some(Some(written))) = self.pending.pop_front() {
                out.push(written);
            }
            self.front += 1;
        }
    }

    /// Every job is answered and every line reported: nothing may be left waiting.
    fn finish(&mut self, out: &mut Vec<Written>) -> Result<(), Error> {
        while let Some(line) = self.pending.pop_front() {
            match line {
                Some(Some(written)) => out.push(written),
                Some(None) => {}
                None => return Err(Error::config("a line never got its result")),
            }
        }
        if self.early.is_empty() && self.line_of.is_empty() {
            Ok(())
        } else {
            Err(Error::config(format!(
                "{} results without a line and {} lines without a result",
                self.early.len(),
                self.line_of.len()
            )))
        }
    }
}

/// The result line of input line `line`, answered by job `id`.
fn render(line: u64, id: u64, answer: Answer) -> Written {
    let (failed, value) = match answer {
        Ok(value) => (false, value),
        Err(message) => (true, serde_json::Value::String(message).to_string()),
    };
    let (mut ids, mut lines) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (id, number) = (ids.format(id), lines.format(line));
    let mut text = String::with_capacity(value.len() + id.len() + number.len() + 32);
    // {"id":N,"line":L,"value":V} or {"error":E,"id":N,"line":L}
    if failed {
        text.push_str(r#"{"error":"#);
        text.push_str(&value);
        text.push(',');
    } else {
        text.push('{');
    }
    text.push_str(r#""id":"#);
    text.push_str(id);
    text.push_str(r#","line":"#);
    text.push_str(number);
    if !failed {
        text.push_str(r#","value":"#);
        text.push_str(&value);
    }
    text.push('}');
    Written { line, text, failed }
}

/// Writes result lines: into the journal first (made durable), then into the output, in
/// groups, on a thread of its own so that the next group is gathered meanwhile.
struct Sink {
    groups: Option<std::sync::mpsc::SyncSender<Vec<Written>>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
    /// Shared with the writer thread, for replays.
    journal: Option<Arc<Journal>>,
}

impl Sink {
    fn start(journal: Option<Journal>, mut output: Box<dyn Write + Send>) -> Sink {
        let (groups, rx) = std::sync::mpsc::sync_channel::<Vec<Written>>(WAITING_GROUPS);
        let journal = journal.map(Arc::new);
        let writer_journal = journal.clone();
        let thread = std::thread::spawn(move || {
            let mut text = Vec::with_capacity(GROUP * 64);
            let mut records = Vec::with_capacity(GROUP);
            while let Ok(mut group) = rx.recv() {
                // Groups that came while the last one was written go together: one disk
                // sync for all of them.
                while let Ok(more) = rx.try_recv() {
                    group.extend(more);
                }
                text.clear();
                match &writer_journal {
                    Some(journal) => {
                        records.clear();
                        records.extend(group.into_iter().map(Written::into_record));
                        journal
                            .append(&records)
                            .map_err(|e| Error::config(e.to_string()))?;
                        for record in &records {
                            if let Ok(line) = &record.outcome {
                                text.extend_from_slice(line);
                                text.push(b'\n');
                            }
                        }
                    }
                    None => {
                        for w in &group {
                            text.extend_from_slice(w.text.as_bytes());
                            text.push(b'\n');
                        }
                    }
                }
                output.write_all(&text)?;
                output.flush()?;
            }
            Ok(())
        });
        Sink {
            groups: Some(groups),
            thread: Some(thread),
            journal,
        }
    }

    /// Hands a group over (waits while [`WAITING_GROUPS`] wait for the writer).
    fn write(&mut self, group: Vec<Written>) -> Result<(), Error> {
        if group.is_empty() {
            return Ok(());
        }
        match self.groups.as_ref().map(|g| g.send(group)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .close()
                .err()
                .unwrap_or_else(|| Error::config("the result writer stopped"))),
        }
    }

    /// The result line of input line `line`, journaled at `offset`.
    fn replay(&self, line: u64, offset: u64) -> Result<Written, Error> {
        let journal = self
            .journal
            .as_ref()
            .ok_or_else(|| Error::config("no journal to replay from"))?;
        let record = journal
            .read(offset)
            .map_err(|e| Error::config(e.to_string()))?;
        let text = match record.outcome {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(message) => message,
        };
        Ok(Written {
            line,
            failed: is_error_line(&text),
            text,
        })
    }

    /// Waits until every group is written.
    fn close(&mut self) -> Result<(), Error> {
        drop(self.groups.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::config("the result writer failed")),
            None => Ok(()),
        }
    }
}

impl Written {
    /// This line's journal record: keyed by its input line, the result line as it is.
    fn into_record(self) -> Record {
        Record::ok(self.line.to_le_bytes().to_vec(), self.text.into_bytes())
    }
}

/// True for a result line that reports an error.
fn is_error_line(text: &str) -> bool {
    text.starts_with(r#"{"error":"#)
}

/// How the reader treats a line whose result is already durable.
#[derive(Debug, Clone, Copy)]
enum Skip {
    /// In the output: nothing to do.
    Written,
    /// In the journal only: write it from there.
    Journaled(u64),
}

/// A resumed run's starting point: the journal, and what the output and journal hold.
struct Resume {
    journal: Journal,
    /// Lines in the output (written) and in the journal only (offset).
    skip: HashMap<u64, Skip>,
    /// What the output already holds.
    prior: Tally,
}

impl Resume {
    /// Opens the journal, repairs the output's torn tail, and makes the two agree.
    fn prepare(server: &ServerArgs, args: &PipeArgs, path: &Path) -> Result<Resume, Error> {
        let identity = identity(server, args)?;
        let (journal, found) =
            Journal::open(path, &identity).map_err(|e| Error::config(e.to_string()))?;
        if journal.dropped() > 0 {
            notice(
                Level::WARN,
                format_args!(
                    "journal {}: a torn tail of {} bytes (a crash mid-write) was dropped",
                    path.display(),
                    journal.dropped()
                ),
            );
        }
        let output = args.output.as_deref().expect("checked by run");
        let written = repair_output(output)?;
        let mut journaled: HashMap<u64, u64> =
            HashMap::with_capacity_and_hasher(found.len(), Default::default());
        for f in found {
            if let Ok(bytes) = <[u8; 8]>::try_from(f.key.as_slice()) {
                journaled.insert(u64::from_le_bytes(bytes), f.offset);
            }
        }
        // Lines written but whose records were torn off the journal: journal them again.
        let missing: Vec<Record> = written
            .lines
            .iter()
            .filter(|(line, _)| !journaled.contains_key(line))
            .map(|(line, text)| Record::ok(line.to_le_bytes().to_vec(), text.clone().into_bytes()))
            .collect();
        if !missing.is_empty() {
            journal
                .append(&missing)
                .map_err(|e| Error::config(e.to_string()))?;
        }
        let mut skip: HashMap<u64, Skip> = journaled
            .into_iter()
            .map(|(line, offset)| (line, Skip::Journaled(offset)))
            .collect();
        for line in written.lines.keys() {
            skip.insert(*line, Skip::Written);
        }
        if !skip.is_empty() {
            notice(
                Level::INFO,
                format_args!(
                    "resuming: {} results already in {}, {} more in the journal",
                    written.lines.len(),
                    output.display(),
                    skip.len() - written.lines.len()
                ),
            );
        }
        Ok(Resume {
            journal,
            skip,
            prior: written.tally,
        })
    }
}

/// What the output held.
struct Output {
    /// Input line -> its result line.
    lines: HashMap<u64, String>,
    tally: Tally,
}

/// Reads the output, cutting a torn last line (one without its newline); returns the
/// result line of each input line it holds.
fn repair_output(path: &Path) -> Result<Output, Error> {
    let failed = |e: &dyn fmt::Display| {
        Error::config(format!("cannot read the output {}: {e}", path.display()))
    };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| failed(&e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(&e)),
    }
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        notice(
            Level::WARN,
            format_args!(
                "{}: a torn last line of {} bytes (a crash mid-write) was cut",
                path.display(),
                bytes.len() - whole
            ),
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| failed(&e))?;
        f.set_len(whole as u64).map_err(|e| failed(&e))?;
        f.sync_all().map_err(|e| failed(&e))?;
    }
    #[derive(Deserialize)]
    struct Head {
        line: u64,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }
    let mut out = Output {
        lines: HashMap::default(),
        tally: Tally::default(),
    };
    for text in BufRead::lines(&bytes[..whole]) {
        let text = text.map_err(|e| failed(&e))?;
        let head: Head = serde_json::from_str(&text)
            .map_err(|e| failed(&format!("a line that is not a result line ({e}): {text}")))?;
        let failed = head.error.is_some();
        if out.lines.insert(head.line, text).is_none() {
            out.tally.done += 1;
            out.tally.failed += u64::from(failed);
        }
    }
    Ok(out)
}

/// What a journal is for: the input's hash, and what computes it.
fn identity(server: &ServerArgs, args: &PipeArgs) -> Result<String, Error> {
    let mut input = Vec::new();
    File::open(&args.input)
        .and_then(|mut f| f.read_to_end(&mut input))
        .map_err(|e| {
            Error::config(format!(
                "cannot read the input {}: {e}",
                args.input.display()
            ))
        })?;
    let work = match (&args.task, server.task_module()?) {
        (_, Some(module)) => format!("module {} ({})", module.sha256(), module.module_io()),
        (Some(task), None) => format!("task {task}"),
        (None, None) => String::new(),
    };
    Ok(format!(
        "distchan pipe; input sha256 {}; {work}",
        module::sha256_hex(&input)
    ))
}

/// Watches for Ctrl-C: the first sets `stop` (the reader stops), the second quits at once.
fn watch_interrupts(stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            notice(
                Level::WARN,
                "pipe: interrupted: no more input is read; the jobs sent are finished (Ctrl-C again to quit now)",
            );
            stop.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                notice(
                    Level::WARN,
                    "pipe: quitting now; results not written are lost (with --journal, run the same command to resume)",
                );
                std::process::exit(130);
            }
        }
    })
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

    fn update(&self, tally: Tally, total: Option<u64>) {
        let Tally { done, failed } = tally;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                if let Some(total) = total {
                    bar.set_length(total);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `chunks` make, fed one after the other (the last one at the end of input).
    fn split_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let used = splitter.split(chunk, i + 1 == chunks.len(), |line| {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
                true
            });
            assert_eq!(used, chunk.len());
        }
        lines
    }

    #[test]
    fn lines_are_cut_across_buffers_without_their_endings() {
        assert_eq!(
            split_all(&[
                b"\"a\"\r\n\"b",
                b"c\"\n\n",
                b"\"long",
                b"er\"\r",
                b"\n\"last\"",
                b""
            ]),
            ["\"a\"", "\"bc\"", "", "\"longer\"", "\"last\""]
        );
        assert_eq!(split_all(&[b"1\n2\n", b""]), ["1", "2"]);
    }

    #[test]
    fn the_splitter_stops_where_it_is_told_and_says_how_far_it_read() {
        let mut splitter = LineSplitter::default();
        let mut seen = Vec::new();
        let used = splitter.split(b"1\n2\n3\n", false, |line| {
            seen.push(line.to_vec());
            line != b"2"
        });
        assert_eq!(used, 4, "up to and with the end of line 2");
        assert_eq!(seen, [b"1".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn a_line_that_is_not_utf8_or_not_json_is_refused_with_the_reason() {
        assert_eq!(
            json_text(br#"{"a": [1, "\u00e9"]}"#).unwrap().0,
            r#"{"a": [1, "\u00e9"]}"#
        );
        let bad = json_text(b"\"caf\xe9\"").err().unwrap();
        assert!(bad.starts_with("not valid UTF-8"), "{bad}");
        let bad = json_text(b"{not json").err().unwrap();
        assert!(bad.starts_with("not valid JSON"), "{bad}");
    }

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(
            &path,
            "{\"id\":0,\"line\":1,\"value\":\"A\"}\n{\"error\":\"x\",\"id\":1,\"line\":3}\n{\"id\":2,\"li",
        )
        .unwrap();
        let out = repair_output(&path).unwrap();
        assert_eq!(out.lines.len(), 2);
        assert!(out.lines.contains_key(&1) && out.lines.contains_key(&3));
        assert_eq!((out.tally.done, out.tally.failed), (2, 1));
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.ends_with("\"line\":3}\n"), "{after}");
    }
}
