// One volunteer thread: a module Web Worker that loads the wasm package and runs one
// BrowserWorker connection. The page (volunteer.js) starts one per core.
//
// page -> thread: {type: "start", url, token, capacity, index, threads, paused} | {type: "stop"}
//                 | {type: "pause"} | {type: "resume"}
// thread -> page: {type: "status", status}           every change, and progress 4x a second
//                 {type: "tile", tile}                a computed Mandelbrot tile (rgba transferred)
//                 {type: "alive"}                     every ALIVE_MS while the thread is free to
//                                                     run its event loop: a thread silent for
//                                                     longer than a task module's time limit is
//                                                     stuck in a job, and the page restarts it
//                 {type: "end", ok, refused, reason, status}   the connection is over

const ALIVE_MS = 500;

const wasm = import("./pkg/distchan_worker_wasm.js").then(async (module) => {
  await module.default();
  return module;
});

// Runs the coordinator's task module, if it names one (WASI shim in ./vendor).
const taskModules = import("./task-module.js").then(
  (m) => m.runtime,
  (err) => {
    console.warn(`task modules cannot run in this tab: ${err}`);
    return undefined;
  },
);

setInterval(() => self.postMessage({ type: "alive" }), ALIVE_MS);

let worker = null;
let stopRequested = false;
let pauseRequested = false;

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "start") {
    start(msg);
  } else if (msg.type === "stop") {
    stopRequested = true;
    if (worker) worker.stop();
  } else if (msg.type === "pause" || msg.type === "resume") {
    pauseRequested = msg.type === "pause";
    if (worker) pauseRequested ? worker.pause() : worker.resume();
  }
};

async function start({ url, token, capacity, index, threads, tab, group, paused }) {
  pauseRequested = pauseRequested || Boolean(paused);
  let module;
  try {
    module = await wasm;
  } catch (err) {
    self.postMessage({
      type: "end", ok: false, refused: false,
      reason: `could not load the WebAssembly worker (is www/pkg built? run scripts/build-wasm.sh): ${err}`,
    });
    return;
  }
  const moduleRuntime = await taskModules;
  try {
    worker = new module.BrowserWorker(url, {
      capacity,
      token: token || undefined,
      agent: `volunteer tab ${tab}, thread ${index + 1}/${threads} (${navigator.userAgent})`,
      group,
      moduleRuntime,
    });
  } catch (err) {
    self.postMessage({ type: "end", ok: false, refused: false, reason: String(err.message || err) });
    return;
  }
  // Only Mandelbrot tiles are drawn: other results are not handed to the page at all (each
  // one would cost a conversion to a JavaScript value).
  let drawing = false;
  worker.onStatus((status) => {
    const tiles = status.task === "mandelbrot";
    if (tiles !== drawing) worker.onResult(tiles ? drawTile : null);
    drawing = tiles;
    self.postMessage({ type: "status", status });
  });
  const drawTile = (result, job) => {
    // Mandelbrot tiles are drawn on the page; other results are only counted.
    if (result && result.rgba instanceof Uint8Array && job && typeof job.image_width === "number") {
      const rgba = result.rgba.byteOffset === 0 && result.rgba.byteLength === result.rgba.buffer.byteLength
        ? result.rgba.buffer
        : result.rgba.slice().buffer;
      const tile = {
        x: result.x, y: result.y, width: result.width, height: result.height,
        imageWidth: job.image_width, imageHeight: job.image_height, rgba,
      };
      self.postMessage({ type: "tile", tile }, [rgba]);
    }
  };
  if (pauseRequested) worker.pause();
  if (stopRequested) worker.stop();
  try {
    const status = await worker.run();
    self.postMessage({ type: "end", ok: true, refused: false, reason: status.reason, status });
  } catch (err) {
    self.postMessage({
      type: "end", ok: false, refused: Boolean(err && err.refused),
      reason: String((err && err.message) || err), status: err && err.status,
    });
  } finally {
    worker.free();
    worker = null;
  }
}
