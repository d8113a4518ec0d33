//! Several coordinators sharing one durable queue on NATS JetStream, end to end: a real
//! `nats-server` per test (a free loopback port, its store in a temporary folder),
//! `distchan-coordinator serve --queue` processes with their `distchan-worker` processes,
//! and `distchan-submit` putting jobs in and writing one result line per job, while
//! coordinators, workers and the broker itself are killed mid-run.
//!
//! Every wait is on something observable (output lines, log lines, exits) and bounded, so
//! a bug fails the test instead of hanging it; every process is killed when its guard is
//! dropped, whatever the way out of the test.
//!
//! Needs `nats-server` (2.9 or later): `bash scripts/setup.sh` or `apt-get install
//! nats-server`. Needs the `distchan-worker` binary next to the coordinator's (`cargo build
//! -p distchan-worker --bins`, or test the whole workspace).
#![cfg(target_os = "linux")]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

/// Time a process gets to start (and the broker to come back).
const START_LIMIT: Duration = Duration::from_secs(30);
/// Time a whole run of jobs gets: debug builds on two cores, tests running side by side.
const RUN_LIMIT: Duration = Duration::from_secs(240);
/// How often a wait looks again at what it waits for.
const POLL: Duration = Duration::from_millis(20);
/// Log lines of each process shown when a test fails.
const TAIL: usize = 25;

/// The `nats-server` binary: the first on PATH, else Debian's /usr/sbin/nats-server (not on
/// every user's PATH); a clear failure, never a skip, when there is none.
fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not on PATH: these tests start their own NATS JetStream server; \
                 run `bash scripts/setup.sh` (or `apt-get install nats-server`)"
            )
        })
}

/// The `distchan-worker` binary (next to the coordinator's; checked by `coordinator_bin`).
fn worker_bin() -> PathBuf {
    common::coordinator_bin().with_file_name("distchan-worker")
}

/// Two different loopback ports nothing listens on right now (bound together, read,
/// released).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("a bound port").port();
    (port(&a), port(&b))
}

/// Polls `done` until it holds; `Err` naming `what` once `deadline` has passed.
fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) -> Result<(), String> {
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(POLL);
    }
}

/// Lines a process writes to a pipe, collected as they come by a thread (so the process
/// never blocks on a full pipe), and whether the pipe is closed yet.
#[derive(Clone, Default)]
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicBool>,
}

impl Lines {
    /// Starts collecting the lines of `pipe` into `self`.
    fn drain(&self, pipe: impl Read + Send + 'static) {
        let this = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(line) => this.lines.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
            this.closed.store(true, Ordering::SeqCst);
        });
    }

    /// How many lines have come.
    fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Whether the pipe is closed (every line has come).
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The first line for which `pick` gives something.
    fn find<T>(&self, pick: impl FnMut(&String) -> Option<T>) -> Option<T> {
        self.lines.lock().unwrap().iter().find_map(pick)
    }

    /// Whether some line contains `needle`.
    fn contains(&self, needle: &str) -> bool {
        self.find(|l| l.contains(needle).then_some(())).is_some()
    }

    /// Every line so far.
    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last `n` lines, one per line.
    fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, with its stderr (and
/// for some, stdout) collected in `log`.
struct Proc {
    name: String,
    child: Child,
    log: Lines,
}

impl Proc {
    /// Starts `command` with its stderr collected (and stdin closed).
    fn spawn(name: impl Into<String>, command: &mut Command) -> Proc {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Lines::default();
        log.drain(child.stderr.take().unwrap());
        Proc { name, child, log }
    }

    /// SIGKILL, then reaped (nothing if it has exited already).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGTERM: the polite stop; SIGSTOP, SIGCONT: freeze, thaw), unless
    /// it has exited.
    fn signal(&mut self, signal: libc::c_int) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the pid of our own child, not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Its exit status, waiting at most until `deadline`.
    fn exit_by(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        let mut status = None;
        wait_for(&format!("{} to exit", self.name), deadline, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        })?;
        Ok(status.unwrap())
    }

    /// Its name and last log lines, for a failure message.
    fn report(&self) -> String {
        format!(
            "--- {} (last lines) ---\n{}\n",
            self.name,
            self.log.tail(TAIL)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` with JetStream on a free loopback port, its store in a folder of the test.
struct Nats {
    proc: Proc,
    port: u16,
    /// Its HTTP monitoring port (`-m`).
    monitor: u16,
    store: PathBuf,
    starts: u32,
}

impl Nats {
    /// Starts one, its store in `dir`, and waits until it serves.
    fn start(dir: &Path) -> Nats {
        let (port, monitor) = free_ports();
        let store = dir.join("nats-store");
        let proc = Nats::spawn(port, monitor, &store, 1);
        Nats {
            proc,
            port,
            monitor,
            store,
            starts: 1,
        }
    }

    /// Starts the server process on `port` with `store` and waits until it is ready (its own
    /// log says so, so a server of someone else on that port is not taken for it) and accepts
    /// connections.
    fn spawn(port: u16, monitor: u16, store: &Path, start: u32) -> Proc {
        let mut proc = Proc::spawn(
            format!("nats-server (start {start})"),
            Command::new(nats_server_bin())
                .arg("-js")
                .arg("-sd")
                .arg(store)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string()])
                .stdout(Stdio::piped()),
        );
        proc.log.drain(proc.child.stdout.take().unwrap());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_LIMIT;
        let mut exited = None;
        let ready = wait_for("nats-server to be ready", deadline, || {
            exited = proc.child.try_wait().ok().flatten();
            exited.is_some()
                || (proc.log.contains("Server is ready")
                    && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        if let Some(status) = exited {
            panic!(
                "nats-server on port {port} exited at start ({status})\n{}",
                proc.report()
            );
        }
        ready.unwrap_or_else(|e| panic!("{e}\n{}", proc.report()));
        proc
    }

    /// Its URL for `--queue`.
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the broker lost at once, nothing flushed on the way out.
    fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port with the same store; waits until it serves.
    fn restart(&mut self) {
        self.starts += 1;
        let previous = std::mem::replace(
            &mut self.proc,
            Nats::spawn(self.port, self.monitor, &self.store, self.starts),
        );
        // Its log stays in the failure report of the new one.
        let old = previous.log.all();
        let mut lines = self.proc.log.lines.lock().unwrap();
        let mut both = old;
        both.push(format!("--- (start {}) ---", self.starts));
        both.append(&mut lines);
        *lines = both;
    }

    /// Deliveries made so far by the coordinators' shared consumer (redeliveries included)
    /// and the last job (stream sequence) delivered, from the server's monitoring page: on a
    /// fresh stream whose every job was delivered, the difference is the redeliveries.
    fn deliveries(&self) -> Result<(u64, u64), String> {
        let addr = format!("127.0.0.1:{}", self.monitor);
        let page = http_get(&addr, "/jsz?consumers=true")
            .map_err(|e| format!("GET http://{addr}/jsz: {e}"))?;
        let page: Value = serde_json::from_str(&page).map_err(|e| format!("/jsz: {e}"))?;
        let consumer = page["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .flat_map(|s| s["consumer_detail"].as_array().into_iter().flatten())
            .find(|c| c["name"] == "distchan-coordinators")
            .ok_or_else(|| format!("no consumer distchan-coordinators in /jsz: {page}"))?;
        let delivered = &consumer["delivered"];
        match (
            delivered["consumer_seq"].as_u64(),
            delivered["stream_seq"].as_u64(),
        ) {
            (Some(deliveries), Some(last)) => Ok((deliveries, last)),
            _ => Err(format!("no delivered sequences in {consumer}")),
        }
    }
}

/// A `distchan-coordinator serve --queue` process and the address it listens on.
struct Coordinator {
    proc: Proc,
    addr: String,
}

impl Coordinator {
    /// Starts `serve --task capitalize --listen 127.0.0.1:0 --local-workers 0` on `queue`
    /// with `extra` flags, and waits until it says where it listens (then it has its
    /// consumer already).
    fn start(name: &str, queue: &str, extra: &[&str]) -> Coordinator {
        let proc = Proc::spawn(
            name,
            Command::new(common::coordinator_bin())
                .args(["serve", "--queue", queue, "--task", "capitalize"])
                .args(["--listen", "127.0.0.1:0", "--local-workers", "0"])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null()),
        );
        let deadline = Instant::now() + START_LIMIT;
        let mut addr = None;
        let started = wait_for(&format!("{name} to listen"), deadline, || {
            addr = proc.log.find(|l| {
                l.strip_prefix("distchan coordinator listening on ")
                    .map(|a| a.trim().to_owned())
            });
            addr.is_some() || proc.log.closed()
        });
        match (started, addr) {
            (Ok(()), Some(addr)) => Coordinator { proc, addr },
            (result, _) => panic!(
                "{name} did not start ({}):\n{}",
                result.err().unwrap_or_else(|| "its stderr closed".into()),
                proc.report()
            ),
        }
    }

    /// The value of the counter or gauge `name` (unlabelled) on its /metrics page.
    fn metric(&self, name: &str) -> Result<f64, String> {
        let page = http_get(&self.addr, "/metrics")
            .map_err(|e| format!("GET http://{}/metrics: {e}", self.addr))?;
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| format!("no {name} on the metrics page of {}", self.proc.name))
    }
}

/// The body of `GET http://addr{path}` (the connection closed after it; a chunked body is
/// put back together).
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let unexpected = || std::io::Error::other(format!("unexpected answer: {response}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(unexpected)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(unexpected());
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    // Chunks: a size in hex, CRLF, that many bytes, CRLF; a size of 0 ends them.
    let (mut whole, mut rest) = (String::new(), body);
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(unexpected)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .map_err(|_| unexpected())?;
        if size == 0 {
            return Ok(whole);
        }
        whole.push_str(after.get(..size).ok_or_else(unexpected)?);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or_else(unexpected)?;
    }
}

/// A `distchan-worker --concurrency 2` process for the coordinator at `addr` (it
/// reconnects by itself if the coordinator goes away).
fn start_worker(name: &str, addr: &str) -> Proc {
    Proc::spawn(
        name,
        Command::new(worker_bin())
            .args(["--url", &format!("ws://{addr}/ws"), "--concurrency", "2"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    )
}

/// A running `distchan-submit` and the result lines it has written so far.
struct Submit {
    proc: Proc,
    out: Lines,
}

impl Submit {
    /// Runs `distchan-submit --queue QUEUE --input INPUT --run RUN EXTRA`, its stdout read as
    /// it comes.
    fn start(queue: &str, input: &Path, run: &str, extra: &[&str]) -> Submit {
        let mut proc = Proc::spawn(
            format!("distchan-submit --run {run}"),
            Command::new(env!("CARGO_BIN_EXE_distchan-submit"))
                .args(["--queue", queue, "--run", run])
                .arg("--input")
                .arg(input)
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped()),
        );
        let out = Lines::default();
        out.drain(proc.child.stdout.take().unwrap());
        Submit { proc, out }
    }

    /// Waits until at least `n` results are out (before `deadline`, and before submit ends).
    fn wait_for_results(&self, n: usize, deadline: Instant) -> Result<(), String> {
        wait_for(&format!("{n} results"), deadline, || {
            self.out.len() >= n || self.out.closed()
        })?;
        match self.out.len() {
            got if got >= n => Ok(()),
            got => Err(format!(
                "distchan-submit closed its output after {got} results, {n} expected by now"
            )),
        }
    }

    /// Waits (until `deadline`) for submit to exit and its output to end; its exit code
    /// and every result line.
    fn finish(&mut self, deadline: Instant) -> Result<(i32, Vec<String>), String> {
        let status = self
            .proc
            .exit_by(deadline)
            .map_err(|e| format!("{e} ({} results out so far)", self.out.len()))?;
        wait_for("submit's output to close", deadline, || self.out.closed())?;
        Ok((status.code().unwrap_or(-1), self.out.all()))
    }
}

/// One test's world: a broker, coordinators with their workers, a submitter, and the
/// folder they work in (removed last).
struct Scene {
    /// When the scene was set up; what happened since, for the failure report.
    started: Instant,
    events: Mutex<Vec<String>>,
    submit: Option<Submit>,
    workers: Vec<Proc>,
    coordinators: Vec<Coordinator>,
    nats: Nats,
    dir: TempDir,
}

impl Scene {
    /// A broker and `coordinators` coordinators (`serve` with `extra` flags), each with
    /// `workers_each` workers; worker `j` of coordinator `i` is `workers[i * workers_each + j]`.
    fn new(coordinators: usize, workers_each: usize, extra: &[&str]) -> Scene {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let nats = Nats::start(dir.path());
        let mut scene = Scene {
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
            submit: None,
            workers: Vec::new(),
            coordinators: Vec::new(),
            nats,
            dir,
        };
        for _ in 0..coordinators {
            scene.add_coordinator(workers_each, extra);
        }
        scene
    }

    /// Starts one more coordinator with `workers` workers of its own; its index.
    fn add_coordinator(&mut self, workers: usize, extra: &[&str]) -> usize {
        let i = self.coordinators.len();
        let coordinator = Coordinator::start(&format!("coordinator {i}"), &self.nats.url(), extra);
        for j in 0..workers {
            self.workers.push(start_worker(
                &format!("worker {j} of coordinator {i}"),
                &coordinator.addr,
            ));
        }
        self.coordinators.push(coordinator);
        i
    }

    /// Writes a job file of `n` lines `"{prefix}{line}"` (line 1 to n); its path.
    fn jobs_file(&self, prefix: &str, n: u64) -> PathBuf {
        let path = self.dir.path().join(format!("{prefix}-jobs.jsonl"));
        let mut text = String::with_capacity(n as usize * 12);
        for line in 1..=n {
            text.push_str(&format!("\"{prefix}{line}\"\n"));
        }
        std::fs::write(&path, text).expect("the job file is written");
        path
    }

    /// Starts `distchan-submit` on this scene's broker.
    fn submit(&mut self, input: &Path, run: &str, extra: &[&str]) -> &mut Submit {
        self.submit
            .insert(Submit::start(&self.nats.url(), input, run, extra))
    }

    /// The submitter started by [`Scene::submit`].
    /// Waits for the submitter to exit (by `deadline`, else the test fails) and notes it:
    /// its exit code and output lines.
    fn finish_submit(&mut self, deadline: Instant) -> (i32, Vec<String>) {
        let result = self.submitter().finish(deadline);
        let (code, lines) = self.check(result);
        self.note(format_args!(
            "submit exited {code} with {} lines",
            lines.len()
        ));
        (code, lines)
    }

    fn submitter(&mut self) -> &mut Submit {
        self.submit.as_mut().expect("submit was started")
    }

    /// Notes (on stderr, and for the failure report) that `what` happened, and when.
    fn note(&self, what: impl std::fmt::Display) {
        let line = format!(
            "[{}: {:6.1} s] {what}",
            thread::current().name().unwrap_or("test"),
            self.started.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        self.events.lock().unwrap().push(line);
    }

    /// Fails the test with `what`, what happened when, and the last log lines of every
    /// process.
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let mut report = format!("{what}\n--- events ---\n");
        for line in self.events.lock().unwrap().iter() {
            report.push_str(&format!("{line}\n"));
        }
        if let Some(submit) = &self.submit {
            report.push_str(&submit.proc.report());
        }
        for c in &self.coordinators {
            report.push_str(&format!("({} listened on {})\n", c.proc.name, c.addr));
            report.push_str(&c.proc.report());
        }
        for w in &self.workers {
            report.push_str(&w.report());
        }
        report.push_str(&self.nats.proc.report());
        panic!("{report}");
    }

    /// `Ok`'s value, or the test fails with the error and every log.
    fn check<T>(&self, result: Result<T, String>) -> T {
        result.unwrap_or_else(|e| self.fail(e))
    }
}

/// Checks submit's output `lines`: exactly one line per job 1..=`jobs`, each the upper case
/// of job `"{prefix}{line}"`, nothing else; says what is wrong otherwise.
fn exactly_once(lines: &[String], jobs: u64, prefix: &str) -> Result<(), String> {
    let mut seen = vec![0u32; jobs as usize + 1];
    let mut wrong = Vec::new();
    for text in lines {
        let parsed: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                wrong.push(format!("not JSON ({e}): {text}"));
                continue;
            }
        };
        let Some(line) = parsed["line"].as_u64().filter(|l| (1..=jobs).contains(l)) else {
            wrong.push(format!("no line number in 1..={jobs}: {text}"));
            continue;
        };
        seen[line as usize] += 1;
        let want = format!("{prefix}{line}").to_uppercase();
        if parsed.get("value").and_then(Value::as_str) != Some(want.as_str()) {
            wrong.push(format!("expected the value {want:?}: {text}"));
        }
    }
    let missing: Vec<usize> = (1..seen.len()).filter(|&l| seen[l] == 0).collect();
    let repeated: Vec<usize> = (1..seen.len()).filter(|&l| seen[l] > 1).collect();
    if wrong.is_empty() && missing.is_empty() && repeated.is_empty() {
        return Ok(());
    }
    let first = |v: &[usize]| v.iter().take(10).copied().collect::<Vec<_>>();
    Err(format!(
        "{} result lines for {jobs} jobs: {} jobs without a line (first: {:?}), {} with more \
         than one (first: {:?}), {} lines wrong (first: {:?})",
        lines.len(),
        missing.len(),
        first(&missing),
        repeated.len(),
        first(&repeated),
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    ))
}

/// Three coordinators (ack wait 2 s) with two workers each take 100,000 jobs; at 20% of the
/// results one coordinator (holding jobs) and two workers (one of it, one of another
/// coordinator) are killed with SIGKILL. The jobs they held are computed elsewhere: submit
/// exits 0 with exactly one right result per job.
#[test]
fn three_coordinators_six_workers_survive_killed_coordinator_and_workers() {
    const JOBS: u64 = 100_000;
    let deadline = Instant::now() + RUN_LIMIT;
    let mut scene = Scene::new(3, 2, &["--ack-wait-ms", "2000"]);
    let input = scene.jobs_file("w", JOBS);
    scene.submit(&input, "three-coordinators", &[]);
    scene.note("submit started");
    scene.check(
        scene
            .submit
            .as_ref()
            .unwrap()
            .wait_for_results(JOBS as usize / 5, deadline),
    );

    // Killed while it holds jobs: its workers are frozen first (SIGSTOP), so that what it
    // holds (queued for them or with them) can no longer be answered and acknowledged, and
    // is counted exactly once the results already on their way have come in (two readings
    // agree). Every one of those must be delivered again and answered elsewhere.
    scene.workers[0].signal(libc::SIGSTOP);
    scene.workers[1].signal(libc::SIGSTOP);
    let mut held = 0.0;
    let mut with_workers = None;
    let holding = wait_for("coordinator 0 to hold 8 jobs or more", deadline, || {
        let victim = &scene.coordinators[0];
        let (Ok(queued), Ok(in_flight)) = (
            victim.metric("distchan_jobs_queued"),
            victim.metric("distchan_jobs_in_flight"),
        ) else {
            return false;
        };
        let settled = with_workers.replace(in_flight) == Some(in_flight);
        held = queued + in_flight;
        settled && held >= 8.0
    });
    scene.check(holding);
    scene.coordinators[0].proc.kill();
    scene.workers[0].kill(); // coordinator 0's first worker
    scene.workers[1].signal(libc::SIGCONT); // its second, left to reconnect in vain
    scene.workers[2].kill(); // coordinator 1's first worker
    scene.note(format_args!(
        "killed coordinator 0 (holding {held} jobs), its first worker and coordinator 1's \
         first worker at {} results",
        scene.submit.as_ref().unwrap().out.len()
    ));

    let (code, lines) = scene.finish_submit(deadline);
    let (deliveries, last) = scene.check(scene.nats.deliveries());
    scene.note(format_args!(
        "{deliveries} deliveries of jobs up to {last}: {} again",
        deliveries.saturating_sub(last)
    ));
    scene.check(exactly_once(&lines, JOBS, "w"));
    // The jobs the killed coordinator held went out again (no redelivery happens in a
    // run where no one is killed).
    if (deliveries.saturating_sub(last) as f64) < held {
        scene.fail(format_args!(
            "{} jobs delivered again, fewer than the {held} the killed coordinator held",
            deliveries.saturating_sub(last)
        ));
    }
    if code != 0 {
        scene.fail(format!("distchan-submit exited {code}, not 0"));
    }
}

/// Two coordinators (ack wait 2 s) with a worker each take 30,000 jobs; at 25% of the
/// results the broker is killed with SIGKILL, and started again on the same port and store
/// once every client has seen it go. Nothing is lost: submit exits 0 with exactly one right
/// result per job.
#[test]
fn nats_restarted_mid_run_loses_nothing() {
    const JOBS: u64 = 30_000;
    let deadline = Instant::now() + RUN_LIMIT;
    let mut scene = Scene::new(2, 1, &["--ack-wait-ms", "2000"]);
    let input = scene.jobs_file("n", JOBS);
    scene.submit(&input, "nats-restart", &[]);
    scene.note("submit started");
    scene.check(
        scene
            .submit
            .as_ref()
            .unwrap()
            .wait_for_results(JOBS as usize / 4, deadline),
    );

    scene.nats.kill();
    let at_kill = scene.submit.as_ref().unwrap().out.len();
    scene.note(format_args!("nats-server killed at {at_kill} results"));
    // Each client says when it loses the broker: each has lost its connection.
    let noticed = wait_for(
        "every client to log `disconnected from the queue`",
        Instant::now() + START_LIMIT,
        || {
            scene
                .coordinators
                .iter()
                .map(|c| &c.proc)
                .chain(scene.submit.as_ref().map(|s| &s.proc))
                .all(|p| p.log.contains("disconnected from the queue"))
        },
    );
    scene.check(noticed);
    scene.nats.restart();
    let at_restart = scene.submit.as_ref().unwrap().out.len();
    scene.note(format_args!(
        "nats-server started again (same port, same store) at {at_restart} results"
    ));
    let resumed = {
        let submit = scene.submit.as_ref().unwrap();
        // Not a minute of silence waiting for missed heartbeats: the clients read anew once
        // they are connected again.
        let soon = (Instant::now() + Duration::from_secs(30)).min(deadline);
        wait_for("a result within 30 s of the restart", soon, || {
            submit.out.len() > at_restart || submit.out.closed()
        })
    };
    scene.check(resumed);
    scene.note(format_args!(
        "results again: {}",
        scene.submit.as_ref().unwrap().out.len()
    ));

    let (code, lines) = scene.finish_submit(deadline);
    scene.check(exactly_once(&lines, JOBS, "n"));
    if code != 0 {
        scene.fail(format!("distchan-submit exited {code}, not 0"));
    }
}

/// One coordinator with one worker takes 30,000 jobs (`--ordered` output); once results
/// are out, a second coordinator with a worker joins. Every job is answered exactly once,
/// in input order, and the newcomer computed a real share (a tenth at least; half of what
/// is left is its fair share); stopped with SIGTERM, it exits 0.
#[test]
fn a_coordinator_joining_late_takes_a_share() {
    const JOBS: u64 = 30_000;
    let deadline = Instant::now() + RUN_LIMIT;
    let mut scene = Scene::new(1, 1, &[]);
    let input = scene.jobs_file("late", JOBS);
    scene.submit(&input, "late-joiner", &["--ordered"]);
    scene.note("submit started");
    scene.check(
        scene
            .submit
            .as_ref()
            .unwrap()
            .wait_for_results(2_000, deadline),
    );
    let late = scene.add_coordinator(1, &[]);
    scene.note(format_args!(
        "coordinator {late} joined at {} results",
        scene.submit.as_ref().unwrap().out.len()
    ));

    let (code, lines) = scene.finish_submit(deadline);
    scene.check(exactly_once(&lines, JOBS, "late"));
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    if let Some(w) = numbers.windows(2).find(|w| w[0] > w[1]) {
        scene.fail(format!(
            "--ordered output out of order: line {} before {}",
            w[0], w[1]
        ));
    }
    if code != 0 {
        scene.fail(format!("distchan-submit exited {code}, not 0"));
    }

    let share = scene.check(scene.coordinators[late].metric("distchan_jobs_done_total"));
    let first = scene.check(scene.coordinators[0].metric("distchan_jobs_done_total"));
    scene.note(format_args!(
        "jobs computed: {first} by the first coordinator, {share} by the late one"
    ));
    if share < (JOBS / 10) as f64 {
        scene.fail(format!(
            "the coordinator that joined late computed {share} jobs, less than a tenth"
        ));
    }

    scene.coordinators[late].proc.signal(libc::SIGTERM);
    let stopped = scene.coordinators[late]
        .proc
        .exit_by(Instant::now() + START_LIMIT);
    match scene.check(stopped).code() {
        Some(0) => {}
        other => scene.fail(format!(
            "serve stopped with SIGTERM exited {other:?}, not 0"
        )),
    }
}

/// A job line that is not JSON is reported on stderr and skipped; the other lines are
/// answered and submit exits 2.
#[test]
fn a_line_that_is_not_json_is_reported_and_skipped() {
    let deadline = Instant::now() + RUN_LIMIT;
    let mut scene = Scene::new(1, 1, &[]);
    let input = scene.dir.path().join("mixed.jsonl");
    std::fs::write(&input, "\"a\"\nnot json\n\"b\"\n\n\"c\"\n").unwrap();
    scene.submit(&input, "not-json", &[]);
    let (code, lines) = {
        let result = scene.submitter().finish(deadline);
        scene.check(result)
    };
    let mut answered: Vec<(u64, String)> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| scene.fail(e));
            (v["line"].as_u64().unwrap_or(0), v["value"].to_string())
        })
        .collect();
    answered.sort();
    let expected: Vec<(u64, String)> = [(1, "\"A\""), (3, "\"B\""), (5, "\"C\"")]
        .into_iter()
        .map(|(l, v)| (l, v.to_owned()))
        .collect();
    if answered != expected {
        scene.fail(format!("results {answered:?}, expected {expected:?}"));
    }
    let log = &scene.submit.as_ref().unwrap().proc.log;
    if !log.contains("line 2: not valid JSON") {
        scene.fail("submit did not say that line 2 is not JSON");
    }
    if code != 2 {
        scene.fail(format!("distchan-submit exited {code}, not 2"));
    }
}

/// Runs `program args` (RUST_LOG=info) until it exits, at most `START_LIMIT`; its exit code
/// and stderr.
fn run_briefly(program: &Path, args: &[&str]) -> (i32, String) {
    let mut proc = Proc::spawn(
        program.display().to_string(),
        Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    );
    let status = proc
        .exit_by(Instant::now() + START_LIMIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", proc.report()));
    let deadline = Instant::now() + START_LIMIT;
    wait_for("stderr to close", deadline, || proc.log.closed()).unwrap();
    (status.code().unwrap_or(-1), proc.log.all().join("\n"))
}

/// `distchan-submit` with no broker at the queue's address exits 1 and says it cannot
/// reach the queue.
#[test]
fn submit_without_a_broker_exits_1_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jobs.jsonl");
    std::fs::write(&input, "\"a\"\n").unwrap();
    let (code, stderr) = run_briefly(
        Path::new(env!("CARGO_BIN_EXE_distchan-submit")),
        &[
            "--queue",
            "nats://127.0.0.1:1",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the queue at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

/// `distchan-coordinator serve` with no broker at the queue's address exits 1 and says it
/// cannot reach the queue.
#[test]
fn serve_without_a_broker_exits_1_saying_so() {
    let (code, stderr) = serve_briefly("nats://127.0.0.1:1", "capitalize");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the queue at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

/// `distchan-coordinator serve` on `queue` running `task`, with no local workers, expected
/// to exit by itself: its exit code and standard error.
fn serve_briefly(queue: &str, task: &str) -> (i32, String) {
    run_briefly(
        &common::coordinator_bin(),
        &[
            "serve",
            "--queue",
            queue,
            "--task",
            task,
            "--listen",
            "127.0.0.1:0",
            "--local-workers",
            "0",
        ],
    )
}

/// A coordinator that runs another task than the queue's coordinators is refused (exit 1,
/// naming both), instead of answering their jobs with its own task; the one running is
/// not disturbed and a second one running the same task is welcome.
#[test]
fn a_coordinator_running_another_task_is_refused() {
    let mut scene = Scene::new(1, 0, &[]);
    let (code, stderr) = serve_briefly(&scene.nats.url(), "add");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("run task capitalize, and this one runs task add"),
        "{stderr}"
    );
    let same = scene.add_coordinator(0, &[]);
    assert_eq!(scene.coordinators.len(), 2, "coordinator {same} joined");
}

/// The output check itself catches what it is for: a missing job, a job answered twice, a
/// wrong value, an error line, a line number out of range.
#[test]
fn the_exactly_once_check_catches_missing_repeated_and_wrong_lines() {
    let line = |l: u64, v: &str| format!("{{\"line\":{l},\"value\":\"{v}\"}}");
    let good = vec![line(1, "X1"), line(3, "X3"), line(2, "X2")];
    assert_eq!(exactly_once(&good, 3, "x"), Ok(()));
    let bad = [
        vec![line(1, "X1"), line(2, "X2")],
        vec![line(1, "X1"), line(2, "X2"), line(3, "X3"), line(2, "X2")],
        vec![line(1, "X1"), line(2, "x2"), line(3, "X3")],
        vec![
            line(1, "X1"),
            "{\"line\":2,\"error\":\"lost\"}".into(),
            line(3, "X3"),
        ],
        vec![line(1, "X1"), line(2, "X2"), line(3, "X3"), line(4, "X4")],
    ];
    for lines in bad {
        assert!(exactly_once(&lines, 3, "x").is_err(), "{lines:?}");
    }
}

/// Coordinators that start together on a new broker all find the streams missing and all
/// make them: the broker may refuse all but one maker (saying the subjects overlap with
/// the stream made meanwhile), and every coordinator must take the stream made instead of
/// failing. Eight at once on forty new brokers: without that, each of three runs tried
/// failed within twenty.
#[test]
fn coordinators_starting_together_share_the_streams_one_of_them_made() {
    use distchan_coordinator::jetstream::{connect, ensure_streams, QueueSettings};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    for round in 0..40 {
        let dir = TempDir::new().unwrap();
        let nats = Nats::start(dir.path());
        runtime.block_on(async {
            let settings = QueueSettings::new(nats.url());
            // One connection each, as separate coordinators have.
            let mut links = Vec::new();
            for _ in 0..8 {
                links.push(connect(&settings).await.expect("the broker is up"));
            }
            let starts = links.iter().map(|js| ensure_streams(js, &settings));
            for made in futures_util::future::join_all(starts).await {
                let streams = made.unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(streams.jobs.cached_info().config.name, settings.jobs_stream);
                assert_eq!(
                    streams.results.cached_info().config.name,
                    settings.results_stream
                );
            }
        });
    }
}
