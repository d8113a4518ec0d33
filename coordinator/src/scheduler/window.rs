//! Each worker's credit window: the capacity it declared is a ceiling, and the window is
//! sized from what the worker is measured to do.
//!
//! A worker starts with a window of `Config::start_window` jobs ([`START`] by default, and
//! never more than its capacity). Every time it has answered a window's worth of jobs over
//! at least [`PERIOD`], its rate is measured, and the window becomes the larger of two
//! sizes:
//!
//! - **Work for [`TARGET`]**: the jobs it answers in that time at the rate measured. A fast
//!   native worker, or a tab whose tiny jobs mostly travel, gets a deep window at the first
//!   measurement; a tab computing tiles of 100 ms keeps three, so it does not hold jobs a
//!   faster worker could run.
//! - **What it runs side by side**: the window doubles, and doubles again while that makes
//!   the worker at least [`GAIN`] times faster; the first doubling that does not is undone
//!   and the probe ends. So a worker with 16 threads on jobs of a second (work for 250 ms
//!   would be 4 of them) keeps 16.
//!
//! A worker with little to do (the queue runs dry) is measured slower and its window
//! shrinks; once jobs wait again, the next measurement, a window's worth of jobs later,
//! gives it back. With fixed windows (`Config::adaptive_windows` off) a worker's window is
//! its capacity.

use std::time::Duration;

use tokio::time::Instant;

/// The smallest window a measurement gives, and the one a worker starts with by default
/// (`Config::start_window`).
pub(crate) const START: usize = 2;

/// How much work a window holds, at the worker's measured rate.
const TARGET: Duration = Duration::from_millis(250);

/// How much faster a doubled window must make a worker for the probe to go on.
const GAIN: f64 = 1.2;

/// Shortest measurement: a rate over less would be noise.
const PERIOD: Duration = Duration::from_millis(20);

/// One worker's window; see the [module docs](self).
#[derive(Debug)]
pub(super) struct Window {
    /// The capacity the worker declared (within the coordinator's limit).
    ceiling: usize,
    /// Jobs it may hold now.
    size: usize,
    /// False for a fixed window.
    adaptive: bool,
    /// The size the probe for side-by-side work reached, and the rate measured there while
    /// it goes on (`None` once it ended).
    probe: usize,
    probing: Option<f64>,
    /// The measurement under way: since when, and the results counted.
    start: Option<Instant>,
    results: usize,
}

impl Window {
    /// The window of a worker that declared `ceiling`: `Some(start)` jobs at first, then
    /// sized from its measured speed; `None` for its whole capacity, for good.
    pub fn new(ceiling: usize, start: Option<usize>) -> Self {
        let ceiling = ceiling.max(1);
        // A capacity of the smallest window or less leaves nothing to size.
        let adaptive = start.is_some() && ceiling > START;
        let size = match start {
            Some(start) if adaptive => start.clamp(1, ceiling),
            _ => ceiling,
        };
        Window {
            ceiling,
            size,
            adaptive,
            // The probe for side-by-side work starts at most from the smallest window,
            // whatever the start: a slow worker's first measurement takes it down there.
            probe: START.min(size),
            probing: Some(0.0),
            start: None,
            results: 0,
        }
    }

    /// Jobs the worker may hold now.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The capacity the worker declared: the largest the window gets.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// The worker answered a job at `now`. The window may change size.
    pub fn on_result(&mut self, now: Instant) {
        if !self.adaptive {
            return;
        }
        let Some(start) = self.start else {
            self.restart(now);
            return;
        };
        self.results += 1;
        let elapsed = now.saturating_duration_since(start);
        if self.results < self.size || elapsed < PERIOD {
            return;
        }
        let rate = self.results as f64 / elapsed.as_secs_f64();
        self.restart(now);
        // The probe judges only rates measured at its own size (not at one raised for the
        // target).
        if let (Some(before), true) = (self.probing, self.size <= self.probe) {
            if rate < before * GAIN || self.probe >= self.ceiling {
                if before > 0.0 && rate < before * GAIN {
                    self.probe = (self.probe / 2).max(START);
                }
                self.probing = None;
            } else {
                self.probing = Some(rate);
                self.probe = (self.probe * 2).min(self.ceiling);
            }
        }
        let for_target = (rate * TARGET.as_secs_f64()).ceil() as usize;
        self.size = for_target.max(self.probe).clamp(START, self.ceiling);
    }

    fn restart(&mut self, now: Instant) {
        self.start = Some(now);
        self.results = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a window for a worker that answers `parallel` jobs at a time, each taking
    /// `job` plus `trip` on the way, always kept full; returns the size it ends at.
    fn settle(ceiling: usize, parallel: usize, job: Duration, trip: Duration) -> usize {
        settle_from(START, ceiling, parallel, job, trip)
    }

    /// [`settle`] for a window that starts at `start` jobs.
    fn settle_from(
        start: usize,
        ceiling: usize,
        parallel: usize,
        job: Duration,
        trip: Duration,
    ) -> usize {
        let mut w = Window::new(ceiling, Some(start));
        let mut now = Instant::now();
        for _ in 0..200 {
            // One round: the window's jobs take ceil(size / parallel) job times, plus a trip.
            let rounds = w.size().div_ceil(parallel) as u32;
            let round = job * rounds + trip;
            let size = w.size();
            let step = round / size as u32;
            for _ in 0..size {
                now += step;
                w.on_result(now);
            }
        }
        w.size()
    }

    #[test]
    fn a_worker_whose_jobs_mostly_travel_gets_its_whole_capacity() {
        // Tiny jobs (10 µs) and a 2 ms round trip: every doubling nearly doubles the rate.
        let size = settle(64, 1, Duration::from_micros(10), Duration::from_millis(2));
        assert_eq!(size, 64);
    }

    #[test]
    fn a_worker_busy_computing_keeps_what_it_can_run() {
        // 100 ms tiles on one thread: 250 ms of work is three, more would only wait.
        let size = settle(64, 1, Duration::from_millis(100), Duration::from_millis(2));
        assert_eq!(size, 3);
        // Sixteen threads on 1 s jobs: the window settles at the threads it keeps busy.
        let size = settle(64, 16, Duration::from_secs(1), Duration::from_millis(2));
        assert_eq!(size, 16);
    }

    #[test]
    fn a_larger_start_window_is_only_where_it_starts() {
        assert_eq!(Window::new(64, Some(32)).size(), 32);
        assert_eq!(
            Window::new(16, Some(32)).size(),
            16,
            "never above the capacity"
        );
        let (ms, trip) = (Duration::from_millis(1), Duration::from_millis(2));
        // Measured, each worker ends where it ends from the default start.
        assert_eq!(
            settle_from(32, 64, 1, 100 * ms, trip),
            3,
            "100 ms tiles, one thread"
        );
        assert_eq!(
            settle_from(32, 64, 16, 1000 * ms, trip),
            16,
            "sixteen threads, 1 s jobs"
        );
        let tiny = Duration::from_micros(10);
        assert_eq!(settle_from(32, 64, 1, tiny, trip), 64, "tiny jobs");
    }

    #[test]
    fn an_idle_spell_shrinks_a_window_and_work_gives_it_back_and_fixed_windows_never_move() {
        let mut w = Window::new(64, Some(START));
        let mut now = Instant::now();
        let mut answer = |w: &mut Window, n: usize, every: Duration| {
            for _ in 0..n {
                now += every;
                w.on_result(now);
            }
        };
        answer(&mut w, 1000, Duration::from_micros(100)); // 10k jobs/s
        assert_eq!(w.size(), 64);
        answer(&mut w, 200, Duration::from_secs(1)); // one job a second: little to do
        assert_eq!(w.size(), START, "shrunk to where it started");
        answer(&mut w, 1000, Duration::from_micros(100));
        assert_eq!(w.size(), 64, "back once it is busy again");
        let mut fixed = Window::new(64, None);
        answer(&mut fixed, 100, Duration::from_micros(10));
        assert_eq!(fixed.size(), 64);
        assert_eq!(
            Window::new(1, Some(START)).size(),
            1,
            "never above the capacity"
        );
    }
}
