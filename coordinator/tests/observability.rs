//! What operators see: `/metrics` (checked against the work actually done, and against
//! Prometheus's naming conventions), `/healthz`, the worker list and the dashboard's event
//! stream.

mod common;

use std::collections::HashMap;

use common::{capitalizer, hello, raw_worker, start, LIMIT};
use distchan_coordinator::Config;
use distchan_protocol::wire::{Hello, WorkerKind};
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
    assert!(metrics["distchan_sent_bytes_total"] > 25.0 * 6.0);
    assert!(metrics["distchan_received_bytes_total"] > 25.0 * 6.0);
}

/// The `# TYPE` and `# UNIT` lines: metric family -> (type, unit).
fn families(text: &str) -> HashMap<String, (String, Option<String>)> {
    let mut families: HashMap<String, (String, Option<String>)> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name type");
            families.insert(name.to_owned(), (kind.to_owned(), None));
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("name unit");
            families.get_mut(name).expect("TYPE before UNIT").1 = Some(unit.to_owned());
        }
    }
    families
}

#[tokio::test]
async fn metrics_follow_prometheus_naming() {
    let (coordinator, _jobs, _results) = start::<String, String>(Config::default()).await;
    let url = coordinator.ws_url();
    let (_native, _r, _client) =
        distchan_worker::connect::<String, String>(&url, Options::default())
            .await
            .unwrap();
    let browser = Hello {
        kind: WorkerKind::Browser,
        ..hello()
    };
    let (tab, _) = raw_worker(&url, browser).await;
    let (_other, _) = raw_worker(&url, hello()).await;
    let (_another, _) = raw_worker(&url, hello()).await;

    let text = get(coordinator.local_addr(), "/metrics").await;
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let metrics = parse_metrics(&text);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metrics[&format!("distchan_build_info{{version=\"{version}\"}}")],
        1.0
    );
    assert_eq!(metrics["distchan_workers_connected{kind=\"native\"}"], 1.0);
    assert_eq!(metrics["distchan_workers_connected{kind=\"browser\"}"], 1.0);
    assert_eq!(metrics["distchan_workers_connected{kind=\"other\"}"], 2.0);

    let families = families(&text);
    for (family, (kind, unit)) in &families {
        assert!(
            family.starts_with("distchan_") || family.starts_with("process_"),
            "{family}: ours or the process's"
        );
        if let Some(unit) = unit {
            assert!(
                family.ends_with(&format!("_{unit}")),
                "{family}: the unit ends the name"
            );
        }
        if kind == "counter" {
            let samples: Vec<_> = metrics
                .keys()
                .filter(|m| m.starts_with(family.as_str()))
                .collect();
            assert!(
                samples
                    .iter()
                    .all(|m| m.starts_with(&format!("{family}_total"))),
                "{family}: counters end in _total: {samples:?}"
            );
        }
    }
    let unit = |family: &str| families[family].1.clone();
    for (family, expected) in [
        ("distchan_received_bytes", "bytes"),
        ("distchan_sent_bytes", "bytes"),
        ("distchan_dispatch_wait_seconds", "seconds"),
        ("distchan_job_round_trip_seconds", "seconds"),
    ] {
        assert_eq!(unit(family).as_deref(), Some(expected), "{family}");
    }
    if cfg!(target_os = "linux") {
        assert_eq!(unit("process_cpu_seconds").as_deref(), Some("seconds"));
        assert_eq!(
            unit("process_resident_memory_bytes").as_deref(),
            Some("bytes")
        );
        assert_eq!(
            unit("process_start_time_seconds").as_deref(),
            Some("seconds")
        );
        assert!(metrics.contains_key("process_cpu_seconds_total"));
        assert!(metrics["process_resident_memory_bytes"] > 1_000_000.0);
        assert!(metrics["process_open_fds"] >= 4.0, "the sockets at least");
        assert!(metrics["process_max_fds"] >= metrics["process_open_fds"]);
        assert!(metrics["process_start_time_seconds"] > 1_600_000_000.0);
    }

    // A worker that leaves is no longer counted.
    drop(tab);
    let mut workers = coordinator.watch_workers();
    timeout(LIMIT, workers.wait_for(|&n| n == 3))
        .await
        .unwrap()
        .unwrap();
    let metrics = parse_metrics(&get(coordinator.local_addr(), "/metrics").await);
    assert_eq!(metrics["distchan_workers_connected{kind=\"browser\"}"], 0.0);
    assert_eq!(metrics["distchan_workers_connected{kind=\"other\"}"], 2.0);
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
            workers[0].declared,
            workers[0].kind.as_str()
        ),
        ("observer test", 2, 7, "native"),
        "a new worker's window is two jobs, of the seven it declared"
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
