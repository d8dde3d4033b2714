// Load run → SVG chart of what /metrics showed during it (docs/img/load-run.svg).
//
// What it measures: starts redis-server, the fake Frappe and frappe-realtime on loopback (the
// test harness), scrapes GET /metrics once a second (at most MAX_SCRAPES times) while it
//   - connects 200 websocket clients in 5 steps of 40 (two sites; System, Website and API-token users),
//   - sends bursts of handshakes that are refused (bad Origin, no credentials, wrong site, bad token),
//   - publishes about two thousand events through Redis at a rate that swings between 20 and
//     100/s with a spike to ~180/s (to `all` of each site, user rooms, and a room nobody is in),
//   - disconnects half of the clients,
// then draws four line charts over time: connected sockets, handshakes/s (ok vs refused),
// events routed/s with packets sent/s, and the server's RSS in MiB. Rates are deltas of the
// counters between consecutive scrapes. The SVG is hand-written (no dependencies).
//
// It runs the debug build (target/debug/frappe-realtime) unless FRAPPE_REALTIME_BIN names
// another binary; figures (RSS, CPU headroom) differ a lot between debug and release builds.
//
// The scraper runs on a worker thread, so a busy load generator does not delay it.
//
// Usage: node bench/chart.mjs [out.svg]      (default docs/img/load-run.svg)
// Every loop is bounded in count and time; everything started is stopped by its PID.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { startStack, BINARY, SITES } from "../tests/support/harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const OUT = path.resolve(process.argv[2] ?? path.join(ROOT, "docs/img/load-run.svg"));
const CLIENTS = 200;
const STEPS = 5;
const RUN_S = 40; // scenario length; scraping goes on 2 s longer
const MAX_SCRAPES = RUN_S + 5;
const PHASES = { connect: [3, 5, 7, 9, 11], refuse: [[6, 9], [19, 22]], publish: [4, 36], disconnect: 25 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Prometheus text → { name: [{ labels, value }] }
// ---------------------------------------------------------------------------------------------
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    (out[m[1]] ??= []).push({ labels, value: Number(m[3]) });
  }
  return out;
}
const sum = (metrics, name, where = () => true) =>
  (metrics[name] ?? []).filter((s) => where(s.labels)).reduce((a, s) => a + s.value, 0);

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------
const stack = await startStack({ version: 16 });
const t0 = performance.now();
const now = () => (performance.now() - t0) / 1000;
const samples = [];
const tally = { published: 0, refusedTried: 0, connected: 0, disconnected: 0 };

// The scraper runs on its own thread so that a busy load generator (200 clients parsing
// thousands of packets a second) does not delay the scrapes.
const SCRAPER = `
const { parentPort, workerData: { port, startAbs, max } } = require("node:worker_threads");
const abs = () => performance.timeOrigin + performance.now();
let stop = false;
parentPort.on("message", () => { stop = true; });
(async () => {
  for (let i = 0; i < max && !stop; i++) {
    const wait = startAbs + i * 1000 - abs();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const sent = abs();
    try {
      const res = await fetch("http://127.0.0.1:" + port + "/metrics", { signal: AbortSignal.timeout(2500) });
      const text = await res.text();
      parentPort.postMessage({ sent, done: abs(), text });
    } catch (err) {
      parentPort.postMessage({ sent, error: err.message });
    }
  }
  parentPort.postMessage({ end: true });
})();
`;

function scrapeLoop() {
  const startAbs = performance.timeOrigin + t0;
  const worker = new Worker(SCRAPER, { eval: true, workerData: { port: stack.port, startAbs, max: MAX_SCRAPES } });
  const finished = new Promise((resolve, reject) => {
    worker.on("message", (msg) => {
      if (msg.end) return resolve();
      if (msg.error) return console.error(`scrape failed: ${msg.error}`);
      samples.push({ t: ((msg.sent + msg.done) / 2 - startAbs) / 1000, took: (msg.done - msg.sent) / 1000, m: parseMetrics(msg.text) });
    });
    worker.on("error", reject);
  });
  return {
    stop: () => worker.postMessage("stop"),
    done: finished.finally(() => worker.terminate()),
  };
}

const USERS = [{ sid: "sid-alice" }, { sid: "sid-bob" }, { sid: "sid-carol" }, { authorization: "token key-dave:secret-dave" }];
const clients = [];
async function connectStep(n) {
  const batch = [];
  for (let i = 0; i < n; i++) {
    const k = clients.length + batch.length;
    const site = k % 4 === 3 ? SITES[1] : SITES[0];
    batch.push(stack.socket({ site, transports: ["websocket"], ...USERS[k % USERS.length] }));
  }
  await Promise.all(batch.map((s) => new Promise((resolve) => {
    const timer = setTimeout(resolve, 8000);
    s.once("connect", () => { clearTimeout(timer); tally.connected += 1; resolve(); });
    s.once("connect_error", () => { clearTimeout(timer); resolve(); });
  })));
  clients.push(...batch);
}

function refuseBurst(n) {
  const kinds = [
    { sid: "sid-alice", origin: "http://evil.example" }, // invalid_origin
    { headers: { "x-frappe-site-name": SITES[1] } }, // invalid_namespace (site header ≠ namespace)
    {}, // missing_credentials
    { authorization: "token nope:nope" }, // unauthorized (Frappe answers 401)
  ];
  const done = [];
  for (let i = 0; i < n; i++) {
    const s = stack.socket({ transports: ["websocket"], ...kinds[(tally.refusedTried + i) % kinds.length] });
    done.push(new Promise((resolve) => {
      const timer = setTimeout(resolve, 8000);
      const end = () => { clearTimeout(timer); s.disconnect(); resolve(); };
      s.once("connect_error", end);
      s.once("connect", end);
    }));
  }
  tally.refusedTried += n;
  return Promise.all(done);
}

/** Events per second at time t: a slow swing between 20 and 100, with a short spike to ~160. */
const rateAt = (t) => 20 + 80 * (0.5 - 0.5 * Math.cos((2 * Math.PI * (t - PHASES.publish[0])) / 16)) + (t > 29 && t < 31 ? 80 : 0);

async function publishLoop() {
  const [from, to] = PHASES.publish;
  await sleep(Math.max(0, t0 + from * 1000 - performance.now()));
  const payload = { doctype: "ToDo", name: "TODO-0001", modified: "2026-11-23 12:00:00.000000", user: "alice@example.com" };
  let owed = 0;
  for (let tick = 0; tick < (to - from) * 10 + 50 && now() < to; tick++) {
    owed += rateAt(now()) / 10;
    for (; owed >= 1; owed -= 1) {
      const k = tally.published++;
      const r = k % 10;
      const opts = r < 4 ? { site: SITES[0], room: "all" }
        : r < 6 ? { site: SITES[1], room: "all" }
          : r < 8 ? { site: SITES[0], room: "user:carol@example.com" }
            : r < 9 ? { site: SITES[1], room: "user:dave@example.com" }
              : { site: SITES[0], room: "doc:ToDo/NOBODY" };
      await stack.publish("list_update", { ...payload, i: k }, opts);
    }
    await sleep(Math.max(0, t0 + (from + (tick + 1) / 10) * 1000 - performance.now()));
  }
}

async function at(t, fn) {
  await sleep(Math.max(0, t0 + t * 1000 - performance.now()));
  return fn();
}

try {
  const scraping = scrapeLoop();
  const publishing = publishLoop();
  const scenario = (async () => {
    const work = [];
    for (const t of PHASES.connect) work.push(at(t, () => connectStep(CLIENTS / STEPS)));
    for (const [a, b] of PHASES.refuse) for (let t = a; t < b; t += 0.5) work.push(at(t, () => refuseBurst(4 + Math.round(4 * Math.random()))));
    work.push(at(PHASES.disconnect, async () => {
      const half = clients.filter((s) => s.connected).slice(0, CLIENTS / 2);
      for (let i = 0; i < half.length; i++) {
        half[i].disconnect();
        tally.disconnected += 1;
        if (i % 10 === 9) await sleep(100); // spread over ~1 s
      }
    }));
    await Promise.all(work);
  })();
  await Promise.all([scenario, publishing]);
  await at(RUN_S + 2, () => scraping.stop());
  await scraping.done;
} finally {
  await stack.stop();
}

// ---------------------------------------------------------------------------------------------
// Series
// ---------------------------------------------------------------------------------------------
const isSite = (site) => (l) => l.site === site;
const series = {
  time: samples.map((s) => s.t),
  sockets: Object.fromEntries(SITES.map((site) => [site, samples.map((s) => sum(s.m, "frappe_realtime_sockets", isSite(site)))])),
  rss: samples.map((s) => sum(s.m, "process_resident_memory_bytes") / 2 ** 20),
};
series.sockets.total = samples.map((_, i) => SITES.reduce((a, site) => a + series.sockets[site][i], 0));
/** Per-second rate over each scrape interval, drawn at the interval's midpoint (`rateTime`). */
function rate(name, where) {
  const out = [null];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    out.push(Math.max(0, sum(samples[i].m, name, where) - sum(samples[i - 1].m, name, where)) / dt);
  }
  return out;
}
series.rateTime = series.time.map((t, i) => (i === 0 ? t : (t + series.time[i - 1]) / 2));
series.handshakesOk = rate("frappe_realtime_handshakes_total", (l) => l.outcome === "ok");
series.handshakesRefused = rate("frappe_realtime_handshakes_total", (l) => l.outcome !== "ok");
series.routed = rate("frappe_realtime_events_routed_total");
series.received = rate("frappe_realtime_redis_messages_received_total");
series.packets = rate("frappe_realtime_packets_sent_total");

const last = samples.at(-1).m;
const outcomes = Object.fromEntries((last.frappe_realtime_handshakes_total ?? []).reduce((acc, s) => {
  acc.set(s.labels.outcome, (acc.get(s.labels.outcome) ?? 0) + s.value);
  return acc;
}, new Map()));
const summary = {
  binary: path.relative(ROOT, BINARY),
  scrapes: samples.length,
  slowest_scrape_ms: Math.round(Math.max(...samples.map((s) => s.took)) * 1000),
  published: tally.published,
  clients_connected: tally.connected,
  clients_disconnected: tally.disconnected,
  refused_tried: tally.refusedTried,
  handshakes: outcomes,
  peak_sockets: Math.max(...series.sockets.total),
  final_sockets: series.sockets.total.at(-1),
  events_routed: sum(last, "frappe_realtime_events_routed_total"),
  packets_sent: sum(last, "frappe_realtime_packets_sent_total"),
  events_dropped: Object.fromEntries((last.frappe_realtime_events_dropped_total ?? []).map((s) => [s.labels.reason, s.value])),
  send_queue_drops: sum(last, "frappe_realtime_socket_send_dropped_total"),
  peak_routed_per_s: Math.round(Math.max(...series.routed.filter((v) => v !== null))),
  peak_packets_per_s: Math.round(Math.max(...series.packets.filter((v) => v !== null))),
  rss_mib: { start: +series.rss[0].toFixed(1), peak: +Math.max(...series.rss).toFixed(1), end: +series.rss.at(-1).toFixed(1) },
};
console.log(JSON.stringify(summary, null, 1));

// ---------------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------------
const W = 900;
const HEADER = 78;
const PANEL_W = 430;
const PANEL_H = 290;
const GAP = 20;
const MARGIN = { left: 56, right: 56, top: 58, bottom: 40 };
const H = HEADER + 2 * PANEL_H + GAP + 34;
const FONT = "DejaVu Sans, Helvetica, Arial, sans-serif";
const COLORS = { blue: "#1f77b4", orange: "#ff7f0e", green: "#2ca02c", red: "#d62728", purple: "#9467bd", gray: "#7f7f7f" };
const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const xMax = Math.ceil(Math.max(RUN_S, ...series.time) / 5) * 5;

/** A round step giving about 4 intervals up to v, and the axis maximum it gives. */
function niceAxis(v) {
  if (!(v > 0)) return { max: 1, step: 0.25 };
  const raw = (v * 1.05) / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((st) => st >= raw);
  return { max: step * Math.ceil((v * 1.05) / step), step };
}
function fmt(v) {
  if (v >= 10000) return `${+(v / 1000).toFixed(0)}k`;
  if (v >= 1000) return `${+(v / 1000).toFixed(1)}k`;
  return `${+v.toFixed(v < 10 && v % 1 ? 1 : 0)}`;
}

/**
 * One chart. lines: [{ label, values, color, axis: "left"|"right", dash }].
 * Returns SVG text placed at (ox, oy).
 */
function chart({ ox, oy, title, leftLabel, rightLabel, lines, markers = true }) {
  const pw = PANEL_W - MARGIN.left - MARGIN.right;
  const ph = PANEL_H - MARGIN.top - MARGIN.bottom;
  const px = ox + MARGIN.left;
  const py = oy + MARGIN.top;
  const axisOf = (axis) => niceAxis(Math.max(0, ...lines.filter((l) => (l.axis ?? "left") === axis).flatMap((l) => l.values.filter((v) => v !== null))));
  const axes = { left: axisOf("left"), right: rightLabel ? axisOf("right") : undefined };
  const yMax = { left: axes.left.max, right: axes.right?.max ?? 1 };
  const X = (t) => px + (t / xMax) * pw;
  const Y = (v, axis = "left") => py + ph - (v / yMax[axis]) * ph;
  const parts = [];
  parts.push(`<rect x="${ox}" y="${oy}" width="${PANEL_W}" height="${PANEL_H}" rx="6" fill="#fff" stroke="#d0d0d0"/>`);
  parts.push(`<text x="${ox + 14}" y="${oy + 22}" font-size="15" font-weight="bold" fill="#222">${esc(title)}</text>`);
  // Legend under the title.
  let lx = ox + 14;
  for (const l of lines) {
    parts.push(`<line x1="${lx}" y1="${oy + 39}" x2="${lx + 18}" y2="${oy + 39}" stroke="${l.color}" stroke-width="3"${l.dash ? ` stroke-dasharray="${l.dash}"` : ""}/>`);
    parts.push(`<text x="${lx + 23}" y="${oy + 43}" font-size="12" fill="#333">${esc(l.label)}</text>`);
    lx += 23 + l.label.length * 6.8 + 16;
  }
  // Phase shading and markers.
  if (markers) {
    for (const [a, b] of PHASES.refuse) {
      parts.push(`<rect x="${X(a)}" y="${py}" width="${X(b) - X(a)}" height="${ph}" fill="${COLORS.red}" fill-opacity="0.07"/>`);
    }
    parts.push(`<line x1="${X(PHASES.disconnect)}" y1="${py}" x2="${X(PHASES.disconnect)}" y2="${py + ph}" stroke="#555" stroke-dasharray="4 3"/>`);
  }
  // Grid and y ticks.
  for (let yv = 0; yv <= yMax.left + 1e-9; yv += axes.left.step) {
    const y = Y(yv);
    parts.push(`<line x1="${px}" y1="${y}" x2="${px + pw}" y2="${y}" stroke="#e6e6e6"/>`);
    parts.push(`<text x="${px - 6}" y="${y + 4}" font-size="11" text-anchor="end" fill="#444">${fmt(yv)}</text>`);
  }
  if (rightLabel) {
    const rc = lines.find((l) => l.axis === "right").color;
    for (let yv = 0; yv <= yMax.right + 1e-9; yv += axes.right.step) {
      const y = Y(yv, "right");
      parts.push(`<line x1="${px + pw}" y1="${y}" x2="${px + pw + 4}" y2="${y}" stroke="${rc}"/>`);
      parts.push(`<text x="${px + pw + 7}" y="${y + 4}" font-size="11" fill="${rc}">${fmt(yv)}</text>`);
    }
  }
  // x ticks.
  for (let t = 0; t <= xMax; t += 5) {
    parts.push(`<line x1="${X(t)}" y1="${py + ph}" x2="${X(t)}" y2="${py + ph + 4}" stroke="#444"/>`);
    parts.push(`<text x="${X(t)}" y="${py + ph + 17}" font-size="11" text-anchor="middle" fill="#444">${t}</text>`);
  }
  parts.push(`<text x="${px + pw / 2}" y="${py + ph + 33}" font-size="11" text-anchor="middle" fill="#555">time since start (s)</text>`);
  parts.push(`<rect x="${px}" y="${py}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  // Axis labels.
  const leftColor = rightLabel ? lines.find((l) => (l.axis ?? "left") === "left").color : "#444";
  parts.push(`<text transform="translate(${ox + 14} ${py + ph / 2}) rotate(-90)" font-size="11" text-anchor="middle" fill="${leftColor}">${esc(leftLabel)}</text>`);
  if (rightLabel) {
    const rc = lines.find((l) => l.axis === "right").color;
    parts.push(`<text transform="translate(${ox + PANEL_W - 10} ${py + ph / 2}) rotate(90)" font-size="11" text-anchor="middle" fill="${rc}">${esc(rightLabel)}</text>`);
  }
  // Lines.
  for (const l of lines) {
    let d = "";
    let pen = false;
    l.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${X((l.rate ? series.rateTime : series.time)[i]).toFixed(1)},${Y(v, l.axis ?? "left").toFixed(1)} `;
      pen = true;
    });
    parts.push(`<path d="${d.trim()}" fill="none" stroke="${l.color}" stroke-width="2" stroke-linejoin="round"${l.dash ? ` stroke-dasharray="${l.dash}"` : ""}/>`);
  }
  return parts.join("\n");
}

const row1 = HEADER;
const row2 = HEADER + PANEL_H + GAP;
const col1 = 10;
const col2 = W - 10 - PANEL_W;
const svg = `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="${FONT}">
<rect width="${W}" height="${H}" fill="#f7f7f7"/>
<text x="14" y="26" font-size="18" font-weight="bold" fill="#111">frappe-realtime under load: what /metrics showed, scraped every second</text>
<text x="14" y="47" font-size="12.5" fill="#333">${esc(`${tally.connected} websocket clients joined in ${STEPS} steps · ${tally.published} events published over ${PHASES.publish[1] - PHASES.publish[0]} s · ${tally.disconnected} clients disconnected at ${PHASES.disconnect} s · ${tally.refusedTried} handshakes refused`)}</text>
<text x="14" y="65" font-size="12" fill="#555">${esc(`Server: ${summary.binary}${/debug/.test(summary.binary) ? " (debug build)" : ""} on loopback, with redis-server and the tests' fake Frappe; ${samples.length} scrapes of /metrics, 1 s apart.`)}</text>
${chart({ ox: col1, oy: row1, title: "Connected sockets", leftLabel: "sockets",
    lines: [
      { label: "total", values: series.sockets.total, color: COLORS.blue },
      { label: SITES[0], values: series.sockets[SITES[0]], color: COLORS.orange, dash: "6 3" },
      { label: SITES[1], values: series.sockets[SITES[1]], color: COLORS.purple, dash: "2 3" },
    ] })}
${chart({ ox: col2, oy: row1, title: "Handshakes per second by outcome", leftLabel: "handshakes/s",
    lines: [
      { label: "ok", values: series.handshakesOk, rate: true, color: COLORS.green },
      { label: "refused (any reason)", values: series.handshakesRefused, rate: true, color: COLORS.red },
    ] })}
${chart({ ox: col1, oy: row2, title: "Events routed and packets sent per second", leftLabel: "events routed/s", rightLabel: "packets sent/s",
    lines: [
      { label: "events routed/s (left)", values: series.routed, rate: true, color: COLORS.blue },
      { label: "packets sent/s (right)", values: series.packets, rate: true, color: COLORS.orange, axis: "right" },
    ] })}
${chart({ ox: col2, oy: row2, title: "Server resident memory (RSS)", leftLabel: "MiB",
    lines: [{ label: "process_resident_memory_bytes (MiB)", values: series.rss, color: COLORS.purple }] })}
<g font-size="12" fill="#444">
  <rect x="14" y="${H - 24}" width="14" height="10" fill="${COLORS.red}" fill-opacity="0.15"/>
  <text x="34" y="${H - 15}">bursts of refused handshakes</text>
  <line x1="230" y1="${H - 19}" x2="250" y2="${H - 19}" stroke="#555" stroke-dasharray="4 3"/>
  <text x="256" y="${H - 15}">half of the clients disconnect</text>
  <text x="${W - 14}" y="${H - 15}" text-anchor="end">Rates: counter deltas between scrapes · bench/chart.mjs</text>
</g>
</svg>
`;
fs.mkdirSync(path.dirname(OUT), { recursive: true });
fs.writeFileSync(OUT, svg);
console.log(`wrote ${path.relative(process.cwd(), OUT)} (${samples.length} scrapes)`);
