//! The coordinator's metrics, exposed in the OpenMetrics text format at `/metrics`.
//!
//! The scheduler counts under its own lock, in plain integers, and those are published to
//! the Prometheus metrics when someone reads them, so the hot path touches no shared atomics.
//! Connections count bytes directly.
//!
//! Names follow Prometheus's conventions: the `distchan_` prefix, the unit in the name with
//! a `# UNIT` line (`distchan_received_bytes_total`, `distchan_dispatch_wait_seconds`),
//! counters ending in `_total`, and labels for what splits a whole
//! (`distchan_workers_connected{kind="native"}`). `distchan_build_info{version="…"}` is
//! always 1, and the process's own metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …) come from `process`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use distchan_protocol::wire::WorkerKind;
use prometheus_client::{
    encoding::{text::encode, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType},
    registry::{Registry, Unit},
};

use crate::process::ProcessCollector;

/// The `kind` label of each kind of worker, at its [`kind_index`].
pub(crate) const KINDS: [&str; 3] = ["native", "browser", "other"];

/// Where a kind of worker is counted in [`Gauges::workers`] (and named in [`KINDS`]).
pub(crate) fn kind_index(kind: WorkerKind) -> usize {
    match kind {
        WorkerKind::Native => 0,
        WorkerKind::Browser => 1,
        WorkerKind::Other => 2,
    }
}

/// What a kind of worker is called, in metrics and in [`WorkerSnapshot`](crate::WorkerSnapshot).
pub(crate) fn kind_label(kind: WorkerKind) -> &'static str {
    KINDS[kind_index(kind)]
}

/// A label set of one label.
type Label = [(&'static str, &'static str); 1];

/// Upper bounds of the duration histograms' buckets, in seconds.
const BOUNDS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BOUNDS`] in nanoseconds.
const BOUNDS_NS: [u64; 18] = {
    let mut ns = [0u64; 18];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Buckets of a duration histogram: one per bound, and one for longer durations.
const BUCKETS: usize = BOUNDS.len() + 1;

/// Observations of durations counted locally, to be added to a [`Histogram`] in one go.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    counts: [u64; BUCKETS],
    sum_nanos: u64,
    count: u64,
}

impl Tally {
    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The bounds below it, counted without a branch: a search's branches are a coin
        // toss for every job.
        let bucket: usize = BOUNDS_NS
            .iter()
            .map(|&bound| usize::from(bound < nanos))
            .sum();
        self.counts[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.count += 1;
    }
}

/// What the scheduler counted since its counts were last published.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tallies {
    pub dispatched: u64,
    pub completed: u64,
    pub failed: u64,
    pub redelivered: u64,
    pub speculated: u64,
    pub wrong: u64,
    pub duplicates: u64,
    pub dispatch_wait: Tally,
    pub round_trip: Tally,
}

/// The scheduler's gauges at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    /// Workers connected, by kind (see [`kind_index`]).
    pub workers: [usize; KINDS.len()],
    pub queued: usize,
    pub in_flight: usize,
}

/// A histogram of durations that many threads add to without a lock (one atomic addition per
/// bucket touched by a whole [`Tally`]), exposed like prometheus-client's own histogram.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Adds every observation of `tally`.
    pub fn add(&self, tally: &Tally) {
        if tally.count == 0 {
            return;
        }
        let inner = &*self.inner;
        for (slot, &n) in inner.counts.iter().zip(&tally.counts) {
            if n > 0 {
                slot.fetch_add(n, Ordering::Relaxed);
            }
        }
        inner
            .sum_nanos
            .fetch_add(tally.sum_nanos, Ordering::Relaxed);
        inner.count.fetch_add(tally.count, Ordering::Relaxed);
    }

    /// Number of observations so far.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Live metrics shared between the scheduler, the connections and the
/// [`Coordinator`](crate::Coordinator) handle.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Workers connected, all kinds together (for [`Stats`]; not exposed).
    pub workers: Gauge,
    /// Workers connected, one gauge per kind, in the order of [`KINDS`].
    workers_by_kind: [Gauge; KINDS.len()],
    pub queued: Gauge,
    pub in_flight: Gauge,
    pub dispatched: Counter,
    pub completed: Counter,
    pub failed: Counter,
    pub redelivered: Counter,
    pub speculated: Counter,
    pub wrong: Counter,
    pub duplicates: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Times a worker downloaded the task module.
    pub module_downloads: Counter,
    /// Connections that are not (yet) workers: waiting for their request head or TLS
    /// handshake, plain HTTP, or WebSockets before their hello is accepted.
    pub connections_pending: Gauge,
    /// Connections closed at once because too many were pending.
    pub connections_refused: Counter,
    /// Seconds a job waited in the scheduler's line before it was sent to a worker.
    pub dispatch_wait: Histogram,
    /// Seconds between sending a job to a worker and receiving its result.
    pub round_trip: Histogram,
    registry: Registry,
}

impl Default for Counters {
    fn default() -> Self {
        let workers_by_kind = Family::<Label, Gauge>::default();
        let build_info = Family::<Label, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        let mut c = Counters {
            workers: Gauge::default(),
            workers_by_kind: KINDS
                .map(|kind| workers_by_kind.get_or_create(&[("kind", kind)]).clone()),
            queued: Gauge::default(),
            in_flight: Gauge::default(),
            dispatched: Counter::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            redelivered: Counter::default(),
            speculated: Counter::default(),
            wrong: Counter::default(),
            duplicates: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            module_downloads: Counter::default(),
            connections_pending: Gauge::default(),
            connections_refused: Counter::default(),
            dispatch_wait: Histogram::default(),
            round_trip: Histogram::default(),
            registry: Registry::default(),
        };
        c.registry.register_collector(Box::new(ProcessCollector));
        let r = c.registry.sub_registry_with_prefix("distchan");
        r.register(
            "build_info",
            "The coordinator's version; always 1",
            build_info,
        );
        r.register(
            "workers_connected",
            "Workers connected now, by kind (native, browser, other)",
            workers_by_kind,
        );
        r.register("jobs_queued", "Jobs waiting for a worker", c.queued.clone());
        r.register(
            "jobs_in_flight",
            "Jobs sent to a worker and not yet answered",
            c.in_flight.clone(),
        );
        r.register(
            "jobs_dispatched",
            "Times a job was sent to a worker",
            c.dispatched.clone(),
        );
        r.register(
            "jobs_done",
            "Jobs whose successful result was delivered",
            c.completed.clone(),
        );
        r.register(
            "jobs_failed",
            "Jobs whose failure was delivered",
            c.failed.clone(),
        );
        r.register(
            "jobs_redelivered",
            "Jobs taken back from a lost worker or lease and queued again",
            c.redelivered.clone(),
        );
        r.register(
            "jobs_speculated",
            "Jobs a slow worker held at the end of a run that were also given to a faster one",
            c.speculated.clone(),
        );
        r.register(
            "results_wrong",
            "Results of replicated jobs that lost to the result other workers agreed on",
            c.wrong.clone(),
        );
        r.register(
            "results_duplicate",
            "Late or duplicate results dropped",
            c.duplicates.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes received from workers",
            Unit::Bytes,
            c.bytes_in.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes sent to workers",
            Unit::Bytes,
            c.bytes_out.clone(),
        );
        r.register(
            "module_downloads",
            "Times a worker downloaded the task module",
            c.module_downloads.clone(),
        );
        r.register(
            "connections_pending",
            "Connections that are not workers (yet): before their request head, plain HTTP, or before their WebSocket hello is accepted",
            c.connections_pending.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once because too many connections were pending",
            c.connections_refused.clone(),
        );
        r.register_with_unit(
            "dispatch_wait",
            "Time a job waited for a worker",
            Unit::Seconds,
            c.dispatch_wait.clone(),
        );
        r.register_with_unit(
            "job_round_trip",
            "Time from sending a job to a worker to its result",
            Unit::Seconds,
            c.round_trip.clone(),
        );
        c
    }
}

/// A snapshot of the coordinator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Workers connected now.
    pub workers: u64,
    /// Jobs taken from the channel and waiting for a worker.
    pub queued: u64,
    /// Jobs sent to a worker and not yet answered.
    pub in_flight: u64,
    /// Times a job was sent to a worker (re-dispatches included).
    pub dispatched: u64,
    /// Jobs whose successful result was delivered.
    pub completed: u64,
    /// Jobs whose failure was delivered (handler error, lost too often, undecodable).
    pub failed: u64,
    /// Jobs taken back from a lost worker or an overrun lease and queued again.
    pub redelivered: u64,
    /// Jobs a slow worker held at the end of a run that were also given to an idle, faster
    /// one (straggler speculation, see [`Config::speculation`](crate::Config::speculation)).
    pub speculated: u64,
    /// Results of replicated jobs that lost to the result other workers agreed on (see
    /// [`Config::replicas`](crate::Config::replicas)).
    pub wrong: u64,
    /// Late or duplicate results that were dropped.
    pub duplicates: u64,
    /// Bytes received from workers.
    pub bytes_in: u64,
    /// Bytes sent to workers.
    pub bytes_out: u64,
    /// Times a worker downloaded the task module (once per worker; a native worker that
    /// has it cached downloads nothing).
    pub module_downloads: u64,
    /// Connections that are not (yet) workers, now: waiting for their request head or TLS
    /// handshake, plain HTTP ones, and WebSockets before their hello is accepted.
    pub connections_pending: u64,
    /// Connections closed at once because
    /// [`Config::max_pending_connections`](crate::Config::max_pending_connections) were
    /// pending.
    pub connections_refused: u64,
}

impl Counters {
    /// Adds what the scheduler counted, and sets its gauges.
    pub fn publish(&self, t: &Tallies, g: Gauges) {
        for (counter, n) in [
            (&self.dispatched, t.dispatched),
            (&self.completed, t.completed),
            (&self.failed, t.failed),
            (&self.redelivered, t.redelivered),
            (&self.speculated, t.speculated),
            (&self.wrong, t.wrong),
            (&self.duplicates, t.duplicates),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.dispatch_wait.add(&t.dispatch_wait);
        self.round_trip.add(&t.round_trip);
        for (gauge, &n) in self.workers_by_kind.iter().zip(&g.workers) {
            gauge.set(n as i64);
        }
        self.workers.set(g.workers.iter().sum::<usize>() as i64);
        self.queued.set(g.queued as i64);
        self.in_flight.set(g.in_flight as i64);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            workers: self.workers.get().max(0) as u64,
            queued: self.queued.get().max(0) as u64,
            in_flight: self.in_flight.get().max(0) as u64,
            dispatched: self.dispatched.get(),
            completed: self.completed.get(),
            failed: self.failed.get(),
            redelivered: self.redelivered.get(),
            speculated: self.speculated.get(),
            wrong: self.wrong.get(),
            duplicates: self.duplicates.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            module_downloads: self.module_downloads.get(),
            connections_pending: self.connections_pending.get().max(0) as u64,
            connections_refused: self.connections_refused.get(),
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_counts_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        for (i, &bound) in BOUNDS_NS.iter().enumerate() {
            for (nanos, bucket) in [(bound - 1, i), (bound, i), (bound + 1, i + 1)] {
                let mut tally = Tally::default();
                tally.observe(Duration::from_nanos(nanos));
                let mut want = [0; BUCKETS];
                want[bucket] = 1;
                assert_eq!(tally.counts, want, "{nanos} ns");
            }
        }
        let mut tally = Tally::default();
        tally.observe(Duration::ZERO);
        tally.observe(Duration::MAX);
        assert_eq!((tally.counts[0], tally.counts[BUCKETS - 1]), (1, 1));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let counters = Counters::default();
        let mut tally = Tally::default();
        tally.observe(Duration::from_micros(30)); // le 0.00005
        tally.observe(Duration::from_micros(70)); // le 0.0001
        tally.observe(Duration::from_secs(60)); // +Inf
        counters.round_trip.add(&tally);
        counters.round_trip.add(&tally);
        assert_eq!(counters.round_trip.count(), 6);
        let text = counters.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let name = "distchan_job_round_trip_seconds";
        assert_eq!(line(&format!("{name}_bucket{{le=\"0.00005\"}}")), 2.0);
        assert_eq!(line(&format!("{name}_bucket{{le=\"0.0001\"}}")), 4.0);
        assert_eq!(line(&format!("{name}_bucket{{le=\"30.0\"}}")), 4.0);
        assert_eq!(line(&format!("{name}_bucket{{le=\"+Inf\"}}")), 6.0);
        assert_eq!(line(&format!("{name}_count")), 6.0);
        assert!((line(&format!("{name}_sum")) - 120.0002).abs() < 1e-6);
    }
}
