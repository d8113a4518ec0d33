//! Task modules: the user's own code, as one WebAssembly module, run by every worker.
//!
//! A task module is a WASI preview1 program (any language that targets `wasm32-wasip1`):
//! the coordinator serves it at an immutable URL named by its SHA-256 ([`ModuleSpec`], in
//! the welcome), each worker fetches it once, checks the hash ([`check_hash`]), compiles it
//! once and runs every job through it, sandboxed: no files, no environment, no network,
//! a memory limit and a time limit per job. The native worker runs it with wasmtime, a
//! browser tab with the browser's own WebAssembly; what a run's facts mean ([`outcome`]) is
//! decided here, once, so both agree byte for byte.
//!
//! # The two ways a module answers a job
//!
//! - **Command** (the portable default): the module exports `_start` (a normal `main`). Each
//!   job runs in a fresh instance: the job is the module's standard input, the result its
//!   standard output, and exit code 0 means success. Nothing leaks from one job to the next.
//! - **Reactor** (for small jobs, where a fresh instance per job costs more than the job):
//!   the module exports `distchan_alloc(len: i32) -> i32` and
//!   `distchan_run(ptr: i32, len: i32) -> i64` (and `memory`, and `_initialize` when it has
//!   one, called once). For each job the worker asks `distchan_alloc` for `len` bytes, writes
//!   the job there and calls `distchan_run` on them; the module owns that buffer from then on
//!   (it frees it). The `i64` it returns is [`unpack_reactor`]'s: bits 0..32 the length and
//!   bits 32..63 the address of the output, which stays valid until the next call, and
//!   bit 63 set when the output is an error message (UTF-8) instead of a result. One
//!   instance serves many jobs; it is replaced after a trap, a timeout, or
//!   [`REACTOR_JOBS_PER_INSTANCE`] jobs. A module exporting both is run as a reactor.
//!
//! # What a module reads and writes
//!
//! With [`ModuleIo::Json`] (the default) a job's value arrives as JSON text and the module
//! must write exactly one JSON value; with [`ModuleIo::Bytes`] a job is a byte string and
//! the module's output is passed back as one. Jobs travel as MessagePack between the
//! coordinator and the workers like every other payload; [`module_input`] and [`outcome`]
//! convert at the worker.
//!
//! ```
//! use distchan_protocol::{module::{self, ModuleIo, Run, Ending}, payload};
//!
//! let job = payload::to_msgpack(&vec![1, 2, 3])?;
//! assert_eq!(module::module_input(ModuleIo::Json, &job).unwrap(), b"[1,2,3]");
//! // The module printed `6`: the result is the MessagePack of 6.
//! let run = Run { ending: Ending::Exited(0), stdout: b"6\n".to_vec(), stderr: vec![] };
//! let result = module::outcome(ModuleIo::Json, run, &module::Limits::default()).unwrap();
//! assert_eq!(payload::from_msgpack::<u32>(&result)?, 6);
//! # Ok::<(), distchan_protocol::Error>(())
//! ```

use std::fmt::{self, Write as _};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::Outcome;

/// The import module name of WASI preview1, the only imports a task module may have.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// A command module's entry point.
pub const EXPORT_START: &str = "_start";
/// A reactor's one-time initialiser (optional).
pub const EXPORT_INITIALIZE: &str = "_initialize";
/// A reactor's allocator for the job's bytes.
pub const EXPORT_ALLOC: &str = "distchan_alloc";
/// A reactor's per-job entry point.
pub const EXPORT_RUN: &str = "distchan_run";
/// The module's memory, which a reactor must export.
pub const EXPORT_MEMORY: &str = "memory";
/// Jobs one reactor instance serves before a fresh one replaces it.
pub const REACTOR_JOBS_PER_INSTANCE: u32 = 10_000;
/// Bytes of a failing module's standard error quoted in its error result.
pub const STDERR_QUOTED: usize = 512;
/// Bytes of WebAssembly memory in a page.
pub const PAGE_SIZE: u64 = 64 * 1024;

/// How a job's value and a module's output are represented to the module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleIo {
    /// Standard input is the job as JSON text; standard output must be one JSON value.
    #[default]
    Json,
    /// Standard input is the job's bytes (a MessagePack `bin` or `str`); the output is
    /// returned as a byte string.
    Bytes,
}

impl fmt::Display for ModuleIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleIo::Json => "json",
            ModuleIo::Bytes => "bytes",
        })
    }
}

/// The per-job limits a worker enforces on a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Largest linear memory of an instance, in bytes.
    pub memory_bytes: u64,
    /// Longest time one job may run, in milliseconds.
    pub timeout_ms: u64,
    /// Largest standard output of one job, in bytes.
    pub max_output: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            timeout_ms: 30_000,
            max_output: 16 << 20,
        }
    }
}

/// The module a coordinator's jobs are for, as its welcome names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleSpec {
    /// A name to show people (the file name it was loaded from).
    pub name: String,
    /// SHA-256 of the module's bytes, lower-case hex: its identity.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
    /// Where the coordinator serves it, relative to the coordinator's address
    /// (`/modules/<sha256>.wasm`).
    pub path: String,
    /// How jobs and results are represented to the module.
    #[serde(default)]
    pub io: ModuleIo,
    /// The limits every job runs under.
    pub limits: Limits,
}

impl ModuleSpec {
    /// The first 12 hex digits of the hash, enough to tell modules apart on a screen.
    pub fn short_hash(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }
}

/// The URL path at which a coordinator serves the module with hash `sha256`.
pub fn module_path(sha256: &str) -> String {
    format!("/modules/{sha256}.wasm")
}

/// The HTTP address of a coordinator's `path` (such as [`ModuleSpec::path`]), from the
/// WebSocket URL a worker connects to: `ws://` becomes `http://` and `wss://` `https://`.
///
/// ```
/// use distchan_protocol::module::module_url;
/// assert_eq!(
///     module_url("wss://example.org:8443/ws", "/modules/ab.wasm").unwrap(),
///     "https://example.org:8443/modules/ab.wasm"
/// );
/// ```
pub fn module_url(ws_url: &str, path: &str) -> Result<String, ModuleError> {
    let (scheme, rest) = ws_url
        .split_once("://")
        .ok_or_else(|| ModuleError::Invalid(format!("{ws_url:?} is not a URL")))?;
    let http = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => {
            return Err(ModuleError::Invalid(format!(
                "cannot fetch a module over `{other}`"
            )))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(ModuleError::Invalid(format!("{ws_url:?} names no host")));
    }
    Ok(format!("{http}://{authority}{path}"))
}

/// What can be wrong with a module's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The bytes fetched are not the module the coordinator named.
    #[error("the module's SHA-256 is {actual}, not the {expected} the coordinator announced")]
    HashMismatch {
        /// The hash announced.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// The bytes are not a module a worker can run.
    #[error("not a usable task module: {0}")]
    Invalid(String),
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Checks that `bytes` are the module whose hash is `expected`.
pub fn check_hash(expected: &str, bytes: &[u8]) -> Result<(), ModuleError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ModuleError::HashMismatch {
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// How a module answers jobs, from the names it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// `_start`: a fresh instance per job, the job on standard input.
    Command,
    /// `distchan_alloc` and `distchan_run`: one instance for many jobs.
    Reactor,
}

impl Abi {
    /// The ABI of a module exporting `exports`; a reactor wins when both are there.
    pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str>) -> Result<Abi, ModuleError> {
        let (mut start, mut alloc, mut run, mut memory) = (false, false, false, false);
        for name in exports {
            match name {
                EXPORT_START => start = true,
                EXPORT_ALLOC => alloc = true,
                EXPORT_RUN => run = true,
                EXPORT_MEMORY => memory = true,
                _ => {}
            }
        }
        match (alloc && run, start) {
            (true, _) if memory => Ok(Abi::Reactor),
            (true, _) => Err(ModuleError::Invalid(format!(
                "a reactor module must export its `{EXPORT_MEMORY}`"
            ))),
            (false, true) => Ok(Abi::Command),
            (false, false) => Err(ModuleError::Invalid(format!(
                "the module exports neither `{EXPORT_START}` (a WASI command) nor `{EXPORT_ALLOC}` \
                 and `{EXPORT_RUN}` (a reactor)"
            ))),
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Abi::Command => "command",
            Abi::Reactor => "reactor",
        })
    }
}

/// What a reactor's `distchan_run` returned: the output's place in memory, and whether it is
/// an error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorOutput {
    /// Address of the output in the module's memory.
    pub ptr: u32,
    /// Length of the output.
    pub len: u32,
    /// True when the output is an error message rather than a result.
    pub failed: bool,
}

/// Splits `distchan_run`'s return value (see the [module docs](self)).
pub fn unpack_reactor(packed: i64) -> ReactorOutput {
    let bits = packed as u64;
    ReactorOutput {
        ptr: ((bits >> 32) & 0x7fff_ffff) as u32,
        len: bits as u32,
        failed: bits >> 63 == 1,
    }
}

/// Packs a reactor's output the way `distchan_run` returns it (for modules written in Rust
/// and for tests).
pub fn pack_reactor(ptr: u32, len: u32, failed: bool) -> i64 {
    ((u64::from(failed) << 63) | (u64::from(ptr & 0x7fff_ffff) << 32) | u64::from(len)) as i64
}

/// The bytes a module reads for a job whose plain MessagePack payload is `payload`.
///
/// Fails, with a message fit for the job's error result, when the job cannot be represented:
/// a MessagePack map with keys that are not strings as JSON, or anything but a byte or text
/// string as bytes.
pub fn module_input(io: ModuleIo, payload: &[u8]) -> Result<Vec<u8>, String> {
    match io {
        ModuleIo::Json => {
            let mut out = Vec::with_capacity(payload.len() + 16);
            let mut de = rmp_serde::Deserializer::from_read_ref(payload);
            serde_transcode::transcode(&mut de, &mut serde_json::Serializer::new(&mut out))
                .map_err(|e| format!("the job cannot be given to the module as JSON: {e}"))?;
            Ok(out)
        }
        ModuleIo::Bytes => {
            let value: serde_bytes::ByteBuf = rmp_serde::from_slice(payload).map_err(|e| {
                format!("the module takes bytes; the job is not a byte or text string: {e}")
            })?;
            Ok(value.into_vec())
        }
    }
}

/// How a module's run for one job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A command exited with this code (`_start` returning is 0).
    Exited(i32),
    /// A reactor returned its output.
    Returned,
    /// A reactor returned an error message.
    Failed(String),
    /// The module trapped (a WebAssembly runtime error), with the engine's message.
    Trapped(String),
    /// The job ran past its time limit and was stopped.
    TimedOut,
    /// The module asked for more memory than its limit.
    OutOfMemory,
    /// The module wrote more than the output limit.
    OutputTooLarge,
    /// The module could not start (instantiation failed), with the reason.
    NotStarted(String),
}

/// The facts of one job's run, as a worker observed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// How it ended.
    pub ending: Ending,
    /// What it wrote to standard output (a reactor: its output).
    pub stdout: Vec<u8>,
    /// What it wrote to standard error.
    pub stderr: Vec<u8>,
}

/// The job's outcome from the facts of its run: the result as plain MessagePack, or an error
/// message that says what went wrong (quoting the module's standard error when it failed).
pub fn outcome(io: ModuleIo, run: Run, limits: &Limits) -> Outcome {
    let failure = match run.ending {
        Ending::Exited(0) | Ending::Returned => {
            return output_payload(io, &run.stdout).map(Bytes::from);
        }
        Ending::Exited(code) => format!("the module exited with code {code}"),
        Ending::Failed(message) => format!("the module failed: {}", message.trim()),
        Ending::Trapped(message) => format!("the module trapped: {}", first_line(&message)),
        Ending::TimedOut => format!(
            "the module ran past its time limit of {} ms and was stopped",
            limits.timeout_ms
        ),
        Ending::OutOfMemory => format!(
            "the module needed more memory than its limit of {} MiB",
            limits.memory_bytes >> 20
        ),
        Ending::OutputTooLarge => format!(
            "the module wrote more than the output limit of {} bytes",
            limits.max_output
        ),
        Ending::NotStarted(reason) => format!("the module could not start: {reason}"),
    };
    Err(with_stderr(failure, &run.stderr))
}

/// The result payload for a successful run's output.
fn output_payload(io: ModuleIo, stdout: &[u8]) -> Result<Vec<u8>, String> {
    match io {
        ModuleIo::Json => {
            let mut out = Vec::with_capacity(stdout.len());
            let mut de = serde_json::Deserializer::from_slice(stdout);
            let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
            let not_json = |e: &dyn fmt::Display| {
                format!(
                    "the module's output is not one JSON value ({e}); it began with {:?}",
                    String::from_utf8_lossy(&stdout[..stdout.len().min(80)])
                )
            };
            serde_transcode::transcode(&mut de, &mut ser).map_err(|e| not_json(&e))?;
            de.end().map_err(|e| not_json(&e))?;
            Ok(out)
        }
        ModuleIo::Bytes => rmp_serde::to_vec(serde_bytes::Bytes::new(stdout))
            .map_err(|e| format!("the module's output could not be encoded: {e}")),
    }
}

fn first_line(message: &str) -> &str {
    message.trim().lines().next().unwrap_or("")
}

/// `failure`, followed by the end of `stderr` when the module wrote any.
fn with_stderr(mut failure: String, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if !text.is_empty() {
        let mut start = text.len().saturating_sub(STDERR_QUOTED);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let cut = if start > 0 { "…" } else { "" };
        let _ = write!(failure, "; it wrote to stderr: {cut}{}", &text[start..]);
    }
    failure
}

/// A copy of the module `wasm` whose memories may grow to at most `max_bytes`, for engines
/// that cannot limit growth themselves (a browser's WebAssembly). The module's own maximum
/// is kept when it is lower.
///
/// Fails when a memory's initial size is already above the limit, or when `wasm` is not a
/// WebAssembly binary.
pub fn cap_memory(wasm: &[u8], max_bytes: u64) -> Result<Vec<u8>, ModuleError> {
    const MEMORY_SECTION: u8 = 5;
    let invalid = |what: &str| ModuleError::Invalid(what.to_owned());
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(invalid("not a WebAssembly binary (no `\\0asm` header)"));
    }
    let cap_pages = max_bytes / PAGE_SIZE;
    let mut out = Vec::with_capacity(wasm.len() + 16);
    out.extend_from_slice(&wasm[..8]);
    let mut pos = 8;
    while pos < wasm.len() {
        let id = wasm[pos];
        let (size, n) = read_leb(&wasm[pos + 1..]).ok_or_else(|| invalid("a section size"))?;
        let start = pos + 1 + n;
        let end = start
            .checked_add(size as usize)
            .filter(|&end| end <= wasm.len())
            .ok_or_else(|| invalid("a section runs past the end"))?;
        if id == MEMORY_SECTION {
            let body = cap_memory_section(&wasm[start..end], cap_pages, max_bytes)?;
            out.push(id);
            write_leb(&mut out, body.len() as u64);
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(&wasm[pos..end]);
        }
        pos = end;
    }
    Ok(out)
}

/// The memory section `body` with every maximum at most `cap_pages`.
fn cap_memory_section(body: &[u8], cap_pages: u64, max_bytes: u64) -> Result<Vec<u8>, ModuleError> {
    let invalid = |what: &str| ModuleError::Invalid(format!("memory section: {what}"));
    let (count, mut pos) = read_leb(body).ok_or_else(|| invalid("count"))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    write_leb(&mut out, count);
    for _ in 0..count {
        let flags = *body.get(pos).ok_or_else(|| invalid("limits"))?;
        pos += 1;
        // Bit 0: a maximum follows; bit 1: shared; bit 2: 64-bit; bit 3: custom page size.
        if flags & !0b111 != 0 {
            return Err(invalid("memories with custom page sizes are not supported"));
        }
        let (min, n) = read_leb(&body[pos..]).ok_or_else(|| invalid("minimum"))?;
        pos += n;
        let max = if flags & 1 == 1 {
            let (max, n) = read_leb(&body[pos..]).ok_or_else(|| invalid("maximum"))?;
            pos += n;
            Some(max)
        } else {
            None
        };
        if min > cap_pages {
            return Err(ModuleError::Invalid(format!(
                "the module starts with {} MiB of memory, more than the limit of {} MiB",
                (min * PAGE_SIZE) >> 20,
                max_bytes >> 20
            )));
        }
        out.push(flags | 1);
        write_leb(&mut out, min);
        write_leb(&mut out, max.map_or(cap_pages, |m| m.min(cap_pages)));
    }
    if pos != body.len() {
        return Err(invalid("trailing bytes"));
    }
    Ok(out)
}

/// Reads an unsigned LEB128 number: its value and length.
fn read_leb(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload;

    #[test]
    fn hashes_are_checked() {
        let hash = sha256_hex(b"abc");
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_hash(&hash, b"abc").is_ok());
        assert!(matches!(
            check_hash(&hash, b"abd"),
            Err(ModuleError::HashMismatch { .. })
        ));
    }

    #[test]
    fn module_urls_follow_the_websocket_url() {
        assert_eq!(
            module_url("ws://127.0.0.1:8080/ws?x=1", "/modules/a.wasm").unwrap(),
            "http://127.0.0.1:8080/modules/a.wasm"
        );
        assert_eq!(module_url("WSS://h", "/m").unwrap(), "https://h/m");
        assert!(module_url("ftp://h/ws", "/m").is_err());
        assert!(module_url("ws:///ws", "/m").is_err());
        assert!(module_url("nonsense", "/m").is_err());
    }

    #[test]
    fn the_abi_follows_the_exports() {
        assert_eq!(Abi::detect(["_start", "memory"]), Ok(Abi::Command));
        assert_eq!(
            Abi::detect(["_start", "memory", "distchan_alloc", "distchan_run"]),
            Ok(Abi::Reactor)
        );
        assert!(Abi::detect(["distchan_alloc", "distchan_run"]).is_err());
        let err = Abi::detect(["memory", "main"]).unwrap_err();
        assert!(err.to_string().contains("neither `_start`"), "{err}");
    }

    #[test]
    fn reactor_outputs_pack_and_unpack() {
        for (ptr, len, failed) in [
            (0, 0, false),
            (1024, 7, true),
            (0x7fff_ffff, u32::MAX, false),
        ] {
            let packed = pack_reactor(ptr, len, failed);
            assert_eq!(unpack_reactor(packed), ReactorOutput { ptr, len, failed });
        }
        assert!(pack_reactor(8, 1, true) < 0, "bit 63 is the sign bit");
    }

    #[test]
    fn json_jobs_and_results_cross_as_text() {
        #[derive(Serialize)]
        struct Job {
            text: &'static str,
            n: i64,
        }
        let job = payload::to_msgpack(&Job { text: "hé", n: -3 }).unwrap();
        let input = module_input(ModuleIo::Json, &job).unwrap();
        assert_eq!(input, "{\"text\":\"hé\",\"n\":-3}".as_bytes());
        let run = Run {
            ending: Ending::Exited(0),
            stdout: b" {\"a\": [1, 2.5, null]}\n".to_vec(),
            stderr: b"warnings are fine".to_vec(),
        };
        let result = outcome(ModuleIo::Json, run, &Limits::default()).unwrap();
        let back: serde_json::Value = payload::from_msgpack(&result).unwrap();
        assert_eq!(back, serde_json::json!({"a": [1, 2.5, null]}));
    }

    #[test]
    fn output_that_is_not_one_json_value_is_an_error() {
        for stdout in [&b"hello"[..], b"1 2", b"", b"{\"a\":"] {
            let run = Run {
                ending: Ending::Exited(0),
                stdout: stdout.to_vec(),
                stderr: Vec::new(),
            };
            let err = outcome(ModuleIo::Json, run, &Limits::default()).unwrap_err();
            assert!(err.contains("not one JSON value"), "{err}");
        }
    }

    #[test]
    fn bytes_jobs_and_results_cross_unchanged() {
        let job = rmp_serde::to_vec(serde_bytes::Bytes::new(&[0, 159, 255])).unwrap();
        assert_eq!(
            module_input(ModuleIo::Bytes, &job).unwrap(),
            vec![0, 159, 255]
        );
        let text = payload::to_msgpack("abc").unwrap();
        assert_eq!(
            module_input(ModuleIo::Bytes, &text).unwrap(),
            b"abc".to_vec()
        );
        assert!(module_input(ModuleIo::Bytes, &payload::to_msgpack(&5).unwrap()).is_err());
        let run = Run {
            ending: Ending::Returned,
            stdout: vec![1, 2],
            stderr: Vec::new(),
        };
        let result = outcome(ModuleIo::Bytes, run, &Limits::default()).unwrap();
        let back: serde_bytes::ByteBuf = payload::from_msgpack(&result).unwrap();
        assert_eq!(back.into_vec(), vec![1, 2]);
    }

    #[test]
    fn failures_say_why_and_quote_stderr() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            timeout_ms: 250,
            max_output: 10,
        };
        let fail = |ending, stderr: &[u8]| {
            outcome(
                ModuleIo::Json,
                Run {
                    ending,
                    stdout: b"42".to_vec(),
                    stderr: stderr.to_vec(),
                },
                &limits,
            )
            .unwrap_err()
        };
        assert_eq!(
            fail(Ending::Exited(3), b"bad input\n"),
            "the module exited with code 3; it wrote to stderr: bad input"
        );
        assert_eq!(
            fail(Ending::TimedOut, b""),
            "the module ran past its time limit of 250 ms and was stopped"
        );
        assert!(fail(Ending::OutOfMemory, b"").contains("limit of 64 MiB"));
        assert!(fail(Ending::Trapped("unreachable\nbacktrace".into()), b"")
            .ends_with("trapped: unreachable"));
        assert_eq!(
            fail(Ending::Failed("no words ".into()), b""),
            "the module failed: no words"
        );
        let long = "é".repeat(1000);
        let quoted = fail(Ending::Exited(1), long.as_bytes());
        assert!(quoted.contains("…é") && quoted.len() < 700, "{quoted}");
    }

    /// A module with one memory of `min` pages and an optional maximum, and nothing else.
    fn memory_module(min: u8, max: Option<u8>) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let limits = match max {
            Some(max) => vec![1, min, max],
            None => vec![0, min],
        };
        m.push(5);
        m.push(1 + limits.len() as u8);
        m.push(1);
        m.extend_from_slice(&limits);
        m.extend_from_slice(&[0, 3, 1, b'x', 0]); // a custom section after it
        m
    }

    #[test]
    fn memory_is_capped_for_browsers() {
        let four_pages = 4 * PAGE_SIZE;
        let capped = cap_memory(&memory_module(1, None), four_pages).unwrap();
        assert_eq!(capped, {
            let mut m = b"\0asm\x01\0\0\0".to_vec();
            m.extend_from_slice(&[5, 4, 1, 1, 1, 4]);
            m.extend_from_slice(&[0, 3, 1, b'x', 0]);
            m
        });
        // A lower maximum of the module's own stays.
        let capped = cap_memory(&memory_module(1, Some(2)), four_pages).unwrap();
        assert_eq!(&capped[8..14], &[5, 4, 1, 1, 1, 2]);
        let capped = cap_memory(&memory_module(1, Some(100)), four_pages).unwrap();
        assert_eq!(&capped[8..14], &[5, 4, 1, 1, 1, 4]);
        let err = cap_memory(&memory_module(5, None), four_pages).unwrap_err();
        assert!(err.to_string().contains("starts with"), "{err}");
        assert!(cap_memory(b"not wasm", four_pages).is_err());
        let mut truncated = memory_module(1, None);
        truncated.truncate(11);
        assert!(cap_memory(&truncated, four_pages).is_err());
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0, 1, 127, 128, 300, 65_536, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_leb(&mut out, v);
            assert_eq!(read_leb(&out), Some((v, out.len())));
        }
    }
}
