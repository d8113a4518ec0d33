//! A normal end is a clean end, every time: pipe mode with three local `distchan-worker`
//! processes, fifty runs; each run exits 0, every worker exits 0 (the coordinator says so
//! otherwise) and nothing is logged at WARN or above.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

fn coordinator_bin() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_distchan-coordinator"));
    assert!(
        exe.with_file_name("distchan-worker").is_file(),
        "distchan-worker is missing next to the coordinator: run `cargo test --workspace`"
    );
    exe
}

#[test]
fn fifty_runs_end_with_every_process_exiting_0_and_no_warning() {
    let input: String = (0..300).map(|i| format!("\"word {i}\"\n")).collect();
    for run in 0..50 {
        let mut child = Command::new(coordinator_bin())
            .args(["pipe", "--task", "capitalize", "--listen", "127.0.0.1:0"])
            .args(["--local-workers", "3", "--local-concurrency", "1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the coordinator starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "run {run}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            300,
            "run {run}"
        );
        // Worker processes write their logs to the same stderr, and a worker that ends
        // with another status is reported there at WARN.
        for level in ["WARN", "ERROR"] {
            assert!(!stderr.contains(level), "run {run}: {stderr}");
        }
    }
}
