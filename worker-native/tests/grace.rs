//! Reconnect grace through a real network failure: a proxy between a native worker and the
//! coordinator drops both connections without a close frame while the worker computes. The
//! worker connects again, resumes its session, and the results it finished while away are
//! accepted: no job is computed twice and each has one outcome.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator};
use distchan_worker::{serve, Options};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
    time::timeout,
};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// A TCP proxy to `target` whose connections can all be cut at once, like a network failure.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let links = links.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Proxy {
            addr,
            links,
            accept,
        }
    }

    /// Drops every connection through the proxy: each side sees its socket end, without a
    /// WebSocket close frame. New connections are forwarded as before.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_within_the_grace_keeps_its_jobs_and_its_results_count() {
    let config = Config {
        reconnect_grace: Duration::from_secs(30),
        heartbeat: Duration::from_millis(500),
        // The worker gets all four jobs at once.
        adaptive_windows: false,
        ..Config::default()
    };
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .config(config)
        .bind::<String, String>("127.0.0.1:0")
        .await
        .expect("coordinator starts");
    let proxy = Proxy::start(coordinator.local_addr()).await;

    // Each job waits for the release; every call is counted.
    let release = Arc::new(Semaphore::new(0));
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = {
        let (release, calls) = (release.clone(), calls.clone());
        move |word: String| {
            *calls.lock().unwrap().entry(word.clone()).or_default() += 1;
            let _ = started_tx.send(());
            let release = release.clone();
            async move {
                drop(release.acquire().await);
                Ok::<_, String>(word.to_uppercase())
            }
        }
    };
    let options = Options {
        concurrency: 4,
        ..Options::default()
    };
    let url = format!("ws://{}/ws", proxy.addr);
    let worker = tokio::spawn(async move { serve(&url, options, handler).await });

    let words = ["alpha", "beta", "gamma", "delta"];
    for word in words {
        jobs.send(word.to_owned()).await.unwrap();
    }
    for _ in words {
        timeout(LIMIT, started.recv())
            .await
            .expect("every job started")
            .unwrap();
    }
    // The network fails while the worker holds all four jobs; they finish while it is away.
    proxy.cut();
    release.add_permits(1);
    drop(jobs);
    let mut outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("every job has its outcome in time");
    outcomes.sort_by_key(|o| o.id);
    let got: Vec<String> = outcomes
        .into_iter()
        .map(|o| o.result.expect("a result"))
        .collect();
    assert_eq!(
        got,
        ["ALPHA", "BETA", "GAMMA", "DELTA"],
        "one outcome per job"
    );
    let calls = calls.lock().unwrap().clone();
    for word in words {
        assert_eq!(
            calls.get(word),
            Some(&1),
            "{word} was computed once: {calls:?}"
        );
    }
    timeout(LIMIT, worker)
        .await
        .expect("the worker ends with the run")
        .unwrap()
        .expect("the worker ends well");
}
