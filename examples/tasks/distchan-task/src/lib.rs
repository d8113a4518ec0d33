//! Helpers for writing a distchan task module in Rust: one line turns a function into a
//! module that every distchan worker (native or a browser tab) can run.
//!
//! A task module needs no SDK: any WASI program that reads its job from standard input and
//! writes its result to standard output will do (see
//! [`distchan_protocol::module`]). This crate only saves the plumbing, for both ABIs:
//!
//! - [`command_json`] / [`command_bytes`]: the body of `main` for a **command** module (a
//!   fresh instance per job; the portable default).
//! - [`reactor_json!`] / [`reactor_bytes!`]: export `distchan_alloc` and `distchan_run` from a
//!   `cdylib` for a **reactor** module (one instance serves many jobs: much cheaper for
//!   small jobs).
//!
//! # Example
//!
//! ```no_run
//! // src/main.rs of a crate built with `cargo build --release --target wasm32-wasip1`:
//! fn shout(text: String) -> Result<String, String> {
//!     Ok(text.to_uppercase())
//! }
//!
//! fn main() {
//!     distchan_task::command_json(shout)
//! }
//! ```
//!
//! and the same function as a reactor, in the `src/lib.rs` of a `cdylib`:
//!
//! ```ignore
//! distchan_task::reactor_json!(shout);
//! ```
#![warn(missing_docs)]

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Serialize};

#[doc(hidden)]
pub use distchan_protocol::module::pack_reactor;

/// Answers one job given as JSON text: parses it as `I`, calls `f`, writes the result as
/// JSON; `Err` is the message of the job's error result.
pub fn answer_json<I, O>(
    input: &[u8],
    f: impl FnOnce(I) -> Result<O, String>,
) -> Result<Vec<u8>, String>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let job: I = serde_json::from_slice(input)
        .map_err(|e| format!("the job is not what this task takes: {e}"))?;
    let result = f(job)?;
    serde_json::to_vec(&result).map_err(|e| format!("the result cannot be written as JSON: {e}"))
}

/// The body of a command module's `main` for a function of typed values: reads the job (one
/// JSON value) from standard input, writes the result as JSON to standard output, and on
/// `Err` writes the message to standard error and exits with code 1 (the job's error result
/// then quotes it).
pub fn command_json<I, O>(f: impl FnOnce(I) -> Result<O, String>)
where
    I: DeserializeOwned,
    O: Serialize,
{
    command_bytes(|input| answer_json(input, f))
}

/// The body of a command module's `main` for a function of bytes: standard input in,
/// standard output out; on `Err` the message goes to standard error and the exit code is 1.
pub fn command_bytes(f: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) {
    let mut input = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the job: {e}"))
        .and_then(|_| f(&input));
    match outcome {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout.write_all(&output).and_then(|()| stdout.flush()) {
                eprintln!("writing the result: {e}");
                std::process::exit(1);
            }
        }
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}

/// Support for the reactor macros: the job buffer handed out by `distchan_alloc`, and the
/// output kept alive until the next job.
#[doc(hidden)]
pub mod reactor {
    use std::cell::RefCell;

    thread_local! {
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `len` bytes for the next job; `distchan_run` takes it back.
    pub fn alloc(len: i32) -> i32 {
        let buf = vec![0u8; len.max(0) as usize].into_boxed_slice();
        Box::into_raw(buf) as *mut u8 as usize as i32
    }

    /// Runs `f` on the job at `ptr` (from [`alloc`]), keeps its output and returns it packed.
    ///
    /// # Safety
    /// `ptr` and `len` must be what [`alloc`] returned and was given.
    pub unsafe fn run(ptr: i32, len: i32, f: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> i64 {
        let slice =
            std::ptr::slice_from_raw_parts_mut(ptr as usize as *mut u8, len.max(0) as usize);
        // SAFETY: the caller passes back the buffer `alloc` leaked, with its length.
        let job = unsafe { Box::from_raw(slice) };
        let (bytes, failed) = match f(&job) {
            Ok(out) => (out, false),
            Err(message) => (message.into_bytes(), true),
        };
        drop(job);
        OUTPUT.with(|out| {
            let mut out = out.borrow_mut();
            *out = bytes;
            crate::pack_reactor(out.as_ptr() as usize as u32, out.len() as u32, failed)
        })
    }
}

/// Exports `distchan_alloc` and `distchan_run` from a `cdylib`, answering each job (JSON
/// text) with a function `fn(I) -> Result<O, String>` of serde types.
#[macro_export]
macro_rules! reactor_json {
    ($f:path) => {
        $crate::reactor_bytes!(|input: &[u8]| $crate::answer_json(input, $f));
    };
}

/// Exports `distchan_alloc` and `distchan_run` from a `cdylib`, answering each job with a
/// function `fn(&[u8]) -> Result<Vec<u8>, String>`.
#[macro_export]
macro_rules! reactor_bytes {
    ($f:expr) => {
        /// Hands out a buffer for the next job (the distchan reactor ABI).
        #[no_mangle]
        pub extern "C" fn distchan_alloc(len: i32) -> i32 {
            $crate::reactor::alloc(len)
        }

        /// Runs one job (the distchan reactor ABI).
        ///
        /// # Safety
        /// Called by the distchan worker with a buffer from `distchan_alloc`.
        #[no_mangle]
        pub unsafe extern "C" fn distchan_run(ptr: i32, len: i32) -> i64 {
            // SAFETY: the worker passes back what `distchan_alloc` returned.
            unsafe { $crate::reactor::run(ptr, len, $f) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_jobs_are_typed() {
        let out = answer_json(b"[1, 2, 3]", |v: Vec<u32>| {
            Ok::<_, String>(v.iter().sum::<u32>())
        });
        assert_eq!(out.unwrap(), b"6");
        let err = answer_json(b"\"text\"", |v: Vec<u32>| Ok::<_, String>(v.len())).unwrap_err();
        assert!(err.contains("not what this task takes"), "{err}");
        let err = answer_json(b"1", |_: u32| Err::<u32, _>("no".to_owned())).unwrap_err();
        assert_eq!(err, "no");
    }
}
