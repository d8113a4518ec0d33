//! Bad input at the edges: each misbehaving peer is refused or disconnected with its reason,
//! and a well-behaved worker keeps getting jobs meanwhile.

mod common;

use std::time::Duration;

use common::{capitalizer, close_of, hello, next_msg, open, raw_worker, send_hello, start, LIMIT};
use distchan_coordinator::{Config, JobError, ResultReceiver};
use distchan_protocol::{
    wire::{self, Hello, RefusalCode, ToWorker, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG},
    Error,
};
use distchan_worker::Options;
use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Sends `n` words, starts a good worker and checks that all `n` results arrive.
async fn good_worker_still_served(
    coordinator: &distchan_coordinator::Coordinator,
    jobs: distchan_coordinator::JobSender<String>,
    mut results: ResultReceiver<String>,
    n: usize,
) {
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    for i in 0..n {
        jobs.send(format!("job {i}")).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), n);
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    assert_eq!(worker.await.unwrap().len(), n);
}

fn expect_refusal(msg: Option<ToWorker>, code: RefusalCode) -> String {
    match msg {
        Some(ToWorker::Refused(r)) => {
            assert_eq!(r.code, code, "{r}");
            r.reason
        }
        other => panic!("expected a {code} refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_with_a_reason() {
    let config = Config {
        token: Some("open sesame".into()),
        ..Config::default()
    };
    let (coordinator, jobs, results) = start::<String, String>(config).await;

    let mut ws = open(&coordinator.ws_url(), &[]).await;
    send_hello(
        &mut ws,
        Hello {
            token: Some("open sesamE".into()),
            ..hello()
        },
    )
    .await;
    assert!(expect_refusal(next_msg(&mut ws).await, RefusalCode::BadToken).contains("wrong"));

    let err = distchan_worker::connect::<String, String>(&coordinator.ws_url(), Options::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused(r) if r.code == RefusalCode::BadToken),
        "{err}"
    );

    let worker = tokio::spawn(capitalizer(
        coordinator.ws_url(),
        Options::default().token("open sesame"),
    ));
    let mut results = results;
    jobs.send("x".into()).await.unwrap();
    drop(jobs);
    assert_eq!(
        timeout(LIMIT, results.collect_all()).await.unwrap().len(),
        1
    );
    assert_eq!(worker.await.unwrap(), ["x"]);
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_refused() {
    let (coordinator, jobs, results) = start::<String, String>(Config::default()).await;
    let mut ws = open(&coordinator.ws_url(), &[]).await;
    ws.send(Message::Binary(vec![0xc1, 0xff, 0x00, 0x13].into()))
        .await
        .unwrap();
    let reason = expect_refusal(next_msg(&mut ws).await, RefusalCode::Malformed);
    assert!(reason.contains("unreadable hello"), "{reason}");
    let mut text = open(&coordinator.ws_url(), &[]).await;
    text.send(Message::Text("hello?".into())).await.unwrap();
    expect_refusal(next_msg(&mut text).await, RefusalCode::Malformed);
    good_worker_still_served(&coordinator, jobs, results, 10).await;
}

#[tokio::test]
async fn a_result_of_another_type_is_undecodable_for_its_job_only() {
    // Results are read as numbers; the worker answers with text.
    let (coordinator, jobs, mut results) = start::<String, u64>(Config::default()).await;
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    jobs.send("not a number".into()).await.unwrap();
    drop(jobs);
    let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
    let err = outcome.result.expect_err("text is not a u64");
    assert!(
        matches!(&err, JobError::Undecodable(Error::Decode(_))),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("the decoding error is the source");
    assert!(source.to_string().starts_with("could not decode payload"));
    assert!(
        err.to_string()
            .starts_with("the result could not be decoded: could not decode payload: "),
        "{err}"
    );
    assert!(outcome.worker.is_some(), "a worker answered");
    assert!(timeout(LIMIT, results.recv()).await.unwrap().is_none());
    assert_eq!(worker.await.unwrap(), ["not a number"]);
}

#[tokio::test]
async fn a_malformed_frame_after_the_handshake_closes_only_that_connection() {
    let (coordinator, jobs, results) = start::<String, String>(Config::default()).await;
    let (mut ws, _) = raw_worker(&coordinator.ws_url(), hello()).await;
    ws.send(Message::Binary(b"definitely not msgpack".to_vec().into()))
        .await
        .unwrap();
    let (code, reason) = close_of(&mut ws)
        .await
        .expect("a close frame with a reason");
    assert_eq!(code, CLOSE_PROTOCOL_ERROR);
    assert!(reason.contains("malformed"), "{reason}");
    good_worker_still_served(&coordinator, jobs, results, 10).await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_1009() {
    let config = Config {
        max_frame: 4096,
        ..Config::default()
    };
    let (coordinator, jobs, results) = start::<String, String>(config).await;
    let (mut ws, _) = raw_worker(&coordinator.ws_url(), hello()).await;
    ws.send(Message::Binary(vec![0u8; 10_000].into()))
        .await
        .unwrap();
    let (code, reason) = close_of(&mut ws).await.expect("a close frame");
    assert_eq!(code, CLOSE_TOO_BIG, "{reason}");
    good_worker_still_served(&coordinator, jobs, results, 10).await;
}

#[tokio::test(start_paused = true)]
async fn a_hello_that_never_comes_times_out() {
    let config = Config {
        handshake_timeout: Duration::from_secs(3),
        heartbeat: Duration::ZERO,
        ..Config::default()
    };
    let (_coordinator, net, jobs, mut results) = common::start_mem::<String, String>(config).await;
    let mut silent = common::open_mem(&net).await;
    let started = tokio::time::Instant::now();
    let reason = expect_refusal(
        common::next_mem(&mut silent).await,
        RefusalCode::HandshakeTimeout,
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "refused only after the timeout"
    );
    assert!(reason.contains("no hello"), "{reason}");
    let worker = tokio::spawn(common::mem_capitalizer(net.clone(), Options::default()));
    jobs.send("still served".into()).await.unwrap();
    drop(jobs);
    assert_eq!(
        results.recv().await.unwrap().result.unwrap(),
        "STILL SERVED"
    );
    assert_eq!(worker.await.unwrap(), ["still served"]);
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let config = Config {
        allowed_origins: vec!["http://good.example".into()],
        ..Config::default()
    };
    let (coordinator, jobs, results) = start::<String, String>(config).await;
    let mut evil = open(&coordinator.ws_url(), &[("origin", "http://evil.example")]).await;
    send_hello(&mut evil, hello()).await;
    expect_refusal(next_msg(&mut evil).await, RefusalCode::OriginNotAllowed);
    let mut fine = open(&coordinator.ws_url(), &[("origin", "http://good.example")]).await;
    send_hello(&mut fine, hello()).await;
    assert!(matches!(
        next_msg(&mut fine).await,
        Some(ToWorker::Welcome(_))
    ));
    drop(fine);
    good_worker_still_served(&coordinator, jobs, results, 5).await;
}

#[tokio::test]
async fn workers_beyond_the_limit_are_refused() {
    let config = Config {
        max_workers: 1,
        ..Config::default()
    };
    let (coordinator, _jobs, _results) = start::<String, String>(config).await;
    let (_first, _) = raw_worker(&coordinator.ws_url(), hello()).await;
    let mut second = open(&coordinator.ws_url(), &[]).await;
    send_hello(&mut second, hello()).await;
    expect_refusal(next_msg(&mut second).await, RefusalCode::TooManyWorkers);
    let (code, _) = close_of(&mut second)
        .await
        .unwrap_or((CLOSE_POLICY, String::new()));
    assert_eq!(code, CLOSE_POLICY);
}

#[tokio::test]
async fn a_foreign_subprotocol_is_refused_with_both_versions_named() {
    let (coordinator, _jobs, _results) = start::<String, String>(Config::default()).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            coordinator.ws_url(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "distchan.v7".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("handshake completes");
    assert_eq!(response.headers()["sec-websocket-protocol"], "distchan.v7");
    let mut ws = common::Raw::new(ws);
    send_hello(&mut ws, hello()).await;
    let reason = expect_refusal(next_msg(&mut ws).await, RefusalCode::VersionMismatch);
    let ours = wire::subprotocol(wire::PROTOCOL_VERSION);
    assert!(
        reason.contains(&ours) && reason.contains("distchan.v7"),
        "{reason}"
    );
}

/// Sends `request` (an HTTP/1.1 head) to the coordinator and returns the status line and
/// the headers of the answer.
async fn http_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(LIMIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the coordinator hung up without answering");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_get_a_clear_answer() {
    let (coordinator, _jobs, _results) = start::<String, String>(Config::default()).await;
    let addr = coordinator.local_addr();
    let plain = http_head(addr, "GET /ws HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(
        plain.to_ascii_lowercase().contains("upgrade: websocket"),
        "{plain}"
    );

    let upgrade = "Host: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n";
    let old = http_head(
        addr,
        &format!("GET /ws HTTP/1.1\r\n{upgrade}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
    )
    .await;
    assert!(old.starts_with("HTTP/1.1 400"), "{old}");
    let keyless = http_head(
        addr,
        &format!("GET /ws HTTP/1.1\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"),
    )
    .await;
    assert!(keyless.starts_with("HTTP/1.1 400"), "{keyless}");

    // The RFC 6455 example: the accept key is the one the RFC computes.
    let ok = http_head(
        addr,
        &format!("GET /ws HTTP/1.1\r\n{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(ok.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{ok}");
    assert_eq!(coordinator.worker_count(), 0);
}
