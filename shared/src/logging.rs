//! The binaries' log setup, in one place: `tracing` events on standard error, filtered by
//! `RUST_LOG` (default `info`), written as text or as JSON lines.
//!
//! Behind the `logging` feature, which only the `distchan-coordinator` and
//! `distchan-worker` binaries turn on: a program using the libraries sets up its own
//! subscriber, and none of this (nor tracing-subscriber, nor clap) is compiled into it.
//!
//! - [`LogArgs`] is the `--log-format text|json` flag (`DISTCHAN_LOG_FORMAT`), for a clap
//!   parser to flatten.
//! - [`init`] installs the subscriber. Text is coloured only when standard error is a
//!   terminal and `NO_COLOR` is unset, so logs written to a pipe or a file carry no escape
//!   codes. JSON is one object per line, the event's fields at its top level:
//!   `{"timestamp":…,"level":"INFO","message":…,"target":…}`.
//! - [`notice`] writes a line meant for the person running the program (a summary, a
//!   fatal error): as it is with text logs, as an event with JSON logs, so that standard
//!   error holds nothing but JSON lines when they were asked for.

use std::{
    fmt::Display,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use tracing::Level;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The log flag both binaries take.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// How logs are written to stderr: text (coloured only on a terminal) or JSON lines.
    #[arg(
        long,
        global = true,
        env = "DISTCHAN_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// True once [`init`] chose JSON lines.
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: events at `RUST_LOG`'s levels (default `info`, but
/// `warn` for the NATS client, whose connection chatter is not news) to standard error, in
/// `format`. Call it once, first thing in `main`.
///
/// # Panics
///
/// If a global subscriber is already installed.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(colour()).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// True when logs are JSON lines, so nothing else may be written to standard error.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Whether text logs are coloured: only on a terminal, and unless `NO_COLOR` is set to
/// something (<https://no-color.org/>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes `line`, meant for the person running the program, to standard error: as it is
/// with text logs; with JSON logs, as an event of `level` (target `distchan`) whose
/// message is `line`.
pub fn notice(level: Level, line: impl Display) {
    if !json() {
        eprintln!("{line}");
    } else if level == Level::ERROR {
        tracing::error!(target: "distchan", "{line}");
    } else if level == Level::WARN {
        tracing::warn!(target: "distchan", "{line}");
    } else {
        tracing::info!(target: "distchan", "{line}");
    }
}
