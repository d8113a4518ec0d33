// The coordinator's live dashboard: everything arrives pushed over server-sent events
// from /dashboard/events ("status" twice a second, "app" for each finished tile).

const $ = (id) => document.getElementById(id);
const history = []; // [time ms, total done] over the last five minutes
const perWorker = new Map(); // id -> {done, at, rate}
const colours = new Map();
let seenWorkers = false; // whether any worker was connected since the page opened
const palette = ["#4cc2ff", "#ff7a59", "#5fd38d", "#f5c542", "#c17bff", "#ff5fa2", "#4de0c9", "#a3a3ff"];

function colour(worker) {
  if (worker == null) return "#888888";
  if (!colours.has(worker)) colours.set(worker, palette[colours.size % palette.length]);
  return colours.get(worker);
}

function ago(ms) {
  if (ms < 1500) return "now";
  if (ms < 90_000) return `${Math.round(ms / 1000)} s ago`;
  return `${Math.round(ms / 60_000)} min ago`;
}

function showStatus(s) {
  const st = s.stats;
  $("task").textContent = s.task ? `task: ${s.task}` : "";
  $("f-workers").textContent = st.workers;
  $("f-queued").textContent = st.queued;
  $("f-inflight").textContent = st.in_flight;
  $("f-done").textContent = st.completed;
  $("f-failed").textContent = st.failed;
  $("f-redelivered").textContent = st.redelivered;
  $("f-dups").textContent = st.duplicates;

  const now = performance.now();
  history.push([now, st.completed + st.failed]);
  while (history.length && now - history[0][0] > 300_000) history.shift();
  const recent = history.filter(([t]) => now - t <= 5000);
  // With no worker connected nothing is computed, whatever the last seconds saw.
  const rate = st.workers > 0 && recent.length > 1
    ? (recent.at(-1)[1] - recent[0][1]) / ((recent.at(-1)[0] - recent[0][0]) / 1000)
    : 0;
  $("f-rate").textContent = rate.toFixed(rate < 10 ? 1 : 0);
  drawChart();

  const rows = s.workers.map((w) => {
    const prev = perWorker.get(w.id);
    // No rate until two reports measure one; the first measured rate is taken as it is,
    // later ones smoothed (a new worker does not show 0 while its average catches up).
    let r = prev ? prev.rate : null;
    if (prev && now > prev.at) {
      const measured = (w.done - prev.done) / ((now - prev.at) / 1000);
      r = r === null ? measured : 0.7 * r + 0.3 * measured;
    }
    perWorker.set(w.id, { done: w.done, at: now, rate: r });
    const tr = document.createElement("tr");
    const window = w.capacity === w.declared ? `${w.capacity}` : `${w.capacity} of ${w.declared}`;
    const cells = [w.id, w.agent, w.kind, window, w.in_flight, w.done, r === null ? "…" : r.toFixed(1), ago(w.last_seen_ms)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = colour(w.id);
        td.append(sw);
      }
      if (i === 1) { td.className = "agent"; td.title = v; }
      // A worker leaving, paused or with wrong results (when jobs are replicated) says so
      // first, where the column cannot cut it off.
      const notes = i !== 1 ? [] : [
        w.draining ? ["leaving", "leaving"] : w.paused ? ["paused", "paused"] : null,
        w.wrong > 0 ? ["wrong", `${w.wrong} wrong`] : null,
      ].filter(Boolean);
      for (const [kind, text] of notes) {
        const tag = document.createElement("span");
        tag.className = `tag ${kind}`;
        tag.textContent = `(${text})`;
        if (kind === "wrong") tag.title = "results that lost to the result other workers agreed on";
        td.append(tag, " ");
      }
      td.append(String(v));
      tr.append(td);
    });
    return tr;
  });
  $("workers").replaceChildren(...rows);
  if (s.workers.length > 0) seenWorkers = true;
  $("empty").hidden = s.workers.length > 0;
  $("empty-what").textContent = seenWorkers ? "No worker connected now." : "No worker connected yet.";
}

function drawChart() {
  const c = $("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (history.length < 2) return;
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const [t0, d0] = history[i - 1], [t1, d1] = history[i];
    rates.push([t1, (d1 - d0) / Math.max((t1 - t0) / 1000, 1e-3)]);
  }
  const max = Math.max(1, ...rates.map(([, r]) => r));
  // The chart spans what it has seen, up to five minutes (not a sliver early in a run).
  const t0 = Math.max(performance.now() - 300_000, history[0][0]);
  const span = Math.max(performance.now() - t0, 1);
  g.strokeStyle = "#4cc2ff";
  g.lineWidth = 2;
  g.beginPath();
  rates.forEach(([t, r], i) => {
    const x = ((t - t0) / span) * c.width, y = c.height - 4 - (r / max) * (c.height - 20);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#8b98a5";
  g.font = "12px system-ui";
  g.fillText(`${max.toFixed(0)} jobs/s`, 4, 12);
}

function showTile(t) {
  const c = $("picture");
  if (c.width !== t.image_width || c.height !== t.image_height) {
    c.width = t.image_width;
    c.height = t.image_height;
  }
  const bytes = Uint8ClampedArray.from(atob(t.rgba), (ch) => ch.charCodeAt(0));
  const tint = colour(t.worker).match(/\w\w/g).map((h) => parseInt(h, 16));
  for (let i = 0; i < bytes.length; i += 4) {
    for (let k = 0; k < 3; k++) bytes[i + k] = bytes[i + k] * 0.7 + tint[k] * 0.3;
  }
  c.getContext("2d").putImageData(new ImageData(bytes, t.width, t.height), t.x, t.y);
}

const source = new EventSource("/dashboard/events");
source.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "live"; });
source.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = ""; });
source.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
source.addEventListener("app", (e) => {
  const event = JSON.parse(e.data);
  if (event.type === "tile") showTile(event);
});
