// The official protocol test suites (tests/protocol-suites/, vendored unmodified) against our
// own layers: engine.io-protocol against our Engine.IO server (`protocol_suite engine-io`),
// socket.io-protocol against our Socket.IO layer over it (`protocol_suite socket-io`), each
// serving its suite's contract on 127.0.0.1:3000, one after the other. Every test of each
// suite must pass.
//
// Nothing is built here: scripts/test builds target/release/examples/protocol_suite
// (`cargo build --release --example protocol_suite`). The suite's URL is fixed at
// http://localhost:3000, so this fails at once, saying so, when something else listens there.
// `npm ci` runs in the suite's folder when its node_modules/ is missing or older than its
// lock file. Only Node's own modules are used here (the suite brings its own packages). Every
// wait is bounded; the server is stopped by its own PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const SERVER = path.resolve(process.env.PROTOCOL_SUITE_BIN ?? path.join(ROOT, "target/release/examples/protocol_suite"));
const SUITES = [
  { mode: "engine-io", dir: path.join(ROOT, "tests/protocol-suites/engine.io"), name: "engine.io-protocol" },
  { mode: "socket-io", dir: path.join(ROOT, "tests/protocol-suites/socket.io"), name: "socket.io-protocol" },
];
const PORT = 3000;

/** Whether something accepts connections on 127.0.0.1:`port`. */
function listening(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => { socket.destroy(); resolve(true); });
    socket.once("error", () => resolve(false));
  });
}

/** Run `command` in `cwd` to its end, at most `timeoutMs`; its exit code and output. */
function run(command, args, { cwd, timeoutMs }) {
  return new Promise((resolve) => {
    const proc = spawn(command, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    proc.stdout.on("data", (chunk) => { output += chunk; });
    proc.stderr.on("data", (chunk) => { output += chunk; });
    const timer = setTimeout(() => {
      output += `\n(killed after ${timeoutMs} ms)`;
      proc.kill("SIGKILL");
    }, timeoutMs);
    proc.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, output });
    });
  });
}

/** `npm ci` when node_modules/ does not match the lock file (npm writes its copy of the lock
 * into node_modules/ on every install), as scripts/setup does for the repository's own. */
async function npmPackages(dir) {
  const installed = path.join(dir, "node_modules/.package-lock.json");
  const lock = path.join(dir, "package-lock.json");
  if (fs.existsSync(installed) && fs.statSync(installed).mtimeMs >= fs.statSync(lock).mtimeMs) return;
  const { code, output } = await run("npm", ["ci", "--no-audit", "--no-fund"], { cwd: dir, timeoutMs: 300_000 });
  assert.equal(code, 0, `npm ci in ${dir} failed:\n${output}`);
}

/** The server, started the way a user starts it; its output is kept for failure messages. */
async function startServer(mode) {
  assert.ok(fs.existsSync(SERVER),
    `${SERVER} is missing: build it with \`cargo build --release --example protocol_suite\` (scripts/test does)`);
  assert.ok(!(await listening(PORT)),
    `something already listens on 127.0.0.1:${PORT}, the port the protocol suites' URL names; stop it first`);
  const server = { output: "" };
  server.proc = spawn(SERVER, [mode], { stdio: ["ignore", "pipe", "pipe"] });
  server.proc.stdout.on("data", (chunk) => { server.output += chunk; });
  server.proc.stderr.on("data", (chunk) => { server.output += chunk; });
  server.exited = new Promise((resolve) => server.proc.once("exit", resolve));
  const deadline = Date.now() + 10_000;
  while (server.proc.exitCode === null && !(await listening(PORT))) {
    assert.ok(Date.now() < deadline, `protocol_suite ${mode} did not listen on ${PORT} in 10 s:\n${server.output}`);
    await sleep(50);
  }
  assert.equal(server.proc.exitCode, null, `protocol_suite ${mode} exited:\n${server.output}`);
  return server;
}

async function stopServer(server) {
  if (!server || server.proc.exitCode !== null || server.proc.signalCode !== null) return;
  server.proc.kill("SIGTERM");
  const timer = setTimeout(() => server.proc.kill("SIGKILL"), 5000);
  await server.exited;
  clearTimeout(timer);
}

/** The part of mocha's output worth reading on failure: from its "N failing" report on (each
 * failed test with its assertion), or the whole output when there is none (it did not run).
 * The runner's own report shortens long messages, and a test's name is what it needs. */
function failures(output) {
  const start = output.search(/^\s*\d+ failing/m);
  return start < 0 ? output : output.slice(start);
}

/** mocha's summary: how many passed and failed. */
function summary(output) {
  const count = (word) => Number(new RegExp(`^\\s*(\\d+) ${word}`, "m").exec(output)?.[1] ?? 0);
  return { passing: count("passing"), failing: count("failing") };
}

for (const suite of SUITES) {
  describe(`the official ${suite.name} suite`, () => {
    let server;
    before(async () => {
      await npmPackages(suite.dir);
      server = await startServer(suite.mode);
    });
    after(async () => { await stopServer(server); });

    test(`every test of ${suite.name} passes against protocol_suite ${suite.mode}`, { timeout: 180_000 }, async () => {
      const tests = fs.readFileSync(path.join(suite.dir, "test-suite.js"), "utf8").match(/\bit\(/g).length;
      const { code, output } = await run("npm", ["test"], { cwd: suite.dir, timeoutMs: 120_000 });
      const context = `npm test:\n${failures(output)}\nserver (last 4 KB):\n${server.output.slice(-4096)}`;
      assert.deepEqual(summary(output), { passing: tests, failing: 0 }, context);
      assert.equal(code, 0, context);
    });
  });
}
