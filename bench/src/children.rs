//! Child processes (the bench binary re-executed in a helper mode) and the few OS facts the
//! benchmark reads or changes: open-file limit and resident memory.

use std::{
    future::Future,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::BenchResult;

/// Set in every child's environment: a process that has it never runs the benchmark itself,
/// so a child can never start children of its own by mistake.
pub const CHILD_ENV: &str = "DISTCHAN_BENCH_CHILD";

/// A group of child processes that are always gone when the group is dropped.
///
/// Every child is the bench binary itself in a helper mode (`--worker`, `--echo-client`,
/// `--swarm`). Dropping the group (normal end, `?` on an error, a measurement deadline or a
/// panic unwinding through it) kills and reaps every child still running. Each child also asks
/// the kernel to kill it if the bench process dies without unwinding (`PR_SET_PDEATHSIG`).
#[derive(Debug)]
pub struct Children {
    /// What these children are, for error messages.
    label: String,
    /// The children still running (or exited but not yet reaped).
    procs: Vec<Child>,
}

impl Children {
    /// An empty group; `label` names it in error messages.
    pub fn new(label: impl Into<String>) -> Self {
        Children {
            label: label.into(),
            procs: Vec::new(),
        }
    }

    /// Starts the bench binary with `args` as one more child of the group.
    pub fn spawn(&mut self, args: &[String]) -> BenchResult<()> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {} child: {e}", self.label))?;
        self.procs.push(child);
        Ok(())
    }

    /// Starts `program` with `args` (not the bench binary: a browser, say) as one more child
    /// of the group; its output is discarded.
    pub fn spawn_program(&mut self, program: &std::path::Path, args: &[String]) -> BenchResult<()> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as in `spawn`.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        self.procs.push(child);
        Ok(())
    }

    /// CPU time (user + system) the children still running, and every process they started,
    /// have used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let tree = process_tree();
        self.procs
            .iter()
            .map(|c| {
                descendants(&tree, c.id())
                    .map(|pid| cpu_secs(Some(pid)))
                    .sum::<f64>()
            })
            .sum()
    }

    /// Fails if any child has already exited: until the work is over, none should.
    pub fn check_alive(&mut self) -> BenchResult<()> {
        for child in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                return Err(format!(
                    "a {} child (pid {}) exited early: {status}",
                    self.label,
                    child.id()
                )
                .into());
            }
        }
        Ok(())
    }

    /// Runs `fut` to completion, failing early if a child dies meanwhile.
    pub async fn watch<F: Future>(&mut self, fut: F) -> BenchResult<F::Output> {
        tokio::pin!(fut);
        let mut tick = interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = tick.tick() => self.check_alive()?,
            }
        }
    }

    /// Waits up to `within` for every child to exit by itself, and fails unless all of them
    /// exited successfully (those still running at the deadline are killed by `Drop`).
    pub async fn wait_all(&mut self, within: Duration) -> BenchResult<()> {
        let deadline = Instant::now() + within;
        while !self.procs.is_empty() {
            let mut i = 0;
            while i < self.procs.len() {
                match self.procs[i].try_wait()? {
                    // `try_wait` returning a status has reaped the child already.
                    #[allow(clippy::zombie_processes)]
                    Some(status) if status.success() => {
                        self.procs.swap_remove(i);
                    }
                    Some(status) => {
                        let pid = self.procs.swap_remove(i).id();
                        return Err(
                            format!("a {} child (pid {pid}) failed: {status}", self.label).into(),
                        );
                    }
                    None => i += 1,
                }
            }
            if self.procs.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} {} children did not exit within {within:?} after the work ended",
                    self.procs.len(),
                    self.label
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.procs {
            let _ = child.kill();
        }
        for child in &mut self.procs {
            let _ = child.wait();
        }
    }
}

/// Raises this process's soft open-file limit to its hard limit and returns the new soft
/// limit. Ten thousand WebSocket connections need ten thousand descriptors on each side.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Every process's parent: pid -> parent pid, from `/proc/*/stat`.
fn process_tree() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// `root` and every process below it in `tree`.
fn descendants(tree: &[(u32, u32)], root: u32) -> impl Iterator<Item = u32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            tree.iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    found.into_iter()
}

/// CPU time (user + system) used so far by process `pid` (this process for `None`), in
/// seconds, from `/proc/PID/stat`; 0 when it cannot be read. Resolution: one clock tick.
pub fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3; utime and
    // stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}
