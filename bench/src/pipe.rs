//! Pipe mode of the real `distchan-coordinator` binary: JSON lines in, JSON lines out,
//! through the built-in `capitalize` task and two local workers, without and with a journal.
//!
//! The input is a file of `n` lines, each a JSON string of a short word (`"word 123"`). Each
//! run starts, in a fresh temporary folder,
//!
//! ```text
//! distchan-coordinator pipe --task capitalize --listen 127.0.0.1:0 --local-workers 2 \
//!     --input IN --output OUT [--journal JOURNAL]
//! ```
//!
//! from the folder of the bench binary (`target/release`), where the coordinator also finds
//! the `distchan-worker` binary its local workers run; both come from
//! `cargo build --release --bins`. The child runs with `RUST_LOG=warn` and without any
//! inherited `DISTCHAN_*` variable. A run is timed from spawn to exit (wall); its CPU is
//! that of the coordinator and of the workers it started and waited for (`getrusage` of this
//! process's children, taken before and after). A run fails unless the coordinator exits
//! with status 0, the output holds exactly `n` lines and, with the journal, the journal file
//! is not empty.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

use crate::{children::cpu_secs, BenchResult, Throughput};

/// Local worker processes the coordinator starts.
pub const WORKERS: usize = 2;

/// The coordinator and worker binaries next to this one, or why pipe mode cannot be
/// measured here.
pub fn prerequisites() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("the bench binary has no parent folder")?
        .to_path_buf();
    for name in ["distchan-coordinator", "distchan-worker"] {
        if !dir.join(name).is_file() {
            return Err(format!(
                "no {name} in {} (run cargo build --release --bins)",
                dir.display()
            ));
        }
    }
    Ok(dir.join("distchan-coordinator"))
}

/// A temporary folder holding the input file of `n` lines; removed on drop.
#[derive(Debug)]
pub struct Input {
    /// The folder.
    dir: PathBuf,
    /// The input file in it.
    file: PathBuf,
    /// Lines in the input file.
    lines: u64,
}

impl Input {
    /// The temporary folder (runs may keep their files in it; it goes with the input).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The input file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Lines in the input file.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Writes `n` lines, `"word 0"` to `"word {n-1}"`, to a fresh temporary folder.
    pub fn new(n: u64) -> BenchResult<Self> {
        let dir = std::env::temp_dir().join(format!("distchan-bench-pipe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("in.jsonl");
        let mut w = BufWriter::new(File::create(&file)?);
        for i in 0..n {
            writeln!(w, "\"word {i}\"")?;
        }
        w.flush()?;
        Ok(Input {
            dir,
            file,
            lines: n,
        })
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills and reaps a child (the coordinator) if a run ends early (an error, the deadline).
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// CPU seconds (user + system) of this process's children that have exited and been
/// waited for, with everything they waited for in turn.
pub(crate) fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct passed in.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Lines in `path`.
pub(crate) fn count_lines(path: &Path) -> BenchResult<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut lines = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
    Ok(lines)
}

/// The last `n` lines of the file at `path` (a child's standard error), indented.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    match &lines[start..] {
        [] => " (nothing on its standard error)".into(),
        last => format!("; its standard error ends with:\n  {}", last.join("\n  ")),
    }
}

/// Prepares `command` the way every program the benchmark measures is started: without any
/// inherited `DISTCHAN_*` variable, with `RUST_LOG=warn`, nothing on standard input, standard
/// output discarded, standard error to the file `stderr` (created afresh), and killed by the
/// kernel if the bench process dies (`PR_SET_PDEATHSIG`).
pub(crate) fn quiet(command: &mut Command, stderr: &Path) -> BenchResult<()> {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DISTCHAN_") {
            command.env_remove(key);
        }
    }
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(stderr)?);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(())
}

/// One pipe-mode run over `input`, with a journal if `journal` is set.
pub async fn throughput(input: &Input, journal: bool) -> BenchResult<Throughput> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let coordinator = prerequisites()?;
    let run = input
        .dir
        .join(format!("run-{}", RUN.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&run)?;
    let result = timed_run(&coordinator, input, &run, journal).await;
    let _ = std::fs::remove_dir_all(&run);
    result
}

/// Runs the coordinator once with its output (and journal) in the folder `run`.
async fn timed_run(
    coordinator: &Path,
    input: &Input,
    run: &Path,
    journal: bool,
) -> BenchResult<Throughput> {
    let out = run.join("out.jsonl");
    let journal_file = run.join("journal");
    let stderr = run.join("stderr.txt");
    let mut command = Command::new(coordinator);
    command
        .args(["pipe", "--task", "capitalize", "--listen", "127.0.0.1:0"])
        .arg("--local-workers")
        .arg(WORKERS.to_string())
        .arg("--input")
        .arg(&input.file)
        .arg("--output")
        .arg(&out);
    if journal {
        command.arg("--journal").arg(&journal_file);
    }
    quiet(&mut command, &stderr)?;
    let cpu_here = cpu_secs(None);
    let cpu_children = children_cpu_secs();
    let started = Instant::now();
    let mut child = Guard(
        command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", coordinator.display()))?,
    );
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu_children = children_cpu_secs() - cpu_children;
    let cpu_here = cpu_secs(None) - cpu_here;
    if !status.success() {
        return Err(format!("the coordinator failed: {status}{}", tail(&stderr, 10)).into());
    }
    let lines = count_lines(&out)?;
    if lines != input.lines {
        return Err(format!(
            "{} holds {lines} lines, not {}{}",
            out.display(),
            input.lines,
            tail(&stderr, 10)
        )
        .into());
    }
    if journal && std::fs::metadata(&journal_file).map_or(0, |m| m.len()) == 0 {
        return Err(format!(
            "the journal {} is missing or empty{}",
            journal_file.display(),
            tail(&stderr, 10)
        )
        .into());
    }
    Ok(Throughput {
        items: lines,
        secs,
        cpu_here,
        cpu_children,
    })
}
