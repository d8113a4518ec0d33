//! Cancelling a job a native worker runs: the coordinator reports it cancelled once, the
//! worker drops the handler's future, answers the job so its credit comes back, and takes
//! the next job.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator, JobError};
use distchan_worker::{serve, Options};
use tokio::{sync::Notify, time::timeout};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// Notifies when dropped: the handler's future was dropped, not left running.
struct Dropped(Arc<Notify>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_s_handler_is_dropped_and_its_credit_takes_the_next_job() {
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(Config::default())
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, dropped, calls) = (started.clone(), dropped.clone(), calls.clone());
        move |x: u64| {
            let (started, dropped) = (started.clone(), dropped.clone());
            calls.fetch_add(usize::from(x == 0), Ordering::SeqCst);
            async move {
                if x == 0 {
                    let _guard = Dropped(dropped);
                    started.notify_one();
                    std::future::pending::<()>().await; // only a cancellation ends it
                }
                Ok::<_, String>(x * 2)
            }
        }
    };
    // One job at a time: job 1 can only run once job 0's credit comes back.
    let options = Options {
        capacity: 1,
        concurrency: 1,
        ..Options::default()
    };
    let url = coordinator.ws_url();
    let worker = tokio::spawn(async move { serve(&url, options, handler).await });
    let first = jobs.send(0).await.unwrap();
    let second = jobs.send(1).await.unwrap();
    timeout(LIMIT, started.notified())
        .await
        .expect("job 0 started");
    assert!(jobs.cancel(first), "job 0 had no outcome yet");
    assert!(!jobs.cancel(first), "a job is cancelled once");
    timeout(LIMIT, dropped.notified())
        .await
        .expect("the worker dropped the cancelled handler's future");
    drop(jobs);
    let mut outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job has its outcome in time");
    outcomes.sort_by_key(|o| o.id);
    assert_eq!(outcomes.len(), 2, "one outcome per job: {outcomes:?}");
    assert_eq!(outcomes[0].id, first);
    assert!(matches!(outcomes[0].result, Err(JobError::Cancelled)));
    assert_eq!(outcomes[1].id, second);
    assert_eq!(outcomes[1].result.as_ref().ok(), Some(&2));
    timeout(LIMIT, worker)
        .await
        .expect("the worker ends")
        .unwrap()
        .expect("the worker ends well");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "job 0 ran once");
    coordinator.shutdown().await;
}
