//! A normal end is a clean end, every time: pipe mode with three local `distchan-worker`
//! processes, fifty runs; each run exits 0, every worker exits 0 (the coordinator says so
//! otherwise) and nothing is logged at WARN or above.

mod common;

use common::run_pipe_process;

#[test]
fn fifty_runs_end_with_every_process_exiting_0_and_no_warning() {
    let input: String = (0..300).map(|i| format!("\"word {i}\"\n")).collect();
    for run in 0..50 {
        let (code, stdout, stderr) = run_pipe_process(
            &input,
            &[
                "--task",
                "capitalize",
                "--local-workers",
                "3",
                "--local-concurrency",
                "1",
            ],
        );
        assert_eq!(code, 0, "run {run}: {stderr}");
        assert_eq!(stdout.lines().count(), 300, "run {run}");
        // Worker processes write their logs to the same stderr, and a worker that ends
        // with another status is reported there at WARN.
        for level in ["WARN", "ERROR"] {
            assert!(!stderr.contains(level), "run {run}: {stderr}");
        }
    }
}
