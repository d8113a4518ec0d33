//! The Go package's adder example, ported: pairs of numbers go out, sums come back, and
//! several workers share the work round-robin.
//!
//! ```text
//! cargo run --example adder                 # coordinator and three workers in one process
//! cargo run --example adder -- server       # only the coordinator, on 127.0.0.1:5679
//! cargo run --example adder -- worker       # only a worker
//! ```

use distchan_coordinator::{Coordinator, Error};
use distchan_worker::Options;

const ADDR: &str = "127.0.0.1:5679";

#[tokio::main]
async fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        Some("server") => {
            let (coordinator, jobs, results) =
                Coordinator::builder().bind::<(i64, i64), i64>(ADDR).await?;
            println!("coordinator on {}", coordinator.ws_url());
            run(jobs, results).await
        }
        Some("worker") => worker(format!("ws://{ADDR}/ws")).await,
        _ => {
            let (coordinator, jobs, results) = Coordinator::builder()
                .bind::<(i64, i64), i64>("127.0.0.1:0")
                .await?;
            let workers: Vec<_> = (0..3)
                .map(|_| tokio::spawn(worker(coordinator.ws_url())))
                .collect();
            run(jobs, results).await?;
            for w in workers {
                w.await.expect("worker task")?;
            }
            Ok(())
        }
    }
}

async fn run(
    jobs: distchan_coordinator::JobSender<(i64, i64)>,
    mut results: distchan_coordinator::ResultReceiver<i64>,
) -> Result<(), Error> {
    tokio::spawn(async move {
        for i in 0..10 {
            jobs.send((i, i * 10)).await?;
        }
        Ok::<_, Error>(())
    });
    let mut total = 0;
    while let Some(outcome) = results.recv().await {
        match outcome.result {
            Ok(sum) => {
                println!("job {}: {sum}", outcome.id);
                total += sum;
            }
            // One job's failure (see `JobError`); the other jobs go on.
            Err(e) => eprintln!("job {} failed: {e}", outcome.id),
        }
    }
    println!("total: {total}");
    Ok(())
}

/// A worker using `serve`: the handler runs for every job, several at a time.
async fn worker(url: String) -> Result<(), Error> {
    distchan_worker::serve(&url, Options::default(), |(a, b): (i64, i64)| async move {
        Ok::<_, String>(a + b)
    })
    .await
}
