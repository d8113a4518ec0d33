//! The native worker reads its socket ahead: while frames stream in, they are served from a
//! buffer lent by the process's read pool, which has it back once the connection is over.
//! (A file of its own: the pool is the test process's, and no other test may use it.)

use std::time::Duration;

use distchan_coordinator::{Config, Coordinator};
use distchan_protocol::read_ahead::ReadPool;
use distchan_worker::{serve, Options};
use tokio::time::timeout;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reads_its_frames_through_the_process_read_pool() {
    let pool = ReadPool::process();
    assert_eq!(
        pool.idle(),
        0,
        "no buffer was lent before the worker connected"
    );
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(Config::default())
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let url = coordinator.ws_url();
    let handler = |x: u64| async move { Ok::<_, String>(x * 3) };
    let worker = tokio::spawn(async move { serve(&url, Options::default(), handler).await });
    let n = 1_000u64;
    for i in 0..n {
        jobs.send(i).await.expect("job sent");
    }
    drop(jobs);
    let mut outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job has its outcome in time");
    outcomes.sort_by_key(|o| o.id);
    let answers: Vec<u64> = outcomes
        .iter()
        .map(|o| *o.result.as_ref().expect("the job succeeds"))
        .collect();
    assert_eq!(answers, (0..n).map(|i| i * 3).collect::<Vec<_>>());
    timeout(LIMIT, worker)
        .await
        .expect("the worker ends")
        .unwrap()
        .expect("the worker ends well");
    assert!(
        pool.idle() >= 1,
        "the worker's socket borrowed a read-ahead buffer and gave it back"
    );
    coordinator.shutdown().await;
}
