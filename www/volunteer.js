// The volunteer page: Start makes this tab a distchan worker with one Web Worker thread per
// core (volunteer-worker.js), each running its own connection to the coordinator that
// served the page. Query parameters: ?autostart=1, ?token=ACCESS_TOKEN, ?threads=N,
// ?capacity=N (most jobs each thread may hold at once, default 64; the coordinator gives a
// thread fewer while more would not make it faster, e.g. two heavy tiles at a time).
//
// Volunteer controls: how many cores to give (threads are added or drained away while the
// tab works), Pause/Resume, and pausing by itself while the tab is hidden or the device is
// on battery, if ticked. A paused thread keeps its connection, finishes the jobs it is
// running and hands back the rest, which go to other workers.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("token").value = params.get("token") || "";
// A short name for this tab, so that the dashboard tells two tabs apart; kept while the tab
// lives (a reload keeps it).
const tabName = sessionStorage.getItem("distchan-tab") || Math.random().toString(16).slice(2, 6);
sessionStorage.setItem("distchan-tab", tabName);
// One id for this browser, shared by its tabs (local storage): when the coordinator has each
// job computed by several workers, two tabs or threads of one browser never both get it.
const browserId = (() => {
  // getRandomValues, not randomUUID: a page served over plain HTTP has only the former.
  const fresh = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  try {
    const id = localStorage.getItem("distchan-browser") || fresh();
    localStorage.setItem("distchan-browser", id);
    return id;
  } catch {
    return fresh(); // storage refused (a private window, say): this tab alone
  }
})();
const maxCores = clamp(Math.max(navigator.hardwareConcurrency || 2, Number(params.get("threads")) || 0), 1, 64);
let threadCount = clamp(Number(params.get("threads")) || navigator.hardwareConcurrency || 2, 1, 64);
const capacity = clamp(Number(params.get("capacity")) || 64, 1, 1024);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

/** Grace beyond a task module's time limit before a silent thread counts as stuck. */
const STUCK_GRACE_MS = 3000;

/** One entry per running thread: {index, worker, status, ended, ok, refused, reason, lastAlive}. */
let threads = [];
/** Why the tab is paused: "you", "hidden", "battery" (none: working). */
const pauseReasons = new Set();
/** The device's battery, where the browser reports it. */
let battery = null;
/** Threads restarted because a job ran past the module's time limit, and their jobs done. */
let restarts = 0;
let doneByRestarted = 0;
let lastRestart = "";
let stopping = false;
let rateSamples = []; // [time ms, total jobs done]
let tilesDrawn = 0;
let rateTimer = null;
let startedAt = 0;
let finishedAt = 0;

function clamp(n, lo, hi) {
  return Math.max(lo, Math.min(hi, Math.floor(n)));
}

$("coordinator-url").textContent = wsUrl;
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("pause").addEventListener("click", () => {
  if (pauseReasons.has("you")) pauseReasons.delete("you");
  else pauseReasons.add("you");
  applyPause();
});

for (let n = 1; n <= maxCores; n++) $("cores").append(new Option(String(n), String(n), false, n === threadCount));
$("cores").addEventListener("change", () => {
  threadCount = Number($("cores").value);
  showThreadCount();
  if (threads.some((t) => !t.ended) && !stopping) setLiveThreads(threadCount);
});
showThreadCount();

function showThreadCount() {
  $("thread-count").textContent = `${threadCount} background thread${threadCount === 1 ? "" : "s"}`;
}

$("pause-hidden").addEventListener("change", followConditions);
$("pause-battery").addEventListener("change", followConditions);
document.addEventListener("visibilitychange", followConditions);
if (navigator.getBattery) {
  navigator.getBattery().then((b) => {
    battery = b;
    b.addEventListener("chargingchange", followConditions);
    followConditions();
  }, () => {});
} else {
  $("pause-battery").disabled = true;
  $("pause-battery").parentElement.title = "this browser does not tell pages whether it runs on battery";
}

/** Pauses while the tab is hidden or the device is on battery, when the volunteer ticked it. */
function followConditions() {
  const want = {
    hidden: $("pause-hidden").checked && document.hidden,
    battery: $("pause-battery").checked && battery !== null && !battery.charging,
  };
  for (const [reason, on] of Object.entries(want)) {
    if (on) pauseReasons.add(reason);
    else pauseReasons.delete(reason);
  }
  applyPause();
}

/** Tells every live thread whether to pause. */
function applyPause() {
  const paused = pauseReasons.size > 0;
  for (const t of threads) if (!t.ended) t.worker.postMessage({ type: paused ? "pause" : "resume" });
  render();
}

/** Adds threads, or drains the last ones away, until `n` work. */
function setLiveThreads(n) {
  const live = threads.filter((t) => !t.ended && !t.retiring);
  for (let index = live.length; index < n; index++) {
    const free = threads.length;
    threads.push(launch(free));
  }
  for (const t of live.slice(n)) {
    t.retiring = true;
    t.worker.postMessage({ type: "stop" });
  }
  render();
}
// Enter in the token field starts, as the Start button does.
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});

function start() {
  if (threads.some((t) => !t.ended)) return;
  stopping = false;
  rateSamples = [];
  threads = [];
  restarts = 0;
  doneByRestarted = 0;
  startedAt = performance.now();
  finishedAt = 0;
  tilesDrawn = 0;
  $("picture-section").hidden = true;
  $("banner").hidden = true;
  $("start").disabled = true;
  $("stop").disabled = false;
  $("pause").disabled = false;
  for (let index = 0; index < threadCount; index++) threads.push(launch(index));
  clearInterval(rateTimer);
  rateTimer = setInterval(() => {
    watchdog();
    render();
  }, 500);
  render();
}

/** Starts volunteer thread `index`: a Web Worker with its own connection. */
function launch(index) {
  const worker = new Worker(new URL("volunteer-worker.js", import.meta.url), { type: "module" });
  const thread = { index, worker, status: null, ended: false, ok: false, refused: false, reason: null, lastAlive: performance.now() };
  worker.onmessage = (event) => onThreadMessage(thread, event.data);
  worker.onerror = (event) => {
    event.preventDefault();
    onThreadMessage(thread, { type: "end", ok: false, refused: false, reason: `the worker thread failed: ${event.message || "could not load volunteer-worker.js"}` });
  };
  const token = $("token").value.trim();
  worker.postMessage({ type: "start", url: wsUrl, token, capacity, index, threads: threadCount, tab: tabName, group: browserId, paused: pauseReasons.size > 0 });
  return thread;
}

/**
 * A browser cannot interrupt a WebAssembly job: a thread that has been silent for longer than
 * its task module's time limit is stuck in one. Ending the thread ends its connection (the
 * coordinator hands its jobs to other workers, or reports them failed per its retry settings);
 * a fresh thread takes its place.
 */
function watchdog() {
  if (stopping) return;
  const now = performance.now();
  threads = threads.map((t) => {
    const module = t.status && t.status.module;
    if (t.ended || !module || now - t.lastAlive <= module.timeoutMs + STUCK_GRACE_MS) return t;
    t.worker.terminate();
    restarts++;
    doneByRestarted += t.status.jobsDone;
    lastRestart = `thread ${t.index + 1} ran a job past the module's time limit of ${module.timeoutMs} ms and was restarted`;
    console.warn(lastRestart);
    return launch(t.index);
  });
}

function stop() {
  stopping = true;
  $("stop").disabled = true;
  $("pause").disabled = true;
  for (const t of threads) if (!t.ended) t.worker.postMessage({ type: "stop" });
  render();
}

function onThreadMessage(thread, msg) {
  if (thread.ended) return;
  if (msg.type === "alive") {
    thread.lastAlive = performance.now();
    return;
  }
  if (msg.type === "status") {
    thread.status = msg.status;
  } else if (msg.type === "tile") {
    drawTile(msg.tile);
  } else if (msg.type === "end") {
    thread.ended = true;
    thread.ok = msg.ok;
    thread.refused = msg.refused;
    thread.reason = msg.reason;
    if (msg.status) thread.status = msg.status;
    thread.worker.terminate();
    if (thread.retiring && msg.ok) {
      // Drained away because the volunteer gave fewer cores: its jobs still count.
      doneByRestarted += thread.status ? thread.status.jobsDone : 0;
      threads = threads.filter((t) => t !== thread);
    }
    if (threads.every((t) => t.ended)) {
      clearInterval(rateTimer);
      finishedAt = performance.now();
      $("start").disabled = false;
      $("stop").disabled = true;
      $("pause").disabled = true;
    }
  }
  render();
}

function totals() {
  let done = doneByRestarted, failed = 0, connected = 0, task = null, module = null;
  for (const t of threads) {
    const s = t.status;
    if (!s) continue;
    done += s.jobsDone;
    failed += s.jobsFailed;
    if (!t.ended && (s.state === "connected" || s.state === "draining")) connected++;
    task = task || s.task;
    module = module || s.module;
  }
  return { done, failed, connected, task, module };
}

/** The page's one-line verdict from every thread's state. */
function overall() {
  if (threads.length === 0) return { cls: "idle", text: "Not started", detail: "Press Start to volunteer." };
  const refused = threads.find((t) => t.refused || (t.status && t.status.state === "refused"));
  if (refused) {
    let reason = refused.reason || (refused.status && refused.status.reason) || "no reason given";
    // A missing or wrong token is the volunteer's to fix, in the field under the buttons.
    if (/access token/.test(reason)) reason += " (enter it in the access-token field, then press Start)";
    return { cls: "refused", text: "Refused by the coordinator", detail: reason, banner: `Refused by the coordinator: ${reason}` };
  }
  const live = threads.filter((t) => !t.ended);
  if (live.length === 0) {
    const failed = threads.find((t) => !t.ok);
    if (failed) {
      return { cls: "failed", text: "Disconnected", detail: failed.reason, banner: `Disconnected: ${failed.reason}` };
    }
    const reasons = new Set(threads.map((t) => t.reason));
    if (reasons.has("end of work")) {
      return { cls: "finished", text: "All work done — thank you!", detail: "The coordinator has no more jobs.", info: "Every job is done. Thank you for volunteering!" };
    }
    return { cls: "finished", text: "Stopped", detail: "This tab left cleanly: every job it held was finished." };
  }
  if (stopping) {
    return { cls: "draining", text: "Stopping…", detail: "Finishing the jobs this tab holds, then leaving." };
  }
  if (pauseReasons.size > 0) {
    const why = pauseReasons.has("you") ? "You paused this tab"
      : pauseReasons.has("hidden") ? "This tab is hidden"
      : "This device is on battery";
    // A thread reports itself paused once it takes no more jobs; until every connected one
    // has, its last report is from before the pause and the tab is still pausing.
    const pausing = live.some((t) => t.status && t.status.state === "connected" && !t.status.paused);
    if (pausing) {
      return { cls: "paused", text: "Pausing…", detail: `${why}: waiting for its threads to stop taking jobs.` };
    }
    const running = live.reduce((n, t) => n + (t.status ? t.status.outstanding : 0), 0);
    const finishing = running > 0 ? `finishing ${running} job${running === 1 ? "" : "s"} in hand` : "no job in hand";
    return { cls: "paused", text: "Paused", detail: `${why}: ${finishing}; the rest went to other workers. ${pauseReasons.has("you") ? "Press Resume to go on." : "It resumes by itself."}` };
  }
  const { connected } = totals();
  if (connected > 0) {
    return { cls: "working", text: "Working", detail: `${connected} of ${threads.length} threads connected to ${wsUrl}` };
  }
  // Threads connect again by themselves, after a growing random delay.
  const lost = live.find((t) => t.status && t.status.state === "reconnecting");
  if (lost) {
    const s = lost.status;
    const wait = s.retryInMs == null ? "" : ` in ${(s.retryInMs / 1000).toFixed(1)} s`;
    return { cls: "connecting", text: "Reconnecting…", detail: `Lost ${wsUrl} (${s.reason}); trying again${wait} (attempt ${s.attempt})` };
  }
  return { cls: "connecting", text: "Connecting…", detail: `Joining ${wsUrl}` };
}

function render() {
  const { done, failed, connected, task, module } = totals();
  const now = performance.now();
  rateSamples.push([now, done]);
  while (rateSamples.length > 2 && now - rateSamples[0][0] > 5000) rateSamples.shift();
  const [t0, d0] = rateSamples[0];
  const rate = now - t0 > 0 ? ((done - d0) * 1000) / (now - t0) : 0;

  const v = overall();
  $("state").textContent = v.text;
  $("state-detail").textContent = v.detail || "";
  $("state-dot").className = `dot ${v.cls}`;
  const banner = $("banner");
  const restarted = restarts > 0 ? `${restarts} thread restart${restarts === 1 ? "" : "s"}: ${lastRestart}.` : "";
  const info = [v.info, restarted].filter(Boolean).join(" ");
  banner.hidden = !(v.banner || info);
  banner.textContent = v.banner || info;
  banner.className = v.banner ? "banner" : "banner info";

  $("f-connected").textContent = `${connected} / ${threads.length}`;
  $("pause").textContent = pauseReasons.has("you") ? "Resume" : "Pause";
  // A task module is shown by name and hash, so a volunteer knows what this tab computes.
  $("f-task").textContent = module ? `${module.name} · ${module.shortHash}` : task || "—";
  $("f-task").title = module ? `task module ${module.name}, SHA-256 ${module.sha256}${module.abi ? ` (${module.abi})` : ""}` : "";
  $("f-done").textContent = done.toLocaleString();
  // While working: the last five seconds; once over: the average of the whole run.
  const running = threads.some((t) => !t.ended);
  const average = startedAt ? (done * 1000) / Math.max(1, (finishedAt || now) - startedAt) : 0;
  $("f-rate").textContent = (running ? rate : average).toFixed(1);
  $("f-rate-label").textContent = running || !startedAt ? "jobs/s" : "jobs/s on average";
  $("f-failed").textContent = failed.toLocaleString();

  const list = $("threads");
  list.replaceChildren(...threads.map((t, i) => {
    const li = document.createElement("li");
    const dot = document.createElement("span");
    const s = t.status;
    const state = t.ended ? (t.ok ? "finished" : t.refused ? "refused" : "failed")
      : !s || s.state === "connecting" || s.state === "reconnecting" || s.state === "idle" ? "connecting"
      : s.state === "draining" ? "draining" : s.paused ? "paused" : "working";
    dot.className = `dot ${state}`;
    const label = t.ended ? (t.ok ? "done" : t.refused ? "refused" : "disconnected")
      : t.retiring ? "leaving" : s ? (s.paused && s.state === "connected" ? "paused" : s.state) : "starting";
    li.append(dot, `thread ${i + 1}: ${label} · ${s ? s.jobsDone : 0} jobs`);
    if (t.reason && !t.ok) li.title = t.reason;
    return li;
  }));
}

const canvas = $("picture");
const ctx = canvas.getContext("2d");

function drawTile(tile) {
  if (tilesDrawn === 0 || canvas.width !== tile.imageWidth || canvas.height !== tile.imageHeight) {
    canvas.width = tile.imageWidth;
    canvas.height = tile.imageHeight;
    ctx.fillStyle = "#0b1016";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    tilesDrawn = 0;
  }
  const pixels = new ImageData(new Uint8ClampedArray(tile.rgba), tile.width, tile.height);
  ctx.putImageData(pixels, tile.x, tile.y);
  tilesDrawn++;
  $("picture-section").hidden = false;
  $("tile-count").textContent = `(${tilesDrawn.toLocaleString()})`;
}

import("./pkg/distchan_worker_wasm.js")
  .then((m) => m.default().then(() => { $("version").textContent = `distchan-worker-wasm ${m.packageVersion()} · ${m.protocolName()}`; }))
  .catch(() => { $("version").textContent = "the WebAssembly package is not built (scripts/build-wasm.sh)"; });

render();
if (params.get("autostart") === "1") start();
