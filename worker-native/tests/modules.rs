//! Task modules on the native worker, against a real coordinator: every kind of misbehaviour
//! becomes that job's clear error while the worker serves the next job; a reactor instance is
//! reused and replaced after a failure; the module is downloaded once per worker and kept on
//! disk; bytes that do not match the announced hash are refused.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use distchan_coordinator::{Coordinator, JobSender, ResultReceiver, Stats, TaskModule};
use distchan_protocol::{
    module::{self, Limits, ModuleSpec},
    wire::{self, ToCoordinator, ToWorker, Welcome},
    Error,
};
use distchan_worker::{serve_task, Options};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
    time::timeout,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    http::HeaderValue,
    Message,
};

const LIMIT: Duration = Duration::from_secs(60);

fn module_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/modules")
        .join(name)
}

/// Small limits, so that the misbehaving jobs end quickly.
fn limits() -> Limits {
    Limits {
        memory_bytes: 4 << 20,
        timeout_ms: 300,
        max_output: 1 << 16,
    }
}

/// Runs `jobs` through the module in `file` on one in-process worker with `threads`
/// threads; returns each job's outcome in send order (as text for errors) and the counters.
async fn run_module(
    file: &str,
    jobs: &[u64],
    threads: usize,
    cache: &Path,
) -> (Vec<Result<serde_json::Value, String>>, Stats) {
    let (coordinator, sender, mut results, worker) =
        start_module(file, limits(), threads, 8, cache).await;
    sender.send_many(jobs.iter().copied()).await.unwrap();
    drop(sender);
    let mut outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), jobs.len(), "one outcome per job");
    outcomes.sort_by_key(|o| o.id);
    timeout(LIMIT, worker)
        .await
        .unwrap()
        .unwrap()
        .expect("the worker ends cleanly at end of work");
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.result.map_err(|e| e.to_string()))
        .collect();
    (outcomes, coordinator.stats())
}

/// A coordinator running the module in `file` under `limits` (no retries), and one
/// in-process worker serving it with `threads` threads and `capacity`.
async fn start_module(
    file: &str,
    limits: Limits,
    threads: usize,
    capacity: u32,
    cache: &Path,
) -> (
    Coordinator,
    JobSender<u64>,
    ResultReceiver<serde_json::Value>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let module = TaskModule::from_file(module_file(file)).unwrap();
    let (coordinator, sender, results) = Coordinator::builder()
        .configure(|c| {
            c.module_limits = limits;
            c.max_retries = 0;
        })
        .module(module)
        .bind::<u64, serde_json::Value>("127.0.0.1:0")
        .await
        .unwrap();
    let options = Options {
        concurrency: threads,
        capacity,
        module_cache: Some(cache.to_owned()),
        ..Options::default()
    };
    let worker = tokio::spawn(serve_task_owned(coordinator.ws_url(), options));
    (coordinator, sender, results, worker)
}

async fn serve_task_owned(url: String, options: Options) -> Result<(), Error> {
    serve_task(&url, options).await
}

fn error_of(outcome: &Result<serde_json::Value, String>) -> &str {
    match outcome {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_module_misbehaving_fails_only_its_own_jobs() {
    let cache = tempfile::tempdir().unwrap();
    // Every bad job is followed by a good one (first digits 0, 7, 8, 9 echo the job).
    let jobs = [1, 0, 2, 7, 3, 8, 4, 9, 5, 70, 6, 80];
    let (outcomes, stats) = run_module("misbehave.wat", &jobs, 2, cache.path()).await;
    for (job, outcome) in jobs.iter().zip(&outcomes) {
        match job {
            1 => assert!(
                error_of(outcome).contains("trapped") && error_of(outcome).contains("unreachable"),
                "{outcome:?}"
            ),
            2 => assert_eq!(
                error_of(outcome),
                "the job's handler failed: the module ran past its time limit of 300 ms and was stopped"
            ),
            3 => assert!(
                error_of(outcome).contains("more memory than its limit of 4 MiB"),
                "{outcome:?}"
            ),
            // No preopened directory: path_open gets EBADF (8) and the module exits with it.
            4 => assert!(
                error_of(outcome).ends_with("the module exited with code 8"),
                "{outcome:?}"
            ),
            5 => assert!(
                error_of(outcome).contains("not one JSON value")
                    && error_of(outcome).contains("not json at all"),
                "{outcome:?}"
            ),
            6 => assert!(
                error_of(outcome).ends_with(
                    "the module exited with code 3; it wrote to stderr: something went wrong"
                ),
                "{outcome:?}"
            ),
            good => assert_eq!(outcome.as_ref().unwrap(), &serde_json::json!(good)),
        }
    }
    assert_eq!(stats.module_downloads, 1, "fetched once, not once per job");
    assert!(
        cache
            .path()
            .join(format!("{}.wasm", sha_of("misbehave.wat")))
            .is_file(),
        "kept in the cache folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_instance_serves_many_jobs_and_is_replaced_after_a_failure() {
    let cache = tempfile::tempdir().unwrap();
    // Job 7 answers how many jobs its instance has served (this one included). One thread,
    // so the jobs run in order on one instance at a time.
    let jobs = [7, 7, 1, 7, 2, 7, 3, 7, 5, 6, 7];
    let (outcomes, _) = run_module("misbehave-reactor.wat", &jobs, 1, cache.path()).await;
    let expected = [
        Ok(1),
        Ok(2),
        Err("trapped"),
        Ok(1),
        Err("time limit of 300 ms"),
        Ok(1),
        Err("more memory than its limit"),
        Ok(1),
        Err("not one JSON value"),
        Err("the module failed: something went wrong"),
        Ok(4),
    ];
    for (i, (outcome, want)) in outcomes.iter().zip(expected).enumerate() {
        match want {
            Ok(served) => assert_eq!(
                outcome.as_ref().ok(),
                Some(&serde_json::json!(served)),
                "job {i}"
            ),
            Err(why) => assert!(error_of(outcome).contains(why), "job {i}: {outcome:?}"),
        }
    }
}

fn sha_of(file: &str) -> String {
    TaskModule::from_file(module_file(file))
        .unwrap()
        .sha256()
        .to_owned()
}

/// Runs one `distchan-worker` process against a coordinator serving `file`, for 4 jobs;
/// returns how many times the module was downloaded.
async fn downloads_by_one_process(file: &str, cache: &Path) -> u64 {
    let module = TaskModule::from_file(module_file(file)).unwrap();
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .configure(|c| c.module_limits = limits())
        .module(module)
        .bind::<u64, serde_json::Value>("127.0.0.1:0")
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distchan-worker"))
        .args(["--url", &coordinator.ws_url(), "--concurrency", "1"])
        .arg("--module-cache")
        .arg(cache)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("distchan-worker starts");
    jobs.send_many([0, 7, 8, 9]).await.unwrap();
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the worker exits 0 at end of work: {status}"
    );
    coordinator.stats().module_downloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_keeps_the_module_on_disk_and_checks_it() {
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(
        downloads_by_one_process("misbehave.wat", cache.path()).await,
        1
    );
    // A new process with the same cache folder downloads nothing.
    assert_eq!(
        downloads_by_one_process("misbehave.wat", cache.path()).await,
        0
    );
    // A cached copy that is not the module (damaged, tampered with) is fetched again.
    let cached = cache
        .path()
        .join(format!("{}.wasm", sha_of("misbehave.wat")));
    std::fs::write(&cached, b"\0asm\x01\0\0\0").unwrap();
    assert_eq!(
        downloads_by_one_process("misbehave.wat", cache.path()).await,
        1
    );
    let repaired = std::fs::read(&cached).unwrap();
    assert_eq!(module::sha256_hex(&repaired), sha_of("misbehave.wat"));
}

/// A coordinator that announces `spec` but serves `served` at its path: says the welcome,
/// then reports the close frame the worker sends.
async fn lying_coordinator(
    spec: ModuleSpec,
    served: Vec<u8>,
) -> (String, mpsc::Receiver<(u16, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_lie(stream, spec.clone(), served.clone(), tx.clone()));
        }
    });
    (format!("ws://{addr}/ws"), rx)
}

/// One connection to the lying coordinator: a module download, or a worker's WebSocket.
// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn serve_lie(
    mut stream: tokio::net::TcpStream,
    spec: ModuleSpec,
    served: Vec<u8>,
    closes: mpsc::Sender<(u16, String)>,
) {
    // Enough of the request line to tell a module download from a WebSocket.
    let mut head = [0u8; 13];
    let mut n = 0;
    while n < head.len() {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n = k,
        }
    }
    if head[..n].starts_with(b"GET /modules/") {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            served.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.write_all(&served).await;
        return;
    }
    let subprotocol = |_: &Request, mut response: Response| {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&wire::subprotocol(wire::PROTOCOL_VERSION)).unwrap(),
        );
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, subprotocol).await else {
        return;
    };
    let Some(Ok(Message::Binary(hello))) = ws.next().await else {
        return;
    };
    assert!(matches!(
        wire::decode_to_coordinator(&hello),
        Ok(ToCoordinator::Hello(_))
    ));
    let welcome = ToWorker::Welcome(Welcome {
        worker_id: 1,
        task: None,
        heartbeat_ms: 0,
        max_frame: 1 << 20,
        module: Some(spec),
        ..Default::default()
    });
    ws.send(Message::Binary(wire::encode_to_worker(&welcome).unwrap()))
        .await
        .unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(Some(frame)) = msg {
            let _ = closes
                .send((frame.code.into(), frame.reason.to_string()))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_announced_module_are_refused() {
    // A module no other test of this process compiles (the process keeps what it compiled,
    // and would not fetch it again).
    let announced = TaskModule::from_bytes(
        "announced.wat",
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    let other = TaskModule::from_file(module_file("misbehave-reactor.wat")).unwrap();
    let spec = ModuleSpec {
        name: "announced.wat".into(),
        sha256: announced.sha256().to_owned(),
        size: other.bytes().len() as u64,
        path: module::module_path(announced.sha256()),
        io: Default::default(),
        limits: limits(),
    };
    let (url, mut closes) = lying_coordinator(spec, other.bytes().to_vec()).await;
    let cache = tempfile::tempdir().unwrap();
    let options = Options {
        module_cache: Some(cache.path().to_owned()),
        ..Options::default()
    };
    let err = timeout(LIMIT, serve_task(&url, options))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Module(module::ModuleError::HashMismatch { expected, .. }) if expected == announced.sha256()),
        "{err:?}"
    );
    let (code, reason) = timeout(LIMIT, closes.recv()).await.unwrap().unwrap();
    assert_eq!(
        code,
        wire::CLOSE_POLICY,
        "the coordinator is told: {reason}"
    );
    assert!(reason.contains("SHA-256"), "{reason}");
    assert_eq!(
        std::fs::read_dir(cache.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing that failed the check is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_module_job_is_stopped_and_the_thread_serves_the_next_job() {
    let cache = tempfile::tempdir().unwrap();
    // Far beyond the test's wait: only the cancellation can end the endless job.
    let limits = Limits {
        timeout_ms: 600_000,
        ..limits()
    };
    let (_coordinator, sender, mut results, worker) =
        start_module("misbehave.wat", limits, 1, 2, cache.path()).await;
    let endless = sender.send(2).await.unwrap(); // loops forever
    let next = sender.send(7).await.unwrap(); // waits behind it on the one thread
    assert!(sender.cancel(endless));
    drop(sender);
    let mut outcomes = timeout(LIMIT, results.collect_all())
        .await
        .expect("the endless job was stopped and the next one ran");
    outcomes.sort_by_key(|o| o.id);
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].id, endless);
    assert!(matches!(
        outcomes[0].result,
        Err(distchan_coordinator::JobError::Cancelled)
    ));
    assert_eq!(outcomes[1].id, next);
    assert_eq!(outcomes[1].result.as_ref().unwrap(), &serde_json::json!(7));
    timeout(LIMIT, worker)
        .await
        .unwrap()
        .unwrap()
        .expect("the worker ends cleanly at end of work");
}
