// Benchmark: memory per idle connection. Prints figures, asserts nothing.
// Starts redis-server, the fake Frappe and the release binary on loopback (the server pinned
// to CPU 0 with taskset), reads the server's VmRSS, connects N socket.io-client sockets to one
// namespace (as alice, a System User: 3 rooms each), waits for them to settle, reads VmRSS
// again, optionally once more after a ping cycle, and prints (after - before) / N.
//
// Usage: scripts/bench-memory [clients=2000] [websocket|polling|polling-only] [hold_s=0]
//   polling = Frappe's default: polling first, then the upgrade to websocket;
//   polling-only = clients that never upgrade (each holds a pending long-poll GET).
//   hold_s  = also read RSS again after this many seconds (25 s = one ping interval).
// Environment: HEAPTRACK=<file prefix> runs the server under heaptrack and SIGKILLs it once
//   measured, so heaptrack_print's "leaked" figures are the live heap with N clients;
//   MALLOC_STATS=1 also asks glibc for its in-use bytes (gdb attach, `malloc_stats()`);
//   SERVER_ENV='K=V ...' extra environment for the server (e.g. MALLOC_ARENA_MAX=1);
//   BROWSER_HEADERS=1 adds the headers a browser behind bench's nginx sends (User-Agent,
//   Accept-*, X-Forwarded-*, Frappe's cookies...), 16 headers in all instead of 8.
// Run the client side on the other CPU: `taskset -c 1 node bench/memory.mjs ...`.
// Every wait is bounded; every process started here is stopped by its own PID.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const clients = Number(process.argv[2] ?? 2000);
const transport = process.argv[3] ?? "websocket";
const holdS = Number(process.argv[4] ?? 0);
const BATCH = 200;
const SETTLE_MS = 5000;

const binary = path.resolve(process.env.FRAPPE_REALTIME_BIN ?? path.join(ROOT, "target/release/frappe-realtime"));
const heaptrack = process.env.HEAPTRACK;
const wrapper = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "memwrap-")), "server.sh");
fs.writeFileSync(wrapper, heaptrack
  ? `#!/bin/sh\nexec taskset -c 0 heaptrack -o ${JSON.stringify(heaptrack)} ${JSON.stringify(binary)} "$@"\n`
  : `#!/bin/sh\nexec taskset -c 0 ${JSON.stringify(binary)} "$@"\n`, { mode: 0o755 });
process.env.FRAPPE_REALTIME_BIN = wrapper;
const { startStack, waitFor } = await import("../tests/support/harness.mjs");

const env = Object.fromEntries((process.env.SERVER_ENV ?? "").split(/\s+/).filter(Boolean)
  .map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
const browserHeaders = process.env.BROWSER_HEADERS ? {
  "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  "accept-language": "en-US,en;q=0.9,de;q=0.8",
  "accept-encoding": "gzip, deflate, br, zstd",
  "cache-control": "no-cache",
  pragma: "no-cache",
  "x-forwarded-for": "203.0.113.7",
  "x-forwarded-proto": "https",
  "x-real-ip": "203.0.113.7",
  cookie: "sid=sid-alice; system_user=yes; full_name=Alice%20Example; user_id=alice%40example.com; user_image=",
} : {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The frappe-realtime process itself (under heaptrack it is a grandchild of the wrapper). */
function serverPid(rootPid) {
  const queue = [rootPid];
  while (queue.length) {
    const pid = queue.shift();
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "frappe-realtime") return pid;
      for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
        const children = fs.readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
        if (children) queue.push(...children.split(" ").map(Number));
      }
    } catch { /* gone */ }
  }
  return undefined;
}

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

/** glibc's own count of bytes in use (all arenas), via `malloc_stats()` on stderr. */
function mallocInUse(stack, pid) {
  const before = stack.server.output.length;
  execFileSync("gdb", ["-p", String(pid), "-batch", "-ex", "call (void)malloc_stats()"],
    { stdio: "ignore", timeout: 30000 });
  return waitFor(() => {
    const text = stack.server.output.slice(before);
    const m = /Total \(incl\. mmap\):\s*\n\s*system bytes\s*=\s*(\d+)\s*\n\s*in use bytes\s*=\s*(\d+)/.exec(text);
    return m && { system: Number(m[1]), inUse: Number(m[2]) };
  }, { timeoutMs: 5000, what: "malloc_stats output" });
}

const stack = await startStack({ version: 16, env, serverArgs: ["--host", "127.0.0.1", "--no-metrics"] });
const pid = await waitFor(() => serverPid(stack.server.proc.pid), { what: "the server's pid" });
const sockets = [];
try {
  await sleep(1000);
  const before = rssKiB(pid);
  const heapBefore = process.env.MALLOC_STATS ? await mallocInUse(stack, pid) : undefined;
  const started = performance.now();
  for (let i = 0; i < clients; i += BATCH) {
    const batch = [];
    for (let j = i; j < Math.min(clients, i + BATCH); j++) {
      const s = stack.socket({ sid: "sid-alice", headers: browserHeaders, transports: {
        polling: ["polling", "websocket"], "polling-only": ["polling"], websocket: ["websocket"] }[transport] });
      sockets.push(s);
      batch.push(new Promise((resolve, reject) => {
        s.once("connect", resolve);
        s.once("connect_error", reject);
      }));
    }
    await Promise.all(batch);
  }
  const connectMs = performance.now() - started;
  if (transport === "polling") {
    await waitFor(() => sockets.every((s) => s.io.engine.transport.name === "websocket"),
      { timeoutMs: 30000, what: "every client to upgrade" });
  }
  await sleep(SETTLE_MS);
  const after = rssKiB(pid);
  const heapAfter = process.env.MALLOC_STATS ? await mallocInUse(stack, pid) : undefined;
  let afterHold;
  if (holdS > 0) {
    await sleep(holdS * 1000);
    afterHold = rssKiB(pid);
  }
  const alive = sockets.filter((s) => s.connected).length;
  const figures = {
    transport,
    clients,
    alive,
    env: process.env.SERVER_ENV ?? "",
    browser_headers: Boolean(process.env.BROWSER_HEADERS),
    connect_all_ms: Math.round(connectMs),
    rss_before_kib: before,
    rss_after_kib: after,
    rss_per_connection_kib: +((after - before) / clients).toFixed(2),
    ...(afterHold !== undefined && {
      hold_s: holdS,
      rss_after_hold_kib: afterHold,
      rss_per_connection_after_hold_kib: +((afterHold - before) / clients).toFixed(2),
    }),
    ...(heapAfter && {
      heap_in_use_per_connection_b: Math.round((heapAfter.inUse - heapBefore.inUse) / clients),
      heap_system_per_connection_b: Math.round((heapAfter.system - heapBefore.system) / clients),
    }),
  };
  console.log(JSON.stringify(figures));
  if (heaptrack) {
    // Kill while connected: heaptrack's "leaked" is then what was live at this moment.
    process.kill(pid, "SIGKILL");
    await waitFor(() => stack.server.proc.exitCode !== null || stack.server.proc.signalCode !== null,
      { timeoutMs: 120000, what: "heaptrack to finish" });
  }
} catch (err) {
  console.error(`bench/memory.mjs: ${err.message} (${sockets.filter((s) => s.connected).length} connected)`);
  process.exitCode = 1;
} finally {
  for (const s of sockets) s.disconnect();
  await stack.stop();
  fs.rmSync(path.dirname(wrapper), { recursive: true, force: true });
}
