// Starts the real parts for an end-to-end test: a redis-server on a free loopback port, the
// fake Frappe, a throwaway bench directory and the frappe-realtime binary running in it.
// Every wait is bounded; every process started here is stopped by its own PID.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import { createClient } from "redis";
import { FakeFrappe } from "./fake-frappe.mjs";
import {
  SITES, ALICE, ALICE_SID, BOB, BOB_SID, CAROL, CAROL_SID, DAVE, DAVE_TOKEN,
} from "./fixtures.mjs";

export * from "./fixtures.mjs";

/** The repository's root directory. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BINARY = path.resolve(process.env.FRAPPE_REALTIME_BIN ?? path.join(ROOT, "target/debug/frappe-realtime"));

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Poll `check` until it returns a truthy value, at most `timeoutMs`. */
export async function waitFor(check, { timeoutMs = 5000, everyMs = 25, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class Redis {
  /**
   * A redis-server on loopback. `port: 0` turns TCP off (with `--unixsocket` in `args`);
   * `clientOptions` tell node-redis how to reach it when the URL alone does not (a Unix
   * socket, a password).
   */
  static async start({ port, args = [], clientOptions } = {}) {
    const redis = new Redis();
    redis.port = port ?? (await freePort());
    redis.args = args;
    redis.clientOptions = clientOptions;
    await redis.#spawn();
    return redis;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async #spawn() {
    // A directory of its own: a replica writes the RDB it receives there (and a redis-server
    // loads any dump.rdb it finds there at start), never in the repository.
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "e2e-redis-"));
    this.proc = spawn("redis-server", ["--port", String(this.port), "--bind", "127.0.0.1",
      "--save", "", "--appendonly", "no", "--dir", this.dir, ...this.args], { stdio: "ignore" });
    let spawnError;
    this.proc.once("error", (err) => { spawnError = err; });
    const client = createClient(this.clientOptions ?? { url: this.url });
    client.on("error", () => {});
    // node-redis's connect() and ping() wait until it gets in: bound each attempt.
    const bounded = (promise) => Promise.race([promise,
      new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), 1000).unref())]);
    await waitFor(async () => {
      // A missing redis-server (scripts/setup test installs it) must fail the test, not hang it.
      if (spawnError) throw new Error(`cannot start redis-server: ${spawnError.message}`);
      try {
        if (!client.isOpen) await bounded(client.connect());
        return (await bounded(client.ping())) === "PONG";
      } catch {
        return false;
      }
    }, { what: "redis-server to answer" });
    this.client = client;
  }

  async stop() {
    await this.client?.disconnect().catch(() => {});
    this.client = undefined;
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((resolve) => this.proc.once("exit", resolve));
      this.proc.kill("SIGKILL");
      await exited;
    }
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  async restart() {
    await this.stop();
    await this.#spawn();
  }

  publish(body) {
    return this.client.publish("events", typeof body === "string" ? body : JSON.stringify(body));
  }

  async subscribers() {
    const counts = await this.client.pubSubNumSub("events");
    return counts.events ?? 0;
  }
}

/**
 * A bench directory with the given sites, Frappe version and common_site_config.json; `apps`
 * are listed in sites/apps.txt after frappe.
 */
export function makeBench({ sites = SITES, version = 16, common = {}, legacy, apps = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "frappe-bench-"));
  fs.mkdirSync(path.join(dir, "sites"), { recursive: true });
  fs.writeFileSync(path.join(dir, "sites/apps.txt"), ["frappe", ...apps].join("\n") + "\n");
  fs.mkdirSync(path.join(dir, "sites/assets"), { recursive: true });
  for (const site of sites) addSite(dir, site);
  const init = path.join(dir, "apps/frappe/frappe");
  fs.mkdirSync(init, { recursive: true });
  fs.writeFileSync(path.join(init, "__init__.py"), `__version__ = "${version}.3.0"\n`);
  fs.writeFileSync(path.join(dir, "sites/common_site_config.json"), JSON.stringify(common, null, 1));
  if (legacy) fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(legacy));
  return dir;
}

export function addSite(benchDir, site) {
  fs.mkdirSync(path.join(benchDir, "sites", site), { recursive: true });
  fs.writeFileSync(path.join(benchDir, "sites", site, "site_config.json"), "{}");
}

/**
 * The binary, started in `bench` with no arguments beyond `args`; its output is kept.
 * `launcher` is a command that execs it (e.g. `["prlimit", "--nofile=256:4096", "--"]`).
 */
export class Server {
  static async start({ bench, port, args = ["--host", "127.0.0.1"], env = {}, waitListening = true, launcher = [] }) {
    const server = new Server();
    server.port = port;
    server.output = "";
    const [command, ...argv] = [...launcher, BINARY, ...args];
    server.proc = spawn(command, argv, {
      cwd: bench,
      env: { ...process.env, RUST_LOG: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const collect = (chunk) => { server.output += chunk.toString(); };
    server.proc.stdout.on("data", collect);
    server.proc.stderr.on("data", collect);
    server.exited = new Promise((resolve) => server.proc.once("exit", (code) => resolve(code)));
    if (waitListening) {
      await waitFor(() => server.output.includes("listening on") || server.proc.exitCode !== null,
        { timeoutMs: 10000, what: "the server to listen" });
      if (server.proc.exitCode !== null) throw new Error(`server exited:\n${server.output}`);
    }
    return server;
  }

  /** RSS of the server process in KiB (Linux). */
  rssKiB() {
    const status = fs.readFileSync(`/proc/${this.proc.pid}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  }

  /** CPU time (user + system) the server process has used, in milliseconds (Linux). */
  cpuMs() {
    const stat = fs.readFileSync(`/proc/${this.proc.pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14, 15)
    return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 8000);
      await this.exited;
      clearTimeout(timer);
    }
  }
}

/**
 * Everything a test needs: redis, fake Frappe with sites and users, a bench, the server.
 * Users on every site (fixtures.mjs): ALICE and BOB (System Users, ALICE_SID and BOB_SID),
 * CAROL (Website User, CAROL_SID), and DAVE, who has only an API token (DAVE_TOKEN).
 * `common` is extra common_site_config, or a function of the fake Frappe returning it (for
 * keys that need its URL or port); `serverArgs` replace the server's arguments. What was
 * started is stopped again if a later step fails.
 */
export async function startStack({ version = 16, sites = SITES, common = {}, env = {}, startRedis = true,
  serverArgs = ["--host", "127.0.0.1"], apps = [], installedApps = () => apps, beforeStart } = {}) {
  const started = [];
  try {
    const redis = await Redis.start();
    started.push(() => redis.stop());
    const frappe = await new FakeFrappe({ version, redisUrl: redis.url }).listen();
    started.push(() => frappe.close());
    for (const site of sites) {
      frappe.addSite(site, { installedApps: ["frappe", "erpnext", ...installedApps(site)] });
      frappe.addSession(site, ALICE_SID, ALICE);
      frappe.addSession(site, BOB_SID, BOB);
      frappe.addSession(site, CAROL_SID, CAROL, "Website User");
      frappe.addToken(site, DAVE_TOKEN, DAVE);
    }
    const port = await freePort();
    const extra = typeof common === "function" ? common(frappe) : common;
    // Frappe 13 and 14 read their events from redis_socketio (protocol §1.2).
    const eventsKey = version <= 14 ? "redis_socketio" : "redis_queue";
    const bench = makeBench({ sites, version, apps, common: { socketio_port: port, [eventsKey]: redis.url, ...extra } });
    started.push(async () => fs.rmSync(bench, { recursive: true, force: true }));
    beforeStart?.(bench);
    if (!startRedis) await redis.stop();
    const server = await Server.start({ bench, port, env, args: serverArgs });
    started.push(() => server.stop());
    const stack = new Stack({ redis, frappe, bench, server, port });
    if (startRedis) await stack.waitSubscribed();
    return stack;
  } catch (err) {
    for (const stop of started.reverse()) await stop().catch(() => {});
    throw err;
  }
}

export class Stack {
  constructor({ redis, frappe, bench, server, port }) {
    Object.assign(this, { redis, frappe, bench, server, port });
    this.sockets = [];
  }

  /**
   * The value of one series on the server's `/metrics`: `name` with every label in `labels`
   * (other labels may be there too); 0 while the series does not exist yet.
   */
  async metric(name, labels = {}) {
    const text = await (await fetch(`http://127.0.0.1:${this.port}/metrics`)).text();
    const line = text.split("\n").find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `))
      && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
    return line ? Number(line.split(" ").pop()) : 0;
  }

  async waitSubscribed() {
    await waitFor(() => this.redis.subscribers().then((n) => n >= 1).catch(() => false),
      { timeoutMs: 10000, what: "the server to subscribe to events" });
  }

  /**
   * A socket.io-client socket for `site`, as a browser behind bench nginx would open it.
   * Options: sid, authorization, origin, namespace, transports, headers (extra/overrides);
   * `io` (the `io` of another socket.io-client package, e.g. `socket.io-client-4.6`), `port`
   * (another port to reach the server through, e.g. a proxy's), `auth` (the CONNECT payload),
   * `reconnection` (off unless given) with `reconnectionDelay` / `reconnectionDelayMax`.
   */
  socket({ site = SITES[0], sid, authorization, origin, namespace, transports, headers = {}, siteHeader = true,
    io: client = io, port = this.port, auth, reconnection = false, reconnectionDelay, reconnectionDelayMax } = {}) {
    // Lower-case names: engine.io-client's Node cookie jar looks for `cookie` and would
    // otherwise send an empty one next to ours.
    const extraHeaders = { origin: origin ?? this.frappe.url };
    if (siteHeader) extraHeaders["x-frappe-site-name"] = site;
    if (sid) extraHeaders.cookie = `sid=${sid}`;
    if (authorization) extraHeaders.authorization = authorization;
    Object.assign(extraHeaders, headers);
    for (const [k, v] of Object.entries(extraHeaders)) if (v === undefined) delete extraHeaders[k];
    const options = {
      transports: transports ?? ["polling", "websocket"],
      extraHeaders,
      withCredentials: true,
      reconnection,
      forceNew: true,
      timeout: 8000,
    };
    if (auth !== undefined) options.auth = auth;
    if (reconnectionDelay !== undefined) options.reconnectionDelay = reconnectionDelay;
    if (reconnectionDelayMax !== undefined) options.reconnectionDelayMax = reconnectionDelayMax;
    return this.track(client(`http://127.0.0.1:${port}${namespace ?? `/${site}`}`, options));
  }

  /**
   * Record what `socket` (made by any client) receives in `socket.received`, as `{event, args}`
   * (not with socket.io-client 2.x, which has no `onAny`), and disconnect it in `stop()`.
   */
  track(socket) {
    socket.received = [];
    socket.onAny?.((event, ...args) => socket.received.push({ event, args }));
    this.sockets.push(socket);
    return socket;
  }

  /** Connect and resolve once accepted; rejects with the connect_error message. */
  async connect(options) {
    const socket = this.socket(options);
    await connected(socket);
    return socket;
  }

  /** Publish as `frappe.publish_realtime` does (v15+ shape). */
  publish(event, message, { site = SITES[0], room } = {}) {
    const body = { event, message, namespace: site };
    if (room !== undefined) body.room = room;
    return this.redis.publish(body);
  }

  /**
   * Publish `event` to `room` until `socket` receives it (a join completes after a permission
   * call, so the first publications may precede it). Bounded.
   */
  async publishUntilReceived(socket, room, { site = SITES[0], event = "probe", timeoutMs = 5000 } = {}) {
    const marker = `${event}-${Math.random()}`;
    await waitFor(async () => {
      await this.publish(event, { marker }, { site, room });
      return socket.received.some((r) => r.event === event && r.args[0]?.marker === marker);
    }, { timeoutMs, everyMs: 50, what: `${event} in ${room}` });
  }

  /**
   * Resolve once every event published before now has been handled for `socket`: publish a
   * sentinel to its own user room and wait for it (the bridge delivers in order).
   */
  async flush(socket, { site = SITES[0], userRoom }) {
    const marker = `sentinel-${Math.random()}`;
    await this.publish("sentinel", { marker }, { site, room: userRoom });
    await waitFor(() => socket.received.some((r) => r.event === "sentinel" && r.args[0]?.marker === marker),
      { what: "the sentinel" });
  }

  /**
   * Stop everything, then check that no secret the fake Frappe issued (sids, API token
   * secrets, the socket secret) ever reached the server's log: every test run greps for them.
   */
  async stop() {
    for (const socket of this.sockets) socket.disconnect();
    await this.server.stop();
    await this.frappe.close();
    await this.redis.stop();
    fs.rmSync(this.bench, { recursive: true, force: true });
    const leaked = [...this.frappe.secretsIssued].filter((secret) => this.server.output.includes(secret));
    if (leaked.length > 0) throw new Error(`the server log contains secrets: ${leaked.join(", ")}`);
  }
}

export function connected(socket, timeoutMs = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no connect within the time limit")), timeoutMs);
    socket.once("connect", () => { clearTimeout(timer); resolve(socket); });
    socket.once("connect_error", (err) => { clearTimeout(timer); reject(err); });
  });
}

/** The connect_error message a handshake gets (fails the test if it connects instead). */
export async function refusal(socket) {
  try {
    await connected(socket);
  } catch (err) {
    return err.message;
  }
  throw new Error("the handshake was accepted");
}

export function nextEvent(socket, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

/** The arguments of every `event` `socket` received. */
export function received(socket, event) {
  return socket.received.filter((r) => r.event === event).map((r) => r.args);
}

/** The first argument (the payload) of every `event` `socket` received. */
export function payloads(socket, event) {
  return received(socket, event).map((args) => args[0]);
}

/** The reason of every disconnect of `socket` from now on (to prove it stayed connected). */
export function trackDisconnects(socket) {
  const reasons = [];
  socket.on("disconnect", (reason) => reasons.push(reason));
  return reasons;
}

/** Frappe's `frappe.as_json`, which `publish_realtime` publishes with: indent 1, sorted keys, ASCII only (`\u00e9`). */
export function asFrappeJson(value) {
  const sort = (v) => (v && typeof v === "object" && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]))
    : Array.isArray(v) ? v.map(sort) : v);
  return JSON.stringify(sort(value), null, 1)
    .replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
