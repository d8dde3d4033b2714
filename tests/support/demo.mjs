// The README's first command (scripts/demo): frappe-realtime on the sample bench in
// examples/bench, with everything it needs on loopback, and a client printing what arrives.
//
//   node tests/support/demo.mjs          run until Ctrl-C, publishing an event every 2 s
//   node tests/support/demo.mjs --once   exit 0 once the client has received an event, or 1 with
//                                        the reason (the test suite runs this form)
//
// DEMO ONLY: the "Frappe" here is the fake web server from the tests, bound to 127.0.0.1; it
// vouches for one demo session. A real bench has a real Frappe and never runs this file.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "redis";
import { io } from "socket.io-client";
import { FakeFrappe } from "./fake-frappe.mjs";
import { Redis, Server, waitFor } from "./harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BENCH = path.join(ROOT, "examples/bench");
const SITE = "demo.localhost";
const USER = "demo@example.com";
const REDIS_PORT = 11000; // the sample bench's redis_queue
const FRAPPE_PORT = 8000; // its webserver_port
const SOCKETIO_PORT = 9000; // its socketio_port
const DEMO_SID = "demo-session";
const PUBLISH_EVERY_MS = 2000;
const ONCE_DEADLINE_MS = 60000;

const once = process.argv.includes("--once");
const started = [];

async function stopAll() {
  for (const stop of started.reverse()) await stop().catch(() => {});
}

async function exit(code, message) {
  if (message) (code === 0 ? console.log : console.error)(message);
  await stopAll();
  process.exit(code);
}

process.on("SIGINT", () => exit(0));
process.on("SIGTERM", () => exit(0));

try {
  await main();
} catch (err) {
  await exit(1, `demo: failed: ${err.message}`);
}

async function main() {
  const redisUrl = await startRedis();
  await startFakeFrappe(redisUrl);
  await startServer();
  const received = connectClient();
  const publisher = createClient({ url: redisUrl });
  await publisher.connect();
  started.push(() => publisher.quit());
  await waitFor(async () => (await publisher.pubSubNumSub("events")).events >= 1,
    { timeoutMs: 10000, what: "the server to subscribe to Redis" });
  if (!once) printNextSteps();
  publishEvery(publisher, PUBLISH_EVERY_MS);
  if (once) {
    const deadline = new Promise((_, reject) => setTimeout(
      () => reject(new Error(`no event reached the client within ${ONCE_DEADLINE_MS / 1000} s`)), ONCE_DEADLINE_MS));
    const event = await Promise.race([received, deadline]);
    await exit(0, `demo --once: the client received ${event}; everything works`);
  }
}

async function startRedis() {
  const url = `redis://127.0.0.1:${REDIS_PORT}`;
  if (await redisAnswers(url)) {
    console.log(`demo: using the redis-server already on port ${REDIS_PORT}`);
    return url;
  }
  const redis = await Redis.start({ port: REDIS_PORT });
  started.push(() => redis.stop());
  console.log(`demo: started redis-server on 127.0.0.1:${REDIS_PORT}`);
  return url;
}

async function startFakeFrappe(redisUrl) {
  const frappe = new FakeFrappe({ version: 16, redisUrl });
  await frappe.listen(FRAPPE_PORT);
  started.push(() => frappe.close());
  frappe.addSite(SITE, { installedApps: ["frappe"] });
  frappe.addSession(SITE, DEMO_SID, USER);
  frappe.allow(SITE, USER, "ToDo");
  console.log(`demo: fake Frappe (demo mode, loopback only) on http://127.0.0.1:${FRAPPE_PORT}`);
}

async function startServer() {
  const server = await Server.start({ bench: BENCH, port: SOCKETIO_PORT, env: { RUST_LOG: "info" } });
  started.push(() => server.stop());
  server.proc.stdout.pipe(process.stdout);
  server.proc.stderr.pipe(process.stderr);
}

/** A Desk-like client (same URL, cookie and Origin a browser on the site would send); resolves
 * with a description of the first event it receives. */
function connectClient() {
  const socket = io(`http://127.0.0.1:${SOCKETIO_PORT}/${SITE}`, {
    extraHeaders: { origin: `http://127.0.0.1:${FRAPPE_PORT}`, cookie: `sid=${DEMO_SID}` },
    withCredentials: true,
  });
  started.push(async () => socket.disconnect());
  return new Promise((resolve, reject) => {
    socket.on("connect", () => {
      console.log("client: connected; subscribing to ToDo list updates");
      socket.emit("doctype_subscribe", "ToDo");
    });
    socket.on("connect_error", (err) => {
      console.log(`client: connect_error: ${err.message}`);
      // A refusal by the server's middleware is final: socket.io-client does not retry it.
      if (once && !socket.active) reject(new Error(`the server refused the client: ${err.message}`));
    });
    socket.onAny((event, ...args) => {
      const line = `${event} ${JSON.stringify(args)}`;
      console.log(`client: received ${line}`);
      resolve(line);
    });
  });
}

function printNextSteps() {
  console.log(`
demo: ready. An event is published every ${PUBLISH_EVERY_MS / 1000} s, as frappe.publish_realtime would.
  metrics:   curl http://127.0.0.1:${SOCKETIO_PORT}/metrics     (health: /health, readiness: /ready)
  publish:   redis-cli -p ${REDIS_PORT} publish events '{"event":"msgprint","message":"hi","namespace":"${SITE}","room":"user:${USER}"}'
  stop:      Ctrl-C stops everything this demo started.
`);
}

function publishEvery(publisher, everyMs) {
  let n = 0;
  const events = [
    () => ({ event: "list_update", room: "doctype:ToDo", message: { doctype: "ToDo", name: `TODO-${n}`, user: USER } }),
    () => ({ event: "msgprint", room: `user:${USER}`, message: `Hello #${n} from Frappe` }),
    () => ({ event: "progress", room: `user:${USER}`, message: { percent: (n * 10) % 100, title: "Importing", description: `step ${n}` } }),
  ];
  const publish = () => {
    n += 1;
    const body = { ...events[n % events.length](), namespace: SITE };
    publisher.publish("events", JSON.stringify(body)).catch(() => {});
  };
  publish();
  const timer = setInterval(publish, everyMs);
  started.push(async () => clearInterval(timer));
}

async function redisAnswers(url) {
  const probe = createClient({ url, socket: { reconnectStrategy: false, connectTimeout: 500 } });
  probe.on("error", () => {});
  try {
    await probe.connect();
    await probe.ping();
    await probe.quit();
    return true;
  } catch {
    return false;
  }
}
