//! A task module in wasmtime: compiled once with its limits, pre-instantiated, and run for
//! one job at a time under either ABI (see [`distchan_protocol::module`]).
//!
//! The sandbox: every instance gets a WASI preview1 context with the job on standard input
//! and its outputs captured in memory, and nothing else: no arguments, no environment, no
//! preopened directory (so no file can be opened), no sockets. A [`Limiter`] denies memory
//! beyond the limit, and an epoch ticker interrupts a job at its deadline, or sooner once
//! the coordinator cancelled it (see [`Interrupt`]). Whatever the module does, the outcome is
//! an [`Ending`] that the protocol crate turns into the job's result or error.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use distchan_protocol::{
    module::{
        self, Abi, Ending, Limits, ModuleSpec, Run, EXPORT_ALLOC, EXPORT_INITIALIZE, EXPORT_MEMORY,
        EXPORT_RUN, EXPORT_START, PAGE_SIZE, REACTOR_JOBS_PER_INSTANCE,
    },
    wire::Outcome,
    JobId,
};
use std::collections::HashMap;
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wasi::{
    p1::{self, WasiP1Ctx},
    p2::pipe::{MemoryInputPipe, MemoryOutputPipe, SinkOutputStream},
    I32Exit, WasiCtxBuilder,
};

/// How often the epoch ticker advances: the granularity of job deadlines.
const TICK: Duration = Duration::from_millis(5);
/// Bytes of a module's standard error kept (a reactor's, over all the jobs it serves).
const STDERR_KEPT: usize = 64 * 1024;

/// What every store holds: the job's WASI context, its memory limiter, the epoch ticks
/// left before its deadline, and its thread's [`Interrupt`].
struct JobState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    ticks_left: u64,
    interrupt: Arc<Interrupt>,
}

/// No job.
const NO_JOB: u64 = u64::MAX;

/// Lets another thread stop the job a module thread runs: the thread says which job it runs
/// ([`Interrupt::start`]); [`Interrupt::stop`] for that job ends its run at the next epoch
/// tick (within a few milliseconds), with an error.
#[derive(Debug)]
pub(crate) struct Interrupt {
    running: AtomicU64,
    stopped: AtomicU64,
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt {
            running: AtomicU64::new(NO_JOB),
            stopped: AtomicU64::new(NO_JOB),
        }
    }
}

impl Interrupt {
    /// The thread starts running job `id`.
    pub fn start(&self, id: JobId) {
        self.running.store(id.0, Ordering::SeqCst);
    }

    /// The thread's job ended.
    pub fn end(&self) {
        self.running.store(NO_JOB, Ordering::SeqCst);
    }

    /// Stops job `id` if the thread runs it now; returns whether it does.
    pub fn stop(&self, id: JobId) -> bool {
        if self.running.load(Ordering::SeqCst) != id.0 {
            return false;
        }
        self.stopped.store(id.0, Ordering::SeqCst);
        true
    }

    /// True when the job the thread runs now was stopped.
    fn is_stopped(&self) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        running != NO_JOB && self.stopped.load(Ordering::SeqCst) == running
    }
}

/// Denies memory beyond the limit, and remembers that it did.
struct Limiter {
    memory_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A module ready to run jobs: its engine (with the pooling allocator sized for the
/// worker's threads), the compiled module pre-linked with WASI, its ABI and limits.
pub(crate) struct Loaded {
    engine: Engine,
    pre: InstancePre<JobState>,
    abi: Abi,
    spec: ModuleSpec,
    /// Epoch ticks a job may run before it is interrupted.
    deadline_ticks: u64,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.spec.name)
            .field("sha256", &self.spec.sha256)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

/// Modules compiled by this process, by hash and limits.
type Compiled = Mutex<HashMap<(String, Limits), Arc<Loaded>>>;

/// Modules compiled by this process: a worker that reconnects (or serves another
/// connection to the same coordinator) compiles nothing again.
fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(Default::default)
}

impl Loaded {
    /// The module of `spec` if this process compiled it before.
    pub fn cached(spec: &ModuleSpec) -> Option<Arc<Loaded>> {
        let key = (spec.sha256.clone(), spec.limits);
        compiled()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    /// The module of `spec` compiled from `bytes` (already checked against its hash), kept
    /// for later connections. `threads` is how many jobs run at once.
    pub fn get(spec: &ModuleSpec, bytes: &[u8], threads: usize) -> Result<Arc<Loaded>, String> {
        if let Some(loaded) = Self::cached(spec) {
            return Ok(loaded);
        }
        let loaded = Arc::new(Loaded::compile(spec, bytes, threads)?);
        compiled()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((spec.sha256.clone(), spec.limits), loaded.clone());
        Ok(loaded)
    }

    fn compile(spec: &ModuleSpec, bytes: &[u8], threads: usize) -> Result<Loaded, String> {
        let limits = spec.limits;
        let memory_bytes = usize::try_from(limits.memory_bytes)
            .map_err(|_| "the memory limit does not fit this machine".to_owned())?;
        let slots = (threads * 2 + 4) as u32;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .total_component_instances(0)
            .max_memory_size(memory_bytes);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("the engine: {e}"))?;
        let module = Module::new(&engine, bytes).map_err(|e| format!("compile error: {e}"))?;
        let abi = Abi::detect(module.exports().map(|e| e.name())).map_err(|e| e.to_string())?;
        for export in module.exports() {
            if let Some(memory) = export.ty().memory() {
                if memory.minimum().saturating_mul(PAGE_SIZE) > limits.memory_bytes {
                    return Err(format!(
                        "the module starts with {} MiB of memory, more than the limit of {} MiB",
                        (memory.minimum() * PAGE_SIZE) >> 20,
                        limits.memory_bytes >> 20
                    ));
                }
            }
        }
        let mut linker: Linker<JobState> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |s: &mut JobState| &mut s.wasi)
            .map_err(|e| format!("linking WASI: {e}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("the module imports what this sandbox does not offer: {e}"))?;
        start_ticker(engine.weak());
        Ok(Loaded {
            engine,
            pre,
            abi,
            spec: spec.clone(),
            deadline_ticks: limits.timeout_ms.div_ceil(TICK.as_millis() as u64) + 1,
        })
    }

    /// The module's ABI.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// Runs one job whose plain MessagePack payload is `payload`. `reactor` is the calling
    /// thread's reactor instance, created, reused and replaced here; `interrupt` is the
    /// calling thread's.
    pub fn run(
        &self,
        reactor: &mut Option<Reactor>,
        payload: &[u8],
        interrupt: &Arc<Interrupt>,
    ) -> Outcome {
        let input = module::module_input(self.spec.io, payload)?;
        let run = match self.abi {
            Abi::Command => self.run_command(input, interrupt),
            Abi::Reactor => self.run_reactor(reactor, &input, interrupt),
        };
        if interrupt.is_stopped() {
            return Err(crate::runner::CANCELLED.to_owned());
        }
        module::outcome(self.spec.io, run, &self.spec.limits)
    }

    /// A store with a fresh WASI context: `stdin` as standard input, standard output into
    /// `stdout` (with `None`, a reactor's, discarded: its results are what `distchan_run`
    /// returns), and standard error kept up to [`STDERR_KEPT`] bytes in the pipe returned.
    fn store(
        &self,
        stdin: Vec<u8>,
        stdout: Option<&MemoryOutputPipe>,
        interrupt: &Arc<Interrupt>,
    ) -> (Store<JobState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_KEPT);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(MemoryInputPipe::new(stdin))
            .stderr(stderr.clone());
        match stdout {
            Some(pipe) => wasi.stdout(pipe.clone()),
            None => wasi.stdout(SinkOutputStream),
        };
        let limiter = Limiter {
            memory_bytes: self.spec.limits.memory_bytes as usize,
            exceeded: false,
        };
        let state = JobState {
            wasi: wasi.build_p1(),
            limiter,
            ticks_left: self.deadline_ticks,
            interrupt: interrupt.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Every tick: a stopped job ends now, and one out of ticks is interrupted (a timeout).
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.interrupt.is_stopped() {
                return Err(wasmtime::format_err!("the job was cancelled"));
            }
            state.ticks_left = state.ticks_left.saturating_sub(1);
            Ok(match state.ticks_left {
                0 => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Continue(1),
            })
        });
        (store, stderr)
    }

    /// Gives the next run in `store` the whole time limit.
    fn arm(&self, store: &mut Store<JobState>) {
        store.data_mut().ticks_left = self.deadline_ticks;
        store.set_epoch_deadline(1);
    }

    fn output_limit(&self) -> usize {
        usize::try_from(self.spec.limits.max_output).unwrap_or(usize::MAX)
    }

    fn run_command(&self, input: Vec<u8>, interrupt: &Arc<Interrupt>) -> Run {
        let stdout = MemoryOutputPipe::new(self.output_limit());
        let (mut store, stderr) = self.store(input, Some(&stdout), interrupt);
        self.arm(&mut store);
        let ran = self.pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, EXPORT_START)?;
            start.call(&mut store, ())
        });
        let ending = match ran {
            Ok(()) => Ending::Exited(0),
            Err(e) => ending_of(&e, &store, Some((&stdout, self.output_limit())), &stderr),
        };
        drop(store);
        Run {
            ending,
            stdout: into_vec(stdout),
            stderr: into_vec(stderr),
        }
    }

    fn run_reactor(
        &self,
        slot: &mut Option<Reactor>,
        input: &[u8],
        interrupt: &Arc<Interrupt>,
    ) -> Run {
        let mut reactor = match slot.take() {
            Some(r) if r.jobs < REACTOR_JOBS_PER_INSTANCE => r,
            _ => match self.new_reactor(interrupt) {
                Ok(r) => r,
                Err(run) => return run,
            },
        };
        reactor.jobs += 1;
        let stderr_before = reactor.stderr_len();
        self.arm(&mut reactor.store);
        match reactor.call(input) {
            Ok((output, failed)) => {
                let ending = if failed {
                    Ending::Failed(String::from_utf8_lossy(&output).into_owned())
                } else {
                    Ending::Returned
                };
                let stderr = if failed {
                    reactor.stderr_since(stderr_before)
                } else {
                    Vec::new()
                };
                *slot = Some(reactor);
                Run {
                    ending,
                    stdout: output,
                    stderr,
                }
            }
            // After a trap or a timeout the instance is dropped: the next job gets a new one.
            Err(e) => Run {
                ending: ending_of(&e, &reactor.store, None, &reactor.stderr),
                stdout: Vec::new(),
                stderr: reactor.stderr_since(stderr_before),
            },
        }
    }

    /// A fresh reactor instance, initialised; `Err` is the run that reports why it failed.
    fn new_reactor(&self, interrupt: &Arc<Interrupt>) -> Result<Reactor, Run> {
        let (mut store, stderr) = self.store(Vec::new(), None, interrupt);
        self.arm(&mut store);
        let made = (|| {
            let instance = self.pre.instantiate(&mut store)?;
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, EXPORT_INITIALIZE) {
                init.call(&mut store, ())?;
            }
            let alloc = instance.get_typed_func::<i32, i32>(&mut store, EXPORT_ALLOC)?;
            let run = instance.get_typed_func::<(i32, i32), i64>(&mut store, EXPORT_RUN)?;
            let memory = instance
                .get_memory(&mut store, EXPORT_MEMORY)
                .ok_or_else(|| wasmtime::format_err!("the module exports no memory"))?;
            Ok::<_, wasmtime::Error>((alloc, run, memory))
        })();
        match made {
            Ok((alloc, run, memory)) => Ok(Reactor {
                store,
                alloc,
                run,
                memory,
                stderr,
                jobs: 0,
            }),
            Err(e) => {
                let ending = match ending_of(&e, &store, None, &stderr) {
                    Ending::Trapped(msg) => Ending::NotStarted(msg),
                    other => other,
                };
                Err(Run {
                    ending,
                    stdout: Vec::new(),
                    stderr: stderr.contents().to_vec(),
                })
            }
        }
    }
}

/// One thread's reused instance of a reactor module.
pub(crate) struct Reactor {
    store: Store<JobState>,
    alloc: TypedFunc<i32, i32>,
    run: TypedFunc<(i32, i32), i64>,
    memory: Memory,
    stderr: MemoryOutputPipe,
    /// Jobs it served.
    jobs: u32,
}

impl Reactor {
    /// Hands `input` to the module; its output and whether it is an error message.
    fn call(&mut self, input: &[u8]) -> wasmtime::Result<(Vec<u8>, bool)> {
        let len = i32::try_from(input.len())
            .map_err(|_| wasmtime::format_err!("the job is larger than 2 GiB"))?;
        let ptr = self.alloc.call(&mut self.store, len)?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, input)
            .map_err(|_| {
                wasmtime::format_err!("`{EXPORT_ALLOC}` returned a buffer outside memory")
            })?;
        let out = module::unpack_reactor(self.run.call(&mut self.store, (ptr, len))?);
        let data = self.memory.data(&self.store);
        let start = out.ptr as usize;
        let bytes = data.get(start..start + out.len as usize).ok_or_else(|| {
            wasmtime::format_err!("`{EXPORT_RUN}` returned an output outside memory")
        })?;
        Ok((bytes.to_vec(), out.failed))
    }

    fn stderr_len(&self) -> usize {
        self.stderr.contents().len()
    }

    fn stderr_since(&self, start: usize) -> Vec<u8> {
        self.stderr
            .contents()
            .get(start..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
}

/// How a run that returned `err` ended. `stdout` (with its limit) and `stderr` tell which
/// one a write overflowed.
fn ending_of(
    err: &wasmtime::Error,
    store: &Store<JobState>,
    stdout: Option<(&MemoryOutputPipe, usize)>,
    stderr: &MemoryOutputPipe,
) -> Ending {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Ending::Exited(exit.0);
    }
    if store.data().limiter.exceeded {
        return Ending::OutOfMemory;
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Ending::TimedOut,
            other => Ending::Trapped(other.to_string()),
        };
    }
    let message = format!("{err:#}");
    if message.contains("beyond capacity") {
        // The pipe with less room left is the one a write overflowed.
        let room =
            |pipe: &MemoryOutputPipe, limit: usize| limit.saturating_sub(pipe.contents().len());
        let stdout_full =
            stdout.is_some_and(|(out, limit)| room(out, limit) <= room(stderr, STDERR_KEPT));
        return if stdout_full {
            Ending::OutputTooLarge
        } else {
            Ending::Trapped(format!(
                "it wrote more than the {STDERR_KEPT} bytes of standard error kept"
            ))
        };
    }
    Ending::Trapped(message)
}

fn into_vec(pipe: MemoryOutputPipe) -> Vec<u8> {
    match pipe.try_into_inner() {
        Some(bytes) => bytes.into(),
        None => Vec::new(),
    }
}

/// Advances `engine`'s epoch every [`TICK`] until the engine is gone.
fn start_ticker(engine: EngineWeak) {
    let spawned = std::thread::Builder::new()
        .name("distchan-module-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the module deadline ticker; jobs will not time out");
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use distchan_protocol::{module::ModuleIo, payload};

    use super::*;

    /// The sandbox tests' command module (a job of 2 loops forever), with a time limit far
    /// beyond the test's wait.
    fn misbehave() -> Arc<Loaded> {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/modules/misbehave.wat"
        );
        let wasm = wat::parse_file(file).expect("the test module parses");
        let spec = ModuleSpec {
            name: "misbehave.wat".into(),
            sha256: module::sha256_hex(&wasm),
            size: wasm.len() as u64,
            path: String::new(),
            io: ModuleIo::Json,
            limits: Limits {
                timeout_ms: 600_000,
                ..Limits::default()
            },
        };
        Loaded::get(&spec, &wasm, 1).expect("the test module compiles")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stopped_job_ends_at_the_next_tick_and_the_thread_runs_the_next_one() {
        let loaded = misbehave();
        let interrupt = Arc::new(Interrupt::default());
        let (tx, outcomes) = mpsc::channel();
        let runtime = tokio::runtime::Handle::current();
        let thread = {
            let (loaded, interrupt) = (loaded.clone(), interrupt.clone());
            std::thread::spawn(move || {
                let _entered = runtime.enter();
                for (id, job) in [(JobId(1), 2u64), (JobId(2), 7)] {
                    interrupt.start(id);
                    let outcome =
                        loaded.run(&mut None, &payload::to_msgpack(&job).unwrap(), &interrupt);
                    interrupt.end();
                    tx.send(outcome).unwrap();
                }
            })
        };
        assert!(!interrupt.stop(JobId(2)), "job 2 does not run yet");
        while !interrupt.stop(JobId(1)) {
            std::thread::yield_now(); // until the thread says job 1 runs
        }
        let looped = outcomes
            .recv_timeout(Duration::from_secs(30))
            .expect("the endless job was stopped long before its time limit");
        let err = looped.expect_err("a stopped job has no result");
        assert!(err.contains("cancelled"), "{err}");
        let next = outcomes
            .recv_timeout(Duration::from_secs(30))
            .expect("the next job ran");
        assert_eq!(next.unwrap(), payload::to_msgpack(&7u64).unwrap());
        thread.join().unwrap();
    }
}
