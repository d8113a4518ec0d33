//! Pipe mode end to end through the real binaries: `distchan-coordinator pipe` with a local
//! `distchan-worker` process, JSON lines in (one of them malformed), JSON lines out.

mod common;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
};

use common::{coordinator_bin, run_pipe_process};

/// Runs pipe mode on the capitalize task with one local worker.
fn run_pipe(input: &str, extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    run_pipe_with(input, &[&["--task", "capitalize"], extra].concat())
}

/// Runs pipe mode with `args` (which name the task) and one local worker; returns the exit
/// code, the output lines and stderr.
fn run_pipe_with(input: &str, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let one_worker = ["--local-workers", "1", "--local-concurrency", "2"];
    let (code, stdout, stderr) = run_pipe_process(input, &[&one_worker[..], args].concat());
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect();
    (code, lines, stderr)
}

#[test]
fn pipe_mode_answers_every_line_in_order_and_reports_the_bad_one() {
    let mut input = String::new();
    for i in 0..200 {
        if i == 57 {
            input.push_str("{not json\n");
        } else {
            input.push_str(&format!("\"word {i}\"\n"));
        }
    }
    let (code, lines, stderr) = run_pipe(&input, &["--ordered"]);
    assert_eq!(
        code, 2,
        "a skipped line makes the run unsuccessful; stderr: {stderr}"
    );
    assert!(stderr.contains("line 58: not valid JSON"), "{stderr}");
    assert!(
        stderr.contains("199 jobs, 199 results, 0 failed, 1 bad input lines"),
        "{stderr}"
    );
    assert_eq!(lines.len(), 199);
    for (id, record) in lines.iter().enumerate() {
        let source_line = if id < 57 { id + 1 } else { id + 2 };
        let word = if id < 57 { id } else { id + 1 };
        assert_eq!(record["id"], id as u64, "results come in input order");
        assert_eq!(record["line"], source_line as u64);
        assert_eq!(record["value"], format!("WORD {word}"));
    }
}

#[test]
fn pipe_mode_can_stop_at_the_first_bad_line_and_reports_job_errors() {
    let (code, lines, stderr) = run_pipe(
        "\"a\"\n42\nbroken\n\"never sent\"\n",
        &["--on-bad-line", "fail"],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("line 3: not valid JSON") && stderr.contains("stopping"),
        "{stderr}"
    );
    assert_eq!(
        lines.len(),
        2,
        "the two lines before the bad one still get results"
    );
    let error = lines
        .iter()
        .find(|r| r["line"] == 2)
        .expect("line 2's result");
    assert!(
        error["error"].as_str().unwrap().contains("handler failed"),
        "42 is not a string: {error}"
    );
    assert!(lines.iter().any(|r| r["value"] == "A"));
}

#[test]
fn pipe_mode_succeeds_on_clean_input() {
    let (code, lines, stderr) = run_pipe("\"x\"\n\"y\"\n", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 2);
    // Who did what: the one local worker, all of it.
    assert!(
        stderr.contains("(local worker 1, native): 2 jobs (100.0%)"),
        "{stderr}"
    );
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/tasks")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn pipe_mode_runs_a_task_module_on_every_line() {
    let module = example("wc.wat");
    let (code, lines, stderr) = run_pipe_with(
        "\"the cat sat\"\n{\"a\": [1, 2]}\n\"\"\n",
        &["--module", &module, "--ordered"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("task module: wc.wat"), "{stderr}");
    let values: Vec<_> = lines.iter().map(|r| r["value"].clone()).collect();
    // The module counts blank-separated runs of the JSON text it is given, which is compact
    // (`{"a":[1,2]}`) whatever the spacing of the input line.
    let expected = [3, 1, 1].map(|n| serde_json::json!(n));
    assert_eq!(values, expected);
}

#[test]
fn pipe_mode_takes_a_task_or_a_module_not_both() {
    let module = example("wc.wat");
    let (code, lines, stderr) =
        run_pipe_with("\"x\"\n", &["--task", "capitalize", "--module", &module]);
    assert_eq!(code, 1, "{stderr}");
    assert!(lines.is_empty());
    assert!(
        stderr.contains("--task and --module are exclusive"),
        "{stderr}"
    );
    let (code, _, stderr) = run_pipe_with("\"x\"\n", &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--task") && stderr.contains("--module"),
        "{stderr}"
    );
}

#[test]
fn pipe_mode_refuses_a_file_that_is_not_a_task_module() {
    let not_a_module =
        std::env::temp_dir().join(format!("distchan-not-a-module-{}.wasm", std::process::id()));
    std::fs::write(&not_a_module, b"\0asm\x01\0\0\0\x05").unwrap();
    let (code, lines, stderr) = run_pipe_with(
        "\"x\"\n",
        &["--module", &not_a_module.display().to_string()],
    );
    let _ = std::fs::remove_file(&not_a_module);
    assert_eq!(code, 1, "{stderr}");
    assert!(lines.is_empty());
    assert!(stderr.contains("not a usable task module"), "{stderr}");
}

/// Ctrl-C while the input is still open (a producer that has not finished): pipe mode stops
/// reading at once, writes every result of the lines it read, says so and exits 130.
#[test]
fn ctrl_c_stops_reading_writes_what_was_answered_and_exits_130() {
    use std::io::{BufRead, BufReader};

    let mut child = Command::new(coordinator_bin())
        .args(["pipe", "--task", "capitalize", "--listen", "127.0.0.1:0"])
        .args(["--local-workers", "1", "--local-concurrency", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the coordinator starts");
    // 200 lines, and the input stays open.
    let mut stdin = child.stdin.take().unwrap();
    let input: String = (0..200).map(|i| format!("\"word {i}\"\n")).collect();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "a result per line");
        lines.push(line);
    }
    // SAFETY: kill(2) on a child we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // Bounded: a run that keeps waiting for input fails the test instead of hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 30 s after Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let rest: Vec<String> = out.lines().map(Result::unwrap).collect();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        rest.is_empty(),
        "nothing more than the 200 results: {rest:?}"
    );
    assert!(stderr.contains("no more input is read"), "{stderr}");
    assert!(
        stderr.contains("200 results") && stderr.contains("interrupted after input line 200"),
        "{stderr}"
    );
    drop(stdin);
}
