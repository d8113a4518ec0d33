//! Workers that come back and workers that leave cleanly: `distchan-worker` processes
//! outlive a coordinator restart and finish the next run; a drained worker finishes or hands
//! back every job it holds, so with no retries allowed no job fails.

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator, JobOutcome, JobSender, ResultReceiver};
use distchan_protocol::tasks;
use distchan_worker::{serve, Options};
use tokio::{
    process::{Child, Command},
    time::timeout,
};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(60);

type Started = (Coordinator, JobSender<String>, ResultReceiver<String>);

/// A capitalize coordinator on `addr`; binding is retried while the port is still held by
/// the coordinator before it.
async fn coordinator_on(addr: SocketAddr) -> Started {
    let config = Config {
        task: Some(tasks::CAPITALIZE.to_owned()),
        heartbeat: Duration::from_millis(500),
        ..Config::default()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match Coordinator::builder()
            .config(config.clone())
            .bind(addr)
            .await
        {
            Ok(started) => return started,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("binding {addr} again: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

fn worker_process(url: &str, i: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distchan-worker"))
        .args(["--url", url, "--concurrency", "1", "--capacity", "4"])
        .args(["--agent", &format!("worker {i}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("distchan-worker starts")
}

fn words(run: usize, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("run {run} word {i}")).collect()
}

/// Sends `words` and returns every result, checking each is the right one, exactly once.
async fn send_and_collect(
    jobs: &JobSender<String>,
    results: &mut ResultReceiver<String>,
    words: &[String],
    want: usize,
) -> HashSet<String> {
    for w in words {
        jobs.send(w.clone()).await.unwrap();
    }
    let mut got = HashSet::new();
    while got.len() < want {
        let outcome: JobOutcome<String> = timeout(LIMIT, results.recv())
            .await
            .expect("results keep coming")
            .expect("the result channel stays open");
        let value = outcome.result.expect("no job fails");
        assert!(words.iter().any(|w| w.to_uppercase() == value), "{value}");
        assert!(got.insert(value.clone()), "{value} delivered twice");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_outlive_a_coordinator_restart_and_finish_the_next_run() {
    let (first, jobs, mut results) = coordinator_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = first.local_addr();
    let url = first.ws_url();
    let mut workers: Vec<Child> = (0..2).map(|i| worker_process(&url, i)).collect();
    timeout(LIMIT, first.wait_for_workers(2))
        .await
        .expect("both connect");

    // The first run is cut short: the coordinator goes away with work left.
    let run1 = words(1, 2_000);
    send_and_collect(&jobs, &mut results, &run1, 100).await;
    drop((jobs, results));
    let report = first.shutdown().await;
    assert!(!report.unfinished.is_empty(), "the first run was cut short");

    // A new coordinator on the same port: the same two processes join it and do its work.
    let (second, jobs, mut results) = coordinator_on(addr).await;
    timeout(LIMIT, second.wait_for_workers(2))
        .await
        .expect("both workers come back");
    for worker in &mut workers {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker process is still the same one"
        );
    }
    let agents: HashSet<String> = second
        .workers()
        .await
        .into_iter()
        .map(|w| w.agent)
        .collect();
    assert_eq!(
        agents,
        HashSet::from(["worker 0".to_owned(), "worker 1".to_owned()])
    );
    let run2 = words(2, 500);
    let got = send_and_collect(&jobs, &mut results, &run2, run2.len()).await;
    assert_eq!(got.len(), run2.len());

    // End of work: both leave, with exit status 0.
    drop(jobs);
    timeout(LIMIT, second.finished()).await.expect("finishes");
    for worker in &mut workers {
        let status = timeout(LIMIT, worker.wait())
            .await
            .expect("the worker exits at end of work")
            .unwrap();
        assert!(status.success(), "{status}");
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_drain_finishes_what_it_holds_and_no_job_fails() {
    for round in 0..20 {
        // No retries: a job lost with its worker would fail.
        let config = Config {
            max_retries: 0,
            ..Config::default()
        };
        let (coordinator, jobs, mut results) = Coordinator::builder()
            .config(config)
            .bind::<u64, u64>("127.0.0.1:0")
            .await
            .unwrap();
        let url = coordinator.ws_url();

        // The first worker is told to leave while it is busy, after 40 answers.
        let drain = distchan_worker::CancellationToken::new();
        let answered = Arc::new(AtomicUsize::new(0));
        let leaving = {
            let (url, drain, answered) = (url.clone(), drain.clone(), answered.clone());
            let options = Options {
                capacity: 16,
                concurrency: 4,
                drain: drain.clone(),
                ..Options::default()
            };
            tokio::spawn(async move {
                serve(&url, options, move |n: u64| {
                    let (drain, answered) = (drain.clone(), answered.clone());
                    async move {
                        tokio::task::yield_now().await;
                        if answered.fetch_add(1, Ordering::SeqCst) + 1 == 40 {
                            drain.cancel();
                        }
                        Ok::<_, String>(n * 2)
                    }
                })
                .await
            })
        };
        timeout(LIMIT, coordinator.wait_for_workers(1))
            .await
            .expect("the first worker joins");
        let total = 400u64;
        for n in 0..total {
            jobs.send(n).await.unwrap();
        }
        drop(jobs);
        timeout(LIMIT, leaving)
            .await
            .expect("the drained worker leaves")
            .unwrap()
            .expect("leaving on request is a clean end");

        // A second worker does the rest.
        let staying = tokio::spawn(async move {
            serve(&url, Options::default(), |n: u64| async move {
                Ok::<_, String>(n * 2)
            })
            .await
        });
        let mut seen = HashSet::new();
        while let Some(outcome) = timeout(LIMIT, results.recv()).await.expect("no hang") {
            let doubled = outcome
                .result
                .unwrap_or_else(|e| panic!("round {round}: job {} failed: {e}", outcome.id));
            assert!(seen.insert(doubled), "round {round}: {doubled} twice");
        }
        assert_eq!(seen, (0..total).map(|n| n * 2).collect::<HashSet<_>>());
        let stats = coordinator.stats();
        assert_eq!(stats.failed, 0, "round {round}");
        assert_eq!(stats.redelivered, 0, "round {round}: a drain uses no retry");
        timeout(LIMIT, staying)
            .await
            .expect("the second worker ends")
            .unwrap()
            .expect("at end of work");
        coordinator.shutdown().await;
    }
}
