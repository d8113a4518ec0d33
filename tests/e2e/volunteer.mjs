// End-to-end check of the volunteer page in headless Chromium (driven by tests/e2e/run.sh).
//
//   node tests/e2e/volunteer.mjs --url http://ADDR/?autostart=1 --expect finished \
//        [--jobs N] [--text "..."] [--stop-after-jobs N] [--screenshot FILE] [--timeout SECONDS]
//
// Opens the page, waits until its verdict (#state) is the expected one and checks it:
//   finished  "All work done": every thread ended at end of work; with --jobs N, the page
//             counted N jobs done (and drew N tiles, for the Mandelbrot demo), or a few more
//             when the coordinator gave a straggling tile to an idle thread too; with
//             --text, the banner says it; with --task, the task shown includes it;
//   refused   "Refused by the coordinator", with --text in the banner;
//   stopped   after --stop-after-jobs jobs (screenshot FILE-working.png), presses Stop and
//             expects "Stopped": every thread drained and left cleanly; with --rounds N,
//             presses Start again and does it N times in all;
//   closed    after --stop-after-jobs jobs, closes the tab;
//   restarted after --stop-after-jobs jobs, creates --ready-file (the caller then restarts
//             the coordinator on the same port), and expects "All work done" from the same
//             page, its threads never restarted: they connected again by themselves;
//   paused    after --stop-after-jobs jobs, presses Pause: the page must say "Paused" with no
//             job in hand, do no job for 1.5 s, and (with --dashboard-check URL) the dashboard
//             must list its threads as paused; then Resume, and "All work done" as for finished;
//   frozen    after --stop-after-jobs jobs, stops the page's renderer processes (SIGSTOP: the
//             page freezes, its sockets stay open), creates --ready-file, waits for
//             --release-file to appear (at most --timeout), then lets the renderers go on.
// Exits 0 on success, 1 with the reason otherwise; keeps a screenshot either way.
//
// Uses npm playwright-core from the project's .tools (scripts/setup.sh) and Debian's Chromium;
// nothing is downloaded.

import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const tools = process.env.DISTCHAN_TOOLS || resolve(here, "../../.tools");
const { chromium } = createRequire(join(tools, "node_modules", "noop.js"))("playwright-core");

const args = parseArgs(process.argv.slice(2));
const timeoutMs = Number(args.timeout || 120) * 1000;
const expect = args.expect || "finished";
const screenshot = args.screenshot;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith("--")) throw new Error(`unexpected argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
    i++;
  }
  if (!out.url) throw new Error("--url is required");
  return out;
}

function log(...parts) {
  console.log(`[e2e ${expect}]`, ...parts);
}

/** The Chromium renderer processes started by this script (descendants of this process). */
function rendererPids() {
  const rows = execFileSync("ps", ["-e", "-o", "pid=,ppid=,args="], { encoding: "utf8" })
    .split("\n").map((l) => l.trim().match(/^(\d+)\s+(\d+)\s+(.*)$/)).filter(Boolean)
    .map(([, pid, ppid, cmd]) => ({ pid: Number(pid), ppid: Number(ppid), cmd }));
  const ours = new Set([process.pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const r of rows) if (ours.has(r.ppid) && !ours.has(r.pid)) { ours.add(r.pid); grew = true; }
  }
  return rows.filter((r) => ours.has(r.pid) && r.cmd.includes("--type=renderer")).map((r) => r.pid);
}

/** Resolves once `file` exists, or rejects after `ms`. */
async function waitForFile(file, ms) {
  const until = Date.now() + ms;
  while (!existsSync(file)) {
    if (Date.now() > until) throw new Error(`${file} did not appear within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const profile = mkdtempSync(join(tmpdir(), "distchan-e2e-chromium-"));
let context;
let failure = null;

try {
  // Chromium occasionally dies while starting on a loaded machine: try three times.
  for (let attempt = 1; !context; attempt++) {
    try {
      context = await chromium.launchPersistentContext(profile, {
        executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
        headless: true,
        args: [
          "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-quic",
        ],
        viewport: { width: 1100, height: 900 },
      });
    } catch (err) {
      if (attempt >= 3) throw err;
      log(`Chromium did not start (attempt ${attempt}): ${err.message.split("\n")[0]}`);
    }
  }
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (msg) => log(`console.${msg.type()}:`, msg.text()));
  page.on("pageerror", (err) => log("page error:", err.message));
  page.on("requestfailed", (req) => log("request failed:", req.url(), req.failure()?.errorText));

  let dashboard = null;
  if (args.dashboard) {
    dashboard = await context.newPage();
    dashboard.on("pageerror", (err) => log("dashboard page error:", err.message));
    const r = await dashboard.goto(args.dashboard, { waitUntil: "load", timeout: 30_000 });
    if (!r || !r.ok()) throw new Error(`GET ${args.dashboard} answered ${r && r.status()}`);
    log("dashboard open:", args.dashboard);
  }

  log("opening", args.url);
  const response = await page.goto(args.url, { waitUntil: "load", timeout: 30_000 });
  if (!response || !response.ok()) throw new Error(`GET ${args.url} answered ${response && response.status()}`);

  const read = () => page.evaluate(() => {
    const text = (id) => document.getElementById(id)?.textContent?.trim() ?? "";
    return {
      state: text("state"),
      detail: text("state-detail"),
      banner: document.getElementById("banner").hidden ? "" : text("banner"),
      connected: text("f-connected"),
      task: text("f-task"),
      done: Number(text("f-done").replace(/[^0-9]/g, "")),
      failed: Number(text("f-failed").replace(/[^0-9]/g, "")),
      tiles: Number(text("tile-count").replace(/[^0-9]/g, "")),
      threads: [...document.querySelectorAll("#threads li")].map((li) => li.textContent),
    };
  });

  const deadline = Date.now() + timeoutMs;
  const waitFor = async (what, test) => {
    let last = null;
    while (Date.now() < deadline) {
      last = await read();
      if (test(last)) return last;
      await page.waitForTimeout(250);
    }
    throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last page state: ${JSON.stringify(last)}`);
  };
  const terminal = (s) => /^(All work done|Stopped|Refused|Disconnected)/.test(s.state);

  if (dashboard) {
    // While the tab works, the dashboard must list it and paint its tiles.
    await dashboard.waitForFunction(() => {
      const rows = [...document.querySelectorAll("#workers tr")].map((r) => r.textContent);
      const c = document.getElementById("picture");
      if (!rows.some((t) => t.includes("browser")) || c.width < 32) return false;
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let lit = 0;
      for (let i = 0; i < d.length; i += 4 * 31) if (d[i] || d[i + 1] || d[i + 2]) lit++;
      return lit > 50;
    }, null, { timeout: timeoutMs, polling: 200 });
    const shot = args["dashboard-screenshot"];
    if (shot) {
      mkdirSync(dirname(shot), { recursive: true });
      await dashboard.screenshot({ path: shot, fullPage: true });
      log("dashboard screenshot:", shot);
    }
  }

  if (expect === "finished") {
    const s = await waitFor("the page to finish", terminal);
    log("final page state:", JSON.stringify(s));
    if (!s.state.startsWith("All work done")) throw new Error(`expected "All work done", the page says "${s.state}": ${s.detail} ${s.banner}`);
    if (s.failed !== 0) throw new Error(`${s.failed} jobs failed`);
    // At the end of a run the coordinator may give a tile a slow thread holds to an idle one
    // too (straggler speculation): the tab then computes it twice, the coordinator takes one.
    if (args.jobs && s.done < Number(args.jobs)) throw new Error(`the page counted ${s.done} jobs, expected ${args.jobs}`);
    if (args.tiles && s.tiles < Number(args.tiles)) throw new Error(`the page drew ${s.tiles} tiles, expected ${args.tiles}`);
    if (args.jobs && s.done > Number(args.jobs)) log(`${s.done - Number(args.jobs)} tiles computed twice at the end (speculation)`);
    if (args.text && !s.banner.includes(args.text)) throw new Error(`the banner "${s.banner}" does not say "${args.text}"`);
    if (args.task && !s.task.includes(args.task)) throw new Error(`the page shows the task "${s.task}", not "${args.task}"`);
  } else if (expect === "refused") {
    const s = await waitFor("a refusal", terminal);
    log("final page state:", JSON.stringify(s));
    if (!s.state.startsWith("Refused")) throw new Error(`expected a refusal, the page says "${s.state}": ${s.detail}`);
    if (args.text && !s.banner.includes(args.text)) throw new Error(`the banner "${s.banner}" does not say "${args.text}"`);
    if (s.done !== 0) throw new Error(`a refused tab did ${s.done} jobs`);
  } else if (expect === "stopped") {
    const want = Number(args["stop-after-jobs"] || 1);
    const rounds = Number(args.rounds || 1);
    for (let round = 1; round <= rounds; round++) {
      if (round > 1) await page.click("#start");
      const working = await waitFor(`${want} jobs done`, (s) => (s.done >= want && s.state === "Working") || terminal(s));
      if (terminal(working)) throw new Error(`round ${round}: the page ended before Stop: "${working.state}": ${working.detail}`);
      log(`round ${round} working:`, JSON.stringify(working));
      if (screenshot && round === 1) {
        mkdirSync(dirname(screenshot), { recursive: true });
        await page.screenshot({ path: screenshot.replace(/\.png$/, "") + "-working.png", fullPage: true });
      }
      await page.click("#stop");
      const s = await waitFor("the page to stop", terminal);
      log(`round ${round} final page state:`, JSON.stringify(s));
      if (!s.state.startsWith("Stopped")) throw new Error(`round ${round}: expected "Stopped", the page says "${s.state}": ${s.detail} ${s.banner}`);
      if (s.failed !== 0) throw new Error(`round ${round}: ${s.failed} jobs failed`);
      if (!s.threads.every((t) => t.includes(": done"))) throw new Error(`round ${round}: not every thread left cleanly: ${s.threads.join("; ")}`);
    }
  } else if (expect === "restarted") {
    const want = Number(args["stop-after-jobs"] || 1);
    const working = await waitFor(`${want} jobs done`, (s) => s.done >= want || terminal(s));
    if (terminal(working)) throw new Error(`the page ended before the restart: "${working.state}": ${working.detail}`);
    log("working; the coordinator may restart now:", JSON.stringify(working));
    writeFileSync(args["ready-file"], "ready\n");
    let sawReconnecting = false;
    const s = await waitFor("the page to finish after the restart", (s) => {
      sawReconnecting ||= s.state.startsWith("Reconnecting");
      return terminal(s);
    });
    log("final page state:", JSON.stringify(s), "reconnecting seen:", sawReconnecting);
    if (!s.state.startsWith("All work done")) throw new Error(`expected "All work done", the page says "${s.state}": ${s.detail} ${s.banner}`);
    if (s.failed !== 0) throw new Error(`${s.failed} jobs failed`);
    if (s.banner.includes("restart")) throw new Error(`threads were restarted: ${s.banner}`);
    if (s.done <= working.done) throw new Error(`the page did no job after the restart (${s.done} done)`);
  } else if (expect === "frozen") {
    const want = Number(args["stop-after-jobs"] || 1);
    const working = await waitFor(`${want} jobs done`, (s) => s.done >= want || terminal(s));
    if (terminal(working)) throw new Error(`the page ended before it froze: "${working.state}"`);
    const pids = rendererPids();
    if (pids.length === 0) throw new Error("no renderer process found to freeze");
    log(`freezing renderers ${pids.join(", ")} while the page works:`, JSON.stringify(working));
    for (const pid of pids) process.kill(pid, "SIGSTOP");
    try {
      writeFileSync(args["ready-file"], "ready\n");
      await waitForFile(args["release-file"], timeoutMs);
    } finally {
      for (const pid of pids) process.kill(pid, "SIGCONT");
    }
    log("renderers released");
  } else if (expect === "paused") {
    const want = Number(args["stop-after-jobs"] || 1);
    const working = await waitFor(`${want} jobs done`, (s) => (s.done >= want && s.state === "Working") || terminal(s));
    if (terminal(working)) throw new Error(`the page ended before Pause: "${working.state}": ${working.detail}`);
    await page.click("#pause");
    const paused = await waitFor("the page to pause with no job in hand",
      (s) => (s.state === "Paused" && s.detail.includes("no job in hand")) || terminal(s));
    if (terminal(paused)) throw new Error(`the page ended while pausing: "${paused.state}": ${paused.detail}`);
    log("paused:", JSON.stringify(paused));
    await page.waitForTimeout(1500);
    const still = await read();
    if (still.done !== paused.done) throw new Error(`the tab did ${still.done - paused.done} jobs while paused`);
    if (!still.threads.every((t) => t.includes(": paused"))) throw new Error(`not every thread says paused: ${still.threads.join("; ")}`);
    if (screenshot) {
      mkdirSync(dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot.replace(/\.png$/, "") + "-paused.png", fullPage: true });
    }
    if (args["dashboard-check"]) {
      const board = await context.newPage();
      await board.goto(args["dashboard-check"], { waitUntil: "load", timeout: 30_000 });
      const threads = still.threads.length;
      await board.waitForFunction((n) => [...document.querySelectorAll("#workers tr")]
        .filter((r) => r.textContent.includes("(paused)")).length === n, threads, { timeout: 30_000, polling: 200 });
      log(`the dashboard lists the tab's ${threads} threads as paused`);
      if (screenshot) await board.screenshot({ path: screenshot.replace(/\.png$/, "") + "-dashboard.png", fullPage: true });
      await board.close();
    }
    await page.click("#pause"); // now "Resume"
    const s = await waitFor("the page to finish after resuming", terminal);
    log("final page state:", JSON.stringify(s));
    if (!s.state.startsWith("All work done")) throw new Error(`expected "All work done", the page says "${s.state}": ${s.detail} ${s.banner}`);
    if (s.failed !== 0) throw new Error(`${s.failed} jobs failed`);
    if (s.done <= paused.done) throw new Error("the page did no job after resuming");
  } else if (expect === "closed") {
    const want = Number(args["stop-after-jobs"] || 1);
    const working = await waitFor(`${want} jobs done`, (s) => s.done >= want || terminal(s));
    if (terminal(working)) throw new Error(`the page ended before it was closed: "${working.state}"`);
    log("closing the tab while it works:", JSON.stringify(working));
    if (screenshot) {
      mkdirSync(dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot, fullPage: true });
    }
    await page.close();
  } else {
    throw new Error(`unknown --expect ${expect}`);
  }
  if (screenshot && expect !== "closed" && expect !== "frozen") {
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    log("screenshot:", screenshot);
  }
} catch (err) {
  failure = err;
  if (context && screenshot) {
    const page = context.pages()[0];
    const path = screenshot.replace(/\.png$/, "") + ".failed.png";
    await page?.screenshot({ path, fullPage: true }).then(() => log("screenshot of the failure:", path), () => {});
  }
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

if (failure) {
  console.error(`[e2e ${expect}] FAILED: ${failure.message}`);
  process.exit(1);
}
log("ok");
