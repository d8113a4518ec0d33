//! What operators see: `/metrics`, `/healthz`, the worker list and the dashboard's event
//! stream, checked against the work actually done.

mod common;

use std::collections::HashMap;

use common::{capitalizer, start, LIMIT};
use distchan_coordinator::Config;
use distchan_worker::Options;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// A bare HTTP/1.0 GET; returns the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    timeout(LIMIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Parses the text exposition format into `name{labels}` -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

#[tokio::test]
async fn metrics_match_the_work_done() {
    let (coordinator, jobs, mut results) = start::<String, String>(Config::default()).await;
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    for i in 0..25 {
        jobs.send(format!("job {i}")).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 25);
    assert!(
        outcomes.iter().all(|o| o.worker == Some(1)),
        "outcomes name the worker that answered"
    );
    worker.await.unwrap();

    let addr = coordinator.local_addr();
    assert_eq!(get(addr, "/healthz").await, "ok\n");
    let metrics = parse_metrics(&get(addr, "/metrics").await);
    assert_eq!(metrics["distchan_jobs_done_total"], 25.0);
    assert_eq!(metrics["distchan_jobs_dispatched_total"], 25.0);
    assert_eq!(metrics["distchan_jobs_failed_total"], 0.0);
    assert_eq!(metrics["distchan_jobs_redelivered_total"], 0.0);
    assert_eq!(metrics["distchan_jobs_queued"], 0.0);
    assert_eq!(metrics["distchan_job_round_trip_seconds_count"], 25.0);
    assert_eq!(metrics["distchan_dispatch_wait_seconds_count"], 25.0);
    assert!(metrics["distchan_bytes_sent_total"] > 25.0 * 6.0);
    assert!(metrics["distchan_bytes_received_total"] > 25.0 * 6.0);
}

#[tokio::test]
async fn the_worker_list_and_the_dashboard_stream_show_connected_workers() {
    let (coordinator, _jobs, _results) = start::<String, String>(Config::default()).await;
    let options = Options {
        agent: Some("observer test".into()),
        ..Options::default().capacity(7)
    };
    let (_j, _r, _client) =
        distchan_worker::connect::<String, String>(&coordinator.ws_url(), options)
            .await
            .unwrap();
    let workers = coordinator.workers().await;
    assert_eq!(workers.len(), 1);
    assert_eq!(
        (
            workers[0].agent.as_str(),
            workers[0].capacity,
            workers[0].kind.as_str()
        ),
        ("observer test", 7, "native")
    );

    coordinator
        .publish(&serde_json::json!({"kind": "hello", "n": 1}))
        .unwrap();
    let mut tcp = TcpStream::connect(coordinator.local_addr()).await.unwrap();
    tcp.write_all(b"GET /dashboard/events HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("event: status") && seen.contains("event: app")) {
        let n = timeout(LIMIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.contains(r#""kind":"hello""#),
        "published events are replayed: {seen}"
    );
    let status_line = seen
        .lines()
        .skip_while(|l| *l != "event: status")
        .find(|l| l.starts_with("data: "))
        .expect("a status payload");
    let status: serde_json::Value = serde_json::from_str(&status_line["data: ".len()..]).unwrap();
    assert_eq!(status["workers"][0]["agent"], "observer test");
    assert_eq!(status["stats"]["workers"], 1);
}
