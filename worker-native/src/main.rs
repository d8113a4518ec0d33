//! `distchan-worker`: joins a coordinator and runs the task it names: a built-in task, or a
//! WebAssembly task module fetched from the coordinator and run sandboxed.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG=debug` for more), as text or, with
//! `--log-format json`, as JSON lines; see `distchan_protocol::logging`.

use std::process::ExitCode;

use clap::Parser;
use distchan_protocol::{
    logging::{self, notice, LogArgs},
    transform::Aes256GcmTransform,
};
use distchan_worker::{serve_task, Error, Options};
use tracing::Level;

/// Join a distchan coordinator and compute its jobs: with a built-in task, or with the
/// WebAssembly task module the coordinator serves.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Args {
    /// The coordinator's WebSocket URL.
    #[arg(long, env = "DISTCHAN_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Jobs run at the same time (default: number of cores).
    #[arg(long, env = "DISTCHAN_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Most unanswered jobs the coordinator may send at once; it sizes the window below
    /// that from this worker's measured speed [default: 256].
    #[arg(long, env = "DISTCHAN_CAPACITY")]
    capacity: Option<u32>,
    /// Access token the coordinator requires.
    #[arg(long, env = "DISTCHAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// AES-256-GCM key (64 hex digits) if the coordinator encrypts payloads.
    #[arg(long, env = "DISTCHAN_AES_KEY", hide_env_values = true)]
    aes_key: Option<String>,
    /// Name shown on the coordinator's side.
    #[arg(long, env = "DISTCHAN_AGENT")]
    agent: Option<String>,
    /// Group to count in when the coordinator has each job computed by several workers
    /// (--replicas): workers of one group never get the same job.
    #[arg(long, env = "DISTCHAN_GROUP")]
    group: Option<String>,
    /// Folder where task modules are kept between runs [default: distchan/modules in the
    /// user's cache folder].
    #[arg(long, env = "DISTCHAN_MODULE_CACHE")]
    module_cache: Option<std::path::PathBuf>,
    /// Connect once: end at the first lost connection instead of connecting again.
    #[arg(long)]
    once: bool,
    /// PEM file of certificates to trust for wss:// and https:// besides the usual roots
    /// (a private CA, or the coordinator's self-signed certificate); may hold several.
    #[arg(long, env = "DISTCHAN_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit status:
  0    the coordinator's work is done, or the worker left when asked (Ctrl-C, once)
  1    an error: refused by the coordinator (token, protocol version, origin), a task or task
       module this worker cannot run, a bad option, or (with --once) a lost connection
  130  quit at once by a second Ctrl-C; the coordinator hands the jobs held to other workers

A lost connection is made again after a growing random delay (250 ms doubling up to 30 s),
and the connection is logged each time.";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            notice(Level::ERROR, format_args!("distchan-worker: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let mut options = Options::default();
    if let Some(c) = args.concurrency {
        options.concurrency = c.max(1);
    }
    if let Some(capacity) = args.capacity {
        options.capacity = capacity.max(1);
    }
    options.token = args.token;
    options.reconnect = !args.once;
    options.agent = args.agent;
    options.group = args.group;
    if args.module_cache.is_some() {
        options.module_cache = args.module_cache;
    }
    if let Some(path) = &args.ca_cert {
        options = options.ca_cert_file(path)?;
    }
    if let Some(key) = &args.aes_key {
        options = options.transform(Aes256GcmTransform::from_hex(key)?);
    }
    let drain = options.drain.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            notice(
                Level::WARN,
                "distchan-worker: finishing the jobs held, then leaving (Ctrl-C again to quit now)",
            );
            drain.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                notice(Level::WARN, "distchan-worker: quitting; the coordinator hands unanswered jobs to other workers");
                std::process::exit(130);
            }
        }
    });
    serve_task(&args.url, options).await
}
