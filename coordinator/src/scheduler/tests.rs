//! The scheduler driven directly through its [`Hub`], the way a connection, a sender and
//! the result receiver drive it: no sockets, and tokio's paused clock for leases.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use bytes::Bytes;
use distchan_protocol::{
    wire::{JobFrameBuilder, JobResult, Resume, WorkerKind},
    JobId,
};
use tokio::time::Instant;

use super::{hub::Joined, Hub, RawOutcome, Submit, Take, WorkerId};
use crate::{
    config::Config,
    connection::{Incoming, Joining, Outgoing},
    stats::Counters,
    JobError,
};

/// A hub with a job side and a result side, and fixed windows (every worker holds what it
/// declared at once; the adaptive window has its own tests).
fn hub(config: Config) -> Hub {
    adaptive_hub(Config {
        adaptive_windows: false,
        ..config
    })
}

/// A hub with a job side and a result side, as configured.
fn adaptive_hub(config: Config) -> Hub {
    Hub::new(
        config,
        true,
        true,
        Arc::new(Counters::default()),
        Instant::now(),
    )
}

/// Joins a worker that declares `capacity`, as a connection does after the handshake.
fn join(hub: &Hub, capacity: u32) -> WorkerId {
    join_resuming(hub, capacity, None).id
}

/// Joins a worker that declares `capacity`, with the resume its hello may carry.
fn join_resuming(hub: &Hub, capacity: u32, resume: Option<Resume>) -> Joined {
    join_as(hub, capacity, resume, None)
}

/// Joins a worker that declares `capacity`, with the resume and group its hello may carry.
fn join_as(hub: &Hub, capacity: u32, resume: Option<Resume>, group: Option<&str>) -> Joined {
    try_join(hub, capacity, resume, group).expect("joins")
}

/// [`join_as`], with the refusal when the worker may not join.
fn try_join(
    hub: &Hub,
    capacity: u32,
    resume: Option<Resume>,
    group: Option<&str>,
) -> Result<Joined, distchan_protocol::wire::Refusal> {
    let joining = Joining {
        agent: "test".into(),
        kind: WorkerKind::Native,
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        capacity,
        last_seen: Arc::new(AtomicU64::new(0)),
        resume,
        group: group.map(str::to_owned),
    };
    hub.join(joining)
}

/// Submits `n` jobs, as a sender does; returns their ids.
fn submit(hub: &Hub, n: usize) -> Vec<JobId> {
    (0..n)
        .map(
            |_| match hub.try_submit(&mut JobFrameBuilder::from_payload(b"job"), false) {
                Submit::Sent(id) => id,
                Submit::NoRoom => panic!("the line is full"),
                Submit::Closed => panic!("shut down"),
            },
        )
        .collect()
}

/// What the worker's writer would send now.
fn outbox(hub: &Hub, worker: WorkerId) -> Vec<Outgoing> {
    let mut out = Vec::new();
    hub.take_outbox(worker, &mut out);
    out
}

/// The ids of the jobs the worker's writer would send now (nothing else may be there).
fn sent(hub: &Hub, worker: WorkerId) -> Vec<JobId> {
    outbox(hub, worker)
        .into_iter()
        .map(|out| match out {
            Outgoing::Job(id, _) => id,
            other => panic!("expected only jobs, got {other:?}"),
        })
        .collect()
}

/// Settles the worker's result for job `id`: `Ok` with a payload, or a handler's error.
fn answer(hub: &Hub, worker: WorkerId, id: JobId, outcome: Result<&'static str, &str>) {
    let outcome = outcome
        .map(|text| Bytes::from_static(text.as_bytes()))
        .map_err(str::to_owned);
    hub.settle(
        worker,
        &mut vec![Incoming::Result(JobResult { id, outcome })],
    );
}

/// The outcomes waiting for the receiver.
fn outcomes(hub: &Hub) -> Vec<RawOutcome> {
    let mut taken = VecDeque::new();
    match hub.take_outcomes(&mut taken) {
        Take::Some => taken.into(),
        Take::Wait | Take::End => Vec::new(),
    }
}

/// The one outcome waiting for the receiver (there must be exactly one).
fn one_outcome(hub: &Hub) -> RawOutcome {
    let mut got = outcomes(hub);
    assert_eq!(got.len(), 1, "expected one outcome, got {got:?}");
    got.pop().expect("one outcome")
}

/// Jobs each worker holds now, by worker id.
fn in_flight(hub: &Hub) -> Vec<(WorkerId, usize)> {
    hub.snapshot()
        .into_iter()
        .map(|w| (w.id, w.in_flight))
        .collect()
}

/// Job ids `n`, in order.
fn ids(n: std::ops::Range<u64>) -> Vec<JobId> {
    n.map(JobId).collect()
}

/// A configuration with leases of ten seconds.
fn leased() -> Config {
    Config {
        lease: Some(Duration::from_secs(10)),
        ..Config::default()
    }
}

#[test]
fn a_job_submitted_goes_to_a_worker_with_credit_and_waits_without_one() {
    let hub = hub(Config::default());
    assert_eq!(submit(&hub, 1), ids(0..1));
    assert_eq!(hub.stats().queued, 1, "no worker yet: the job waits");
    let w = join(&hub, 2);
    assert_eq!(
        sent(&hub, w),
        ids(0..1),
        "the waiting job goes to the new worker"
    );
    assert_eq!(submit(&hub, 2), ids(1..3));
    assert_eq!(sent(&hub, w), ids(1..2), "one credit was left");
    let stats = hub.stats();
    assert_eq!((stats.in_flight, stats.queued), (2, 1));
}

/// Runs `f` on another thread, to its end.
fn elsewhere<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().expect("the other thread panicked"))
}

#[test]
fn jobs_sent_while_the_scheduler_is_held_are_admitted_in_order_once_it_is_released() {
    let hub = hub(Config::default());
    let w = join(&hub, 2);
    // The other thread's sends return at once, numbered, while this one holds the lock.
    let left = hub.hold(|| elsewhere(|| submit(&hub, 5)));
    assert_eq!(left, ids(0..5));
    assert_eq!(
        sent(&hub, w),
        ids(0..2),
        "admitted and dispatched on release"
    );
    assert_eq!(hub.stats().queued, 3);
    assert_eq!(
        submit(&hub, 1),
        ids(5..6),
        "no id is skipped or taken twice"
    );
    for first in [0, 2, 4] {
        answer(&hub, w, JobId(first), Ok("done"));
        answer(&hub, w, JobId(first + 1), Ok("done"));
        if first < 4 {
            assert_eq!(sent(&hub, w), ids(first + 2..first + 4), "in line order");
        }
    }
    let got: Vec<JobId> = outcomes(&hub).iter().map(|o| o.id).collect();
    assert_eq!(got, ids(0..6), "nothing lost");
}

#[test]
fn a_holder_admits_the_jobs_left_with_earlier_ids_before_its_own() {
    let hub = hub(Config::default());
    let w = join(&hub, 8);
    let mut left = Vec::new();
    let own = hub.submit_after(
        || left = elsewhere(|| submit(&hub, 3)),
        &mut JobFrameBuilder::from_payload(b"own"),
    );
    assert_eq!(left, ids(0..3));
    assert!(matches!(own, Submit::Sent(JobId(3))));
    assert_eq!(sent(&hub, w), ids(0..4));
}

#[test]
fn after_shutdown_a_job_sent_while_the_scheduler_is_held_is_refused_and_kept() {
    let hub = hub(Config::default());
    assert_eq!(submit(&hub, 1), ids(0..1));
    // Left while held before the shutdown: admitted, and reported unfinished.
    assert_eq!(hub.hold(|| elsewhere(|| submit(&hub, 1))), ids(1..2));
    assert_eq!(hub.shut_down().unfinished, ids(0..2));
    let mut frame = JobFrameBuilder::from_payload(b"late");
    // With a place in the line already held, as after waiting for room.
    let late = hub.hold(|| elsewhere(|| hub.try_submit(&mut frame, true)));
    assert!(matches!(late, Submit::Closed));
    assert_eq!(frame.payload(), b"late", "the sender keeps its job");
}

#[test]
fn a_result_is_delivered_once_and_its_credit_takes_the_next_job() {
    let hub = hub(Config::default());
    let w = join(&hub, 1);
    submit(&hub, 2);
    assert_eq!(sent(&hub, w), ids(0..1));
    answer(&hub, w, JobId(0), Ok("done"));
    let got = one_outcome(&hub);
    assert_eq!((got.id, got.worker), (JobId(0), Some(w)));
    assert_eq!(got.result.as_deref().ok(), Some(&b"done"[..]));
    assert_eq!(
        sent(&hub, w),
        ids(1..2),
        "the returned credit took the next job"
    );
    assert_eq!(hub.stats().completed, 1);
}

#[test]
fn end_of_work_follows_the_last_outcome_once_the_job_side_is_closed() {
    let hub = hub(Config::default());
    let w = join(&hub, 1);
    submit(&hub, 1);
    sent(&hub, w);
    hub.close_jobs();
    assert!(outbox(&hub, w).is_empty(), "a job is still unanswered");
    answer(&hub, w, JobId(0), Ok("done"));
    assert!(matches!(outbox(&hub, w)[..], [Outgoing::EndOfWork]));
    assert_eq!(outcomes(&hub).len(), 1);
    assert!(matches!(hub.take_outcomes(&mut VecDeque::new()), Take::End));
}

#[test]
fn a_leaving_worker_s_jobs_go_to_another_and_only_those_it_was_sent_count_as_lost() {
    let hub = hub(Config {
        max_retries: 0,
        ..Config::default()
    });
    let w1 = join(&hub, 2);
    submit(&hub, 1);
    assert_eq!(sent(&hub, w1), ids(0..1), "job 0 went out");
    submit(&hub, 1); // job 1 stays in the outbox: never sent
    hub.leave(w1, "test", false);
    let got = one_outcome(&hub);
    assert_eq!(got.id, JobId(0));
    assert!(matches!(
        got.result,
        Err(JobError::WorkerLost { attempts: 1 })
    ));
    let w2 = join(&hub, 2);
    assert_eq!(
        sent(&hub, w2),
        ids(1..2),
        "the unsent job goes to the next worker"
    );
    assert_eq!(hub.stats().workers, 1);
}

#[test]
fn a_lost_job_is_dispatched_again_while_retries_last() {
    let hub = hub(Config::default()); // max_retries: 3
    let w1 = join(&hub, 1);
    submit(&hub, 1);
    sent(&hub, w1);
    hub.leave(w1, "test", false);
    assert!(outcomes(&hub).is_empty(), "the job is not reported lost");
    let w2 = join(&hub, 1);
    assert_eq!(sent(&hub, w2), ids(0..1));
    assert_eq!(hub.stats().redelivered, 1);
}

#[test]
fn duplicate_results_are_dropped_without_returning_credit() {
    let hub = hub(Config::default());
    let w1 = join(&hub, 1);
    let w2 = join(&hub, 1);
    submit(&hub, 2);
    assert_eq!(sent(&hub, w1), ids(0..1));
    assert_eq!(sent(&hub, w2), ids(1..2));
    // A result for a job the worker does not hold.
    answer(&hub, w2, JobId(0), Ok("not mine"));
    assert!(outcomes(&hub).is_empty());
    assert_eq!(in_flight(&hub), [(w1, 1), (w2, 1)], "no credit came back");
    // The first answer counts, the second is dropped.
    answer(&hub, w1, JobId(0), Ok("first"));
    answer(&hub, w1, JobId(0), Ok("second"));
    let got = one_outcome(&hub);
    assert_eq!(got.result.as_deref().ok(), Some(&b"first"[..]));
    assert_eq!(in_flight(&hub), [(w1, 0), (w2, 1)]);
    assert_eq!(hub.stats().duplicates, 2);
}

#[test]
fn a_handler_failure_is_retried_then_reported() {
    let hub = hub(Config {
        handler_retries: 1,
        ..Config::default()
    });
    let w = join(&hub, 1);
    submit(&hub, 1);
    sent(&hub, w);
    answer(&hub, w, JobId(0), Err("boom"));
    assert!(outcomes(&hub).is_empty(), "the first failure is retried");
    assert_eq!(sent(&hub, w), ids(0..1), "the job is sent again");
    answer(&hub, w, JobId(0), Err("boom again"));
    let got = one_outcome(&hub);
    assert!(matches!(&got.result, Err(JobError::Failed(m)) if m == "boom again"));
    assert_eq!(hub.stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_window_starts_at_two_and_grows_to_the_capacity_when_the_worker_is_fast() {
    let hub = adaptive_hub(Config {
        queue_capacity: 100_000,
        ..Config::default()
    });
    let w = join(&hub, 64);
    submit(&hub, 20_000);
    let mut held = sent(&hub, w);
    assert_eq!(held.len(), 2, "a new worker starts with two jobs");
    let mut sizes = vec![2];
    // Each millisecond the worker answers everything it holds, in one batch of results: at
    // two jobs a millisecond, 250 ms of work is more than its capacity.
    for _ in 0..300 {
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut batch = std::mem::take(&mut held)
            .into_iter()
            .map(|id| {
                Incoming::Result(JobResult {
                    id,
                    outcome: Ok(Bytes::from_static(b"done")),
                })
            })
            .collect();
        hub.settle(w, &mut batch);
        outcomes(&hub);
        held = sent(&hub, w);
        if sizes.last() != Some(&held.len()) {
            sizes.push(held.len());
        }
        assert!(held.len() <= 64);
    }
    assert_eq!(sizes, [2, 64], "its capacity at the first measurement");
    assert_eq!(hub.snapshot()[0].capacity, 64);
    assert_eq!(hub.snapshot()[0].declared, 64);
}

#[test]
fn the_window_a_worker_starts_with_is_a_setting() {
    let hub = adaptive_hub(Config {
        start_window: 8,
        ..Config::default()
    });
    let (w, small) = (join(&hub, 64), join(&hub, 4));
    submit(&hub, 20);
    assert_eq!(
        sent(&hub, w),
        ids(0..8),
        "a new worker starts with eight jobs"
    );
    assert_eq!(sent(&hub, small), ids(8..12), "never above its capacity");
    assert_eq!(hub.snapshot()[0].capacity, 8);

    // Fixed windows: the whole capacity at once, whatever the start.
    let fixed = self::hub(Config {
        start_window: 8,
        ..Config::default()
    });
    let w = join(&fixed, 64);
    submit(&fixed, 20);
    assert_eq!(
        sent(&fixed, w).len(),
        20,
        "all 20 jobs, beyond the start of 8"
    );
    assert_eq!(fixed.snapshot()[0].capacity, 64);
}

#[test]
fn credit_is_never_exceeded() {
    let hub = hub(Config {
        max_capacity: 3,
        ..Config::default()
    });
    let w = join(&hub, 5); // granted 3, the most allowed
    submit(&hub, 10);
    let mut held = sent(&hub, w);
    assert_eq!(held, ids(0..3));
    let mut answered = 0;
    while let Some(id) = held.pop() {
        answer(&hub, w, id, Ok("done"));
        answered += 1;
        held.extend(sent(&hub, w));
        assert!(held.len() <= 3, "holds {} jobs", held.len());
        assert_eq!(in_flight(&hub), [(w, held.len())]);
    }
    assert_eq!(answered, 10);
    assert_eq!(outcomes(&hub).len(), 10);
}

#[test]
fn the_line_takes_queue_capacity_jobs_beyond_the_free_credit() {
    let hub = hub(Config {
        queue_capacity: 2,
        ..Config::default()
    });
    let w = join(&hub, 1);
    submit(&hub, 1);
    assert_eq!(sent(&hub, w), ids(0..1));
    answer(&hub, w, JobId(0), Ok("done")); // the credit comes back
    let admitted = std::iter::from_fn(|| {
        match hub.try_submit(&mut JobFrameBuilder::from_payload(b"job"), false) {
            Submit::Sent(id) => Some(id),
            Submit::NoRoom | Submit::Closed => None,
        }
    })
    .take(10)
    .count();
    assert_eq!(
        admitted,
        1 + 2,
        "one job for the free credit, two places in the line"
    );
    assert_eq!(sent(&hub, w), ids(1..2));
}

/// Fixed windows and strict turns: one job per worker per turn, as in the Go package.
fn strict() -> Config {
    Config {
        strict_turns: true,
        ..Config::default()
    }
}

#[test]
fn jobs_go_round_robin_over_workers_with_credit() {
    let hub = hub(strict());
    let workers = [join(&hub, 2), join(&hub, 2), join(&hub, 2)];
    submit(&hub, 6);
    let got: Vec<Vec<JobId>> = workers.iter().map(|&w| sent(&hub, w)).collect();
    assert_eq!(
        got,
        [
            vec![JobId(0), JobId(3)],
            vec![JobId(1), JobId(4)],
            vec![JobId(2), JobId(5)]
        ]
    );
    // Credit coming back puts a worker at the end of the turn.
    answer(&hub, workers[1], JobId(1), Ok("done"));
    answer(&hub, workers[0], JobId(0), Ok("done"));
    submit(&hub, 2);
    assert_eq!(sent(&hub, workers[1]), ids(6..7));
    assert_eq!(sent(&hub, workers[0]), ids(7..8));
}

#[test]
fn a_turn_carries_consecutive_jobs_while_they_wait_to_leave() {
    let hub = hub(Config::default());
    let workers = [join(&hub, 4), join(&hub, 4), join(&hub, 4)];
    submit(&hub, 6);
    assert_eq!(
        sent(&hub, workers[0]),
        ids(0..4),
        "nothing left yet: the turn goes on, up to the worker's free credit"
    );
    assert_eq!(sent(&hub, workers[1]), ids(4..6));
    // Its connection took them: the turn is over, and the next worker's starts.
    submit(&hub, 1);
    assert_eq!(sent(&hub, workers[2]), ids(6..7));
    submit(&hub, 1);
    assert_eq!(
        sent(&hub, workers[1]),
        ids(7..8),
        "back in the ring after its turn, with two credits left"
    );

    // A turn carries at most `max_turn` jobs, however much credit is free.
    for max_turn in [Config::default().max_turn, 40] {
        let deep = self::hub(Config {
            max_turn,
            ..Config::default()
        });
        let workers = [join(&deep, 64), join(&deep, 64)];
        submit(&deep, max_turn + 3);
        assert_eq!(sent(&deep, workers[0]).len(), max_turn);
        assert_eq!(sent(&deep, workers[1]).len(), 3);
    }
    // Strict turns are one job each, whatever `max_turn` says.
    let strict = self::hub(Config {
        max_turn: 40,
        ..strict()
    });
    let workers = [join(&strict, 64), join(&strict, 64)];
    submit(&strict, 6);
    assert_eq!(sent(&strict, workers[0]), [JobId(0), JobId(2), JobId(4)]);
}

#[test]
fn the_shutdown_report_says_who_did_what_including_workers_gone() {
    let hub = hub(strict());
    let (a, b, c) = (join(&hub, 4), join(&hub, 4), join(&hub, 4));
    submit(&hub, 5);
    for (worker, ids) in [(a, [0, 3]), (b, [1, 4])] {
        for id in ids {
            answer(&hub, worker, JobId(id), Ok("done"));
        }
    }
    hub.leave(a, "closed by the worker", false);
    answer(&hub, c, JobId(2), Ok("done"));
    let report = hub.shut_down();
    let shares: Vec<(WorkerId, u64)> = report.shares.iter().map(|s| (s.id, s.done)).collect();
    assert_eq!(shares, [(a, 2), (b, 2), (c, 1)]);
    assert!(report
        .shares
        .iter()
        .all(|s| s.agent == "test" && s.kind == "native"));
}

#[tokio::test(start_paused = true)]
async fn an_overrun_lease_hands_the_job_to_another_worker() {
    let hub = hub(leased());
    let w1 = join(&hub, 1);
    let w2 = join(&hub, 1);
    submit(&hub, 1);
    assert_eq!(sent(&hub, w1), ids(0..1));
    assert_eq!(
        hub.next_lease(),
        Some(Instant::now() + Duration::from_secs(10))
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    hub.expire_leases();
    assert!(sent(&hub, w2).is_empty(), "the lease has not run out");
    tokio::time::advance(Duration::from_secs(1)).await;
    hub.expire_leases();
    assert_eq!(sent(&hub, w2), ids(0..1), "the job runs on w2 now");
    assert_eq!(
        in_flight(&hub),
        [(w1, 1), (w2, 1)],
        "w1 keeps its credit until it answers"
    );
    assert_eq!(hub.stats().redelivered, 1);
}

#[tokio::test(start_paused = true)]
async fn an_overrun_job_is_not_sent_again_to_the_worker_still_running_it() {
    let hub = hub(leased());
    let w1 = join(&hub, 2);
    submit(&hub, 1);
    sent(&hub, w1);
    tokio::time::advance(Duration::from_secs(10)).await;
    hub.expire_leases();
    assert!(
        sent(&hub, w1).is_empty(),
        "w1 has credit, but runs the job already"
    );
    let w2 = join(&hub, 1);
    assert_eq!(sent(&hub, w2), ids(0..1));
}

/// A job whose lease ran out on `w1` and that runs on `w2` now.
async fn overrun(hub: &Hub) -> (WorkerId, WorkerId) {
    let w1 = join(hub, 1);
    let w2 = join(hub, 1);
    submit(hub, 1);
    assert_eq!(sent(hub, w1), ids(0..1));
    tokio::time::advance(Duration::from_secs(10)).await;
    hub.expire_leases();
    assert_eq!(sent(hub, w2), ids(0..1));
    (w1, w2)
}

#[tokio::test(start_paused = true)]
async fn after_a_lease_overrun_the_late_answer_of_the_first_worker_is_dropped() {
    let hub = hub(leased());
    let (w1, w2) = overrun(&hub).await;
    answer(&hub, w2, JobId(0), Ok("from w2"));
    assert!(
        matches!(outbox(&hub, w1)[..], [Outgoing::Cancel(JobId(0))]),
        "the overrun run is told to stop once the job has its outcome"
    );
    assert!(outbox(&hub, w2).is_empty());
    answer(&hub, w1, JobId(0), Ok("from w1"));
    let got = one_outcome(&hub);
    assert_eq!(got.worker, Some(w2));
    assert_eq!(hub.stats().duplicates, 1);
    assert_eq!(
        in_flight(&hub),
        [(w1, 0), (w2, 0)],
        "both credits came back"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_lease_overrun_the_first_worker_may_still_answer_first() {
    let hub = hub(leased());
    let (w1, w2) = overrun(&hub).await;
    answer(&hub, w1, JobId(0), Ok("from w1"));
    assert!(
        matches!(outbox(&hub, w2)[..], [Outgoing::Cancel(JobId(0))]),
        "the current runner is told to stop once the first one answered"
    );
    answer(&hub, w2, JobId(0), Ok("from w2"));
    let got = one_outcome(&hub);
    assert_eq!(got.worker, Some(w1));
    assert_eq!(
        hub.stats().duplicates,
        1,
        "w2 was superseded: its answer is dropped"
    );
    assert_eq!(
        in_flight(&hub),
        [(w1, 0), (w2, 0)],
        "both credits came back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_superseded_run_failing_leaves_the_job_to_its_current_runner() {
    let hub = hub(Config {
        handler_retries: 1,
        ..leased()
    });
    let (w1, w2) = overrun(&hub).await;
    answer(&hub, w1, JobId(0), Err("late failure"));
    assert!(
        outcomes(&hub).is_empty(),
        "the failure of a superseded run is not reported"
    );
    assert!(sent(&hub, w1).is_empty(), "nor retried");
    assert_eq!(in_flight(&hub), [(w1, 0), (w2, 1)]);
    answer(&hub, w2, JobId(0), Ok("from w2"));
    let got = one_outcome(&hub);
    assert_eq!(got.worker, Some(w2));
}

#[test]
fn a_cancelled_job_in_the_line_leaves_it_and_its_place_is_free_again() {
    let hub = hub(Config {
        queue_capacity: 2,
        ..Config::default()
    });
    assert_eq!(
        submit(&hub, 2),
        ids(0..2),
        "no worker: both wait in the line"
    );
    assert!(hub.cancel(JobId(0)));
    let got = one_outcome(&hub);
    assert_eq!((got.id, got.worker), (JobId(0), None));
    assert!(matches!(got.result, Err(JobError::Cancelled)));
    assert!(!hub.cancel(JobId(0)), "a job is cancelled once");
    assert!(outcomes(&hub).is_empty(), "and reported once");
    assert_eq!(submit(&hub, 1), ids(2..3), "its place in the line is free");
    assert!(matches!(
        hub.try_submit(&mut JobFrameBuilder::from_payload(b"job"), false),
        Submit::NoRoom
    ));
    let w = join(&hub, 4);
    assert_eq!(sent(&hub, w), [JobId(1), JobId(2)], "job 0 is never run");
}

#[test]
fn a_cancelled_running_job_is_reported_at_once_and_its_late_answer_gives_the_credit_back() {
    let hub = hub(Config::default());
    let w = join(&hub, 1);
    submit(&hub, 2);
    assert_eq!(sent(&hub, w), ids(0..1));
    assert!(hub.cancel(JobId(0)));
    let got = one_outcome(&hub);
    assert!(matches!(got.result, Err(JobError::Cancelled)));
    assert!(
        matches!(outbox(&hub, w)[..], [Outgoing::Cancel(JobId(0))]),
        "the worker is told to stop the job"
    );
    assert_eq!(
        in_flight(&hub),
        [(w, 1)],
        "the job holds its credit until answered"
    );
    answer(&hub, w, JobId(0), Err("cancelled"));
    assert!(outcomes(&hub).is_empty(), "the late answer is dropped");
    assert_eq!(sent(&hub, w), ids(1..2), "its credit took the next job");
    assert!(!hub.cancel(JobId(0)));
    answer(&hub, w, JobId(1), Ok("done"));
    assert!(
        !hub.cancel(JobId(1)),
        "a job with its outcome is not cancelled"
    );
    assert!(one_outcome(&hub).result.is_ok());
}

#[test]
fn cancelling_the_last_job_waiting_again_ends_the_work() {
    let hub = hub(Config::default());
    let w1 = join(&hub, 1);
    submit(&hub, 1);
    sent(&hub, w1);
    hub.leave(w1, "test", false); // job 0 waits again
    hub.close_jobs();
    assert!(hub.cancel(JobId(0)));
    assert!(matches!(one_outcome(&hub).result, Err(JobError::Cancelled)));
    assert!(matches!(hub.take_outcomes(&mut VecDeque::new()), Take::End));
    let w2 = join(&hub, 1);
    assert!(
        matches!(outbox(&hub, w2)[..], [Outgoing::EndOfWork]),
        "a worker joining now gets no job, only the end of work"
    );
}

/// A configuration that keeps a lost worker's jobs for 30 s.
fn with_grace() -> Config {
    Config {
        reconnect_grace: Duration::from_secs(30),
        ..Config::default()
    }
}

/// The resume of a worker that had `session` and still holds `holding`.
fn resume(session: &Option<String>, holding: &[u64]) -> Option<Resume> {
    Some(Resume {
        session: session.clone().expect("a session with a grace"),
        holding: holding.iter().copied().map(JobId).collect(),
    })
}

#[tokio::test]
async fn a_lost_worker_keeps_its_jobs_for_its_return() {
    let hub = hub(with_grace());
    let first = join_resuming(&hub, 4, None);
    assert!(first.session.is_some() && !first.resumed);
    submit(&hub, 3);
    assert_eq!(sent(&hub, first.id), ids(0..3));
    hub.leave(first.id, "connection lost", true);
    // Nobody else gets its jobs meanwhile, and none of them fails.
    let other = join(&hub, 4);
    assert!(outbox(&hub, other).is_empty());
    assert!(outcomes(&hub).is_empty());
    // Back with jobs 0 and 1; the result of job 2 was lost with the connection.
    let back = join_resuming(&hub, 4, resume(&first.session, &[0, 1]));
    assert!(back.resumed);
    assert_ne!(
        back.session, first.session,
        "a new session for the new connection"
    );
    assert_eq!(sent(&hub, other), ids(2..3), "job 2 goes to another worker");
    answer(&hub, back.id, JobId(0), Ok("zero"));
    answer(&hub, back.id, JobId(1), Ok("one"));
    answer(&hub, other, JobId(2), Ok("two"));
    let mut got: Vec<JobId> = outcomes(&hub).into_iter().map(|o| o.id).collect();
    got.sort();
    assert_eq!(got, ids(0..3), "each job's outcome once");
    // Its credit came back with its answers: it takes new jobs.
    submit(&hub, 1);
    let gets: usize = [back.id, other].iter().map(|&w| sent(&hub, w).len()).sum();
    assert_eq!(gets, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_worker_whose_jobs_all_run_elsewhere_is_not_waited_for() {
    let hub = hub(Config {
        lease: Some(Duration::from_secs(1)),
        ..with_grace()
    });
    let first = join_resuming(&hub, 1, None);
    submit(&hub, 1);
    assert_eq!(sent(&hub, first.id), ids(0..1));
    // Its lease runs out: job 0 goes to another worker, which answers it; `first` still
    // holds its superseded run.
    tokio::time::advance(Duration::from_secs(2)).await;
    hub.expire_leases();
    let other = join(&hub, 1);
    assert_eq!(sent(&hub, other), ids(0..1));
    answer(&hub, other, JobId(0), Ok("zero"));
    assert_eq!(one_outcome(&hub).id, JobId(0));
    hub.leave(first.id, "connection lost", true);
    // Nothing of its own was waiting for it: its session ended with its connection.
    let back = join_resuming(&hub, 1, resume(&first.session, &[0]));
    assert!(
        !back.resumed,
        "a worker running nothing is not kept for its return"
    );
}

#[tokio::test(start_paused = true)]
async fn the_jobs_go_to_others_once_the_grace_runs_out() {
    let hub = hub(with_grace());
    let first = join_resuming(&hub, 4, None);
    submit(&hub, 2);
    assert_eq!(sent(&hub, first.id), ids(0..2));
    hub.leave(first.id, "connection lost", true);
    let other = join(&hub, 4);
    let deadline = hub.next_lease().expect("the grace's end is a deadline");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(Instant::now() < deadline);
    tokio::time::advance(Duration::from_secs(2)).await;
    hub.expire_leases();
    assert_eq!(sent(&hub, other), ids(0..2));
    // Too late: the session is gone, and the jobs it still holds are not its own.
    let late = join_resuming(&hub, 4, resume(&first.session, &[0, 1]));
    assert!(!late.resumed);
    answer(&hub, late.id, JobId(0), Ok("late"));
    answer(&hub, other, JobId(0), Ok("zero"));
    let got = one_outcome(&hub);
    assert_eq!(got.id, JobId(0));
    assert_eq!(got.worker, Some(other));
}

#[tokio::test]
async fn a_worker_back_before_its_loss_was_seen_takes_its_jobs_over() {
    let hub = hub(with_grace());
    let first = join_resuming(&hub, 2, None);
    submit(&hub, 2);
    assert_eq!(sent(&hub, first.id), ids(0..2));
    // Its new connection arrives while the old one still looks alive.
    let back = join_resuming(&hub, 2, resume(&first.session, &[0, 1]));
    assert!(back.resumed);
    // What the old connection still reads counts for nothing, and its end changes nothing.
    answer(&hub, first.id, JobId(0), Ok("old"));
    hub.leave(first.id, "connection lost", true);
    assert!(outcomes(&hub).is_empty());
    answer(&hub, back.id, JobId(0), Ok("zero"));
    answer(&hub, back.id, JobId(1), Ok("one"));
    assert_eq!(outcomes(&hub).len(), 2);
    assert_eq!(in_flight(&hub), vec![(back.id, 0)]);
}

#[tokio::test]
async fn without_a_grace_a_lost_worker_s_jobs_go_at_once() {
    let hub = hub(Config::default());
    let first = join_resuming(&hub, 2, None);
    assert_eq!(first.session, None);
    submit(&hub, 2);
    assert_eq!(sent(&hub, first.id), ids(0..2));
    hub.leave(first.id, "connection lost", true);
    let other = join(&hub, 2);
    assert_eq!(sent(&hub, other), ids(0..2));
}

/// Runs 100 jobs on a fast worker (answers every 5 ms) and a slow one (every 50 ms), two jobs
/// each at a time, on paused time: returns the 5 ms steps the run took, each job's
/// outcome (which worker answered it), and the jobs the slow worker was told to stop.
async fn fast_and_slow(config: Config) -> (u32, Vec<(JobId, WorkerId)>, Vec<JobId>) {
    let hub = hub(config);
    let (fast, slow) = (join(&hub, 2), join(&hub, 2));
    submit(&hub, 100);
    hub.close_jobs();
    let (mut held_fast, mut held_slow, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
    let mut delivered = Vec::new();
    let mut step = 0;
    while delivered.len() < 100 {
        assert!(step < 1000, "the run ends");
        for (worker, held) in [(fast, &mut held_fast), (slow, &mut held_slow)] {
            for out in outbox(&hub, worker) {
                match out {
                    Outgoing::Job(id, _) => held.push(id),
                    Outgoing::Cancel(id) => cancelled.push(id),
                    Outgoing::EndOfWork => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        tokio::time::advance(Duration::from_millis(5)).await;
        step += 1;
        for id in std::mem::take(&mut held_fast) {
            answer(&hub, fast, id, Ok("fast"));
        }
        if step % 10 == 0 {
            for id in std::mem::take(&mut held_slow) {
                answer(&hub, slow, id, Ok("slow"));
            }
        }
        delivered.extend(
            outcomes(&hub)
                .into_iter()
                .map(|o| (o.id, o.worker.unwrap())),
        );
    }
    cancelled.extend(outbox(&hub, slow).into_iter().filter_map(|out| match out {
        Outgoing::Cancel(id) => Some(id),
        _ => None,
    }));
    let mut answered: Vec<JobId> = delivered.iter().map(|&(id, _)| id).collect();
    answered.sort();
    assert_eq!(answered, ids(0..100), "each job's outcome once");
    (step, delivered, cancelled)
}

/// Speculation on or off.
fn speculating(on: bool) -> Config {
    Config {
        speculation: on,
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn at_the_end_a_slow_worker_s_jobs_also_go_to_an_idle_fast_one() {
    let (steps_off, _, cancelled_off) = fast_and_slow(speculating(false)).await;
    let (steps_on, delivered_on, cancelled_on) = fast_and_slow(speculating(true)).await;
    assert!(cancelled_off.is_empty());
    assert!(
        steps_on < steps_off,
        "the run ends sooner: {steps_on} steps against {steps_off}"
    );
    // The copies won, and the slow worker was told to stop its runs of them.
    assert_eq!(cancelled_on.len(), 2, "{cancelled_on:?}");
    for id in &cancelled_on {
        let by = delivered_on
            .iter()
            .find(|&&(d, _)| d == *id)
            .map(|&(_, w)| w);
        assert_eq!(by, Some(1), "job {id} answered by the fast worker (id 1)");
    }
}

#[tokio::test(start_paused = true)]
async fn strict_turns_never_speculate() {
    let strict = Config {
        strict_turns: true,
        ..speculating(true)
    };
    let (steps, _, cancelled) = fast_and_slow(strict).await;
    let (steps_off, _, _) = fast_and_slow(Config {
        strict_turns: true,
        ..speculating(false)
    })
    .await;
    assert!(cancelled.is_empty());
    assert_eq!(steps, steps_off);
}

#[tokio::test]
async fn a_paused_worker_gets_no_jobs_and_the_jobs_it_gives_back_go_to_others() {
    let hub = hub(Config {
        max_retries: 0,
        ..Config::default()
    });
    let volunteer = join(&hub, 4);
    submit(&hub, 4);
    assert_eq!(sent(&hub, volunteer), ids(0..4));
    // It pauses while running jobs 0 and 1, and gives back 2 and 3, which it had not started.
    hub.settle(volunteer, &mut vec![Incoming::Pause(ids(2..4))]);
    let paused = hub.snapshot();
    assert!(paused[0].paused);
    assert_eq!(paused[0].in_flight, 2);
    submit(&hub, 1);
    assert!(
        outbox(&hub, volunteer).is_empty(),
        "nothing for a paused worker"
    );
    let other = join(&hub, 4);
    assert_eq!(
        sent(&hub, other),
        ids(2..5),
        "given back without counting as lost"
    );
    answer(&hub, volunteer, JobId(0), Ok("zero"));
    answer(&hub, volunteer, JobId(1), Ok("one"));
    for id in 2..5 {
        answer(&hub, other, JobId(id), Ok("other"));
    }
    let mut got: Vec<JobId> = outcomes(&hub).iter().map(|o| o.id).collect();
    got.sort();
    assert_eq!(got, ids(0..5), "each job's outcome once, none failed");
    // Back from its pause, it takes jobs again.
    hub.settle(volunteer, &mut vec![Incoming::Unpause]);
    submit(&hub, 8);
    assert!(!sent(&hub, volunteer).is_empty());
    assert!(!hub.snapshot().iter().any(|w| w.paused));
}

/// Runs the jobs of `hub` to their end with workers that each answer every job they are
/// sent with `answer_of(worker)`; a worker told to close leaves. Returns every outcome and,
/// by job, the workers that answered it.
fn run_voting(
    hub: &Hub,
    workers: &[WorkerId],
    answer_of: impl Fn(WorkerId) -> &'static str,
    jobs: usize,
) -> (Vec<RawOutcome>, HashMap<JobId, Vec<WorkerId>>) {
    let mut got = Vec::new();
    let mut answered: HashMap<JobId, Vec<WorkerId>> = HashMap::new();
    let mut connected = workers.to_vec();
    while got.len() < jobs {
        let mut progress = false;
        for &w in &connected.clone() {
            for out in outbox(hub, w) {
                progress = true;
                match out {
                    Outgoing::Job(id, _) => {
                        answered.entry(id).or_default().push(w);
                        answer(hub, w, id, Ok(answer_of(w)));
                    }
                    Outgoing::Close { code, .. } => {
                        assert_eq!(code, distchan_protocol::wire::CLOSE_POLICY);
                        connected.retain(|&c| c != w);
                        hub.leave(w, "closed by the coordinator", false);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        got.extend(outcomes(hub));
        assert!(progress || got.len() >= jobs, "the run is stuck");
    }
    (got, answered)
}

#[tokio::test(start_paused = true)]
async fn with_two_replicas_a_lying_worker_is_outvoted_counted_and_cut_off() {
    let hub = hub(Config {
        replicas: 2,
        max_wrong: Some(2),
        ..Config::default()
    });
    let (a, b, liar) = (join(&hub, 2), join(&hub, 2), join(&hub, 2));
    let ids = submit(&hub, 30);
    let (got, answered) = run_voting(
        &hub,
        &[a, b, liar],
        |w| if w == liar { "wrong" } else { "right" },
        ids.len(),
    );

    assert_eq!(got.len(), ids.len(), "one outcome per job");
    let mut delivered: Vec<JobId> = got.iter().map(|o| o.id).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, ids);
    for outcome in &got {
        assert_eq!(
            outcome.result.as_deref().ok(),
            Some(&b"right"[..]),
            "job {}: the liar's result never wins",
            outcome.id
        );
        let by = &answered[&outcome.id];
        let distinct: std::collections::HashSet<_> = by.iter().collect();
        assert_eq!(
            distinct.len(),
            by.len(),
            "job {}: one worker voted twice",
            outcome.id
        );
        assert!(by.len() >= 2, "job {}: fewer than two workers", outcome.id);
    }
    // Every result of the liar lost and was counted; its third cut it off (it held a few
    // more meanwhile, counted too), so it answered only a few of the 30 jobs.
    let liar_answers = answered.values().filter(|by| by.contains(&liar)).count() as u64;
    assert_eq!(hub.stats().wrong, liar_answers);
    assert!((3..10).contains(&liar_answers), "{liar_answers}");
    assert!(hub.snapshot().iter().all(|w| w.id != liar && w.wrong == 0));
}

#[tokio::test(start_paused = true)]
async fn with_replicas_a_job_without_agreement_fails_and_only_losing_votes_count_wrong() {
    // Five workers that each say something else: no two agree, and after 2 × 2 + 1 votes
    // the job fails; no one is counted wrong, since no result won.
    let hub = hub(Config {
        replicas: 2,
        ..Config::default()
    });
    let workers: Vec<WorkerId> = (0..5).map(|_| join(&hub, 1)).collect();
    let ids = submit(&hub, 1);
    let names = ["one", "two", "three", "four", "five"];
    let (got, answered) = run_voting(
        &hub,
        &workers,
        |w| names[workers.iter().position(|&x| x == w).unwrap()],
        1,
    );
    assert!(
        matches!(got[0].result, Err(JobError::Disagreement { votes: 5 })),
        "{:?}",
        got[0].result
    );
    assert_eq!(answered[&ids[0]].len(), 5);
    assert_eq!(hub.stats().wrong, 0);

    // With two honest workers and a liar, a job the liar answered first is decided
    // by the third vote, and only the liar is counted wrong.
    let hub2 = self::hub(Config {
        replicas: 2,
        ..Config::default()
    });
    let (liar, a, b) = (join(&hub2, 1), join(&hub2, 1), join(&hub2, 1));
    submit(&hub2, 1);
    let (got, answered) = run_voting(
        &hub2,
        &[liar, a, b],
        |w| if w == liar { "wrong" } else { "right" },
        1,
    );
    assert_eq!(got[0].result.as_deref().ok(), Some(&b"right"[..]));
    assert_eq!(answered.values().next().unwrap(), &vec![liar, a, b]);
    let snapshot = hub2.snapshot();
    let wrong = |id| snapshot.iter().find(|w| w.id == id).unwrap().wrong;
    assert_eq!((wrong(liar), wrong(a), wrong(b)), (1, 0, 0));
    assert_eq!(hub2.stats().wrong, 1);
}

#[tokio::test(start_paused = true)]
async fn with_replicas_two_workers_of_one_group_never_vote_on_the_same_job() {
    let hub = hub(Config {
        replicas: 2,
        ..Config::default()
    });
    // Two threads of one browser, then a worker elsewhere: the ring offers the job to the
    // first thread, then to its sibling, which must be passed over.
    let a = join_as(&hub, 4, None, Some("browser-1")).id;
    let b = join_as(&hub, 4, None, Some("browser-1")).id;
    let c = join(&hub, 4);
    let ids = submit(&hub, 6);
    let (got, answered) = run_voting(&hub, &[a, b, c], |_| "right", ids.len());
    assert_eq!(got.len(), ids.len());
    for id in ids {
        let by = &answered[&id];
        assert_eq!(by.len(), 2, "job {id}: {by:?}");
        assert!(
            by.contains(&c),
            "job {id}: two workers of one group voted: {by:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn with_replicas_a_job_overrun_on_one_thread_skips_its_siblings() {
    let hub = hub(Config {
        replicas: 2,
        lease: Some(Duration::from_secs(1)),
        ..Config::default()
    });
    let a = join_as(&hub, 1, None, Some("browser-1")).id;
    let b = join_as(&hub, 1, None, Some("browser-1")).id;
    let c = join(&hub, 1);
    let ids = submit(&hub, 1);
    assert_eq!(sent(&hub, a), ids);
    // Its lease runs out while the first thread still works on it: the job goes elsewhere,
    // but not to the other thread of the same browser, since the first may still answer.
    tokio::time::advance(Duration::from_secs(2)).await;
    hub.expire_leases();
    assert!(
        sent(&hub, b).is_empty(),
        "the overrun thread's sibling got the job"
    );
    assert_eq!(sent(&hub, c), ids);
}

#[tokio::test(start_paused = true)]
async fn a_group_cut_off_goes_whole_and_may_not_join_again() {
    let hub = hub(Config {
        replicas: 2,
        max_wrong: Some(0),
        ..Config::default()
    });
    // A browser whose two threads lie, and two honest workers.
    let liars = [
        join_as(&hub, 1, None, Some("bad browser")).id,
        join_as(&hub, 1, None, Some("bad browser")).id,
    ];
    let honest = [join(&hub, 1), join(&hub, 1)];
    let ids = submit(&hub, 8);
    let all = [liars[0], liars[1], honest[0], honest[1]];
    let (got, _) = run_voting(
        &hub,
        &all,
        |w| if liars.contains(&w) { "wrong" } else { "right" },
        ids.len(),
    );
    assert!(got
        .iter()
        .all(|o| o.result.as_deref().ok() == Some(&b"right"[..])));
    // The first wrong result cut off both threads of that browser...
    let left: Vec<WorkerId> = hub.snapshot().iter().map(|w| w.id).collect();
    assert_eq!(
        left, honest,
        "both threads of the lying browser were disconnected"
    );
    // ... and the browser may not come back during the run; others may.
    let refused = try_join(&hub, 1, None, Some("bad browser")).err();
    assert_eq!(
        refused.map(|r| r.code),
        Some(distchan_protocol::wire::RefusalCode::CutOff)
    );
    assert!(try_join(&hub, 1, None, Some("another browser")).is_ok());
}
