//! One fast and one slow worker: how long a run takes when each worker's credit window
//! follows its measured speed (the coordinator's default) against equal fixed windows, and
//! how much straggler speculation (the default too) shortens its end.
//!
//! Two `--worker` children of the `paced` flavor answer one job at a time, after
//! [`FAST_MS`] and [`SLOW_MS`] of sleep: a fast machine and one ten times slower (a phone,
//! an old laptop). Both declare [`CAPACITY`], the native worker's default. With fixed
//! windows the slow one holds that many jobs from the start and the run waits for it; with
//! adaptive windows it holds about a quarter second of its own work, which the run's end
//! still waits for unless speculation gives those jobs to the fast one too.

use std::time::Duration;

use bytes::Bytes;
use distchan_coordinator::{Config, Coordinator};
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    modes::Flavor,
    ours::{setup, worker_args, Seen, Setup, ENDED_EARLY},
    BenchResult,
};

/// Sleep per job of the fast worker.
pub const FAST_MS: u64 = 1;
/// Sleep per job of the slow worker.
pub const SLOW_MS: u64 = 10;
/// What each worker declares.
pub const CAPACITY: u32 = 256;

/// One run: when the last outcome came, and how long the last tenth of the jobs took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FleetRun {
    /// Seconds from the first send to the last outcome.
    pub secs: f64,
    /// Seconds from the outcome that completed nine tenths of the jobs to the last one.
    pub tail_secs: f64,
}

/// `n` tiny jobs through one fast and one slow worker, with adaptive or fixed windows, and
/// with straggler speculation or without.
pub async fn run(adaptive: bool, speculation: bool, n: u64) -> BenchResult<FleetRun> {
    let config = Config {
        adaptive_windows: adaptive,
        speculation,
        ..Config::default()
    };
    let builder = Coordinator::builder().config(config);
    let mut s: Setup = setup(builder, 2, Duration::from_secs(30), |url, c| {
        for ms in [FAST_MS, SLOW_MS] {
            let mut args = worker_args(url, CAPACITY, Flavor::Paced);
            args.extend(["--job-ms".into(), ms.to_string()]);
            c.spawn(&args)?;
        }
        Ok(())
    })
    .await?;
    let jobs = s.jobs.take().ok_or("no job side")?;
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        jobs.send_many((0..n).map(|_| Bytes::from_static(b"job")))
            .await
            .map(drop)
    });
    let mut at = Vec::with_capacity(n as usize);
    let mut seen = Seen::new(0, n);
    let results = &mut s.results;
    s.children
        .watch(async {
            while (at.len() as u64) < n {
                let outcome = results.recv().await.ok_or(ENDED_EARLY)?;
                outcome
                    .result
                    .map_err(|e| format!("job {} failed: {e}", outcome.id))?;
                seen.mark(outcome.id)?;
                at.push(start.elapsed().as_secs_f64());
            }
            BenchResult::Ok(())
        })
        .await??;
    producer.await??;
    s.finish().await?;
    let secs = at.last().copied().unwrap_or(0.0);
    let nine_tenths = at[(at.len() * 9 / 10).saturating_sub(1)];
    Ok(FleetRun {
        secs,
        tail_secs: secs - nine_tenths,
    })
}
