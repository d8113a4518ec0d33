//! `distchan-coordinator`: serves jobs to workers; by default runs the Mandelbrot demo.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitCode},
    time::Duration,
};

use clap::{Parser, ValueEnum};
use distchan_coordinator::{
    demo::{self, Picture, PictureSpec, Progress},
    transform::Aes256GcmTransform,
    Config, Coordinator, Error,
};
use distchan_protocol::tasks::{self, Tile, TilePixels};

/// Hand out jobs to distchan workers (native processes and browser tabs) and collect results.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (HTTP page and WebSocket endpoint on the same port).
    #[arg(long, env = "DISTCHAN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Demo workload to run.
    #[arg(long, env = "DISTCHAN_DEMO", value_enum, default_value_t = DemoKind::Mandelbrot)]
    demo: DemoKind,
    /// Number of jobs for the capitalize demo.
    #[arg(long, env = "DISTCHAN_JOBS", default_value_t = 10_000)]
    jobs: usize,
    /// Picture width for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().width)]
    width: u32,
    /// Picture height for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().height)]
    height: u32,
    /// Tile edge for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().tile)]
    tile: u32,
    /// Iteration limit for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().max_iter)]
    max_iter: u32,
    /// Where the Mandelbrot picture is written.
    #[arg(long, env = "DISTCHAN_OUTPUT", default_value = "mandelbrot.png")]
    output: PathBuf,
    /// Recompute every result locally and count mismatches (for tests).
    #[arg(long)]
    verify: bool,
    /// Local native worker processes to start (`distchan-worker` next to this binary).
    #[arg(long, env = "DISTCHAN_LOCAL_WORKERS", default_value_t = 1)]
    local_workers: usize,
    /// Concurrency of each local worker (default: number of cores).
    #[arg(long)]
    local_concurrency: Option<usize>,
    /// Access token workers must present.
    #[arg(long, env = "DISTCHAN_TOKEN")]
    token: Option<String>,
    /// AES-256-GCM key (64 hex digits) to encrypt payloads with.
    #[arg(long, env = "DISTCHAN_AES_KEY", hide_env_values = true)]
    aes_key: Option<String>,
    /// Heartbeat interval in milliseconds (0 disables).
    #[arg(long, env = "DISTCHAN_HEARTBEAT_MS", default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Job lease in milliseconds (0: no lease).
    #[arg(long, env = "DISTCHAN_LEASE_MS", default_value_t = 0)]
    lease_ms: u64,
    /// Origins allowed for browser workers (repeat or comma-separate); empty allows all.
    #[arg(long, env = "DISTCHAN_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origin: Vec<String>,
    /// Folder with the volunteer page, served at `/`.
    #[arg(long, env = "DISTCHAN_STATIC_DIR")]
    static_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DemoKind {
    /// Mandelbrot tiles assembled into a PNG picture.
    Mandelbrot,
    /// Upper-case words (the Go README's example).
    Capitalize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("distchan-coordinator: {e}");
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

async fn run(args: Args) -> Result<bool, Error> {
    let config = Config {
        token: args.token.clone(),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        lease: (args.lease_ms > 0).then(|| Duration::from_millis(args.lease_ms)),
        allowed_origins: args.allowed_origin.clone(),
        static_dir: args.static_dir.clone().or_else(default_static_dir),
        task: Some(match args.demo {
            DemoKind::Mandelbrot => tasks::MANDELBROT.to_owned(),
            DemoKind::Capitalize => tasks::CAPITALIZE.to_owned(),
        }),
        ..Config::default()
    };
    let mut builder = Coordinator::builder().config(config);
    if let Some(key) = &args.aes_key {
        builder = builder.transform(Aes256GcmTransform::from_hex(key)?);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    match args.demo {
        DemoKind::Mandelbrot => run_mandelbrot(builder, listener, &args).await,
        DemoKind::Capitalize => run_capitalize(builder, listener, &args).await,
    }
}

fn announce(coordinator: &Coordinator, args: &Args) -> Vec<Child> {
    let addr = coordinator.local_addr();
    println!("distchan coordinator listening on {addr}");
    if coordinator.config().static_dir.is_some() {
        println!("volunteer: open http://{addr}/ in a browser and press Start");
    }
    println!(
        "more workers: distchan-worker --url {}",
        coordinator.ws_url()
    );
    spawn_local_workers(&coordinator.ws_url(), args)
}

fn spawn_local_workers(url: &str, args: &Args) -> Vec<Child> {
    if args.local_workers == 0 {
        return Vec::new();
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("distchan-worker")))
        .filter(|p| p.is_file());
    let Some(exe) = exe else {
        eprintln!("note: no distchan-worker binary next to this one; build it with `cargo build --release --bins`");
        return Vec::new();
    };
    let mut children = Vec::new();
    for i in 0..args.local_workers {
        let mut cmd = Command::new(&exe);
        cmd.arg("--url")
            .arg(url)
            .arg("--agent")
            .arg(format!("local worker {}", i + 1));
        if let Some(c) = args.local_concurrency {
            cmd.arg("--concurrency").arg(c.to_string());
        }
        if let Some(t) = &args.token {
            cmd.arg("--token").arg(t);
        }
        if let Some(k) = &args.aes_key {
            cmd.env("DISTCHAN_AES_KEY", k);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => eprintln!("note: could not start a local worker: {e}"),
        }
    }
    children
}

async fn run_mandelbrot(
    builder: distchan_coordinator::Builder,
    listener: tokio::net::TcpListener,
    args: &Args,
) -> Result<bool, Error> {
    let spec = PictureSpec {
        width: args.width,
        height: args.height,
        tile: args.tile,
        max_iter: args.max_iter,
    };
    let (coordinator, jobs, mut results) = builder.listen::<Tile, TilePixels>(listener)?;
    let mut children = announce(&coordinator, args);
    let tiles = spec.tiles();
    println!(
        "demo: a {}x{} Mandelbrot picture in {} tiles",
        spec.width,
        spec.height,
        tiles.len()
    );
    let sent = tiles.clone();
    let producer = tokio::spawn(async move {
        for tile in sent {
            jobs.send(tile).await?;
        }
        Ok::<_, Error>(())
    });
    let mut picture = Picture::new(spec);
    let mut progress = Progress::new(tiles.len());
    let mut mismatches = 0usize;
    let mut interrupted = false;
    loop {
        let outcome = tokio::select! {
            o = results.recv() => o,
            _ = tokio::signal::ctrl_c() => { interrupted = true; None }
        };
        let Some(outcome) = outcome else { break };
        let ok = match outcome.result {
            Ok(px) => {
                if args.verify {
                    let tile = &tiles[outcome.id.0 as usize];
                    if tasks::mandelbrot(tile) != px {
                        mismatches += 1;
                        eprintln!(
                            "mismatch: job {} (tile at {}, {})",
                            outcome.id, tile.x, tile.y
                        );
                    }
                }
                picture
                    .place(&px)
                    .map_err(|e| eprintln!("job {}: {e}", outcome.id))
                    .is_ok()
            }
            Err(e) => {
                eprintln!("job {} failed: {e}", outcome.id);
                false
            }
        };
        if let Some(line) = progress.record(ok, coordinator.worker_count()) {
            println!("{line}");
        }
    }
    producer.abort();
    finish(coordinator, &mut children, &progress, interrupted).await;
    if picture.tiles_placed() > 0 {
        picture.save_png(&args.output)?;
        println!("picture written to {}", args.output.display());
    }
    if args.verify {
        println!(
            "verify: {} results checked, {mismatches} mismatches",
            progress.done()
        );
    }
    Ok(!interrupted && progress.failed() == 0 && mismatches == 0 && progress.done() == tiles.len())
}

async fn run_capitalize(
    builder: distchan_coordinator::Builder,
    listener: tokio::net::TcpListener,
    args: &Args,
) -> Result<bool, Error> {
    let (coordinator, jobs, mut results) = builder.listen::<String, String>(listener)?;
    let mut children = announce(&coordinator, args);
    let words = demo::words(args.jobs);
    println!("demo: capitalizing {} words", words.len());
    let sent = words.clone();
    let producer = tokio::spawn(async move {
        for w in sent {
            jobs.send(w).await?;
        }
        Ok::<_, Error>(())
    });
    let mut progress = Progress::new(words.len());
    let mut mismatches = 0usize;
    let mut interrupted = false;
    loop {
        let outcome = tokio::select! {
            o = results.recv() => o,
            _ = tokio::signal::ctrl_c() => { interrupted = true; None }
        };
        let Some(outcome) = outcome else { break };
        let ok = match outcome.result {
            Ok(s) => {
                if args.verify && s != words[outcome.id.0 as usize].to_uppercase() {
                    mismatches += 1;
                }
                true
            }
            Err(e) => {
                eprintln!("job {} failed: {e}", outcome.id);
                false
            }
        };
        if let Some(line) = progress.record(ok, coordinator.worker_count()) {
            println!("{line}");
        }
    }
    producer.abort();
    finish(coordinator, &mut children, &progress, interrupted).await;
    if args.verify {
        println!(
            "verify: {} results checked, {mismatches} mismatches",
            progress.done()
        );
    }
    Ok(!interrupted && progress.failed() == 0 && mismatches == 0 && progress.done() == words.len())
}

async fn finish(
    coordinator: Coordinator,
    children: &mut [Child],
    progress: &Progress,
    interrupted: bool,
) {
    let stats = coordinator.stats();
    let report = coordinator.shutdown().await;
    for child in children.iter_mut() {
        let _ = child.wait();
    }
    println!(
        "summary: {} jobs in {:.1}s ({:.1} jobs/s), {} failed, {} re-dispatched, {} duplicates dropped",
        progress.done(),
        progress.elapsed_secs(),
        progress.rate(),
        progress.failed(),
        stats.redelivered,
        stats.duplicates,
    );
    if interrupted || !report.unfinished.is_empty() {
        println!(
            "interrupted: {} of {} jobs unfinished ({} of them queued or in flight at the coordinator)",
            progress.total() - progress.done(),
            progress.total(),
            report.unfinished.len()
        );
    }
}
