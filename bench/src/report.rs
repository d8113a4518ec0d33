//! What a run found: the figures, the table printed at the end, the comparison with the
//! targets the README states, and the JSON file.

use serde::Serialize;

use crate::{Latency, Throughput};

/// CPU microseconds per job (message): in the bench process (coordinator with the typed
/// sender and receiver, or echo server) and in the children (workers or echo clients).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    /// In the bench process.
    pub here_us: f64,
    /// In the child processes together.
    pub children_us: f64,
}

impl Cpu {
    /// The CPU per item of a run.
    pub fn of(t: &Throughput) -> Self {
        let (here_us, children_us) = t.cpu_us_per_item();
        Cpu {
            here_us,
            children_us,
        }
    }

    /// `3.1+2.0` (bench process + children).
    fn show(&self) -> String {
        if self.here_us >= 100.0 || self.children_us >= 100.0 {
            format!("{:.0}+{:.0}", self.here_us, self.children_us)
        } else {
            format!("{:.1}+{:.1}", self.here_us, self.children_us)
        }
    }
}

/// Tiny jobs through the coordinator next to the echo of the same messages.
#[derive(Debug, Serialize)]
pub struct TinyRow {
    /// Worker processes (and echo clients).
    pub k: usize,
    /// Unanswered jobs (messages) per worker (connection).
    pub w: u32,
    /// How the workers answered.
    pub flavor: crate::modes::Flavor,
    /// How jobs were sent and results taken.
    pub api: crate::ours::Api,
    /// Jobs sent (and messages echoed).
    pub jobs: u64,
    /// Jobs per second through the coordinator.
    pub ours_per_s: f64,
    /// Messages per second through the plain echo; `None` when the row has no echo of its
    /// own (the inline-worker diagnostic shares the serve row's).
    pub echo_per_s: Option<f64>,
    /// `ours_per_s / echo_per_s`.
    pub ratio: Option<f64>,
    /// CPU per job through the coordinator.
    pub ours_cpu: Cpu,
    /// CPU per message through the echo.
    pub echo_cpu: Option<Cpu>,
}

/// Tiny jobs through a built-in task or the same work as a task module.
#[derive(Debug, Serialize)]
pub struct TaskRow {
    /// Who did the work.
    pub work: crate::tasks::Work,
    /// Worker processes (one thread each).
    pub k: usize,
    /// Unanswered jobs per worker.
    pub w: u32,
    /// Jobs sent.
    pub jobs: u64,
    /// Jobs per second.
    pub per_s: f64,
    /// `per_s` over the built-in task's (absent on the built-in row).
    pub vs_builtin: Option<f64>,
    /// CPU per job.
    pub cpu: Cpu,
}

/// Tiny jobs in one browser tab.
#[derive(Debug, Serialize)]
pub struct TabRow {
    /// Who did the work.
    pub work: crate::tasks::Work,
    /// Web Worker threads of the page.
    pub threads: usize,
    /// Jobs measured.
    pub jobs: u64,
    /// Jobs per second.
    pub per_s: f64,
    /// `per_s` over the built-in task's in the tab (absent on the built-in row).
    pub vs_builtin: Option<f64>,
    /// CPU per job: coordinator, and the browser's whole process tree.
    pub cpu: Cpu,
}

/// JSON lines through the coordinator binary's pipe mode, without and with the journal.
#[derive(Debug, Serialize)]
pub struct PipeRow {
    /// Local worker processes the coordinator started.
    pub workers: usize,
    /// Input lines (and output lines) per run.
    pub lines: u64,
    /// Runs each way; the median is kept.
    pub runs: usize,
    /// Lines per second without the journal, spawn to exit.
    pub per_s: f64,
    /// Lines per second with `--journal`, spawn to exit.
    pub journal_per_s: f64,
    /// `journal_per_s / per_s`.
    pub ratio: f64,
    /// CPU microseconds per line of the coordinator and its workers, without the journal.
    pub cpu_us: f64,
    /// The same with the journal.
    pub journal_cpu_us: f64,
}

/// One fast and one slow worker: adaptive windows against equal fixed ones.
#[derive(Debug, Serialize)]
pub struct FleetRow {
    /// Jobs per run.
    pub jobs: u64,
    /// Milliseconds per job of the fast worker and of the slow one.
    pub fast_ms: u64,
    /// See `fast_ms`.
    pub slow_ms: u64,
    /// The capacity both declare.
    pub capacity: u32,
    /// The run with adaptive windows (the default).
    pub adaptive: crate::fleet::FleetRun,
    /// The run with every window at the declared capacity.
    pub fixed: crate::fleet::FleetRun,
    /// How much sooner the adaptive run ended: `1 - adaptive / fixed`.
    pub sooner: f64,
    /// The run with fixed windows and straggler speculation.
    pub speculating: crate::fleet::FleetRun,
    /// How much shorter its last tenth was than with fixed windows alone:
    /// `1 - speculating.tail / fixed.tail`.
    pub tail_shorter: f64,
}

/// JSON lines through coordinators sharing one NATS JetStream queue, or through the
/// in-process queue of pipe mode (the row the others are compared with).
#[derive(Debug, Serialize)]
pub struct QueueRow {
    /// `in-process` (the coordinator binary's pipe mode) or `jetstream`.
    pub queue: &'static str,
    /// Coordinators taking jobs (1 in-process).
    pub coordinators: usize,
    /// Local worker processes of each coordinator.
    pub workers_each: usize,
    /// Jobs (input lines) per run.
    pub jobs: u64,
    /// Runs; the median is kept.
    pub runs: usize,
    /// Jobs per second: `distchan-submit` from spawn to exit (in-process: the coordinator).
    pub per_s: f64,
    /// `per_s` over the in-process row's (absent on that row).
    pub vs_in_process: Option<f64>,
    /// CPU microseconds per job of the broker, its whole life (absent in-process).
    pub broker_cpu_us: Option<f64>,
    /// CPU microseconds per job of the coordinators and the workers they started.
    pub coordinators_cpu_us: f64,
    /// CPU microseconds per job of `distchan-submit` (absent in-process).
    pub submit_cpu_us: Option<f64>,
    /// Jobs each coordinator took from the queue, as it said when stopped (empty
    /// in-process; `None` where a coordinator did not say).
    pub taken: Vec<Option<u64>>,
}

/// Large payloads through the coordinator next to the echo of the same frames.
#[derive(Debug, Serialize)]
pub struct LargeRow {
    /// Payload size in bytes (one way).
    pub payload_bytes: usize,
    /// Worker processes (and echo clients).
    pub k: usize,
    /// Unanswered jobs per worker.
    pub w: u32,
    /// Jobs sent.
    pub jobs: u64,
    /// Payload bytes per second (one way) through the coordinator.
    pub ours_bytes_per_s: f64,
    /// Payload bytes per second (one way) through the plain echo.
    pub echo_bytes_per_s: f64,
    /// `ours / echo`.
    pub ratio: f64,
    /// CPU per job through the coordinator.
    pub ours_cpu: Cpu,
    /// CPU per message through the echo.
    pub echo_cpu: Cpu,
}

/// Where the program that sends one job at a time runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Caller {
    /// The runtime's main thread (the body of `#[tokio::main]`), which runs no task of the
    /// runtime: being woken by a connection's task crosses threads.
    Main,
    /// A task spawned on the runtime, like the connections' tasks.
    Task,
}

impl Caller {
    /// How the report names it.
    pub fn describe(self) -> &'static str {
        match self {
            Caller::Main => "main",
            Caller::Task => "a task",
        }
    }
}

/// One job (message) at a time.
#[derive(Debug, Serialize)]
pub struct LatencyRow {
    /// Where the program sending the jobs (and the echo's messages) runs.
    pub caller: Caller,
    /// Through the coordinator and one worker process.
    pub ours: Latency,
    /// Through one plain echo connection.
    pub echo: Latency,
    /// `ours.p50 / echo.p50`.
    pub p50_ratio: f64,
    /// `ours.p99 / echo.p99`.
    pub p99_ratio: f64,
}

/// Many connected workers.
#[derive(Debug, Serialize)]
pub struct ScaleRow {
    /// Workers connected at once.
    pub workers: usize,
    /// Credit window of each.
    pub w: u32,
    /// Bench-process resident memory before the coordinator started, MiB.
    pub rss_before_mib: f64,
    /// Highest resident memory while every worker sat idle, MiB.
    pub rss_idle_mib: f64,
    /// The difference: what the coordinator holds for them, MiB.
    pub delta_mib: f64,
    /// The difference per worker, KiB.
    pub per_worker_kib: f64,
    /// Jobs sent in each dispatch-rate run.
    pub jobs: u64,
    /// Jobs per second with ten workers connected (one `--swarm` process).
    pub rate_10: f64,
    /// Jobs per second with `workers` workers connected (one `--swarm` process).
    pub rate_many: f64,
    /// `rate_many / rate_10`.
    pub ratio: f64,
    /// CPU per job with ten workers.
    pub cpu_10: Cpu,
    /// CPU per job with `workers` workers.
    pub cpu_many: Cpu,
    /// Of the `workers`, those that answered at least one job of the dispatch-rate run
    /// (fewer when turns are long enough for some workers to take the jobs of others).
    pub answered_by: usize,
    /// The most jobs one of them answered.
    pub most_answered: u64,
}

/// One performance target and whether this run met it.
#[derive(Debug, Serialize)]
pub struct TargetRow {
    /// The target, in words.
    pub target: String,
    /// The figure measured.
    pub figure: String,
    /// `met`, `missed` or `n/a` (with why).
    pub status: String,
}

/// Everything one run measured; written as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `full` or `quick`.
    pub mode: &'static str,
    /// Our in-process coordinators' settings where they are not the defaults.
    pub settings: String,
    /// Cores this machine offers.
    pub cores: usize,
    /// The round trip of a cache line between the first two cores, in nanoseconds, at the
    /// start and at the end of the run (see `cores`); absent with a single core.
    pub cross_core_ns: [Option<f64>; 2],
    /// Size of the tiny job's encoded payload and of the frames echoed for it.
    pub tiny_payload_bytes: usize,
    /// Size of a job frame carrying the tiny payload (the echo's message size).
    pub tiny_frame_bytes: usize,
    /// Tiny jobs.
    pub tiny: Vec<TinyRow>,
    /// Tiny jobs through a built-in task and through task modules.
    pub tasks: Vec<TaskRow>,
    /// Tiny jobs in one browser tab.
    pub tab: Vec<TabRow>,
    /// The coordinator binary's pipe mode (absent when not measured).
    pub pipe: Option<PipeRow>,
    /// Coordinators on a shared JetStream queue beside the in-process queue (empty when not
    /// measured).
    pub queue: Vec<QueueRow>,
    /// One fast and one slow worker (absent when not measured).
    pub fleet: Option<FleetRow>,
    /// Large payloads.
    pub large: Vec<LargeRow>,
    /// One at a time, from each [`Caller`] (empty when not measured).
    pub latency: Vec<LatencyRow>,
    /// Many connected workers (absent when not measured).
    pub scale: Option<ScaleRow>,
    /// The targets.
    pub targets: Vec<TargetRow>,
    /// Wall time of the whole run, seconds.
    pub elapsed_secs: f64,
}

/// `1.23M/s`, `456.7k/s`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0}/s")
    }
}

/// `1.52 GB/s` (decimal units).
pub fn bytes_rate(per_s: f64) -> String {
    if per_s >= 1e9 {
        format!("{:.2} GB/s", per_s / 1e9)
    } else {
        format!("{:.0} MB/s", per_s / 1e6)
    }
}

/// `12.3%`.
fn pct(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// Human size of a payload: `16 B`, `64 KiB`, `1 MiB`.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Jobs per second of a run.
pub fn per_s(t: &Throughput) -> f64 {
    t.items as f64 / t.secs.max(1e-9)
}

impl Report {
    /// Fills in [`Report::targets`] from the figures.
    pub fn judge(&mut self, quick: bool) {
        let mut targets = Vec::new();
        let verdict = |ok: bool| if ok { "met" } else { "missed" }.to_string();
        let tiny = |w: u32| {
            self.tiny.iter().find(|r| {
                (r.k, r.w, r.flavor, r.api)
                    == (
                        2,
                        w,
                        crate::modes::Flavor::Serve,
                        crate::ours::Api::OneAtATime,
                    )
            })
        };
        for w in [256, 32] {
            if let Some(r) = tiny(w) {
                let ratio = r.ratio.unwrap_or(0.0);
                targets.push(TargetRow {
                    target: format!("16 B jobs, K=2, W={w}: >= 60% of plain echo"),
                    figure: format!(
                        "{} ({} vs {})",
                        pct(ratio),
                        rate(r.ours_per_s),
                        rate(r.echo_per_s.unwrap_or(0.0))
                    ),
                    status: verdict(ratio >= 0.6),
                });
            }
        }
        if let Some(r) = tiny(256) {
            // The floor was set in a sitting whose echo did 3.09M: 65% of it. Absolute
            // figures move with the hour, so the row shows this run's echo beside it.
            targets.push(TargetRow {
                target: "16 B jobs, K=2, W=256: >= 2M jobs/s (65% of the echo when set)".into(),
                figure: format!(
                    "{} ({} of this run's echo)",
                    rate(r.ours_per_s),
                    r.ratio.map(pct).unwrap_or_else(|| "-".into())
                ),
                status: verdict(r.ours_per_s >= 2e6),
            });
        }
        for (work, floor, what) in [
            (crate::tasks::Work::Command, 30e3, "30k"),
            (crate::tasks::Work::Reactor, 300e3, "300k"),
        ] {
            if let Some(r) = self.tasks.iter().find(|r| r.work == work) {
                targets.push(TargetRow {
                    target: format!("16 B jobs, K=2, {}: >= {what} jobs/s", work.describe()),
                    figure: format!(
                        "{} ({} of the built-in task)",
                        rate(r.per_s),
                        r.vs_builtin.map(pct).unwrap_or_else(|| "-".into())
                    ),
                    status: verdict(r.per_s >= floor),
                });
            }
        }
        if let Some(r) = self
            .tab
            .iter()
            .find(|r| r.work == crate::tasks::Work::Builtin)
        {
            targets.push(TargetRow {
                target: "one tab, 2 threads, built-in task: >= 50k tiny jobs/s".into(),
                figure: rate(r.per_s),
                status: verdict(r.per_s >= 50e3),
            });
        }
        if let Some(r) = self
            .tab
            .iter()
            .find(|r| r.work == crate::tasks::Work::Reactor)
        {
            let ratio = r.vs_builtin.unwrap_or(0.0);
            targets.push(TargetRow {
                target: "one tab, reactor module: >= 50% of the built-in task's rate".into(),
                figure: format!("{} ({})", pct(ratio), rate(r.per_s)),
                status: verdict(ratio >= 0.5),
            });
        }
        if let Some(p) = &self.pipe {
            targets.push(TargetRow {
                target: format!(
                    "pipe mode, {} JSON lines, 2 workers: >= 600k lines/s",
                    p.lines
                ),
                figure: rate(p.per_s),
                status: if p.workers == 2 && p.lines >= 1_000_000 {
                    verdict(p.per_s >= 600e3)
                } else {
                    // Quick runs pipe fewer lines: start-up weighs more than in the floor's run.
                    "n/a".into()
                },
            });
            targets.push(TargetRow {
                target: "pipe mode, --journal: >= 80% of the throughput without".into(),
                figure: format!(
                    "{} ({} lines with vs {} without)",
                    pct(p.ratio),
                    rate(p.journal_per_s),
                    rate(p.per_s)
                ),
                status: verdict(p.ratio >= 0.8),
            });
        }
        if let Some(f) = &self.fleet {
            targets.push(TargetRow {
                target: "one fast, one slow worker: adaptive windows end >= 30% sooner than fixed"
                    .into(),
                figure: format!(
                    "{} sooner ({:.2} s vs {:.2} s; last tenth {:.2} s vs {:.2} s)",
                    pct(f.sooner),
                    f.adaptive.secs,
                    f.fixed.secs,
                    f.adaptive.tail_secs,
                    f.fixed.tail_secs
                ),
                status: verdict(f.sooner >= 0.3),
            });
            targets.push(TargetRow {
                target:
                    "one fast, one slow worker, fixed windows: speculation shortens the last tenth"
                        .into(),
                figure: format!(
                    "{} shorter ({:.2} s vs {:.2} s; whole run {:.2} s vs {:.2} s)",
                    pct(f.tail_shorter),
                    f.speculating.tail_secs,
                    f.fixed.tail_secs,
                    f.speculating.secs,
                    f.fixed.secs
                ),
                status: verdict(f.tail_shorter > 0.0),
            });
        }
        if let Some(r) = self.large.iter().find(|r| r.payload_bytes == 1 << 20) {
            for (floor, what) in [(1e9, "1 GB/s"), (2e9, "2 GB/s")] {
                targets.push(TargetRow {
                    target: format!("1 MiB payloads, K=2: >= {what}"),
                    figure: format!(
                        "{} (echo {})",
                        bytes_rate(r.ours_bytes_per_s),
                        bytes_rate(r.echo_bytes_per_s)
                    ),
                    status: verdict(r.ours_bytes_per_s >= floor),
                });
            }
        }
        for l in &self.latency {
            let within = 1.1;
            targets.push(TargetRow {
                target: format!(
                    "one job at a time from {}: p50 within {within}x of plain echo",
                    l.caller.describe()
                ),
                figure: format!(
                    "{:.2}x ({:.0} vs {:.0} us)",
                    l.p50_ratio, l.ours.p50_us, l.echo.p50_us
                ),
                status: verdict(l.p50_ratio <= within),
            });
        }
        if let Some(s) = &self.scale {
            let scaled = if quick {
                format!(
                    " (quick; x10,000 = {:.0} MiB extrapolated)",
                    s.per_worker_kib * 10_000.0 / 1024.0
                )
            } else {
                String::new()
            };
            targets.push(TargetRow {
                target: "10,000 idle workers: coordinator < 100 MiB resident".into(),
                figure: format!(
                    "+{:.1} MiB for {} workers ({:.1} KiB each){scaled}",
                    s.delta_mib, s.workers, s.per_worker_kib
                ),
                status: if quick {
                    "n/a".into()
                } else {
                    verdict(s.delta_mib < 100.0)
                },
            });
            targets.push(TargetRow {
                target: format!("dispatch rate with {} workers within 20% of 10", s.workers),
                figure: format!(
                    "{} ({} vs {})",
                    pct(s.ratio),
                    rate(s.rate_many),
                    rate(s.rate_10)
                ),
                status: verdict(s.ratio >= 0.8),
            });
        }
        self.targets = targets;
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "distchan-bench ({} mode, {} cores, {:.0} s, coordinator settings: {}). Absolute \
             figures are noisy on a shared machine: compare the ratios, all measured in this run.",
            self.mode, self.cores, self.elapsed_secs, self.settings
        );
        if let [Some(start), Some(end)] = self.cross_core_ns {
            let _ = writeln!(
                out,
                "Cross-core round trip of a cache line: {start:.0} ns at the start, {end:.0} ns \
                 at the end. A host that moves this machine's cores apart (400 ns or more \
                 against about 100) slows every row whose work crosses threads: compare runs \
                 whose figures are alike."
            );
        }
        let _ = writeln!(
            out,
            "Tiny job: {} B payload, {} B frame; plain echo = the same frames through \
             tokio-tungstenite, same K and W, no scheduler.\n",
            self.tiny_payload_bytes, self.tiny_frame_bytes
        );
        let _ = writeln!(
            out,
            "{:<46} {:>14} {:>14} {:>8}   CPU us/item here+children: distchan | echo",
            "measurement", "distchan", "plain echo", "ratio",
        );
        let _ = writeln!(out, "{}", "-".repeat(130));
        for r in &self.tiny {
            let what = format!(
                "tiny jobs, K={}, W={}{}",
                r.k,
                r.w,
                match (r.flavor, r.api) {
                    (crate::modes::Flavor::Inline, _) => " (inline worker)",
                    (_, crate::ours::Api::Batched) => " (send_many/recv_many)",
                    _ => "",
                }
            );
            let _ = writeln!(
                out,
                "{:<46} {:>14} {:>14} {:>8}   {} | {}",
                what,
                rate(r.ours_per_s),
                r.echo_per_s.map(rate).unwrap_or_else(|| "-".into()),
                r.ratio.map(pct).unwrap_or_else(|| "-".into()),
                r.ours_cpu.show(),
                r.echo_cpu.map(|c| c.show()).unwrap_or_else(|| "-".into()),
            );
        }
        for r in &self.large {
            let _ = writeln!(
                out,
                "{:<46} {:>14} {:>14} {:>8}   {} | {}",
                format!("{} payloads, K={}, W={}", size(r.payload_bytes), r.k, r.w),
                bytes_rate(r.ours_bytes_per_s),
                bytes_rate(r.echo_bytes_per_s),
                pct(r.ratio),
                r.ours_cpu.show(),
                r.echo_cpu.show(),
            );
        }
        for l in &self.latency {
            for (q, ours, echo, ratio) in [
                ("p50", l.ours.p50_us, l.echo.p50_us, l.p50_ratio),
                ("p99", l.ours.p99_us, l.echo.p99_us, l.p99_ratio),
            ] {
                let _ = writeln!(
                    out,
                    "{:<46} {:>14} {:>14} {:>8}",
                    format!("one at a time from {}, {q}", l.caller.describe()),
                    format!("{ours:.0} us"),
                    format!("{echo:.0} us"),
                    format!("{ratio:.2}x")
                );
            }
        }
        if let Some(s) = &self.scale {
            let _ = writeln!(
                out,
                "{:<46} {:>14} {:>14} {:>8}",
                format!("coordinator RSS, {} idle workers", s.workers),
                format!("+{:.1} MiB", s.delta_mib),
                "-",
                format!("{:.1}KiB/w", s.per_worker_kib)
            );
            let _ = writeln!(
                out,
                "{:<46} {:>14} {:>14} {:>8}   {} | {} (10)",
                format!("dispatch, {} vs 10 workers (1 process)", s.workers),
                rate(s.rate_many),
                format!("{} (10)", rate(s.rate_10)),
                pct(s.ratio),
                s.cpu_many.show(),
                s.cpu_10.show(),
            );
            let _ = writeln!(
                out,
                "  ({} of the {} workers answered jobs; the busiest answered {})",
                s.answered_by, s.workers, s.most_answered
            );
        }
        if !self.tasks.is_empty() {
            let _ = writeln!(
                out,
                "\nTasks: 14-letter strings upper-cased, K=2 worker processes of one thread, \
                 W=256; a module gets each job as JSON text.\n{:<46} {:>14} {:>14}   CPU us/item \
                 here+children",
                "work", "jobs/s", "vs built-in"
            );
            for r in &self.tasks {
                let _ = writeln!(
                    out,
                    "{:<46} {:>14} {:>14}   {}",
                    r.work.describe(),
                    rate(r.per_s),
                    r.vs_builtin.map(pct).unwrap_or_else(|| "-".into()),
                    r.cpu.show(),
                );
            }
        }
        if !self.tab.is_empty() {
            let _ = writeln!(
                out,
                "\nOne headless-Chromium tab, the volunteer page with {} threads of capacity {}: the same jobs.\n\
                 {:<46} {:>14} {:>14}   CPU us/item coordinator+browser",
                self.tab[0].threads, crate::tab::CAPACITY, "work", "jobs/s", "vs built-in"
            );
            for r in &self.tab {
                let _ = writeln!(
                    out,
                    "{:<46} {:>14} {:>14}   {}",
                    r.work.describe(),
                    rate(r.per_s),
                    r.vs_builtin.map(pct).unwrap_or_else(|| "-".into()),
                    r.cpu.show(),
                );
            }
        }
        if let Some(f) = &self.fleet {
            let _ = writeln!(
                out,
                "\nOne fast worker ({} ms per job) and one slow one ({} ms), one job at a time, \
                 both declaring {}; {} tiny jobs.\n{:<46} {:>14} {:>14} {:>8} {:>14}",
                f.fast_ms,
                f.slow_ms,
                f.capacity,
                f.jobs,
                "measurement",
                "adaptive",
                "fixed",
                "sooner",
                "fixed+spec."
            );
            let _ = writeln!(
                out,
                "{:<46} {:>12.2} s {:>12.2} s {:>8} {:>12.2} s",
                "whole run",
                f.adaptive.secs,
                f.fixed.secs,
                pct(f.sooner),
                f.speculating.secs
            );
            let _ = writeln!(
                out,
                "{:<46} {:>12.2} s {:>12.2} s {:>8} {:>12.2} s",
                "last tenth of the jobs",
                f.adaptive.tail_secs,
                f.fixed.tail_secs,
                "",
                f.speculating.tail_secs
            );
        }
        if let Some(p) = &self.pipe {
            let _ = writeln!(
                out,
                "\nPipe mode: the distchan-coordinator binary, JSON lines from a file to a file, \
                 spawn to exit, {}.\n{:<46} {:>14} {:>14} {:>8}   CPU us/line \
                 coordinator+workers: without | with",
                match p.runs {
                    1 => "one run each".to_string(),
                    n => format!("median of {n} runs each"),
                },
                "measurement",
                "no journal",
                "journal",
                "ratio"
            );
            let _ = writeln!(
                out,
                "{:<46} {:>14} {:>14} {:>8}   {:.1} | {:.1}",
                format!(
                    "pipe, capitalize, {} local workers, {} lines",
                    p.workers, p.lines
                ),
                rate(p.per_s),
                rate(p.journal_per_s),
                pct(p.ratio),
                p.cpu_us,
                p.journal_cpu_us,
            );
        }
        if let Some(first) = self.queue.first() {
            let _ = writeln!(
                out,
                "\nShared queue: {} JSON lines through capitalize, 2 local workers in all, {}; a \
                 fresh nats-server -js (file store) per run, distchan-submit timed from spawn to \
                 exit (in-process: the pipe-mode coordinator).\n{:<46} {:>14} {:>14}   CPU \
                 us/job broker | coordinators+workers | submit",
                first.jobs,
                match first.runs {
                    1 => "one run each".to_string(),
                    n => format!("median of {n} runs each"),
                },
                "measurement",
                "jobs/s",
                "vs in-process",
            );
            for r in &self.queue {
                let us = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
                let what = match r.queue {
                    "in-process" => format!(
                        "in-process queue (pipe), 1 coord. x {} workers",
                        r.workers_each
                    ),
                    _ => format!(
                        "JetStream, {} coord. x {} worker{}",
                        r.coordinators,
                        r.workers_each,
                        if r.workers_each == 1 { "" } else { "s" }
                    ),
                };
                let split = match r.taken.as_slice() {
                    [] | [_] => String::new(),
                    taken => format!(
                        " (jobs taken: {})",
                        taken
                            .iter()
                            .map(|t| t.map_or_else(|| "?".into(), |t| t.to_string()))
                            .collect::<Vec<_>>()
                            .join(" + ")
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:<46} {:>14} {:>14}   {} | {:.1} | {}{split}",
                    what,
                    rate(r.per_s),
                    r.vs_in_process.map(pct).unwrap_or_else(|| "-".into()),
                    us(r.broker_cpu_us),
                    r.coordinators_cpu_us,
                    us(r.submit_cpu_us),
                );
            }
            if let Some(one) = self
                .queue
                .iter()
                .find(|r| r.queue != "in-process" && r.coordinators == 1)
            {
                let ratio = one.vs_in_process.unwrap_or(0.0);
                let broker = one.broker_cpu_us.unwrap_or(0.0);
                let submit = one.submit_cpu_us.unwrap_or(0.0);
                let total = broker + one.coordinators_cpu_us + submit;
                let _ = writeln!(
                    out,
                    "The broker's cost, 1 coordinator: {} of the in-process rate ({:.1}x slower); \
                     the broker used {broker:.1} us CPU per job, {:.1}x the coordinator's and \
                     workers' {:.1} us. All together {total:.0} us CPU per job: at most {} on \
                     {} cores, were they all busy with it.",
                    pct(ratio),
                    1.0 / ratio.max(1e-9),
                    broker / one.coordinators_cpu_us.max(1e-9),
                    one.coordinators_cpu_us,
                    rate(self.cores as f64 * 1e6 / total.max(1e-9)),
                    self.cores,
                );
            }
        }
        let _ = writeln!(out, "\nTargets:");
        for t in &self.targets {
            let _ = writeln!(out, "  {:<7} {}: {}", t.status, t.target, t.figure);
        }
        out
    }
}
