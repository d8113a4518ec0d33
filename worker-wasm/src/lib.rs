//! The distchan worker for browsers: a browser tab (or a Web Worker inside it) connects to a
//! coordinator over a WebSocket and computes jobs, like the native `distchan-worker`.
//!
//! The protocol itself (hello, welcome or refusal, jobs, results, end-of-work, drain) is the
//! protocol crate's [`WorkerSession`](distchan_protocol::session::WorkerSession), the same
//! state machine the native worker drives; this crate is the browser glue around it.
//!
//! # Layout
//!
//! - [`worker`]: [`BrowserWorker`], the type JavaScript uses: options, `run()`, `stop()`,
//!   status callbacks; the connection loop feeding the session.
//! - [`socket`]: the `web_sys::WebSocket` with its event closures owned (and freed) by one
//!   value; browser close codes.
//! - [`handler`]: who answers a job: the built-in task the coordinator names
//!   ([`distchan_protocol::tasks`]), its task module, or a JavaScript function; errors become
//!   error results.
//! - [`module`]: task modules in the browser: fetched, checked against their hash, given a
//!   memory maximum and compiled once per thread, run through the page's `TaskModuleRuntime`
//!   (which holds the WASI shim).
//! - [`convert`]: MessagePack to plain JavaScript values and back (`serde-wasm-bindgen`).
//!
//! # From JavaScript
//!
//! Built with `wasm-pack build worker-wasm --target web --out-dir ../www/pkg`:
//!
//! ```js
//! import init, { BrowserWorker } from "./pkg/distchan_worker_wasm.js";
//! await init();
//! const worker = new BrowserWorker(`ws://${location.host}/ws`, { capacity: 2, token });
//! worker.onStatus((s) => show(s.state, s.reason, s.task, s.jobsDone));
//! await worker.run(); // resolves at end of work, rejects with the reason (e.g. a refusal)
//! ```
//!
//! `worker.setHandler((job, {id, task}) => result)` answers jobs with a JavaScript function
//! (it may return a promise; a throw or a rejection becomes that job's error result), and
//! `worker.stop()` leaves cleanly: no new jobs, the ones held are finished.
#![warn(missing_docs)]

pub mod convert;
pub mod handler;
pub mod module;
pub mod socket;
pub mod worker;

use wasm_bindgen::prelude::*;

pub use handler::JobHandler;
pub use worker::{BrowserWorker, State, Status};

/// The WebSocket subprotocol this module speaks, e.g. `distchan.v5`.
#[wasm_bindgen(js_name = protocolName)]
pub fn protocol_name() -> String {
    distchan_protocol::wire::subprotocol(distchan_protocol::wire::PROTOCOL_VERSION)
}

/// The version of this package.
#[wasm_bindgen(js_name = packageVersion)]
pub fn package_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Sends Rust panic messages to the browser console (once per module instance); a panic
/// otherwise shows up only as "unreachable executed".
pub(crate) fn install_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            web_sys::console::error_1(&format!("distchan-worker-wasm: {info}").into());
            previous(info);
        }));
    });
}
