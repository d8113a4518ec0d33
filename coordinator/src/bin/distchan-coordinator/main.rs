//! `distchan-coordinator`: hands jobs to workers (native processes and browser tabs).
//!
//! - `distchan-coordinator [demo]`: the Mandelbrot (or capitalize) demo, see [`demo`]
//!   (what its workloads are made of: [`workload`]).
//! - `distchan-coordinator pipe --task NAME` (or `--module FILE`): JSON lines in, JSON
//!   lines out, see [`pipe`] (and [`json`] for jobs as JSON text).
//! - `distchan-coordinator serve --queue nats://HOST:PORT --task NAME`: one of several
//!   coordinators sharing a queue on NATS JetStream, see [`serve`].
//!
//! - [`shares`]: who did what, at the end of a demo or pipe run.
//!
//! Every setting is a flag with an environment-variable twin; logs go to stderr through
//! `tracing` (`RUST_LOG=debug` for more), as text or, with `--log-format json`, as JSON
//! lines (then every line on stderr is one; see `distchan_protocol::logging`).

mod demo;
mod json;
mod pipe;
mod serve;
mod shares;
mod workload;

use std::{
    path::PathBuf,
    process::{Child, Command, ExitCode},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use distchan_coordinator::{
    transform::Aes256GcmTransform, Builder, Config, Coordinator, Error, TaskModule, TlsConfig,
};
use distchan_protocol::{
    logging::{self, notice, LogArgs},
    module::{Limits, ModuleIo},
};
use pipe::RunEnd;
use tracing::Level;

/// Hand out jobs to distchan workers (native processes and browser tabs) and collect results.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    demo: demo::DemoArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run a demo workload (default): a Mandelbrot picture, or words to capitalize.
    Demo(demo::DemoArgs),
    /// Read jobs as JSON lines, write results as JSON lines.
    Pipe(pipe::PipeArgs),
    /// Serve jobs from a queue shared with other coordinators (NATS JetStream), until stopped.
    Serve(serve::ServeArgs),
}

/// What `--help` ends with: the default mode and the exit codes.
const AFTER_HELP: &str = "\
Without a subcommand, runs `demo` (whose options may be given directly).

Exit status:
  0    every job answered without error (a lingering demo: stopped with Ctrl-C, no job failed)
  1    could not run: a bad option, the address in use, an unreadable input, module or journal
  2    the run ended, but some jobs failed or were wrong, or input lines were not JSON
  130  interrupted by Ctrl-C: the first stops reading input (pipe) or sending jobs (demo),
       finishes what was sent, writes every result in, and says how many were unfinished;
       a second Ctrl-C quits at once
`serve` runs until Ctrl-C or SIGTERM, then finishes the jobs it holds and exits 0.";

/// Settings shared by every mode.
#[derive(Debug, Clone, Args)]
struct ServerArgs {
    /// Address to listen on (HTTP page, dashboard, metrics and WebSocket on the same port).
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: String,
    /// Access token workers must present.
    #[arg(long, global = true, env = "DISTCHAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// AES-256-GCM key (64 hex digits) to encrypt payloads with; workers need the same key.
    #[arg(long, global = true, env = "DISTCHAN_AES_KEY", hide_env_values = true)]
    aes_key: Option<String>,
    /// Heartbeat interval in milliseconds; a worker silent for two intervals is dead (0: off).
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_HEARTBEAT_MS",
        default_value_t = 5000
    )]
    heartbeat_ms: u64,
    /// Job lease in milliseconds: a job held longer goes to another worker (0: no lease).
    #[arg(long, global = true, env = "DISTCHAN_LEASE_MS", default_value_t = 0)]
    lease_ms: u64,
    /// Times a job lost with its worker is dispatched again before it is reported failed.
    #[arg(long, global = true, env = "DISTCHAN_MAX_RETRIES", default_value_t = 3)]
    max_retries: u32,
    /// Reconnect grace in milliseconds: a worker whose connection is lost keeps its jobs
    /// this long, and takes them back if it reconnects meanwhile (0: they go to others at
    /// once).
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_RECONNECT_GRACE_MS",
        default_value_t = 0
    )]
    reconnect_grace_ms: u64,
    /// Times a job whose handler failed is retried before the error is reported.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_HANDLER_RETRIES",
        default_value_t = 0
    )]
    handler_retries: u32,
    /// Largest WebSocket message accepted from a worker, in bytes.
    #[arg(long, global = true, env = "DISTCHAN_MAX_FRAME", default_value_t = Config::default().max_frame)]
    max_frame: usize,
    /// Size of each worker's WebSocket read buffer, held while connected (small keeps idle workers cheap).
    #[arg(long, global = true, env = "DISTCHAN_READ_BUFFER_SIZE", default_value_t = Config::default().read_buffer_size)]
    read_buffer_size: usize,
    /// Largest number of connected workers.
    #[arg(long, global = true, env = "DISTCHAN_MAX_WORKERS", default_value_t = Config::default().max_workers)]
    max_workers: usize,
    /// Milliseconds a new connection may take to say hello.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    handshake_timeout_ms: u64,
    /// Origins allowed for browser workers (repeat or comma-separate); empty allows all.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origin: Vec<String>,
    /// Serve HTTPS and wss:// with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Milliseconds a new connection may take to send its request head (and, with TLS, to
    /// complete the TLS handshake).
    #[arg(long, global = true, env = "DISTCHAN_HEADER_READ_TIMEOUT_MS", default_value_t = Config::default().header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// Most connections that are not workers (yet) at once; more are closed at once.
    #[arg(long, global = true, env = "DISTCHAN_MAX_PENDING_CONNECTIONS", default_value_t = Config::default().max_pending_connections)]
    max_pending_connections: usize,
    /// Show a worker's address from its X-Forwarded-For header (only behind a proxy that sets it).
    #[arg(long, global = true, env = "DISTCHAN_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
    /// Give every worker the capacity it declares at once, instead of a window that starts
    /// at --start-window jobs and grows while that makes the worker faster.
    #[arg(long, global = true, env = "DISTCHAN_FIXED_WINDOWS")]
    fixed_windows: bool,
    /// The window a worker starts with before its speed is measured (jobs, at most its
    /// capacity; not used with --fixed-windows). Larger starts suit many workers on tiny
    /// jobs; small ones keep heavy jobs spread over the workers.
    #[arg(long, global = true, env = "DISTCHAN_START_WINDOW", default_value_t = Config::default().start_window as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    start_window: u32,
    /// Give each worker one job per turn of the round-robin (job v to worker v mod N, as the
    /// Go package did), instead of consecutive jobs while its connection is still sending.
    #[arg(long, global = true, env = "DISTCHAN_STRICT_TURNS")]
    strict_turns: bool,
    /// Most consecutive jobs one worker's turn carries (without --strict-turns).
    #[arg(long, global = true, env = "DISTCHAN_MAX_TURN", default_value_t = Config::default().max_turn as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_turn: u32,
    /// Turn off straggler speculation: at the end of a run, a job a slow worker holds is no
    /// longer also given to an idle worker twice as fast (the first result wins).
    #[arg(long, global = true, env = "DISTCHAN_NO_SPECULATION")]
    no_speculation: bool,
    /// Workers that must return the same result for a job before it counts (for volunteers
    /// who may return wrong results): each job goes to that many distinct workers, and to
    /// one more on a disagreement. 1 delivers the first result.
    #[arg(long, global = true, env = "DISTCHAN_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    replicas: u32,
    /// With --replicas, disconnect a worker once more than this many of its results lost to
    /// the result other workers agreed on [default: never, only count them]
    #[arg(long, global = true, env = "DISTCHAN_MAX_WRONG")]
    max_wrong: Option<u64>,
    /// Folder with the volunteer page and dashboard, served at `/` [default: ./www if present]
    #[arg(long, global = true, env = "DISTCHAN_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// Local native worker processes to start (`distchan-worker` next to this binary).
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_LOCAL_WORKERS",
        default_value_t = 1
    )]
    local_workers: usize,
    /// Concurrency of each local worker [default: number of cores]
    #[arg(long, global = true, env = "DISTCHAN_LOCAL_CONCURRENCY")]
    local_concurrency: Option<usize>,
    /// Threads of the coordinator's async runtime [default: the cores this process may use,
    /// less one for each local worker, at least one]
    #[arg(long, global = true, env = "DISTCHAN_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Run every job through this WebAssembly task module (a WASI command or reactor, `.wasm`
    /// or `.wat`) instead of a built-in task; workers and volunteer tabs fetch it from here.
    #[arg(long, global = true, env = "DISTCHAN_MODULE")]
    module: Option<PathBuf>,
    /// How jobs reach the module and results leave it: JSON text, or raw bytes.
    #[arg(long, global = true, env = "DISTCHAN_MODULE_IO", value_enum, default_value_t = ModuleIoArg::Json)]
    module_io: ModuleIoArg,
    /// Memory a task module may use per job, in MiB.
    #[arg(long, global = true, env = "DISTCHAN_MODULE_MEMORY_MB", default_value_t = Limits::default().memory_bytes >> 20)]
    module_memory_mb: u64,
    /// Time a task module may take per job, in milliseconds; a job past it is stopped and
    /// reported failed.
    #[arg(long, global = true, env = "DISTCHAN_MODULE_TIMEOUT_MS", default_value_t = Limits::default().timeout_ms)]
    module_timeout_ms: u64,
    /// Largest output of a task module per job, in bytes.
    #[arg(long, global = true, env = "DISTCHAN_MODULE_MAX_OUTPUT", default_value_t = Limits::default().max_output)]
    module_max_output: u64,
}

/// How a task module reads jobs and writes results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModuleIoArg {
    /// Each job is one JSON value on standard input; the module writes one JSON value.
    Json,
    /// Each job is a byte string on standard input; the module's output is returned as bytes.
    Bytes,
}

impl ServerArgs {
    /// The library configuration these flags describe, for jobs of the built-in `task`
    /// (`None` with a task module).
    fn config(&self, task: Option<&str>) -> Config {
        Config {
            token: self.token.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            lease: (self.lease_ms > 0).then(|| Duration::from_millis(self.lease_ms)),
            max_retries: self.max_retries,
            reconnect_grace: Duration::from_millis(self.reconnect_grace_ms),
            handler_retries: self.handler_retries,
            max_frame: self.max_frame,
            max_workers: self.max_workers,
            read_buffer_size: self.read_buffer_size,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            allowed_origins: self.allowed_origin.clone(),
            static_dir: self.static_dir.clone().or_else(default_static_dir),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_pending_connections: self.max_pending_connections,
            trust_forwarded_for: self.trust_forwarded_for,
            adaptive_windows: !self.fixed_windows,
            start_window: self.start_window as usize,
            strict_turns: self.strict_turns,
            max_turn: self.max_turn as usize,
            speculation: !self.no_speculation,
            replicas: self.replicas,
            max_wrong: self.max_wrong,
            task: task.map(str::to_owned),
            module_limits: Limits {
                memory_bytes: self.module_memory_mb << 20,
                timeout_ms: self.module_timeout_ms,
                max_output: self.module_max_output,
            },
            ..Config::default()
        }
    }

    /// The task module given with `--module`, loaded and checked.
    fn task_module(&self) -> Result<Option<TaskModule>, Error> {
        let Some(path) = &self.module else {
            return Ok(None);
        };
        let io = match self.module_io {
            ModuleIoArg::Json => ModuleIo::Json,
            ModuleIoArg::Bytes => ModuleIo::Bytes,
        };
        let module = TaskModule::from_file(path)?.io(io);
        notice(
            Level::INFO,
            format_args!(
                "task module: {} ({} bytes, {} ABI, sha256 {})",
                module.name(),
                module.bytes().len(),
                module.abi(),
                module.sha256()
            ),
        );
        Ok(Some(module))
    }

    /// A builder with this configuration, the task module if one was given (then `task` is
    /// not announced) and the AES transform if a key was given.
    fn builder(&self, task: &str) -> Result<Builder, Error> {
        let module = self.task_module()?;
        let task = module.is_none().then_some(task);
        let mut config = self.config(task);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig::from_pem_files(cert, key)?);
        }
        let mut builder = Coordinator::builder().config(config);
        if let Some(module) = module {
            builder = builder.module(module);
        }
        if let Some(key) = &self.aes_key {
            builder = builder.transform(Aes256GcmTransform::from_hex(key)?);
        }
        Ok(builder)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = runtime_threads(cli.server.threads, cores, cli.server.local_workers);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("distchan-coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    // An interrupted pipe run may leave a read of standard input waiting on a blocking
    // thread (the producer has not closed it): the run is over, so do not wait for it.
    runtime.shutdown_background();
    code
}

/// Threads for the async runtime: `asked`, or the `cores` that `local_workers` processes
/// leave (each counted as one core's worth: a busy worker keeps a core busy), at least one.
/// On two cores with two local workers, one thread handled more jobs than two: a job's
/// steps no longer move between cores.
fn runtime_threads(asked: Option<u32>, cores: usize, local_workers: usize) -> usize {
    match asked {
        Some(n) => n as usize,
        None => cores.saturating_sub(local_workers).max(1),
    }
}

async fn run(cli: Cli) -> ExitCode {
    logging::init(cli.log.log_format);
    raise_open_file_limit();
    let demo_end = |ok: bool| {
        if ok {
            RunEnd::Success
        } else {
            RunEnd::Failures
        }
    };
    let outcome = match cli.mode {
        None => demo::run(&cli.server, &cli.demo).await.map(demo_end),
        Some(Mode::Demo(args)) => demo::run(&cli.server, &args).await.map(demo_end),
        Some(Mode::Pipe(args)) => pipe::run(&cli.server, &args).await,
        Some(Mode::Serve(args)) => serve::run(&cli.server, &args).await,
    };
    match outcome {
        Ok(RunEnd::Success) => ExitCode::SUCCESS,
        Ok(RunEnd::Failures) => ExitCode::from(2),
        Ok(RunEnd::Interrupted) => ExitCode::from(130),
        Err(e) => {
            notice(Level::ERROR, format_args!("distchan-coordinator: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn default_static_dir() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("www"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../www"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("index.html").is_file())
}

/// Prints where to connect (to stderr when stdout carries data) and starts local workers.
fn announce(coordinator: &Coordinator, server: &ServerArgs, to_stderr: bool) -> LocalWorkers {
    let addr = coordinator.local_addr();
    let say = |line: String| {
        if to_stderr {
            notice(Level::INFO, line)
        } else {
            println!("{line}")
        }
    };
    let http = coordinator.http_url();
    say(format!("distchan coordinator listening on {addr}"));
    if coordinator.config().static_dir.is_some() {
        say(format!(
            "volunteer: open {http}/ in a browser and press Start"
        ));
        say(format!("dashboard: {http}/dashboard"));
    }
    say(format!("metrics: {http}/metrics"));
    say(format!(
        "more workers: distchan-worker --url {}",
        coordinator.ws_url()
    ));
    LocalWorkers::spawn(&coordinator.ws_url(), server)
}

/// Native worker processes started next to the coordinator; waited for on drop.
struct LocalWorkers(Vec<Child>);

impl LocalWorkers {
    fn spawn(url: &str, server: &ServerArgs) -> Self {
        if server.local_workers == 0 {
            return LocalWorkers(Vec::new());
        }
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("distchan-worker")))
            .filter(|p| p.is_file());
        let Some(exe) = exe else {
            notice(Level::WARN, "note: no distchan-worker binary next to this one; build it with `cargo build --release --bins`");
            return LocalWorkers(Vec::new());
        };
        let mut children = Vec::new();
        for i in 0..server.local_workers {
            let mut cmd = Command::new(&exe);
            // They live and end with this coordinator: no reconnecting to a later one.
            cmd.arg("--url")
                .arg(url)
                .arg("--once")
                .arg("--agent")
                .arg(format!("local worker {}", i + 1));
            cmd.stdout(std::process::Stdio::null());
            if let Some(c) = server.local_concurrency {
                cmd.arg("--concurrency").arg(c.to_string());
            }
            if let Some(t) = &server.token {
                cmd.env("DISTCHAN_TOKEN", t);
            }
            if let Some(k) = &server.aes_key {
                cmd.env("DISTCHAN_AES_KEY", k);
            }
            // A self-signed certificate is its own CA.
            if let Some(cert) = &server.tls_cert {
                cmd.env("DISTCHAN_CA_CERT", cert);
            }
            match cmd.spawn() {
                Ok(child) => children.push(child),
                Err(e) => notice(
                    Level::WARN,
                    format_args!("note: could not start a local worker: {e}"),
                ),
            }
        }
        LocalWorkers(children)
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        // They leave by themselves at end-of-work or when the coordinator goes away; any
        // other end is said.
        for (i, child) in self.0.iter_mut().enumerate() {
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => notice(
                    Level::WARN,
                    format_args!("local worker {} ended with {status}", i + 1),
                ),
                Err(e) => notice(
                    Level::WARN,
                    format_args!("local worker {}: could not wait for it: {e}", i + 1),
                ),
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that many workers (each one
/// socket) fit, and logs the figure.
#[cfg(target_os = "linux")]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not read the open-file limit");
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open-file limit");
        }
    }
    tracing::info!(open_files = limit.rlim_cur, "open-file limit");
}

#[cfg(not(target_os = "linux"))]
fn raise_open_file_limit() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_gets_the_cores_local_workers_leave_or_what_was_asked() {
        assert_eq!(runtime_threads(None, 2, 1), 1);
        assert_eq!(runtime_threads(None, 2, 2), 1);
        assert_eq!(runtime_threads(None, 8, 1), 7);
        assert_eq!(runtime_threads(None, 4, 0), 4);
        assert_eq!(runtime_threads(Some(3), 2, 2), 3);
    }

    #[test]
    fn threads_are_read_from_the_command_line_and_zero_is_refused() {
        let cli = Cli::try_parse_from(["distchan-coordinator", "pipe", "--threads", "3"]).unwrap();
        assert_eq!(cli.server.threads, Some(3));
        assert!(Cli::try_parse_from(["distchan-coordinator", "--threads", "0"]).is_err());
    }
}
