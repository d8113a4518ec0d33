//! Pipe mode with a journal, through the real binaries: the coordinator is killed with
//! SIGKILL at several points while its workers compute and it writes results, its output and
//! journal are torn on purpose, and the same command started again finishes the run with
//! exactly one right result line per input line.

mod common;

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::coordinator_bin;

const LINES: usize = 60_000;
const LIMIT: Duration = Duration::from_secs(120);

/// The pipe command of this run (capitalize, one local worker), with extra arguments.
fn pipe(dir: &Path, input: &Path, extra: &[&str]) -> Command {
    pipe_task(dir, input, "capitalize", extra)
}

/// The pipe command of this run with the built-in `task`.
fn pipe_task(dir: &Path, input: &Path, task: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["pipe", "--task", task, "--listen", "127.0.0.1:0"])
        .args(["--local-workers", "1", "--local-concurrency", "1"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("results.jsonl"))
        .arg("--journal")
        .arg(dir.join("run.journal"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn lines_in(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Starts the run and kills it with SIGKILL once the output holds `at_least` lines (or at
/// once, for 0); returns how many lines the output held then.
fn kill_after(dir: &Path, input: &Path, at_least: usize) -> usize {
    let out = dir.join("results.jsonl");
    let mut child: Child = pipe(dir, input, &[])
        .spawn()
        .expect("the coordinator starts");
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = lines_in(&out);
        if n >= at_least {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it was killed at {at_least} lines");
        }
        assert!(Instant::now() < deadline, "no progress to {at_least} lines");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    lines_in(&out)
}

/// Checks the output: one result line per input line, each right, none twice.
fn check_complete(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("output line {} is not JSON ({e}): {line}", i + 1));
        let n = record["line"].as_u64().expect("a line number");
        *seen.entry(n).or_default() += 1;
        assert_eq!(
            record["value"],
            format!("WORD {}", n - 1),
            "the result of input line {n}"
        );
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "lines written more than once: {twice:?}");
    assert_eq!(seen.len(), LINES, "one result line per input line");
    assert_eq!(text.lines().count(), LINES);
}

fn input(dir: &Path) -> PathBuf {
    let path = dir.join("jobs.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..LINES {
        writeln!(f, "\"word {i}\"").unwrap();
    }
    f.flush().unwrap();
    path
}

#[test]
fn a_run_killed_again_and_again_finishes_with_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let out = dir.path().join("results.jsonl");
    let journal = dir.path().join("run.journal");

    // Early: the first results are out.
    let first = kill_after(dir.path(), &input, 1);
    // The middle, while results are being written.
    let middle = kill_after(dir.path(), &input, first + LINES / 3);
    assert!(middle < LINES, "killed before the end ({middle} lines)");
    // A crash mid-write leaves a torn last line in the output...
    std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap()
        .write_all(b"{\"id\":12,\"li")
        .unwrap();
    // ... and in the journal (the last record cut short).
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let later = kill_after(dir.path(), &input, middle + LINES / 4);
    assert!(later < LINES, "killed before the end ({later} lines)");

    let done = pipe(dir.path(), &input, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("from the journal"), "{stderr}");
    check_complete(dir.path());

    // Started again once everything is done, it computes nothing and writes nothing.
    let again = pipe(dir.path(), &input, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("{LINES} from the journal, 0 computed now")),
        "{stderr}"
    );
    check_complete(dir.path());
}

#[test]
fn a_journal_made_for_another_input_or_task_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let done = pipe(dir.path(), &input, &[]).output().unwrap();
    assert_eq!(done.status.code(), Some(0));
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "\"another\"\n").unwrap();
    let refused = pipe(dir.path(), &other, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was made for another run"), "{stderr}");
    assert!(
        stderr.contains("task capitalize"),
        "the reason names the run: {stderr}"
    );
    let task = pipe_task(dir.path(), &input, "add", &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&task.stderr);
    assert_eq!(task.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was made for another run"), "{stderr}");
    assert_eq!(
        lines_in(&dir.path().join("results.jsonl")),
        LINES,
        "nothing was written by the refused runs"
    );
}

#[test]
fn a_journal_needs_an_input_file_and_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(coordinator_bin())
        .args(["pipe", "--task", "capitalize", "--listen", "127.0.0.1:0"])
        .arg("--journal")
        .arg(dir.path().join("run.journal"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--journal needs --input FILE and --output FILE"),
        "{stderr}"
    );
}
