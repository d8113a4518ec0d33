//! Replication against a worker that lies on purpose: three native workers over real
//! WebSockets, one of which returns wrong results. With two replicas every outcome is the
//! honest one, each job is delivered once, and the liar is counted and cut off.

use std::time::Duration;

use distchan_coordinator::{Config, Coordinator};
use distchan_worker::{serve, Options};
use tokio::time::timeout;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_outvote_a_lying_worker_and_cut_it_off() {
    let config = Config {
        replicas: 2,
        max_wrong: Some(2),
        ..Config::default()
    };
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(config)
        .bind::<String, String>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let url = format!("ws://{}/ws", coordinator.local_addr());
    let options = Options {
        concurrency: 2,
        ..Options::default()
    };
    let honest = |word: String| async move { Ok::<_, String>(word.to_uppercase()) };
    let lying =
        |word: String| async move { Ok::<_, String>(word.chars().rev().collect::<String>()) };
    let liar = tokio::spawn({
        let (url, options) = (url.clone(), options.clone());
        async move { serve(&url, options, lying).await }
    });
    let a = tokio::spawn({
        let (url, options) = (url.clone(), options.clone());
        async move { serve(&url, options, honest).await }
    });
    let b = tokio::spawn(async move { serve(&url, options, honest).await });

    let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
    let sender = tokio::spawn(async move {
        for word in words {
            jobs.send(word).await.unwrap();
        }
    });
    let outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job has its outcome in time");
    sender.await.unwrap();

    assert_eq!(outcomes.len(), 200, "one outcome per job");
    for outcome in &outcomes {
        let word = format!("word{}", outcome.id.0);
        assert_eq!(
            outcome.result.as_deref().ok(),
            Some(word.to_uppercase().as_str()),
            "job {}: the honest result wins",
            outcome.id
        );
    }
    let stats = coordinator.stats();
    assert!(
        stats.wrong >= 3,
        "the liar's lost results are counted: {stats:?}"
    );
    // The liar was cut off (and does not come back): its run ends with the coordinator's
    // reason; the honest workers run to the end of work.
    let cut = timeout(LIMIT, liar)
        .await
        .expect("the liar's run ends")
        .unwrap()
        .expect_err("the liar is cut off");
    assert!(cut.to_string().contains("disagreed"), "{cut}");
    coordinator.shutdown().await;
    for honest in [a, b] {
        timeout(LIMIT, honest)
            .await
            .unwrap()
            .unwrap()
            .expect("an honest worker ends cleanly");
    }
}
