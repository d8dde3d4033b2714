// How the process starts and what it speaks: the bench's configuration (protocol §1.1–§1.4),
// Redis URL forms (§1.3), sites appearing and disappearing (§3.1), the Socket.IO server
// options and HTTP surface (§2.1, §1.4), and shutdown on SIGTERM (§9.1: supervisor stops it so).
//
// Every wait is bounded; every process started here is stopped by its own PID.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { FakeFrappe } from "../../support/fake-frappe.mjs";
import {
  Redis, Server, Stack, startStack, makeBench, addSite, freePort, waitFor, nextEvent, refusal,
  SITES, ALICE, ALICE_SID, unique, userRoom,
} from "../../support/harness.mjs";

const [SITE1] = SITES;
const ALICE_ROOM = userRoom(ALICE);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Resolve with `promise`, or reject after `ms` naming `what`. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A fresh temporary directory (removed by `cleanup`). */
function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  cleanup.dirs.push(dir);
  return dir;
}

/** Processes, servers and directories a test started; `cleanup.run()` stops them by PID. */
const cleanup = {
  servers: [],
  redises: [],
  dirs: [],
  async run() {
    for (const server of this.servers.splice(0)) await server.stop();
    for (const redis of this.redises.splice(0)) await redis.stop();
    for (const dir of this.dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
  },
};

/** Start the binary (cleaned up after the test). */
async function startServer(options) {
  const server = await Server.start({ port: options.port, ...options });
  cleanup.servers.push(server);
  return server;
}

/** A harness redis-server on a free loopback port (cleaned up after the test). */
async function startRedis() {
  const redis = await Redis.start();
  cleanup.redises.push(redis);
  return redis;
}

/** A bench for `sites` (cleaned up after the test). */
function bench(options) {
  const dir = makeBench(options);
  cleanup.dirs.push(dir);
  return dir;
}

/** GET the Engine.IO open packet over TCP; returns its JSON (asserting the `0{` frame). */
async function openPacket(port, headers = {}) {
  const res = await fetch(`http://127.0.0.1:${port}/socket.io/?EIO=4&transport=polling`,
    { headers, signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  const body = await res.text();
  assert.match(body, /^0\{/, `an Engine.IO open packet (got ${body.slice(0, 80)})`);
  return { packet: JSON.parse(body.slice(1)), headers: res.headers };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function tcpOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.setTimeout(2000, () => { socket.destroy(); resolve(false); });
    socket.once("connect", () => { socket.destroy(); resolve(true); });
    socket.once("error", () => resolve(false));
  });
}

/** GET the Engine.IO open packet over a Unix socket; returns the body. */
function udsOpen(socketPath) {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: "/socket.io/?EIO=4&transport=polling", timeout: 3000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { body += chunk; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("timeout", () => req.destroy(new Error("no answer on the Unix socket")));
    req.on("error", reject);
    req.end();
  });
}

/** Leave a stale Unix socket file at `socketPath`: bind it in a child, then SIGKILL the child. */
async function staleSocketFile(socketPath) {
  const child = spawn(process.execPath, ["-e",
    "require('net').createServer().listen(process.argv[1], () => console.log('bound'))", socketPath],
  { stdio: ["ignore", "pipe", "ignore"] });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    await within(new Promise((resolve) => child.stdout.once("data", resolve)), 5000, "the child to bind");
  } finally {
    child.kill("SIGKILL");
    await exited;
  }
  assert.ok(fs.statSync(socketPath).isSocket(), "a socket file was left behind");
  const refused = await new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once("connect", () => { c.destroy(); resolve(false); });
    c.once("error", (e) => resolve(e.code === "ECONNREFUSED"));
  });
  assert.ok(refused, "nobody listens on the stale socket");
}

/** The server's exit code, which must come within `ms`. */
function exitCode(server, ms = 5000) {
  return within(server.exited, ms, "the server to exit");
}

/** The port written in the bench's sites/common_site_config.json. */
function configuredPort(benchDir) {
  return JSON.parse(fs.readFileSync(path.join(benchDir, "sites/common_site_config.json"), "utf8")).socketio_port;
}

/**
 * A Frappe 15 bench whose `redis_queue` is `redisQueue` (served by `events`, a harness
 * Redis). The fake Frappe keeps its own Redis: Frappe 15 needs none for auth.
 */
async function stackWithRedisQueue({ redisQueue, events }) {
  // What was started is stopped again if a later step fails: a server left running would
  // keep this file's process alive after its last test.
  const started = [() => events.stop()];
  try {
    const frappeRedis = await startRedis();
    const frappe = await new FakeFrappe({ version: 15, redisUrl: frappeRedis.url }).listen();
    started.push(() => frappe.close());
    for (const site of SITES) {
      frappe.addSite(site);
      frappe.addSession(site, ALICE_SID, ALICE);
    }
    const port = await freePort();
    const benchDir = makeBench({ version: 15, common: { socketio_port: port, redis_queue: redisQueue } });
    const server = await Server.start({ bench: benchDir, port });
    started.push(() => server.stop());
    const stack = new Stack({ redis: events, frappe, bench: benchDir, server, port });
    await stack.waitSubscribed();
    return stack;
  } catch (err) {
    for (const stop of started.reverse()) await stop().catch(() => {});
    throw err;
  }
}

/** A raw Engine.IO long-polling session, opened with a browser's headers for `site`. */
async function rawPollingSession(stack, { site = SITE1, sid = ALICE_SID } = {}) {
  const base = `http://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=polling`;
  const headers = { origin: stack.frappe.url, "x-frappe-site-name": site, cookie: `sid=${sid}` };
  const opened = await fetch(base, { headers, signal: AbortSignal.timeout(3000) });
  const body = await opened.text();
  assert.match(body, /^0\{/);
  const url = `${base}&sid=${JSON.parse(body.slice(1)).sid}`;
  return {
    post: (payload) => fetch(url, {
      method: "POST",
      headers: { ...headers, "content-type": "text/plain;charset=UTF-8" },
      body: payload,
      signal: AbortSignal.timeout(10000),
    }),
    /** One long-poll GET; its packets (Engine.IO v4 separates them with \x1e). */
    poll: async () => {
      const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
      assert.equal(res.status, 200);
      return (await res.text()).split("\x1e");
    },
  };
}

/** Poll until one of the packets satisfies `match` (bounded); returns every packet seen. */
async function pollUntil(session, match, what) {
  const seen = [];
  await waitFor(async () => {
    const packets = await session.poll();
    seen.push(...packets);
    return packets.some(match);
  }, { timeoutMs: 8000, everyMs: 0, what }).catch((err) => {
    throw new Error(`${err.message} (seen: ${seen.map((p) => p.slice(0, 60)).join(" | ")})`);
  });
  return seen;
}

// ---------------------------------------------------------------------------------------------
// §1.1, §1.2: started like Frappe's service, reading the bench's configuration
// ---------------------------------------------------------------------------------------------

describe("§1.1/§1.2 start-up: cwd = bench, config files, precedence, environment, --bench", () => {
  afterEach(() => cleanup.run());

  test("started in the bench with no arguments but --host, it serves socketio_port and delivers events", async () => {
    const stack = await startStack();
    try {
      assert.equal(stack.server.proc.spawnargs.slice(1).join(" "), "--host 127.0.0.1");
      const port = configuredPort(stack.bench);
      assert.equal(port, stack.port);
      assert.match(stack.server.output, /Realtime service listening on/);
      assert.equal(await tcpOpen(port), true);
      await openPacket(port);
      const socket = await stack.connect({ sid: ALICE_SID });
      const got = nextEvent(socket, "msgprint");
      await stack.publish("msgprint", "served", { room: ALICE_ROOM });
      assert.deepEqual(await got, ["served"]);
    } finally {
      await stack.stop();
    }
  });

  test("config.json is read first and sites/common_site_config.json wins", async () => {
    const redis = await startRedis();
    const [legacyPort, commonPort] = [await freePort(), await freePort()];
    const dir = bench({
      legacy: { socketio_port: legacyPort, redis_queue: redis.url },
      common: { socketio_port: commonPort },
    });
    await startServer({ bench: dir });
    await openPacket(commonPort);
    assert.equal(await tcpOpen(legacyPort), false, "config.json's port lost to common_site_config's");
    // A key only config.json has is still used: redis_queue.
    await waitFor(async () => (await redis.subscribers()) >= 1, { what: "the subscription on config.json's Redis" });
  });

  for (const falsy of [0, "", false, null]) {
    test(`a falsy value (${JSON.stringify(falsy)}) in common_site_config.json never overrides`, async () => {
      const redis = await startRedis();
      const port = await freePort();
      const dir = bench({
        legacy: { socketio_port: port, redis_queue: redis.url },
        common: { socketio_port: falsy, redis_queue: falsy },
      });
      await startServer({ bench: dir });
      await openPacket(port);
      await waitFor(async () => (await redis.subscribers()) >= 1, { what: "the subscription on config.json's Redis" });
    });
  }

  test("FRAPPE_SOCKETIO_PORT overrides socketio_port", async () => {
    const redis = await startRedis();
    const [filePort, envPort] = [await freePort(), await freePort()];
    const dir = bench({ common: { socketio_port: filePort, redis_queue: redis.url } });
    await startServer({ bench: dir, env: { FRAPPE_SOCKETIO_PORT: String(envPort) } });
    await openPacket(envPort);
    assert.equal(await tcpOpen(filePort), false, "the file's port is not used");
  });

  test("FRAPPE_REDIS_QUEUE overrides redis_queue", async () => {
    const [fileRedis, envRedis] = [await startRedis(), await startRedis()];
    const port = await freePort();
    const dir = bench({ common: { socketio_port: port, redis_queue: fileRedis.url } });
    await startServer({ bench: dir, env: { FRAPPE_REDIS_QUEUE: envRedis.url } });
    await waitFor(async () => (await envRedis.subscribers()) >= 1, { what: "the subscription on the env's Redis" });
    assert.equal(await fileRedis.subscribers(), 0, "the file's Redis is not used");
  });

  test("--bench DIR works from another working directory", async () => {
    const redis = await startRedis();
    const port = await freePort();
    const dir = bench({ common: { socketio_port: port, redis_queue: redis.url } });
    const elsewhere = tempDir("not-a-bench-");
    await startServer({ bench: elsewhere, args: ["--bench", dir, "--host", "127.0.0.1"] });
    await openPacket(port);
    await waitFor(async () => (await redis.subscribers()) >= 1, { what: "the subscription" });
  });
});

// ---------------------------------------------------------------------------------------------
// §1.2, §1.4: socketio_uds / FRAPPE_SOCKETIO_UDS
// ---------------------------------------------------------------------------------------------

describe("§1.4 Unix socket listener (socketio_uds, FRAPPE_SOCKETIO_UDS)", () => {
  afterEach(() => cleanup.run());

  test("socketio_uds: listens on the socket (not the port), removing a stale socket file first", async () => {
    const redis = await startRedis();
    const port = await freePort();
    const socketPath = path.join(tempDir("rt-uds-"), "realtime.sock");
    await staleSocketFile(socketPath);
    const dir = bench({ common: { socketio_uds: socketPath, socketio_port: port, redis_queue: redis.url } });
    const server = await startServer({ bench: dir });
    assert.ok(server.output.includes(socketPath), "the start-up line names the socket path");
    const { status, body } = await udsOpen(socketPath);
    assert.equal(status, 200);
    assert.match(body, /^0\{/);
    assert.equal(await tcpOpen(port), false, "socketio_port is not used when socketio_uds is set");
  });

  test("FRAPPE_SOCKETIO_UDS: listens on that socket instead of the configured port", async () => {
    const redis = await startRedis();
    const port = await freePort();
    const socketPath = path.join(tempDir("rt-uds-env-"), "env.sock");
    const dir = bench({ common: { socketio_port: port, redis_queue: redis.url } });
    await startServer({ bench: dir, env: { FRAPPE_SOCKETIO_UDS: socketPath } });
    const { status, body } = await udsOpen(socketPath);
    assert.equal(status, 200);
    assert.match(body, /^0\{/);
    assert.equal(await tcpOpen(port), false);
  });
});

// ---------------------------------------------------------------------------------------------
// §1.2: invalid configuration makes the process exit, naming the file and key
// ---------------------------------------------------------------------------------------------

describe("§1.2 invalid configuration: non-zero exit, the message names file and key", () => {
  afterEach(() => cleanup.run());

  const cases = [
    {
      name: "invalid JSON in sites/common_site_config.json",
      setup: (dir) => fs.writeFileSync(path.join(dir, "sites/common_site_config.json"), '{"socketio_port": 9000,'),
      expect: () => [/sites\/common_site_config\.json/],
    },
    {
      name: "invalid JSON in the legacy config.json",
      setup: (dir) => fs.writeFileSync(path.join(dir, "config.json"), "{oops"),
      expect: () => [/(?<!common_site_)config\.json/],
    },
    {
      name: 'socketio_port: "abc"',
      common: { socketio_port: "abc" },
      expect: () => [/common_site_config\.json/, /socketio_port/],
    },
    {
      name: "socketio_port: 70000 (not a port)",
      common: { socketio_port: 70000 },
      expect: () => [/common_site_config\.json/, /socketio_port/],
    },
    {
      name: "FRAPPE_SOCKETIO_PORT=abc",
      env: { FRAPPE_SOCKETIO_PORT: "abc" },
      expect: () => [/FRAPPE_SOCKETIO_PORT/],
    },
    {
      name: "no redis_queue anywhere",
      common: { redis_queue: undefined },
      expect: () => [/redis_queue/, /common_site_config\.json/],
    },
    {
      name: "redis_queue that is not a Redis URL (its credentials are not echoed)",
      common: { redis_queue: "http://user:hunter2-secret@127.0.0.1:1" },
      expect: () => [/common_site_config\.json/, /redis_queue/],
      absent: ["hunter2-secret"],
    },
  ];

  for (const c of cases) {
    test(c.name, async () => {
      const port = await freePort();
      const common = { socketio_port: port, redis_queue: "redis://127.0.0.1:1", ...c.common };
      const dir = bench({ common: JSON.parse(JSON.stringify(common)) });
      c.setup?.(dir);
      const server = await startServer({ bench: dir, env: c.env ?? {}, waitListening: false });
      const code = await exitCode(server);
      assert.notEqual(code, 0, `exit status (output: ${server.output})`);
      for (const needle of c.expect()) assert.match(server.output, needle, "the output names the file and key");
      for (const secret of c.absent ?? []) assert.ok(!server.output.includes(secret), `the output leaks ${secret}`);
      assert.doesNotMatch(server.output, /listening on/);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// §1.3: Redis URL forms
// ---------------------------------------------------------------------------------------------

describe("§1.3 Redis URL forms: unix://, credentials in the URL, a db number", () => {
  let stack;
  afterEach(async () => {
    await stack?.stop();
    stack = undefined;
    await cleanup.run();
  });

  /** Connect alice, publish through `events`, and expect the event. */
  async function assertDelivers() {
    const socket = await stack.connect({ sid: ALICE_SID });
    const marker = unique("url-form");
    const got = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", { marker }, { room: ALICE_ROOM });
    assert.deepEqual(await got, [{ marker }]);
  }

  test("unix:///path/redis.sock", async () => {
    const socketPath = path.join(tempDir("redis-uds-"), "redis.sock");
    const events = await Redis.start({
      port: 0,
      args: ["--unixsocket", socketPath, "--unixsocketperm", "700"],
      clientOptions: { socket: { path: socketPath } },
    });
    stack = await stackWithRedisQueue({ redisQueue: `unix://${socketPath}`, events });
    await assertDelivers();
  });

  const PASSWORD = "Pa55-w0rd-xyzzy";
  for (const [label, url] of [
    ["redis://default:<password>@host:port", (port) => `redis://default:${PASSWORD}@127.0.0.1:${port}`],
    ["redis://:<password>@host:port", (port) => `redis://:${PASSWORD}@127.0.0.1:${port}`],
  ]) {
    test(`${label} against a server with requirepass (the password is not logged)`, async () => {
      const port = await freePort();
      const events = await Redis.start({
        port,
        args: ["--requirepass", PASSWORD],
        clientOptions: { url: `redis://127.0.0.1:${port}`, password: PASSWORD },
      });
      stack = await stackWithRedisQueue({ redisQueue: url(port), events });
      await assertDelivers();
      assert.ok(!stack.server.output.includes(PASSWORD), "the password appears in the log");
    });
  }

  test("redis://localhost:port (§1.4: localhost resolves to 127.0.0.1)", async () => {
    const events = await Redis.start(); // stopped by stack.stop()
    stack = await stackWithRedisQueue({ redisQueue: `redis://localhost:${events.port}`, events });
    await assertDelivers();
  });

  test("redis://host:port/db (pub/sub ignores the db number)", async () => {
    const events = await Redis.start(); // stopped by stack.stop()
    stack = await stackWithRedisQueue({ redisQueue: `${events.url}/3`, events });
    await assertDelivers();
  });
});

// ---------------------------------------------------------------------------------------------
// §3.1: sites created or removed while running
// ---------------------------------------------------------------------------------------------

describe("§3.1 sites added or removed later are seen without a restart", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  const SITE3 = "site3.local";

  /** Try to connect to `site` until it is accepted (bounded: the watcher is given 7 s). */
  function connectEventually(site) {
    return waitFor(async () => {
      const socket = stack.socket({ site, sid: ALICE_SID });
      try {
        return await new Promise((resolve, reject) => {
          socket.once("connect", () => resolve(socket));
          socket.once("connect_error", reject);
        });
      } catch {
        socket.disconnect();
        return null;
      }
    }, { timeoutMs: 7000, everyMs: 100, what: `a connection to /${site}` });
  }

  test("a site created after start is served; removed, it refuses with Invalid namespace", async () => {
    assert.equal(await refusal(stack.socket({ site: SITE3, sid: ALICE_SID })), "Invalid namespace",
      "before the site exists");

    stack.frappe.addSite(SITE3, { installedApps: ["frappe"] });
    stack.frappe.addSession(SITE3, ALICE_SID, ALICE);
    addSite(stack.bench, SITE3);
    const socket = await connectEventually(SITE3);
    const got = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", "for site3", { site: SITE3, room: ALICE_ROOM });
    assert.deepEqual(await got, ["for site3"]);

    fs.rmSync(path.join(stack.bench, "sites", SITE3), { recursive: true, force: true });
    await waitFor(async () => {
      const message = await refusal(stack.socket({ site: SITE3, sid: ALICE_SID })).catch(() => null);
      return message === "Invalid namespace";
    }, { timeoutMs: 7000, everyMs: 100, what: `/${SITE3} to be refused` });

    // The other sites are untouched.
    await stack.connect({ site: SITE1, sid: ALICE_SID });
  });
});

// ---------------------------------------------------------------------------------------------
// §2.1, §1.4: Engine.IO / Socket.IO options and the HTTP surface
// ---------------------------------------------------------------------------------------------

describe("§2.1/§1.4 protocol: open packet, transports, CORS, 404, maxHttpBufferSize", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });
  afterEach(() => { for (const s of stack.sockets) if (s.connected) s.disconnect(); });

  test("the open packet has Socket.IO v4's defaults", async () => {
    const { packet } = await openPacket(stack.port);
    assert.equal(typeof packet.sid, "string");
    assert.ok(packet.sid.length > 0);
    assert.deepEqual(packet.upgrades, ["websocket"]);
    assert.equal(packet.pingInterval, 25000);
    assert.equal(packet.pingTimeout, 20000);
    assert.equal(packet.maxPayload, 1000000);
  });

  for (const [label, transports] of [["websocket only", ["websocket"]], ["polling only", ["polling"]]]) {
    test(`a ${label} client connects and receives an event`, async () => {
      const socket = await stack.connect({ sid: ALICE_SID, transports });
      assert.equal(socket.io.engine.transport.name, transports[0]);
      const got = nextEvent(socket, "msgprint");
      await stack.publish("msgprint", label, { room: ALICE_ROOM });
      assert.deepEqual(await got, [label]);
      assert.equal(socket.io.engine.transport.name, transports[0]);
    });
  }

  test("a default client opens with polling, upgrades to websocket and receives an event", async () => {
    const socket = stack.socket({ sid: ALICE_SID });
    const engine = socket.io.engine;
    assert.equal(engine.transport.name, "polling", "it opens with polling");
    const upgraded = within(new Promise((resolve) => engine.once("upgrade", resolve)), 8000, "the upgrade");
    await nextEvent(socket, "connect", 8000);
    await upgraded;
    assert.equal(socket.io.engine.transport.name, "websocket");
    const got = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", "after upgrade", { room: ALICE_ROOM });
    assert.deepEqual(await got, ["after upgrade"]);
  });

  test("CORS: the preflight and a polling GET echo the Origin, with credentials", async () => {
    const origin = "http://example.test";
    const preflight = await fetch(`http://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=polling`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "GET" },
      signal: AbortSignal.timeout(3000),
    });
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight status ${preflight.status}`);
    assert.equal(preflight.headers.get("access-control-allow-origin"), origin);
    assert.equal(preflight.headers.get("access-control-allow-credentials"), "true");
    const methods = preflight.headers.get("access-control-allow-methods") ?? "";
    assert.match(methods, /GET/, `allowed methods: ${methods}`);

    const { headers } = await openPacket(stack.port, { origin });
    assert.equal(headers.get("access-control-allow-origin"), origin);
    assert.equal(headers.get("access-control-allow-credentials"), "true");
  });

  for (const pathname of ["/", "/health-not-here", "/api/method/ping"]) {
    test(`a request outside /socket.io/ (${pathname}) gets a prompt 404`, async () => {
      const res = await fetch(`http://127.0.0.1:${stack.port}${pathname}`, { signal: AbortSignal.timeout(2000) });
      assert.equal(res.status, 404);
      await res.arrayBuffer();
    });
  }

  test("client→server over polling: a 900 KB message is accepted, more than 1 MB is refused with 413", async () => {
    const session = await rawPollingSession(stack);
    const connect = await session.post(`40/${SITE1},`);
    assert.equal(connect.status, 200);
    await connect.text();
    await pollUntil(session, (p) => p.startsWith(`40/${SITE1},{"sid"`), "the namespace CONNECT ack");

    const big = await session.post(`42/${SITE1},${JSON.stringify(["ping", "x".repeat(900_000)])}`);
    assert.equal(big.status, 200, "a 900 KB POST is accepted");
    await big.text();
    await pollUntil(session, (p) => p === `42/${SITE1},["pong"]`, "the pong for the 900 KB ping");

    const tooBig = await session.post(`42/${SITE1},${JSON.stringify(["ping", "x".repeat(1_200_000)])}`);
    assert.equal(tooBig.status, 413, "a 1.2 MB POST is refused");
    await tooBig.arrayBuffer();
  });

  test("a duplicate CONNECT on one Engine.IO session is tolerated (§2.1, §10 #16)", async () => {
    const session = await rawPollingSession(stack);
    const ack = (p) => p.startsWith(`40/${SITE1},{"sid"`);
    await (await session.post(`40/${SITE1},`)).text();
    const seen = await pollUntil(session, ack, "the first CONNECT ack");
    const again = await session.post(`40/${SITE1},`);
    assert.equal(again.status, 200);
    await again.text();
    const marker = unique("after-duplicate");
    await stack.publish("msgprint", marker, { room: ALICE_ROOM });
    seen.push(...await pollUntil(session, (p) => p.includes(marker), "an event after the duplicate CONNECT"));
    assert.ok(!seen.some((p) => p.startsWith(`44/${SITE1},`)), `no CONNECT_ERROR (seen: ${seen.join(" | ")})`);
    assert.ok(!seen.includes("1"), "the session was not closed");
  });

  test("client→server over websocket: a 900 KB message is accepted", async () => {
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const pong = nextEvent(socket, "pong", 8000);
    socket.emit("ping", "y".repeat(900_000));
    assert.deepEqual(await pong, []);
    assert.ok(socket.connected);
  });
});

// ---------------------------------------------------------------------------------------------
// §9.1: supervisor / systemd stop the service with SIGTERM
// ---------------------------------------------------------------------------------------------

// Each connection holds a descriptor; supervisord and systemd hand services a low soft limit.
test("the open files limit is raised to the hard limit at start", async (t) => {
  const redis = await Redis.start();
  t.after(() => redis.stop());
  const bench = makeBench({ common: { socketio_port: await freePort(), redis_queue: redis.url } });
  t.after(() => fs.rmSync(bench, { recursive: true, force: true }));
  const server = await Server.start({
    bench, launcher: ["prlimit", "--nofile=256:4096", "--"], env: { RUST_LOG: "info" },
  });
  t.after(() => server.stop());

  const limits = fs.readFileSync(`/proc/${server.proc.pid}/limits`, "utf8");
  const [, soft, hard] = /Max open files\s+(\d+)\s+(\d+)/.exec(limits);
  assert.equal(Number(hard), 4096, "the hard limit is the operator's and stays");
  assert.equal(Number(soft), 4096, "the soft limit is raised to it");
  assert.match(server.output, /open files limit.*limit=4096/);
});

describe("§9.1 SIGTERM: clean, prompt exit", () => {
  test("the server exits 0 within a few seconds and clients see a disconnect", async () => {
    const stack = await startStack();
    try {
      const ws = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      const polling = await stack.connect({ sid: ALICE_SID, transports: ["polling"] });
      const defaults = await stack.connect({ sid: ALICE_SID });
      const disconnects = [ws, polling, defaults].map((s) => nextEvent(s, "disconnect", 8000));
      const started = Date.now();
      stack.server.proc.kill("SIGTERM");
      const code = await exitCode(stack.server, 7000);
      const took = Date.now() - started;
      assert.equal(code, 0, `exit status 0 (output:\n${stack.server.output})`);
      assert.ok(took < 7000, `exited after ${took} ms`);
      await Promise.all(disconnects);
      assert.ok(!ws.connected && !polling.connected && !defaults.connected);
    } finally {
      await stack.stop();
    }
  });
});
