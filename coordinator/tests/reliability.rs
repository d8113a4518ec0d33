//! Nothing lost: re-dispatch of jobs from lost workers, heartbeats and leases (on tokio's
//! paused clock over the in-memory transport, so nothing really waits), retry limits,
//! handler errors, credit, drain and shutdown.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{
    capitalizer, hello, mem_answer, mem_capitalizer, mem_close_of, next_job, next_mem,
    raw_mem_worker, start, start_mem, LIMIT,
};
use distchan_coordinator::{Config, JobError};
use distchan_protocol::{wire::Hello, Error};
use distchan_worker::Options;
use tokio::time::{timeout, Instant};

/// A coordinator over the in-memory transport with leases of `lease` and no heartbeats.
async fn start_leased(
    lease: Duration,
) -> (
    distchan_coordinator::Coordinator,
    distchan_coordinator::memory::MemoryConnector,
    distchan_coordinator::JobSender<String>,
    distchan_coordinator::ResultReceiver<String>,
) {
    start_mem(Config {
        heartbeat: Duration::ZERO,
        lease: Some(lease),
        ..Config::default()
    })
    .await
}

/// Tells the coordinator that this raw worker is leaving (no more jobs for it).
async fn send_drain(ws: &mut common::MemWs) {
    let drain = distchan_protocol::wire::encode_to_coordinator(
        &distchan_protocol::wire::ToCoordinator::Drain,
    )
    .unwrap();
    futures_util::SinkExt::send(
        &mut **ws,
        tokio_tungstenite::tungstenite::Message::Binary(drain),
    )
    .await
    .unwrap();
}

/// Fixed windows: a raw worker gets every job it declared room for at once (these tests
/// hold jobs without answering them).
fn fixed() -> Config {
    Config {
        adaptive_windows: false,
        ..Config::default()
    }
}

fn capacity(n: u32) -> Hello {
    Hello {
        capacity: n,
        ..hello()
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_declared_dead_within_two_heartbeats() {
    let heartbeat = Duration::from_secs(1);
    let config = Config {
        heartbeat,
        ..Config::default()
    };
    let (coordinator, net, jobs, mut results) = start_mem::<String, String>(config).await;
    // A takes the job, then never reads again, so it never answers a ping.
    let (mut a, _) = raw_mem_worker(&net, capacity(1)).await;
    let last_sign_of_life = Instant::now();
    jobs.send("held by a".into()).await.unwrap();
    let job = next_job(&mut a).await;
    let b = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));

    let outcome = results.recv().await.expect("the job is answered by b");
    assert_eq!(outcome.id, job.id);
    assert_eq!(outcome.result.unwrap(), "HELD BY A");
    let waited = last_sign_of_life.elapsed();
    assert!(
        waited >= 2 * heartbeat,
        "declared dead too early: {waited:?}"
    );
    assert!(
        waited < 2 * heartbeat + Duration::from_millis(100),
        "declared dead too late: {waited:?}"
    );
    assert_eq!(coordinator.stats().redelivered, 1);
    // Its connection is over: the stream ends (the close frame sits behind a ping that a's
    // client can no longer answer, so the reason is not observable from here).
    assert!(mem_close_of(&mut a)
        .await
        .is_none_or(|(_, reason)| reason.contains("no sign of life")));

    // b answers pings: a minute later it is still connected.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(coordinator.worker_count(), 1);
    drop(jobs);
    assert!(results.recv().await.is_none());
    assert_eq!(b.await.unwrap(), ["held by a"]);
}

#[tokio::test(start_paused = true)]
async fn an_overrun_lease_redispatches_and_the_late_result_is_dropped() {
    let lease = Duration::from_secs(10);
    let (coordinator, net, jobs, mut results) = start_leased(lease).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(1)).await;
    jobs.send("slow".into()).await.unwrap();
    let job = next_job(&mut a).await;
    let dispatched_at = Instant::now();
    let b = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));

    let first = results.recv().await.unwrap();
    assert!(
        dispatched_at.elapsed() >= lease,
        "re-dispatched only after the lease"
    );
    assert_eq!(first.result.unwrap(), "SLOW");
    // a finally answers, then leaves: its result is a duplicate and must be dropped.
    mem_answer(&mut a, job.id, &"late from a".to_owned()).await;
    drop(a);
    let mut workers = coordinator.watch_workers();
    workers.wait_for(|&n| n == 1).await.unwrap();
    assert_eq!(coordinator.stats().duplicates, 1);
    drop(jobs);
    assert!(
        results.recv().await.is_none(),
        "exactly one outcome for the job"
    );
    assert_eq!(b.await.unwrap(), ["slow"]);
}

#[tokio::test]
async fn a_worker_that_vanishes_mid_job_loses_nothing() {
    let (coordinator, net, jobs, mut results) = start_mem::<String, String>(fixed()).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(3)).await;
    for i in 0..10 {
        jobs.send(format!("job {i}")).await.unwrap();
    }
    drop(jobs);
    for _ in 0..3 {
        next_job(&mut a).await;
    }
    drop(a); // gone without a word, holding three jobs
    let b = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    let by_id: BTreeMap<u64, String> = outcomes
        .into_iter()
        .map(|o| (o.id.0, o.result.unwrap()))
        .collect();
    assert_eq!(by_id.len(), 10, "each job exactly once");
    assert!(by_id.iter().all(|(id, v)| *v == format!("JOB {id}")));
    assert_eq!(coordinator.stats().redelivered, 3);
    assert_eq!(b.await.unwrap().len(), 10);
}

/// Large `Bytes` jobs go out in two parts (their bytes shared, not copied into the frame):
/// a worker that vanishes holding two of them loses nothing, and the next one gets them
/// whole.
#[tokio::test]
async fn large_jobs_sent_in_two_parts_are_redelivered_whole() {
    use bytes::Bytes;
    let (coordinator, net, jobs, mut results) = start_mem::<Bytes, Bytes>(fixed()).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(2)).await;
    let data: Vec<Bytes> = (0..4u8)
        .map(|i| (0..(1 << 20) + i as usize).map(|b| (b as u8) ^ i).collect())
        .collect();
    for job in &data {
        jobs.send(job.clone()).await.unwrap();
    }
    drop(jobs);
    for i in 0..2 {
        let job = next_job(&mut a).await;
        let got: Bytes = distchan_protocol::payload::from_msgpack(&job.payload).unwrap();
        assert!(got == data[job.id.0 as usize], "job {i} arrived whole");
    }
    drop(a); // gone without a word, holding two jobs
    let b = tokio::spawn(async move {
        let io = net.connect().unwrap();
        let (mut jobs, results, client) = distchan_worker::connect_io::<Bytes, Bytes, _>(
            "ws://memory/ws",
            io,
            Options::default(),
        )
        .await
        .expect("worker connects");
        while let Some(job) = jobs.recv().await {
            let mut back = job.value.to_vec();
            back.reverse();
            results.send(job.id, Ok(back.into())).await.unwrap();
        }
        drop(results);
        client.done().await.expect("worker ends cleanly");
    });
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 4, "each job exactly once");
    for o in outcomes {
        let mut want = data[o.id.0 as usize].to_vec();
        want.reverse();
        assert!(o.result.unwrap() == want, "job {} came back whole", o.id);
    }
    assert_eq!(coordinator.stats().redelivered, 2);
    b.await.unwrap();
}

/// A worker holding batches of jobs answers part of them (in one batch of results) and
/// vanishes: the answered jobs count once, every other job of its batches goes to the next
/// worker, and each job is reported exactly once.
#[tokio::test]
async fn a_worker_lost_mid_batch_loses_nothing_and_doubles_nothing() {
    use distchan_protocol::wire::{self, JobResult, ToCoordinator, ToWorker};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (coordinator, net, jobs, mut results) = start_mem::<u64, u64>(fixed()).await;
    jobs.send_many(0..200u64).await.unwrap();
    drop(jobs);
    let (mut a, _) = raw_mem_worker(&net, capacity(64)).await;
    // Read the frames themselves: the 64 jobs a holds come in fewer frames than jobs.
    let (mut held, mut frames) = (Vec::new(), 0);
    while held.len() < 64 {
        let Some(Ok(Message::Binary(frame))) = a.next().await else {
            panic!("a frame of jobs expected")
        };
        frames += 1;
        match wire::decode_to_worker(&frame).unwrap() {
            ToWorker::Jobs(batch) => held.extend(batch),
            ToWorker::Job(job) => held.push(job),
            other => panic!("a job expected, got {other:?}"),
        }
    }
    assert!(frames < 64, "the jobs came in batches ({frames} frames)");
    // Half answered in one batch of results, then gone without a word.
    let answered: Vec<JobResult> = held[..32]
        .iter()
        .map(|job| {
            let v: u64 = distchan_protocol::payload::from_msgpack(&job.payload).unwrap();
            JobResult {
                id: job.id,
                outcome: Ok(distchan_protocol::payload::to_msgpack(&(v + 1000)).unwrap()),
            }
        })
        .collect();
    let frame = wire::encode_to_coordinator(&ToCoordinator::Results(answered)).unwrap();
    a.send(Message::Binary(frame)).await.unwrap();
    let mut outcomes = Vec::new();
    while outcomes.len() < 32 {
        outcomes.push(timeout(LIMIT, results.recv()).await.unwrap().unwrap());
    }
    drop(a);
    let b = tokio::spawn(mem_capitalizer_u64(net.clone()));
    outcomes.extend(timeout(LIMIT, results.collect_all()).await.unwrap());
    let by_id: BTreeMap<u64, u64> = outcomes
        .iter()
        .map(|o| (o.id.0, *o.result.as_ref().unwrap()))
        .collect();
    assert_eq!(outcomes.len(), 200, "no job reported twice");
    assert_eq!(by_id.len(), 200, "every job reported");
    let by_a: std::collections::BTreeSet<u64> = held[..32].iter().map(|j| j.id.0).collect();
    for (id, v) in &by_id {
        let want = if by_a.contains(id) { id + 1000 } else { id * 2 };
        assert_eq!(*v, want, "job {id}");
    }
    // The 32 unanswered, and whatever a's freed credit took meanwhile (up to 32 more).
    let redelivered = coordinator.stats().redelivered;
    assert!(
        (32..=64).contains(&redelivered),
        "the unanswered jobs moved on: {redelivered}"
    );
    assert_eq!(b.await.unwrap(), 168);
}

/// A library worker over the in-memory transport that doubles numbers until end-of-work;
/// returns how many it did.
async fn mem_capitalizer_u64(net: distchan_coordinator::memory::MemoryConnector) -> usize {
    let io = net.connect().unwrap();
    let (mut jobs, results, client) =
        distchan_worker::connect_io::<u64, u64, _>("ws://memory/ws", io, Options::default())
            .await
            .expect("worker connects");
    let mut done = 0;
    while let Some(job) = jobs.recv().await {
        results.send(job.id, Ok(job.value * 2)).await.unwrap();
        done += 1;
    }
    drop(results);
    client.done().await.expect("worker ends cleanly");
    done
}

#[tokio::test]
async fn a_job_lost_too_often_is_reported_as_failed() {
    let config = Config {
        max_retries: 1,
        ..Config::default()
    };
    let (coordinator, net, jobs, mut results) = start_mem::<String, String>(config).await;
    jobs.send("cursed".into()).await.unwrap();
    drop(jobs);
    for _ in 0..2 {
        let (mut ws, _) = raw_mem_worker(&net, capacity(1)).await;
        next_job(&mut ws).await;
        drop(ws);
    }
    let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert!(
        matches!(outcome.result, Err(JobError::WorkerLost { attempts: 2 })),
        "{:?}",
        outcome.result
    );
    assert!(results.recv().await.is_none());
    assert_eq!(coordinator.stats().failed, 1);
}

async fn picky_worker(url: String) {
    distchan_worker::serve(&url, Options::default(), |s: String| async move {
        if s == "bad" {
            Err(format!("cannot handle {s:?}"))
        } else {
            Ok(s.to_uppercase())
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_handler_error_is_reported_for_that_job_and_not_retried() {
    let (coordinator, jobs, mut results) = start::<String, String>(Config::default()).await;
    let worker = tokio::spawn(picky_worker(coordinator.ws_url()));
    for s in ["good", "bad", "fine"] {
        jobs.send(s.into()).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id.0, 1);
    assert!(matches!(&failed[0].result, Err(JobError::Failed(m)) if m.contains("cannot handle")));
    assert_eq!(coordinator.stats().dispatched, 3, "no retry by default");
    worker.await.unwrap();
}

#[tokio::test]
async fn handler_errors_are_retried_when_configured() {
    let config = Config {
        handler_retries: 2,
        ..Config::default()
    };
    let (coordinator, jobs, mut results) = start::<String, String>(config).await;
    let worker = tokio::spawn(picky_worker(coordinator.ws_url()));
    jobs.send("bad".into()).await.unwrap();
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert!(
        matches!(&outcomes[0].result, Err(JobError::Failed(m)) if m.contains("cannot handle")),
        "{:?}",
        outcomes[0].result
    );
    assert_eq!(
        coordinator.stats().dispatched,
        3,
        "first attempt plus two retries"
    );
    worker.await.unwrap();
}

#[tokio::test]
async fn a_slow_worker_never_delays_jobs_others_could_take() {
    let (_coordinator, net, jobs, mut results) =
        start_mem::<String, String>(Config::default()).await;
    let (mut slow, _) = raw_mem_worker(&net, capacity(1)).await;
    jobs.send("for the slow one".into()).await.unwrap();
    let held = next_job(&mut slow).await;
    let fast = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));
    for i in 0..20 {
        jobs.send(format!("quick {i}")).await.unwrap();
    }
    drop(jobs);
    // All twenty complete while the slow worker still holds its one job.
    for _ in 0..20 {
        let o = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
        assert_ne!(o.id, held.id);
    }
    mem_answer(&mut slow, held.id, &"SLOW".to_owned()).await;
    let last = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(
        (last.id, last.result.unwrap()),
        (held.id, "SLOW".to_owned())
    );
    drop(slow);
    assert_eq!(fast.await.unwrap().len(), 20);
}

#[tokio::test]
async fn credit_caps_the_jobs_a_worker_holds() {
    let (coordinator, net, jobs, _results) = start_mem::<String, String>(fixed()).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(3)).await;
    for i in 0..10 {
        jobs.send(format!("{i}")).await.unwrap();
    }
    for _ in 0..3 {
        next_job(&mut a).await;
    }
    // The other seven wait; the counters say so once the scheduler has taken them in.
    let stats = coordinator.stats();
    assert_eq!(stats.dispatched, 3);
    assert_eq!(stats.in_flight, 3);
}

#[tokio::test]
async fn a_draining_worker_finishes_its_jobs_and_takes_no_more() {
    let (coordinator, net, jobs, mut results) =
        start_mem::<String, String>(Config::default()).await;
    let options = Options::default().capacity(2);
    let drain = options.drain.clone();
    let io = net.connect().unwrap();
    let (mut a_jobs, a_results, a_client) =
        distchan_worker::connect_io::<String, String, _>("ws://memory/ws", io, options)
            .await
            .unwrap();
    for i in 0..6 {
        jobs.send(format!("w{i}")).await.unwrap();
    }
    drop(jobs);
    let first = a_jobs.recv().await.unwrap();
    let second = a_jobs.recv().await.unwrap();
    drain.cancel();
    a_results
        .send(first.id, Ok(first.value.to_uppercase()))
        .await
        .unwrap();
    a_results
        .send(second.id, Ok(second.value.to_uppercase()))
        .await
        .unwrap();
    timeout(LIMIT, a_client.done())
        .await
        .unwrap()
        .expect("a leaves cleanly");
    let b = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 6);
    assert_eq!(
        b.await.unwrap().len(),
        4,
        "b took exactly the jobs a did not"
    );
    assert_eq!(coordinator.stats().redelivered, 0);
}

#[tokio::test]
async fn shutdown_reports_the_unfinished_jobs() {
    let (coordinator, jobs, mut results) = start::<String, String>(Config::default()).await;
    for i in 0..5 {
        jobs.send(format!("{i}")).await.unwrap();
    }
    let report = coordinator.shutdown().await;
    assert_eq!(
        report.unfinished.iter().map(|id| id.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(
        timeout(LIMIT, results.recv()).await.unwrap().is_none(),
        "the result receiver ends"
    );
    assert!(matches!(jobs.send("late".into()).await, Err(Error::Closed)));
}

#[tokio::test]
async fn shutdown_tells_connected_workers() {
    let (coordinator, _jobs, _results) = start::<String, String>(Config::default()).await;
    let (_jobs_a, _results_a, client) =
        distchan_worker::connect::<String, String>(&coordinator.ws_url(), Options::default())
            .await
            .unwrap();
    let report = coordinator.shutdown().await;
    assert_eq!(report.workers, 1);
    let err = timeout(LIMIT, client.done()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
    let _ = capitalizer; // shared helper, used by other test files
}

#[tokio::test(start_paused = true)]
async fn an_overrun_job_is_never_sent_twice_to_the_worker_that_holds_it() {
    let lease = Duration::from_secs(5);
    let (coordinator, net, jobs, mut results) = start_leased(lease).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(2)).await;
    jobs.send("slow".into()).await.unwrap();
    let slow = next_job(&mut a).await;
    tokio::time::sleep(lease * 2).await; // the lease runs out; a is the only worker
    jobs.send("next".into()).await.unwrap();
    let next = next_job(&mut a).await;
    assert_ne!(
        next.id, slow.id,
        "a still holds the overrun job: it gets the next one instead"
    );
    mem_answer(&mut a, slow.id, &"SLOW".to_owned()).await;
    mem_answer(&mut a, next.id, &"NEXT".to_owned()).await;
    drop(jobs);
    let mut got: Vec<String> = Vec::new();
    while let Some(o) = timeout(LIMIT, results.recv()).await.unwrap() {
        got.push(o.result.unwrap());
    }
    got.sort();
    assert_eq!(got, ["NEXT", "SLOW"]);
    assert_eq!(coordinator.stats().dispatched, 2);
}

#[tokio::test(start_paused = true)]
async fn an_overrun_worker_may_still_answer_first_and_the_other_gets_its_credit_back() {
    let lease = Duration::from_secs(10);
    let (coordinator, net, jobs, mut results) = start_leased(lease).await;
    let (mut a, a_id) = raw_mem_worker(&net, capacity(1)).await;
    jobs.send("slow".into()).await.unwrap();
    let job = next_job(&mut a).await;
    let (mut b, b_id) = raw_mem_worker(&net, capacity(1)).await;
    let again = next_job(&mut b).await; // after the lease runs out
    assert_eq!(again.id, job.id);

    // a answers first: its answer wins; b's, later, is a duplicate.
    mem_answer(&mut a, job.id, &"from a".to_owned()).await;
    let first = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(
        (first.worker, first.result.unwrap()),
        (Some(a_id), "from a".into())
    );
    // b is told to stop the job a answered; its answer, sent all the same, is a duplicate.
    assert!(matches!(
        next_mem(&mut b).await,
        Some(distchan_protocol::wire::ToWorker::Cancel(id)) if id == job.id
    ));
    mem_answer(&mut b, job.id, &"from b".to_owned()).await;

    // With a gone, a new job can only go to b: b must have its credit back.
    drop(a);
    coordinator
        .watch_workers()
        .wait_for(|&n| n == 1)
        .await
        .unwrap();
    jobs.send("next".into()).await.unwrap();
    let next = next_job(&mut b).await;
    mem_answer(&mut b, next.id, &"NEXT".to_owned()).await;
    let second = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(
        (second.worker, second.result.unwrap()),
        (Some(b_id), "NEXT".into())
    );
    drop(jobs);
    assert!(timeout(LIMIT, results.recv()).await.unwrap().is_none());
    let stats = coordinator.stats();
    assert_eq!((stats.duplicates, stats.completed), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn an_answer_for_a_job_waiting_again_counts_and_the_work_still_ends() {
    let lease = Duration::from_secs(5);
    let (coordinator, net, jobs, mut results) = start_leased(lease).await;
    let (mut a, a_id) = raw_mem_worker(&net, capacity(1)).await;
    jobs.send("slow".into()).await.unwrap();
    let job = next_job(&mut a).await;
    // The lease runs out and the job waits again; a, the only worker, still holds it.
    tokio::time::sleep(lease * 2).await;
    // a drains (so its answer frees no credit to dispatch with), then answers after all.
    send_drain(&mut a).await;
    mem_answer(&mut a, job.id, &"SLOW".to_owned()).await;
    let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(
        (outcome.worker, outcome.result.unwrap()),
        (Some(a_id), "SLOW".into())
    );
    drop(jobs);
    assert!(
        timeout(LIMIT, results.recv()).await.unwrap().is_none(),
        "the work ends: nothing is left to do"
    );
    assert_eq!(coordinator.stats().dispatched, 1);
}

#[tokio::test]
async fn a_burst_of_results_larger_than_a_read_batch_loses_none() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (_coordinator, jobs, mut results) = start::<u64, u64>(fixed()).await;
    let url = _coordinator.ws_url();
    let (mut ws, _) = common::raw_worker(&url, capacity(1000)).await;
    jobs.send_many(0..1000u64).await.unwrap();
    drop(jobs);
    let mut held = Vec::new();
    while held.len() < 1000 {
        match common::next_msg(&mut ws).await {
            Some(distchan_protocol::wire::ToWorker::Job(job)) => held.push(job),
            other => panic!("expected a job, got {other:?}"),
        }
    }
    // Every answer in one write: the coordinator reads them many at a time.
    for job in &held {
        let value: u64 = distchan_protocol::payload::from_msgpack(&job.payload).unwrap();
        let frame = distchan_protocol::wire::encode_to_coordinator(
            &distchan_protocol::wire::ToCoordinator::Result(distchan_protocol::wire::JobResult {
                id: job.id,
                outcome: Ok(distchan_protocol::payload::to_msgpack(&(value * 2)).unwrap()),
            }),
        )
        .unwrap();
        ws.feed(Message::Binary(frame)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every result is read");
    assert_eq!(outcomes.len(), 1000);
    for o in outcomes {
        assert_eq!(o.result.unwrap(), o.id.0 * 2);
    }
}

#[tokio::test(start_paused = true)]
async fn the_gauges_count_only_what_really_waits_and_runs() {
    let lease = Duration::from_secs(5);
    let (coordinator, net, jobs, mut results) = start_leased(lease).await;
    let (mut a, _) = raw_mem_worker(&net, capacity(2)).await;
    jobs.send("x".into()).await.unwrap();
    let x = next_job(&mut a).await;
    tokio::time::sleep(lease * 2).await; // x waits again; a still holds it
    jobs.send("y".into()).await.unwrap();
    let y = next_job(&mut a).await; // a had room for one more
                                    // a drains (its answers free no credit), then answers x after all.
    send_drain(&mut a).await;
    mem_answer(&mut a, x.id, &"X".to_owned()).await;
    let first = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(first.id, x.id);
    let stats = coordinator.stats();
    assert_eq!(
        (stats.in_flight, stats.queued),
        (1, 0),
        "y runs; nothing waits (x was answered while it waited)"
    );
    mem_answer(&mut a, y.id, &"Y".to_owned()).await;
    drop(jobs);
    let second = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(second.id, y.id);
    assert!(timeout(LIMIT, results.recv()).await.unwrap().is_none());
    let stats = coordinator.stats();
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
}
