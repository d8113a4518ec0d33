//! The Go package's README example, ported: a coordinator hands out strings, workers
//! upper-case them.
//!
//! ```text
//! cargo run --example capitalizer                 # coordinator and one worker in one process
//! cargo run --example capitalizer -- server       # only the coordinator, on 127.0.0.1:5678
//! cargo run --example capitalizer -- worker       # only a worker
//! ```

use distchan_coordinator::{Coordinator, Error};

const ADDR: &str = "127.0.0.1:5678";

#[tokio::main]
async fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        Some("server") => server(ADDR).await.map(|_| ()),
        Some("worker") => worker(format!("ws://{ADDR}/ws")).await,
        _ => {
            let (url_tx, url_rx) = tokio::sync::oneshot::channel();
            let server = tokio::spawn(async move { server_with(ADDR, Some(url_tx)).await });
            let url = url_rx.await.expect("the coordinator starts");
            worker(url).await?;
            server.await.expect("server task")?;
            Ok(())
        }
    }
}

async fn server(addr: &str) -> Result<Vec<String>, Error> {
    server_with(addr, None).await
}

async fn server_with(
    addr: &str,
    started: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<Vec<String>, Error> {
    let (coordinator, jobs, mut results) =
        Coordinator::builder().bind::<String, String>(addr).await?;
    println!("coordinator on {}", coordinator.ws_url());
    if let Some(tx) = started {
        let _ = tx.send(coordinator.ws_url());
    }
    coordinator.wait_until_ready().await; // at least one worker available
    tokio::spawn(async move {
        for s in ["hello world", "why hello there", "distributed channels"] {
            jobs.send(s.to_owned()).await?;
        }
        Ok::<_, Error>(()) // dropping `jobs` tells every worker there is no more work
    });
    let mut out = Vec::new();
    while let Some(outcome) = results.recv().await {
        match outcome.result {
            Ok(s) => {
                println!("{s}");
                out.push(s);
            }
            // One job's failure (see `JobError`); the other jobs go on.
            Err(e) => eprintln!("job {} failed: {e}", outcome.id),
        }
    }
    Ok(out)
}

async fn worker(url: String) -> Result<(), Error> {
    let (mut jobs, results, client) =
        distchan_worker::connect::<String, String>(&url, Default::default()).await?;
    while let Some(job) = jobs.recv().await {
        results.send(job.id, Ok(job.value.to_uppercase())).await?;
    }
    drop(results);
    client.done().await
}
