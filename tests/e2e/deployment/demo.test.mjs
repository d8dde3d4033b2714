// The README's first command, scripts/demo, run as a user runs it: the --once form must see an
// event arrive, the interactive form must say what to do next (and what it says must work), and
// a failure must end with a non-zero status and the reason.
//
// The demo uses the sample bench's fixed ports (redis 11000, Frappe 8000, server 9000), so these
// tests run one after another. Every wait is bounded; each process is stopped by its own PID.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { waitFor, ROOT } from "../../support/harness.mjs";

const DEMO = path.join(ROOT, "scripts/demo");
const SERVER_PORT = 9000;
const REDIS_PORT = 11000;

/** scripts/demo with `args`; output collected; `exited` resolves with the exit code. */
function startDemo(args = []) {
  const proc = spawn(DEMO, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  const demo = { proc, output: "" };
  const collect = (chunk) => { demo.output += chunk.toString(); };
  proc.stdout.on("data", collect);
  proc.stderr.on("data", collect);
  demo.exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve(code ?? signal)));
  return demo;
}

/** Wait for the demo to exit within `ms`, else kill it and fail. */
async function exitCode(demo, ms) {
  const timer = setTimeout(() => demo.proc.kill("SIGKILL"), ms);
  const code = await demo.exited;
  clearTimeout(timer);
  return code;
}

function portAnswers(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => { s.destroy(); resolve(true); });
    s.once("error", () => resolve(false));
  });
}

test("scripts/demo --once: the client receives an event and the demo exits 0", { timeout: 180000 }, async () => {
  const demo = startDemo(["--once"]);
  const code = await exitCode(demo, 170000);
  assert.equal(code, 0, demo.output);
  assert.match(demo.output, /client: connected/);
  assert.match(demo.output, /demo --once: the client received \w+/);
  assert.equal(await portAnswers(SERVER_PORT), false, "the server was stopped");
});

test("scripts/demo says what to run next, and what it says works; SIGINT stops it all", { timeout: 180000 }, async () => {
  const demo = startDemo();
  try {
    await waitFor(() => demo.output.includes("demo: ready") || demo.proc.exitCode !== null,
      { timeoutMs: 150000, everyMs: 100, what: "the demo to be ready" });
    assert.match(demo.output, /demo: ready/, demo.output);

    const metricsUrl = /curl (http:\/\/\S+\/metrics)/.exec(demo.output)?.[1];
    assert.ok(metricsUrl, `a metrics URL is printed:\n${demo.output}`);
    const metrics = await (await fetch(metricsUrl, { signal: AbortSignal.timeout(5000) })).text();
    assert.match(metrics, /^frappe_realtime_sockets/m);

    // The printed redis-cli line, run as printed: its message reaches the client.
    const publish = /^\s*publish:\s+(redis-cli .*)$/m.exec(demo.output)?.[1];
    assert.ok(publish, `a redis-cli publish line is printed:\n${demo.output}`);
    assert.match(publish, /msgprint/);
    const r = spawnSync("bash", ["-c", publish], { encoding: "utf8", timeout: 10000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), "1", "one subscriber (the server) got it");
    await waitFor(() => demo.output.includes('client: received msgprint ["hi"'),
      { timeoutMs: 10000, what: "the client to print the published message" });
    assert.match(demo.output, /Ctrl-C stops everything/);
  } finally {
    demo.proc.kill("SIGINT");
  }
  assert.equal(await exitCode(demo, 20000), 0, demo.output);
  assert.equal(await portAnswers(SERVER_PORT), false, "server stopped");
  assert.equal(await portAnswers(REDIS_PORT), false, "the redis-server it started was stopped");
});

test("scripts/demo --once fails with the reason when the server cannot listen", { timeout: 180000 }, async () => {
  const squatter = net.createServer();
  await new Promise((resolve, reject) => {
    squatter.once("error", reject);
    squatter.listen(SERVER_PORT, "127.0.0.1", resolve);
  });
  try {
    const demo = startDemo(["--once"]);
    const code = await exitCode(demo, 170000);
    assert.equal(code, 1, demo.output);
    assert.match(demo.output, /demo: failed: .*server exited/s);
  } finally {
    await new Promise((resolve) => squatter.close(resolve));
  }
});
