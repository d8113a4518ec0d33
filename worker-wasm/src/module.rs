//! Task modules in a browser: the module a welcome names is fetched from the coordinator,
//! checked against its SHA-256, given a memory maximum (the browser cannot limit growth any
//! other way) and compiled by the browser's own WebAssembly, once per thread; then each job
//! runs through the page's [`ModuleRuntime`], which holds the WASI preview1 shim.
//!
//! What a run's facts mean (exit code, trap, outputs) is decided by the protocol crate's
//! [`module::outcome`], the same function the native worker calls, so both report the same
//! results and the same kinds of errors. A job's time limit is enforced where a browser
//! can: a job that ran past it is reported as such, and a job that never returns is the
//! page's to stop (it ends the Web Worker; the coordinator hands the job to another worker).

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use distchan_protocol::{
    module::{self, Abi, Ending, ModuleError, ModuleSpec, Run, REACTOR_JOBS_PER_INSTANCE},
    wire::Outcome,
    Error,
};
use js_sys::{Array, Promise, Reflect, Uint8Array, WebAssembly};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::JsFuture;

use crate::convert::error_message;

#[wasm_bindgen(typescript_custom_section)]
const TS_RUNTIME: &'static str = r#"
/** What `runCommand` reports about one job's run of a command module. */
export interface TaskModuleCommandRun {
  /** The exit code (0 when `_start` returned), or null when the run trapped. */
  code: number | null;
  /** The trap's message when the module trapped (or could not start). */
  trap: string | null;
  /** True when the module wrote more than `maxOutput` bytes to standard output. */
  outputTooLarge: boolean;
  stdout: Uint8Array;
  stderr: Uint8Array;
  /** Size of the instance's memory at the end, in bytes. */
  memoryBytes: number;
  /**
   * True when the browser had no memory for a fresh instance just now (`new
   * WebAssembly.Instance` threw a RangeError about memory: the memories of earlier instances
   * are not yet collected). The job did not run; the worker tries it again a little later.
   */
  noRoom?: boolean;
}

/** One reused instance of a reactor module. */
export interface TaskModuleReactor {
  /** Hands `input` to `distchan_alloc` + `distchan_run`; returns `distchan_run`'s value. Throws on a trap. */
  call(input: Uint8Array): bigint;
  /** A copy of `len` bytes of the instance's memory at `ptr`. */
  read(ptr: number, len: number): Uint8Array;
  /** What the instance wrote to standard error since the last call. */
  takeStderr(): Uint8Array;
  /** Size of the instance's memory, in bytes. */
  memoryBytes(): number;
}

/**
 * Runs task modules for a `BrowserWorker` (give it as the `moduleRuntime` option): the page
 * owns the WASI shim. The volunteer page's `task-module.js` implements it with
 * `@bjorn3/browser_wasi_shim`: no arguments, no environment, no files, standard input, output
 * and error in memory.
 */
export interface TaskModuleRuntime {
  /** Runs a command module's `_start` in a fresh instance with `stdin` as standard input. */
  runCommand(module: WebAssembly.Module, stdin: Uint8Array, maxOutput: number): TaskModuleCommandRun;
  /** Instantiates a reactor module (and calls its `_initialize`). Throws when it cannot start. */
  startReactor(module: WebAssembly.Module): TaskModuleReactor;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// The page's runner of task modules (`TaskModuleRuntime` in the TypeScript
    /// declarations).
    #[wasm_bindgen(typescript_type = "TaskModuleRuntime")]
    #[derive(Debug, Clone)]
    pub type ModuleRuntime;
    #[wasm_bindgen(method, catch, js_name = runCommand)]
    fn run_command(
        this: &ModuleRuntime,
        module: &WebAssembly::Module,
        stdin: &[u8],
        max_output: f64,
    ) -> Result<CommandRun, JsValue>;
    #[wasm_bindgen(method, catch, js_name = startReactor)]
    fn start_reactor(
        this: &ModuleRuntime,
        module: &WebAssembly::Module,
    ) -> Result<Reactor, JsValue>;

    /// `TaskModuleCommandRun`.
    #[wasm_bindgen(typescript_type = "TaskModuleCommandRun")]
    #[derive(Debug)]
    type CommandRun;
    #[wasm_bindgen(method, getter)]
    fn code(this: &CommandRun) -> Option<i32>;
    #[wasm_bindgen(method, getter)]
    fn trap(this: &CommandRun) -> Option<String>;
    #[wasm_bindgen(method, getter, js_name = outputTooLarge)]
    fn output_too_large(this: &CommandRun) -> bool;
    #[wasm_bindgen(method, getter)]
    fn stdout(this: &CommandRun) -> Vec<u8>;
    #[wasm_bindgen(method, getter)]
    fn stderr(this: &CommandRun) -> Vec<u8>;
    #[wasm_bindgen(method, getter, js_name = memoryBytes)]
    fn memory_bytes(this: &CommandRun) -> f64;
    #[wasm_bindgen(method, getter, js_name = noRoom)]
    fn no_room(this: &CommandRun) -> Option<bool>;

    /// `TaskModuleReactor`.
    #[wasm_bindgen(typescript_type = "TaskModuleReactor")]
    #[derive(Debug)]
    type Reactor;
    #[wasm_bindgen(method, catch)]
    fn call(this: &Reactor, input: &[u8]) -> Result<i64, JsValue>;
    #[wasm_bindgen(method)]
    fn read(this: &Reactor, ptr: u32, len: u32) -> Vec<u8>;
    #[wasm_bindgen(method, js_name = takeStderr)]
    fn take_stderr(this: &Reactor) -> Vec<u8>;
    #[wasm_bindgen(method, js_name = memoryBytes)]
    fn memory_bytes(this: &Reactor) -> f64;

    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_request(request: &web_sys::Request) -> Promise;
}

/// A module compiled for this thread, by hash and memory limit.
type Compiled = HashMap<(String, u64), (WebAssembly::Module, Abi)>;

thread_local! {
    /// Modules compiled by this thread: a worker that joins again compiles nothing.
    static COMPILED: RefCell<Compiled> = RefCell::new(HashMap::new());
}

/// The browser had no memory for the fresh instance a job of a command module needs, just
/// now: the memories of instances that already ran are freed only when the garbage collector
/// of their thread gets to them, and until then each holds several GiB of address space. The
/// job did not run; it is tried again after a wait from [`RoomWaits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

/// The waits before trying again a job the browser had no room for: 5 ms, doubling up to
/// 1 s, and [`RoomWaits::PATIENCE_MS`] in all before the job fails.
#[derive(Debug, Default, Clone)]
pub struct RoomWaits {
    next_ms: u32,
    waited_ms: u32,
}

impl RoomWaits {
    /// The longest a job waits, over all its tries, for room for its instance.
    pub const PATIENCE_MS: u32 = 30_000;

    /// The wait before the next try, in milliseconds; `None` once the job waited
    /// [`RoomWaits::PATIENCE_MS`] (the waits start again from the shortest after that).
    pub fn next_wait(&mut self) -> Option<u32> {
        if self.waited_ms >= Self::PATIENCE_MS {
            *self = RoomWaits::default();
            return None;
        }
        let wait = self.next_ms.clamp(5, 1_000);
        self.next_ms = wait * 2;
        self.waited_ms += wait;
        Some(wait)
    }

    /// An instance was made: the next shortage starts with the shortest wait.
    pub fn reset(&mut self) {
        *self = RoomWaits::default();
    }

    /// The error a job gets when it waited in vain.
    pub fn gave_up() -> String {
        format!(
            "the browser had no memory for a new instance of the task module for {} s",
            Self::PATIENCE_MS / 1_000
        )
    }
}

/// A module ready to answer jobs in this thread.
#[derive(Debug)]
pub struct LoadedModule {
    spec: ModuleSpec,
    module: WebAssembly::Module,
    abi: Abi,
    runtime: ModuleRuntime,
    /// The reactor instance jobs share, and how many it served.
    reactor: RefCell<Option<(Reactor, u32)>>,
}

impl LoadedModule {
    /// The module `spec` names, compiled: from this thread's compiled modules, or fetched
    /// from the coordinator at `ws_url` (with the access token) and checked.
    pub async fn load(
        spec: ModuleSpec,
        ws_url: &str,
        token: Option<&str>,
        runtime: ModuleRuntime,
    ) -> Result<Rc<LoadedModule>, Error> {
        let key = (spec.sha256.clone(), spec.limits.memory_bytes);
        let cached = COMPILED.with(|c| c.borrow().get(&key).cloned());
        let (module, abi) = match cached {
            Some(compiled) => compiled,
            None => {
                let bytes = fetch(&module::module_url(ws_url, &spec.path)?, token).await?;
                module::check_hash(&spec.sha256, &bytes)?;
                let capped = module::cap_memory(&bytes, spec.limits.memory_bytes)?;
                let compiled = compile(&capped).await?;
                COMPILED.with(|c| c.borrow_mut().insert(key, compiled.clone()));
                compiled
            }
        };
        Ok(Rc::new(LoadedModule {
            spec,
            module,
            abi,
            runtime,
            reactor: RefCell::new(None),
        }))
    }

    /// The module's ABI.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// Runs one job whose plain MessagePack payload is `payload`; [`NoRoom`] when the
    /// browser could not make the fresh instance the job needs just now.
    pub fn run(&self, payload: &[u8]) -> Result<Outcome, NoRoom> {
        let input = match module::module_input(self.spec.io, payload) {
            Ok(input) => input,
            Err(e) => return Ok(Err(e)),
        };
        let started = js_sys::Date::now();
        let mut run = match self.abi {
            Abi::Command => self.run_command(&input)?,
            Abi::Reactor => self.run_reactor(&input),
        };
        // A browser cannot interrupt a job; one that finished past its limit still failed.
        let limit = self.spec.limits.timeout_ms as f64;
        if js_sys::Date::now() - started > limit && run.ending != Ending::TimedOut {
            run.ending = Ending::TimedOut;
        }
        Ok(module::outcome(self.spec.io, run, &self.spec.limits))
    }

    fn run_command(&self, input: &[u8]) -> Result<Run, NoRoom> {
        let max_output = self.spec.limits.max_output as f64;
        let run = match self.runtime.run_command(&self.module, input, max_output) {
            Ok(run) if run.no_room() == Some(true) => return Err(NoRoom),
            Ok(run) => {
                let ending = if run.output_too_large() {
                    Ending::OutputTooLarge
                } else {
                    match (run.code(), run.trap()) {
                        (Some(code), None) => Ending::Exited(code),
                        (_, Some(trap)) => self.trapped(trap, run.memory_bytes()),
                        (None, None) => Ending::Trapped("the run reported nothing".into()),
                    }
                };
                Run {
                    ending,
                    stdout: run.stdout(),
                    stderr: run.stderr(),
                }
            }
            Err(thrown) => Run {
                ending: Ending::NotStarted(error_message(&thrown)),
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
        };
        Ok(run)
    }

    fn run_reactor(&self, input: &[u8]) -> Run {
        let mut slot = self.reactor.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(_, jobs)| *jobs >= REACTOR_JOBS_PER_INSTANCE)
        {
            match self.runtime.start_reactor(&self.module) {
                Ok(reactor) => *slot = Some((reactor, 0)),
                Err(thrown) => {
                    *slot = None;
                    return Run {
                        ending: Ending::NotStarted(error_message(&thrown)),
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                    };
                }
            }
        }
        let Some((reactor, jobs)) = slot.as_mut() else {
            unreachable!("a reactor was just started");
        };
        *jobs += 1;
        match reactor.call(input) {
            Ok(packed) => {
                let out = module::unpack_reactor(packed);
                let output = reactor.read(out.ptr, out.len);
                let (ending, stderr) = if out.failed {
                    let message = String::from_utf8_lossy(&output).into_owned();
                    (Ending::Failed(message), reactor.take_stderr())
                } else {
                    (Ending::Returned, Vec::new())
                };
                Run {
                    ending,
                    stdout: output,
                    stderr,
                }
            }
            Err(thrown) => {
                // The instance is not used again after a trap.
                let ending = self.trapped(error_message(&thrown), reactor.memory_bytes());
                let stderr = reactor.take_stderr();
                *slot = None;
                Run {
                    ending,
                    stdout: Vec::new(),
                    stderr,
                }
            }
        }
    }

    /// A trap, seen as running out of memory when the memory had grown to its maximum (a
    /// browser says nothing else about a refused `memory.grow`).
    fn trapped(&self, message: String, memory_bytes: f64) -> Ending {
        let limit = self.spec.limits.memory_bytes as f64;
        if memory_bytes + (1 << 20) as f64 >= limit {
            Ending::OutOfMemory
        } else {
            Ending::Trapped(message)
        }
    }
}

/// The bytes at `url`, with `token` as a bearer token.
async fn fetch(url: &str, token: Option<&str>) -> Result<Vec<u8>, Error> {
    let failed =
        |what: String| Error::connection(format!("fetching the task module {url}: {what}"));
    let init = web_sys::RequestInit::new();
    let request = web_sys::Request::new_with_str_and_init(url, &init)
        .map_err(|e| failed(error_message(&e)))?;
    if let Some(token) = token {
        request
            .headers()
            .set("Authorization", &format!("Bearer {token}"))
            .map_err(|e| failed(error_message(&e)))?;
    }
    let response: web_sys::Response = JsFuture::from(fetch_with_request(&request))
        .await
        .map_err(|e| failed(error_message(&e)))?
        .unchecked_into();
    if !response.ok() {
        return Err(failed(format!(
            "the coordinator answered {}",
            response.status()
        )));
    }
    let body = response
        .array_buffer()
        .map_err(|e| failed(error_message(&e)))?;
    let buffer = JsFuture::from(body)
        .await
        .map_err(|e| failed(error_message(&e)))?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

/// Compiles `wasm` with the browser's WebAssembly and reads its ABI from its exports.
async fn compile(wasm: &[u8]) -> Result<(WebAssembly::Module, Abi), Error> {
    let invalid = |what: String| Error::Module(ModuleError::Invalid(what));
    let module: WebAssembly::Module =
        JsFuture::from(WebAssembly::compile(&Uint8Array::from(wasm).into()))
            .await
            .map_err(|e| invalid(format!("compile error: {}", error_message(&e))))?
            .unchecked_into();
    let exports: Array = WebAssembly::Module::exports(&module);
    let names: Vec<String> = exports
        .iter()
        .filter_map(|e| Reflect::get(&e, &"name".into()).ok()?.as_string())
        .collect();
    let abi = Abi::detect(names.iter().map(String::as_str))?;
    Ok((module, abi))
}
