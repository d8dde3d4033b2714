// The operator assets in deploy/ only name series the service really exports.
//
// Starts the real stack (redis-server, fake Frappe, the binary), generates traffic that makes
// every lazily-created series appear (a connect, a refused handshake, a doc_subscribe, a
// publication, a malformed publication, a disconnect and reconnect, a stalled websocket whose
// send queue overflows, a Redis restart), scrapes /metrics, and checks that every metric name in
// the Grafana dashboard's expressions and in the Prometheus alert rules is in that scrape and in
// docs/metrics.md. Also runs `promtool check rules` on the alerts and on the dashboard's queries.
//
// Every wait is bounded; everything listens on loopback; everything started is stopped.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {
  startStack, waitFor, refusal, SITES, ROOT, ALICE, ALICE_SID, userRoom,
} from "../../support/harness.mjs";

const DASHBOARD = path.join(ROOT, "deploy/grafana/frappe-realtime.json");
const ALERTS = path.join(ROOT, "deploy/prometheus/alerts.yml");
const CATALOGUE = path.join(ROOT, "docs/metrics.md");
const SITE = SITES[0];
const NAME = /\b(frappe_realtime_[a-z_]+|process_[a-z_]+)\b/g;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Metric names (the part before `{` or the value) of every sample line of a scrape. */
function sampleNames(text) {
  const names = new Set();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
    if (m) names.add(m[1]);
  }
  return names;
}

const histogramBase = (name) => name.replace(/_(bucket|sum|count)$/, "");

/** A referenced name exists if scraped as is, or as a histogram (`<base>_count` / `_bucket`). */
function exists(name, names) {
  if (names.has(name)) return true;
  const base = histogramBase(name);
  return names.has(`${base}_count`) || names.has(`${base}_bucket`);
}

function referencedNames(text) {
  return [...new Set([...text.matchAll(NAME)].map((m) => m[1]))].sort();
}

/** Every PromQL expression of the dashboard: panel targets (rows included) and query variables. */
function dashboardExpressions(dashboard) {
  const exprs = [];
  const walk = (panels) => {
    for (const panel of panels ?? []) {
      for (const t of panel.targets ?? []) if (t.expr) exprs.push({ panel: panel.title, expr: t.expr });
      walk(panel.panels);
    }
  };
  walk(dashboard.panels);
  for (const v of dashboard.templating?.list ?? []) {
    const q = typeof v.query === "string" ? v.query : v.query?.query;
    if (v.type === "query" && q) exprs.push({ panel: `variable $${v.name}`, expr: q });
  }
  return exprs;
}

let promtoolPath;
function promtool(args) {
  if (promtoolPath === undefined) {
    const candidates = [process.env.PROMTOOL, "promtool", "/usr/bin/promtool", "/usr/local/bin/promtool"].filter(Boolean);
    promtoolPath = candidates.find((c) => !spawnSync(c, ["--version"], { timeout: 10000 }).error) ?? null;
  }
  assert.ok(promtoolPath, "promtool is missing: install it (Debian: `apt-get install prometheus`, or the " +
    "release tarball from prometheus.io) or set PROMTOOL=/path/to/promtool");
  const run = spawnSync(promtoolPath, args, { cwd: ROOT, encoding: "utf8", timeout: 30000 });
  assert.ifError(run.error);
  return run;
}

async function scrape(stack) {
  const res = await fetch(`http://127.0.0.1:${stack.port}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  return res.text();
}

/** A masked client text frame (RFC 6455) for a short payload. */
function wsFrame(text) {
  const payload = Buffer.from(text);
  assert.ok(payload.length < 126);
  const mask = crypto.randomBytes(4);
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask,
    Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
}

/**
 * A Socket.IO websocket client on a raw TCP socket that joins `site` as bob and then stops
 * reading, so the kernel buffers fill and the server's per-socket queue overflows.
 */
async function stalledSocket(stack, site = SITE) {
  const sock = net.connect(stack.port, "127.0.0.1");
  let seen = "";
  sock.on("data", (d) => { seen += d.toString("latin1"); });
  sock.on("error", () => {});
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no TCP connect")), 5000);
    sock.once("connect", () => { clearTimeout(timer); resolve(); });
    sock.once("error", (e) => { clearTimeout(timer); reject(e); });
  });
  sock.write([
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", `Host: 127.0.0.1:${stack.port}`,
    "Upgrade: websocket", "Connection: Upgrade", `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}`,
    "Sec-WebSocket-Version: 13", `Origin: ${stack.frappe.url}`, `X-Frappe-Site-Name: ${site}`,
    "Cookie: sid=sid-bob", "", ""].join("\r\n"));
  await waitFor(() => seen.includes('0{"sid"'), { what: "the Engine.IO open packet" });
  sock.write(wsFrame(`40/${site},`));
  await waitFor(() => seen.includes(`40/${site},{`), { what: "the namespace CONNECT ack" });
  sock.pause();
  return sock;
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

let stack;
let names;
let scrapeText;

before(async () => {
  // Slow-consumer bounds out of reach except the queue's, so the stalled socket below makes
  // the send-queue drop counter move before it is cut.
  stack = await startStack({ common: { realtime_slow_client_max_bytes: 1e9, realtime_slow_client_timeout: 600 } });

  // A connect, a doc_subscribe (permission call) and a publication delivered to it.
  const alice = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
  alice.emit("doc_subscribe", "ToDo", "TODO-0001");
  await waitFor(() => stack.frappe.calls.some((c) => !c.path.endsWith("get_user_info")),
    { what: "the doc_subscribe permission call" });
  await stack.publishUntilReceived(alice, userRoom(ALICE));

  // A refused handshake, a malformed publication and one for an unknown site.
  assert.equal(await refusal(stack.socket({ sid: ALICE_SID, origin: "http://evil.example" })), "Invalid origin");
  await stack.redis.publish("not json");
  await stack.publish("x", {}, { site: "no-such-site.local", room: "all" });

  // A disconnect, then the same user back within the reconnect window.
  alice.disconnect();
  await waitFor(async () => /frappe_realtime_disconnects_total\{/.test(await scrape(stack)),
    { timeoutMs: 5000, everyMs: 100, what: "the disconnect to be counted" });
  await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });

  // A socket that stops reading: flood its user room until its send queue overflows.
  const stalled = await stalledSocket(stack);
  try {
    const big = "x".repeat(16384);
    let sent = 0;
    await waitFor(async () => {
      for (let i = 0; i < 200 && sent < 12000; i++, sent++) {
        await stack.publish("bulk", { big, i: sent }, { room: "user:bob@example.com" });
      }
      return /frappe_realtime_socket_send_dropped_total\{[^}]*\} [1-9]/.test(await scrape(stack));
    }, { timeoutMs: 30000, everyMs: 10, what: "a send-queue drop" });
  } finally {
    stalled.destroy();
  }

  // Redis goes away and comes back: the server re-subscribes.
  await stack.redis.restart();
  await stack.waitSubscribed();
  await waitFor(async () => /frappe_realtime_redis_reconnects_total [1-9]/.test(await scrape(stack)),
    { timeoutMs: 10000, everyMs: 100, what: "the Redis re-subscription to be counted" });

  scrapeText = await scrape(stack);
  names = sampleNames(scrapeText);
});

after(async () => { await stack?.stop(); });

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

test("the dashboard is an importable Grafana dashboard with the datasource and site variables", () => {
  const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, "utf8"));
  assert.ok(dashboard.schemaVersion >= 36 && dashboard.schemaVersion <= 41, `schemaVersion ${dashboard.schemaVersion}`);
  assert.equal(dashboard.id, null);
  const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
  assert.equal(vars.DS_PROMETHEUS?.type, "datasource");
  assert.equal(vars.DS_PROMETHEUS.query, "prometheus");
  assert.equal(vars.site?.type, "query");
  assert.match(vars.site.definition, /^label_values\(frappe_realtime_sockets(\{[^}]*\})?, site\)$/);
  const ids = new Set();
  for (const panel of dashboard.panels) {
    assert.ok(!ids.has(panel.id), `duplicate panel id ${panel.id}`);
    ids.add(panel.id);
    for (const k of ["h", "w", "x", "y"]) assert.equal(typeof panel.gridPos?.[k], "number", `${panel.title}: gridPos.${k}`);
    assert.ok(panel.gridPos.x + panel.gridPos.w <= 24, `${panel.title} is wider than the grid`);
    if (panel.type === "row") continue;
    assert.equal(panel.datasource?.uid, "${DS_PROMETHEUS}", `${panel.title}: datasource`);
    assert.ok(panel.targets?.length, `${panel.title} has no query`);
    for (const t of panel.targets) assert.equal(t.datasource?.uid, "${DS_PROMETHEUS}", `${panel.title}: target datasource`);
  }
  const exprs = dashboardExpressions(dashboard).map((e) => e.expr).join("\n");
  for (const needed of ["frappe_realtime_reconnect_delay_seconds_bucket", "frappe_realtime_redis_last_message_timestamp_seconds",
    "process_resident_memory_bytes", "frappe_realtime_build_info", "histogram_quantile(0.95"]) {
    assert.ok(exprs.includes(needed), `no panel uses ${needed}`);
  }
});

for (const [asset, file, extract] of [
  ["dashboard", DASHBOARD, (text) => dashboardExpressions(JSON.parse(text)).map((e) => e.expr).join("\n")],
  ["alert rules", ALERTS, (text) => text],
]) {
  test(`every metric in the ${asset} is in a live scrape and in docs/metrics.md`, () => {
    const referenced = referencedNames(extract(fs.readFileSync(file, "utf8")));
    assert.ok(referenced.length >= 10, `only ${referenced.length} metric names found in ${file}`);
    const missing = referenced.filter((n) => !exists(n, names));
    assert.deepEqual(missing, [], `${path.relative(ROOT, file)} references series the server does not export:\n` +
      `${missing.join("\n")}\nscraped:\n${[...names].sort().join("\n")}`);
    const catalogue = fs.readFileSync(CATALOGUE, "utf8");
    const undocumented = referenced.filter((n) => !catalogue.includes(`\`${histogramBase(n)}\``));
    assert.deepEqual(undocumented, [], `not in docs/metrics.md: ${undocumented.join(", ")}`);
  });
}

test("promtool check rules accepts deploy/prometheus/alerts.yml", () => {
  const run = promtool(["check", "rules", ALERTS]);
  assert.equal(run.status, 0, `promtool check rules failed:\n${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /SUCCESS: \d+ rules found/);
  const alerts = [...fs.readFileSync(ALERTS, "utf8").matchAll(/^\s+- alert: (\w+)/gm)].map((m) => m[1]);
  for (const name of ["RealtimeDown", "RedisSubscriptionDown", "RedisFlapping", "HandshakeRefusalsHigh", "FrappeAuthErrors",
    "FrappeCallsSlow", "EventsDropped", "SocketSendDrops", "ReconnectStorm", "HighMemory", "FdsNearLimit"]) {
    assert.ok(alerts.includes(name), `alert ${name} is missing`);
  }
});

test("every dashboard query is valid PromQL (promtool, with the variables substituted)", () => {
  const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, "utf8"));
  const exprs = dashboardExpressions(dashboard).filter((e) => !e.expr.startsWith("label_values("));
  const rules = exprs.map((e, i) => {
    const expr = e.expr.replaceAll("$__rate_interval", "1m").replaceAll("$__range", "1h")
      .replace(/\$\{?(instance|site)\}?/g, ".*");
    assert.doesNotMatch(expr, /\$/, `${e.panel}: unknown variable in ${e.expr}`);
    return `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(expr)}\n`;
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dashboard-promql-"));
  try {
    const file = path.join(dir, "queries.yml");
    fs.writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join("")}`);
    const run = promtool(["check", "rules", file]);
    assert.equal(run.status, 0, `a dashboard query does not parse:\n${run.stdout}\n${run.stderr}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
