//! The coordinator plus eight `distchan-worker` processes, three of them killed with SIGKILL
//! while they hold jobs: every job's correct result still arrives exactly once.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator};
use distchan_protocol::tasks::{self, Tile, TilePixels};
use tokio::time::timeout;

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing() {
    let config = Config {
        heartbeat: Duration::from_millis(500),
        task: Some(tasks::MANDELBROT.to_owned()),
        ..Config::default()
    };
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(config)
        .bind::<Tile, TilePixels>("127.0.0.1:0")
        .await
        .unwrap();

    let mut workers = Workers(Vec::new());
    for i in 0..8 {
        let child = Command::new(env!("CARGO_BIN_EXE_distchan-worker"))
            .args([
                "--url",
                &coordinator.ws_url(),
                "--concurrency",
                "1",
                "--capacity",
                "2",
            ])
            .args(["--agent", &format!("worker {i}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("distchan-worker starts");
        workers.0.push(child);
    }
    timeout(Duration::from_secs(30), coordinator.wait_for_workers(8))
        .await
        .expect("all eight connect");

    let tiles = tasks::tiles(800, 800, 16, 20_000);
    let total = tiles.len();
    let sent = tiles.clone();
    tokio::spawn(async move {
        for tile in sent {
            jobs.send(tile).await.unwrap();
        }
    });

    let mut got: HashMap<u64, TilePixels> = HashMap::new();
    let mut killed = false;
    let outcome_limit = Duration::from_secs(120);
    while let Some(outcome) = timeout(outcome_limit, results.recv())
        .await
        .expect("results keep coming")
    {
        let pixels = outcome.result.expect("no job fails");
        assert!(
            got.insert(outcome.id.0, pixels).is_none(),
            "job {} delivered twice",
            outcome.id
        );
        if !killed && got.len() >= total / 10 {
            // Every worker is busy (capacity 2, plenty queued): each holds at least one job.
            for child in &mut workers.0[..3] {
                child.kill().expect("SIGKILL");
            }
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(got.len(), total, "every job delivered");
    for (id, pixels) in &got {
        assert_eq!(
            pixels,
            &tasks::mandelbrot(&tiles[*id as usize]),
            "job {id} has the wrong pixels"
        );
    }
    let stats = coordinator.stats();
    assert!(
        stats.redelivered >= 3,
        "the killed workers' jobs were re-dispatched: {stats:?}"
    );
    assert_eq!(stats.completed as usize, total);
    for child in &mut workers.0[3..] {
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "a surviving worker ends cleanly at end-of-work: {status}"
        );
    }
}
