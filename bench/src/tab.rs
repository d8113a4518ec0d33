//! One browser tab as the worker: headless Chromium opens the volunteer page, as a volunteer
//! would (two Web Worker threads, one connection each), against a coordinator in this
//! process; tiny jobs through the built-in `capitalize` task and through the same work as a
//! task module (command and reactor; see [`tasks`]).
//!
//! Chromium is started directly, with no driver attached: a driver that reports every
//! WebSocket frame through DevTools would slow the tab down. The rate is taken at the
//! coordinator, after a warm-up (the page loading, the module compiled); the CPU figure of
//! the children is the browser's whole process tree.
//!
//! Needs the wasm package in `www/pkg` and the WASI shim in `www/vendor`
//! (`scripts/build-wasm.sh`) and Chromium (`/usr/bin/chromium`, or `CHROMIUM_BIN`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    ours::{setup, Setup},
    tasks::{self, Work},
    BenchResult, Throughput,
};

/// Jobs sent and answered before the clock starts.
const WARM_UP: u64 = 500;
/// Web Worker threads of the page.
pub const THREADS: usize = 2;
/// Most jobs each thread may hold at once (the page's `?capacity=`, here its default):
/// enough to cover the time a batch of results takes to travel through the browser and
/// back. The coordinator's window for the thread grows to it while that makes it faster.
pub const CAPACITY: usize = 64;

/// The volunteer page's folder.
fn www() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../www")
}

/// Chromium, or why the tab cannot be measured here.
pub fn prerequisites() -> Result<PathBuf, String> {
    let www = www();
    for (file, what) in [
        ("pkg/distchan_worker_wasm_bg.wasm", "the wasm package"),
        ("vendor/browser_wasi_shim/index.js", "the WASI shim"),
    ] {
        if !www.join(file).is_file() {
            return Err(format!(
                "{what} is missing in {} (run scripts/build-wasm.sh)",
                www.display()
            ));
        }
    }
    let chromium = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    Ok(chromium)
}

/// `n` tiny jobs (after the warm-up) done by `work` in one tab of [`THREADS`] threads.
pub async fn throughput(work: Work, n: u64) -> BenchResult<Throughput> {
    let chromium = prerequisites()?;
    let profile = std::env::temp_dir().join(format!(
        "distchan-bench-chromium-{}-{work:?}",
        std::process::id()
    ));
    let builder = tasks::builder(work)?.configure(|c| c.static_dir = Some(www()));
    let setup_tab = setup::<String, String>(builder, THREADS, Duration::from_secs(60), |url, c| {
        let page = url
            .replacen("ws://", "http://", 1)
            .trim_end_matches("/ws")
            .to_owned()
            + &format!("/?autostart=1&threads={THREADS}&capacity={CAPACITY}");
        c.spawn_program(
            &chromium,
            &[
                "--headless".into(),
                "--no-sandbox".into(),
                "--disable-gpu".into(),
                "--no-first-run".into(),
                "--disable-background-networking".into(),
                "--disable-component-update".into(),
                "--disable-sync".into(),
                "--disable-quic".into(),
                format!("--user-data-dir={}", profile.display()),
                page,
            ],
        )
    });
    let result = async {
        let mut s: Setup<String, String> = setup_tab.await?;
        tasks::pump(&mut s, 0, WARM_UP).await?;
        let t = tasks::pump(&mut s, WARM_UP, n).await?;
        s.end(false).await?;
        Ok(t)
    }
    .await;
    let _ = std::fs::remove_dir_all(&profile);
    result
}
