//! How `serve` runs handlers: jobs start on tasks of their own, at most `concurrency` at a
//! time; a handler proven quick moves onto the connection's task, a slow one never does, so
//! long computations run side by side and never hold up the connection; a panic fails only
//! its own job.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator, JobError, JobOutcome};
use distchan_worker::{serve, serve::CALIBRATION, Options};
use tokio::time::timeout;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// Handlers running at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

fn options(concurrency: usize, capacity: u32) -> Options {
    Options {
        concurrency,
        capacity,
        ..Options::default()
    }
}

/// Sends `0..n` to a coordinator served by `serve(options, handler)` and returns every
/// outcome, with the coordinator (for its counters) once the worker is done.
async fn run<F, Fut>(
    config: Config,
    options: Options,
    n: u64,
    handler: F,
) -> (Vec<JobOutcome<u64>>, Coordinator)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, String>> + Send + 'static,
{
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(config)
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let url = coordinator.ws_url();
    let worker = tokio::spawn(async move { serve(&url, options, handler).await });
    for x in 0..n {
        jobs.send(x).await.unwrap();
    }
    drop(jobs);
    let mut outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job answered in time");
    outcomes.sort_by_key(|o| o.id);
    timeout(LIMIT, worker)
        .await
        .expect("the worker ends")
        .unwrap()
        .expect("the worker ends cleanly at end-of-work");
    (outcomes, coordinator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handlers_reach_the_concurrency_and_never_exceed_it() {
    let gauge = Arc::new(Gauge::default());
    // Three handlers must be running at once for any of them to pass the barrier.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let g = gauge.clone();
    // Fixed windows: the worker's 12 credits from the start, so three jobs can meet.
    let config = Config {
        adaptive_windows: false,
        ..Config::default()
    };
    let (outcomes, _) = run(config, options(3, 12), 30, move |x| {
        let (g, barrier) = (g.clone(), barrier.clone());
        async move {
            g.enter();
            barrier.wait().await;
            g.leave();
            Ok(x + 1)
        }
    })
    .await;
    let got: Vec<u64> = outcomes.into_iter().map(|o| o.result.unwrap()).collect();
    assert_eq!(got, (1..=30).collect::<Vec<_>>());
    assert_eq!(gauge.max(), 3, "at most `concurrency` handlers at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_computations_run_side_by_side_and_never_silence_the_worker() {
    // A worker silent for two heartbeats (400 ms) is dropped and its jobs go elsewhere;
    // each job computes for a whole second without waiting.
    let config = Config {
        heartbeat: Duration::from_millis(200),
        ..Config::default()
    };
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let (outcomes, coordinator) = run(config, options(2, 4), 4, move |x| {
        let g = g.clone();
        async move {
            g.enter();
            std::thread::sleep(Duration::from_secs(1));
            g.leave();
            Ok(x)
        }
    })
    .await;
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    assert_eq!(gauge.max(), 2, "two long jobs computed side by side");
    let stats = coordinator.stats();
    assert_eq!(
        (stats.dispatched, stats.redelivered),
        (4, 0),
        "the worker answered its heartbeats: no job was taken back"
    );
}

/// Runs `n` jobs through a handler that sleeps `slow` on the jobs `is_slow` picks and returns
/// the jobs by input, each with the task that ran it.
async fn run_timed(
    n: u64,
    slow: Duration,
    is_slow: fn(u64) -> bool,
) -> Vec<(u64, tokio::task::Id)> {
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let t = tasks.clone();
    run(Config::default(), options(4, 16), n, move |x| {
        let id = tokio::task::try_id().expect("handlers run on a task");
        t.lock().unwrap().push((x, id));
        if is_slow(x) {
            std::thread::sleep(slow);
        }
        std::future::ready(Ok(x))
    })
    .await;
    let mut seen = std::mem::take(&mut *tasks.lock().unwrap());
    seen.sort_by_key(|&(x, _)| x);
    seen
}

/// The task that ran the most of the jobs `seen` holds within `jobs`, and how many it ran:
/// the connection task, once the handler proved quick.
fn busiest_task(
    seen: &[(u64, tokio::task::Id)],
    jobs: impl std::ops::RangeBounds<u64>,
) -> (tokio::task::Id, usize) {
    let mut per_task = std::collections::HashMap::new();
    for &(_, id) in seen.iter().filter(|&&(x, _)| jobs.contains(&x)) {
        *per_task.entry(id).or_insert(0usize) += 1;
    }
    per_task.into_iter().max_by_key(|&(_, n)| n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_handlers_move_onto_the_connection_task_and_slow_ones_never_do() {
    let seen = run_timed(1000, Duration::ZERO, |_| false).await;
    let first: HashSet<_> = seen[..64].iter().map(|&(_, id)| id).collect();
    assert_eq!(
        first.len(),
        64,
        "the first jobs each start on a task of their own"
    );
    // Then the connection task runs them. (Two slow jobs less than CALIBRATION apart, where
    // the machine happens to stall, send the next CALIBRATION jobs to tasks of their own
    // again, so not every later job need be on it; without this behaviour no task would run
    // more than one.)
    let (connection_task, most) = busiest_task(&seen, 64..);
    assert!(
        most >= CALIBRATION as usize,
        "the connection task ran only {most} jobs"
    );
    assert!(!first.contains(&connection_task));

    let seen = run_timed(100, Duration::from_micros(200), |_| true).await;
    let distinct: HashSet<_> = seen.iter().map(|&(_, id)| id).collect();
    assert_eq!(
        distinct.len(),
        100,
        "a slow handler always gets a task of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_slow_job_leaves_a_quick_handler_on_the_connection_task() {
    // Quick jobs, but for three, far apart, that take four times LONG_HANDLER: the way a
    // busy machine stalls a thread now and then.
    let seen = run_timed(600, 4 * serve::LONG_HANDLER, |x| {
        [150, 300, 450].contains(&x)
    })
    .await;
    let (connection_task, _) = busiest_task(&seen, ..);
    // The job right after a lone slow one: leaving at the first slow job puts every one of
    // them on a task of its own. Here it stays on the connection task, unless the machine
    // stalled one more job within CALIBRATION before that slow one (a debug build among
    // parallel tests on two cores does, often; how many jobs move then is noise, so it is
    // not what is counted), and it cannot have done so before all three.
    let after_slow: Vec<(u64, bool)> = [151, 301, 451]
        .iter()
        .map(|&next| {
            let &(_, id) = seen
                .iter()
                .find(|&&(x, _)| x == next)
                .expect("every job ran");
            (next, id == connection_task)
        })
        .collect();
    assert!(
        after_slow.iter().any(|&(_, stayed)| stayed),
        "every job right after a lone slow one ran off the connection task: {after_slow:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_handler_that_turns_slow_goes_back_to_tasks() {
    // Quick until job 200, then every job takes four times LONG_HANDLER.
    let seen = run_timed(300, 4 * serve::LONG_HANDLER, |x| x >= 200).await;
    let (connection_task, _) = busiest_task(&seen, ..200);
    let stayed: Vec<u64> = seen
        .iter()
        .filter(|&&(x, id)| x >= 202 && id == connection_task)
        .map(|&(x, _)| x)
        .collect();
    // The second slow job is the last the connection task runs.
    assert!(
        stayed.is_empty(),
        "the connection task still ran slow jobs {stayed:?}"
    );
}

#[tokio::test]
async fn a_panicking_handler_fails_only_its_own_job() {
    let (outcomes, _) = run(Config::default(), Options::default(), 6, |x| async move {
        if x == 3 {
            panic!("handler bug");
        }
        Ok(x * 10)
    })
    .await;
    for o in outcomes {
        match o.id.0 {
            3 => assert!(
                matches!(&o.result, Err(JobError::Failed(m)) if m.contains("panicked")),
                "{:?}",
                o.result
            ),
            x => assert_eq!(o.result.unwrap(), x * 10),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_jobs_larger_than_a_read_batch_is_answered_in_full() {
    // A window of 1000: the coordinator sends hundreds of job frames in one write. (2000
    // jobs: all are sent before any result is taken, and the queue and the results waiting
    // for the receiver hold 1024 each.)
    let (outcomes, _) = run(Config::default(), options(4, 1000), 2000, |x| async move {
        Ok(x + 1)
    })
    .await;
    assert_eq!(outcomes.len(), 2000);
    assert!(outcomes
        .iter()
        .all(|o| *o.result.as_ref().unwrap() == o.id.0 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inline_handlers_off_every_job_gets_a_task_of_its_own() {
    let tasks = Arc::new(Mutex::new(HashSet::new()));
    let t = tasks.clone();
    let options = Options {
        inline_handlers: false,
        ..options(4, 16)
    };
    run(Config::default(), options, 300, move |x| {
        t.lock()
            .unwrap()
            .insert(tokio::task::try_id().expect("on a task"));
        std::future::ready(Ok(x))
    })
    .await;
    assert_eq!(tasks.lock().unwrap().len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_around_the_read_past_size_arrive_whole_both_ways() {
    // Around the size from which both ends read a message past the WebSocket, and well
    // beyond it, between small ones: every job and every result arrives whole.
    use bytes::Bytes;
    use distchan_protocol::read_ahead::LARGE_MESSAGE;
    let sizes = [
        10,
        LARGE_MESSAGE - 40,
        LARGE_MESSAGE,
        LARGE_MESSAGE + 7,
        3,
        (1 << 20) + 3,
        3 << 20,
    ];
    let jobs_of = |round: usize| {
        sizes.iter().enumerate().map(move |(i, &len)| -> Bytes {
            (0..len).map(|b| (b * 7 + i * 13 + round) as u8).collect()
        })
    };
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(Config::default())
        .bind::<Bytes, Bytes>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let url = coordinator.ws_url();
    let handler = |job: Bytes| async move {
        let mut back = job.to_vec();
        back.reverse();
        Ok::<_, String>(Bytes::from(back))
    };
    let worker = tokio::spawn(async move { serve(&url, options(2, 4), handler).await });
    let mut sent = Vec::new();
    for round in 0..3 {
        for job in jobs_of(round) {
            sent.push(job.clone());
            jobs.send(job).await.expect("job sent");
        }
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job has its outcome in time");
    assert_eq!(outcomes.len(), sent.len());
    for o in outcomes {
        let mut want = sent[o.id.0 as usize].to_vec();
        want.reverse();
        assert!(
            o.result.expect("the job succeeds") == want,
            "job {} ({} bytes) came back changed",
            o.id,
            want.len()
        );
    }
    timeout(LIMIT, worker)
        .await
        .expect("the worker ends")
        .unwrap()
        .expect("the worker ends well");
    coordinator.shutdown().await;
}
