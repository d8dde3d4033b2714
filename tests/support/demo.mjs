// The README's first command (scripts/demo): frappe-realtime on the sample bench in
// examples/bench, with everything it needs on loopback, and a client printing what arrives.
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
const REDIS_PORT = 11000; // the sample bench's redis_queue
const FRAPPE_PORT = 8000; // its webserver_port
const SOCKETIO_PORT = 9000; // its socketio_port
const DEMO_SID = "demo-session";

const started = [];
async function stopAll() {
  for (const stop of started.reverse()) await stop().catch(() => {});
}
process.on("SIGINT", () => stopAll().then(() => process.exit(0)));
process.on("SIGTERM", () => stopAll().then(() => process.exit(0)));

const redisUrl = `redis://127.0.0.1:${REDIS_PORT}`;
if (await redisAnswers(redisUrl)) {
  console.log(`demo: using the redis-server already on port ${REDIS_PORT}`);
} else {
  const redis = await Redis.start({ port: REDIS_PORT });
  started.push(() => redis.stop());
  console.log(`demo: started redis-server on 127.0.0.1:${REDIS_PORT}`);
}

const frappe = new FakeFrappe({ version: 16, redisUrl });
await frappe.listen(FRAPPE_PORT);
started.push(() => frappe.close());
frappe.addSite(SITE, { installedApps: ["frappe"] });
frappe.addSession(SITE, DEMO_SID, "demo@example.com");
frappe.allow(SITE, "demo@example.com", "ToDo");
console.log(`demo: fake Frappe (demo mode, loopback only) on http://127.0.0.1:${FRAPPE_PORT}`);

const server = await Server.start({ bench: BENCH, port: SOCKETIO_PORT, env: { RUST_LOG: "info" } });
started.push(() => server.stop());
server.proc.stdout.pipe(process.stdout);
server.proc.stderr.pipe(process.stderr);

// A Desk-like client: same URL, cookie and Origin a browser on the site would send.
const socket = io(`http://127.0.0.1:${SOCKETIO_PORT}/${SITE}`, {
  extraHeaders: { origin: `http://127.0.0.1:${FRAPPE_PORT}`, cookie: `sid=${DEMO_SID}` },
  withCredentials: true,
});
started.push(async () => socket.disconnect());
socket.on("connect", () => {
  console.log("client: connected; subscribing to ToDo list updates");
  socket.emit("doctype_subscribe", "ToDo");
});
socket.on("connect_error", (err) => console.log(`client: connect_error: ${err.message}`));
socket.onAny((event, ...args) => console.log(`client: received ${event} ${JSON.stringify(args)}`));

const publisher = createClient({ url: redisUrl });
await publisher.connect();
started.push(() => publisher.quit());
await waitFor(async () => (await publisher.pubSubNumSub("events")).events >= 1, { what: "the subscription" });
console.log(`
demo: publishing an event every 2 s, as frappe.publish_realtime would. Publish your own with
  redis-cli -p ${REDIS_PORT} publish events '{"event":"msgprint","message":"hi","namespace":"${SITE}","room":"user:demo@example.com"}'
Ctrl-C stops everything this demo started.
`);
let n = 0;
const events = [
  () => ({ event: "list_update", room: "doctype:ToDo", message: { doctype: "ToDo", name: `TODO-${n}`, user: "demo@example.com" } }),
  () => ({ event: "msgprint", room: "user:demo@example.com", message: `Hello #${n} from Frappe` }),
  () => ({ event: "progress", room: "user:demo@example.com", message: { percent: (n * 10) % 100, title: "Importing", description: `step ${n}` } }),
];
setInterval(() => {
  n += 1;
  const body = { ...events[n % events.length](), namespace: SITE };
  publisher.publish("events", JSON.stringify(body)).catch(() => {});
}, 2000);

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
