// Runs distchan task modules in this Web Worker: the TaskModuleRuntime that the wasm worker
// (BrowserWorker's `moduleRuntime` option) calls for each job. WASI preview1 comes from
// @bjorn3/browser_wasi_shim, copied into www/vendor/browser_wasi_shim by scripts/build-wasm.sh.
//
// The sandbox: no arguments, no environment, no preopened directory (so no file can be
// opened); standard input is the job; standard output and error are kept in memory, output
// up to the coordinator's limit. The module's memory maximum was set by the wasm worker before
// compiling. What the facts of a run mean (exit code, trap, outputs) is decided in Rust, by
// the same code the native worker uses.

import { WASI, File, OpenFile, ConsoleStdout } from "./vendor/browser_wasi_shim/index.js";

/** Bytes of standard error kept per job. */
const STDERR_KEPT = 64 * 1024;

/** Thrown into a module that writes past its output limit (it traps). */
class OutputLimitError extends Error {
  constructor(limit) {
    super(`the module wrote more than ${limit} bytes`);
    this.name = "OutputLimitError";
  }
}

/** What a module writes to one stream, kept up to `limit` bytes. */
class Capture {
  constructor(limit, { tail = false } = {}) {
    this.limit = limit;
    this.tail = tail; // keep the last `limit` bytes instead of failing past them
    this.clear();
  }

  clear() {
    this.chunks = [];
    this.size = 0;
    this.overflowed = false;
  }

  fd() {
    return new ConsoleStdout((bytes) => this.write(bytes));
  }

  write(bytes) {
    if (this.size + bytes.byteLength > this.limit) {
      if (!this.tail) {
        this.overflowed = true;
        throw new OutputLimitError(this.limit);
      }
      while (this.chunks.length > 0 && this.size + bytes.byteLength > this.limit) {
        this.size -= this.chunks.shift().byteLength;
      }
      if (bytes.byteLength > this.limit) bytes = bytes.subarray(bytes.byteLength - this.limit);
    }
    this.chunks.push(bytes);
    this.size += bytes.byteLength;
  }

  /** Everything kept, in one array; the capture is empty afterwards. */
  take() {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    this.clear();
    return out;
  }
}

function describe(err) {
  if (err instanceof Error) return err.name && err.name !== "Error" ? `${err.name}: ${err.message}` : err.message;
  return String(err);
}

function memoryBytes(instance) {
  const memory = instance && instance.exports.memory;
  return memory instanceof WebAssembly.Memory ? memory.buffer.byteLength : 0;
}

/** One reused instance of a reactor module (the distchan_alloc / distchan_run ABI). */
class Reactor {
  constructor(module) {
    this.stderr = new Capture(STDERR_KEPT, { tail: true });
    // A reactor answers through distchan_run's output: what it prints is discarded.
    const discard = new ConsoleStdout(() => {});
    this.wasi = new WASI([], [], [new OpenFile(new File([])), discard, this.stderr.fd()]);
    this.instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: this.wasi.wasiImport });
    this.wasi.initialize(this.instance);
    const exports = this.instance.exports;
    this.alloc = exports.distchan_alloc;
    this.run = exports.distchan_run;
    this.memory = exports.memory;
  }

  call(input) {
    this.stderr.clear();
    const ptr = this.alloc(input.length) >>> 0;
    new Uint8Array(this.memory.buffer, ptr, input.length).set(input);
    return this.run(ptr, input.length);
  }

  read(ptr, len) {
    return new Uint8Array(this.memory.buffer, ptr, len).slice();
  }

  takeStderr() {
    return this.stderr.take();
  }

  memoryBytes() {
    return this.memory.buffer.byteLength;
  }
}

/** The TaskModuleRuntime given to BrowserWorker. */
export const runtime = {
  runCommand(module, stdin, maxOutput) {
    const stdout = new Capture(maxOutput);
    const stderr = new Capture(STDERR_KEPT);
    const wasi = new WASI([], [], [new OpenFile(new File(stdin.slice())), stdout.fd(), stderr.fd()]);
    let instance = null;
    let code = null;
    let trap = null;
    let noRoom = false;
    try {
      instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: wasi.wasiImport });
    } catch (err) {
      // No address space for one more memory (those of the instances that ran are freed only
      // when this thread's garbage collector gets to them): the worker tries again later.
      noRoom = err instanceof RangeError && /memory/i.test(err.message);
      trap = describe(err);
    }
    if (instance !== null) {
      try {
        code = wasi.start(instance);
      } catch (err) {
        trap = describe(err);
      }
    }
    return {
      code, trap, noRoom,
      outputTooLarge: stdout.overflowed,
      stdout: stdout.take(),
      stderr: stderr.take(),
      memoryBytes: memoryBytes(instance),
    };
  },

  startReactor(module) {
    return new Reactor(module);
  },
};
