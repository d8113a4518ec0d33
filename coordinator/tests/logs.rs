//! Both binaries' logs (one setup, `distchan_protocol::logging`): JSON lines with
//! `--log-format json` or `DISTCHAN_LOG_FORMAT=json`, their own reports and fatal errors
//! included; text without colour codes when stderr is a pipe.

mod common;

use std::{path::PathBuf, process::Output};

use common::{start, LIMIT};
use distchan_coordinator::Config;
use distchan_protocol::tasks;
use serde_json::{Map, Value};
use tokio::{process::Command, time::timeout};

/// The `distchan-coordinator` binary.
fn coordinator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distchan-coordinator"))
}

/// The `distchan-worker` binary, built next to the coordinator's by a workspace test run.
fn worker_bin() -> PathBuf {
    let worker = coordinator_bin().with_file_name("distchan-worker");
    assert!(
        worker.is_file(),
        "{} is missing: test the worker too (`cargo test -p distchan-coordinator -p distchan-worker`)",
        worker.display()
    );
    worker
}

/// Runs `exe` with `args`, `envs` and no input, stderr piped, until it exits.
async fn run(exe: PathBuf, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let run = Command::new(exe)
        .args(args)
        .env_remove("DISTCHAN_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    timeout(LIMIT, run)
        .await
        .expect("it exits")
        .expect("the binary runs")
}

/// The coordinator in pipe mode with an empty input and no worker: it starts, logs,
/// reports and exits.
async fn coordinator_with_no_input(log_format: &str) -> Output {
    let args = ["pipe", "--task", "capitalize", "--listen", "127.0.0.1:0"];
    let envs = [
        ("DISTCHAN_LOCAL_WORKERS", "0"),
        ("DISTCHAN_LOG_FORMAT", log_format),
    ];
    let out = run(coordinator_bin(), &args, &envs).await;
    assert!(out.status.success(), "nothing to fail: {out:?}");
    out
}

/// A worker for a coordinator that has no work: it connects, is told end-of-work at once,
/// and leaves.
async fn worker_with_no_work(log_format: &str) -> Output {
    let config = Config {
        task: Some(tasks::CAPITALIZE.to_owned()),
        ..Config::default()
    };
    let (coordinator, jobs, _results) = start::<String, String>(config).await;
    drop(jobs);
    let url = coordinator.ws_url();
    let args = ["--url", &url, "--log-format", log_format];
    let out = run(worker_bin(), &args, &[]).await;
    assert!(out.status.success(), "it leaves at end of work: {out:?}");
    out
}

/// Every line of `stderr` as a JSON object; fails unless each one is.
fn json_events(stderr: &[u8]) -> Vec<Map<String, Value>> {
    let text = String::from_utf8(stderr.to_vec()).expect("logs are UTF-8");
    assert!(!text.trim().is_empty(), "something was logged");
    text.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(event)) => event,
            _ => panic!("not a JSON object: {line:?} in\n{text}"),
        })
        .collect()
}

/// Asserts that some event has `level` and a message starting with `start`.
fn assert_logged(events: &[Map<String, Value>], level: &str, start: &str) {
    let found = events.iter().any(|e| {
        e["level"] == level && e["message"].as_str().is_some_and(|m| m.starts_with(start))
    });
    assert!(found, "no {level} event {start:?}… in {events:?}");
}

/// Asserts that `stderr` is text holding `lines`, with no ANSI escape code.
fn assert_plain_text(stderr: Vec<u8>, lines: &[&str]) {
    let text = String::from_utf8(stderr).unwrap();
    for line in lines {
        assert!(text.contains(line), "{line:?} is logged: {text}");
    }
    assert!(!text.contains("\x1b["), "no ANSI escape codes: {text:?}");
}

#[tokio::test]
async fn coordinator_json_logs_hold_every_line_on_stderr() {
    let events = json_events(&coordinator_with_no_input("json").await.stderr);
    assert_logged(&events, "INFO", "coordinator listening"); // the library's event
    assert_logged(&events, "INFO", "distchan coordinator listening on "); // the binary's
    assert_logged(&events, "INFO", "pipe: 0 jobs, 0 results"); // pipe mode's summary
}

#[tokio::test]
async fn coordinator_fatal_error_is_a_json_line_too() {
    // Pipe mode without a task stops before it starts.
    let out = run(coordinator_bin(), &["pipe", "--log-format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_logged(&json_events(&out.stderr), "ERROR", "distchan-coordinator: ");
}

#[tokio::test]
async fn coordinator_text_logs_into_a_pipe_have_no_colour_codes() {
    let out = coordinator_with_no_input("text").await;
    assert_plain_text(
        out.stderr,
        &[
            " INFO ",
            "coordinator listening",
            "\npipe: 0 jobs, 0 results",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_json_logs_are_one_object_per_line() {
    let events = json_events(&worker_with_no_work("json").await.stderr);
    assert_logged(&events, "INFO", "connected to ws://");
}

#[tokio::test]
async fn worker_fatal_error_is_a_json_line_when_the_environment_asks() {
    // Nothing listens on port 1: with --once the worker fails at once.
    let args = ["--url", "ws://127.0.0.1:1/ws", "--once"];
    let out = run(worker_bin(), &args, &[("DISTCHAN_LOG_FORMAT", "json")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_logged(&json_events(&out.stderr), "ERROR", "distchan-worker: ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_text_logs_into_a_pipe_have_no_colour_codes() {
    let out = worker_with_no_work("text").await;
    assert_plain_text(out.stderr, &[" INFO ", "connected to ws://"]);
}
