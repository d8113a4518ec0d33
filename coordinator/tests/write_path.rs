//! The way out to a worker: a job sent while no other job is out (one job at a time) is
//! written by the sender, before `send` returns; other jobs go through the connection's
//! task.
//!
//! These tests run on a single-threaded runtime over the in-memory transport, so the
//! connection's task cannot run between a `try_send` and a read polled once right after
//! it: a job found there was written by the sender itself.

mod common;

use common::{hello, mem_answer, next_job, next_mem, raw_mem_worker, start_mem, LIMIT};
use distchan_coordinator::Config;
use futures_util::FutureExt;
use tokio::time::timeout;

#[tokio::test]
async fn a_job_sent_while_no_other_is_out_is_written_before_send_returns() {
    let (_coordinator, net, jobs, mut results) =
        start_mem::<String, String>(Config::default()).await;
    let (mut ws, _) = raw_mem_worker(&net, hello()).await;

    let first = jobs.try_send("idle".to_owned()).unwrap();
    let job = next_job(&mut ws)
        .now_or_never()
        .expect("the only job out was written by the sender");
    assert_eq!(job.id, first);

    // One job is out now: the next one is left to the connection's task.
    let second = jobs.try_send("busy".to_owned()).unwrap();
    assert!(
        next_mem(&mut ws).now_or_never().is_none(),
        "a job sent while another is out goes through the connection's task"
    );
    let job = timeout(LIMIT, next_job(&mut ws)).await.unwrap();
    assert_eq!(job.id, second);

    // Both count as sent: their results come back.
    mem_answer(&mut ws, first, &"IDLE").await;
    mem_answer(&mut ws, second, &"BUSY").await;
    for (id, value) in [(first, "IDLE"), (second, "BUSY")] {
        let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
        assert_eq!(outcome.id, id);
        assert_eq!(outcome.result.unwrap(), value);
    }
}

#[tokio::test]
async fn a_large_job_is_left_to_the_task_and_arrives_whole() {
    let (_coordinator, net, jobs, mut results) =
        start_mem::<String, String>(Config::default()).await;
    let (mut ws, _) = raw_mem_worker(&net, hello()).await;

    // A large job is written by the connection's task, even alone: its transfer dwarfs the
    // hand-over. This one is more than the in-memory pipe holds (256 KiB).
    let large = "distchan ".repeat(64 * 1024);
    let id = jobs.try_send(large.clone()).unwrap();
    assert!(
        next_mem(&mut ws).now_or_never().is_none(),
        "a large job is not written by its sender"
    );
    let job = timeout(LIMIT, next_job(&mut ws)).await.unwrap();
    assert_eq!(job.id, id);
    let got: String = distchan_protocol::payload::from_msgpack(&job.payload).unwrap();
    assert_eq!(got, large);

    // With nothing out again, the next job is written by the sender, whole too.
    mem_answer(&mut ws, id, &"done").await;
    let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(outcome.result.unwrap(), "done");
    let next = jobs.try_send("after".to_owned()).unwrap();
    let job = next_job(&mut ws)
        .now_or_never()
        .expect("no other job is out");
    assert_eq!(job.id, next);
}
