//! Tiny jobs through a task: the built-in `capitalize` beside the same work done by a task
//! module under each ABI, a fresh instance per job (command) and one reused instance
//! (reactor).
//!
//! The job is a 14-letter string (15 bytes of MessagePack); the coordinator runs in the
//! bench process and K `--worker --flavor task` children run `distchan_worker::serve_task`
//! on one thread each, exactly as the `distchan-worker` binary would. The modules are
//! `bench/modules/capitalize.wat` and `capitalize-reactor.wat` (WASI text-format modules,
//! so the bench needs no wasm toolchain); with a module, each job crosses into the module as
//! JSON text and back. Every result is checked: each job exactly once, upper-cased.

use std::time::Duration;

use distchan_coordinator::{Builder, Coordinator, JobOutcome, TaskModule};
use distchan_protocol::tasks;
use tokio::time::Instant;

use crate::{
    children::cpu_secs,
    modes::Flavor,
    ours::{setup, worker_args, Seen, Setup, ENDED_EARLY},
    BenchResult, Throughput,
};

/// Who does the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Work {
    /// The built-in `capitalize` task, compiled into the worker.
    Builtin,
    /// The capitalize module as a WASI command: a fresh instance per job.
    Command,
    /// The capitalize module as a reactor: one instance serves many jobs.
    Reactor,
}

impl Work {
    /// The row's name.
    pub fn describe(self) -> &'static str {
        match self {
            Work::Builtin => "built-in capitalize",
            Work::Command => "capitalize module, command ABI",
            Work::Reactor => "capitalize module, reactor ABI",
        }
    }
}

/// The module doing `work`, if it is one.
fn module(work: Work) -> BenchResult<Option<TaskModule>> {
    let (name, text) = match work {
        Work::Builtin => return Ok(None),
        Work::Command => ("capitalize.wat", include_str!("../modules/capitalize.wat")),
        Work::Reactor => (
            "capitalize-reactor.wat",
            include_str!("../modules/capitalize-reactor.wat"),
        ),
    };
    Ok(Some(TaskModule::from_bytes(name, text)?))
}

/// Job `i`: "job" and 11 letters that spell `i` in base 26.
fn job(i: u64) -> String {
    let mut s = String::with_capacity(14);
    s.push_str("job");
    let mut v = i;
    for _ in 0..11 {
        s.push(char::from(b'a' + (v % 26) as u8));
        v /= 26;
    }
    s
}

/// A coordinator for `work`: its task, or its module.
pub(crate) fn builder(work: Work) -> BenchResult<Builder> {
    let builder = Coordinator::builder().configure(|c| crate::ours::tuning().apply(c));
    Ok(match module(work)? {
        Some(module) => builder.module(module),
        None => builder.configure(|c| c.task = Some(tasks::CAPITALIZE.into())),
    })
}

/// `n` jobs through `k` worker processes with credit window `w`, done by `work`.
pub async fn throughput(work: Work, k: usize, w: u32, n: u64) -> BenchResult<Throughput> {
    let mut s: Setup<String, String> =
        setup(builder(work)?, k, Duration::from_secs(30), |url, c| {
            (0..k).try_for_each(|_| c.spawn(&worker_args(url, w, Flavor::Task)))
        })
        .await?;
    let t = pump(&mut s, 0, n).await?;
    s.finish().await?;
    Ok(t)
}

/// Sends jobs `first..first + n` (the ids the coordinator gives them: `first` jobs went
/// before) and checks that each comes back exactly once, upper-cased.
pub(crate) async fn pump(
    s: &mut Setup<String, String>,
    first: u64,
    n: u64,
) -> BenchResult<Throughput> {
    let jobs = s.jobs.clone().ok_or("the job side is already closed")?;
    let (cpu_here, cpu_children) = (cpu_secs(None), s.children.cpu_secs());
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        const BATCH: u64 = 64;
        let mut i = first;
        while i < first + n {
            let m = (first + n - i).min(BATCH);
            jobs.send_many((i..i + m).map(job)).await?;
            i += m;
        }
        BenchResult::Ok(())
    });
    let mut seen = Seen::new(first, n);
    let results = &mut s.results;
    let mut check = |outcome: JobOutcome<String>| -> BenchResult<()> {
        let id = outcome.id.0;
        seen.mark(outcome.id)?;
        let got = outcome
            .result
            .map_err(|e| format!("job {id} failed: {e}"))?;
        if got != job(id).to_uppercase() {
            return Err(format!("job {id} came back as {got:?}").into());
        }
        Ok(())
    };
    s.children
        .watch(async {
            let mut got = 0;
            let mut batch = Vec::with_capacity(256);
            while got < n {
                if results.recv_many(&mut batch, 256).await == 0 {
                    return Err(ENDED_EARLY.into());
                }
                got += batch.len() as u64;
                batch.drain(..).try_for_each(&mut check)?;
            }
            BenchResult::Ok(())
        })
        .await??;
    let secs = start.elapsed().as_secs_f64();
    let cpu_here = cpu_secs(None) - cpu_here;
    let cpu_children = s.children.cpu_secs() - cpu_children;
    producer.await??;
    Ok(Throughput {
        items: n,
        secs,
        cpu_here,
        cpu_children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_distinct_fourteen_letter_strings() {
        assert_eq!(job(0), "jobaaaaaaaaaaa");
        assert_eq!(job(27), "jobbbaaaaaaaaa");
        assert_ne!(job(1), job(26));
        assert!((0..1000).all(|i| job(i).len() == 14));
    }
}
