//! Several coordinators on one durable queue: the same JSON lines as [`crate::pipe`], through
//! NATS JetStream and the real `distchan-coordinator serve` and `distchan-submit` binaries,
//! with two workers in all (one coordinator with two local workers, or two coordinators with
//! one each).
//!
//! Each run starts, in a fresh temporary folder, its own broker with an empty file store on
//! a free port,
//!
//! ```text
//! nats-server -js -sd STORE -a 127.0.0.1 -p PORT
//! ```
//!
//! and waits (at most [`STARTUP`]) until the port accepts connections; then the
//! coordinators,
//!
//! ```text
//! distchan-coordinator serve --queue nats://127.0.0.1:PORT --task capitalize \
//!     --listen 127.0.0.1:0 --local-workers 2/C
//! ```
//!
//! and waits (at most [`STARTUP`]) until each has said `serve: taking jobs` on its standard
//! error. The figure is the time of
//!
//! ```text
//! distchan-submit --queue nats://127.0.0.1:PORT --input IN --output OUT
//! ```
//!
//! from spawn to exit: it publishes every line as a job and writes one result line per job.
//! Then the coordinators get SIGTERM (they finish what they hold and exit 0; waited for at
//! most [`STOP`]), the broker is killed and the folder removed.
//!
//! The binaries come from the folder of the bench binary (`cargo build --release --bins`);
//! `nats-server` from `PATH`, `/usr/sbin` or `/usr/local/sbin` (Debian's package puts it in
//! `/usr/sbin`). Every child runs with `RUST_LOG=warn` and without any inherited `DISTCHAN_*`
//! variable, and dies with the bench process (`PR_SET_PDEATHSIG`).
//!
//! CPU is split three ways: the broker's (user + system from `/proc/PID/stat`, read just
//! before it is killed: its whole life), `distchan-submit`'s, and the coordinators' with the
//! workers they started (both from `getrusage` of this process's children, taken before the
//! coordinators start, once `distchan-submit` has been reaped, and once the coordinators
//! have). A run fails unless `distchan-submit` and every coordinator exit with status 0 and
//! the output holds exactly one line per input line, each line number once with the word
//! upper-cased; or if a coordinator or the broker exits while the jobs are running.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Deserialize;
use tokio::time::Instant;

use crate::{
    children::cpu_secs,
    pipe::{self, children_cpu_secs, count_lines, quiet, tail, Guard, Input},
    report::per_s,
    BenchResult, Throughput,
};

/// Local worker processes in all, shared out evenly between the coordinators.
pub const WORKERS: usize = 2;

/// How long the broker may take to accept connections, and each coordinator to start
/// pulling jobs.
pub const STARTUP: Duration = Duration::from_secs(15);

/// How long the coordinators may take to exit after SIGTERM.
pub const STOP: Duration = Duration::from_secs(15);

/// The programs a run starts.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `distchan-coordinator`, next to the bench binary (with `distchan-worker`).
    pub coordinator: PathBuf,
    /// `distchan-submit`, next to the bench binary.
    pub submit: PathBuf,
    /// `nats-server`.
    pub nats_server: PathBuf,
}

/// The programs a run needs, or why the queue cannot be measured here.
pub fn prerequisites() -> Result<Programs, String> {
    let coordinator = pipe::prerequisites()?;
    let submit = coordinator.with_file_name("distchan-submit");
    if !submit.is_file() {
        return Err(format!(
            "no distchan-submit in {} (run cargo build --release --bins)",
            submit.parent().unwrap_or(Path::new(".")).display()
        ));
    }
    let nats_server = find_nats_server().ok_or(
        "no nats-server on PATH, in /usr/sbin or in /usr/local/sbin \
         (Debian: apt-get install nats-server)",
    )?;
    Ok(Programs {
        coordinator,
        submit,
        nats_server,
    })
}

/// `nats-server` on `PATH`, or where Debian and a manual install put it.
fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| is_executable(p))
}

/// True for a regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What one run through the queue measured.
#[derive(Debug, Clone)]
pub struct QueueRun {
    /// Jobs answered in `distchan-submit`'s lifetime; `cpu_here` is the bench process's,
    /// `cpu_children` the coordinators' with their workers (their whole lives).
    pub rate: Throughput,
    /// CPU seconds of the broker, its whole life.
    pub broker_cpu: f64,
    /// CPU seconds of `distchan-submit`.
    pub submit_cpu: f64,
    /// Jobs each coordinator took from the queue, as it said when it stopped (`None` where
    /// it did not say).
    pub taken: Vec<Option<u64>>,
}

/// The median (by jobs per second) of `runs` runs over `input` through `coordinators`
/// coordinators (the upper median for an even count; at least one run).
pub async fn median(runs: usize, input: &Input, coordinators: usize) -> BenchResult<QueueRun> {
    let mut all = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        all.push(throughput(input, coordinators).await?);
    }
    all.sort_by(|a, b| per_s(&a.rate).total_cmp(&per_s(&b.rate)));
    Ok(all.swap_remove(all.len() / 2))
}

/// One run over `input` through a fresh broker and `coordinators` coordinators sharing
/// [`WORKERS`] local workers (it must divide them).
pub async fn throughput(input: &Input, coordinators: usize) -> BenchResult<QueueRun> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    if coordinators == 0 || WORKERS % coordinators != 0 {
        return Err(
            format!("{WORKERS} workers cannot be shared by {coordinators} coordinators").into(),
        );
    }
    let programs = prerequisites()?;
    let run = input
        .dir()
        .join(format!("queue-{}", RUN.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    let result = timed_run(&programs, input, &run, coordinators).await;
    // Every child is gone by now (their guards dropped in `timed_run`).
    let _ = std::fs::remove_dir_all(&run);
    result
}

/// A free TCP port on 127.0.0.1 (free when asked; the broker takes it right after).
fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Fails, with the end of its standard error, if `child` has exited.
fn check_running(child: &mut Child, what: &str, stderr: &Path) -> BenchResult<()> {
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(format!("{what} exited early: {status}{}", tail(stderr, 10)).into()),
    }
}

/// Waits (at most [`STARTUP`]) until the broker accepts connections on `port`.
async fn wait_for_port(broker: &mut Child, port: u16, stderr: &Path) -> BenchResult<()> {
    let started = Instant::now();
    loop {
        check_running(broker, "nats-server", stderr)?;
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > STARTUP {
            return Err(format!(
                "nats-server did not accept connections on port {port} within {STARTUP:?}{}",
                tail(stderr, 10)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most [`STARTUP`]) until every coordinator has said it is taking jobs.
async fn wait_until_pulling(coordinators: &mut [(Guard, PathBuf)]) -> BenchResult<()> {
    let started = Instant::now();
    let mut ready = vec![false; coordinators.len()];
    while ready.contains(&false) {
        for (i, (child, stderr)) in coordinators.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            check_running(&mut child.0, &format!("coordinator {}", i + 1), stderr)?;
            let text = std::fs::read_to_string(&*stderr).unwrap_or_default();
            ready[i] = text.contains("serve: taking jobs");
            if !ready[i] && started.elapsed() > STARTUP {
                return Err(format!(
                    "coordinator {} did not start taking jobs within {STARTUP:?}{}",
                    i + 1,
                    tail(stderr, 10)
                )
                .into());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Jobs a coordinator took, from its last words `serve: N jobs taken from the queue, ...`.
fn jobs_taken(stderr: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stderr).ok()?;
    text.lines().rev().find_map(|line| {
        let (n, _) = line
            .strip_prefix("serve: ")?
            .split_once(" jobs taken from the queue")?;
        n.parse().ok()
    })
}

/// One line of `distchan-submit`'s output.
#[derive(Deserialize)]
struct ResultLine {
    /// The input line (from 1).
    line: u64,
    /// The result, absent on an error line.
    value: Option<String>,
}

/// Checks that `out` answers each of the `n` input lines `"word i"` exactly once with
/// `"WORD i"`.
fn check_output(out: &Path, n: u64, stderr: &Path) -> BenchResult<()> {
    let lines = count_lines(out)?;
    if lines != n {
        return Err(format!(
            "{} holds {lines} lines, not {n}{}",
            out.display(),
            tail(stderr, 10)
        )
        .into());
    }
    let mut seen = HashSet::with_capacity(n as usize);
    for (i, text) in BufReader::new(File::open(out)?).lines().enumerate() {
        let text = text?;
        let bad = |why: &str| format!("{} line {}: {why}: {text}", out.display(), i + 1);
        let r: ResultLine = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        if r.line == 0 || r.line > n || !seen.insert(r.line) {
            return Err(bad("a line number out of range or seen twice").into());
        }
        if r.value.as_deref() != Some(format!("WORD {}", r.line - 1).as_str()) {
            return Err(bad("not the upper-cased input").into());
        }
    }
    Ok(())
}

/// Sends SIGTERM to every coordinator, then waits (at most [`STOP`]) for all of them to exit
/// with status 0.
async fn stop(coordinators: &mut [(Guard, PathBuf)]) -> BenchResult<()> {
    for (child, _) in coordinators.iter() {
        // SAFETY: kill only sends a signal, to a child not reaped yet (its pid is ours).
        unsafe {
            libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let started = Instant::now();
    for (i, (child, stderr)) in coordinators.iter_mut().enumerate() {
        let status = loop {
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            if started.elapsed() > STOP {
                return Err(format!(
                    "coordinator {} did not exit within {STOP:?} of SIGTERM{}",
                    i + 1,
                    tail(stderr, 10)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !status.success() {
            return Err(format!(
                "coordinator {} failed after SIGTERM: {status}{}",
                i + 1,
                tail(stderr, 10)
            )
            .into());
        }
    }
    Ok(())
}

/// Runs a broker, the coordinators and `distchan-submit` once, with their files in `run`.
async fn timed_run(
    programs: &Programs,
    input: &Input,
    run: &Path,
    coordinators: usize,
) -> BenchResult<QueueRun> {
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let broker_err = run.join("nats-server.txt");
    let mut command = Command::new(&programs.nats_server);
    command.arg("-js").arg("-sd").arg(run.join("store")).args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    quiet(&mut command, &broker_err)?;
    let mut broker = Guard(
        command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", programs.nats_server.display()))?,
    );
    wait_for_port(&mut broker.0, port, &broker_err).await?;

    let cpu_here = cpu_secs(None);
    let mut serving = Vec::with_capacity(coordinators);
    for i in 0..coordinators {
        let stderr = run.join(format!("coordinator-{}.txt", i + 1));
        let mut command = Command::new(&programs.coordinator);
        command
            .args(["serve", "--queue", &url, "--task", "capitalize"])
            .args(["--listen", "127.0.0.1:0", "--local-workers"])
            .arg((WORKERS / coordinators).to_string());
        quiet(&mut command, &stderr)?;
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", programs.coordinator.display()))?;
        serving.push((Guard(child), stderr));
    }
    wait_until_pulling(&mut serving).await?;

    let out = run.join("out.jsonl");
    let submit_err = run.join("submit.txt");
    let mut command = Command::new(&programs.submit);
    command
        .args(["--queue", &url, "--input"])
        .arg(input.file())
        .arg("--output")
        .arg(&out);
    quiet(&mut command, &submit_err)?;
    let cpu_before_submit = children_cpu_secs();
    let started = Instant::now();
    let mut submit = Guard(
        command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", programs.submit.display()))?,
    );
    let mut polls = 0u64;
    let status = loop {
        if let Some(status) = submit.0.try_wait()? {
            break status;
        }
        polls += 1;
        // Everything it needs must stay up; a look every 100 ms costs nothing.
        if polls % 20 == 0 {
            check_running(&mut broker.0, "nats-server", &broker_err)?;
            for (i, (child, stderr)) in serving.iter_mut().enumerate() {
                check_running(&mut child.0, &format!("coordinator {}", i + 1), stderr)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu_after_submit = children_cpu_secs();
    if !status.success() {
        return Err(format!("distchan-submit failed: {status}{}", tail(&submit_err, 10)).into());
    }
    check_output(&out, input.lines(), &submit_err)?;

    stop(&mut serving).await?;
    let cpu_end = children_cpu_secs();
    let cpu_here = cpu_secs(None) - cpu_here;
    let broker_cpu = cpu_secs(Some(broker.0.id()));
    let _ = broker.0.kill();
    let _ = broker.0.wait();
    let taken = serving.iter().map(|(_, e)| jobs_taken(e)).collect();
    Ok(QueueRun {
        rate: Throughput {
            items: input.lines(),
            secs,
            cpu_here,
            // Only the coordinators were reaped meanwhile (having reaped their workers).
            cpu_children: cpu_end - cpu_after_submit,
        },
        broker_cpu,
        submit_cpu: cpu_after_submit - cpu_before_submit,
        taken,
    })
}
