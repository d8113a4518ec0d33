//! Task modules on the native worker: the user's own code, as one WebAssembly module that
//! the coordinator names in its welcome (see [`distchan_protocol::module`]).
//!
//! - `fetch`: the module's bytes, from the on-disk cache or the coordinator, checked against
//!   the announced SHA-256.
//! - `runtime`: wasmtime: the module compiled once with its limits and pre-instantiated; one
//!   job's run in the sandbox under either ABI (a fresh instance per job, or a reused reactor).
//! - `pool`: the threads that run the jobs, fed in batches by the connection task.

mod fetch;
mod pool;
mod runtime;

pub use fetch::default_cache_dir;
pub(crate) use pool::{Done, ModulePool, Source};
