//! The distchan protocol: everything a coordinator and its workers must agree on.
//!
//! This crate has no I/O and no runtime (but for the native-only `io` feature's socket
//! adapter), so it compiles for native targets and for
//! `wasm32-unknown-unknown` alike. Both workers (native and browser) drive the same
//! [`session::WorkerSession`], so their behaviour cannot drift apart.
//!
//! # Layout
//!
//! - [`wire`]: every message that crosses the WebSocket, one MessagePack value per binary
//!   message, plus the protocol version and its WebSocket subprotocol name.
//! - [`transform`]: the payload transform chain (the Go package's encoders and decoders),
//!   with AES-256-GCM built in.
//! - [`payload`]: typed values to payload bytes and back (serde, MessagePack, transforms).
//! - [`pool`]: buffers for large frames, reused instead of mapped afresh for each one.
//! - `read_ahead` (feature `io`, native only): reads a busy socket in large pieces under a
//!   WebSocket that keeps a small buffer, and large binary messages past the WebSocket into
//!   buffers of their own; the coordinator and the native worker both use it.
//! - [`session`]: the worker-side state machine: hello, welcome or refusal, jobs, results,
//!   end of work, and what a close from the coordinator means; the close code and reason
//!   either side sends for an error.
//! - [`accept`]: the coordinator's side of the handshake: which hellos it accepts (version,
//!   origin, token, capacity) and which subprotocol it answers with.
//! - [`module`]: task modules, the user's own code as WebAssembly: the spec a welcome
//!   carries, hash checks, the two ABIs, and what a run's facts mean as a job's outcome.
//! - [`tasks`]: built-in demo tasks (capitalize, add, Mandelbrot tiles) that every worker can run.
//! - [`error`]: the error type of the protocol, the transport and setup, shared by every
//!   crate (a job's own failure is the coordinator's `JobError`).
//! - `logging` (feature `logging`, for the binaries only): their log setup and
//!   `--log-format` flag, the one place where anything here writes (to standard error).
//!
//! # Example
//!
//! ```
//! use distchan_protocol::{payload, transform::{Aes256GcmTransform, TransformChain}};
//!
//! let chain = TransformChain::new().with(Aes256GcmTransform::new(&[7; 32]));
//! let bytes = payload::encode(&"why hello there", &chain)?;
//! let back: String = payload::decode(bytes, &chain)?;
//! assert_eq!(back, "why hello there");
//! # Ok::<(), distchan_protocol::Error>(())
//! ```
#![warn(missing_docs)]

pub mod accept;
pub mod error;
#[cfg(feature = "logging")]
pub mod logging;
pub mod module;
pub mod payload;
pub mod pool;
#[cfg(all(feature = "io", not(target_arch = "wasm32")))]
pub mod read_ahead;
pub mod session;
#[cfg(feature = "tasks")]
pub mod tasks;
pub mod transform;
pub mod wire;

pub use error::Error;
pub use wire::JobId;

/// Convenience alias for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
