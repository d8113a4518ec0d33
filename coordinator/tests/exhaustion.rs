//! No socket exhaustion: a flood of silent connections and half-sent request heads against
//! a coordinator with a short header timeout and a small cap on pending connections. The
//! coordinator holds at most the cap of them at once, closes each (at once beyond the cap,
//! after the header timeout otherwise), counts the refused ones, keeps serving the worker
//! already connected, lets a new worker join afterwards, and holds no file descriptor of
//! theirs once they are gone.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{capitalizer, start, LIMIT};
use distchan_coordinator::{Config, Coordinator, JobSender, ResultReceiver};
use distchan_worker::Options;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{timeout, Instant},
};

const SILENT: usize = 2000;
const HALF_SENT: usize = 300;
const CAP: usize = 64;
/// File descriptors that may come and go besides the sockets counted (runtime, logs).
const SLACK: usize = 16;

/// Raises this process's soft limit on open files to its hard limit.
fn raise_open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur as usize
}

/// Open file descriptors of this process (test and coordinator alike).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls `condition` until it holds, failing the test after [`LIMIT`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` words and checks that each comes back upper-cased.
async fn round(
    jobs: &JobSender<String>,
    results: &mut ResultReceiver<String>,
    n: usize,
    tag: &str,
) {
    let words: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    jobs.send_many(words.iter().cloned()).await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < n {
        let outcome = timeout(LIMIT, results.recv())
            .await
            .unwrap_or_else(|_| panic!("no result in time during {tag}"))
            .expect("the result channel stays open");
        answers.push(outcome.result.expect("a result"));
    }
    answers.sort();
    let mut expected: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    expected.sort();
    assert_eq!(answers, expected, "{tag}");
}

fn pending(coordinator: &Coordinator) -> u64 {
    coordinator.stats().connections_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_neither_stops_workers_nor_leaks_sockets() {
    let limit = raise_open_file_limit();
    assert!(
        limit > SILENT + HALF_SENT + 2 * CAP + 256,
        "the open-file limit ({limit}) is too low for this test"
    );
    let (coordinator, jobs, mut results) = start::<String, String>(Config {
        header_read_timeout: Duration::from_millis(300),
        max_pending_connections: CAP,
        ..Config::default()
    })
    .await;
    let url = coordinator.ws_url();
    let addr = coordinator.local_addr();
    let one = Options {
        concurrency: 1,
        ..Options::default()
    };
    let first = tokio::spawn(capitalizer(url.clone(), one.clone()));
    timeout(LIMIT, coordinator.wait_for_workers(1))
        .await
        .unwrap();
    round(&jobs, &mut results, 10, "before").await;
    // A worker is no longer pending once its hello is accepted.
    until("the worker to stop counting as pending", || {
        pending(&coordinator) == 0
    })
    .await;
    let baseline = open_fds();

    let mut flood = Vec::with_capacity(SILENT + HALF_SENT);
    for _ in 0..SILENT {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..HALF_SENT {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // Refused connections may already be closed: a failed write is fine.
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
            .await;
        flood.push(tcp);
    }
    // The coordinator's ends of the flood: never more than the cap.
    let during = open_fds();
    assert!(
        during <= baseline + flood.len() + CAP + SLACK,
        "{during} open files with {} flood sockets over a baseline of {baseline}",
        flood.len()
    );
    assert!(pending(&coordinator) <= CAP as u64);
    // The worker already connected keeps working meanwhile.
    round(&jobs, &mut results, 50, "during").await;

    // The coordinator closes every one of them: beyond the cap at once, the others after
    // the header timeout.
    let readers = flood.into_iter().map(|mut tcp| {
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match timeout(LIMIT, tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return tcp,
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a flood connection was never closed by the coordinator"),
                }
            }
        })
    });
    let closed = futures_util::future::join_all(readers).await;
    let closed: Vec<TcpStream> = closed.into_iter().map(Result::unwrap).collect();
    assert_eq!(closed.len(), SILENT + HALF_SENT);
    let refused = coordinator.stats().connections_refused;
    assert!(refused > 0, "the cap of {CAP} was never reached");
    assert!(
        coordinator
            .metrics()
            .contains(&format!("distchan_connections_refused_total {refused}")),
        "{}",
        coordinator.metrics()
    );
    until("the flood to stop counting as pending", || {
        pending(&coordinator) == 0
    })
    .await;

    // A new worker joins and gets work.
    let second = tokio::spawn(capitalizer(url, one));
    timeout(LIMIT, coordinator.wait_for_workers(2))
        .await
        .unwrap();
    round(&jobs, &mut results, 50, "after").await;

    // The clients gone, so are their sockets on both sides.
    drop(closed);
    until("the open files to return to their baseline", || {
        open_fds() <= baseline + 4
    })
    .await;

    drop(jobs);
    let first_seen = timeout(LIMIT, first).await.unwrap().unwrap();
    let second_seen = timeout(LIMIT, second).await.unwrap().unwrap();
    assert!(first_seen.iter().any(|w| w.starts_with("during-")));
    assert!(
        second_seen.iter().all(|w| w.starts_with("after-")) && !second_seen.is_empty(),
        "{second_seen:?}"
    );
}
