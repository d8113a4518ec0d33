//! `distchan-coordinator demo`: a workload worth watching, computed by whoever volunteers.

use std::path::PathBuf;

use base64::Engine;
use clap::{Args, ValueEnum};
use distchan_coordinator::{Coordinator, Error, JobOutcome};
use distchan_protocol::{
    logging::notice,
    tasks::{self, TilePixels},
};
use serde::{de::DeserializeOwned, Serialize};
use tracing::Level;

use crate::{
    announce, shares,
    workload::{words, Picture, PictureSpec, Progress},
    ServerArgs,
};

/// Options of the demo.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Which workload.
    #[arg(long, env = "DISTCHAN_DEMO", value_enum, default_value_t = DemoKind::Mandelbrot)]
    pub demo: DemoKind,
    /// Number of jobs for the capitalize demo.
    #[arg(long, env = "DISTCHAN_JOBS", default_value_t = 10_000)]
    pub jobs: usize,
    /// Picture width for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().width)]
    pub width: u32,
    /// Picture height for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().height)]
    pub height: u32,
    /// Tile edge for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().tile)]
    pub tile: u32,
    /// Iteration limit for the Mandelbrot demo.
    #[arg(long, default_value_t = PictureSpec::default().max_iter)]
    pub max_iter: u32,
    /// Where the Mandelbrot picture is written.
    #[arg(long, env = "DISTCHAN_OUTPUT", default_value = "mandelbrot.png")]
    pub output: PathBuf,
    /// Recompute every result locally and count mismatches (used by the tests).
    #[arg(long)]
    pub verify: bool,
    /// Once the work is done, start it again, round after round, until Ctrl-C: the page
    /// keeps having work for the volunteers who open it.
    #[arg(long, env = "DISTCHAN_LINGER")]
    pub linger: bool,
}

/// The demo workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoKind {
    /// Mandelbrot tiles assembled into a PNG picture (shown live on the dashboard).
    Mandelbrot,
    /// Upper-case words (the Go README's example).
    Capitalize,
}

/// Runs the chosen demo; `Ok(true)` when every job came back correct.
pub async fn run(server: &ServerArgs, args: &DemoArgs) -> Result<bool, Error> {
    if server.module.is_some() {
        return module_words(server, args).await;
    }
    match args.demo {
        DemoKind::Mandelbrot => mandelbrot(server, args).await,
        DemoKind::Capitalize => capitalize(server, args).await,
    }
}

async fn mandelbrot(server: &ServerArgs, args: &DemoArgs) -> Result<bool, Error> {
    let spec = PictureSpec {
        width: args.width,
        height: args.height,
        tile: args.tile,
        max_iter: args.max_iter,
    };
    let tiles = spec.tiles();
    let mut picture = Picture::new(spec);
    println!(
        "demo: a {}x{} Mandelbrot picture in {} tiles",
        spec.width,
        spec.height,
        tiles.len()
    );
    let verify = args.verify;
    let b64 = base64::engine::general_purpose::STANDARD;
    let all_ok = run_jobs(
        server,
        args,
        tasks::MANDELBROT,
        tiles.clone(),
        |coordinator: &Coordinator, id, worker, px: TilePixels| {
            if verify && tasks::mandelbrot(&tiles[id as usize]) != px {
                return Err(format!(
                    "tile at ({}, {}) differs from the local computation",
                    px.x, px.y
                ));
            }
            picture.place(&px)?;
            let event = serde_json::json!({
                "type": "tile", "job": id, "worker": worker,
                "x": px.x, "y": px.y, "width": px.width, "height": px.height,
                "image_width": spec.width, "image_height": spec.height,
                "rgba": b64.encode(&px.rgba),
            });
            coordinator.publish(&event).map_err(|e| e.to_string())
        },
    )
    .await?;
    if picture.tiles_placed() > 0 {
        picture.save_png(&args.output)?;
        println!("picture written to {}", args.output.display());
    }
    Ok(all_ok)
}

async fn capitalize(server: &ServerArgs, args: &DemoArgs) -> Result<bool, Error> {
    let input = words(args.jobs);
    println!("demo: capitalizing {} words", input.len());
    let verify = args.verify;
    run_jobs(
        server,
        args,
        tasks::CAPITALIZE,
        input.clone(),
        |_: &Coordinator, id, _, s: String| {
            if verify && s != input[id as usize].to_uppercase() {
                return Err(format!("{s:?} is not {:?} capitalized", input[id as usize]));
            }
            Ok(())
        },
    )
    .await
}

/// The demo with the user's task module: the capitalize demo's words, each a JSON string,
/// through the module; the first results are printed. Its results cannot be verified here.
async fn module_words(server: &ServerArgs, args: &DemoArgs) -> Result<bool, Error> {
    if args.verify {
        return Err(Error::config(
            "--verify checks the built-in demos; a task module's results cannot be recomputed here",
        ));
    }
    let input = words(args.jobs);
    println!(
        "demo: {} words through the task module, each as a JSON string",
        input.len()
    );
    let mut shown = 0;
    run_jobs(
        server,
        args,
        "",
        input.clone(),
        |_: &Coordinator, id, _, value: serde_json::Value| {
            if shown < 3 {
                shown += 1;
                println!("result of {:?}: {value}", input[id as usize]);
            }
            Ok(())
        },
    )
    .await
}

/// Starts the coordinator, sends `jobs` (round after round with `--linger`), hands every
/// result to `check` with the index of its job in `jobs`, prints progress and a summary
/// (and, with `--verify`, how many results `check` compared and rejected). `Ok(true)` when
/// every job succeeded and passed `check`.
async fn run_jobs<J, R, F>(
    server: &ServerArgs,
    args: &DemoArgs,
    task: &str,
    jobs: Vec<J>,
    mut check: F,
) -> Result<bool, Error>
where
    J: Serialize + Clone + Send + Sync + 'static,
    R: DeserializeOwned,
    F: FnMut(&Coordinator, u64, Option<u64>, R) -> Result<(), String>,
{
    let listener = tokio::net::TcpListener::bind(&server.listen).await?;
    let (coordinator, sender, mut results) = server.builder(task)?.listen::<J, R>(listener)?;
    let local = announce(&coordinator, server, false);
    let total = jobs.len();
    let linger = args.linger && total > 0;
    let producer = tokio::spawn(async move {
        loop {
            for job in &jobs {
                sender.send(job.clone()).await?;
            }
            if !linger {
                return Ok::<_, Error>(());
            }
        }
    });
    let mut progress = Progress::new(total);
    let (mut rounds, mut earlier_done, mut earlier_failed) = (0usize, 0usize, 0usize);
    let mut interrupted = false;
    let (mut checked, mut rejected) = (0usize, 0usize);
    loop {
        let outcome: Option<JobOutcome<R>> = tokio::select! {
            o = results.recv() => o,
            _ = tokio::signal::ctrl_c() => { interrupted = true; None }
        };
        let Some(outcome) = outcome else { break };
        let checked = match outcome.result {
            Ok(r) => {
                checked += 1;
                // Ids count the jobs sent, from 0, round after round.
                let index = outcome.id.0 % total as u64;
                let verdict = check(&coordinator, index, outcome.worker, r);
                rejected += usize::from(verdict.is_err());
                verdict
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &checked {
            notice(Level::WARN, format_args!("job {} failed: {e}", outcome.id));
        }
        if let Some(line) = progress.record(checked.is_ok(), coordinator.worker_count()) {
            println!("{line}");
        }
        if linger && progress.done() == total {
            rounds += 1;
            earlier_done += progress.done();
            earlier_failed += progress.failed();
            println!("round {rounds} done; starting again (--linger: Ctrl-C to stop)");
            progress = Progress::new(total);
        }
    }
    producer.abort();
    // Give the workers a moment to leave on their own after end-of-work.
    let mut workers = coordinator.watch_workers();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        workers.wait_for(|&n| n == 0),
    )
    .await;
    let stats = coordinator.stats();
    let report = coordinator.shutdown().await;
    drop(local);
    println!(
        "summary: {} of {total} jobs in {:.1}s ({:.1} jobs/s), {} failed, {} workers seen, {} re-dispatched, {} duplicates dropped",
        progress.done(),
        progress.elapsed_secs(),
        progress.rate(),
        progress.failed(),
        progress.workers_seen(),
        stats.redelivered,
        stats.duplicates,
    );
    for line in shares::describe(&report.shares) {
        println!("{line}");
    }
    if args.verify {
        println!("verify: {checked} results checked, {rejected} mismatches");
    }
    if linger {
        // Ctrl-C is how a lingering demo ends: what was computed counts.
        println!(
            "linger: {rounds} full rounds, {} jobs answered in all",
            earlier_done + progress.done()
        );
        return Ok(earlier_failed + progress.failed() == 0 && rejected == 0);
    }
    if interrupted || progress.done() < total {
        println!(
            "interrupted: {} of {total} jobs unfinished ({} of them queued or in flight at the coordinator)",
            total - progress.done(),
            report.unfinished.len()
        );
    }
    Ok(!interrupted && progress.failed() == 0 && progress.done() == total)
}
