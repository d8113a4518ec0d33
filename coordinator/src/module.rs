//! [`TaskModule`]: the user's own code, as one WebAssembly module, for every worker to run.
//!
//! A coordinator given a module (see [`Builder::module`](crate::Builder::module)) serves its
//! bytes at `/modules/<sha256>.wasm` (immutable, so browsers and proxies may cache it) and
//! names it in every welcome; each worker fetches it once, checks the hash and runs every
//! job through it. The module is checked here when it is loaded, so a module no worker could
//! run is refused before any worker connects.
//!
//! Jobs and results keep their types: with the default [`ModuleIo::Json`] a job is given to
//! the module as JSON text and the module's output (one JSON value) is the result, so any
//! `J: Serialize` and `R: DeserializeOwned` that JSON can carry work on the typed channels.
//!
//! ```no_run
//! use distchan_coordinator::{Coordinator, TaskModule};
//!
//! # async fn demo() -> Result<(), distchan_coordinator::Error> {
//! let module = TaskModule::from_file("target/wasm32-wasip1/release/wordfreq.wasm")?;
//! let (coordinator, jobs, mut results) = Coordinator::builder()
//!     .module(module)
//!     .bind::<String, std::collections::BTreeMap<String, u64>>("127.0.0.1:8080")
//!     .await?;
//! jobs.send("the cat and the hat".to_string()).await?;
//! drop(jobs);
//! while let Some(outcome) = results.recv().await {
//!     println!("{:?}", outcome.result); // Ok({"and": 1, "cat": 1, "hat": 1, "the": 2})
//! }
//! # drop(coordinator);
//! # Ok(()) }
//! ```

use std::{fmt, path::Path};

use bytes::Bytes;
use distchan_protocol::{
    module::{self, Abi, Limits, ModuleError, ModuleIo, ModuleSpec, PAGE_SIZE, WASI_MODULE},
    Error,
};

/// A WebAssembly task module (a WASI preview1 command or reactor), checked and addressed by
/// its SHA-256. Cheap to clone.
#[derive(Clone)]
pub struct TaskModule {
    name: String,
    bytes: Bytes,
    sha256: String,
    abi: Abi,
    io: ModuleIo,
    min_memory: u64,
}

impl fmt::Debug for TaskModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskModule")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("size", &self.bytes.len())
            .field("abi", &self.abi)
            .field("io", &self.io)
            .finish()
    }
}

impl TaskModule {
    /// Loads a module from a `.wasm` file (or a `.wat` text file, converted here).
    ///
    /// Fails with [`Error::Io`] when the file cannot be read and [`Error::Module`] when it
    /// is not a module a worker can run.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TaskModule, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("reading the task module {}: {e}", path.display()),
            ))
        })?;
        let name = path
            .file_name()
            .map_or_else(|| "module".into(), |n| n.to_string_lossy().into_owned());
        TaskModule::from_bytes(name, bytes)
    }

    /// A module from its bytes: a WebAssembly binary or the text format. `name` is shown to
    /// people (volunteers see it on the page).
    pub fn from_bytes(
        name: impl Into<String>,
        bytes: impl AsRef<[u8]>,
    ) -> Result<TaskModule, Error> {
        let invalid = |what: String| Error::Module(ModuleError::Invalid(what));
        let binary = wat::parse_bytes(bytes.as_ref())
            .map_err(|e| invalid(format!("neither a WebAssembly binary nor valid text: {e}")))?
            .into_owned();
        let checked = check(&binary).map_err(invalid)?;
        Ok(TaskModule {
            name: name.into(),
            sha256: module::sha256_hex(&binary),
            bytes: binary.into(),
            abi: checked.abi,
            io: ModuleIo::default(),
            min_memory: checked.min_memory,
        })
    }

    /// Sets how jobs and results are given to the module (builder style); JSON by default.
    pub fn io(mut self, io: ModuleIo) -> Self {
        self.io = io;
        self
    }

    /// The name shown to people.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the module, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The module's bytes (a binary, also when it was loaded from text).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How the module answers jobs (from its exports).
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// How jobs and results are given to the module.
    pub fn module_io(&self) -> ModuleIo {
        self.io
    }

    /// What the welcome says about this module, with the per-job `limits`.
    ///
    /// Fails when the module starts with more memory than the limit allows: no job could
    /// ever run.
    pub(crate) fn spec(&self, limits: Limits) -> Result<ModuleSpec, Error> {
        if self.min_memory > limits.memory_bytes {
            return Err(Error::Module(ModuleError::Invalid(format!(
                "{} starts with {} MiB of memory, more than the limit of {} MiB",
                self.name,
                self.min_memory >> 20,
                limits.memory_bytes >> 20
            ))));
        }
        Ok(ModuleSpec {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            size: self.bytes.len() as u64,
            path: module::module_path(&self.sha256),
            io: self.io,
            limits,
        })
    }
}

/// What loading learnt about a module.
struct Checked {
    abi: Abi,
    /// Bytes of memory it starts with.
    min_memory: u64,
}

/// Validates `wasm` and checks that it is a task module: WASI preview1 imports only, one of
/// the two ABIs exported.
fn check(wasm: &[u8]) -> Result<Checked, String> {
    wasmparser::Validator::new()
        .validate_all(wasm)
        .map_err(|e| format!("invalid WebAssembly: {e}"))?;
    let mut exports = Vec::new();
    let mut min_memory = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            wasmparser::Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    if import.module != WASI_MODULE {
                        return Err(format!(
                            "it imports `{}` from `{}`; a task module may import only from `{WASI_MODULE}`",
                            import.name, import.module
                        ));
                    }
                }
            }
            wasmparser::Payload::MemorySection(memories) => {
                for memory in memories {
                    let memory = memory.map_err(|e| e.to_string())?;
                    min_memory = min_memory.max(memory.initial.saturating_mul(PAGE_SIZE));
                }
            }
            wasmparser::Payload::ExportSection(section) => {
                for export in section {
                    exports.push(export.map_err(|e| e.to_string())?.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let abi = Abi::detect(exports.iter().map(String::as_str)).map_err(|e| e.to_string())?;
    Ok(Checked { abi, min_memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
        (memory (export "memory") 1)
        (func (export "_start")))"#;

    #[test]
    fn text_and_binary_load_to_the_same_module() {
        let text = TaskModule::from_bytes("echo.wat", ECHO).unwrap();
        assert_eq!(text.abi(), Abi::Command);
        let binary = TaskModule::from_bytes("echo.wasm", text.bytes()).unwrap();
        assert_eq!(binary.sha256(), text.sha256());
        assert_eq!(text.sha256(), module::sha256_hex(text.bytes()));
        let spec = text.spec(Limits::default()).unwrap();
        assert_eq!(spec.path, format!("/modules/{}.wasm", text.sha256()));
        assert_eq!(spec.size, text.bytes().len() as u64);
    }

    #[test]
    fn modules_no_worker_could_run_are_refused() {
        let cases = [
            (
                "garbage",
                &b"\0asm\x01\0\0\0\x01"[..],
                "invalid WebAssembly",
            ),
            ("not wasm", b"hello", "neither a WebAssembly binary"),
            (
                "env import",
                br#"(module (import "env" "f" (func)) (func (export "_start")))"#,
                "may import only",
            ),
            (
                "no entry",
                b"(module (func (export \"main\")))",
                "neither `_start`",
            ),
        ];
        for (name, bytes, why) in cases {
            let err = TaskModule::from_bytes(name, bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn a_module_larger_than_the_memory_limit_is_refused() {
        let big = TaskModule::from_bytes(
            "big",
            r#"(module (memory (export "memory") 32) (func (export "_start")))"#,
        )
        .unwrap();
        let limits = Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        };
        let err = big.spec(limits).unwrap_err().to_string();
        assert!(err.contains("starts with 2 MiB"), "{err}");
    }
}
