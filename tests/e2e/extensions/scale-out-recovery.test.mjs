// Recovery across instances (issue 20, item 4): a client whose instance stops reconnects to
// another and recovers its session, its rooms and the events it missed.
//
// With `realtime_shared_state: "redis"` and `realtime_recovery_store: "redis"` the instances
// share one ordered log of Frappe's events: one instance at a time (the "copier", holding a
// lease in Redis) copies each publication on `events` into a Redis Stream, every instance
// delivers from that stream, and the entry id is the offset a client sees, so an offset means
// the same on every instance. Sessions kept at a transport close or at an instance's clean
// SIGTERM stop are written to Redis for the whole bench, so any instance can resume them.
// `/status.json` says `bench_log: {copier}` (null when the shared log is off).
//
// (1) Behind bench's nginx, sticky by address (ip_hash: every loopback client goes to one
//     instance, and to the other when that one is down): a browser's socket, in a doc room,
//     loses its instance to a SIGTERM; eleven events are published while it is away; it comes
//     back through nginx on the other instance with the same id, recovered, gets the eleven
//     once and in order, and live events after them once.
// (2) The copier's stop loses nothing: a client on the other instance gets a numbered series
//     published before, during and after the copier's SIGTERM (while the lease changes hands)
//     each exactly once, in order. A handover that dropped or doubled publications would show.
// (3) Without the Redis recovery store there is no shared log (offsets are per instance, the
//     README's documented boundary): the same move gives an ordinary connect.
// (4) The instance that stops is not the copier, so the one the client comes back to has
//     copied all along and no lease changes hands (nginx's ip_hash in (1) always stops the
//     copier: the first instance starts first and takes the lease). Without nginx, to choose:
//     the client connects straight to the instance that does not copy, which gets SIGTERM;
//     eleven events are published; the client's Manager is pointed at the copier's port and
//     it comes back recovered with the same id, the eleven once and in order, a live one once.
//
// Every wait is bounded; everything listens on loopback; processes are stopped by PID.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  connected, nextEvent, waitFor, SITES, ALICE, ALICE_SID, BOB, BOB_SID, userRoom, unique,
} from "../../support/harness.mjs";
import { NGINX } from "../../support/bench-nginx.mjs";
import { Cluster } from "../../support/cluster.mjs";

const SITE = SITES[0];
const BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
const SHARED_LOG = { realtime_shared_state: "redis", realtime_recovery_store: "redis" };

/** waitFor, whose timeout error ends with `seen()`: what was there at the end. */
async function waitSeeing(check, { seen, ...options }) {
  try {
    return await waitFor(check, options);
  } catch (err) {
    err.message += ` (${seen()})`;
    throw err;
  }
}

/** `stack`'s /status.json. */
async function status(stack) {
  const response = await fetch(`http://127.0.0.1:${stack.port}/status.json`, { signal: AbortSignal.timeout(5000) });
  return response.json();
}

/** The websocket count of SITE on `stack`'s own status. */
async function websockets(stack) {
  return (await status(stack)).sites.find((s) => s.site === SITE)?.sockets.websocket ?? 0;
}

/** The index of the one instance that holds the bench log's lease, once exactly one says so. */
async function copierIndex(cluster) {
  let seen = [];
  const { index } = await waitSeeing(async () => {
    seen = await Promise.all(cluster.instances.map(async (stack) => (await status(stack)).bench_log));
    const copiers = seen.flatMap((log, i) => (log?.copier === true ? [i] : []));
    return copiers.length === 1 && seen.every((log) => log && typeof log.copier === "boolean") && { index: copiers[0] };
  }, { timeoutMs: 10000, what: "exactly one copier of the bench log", seen: () => `bench_log: ${JSON.stringify(seen)}` });
  return index;
}

/** The `run`'s `event`s `socket` received, by `seq`. */
function seqs(socket, event, run) {
  return socket.received.filter((r) => r.event === event && r.args[0]?.run === run).map((r) => r.args[0].seq);
}

/**
 * A cluster of two instances with `common` config, stopped after the test; with `nginx`,
 * behind bench's nginx sticky by client address.
 */
async function startCluster(t, { common, nginx = false }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "scale-out-recovery-"));
  let cluster;
  t.after(async () => {
    try {
      await cluster?.stop();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  // Clients through nginx carry the Origin nginx makes up: the site is called back here.
  cluster = await Cluster.start({ count: 2, common: (frappe) => ({ realtime_callback_url: frappe.url, ...common }) });
  if (nginx) await cluster.startNginx({ site: SITE, sticky: "address", dir });
  return cluster;
}

/**
 * Alice's browser through nginx on websocket, reconnection off (the test says when it comes
 * back), subscribed to a fresh document; resolves once events of that room reach it. With
 * `at`, straight to instance `at` instead of through nginx. Returns the socket, its doc room,
 * and the index of the instance that holds it.
 */
async function browserInDocRoom(cluster, { at } = {}) {
  const [first] = cluster.instances;
  const socket = at === undefined
    ? first.socket({
      site: SITE, sid: ALICE_SID, transports: ["websocket"], port: cluster.nginx.port, siteHeader: false,
      origin: `http://127.0.0.1:${cluster.nginx.port}`, headers: { "user-agent": BROWSER_UA },
    })
    : cluster.instances[at].socket({ site: SITE, sid: ALICE_SID, transports: ["websocket"], headers: { "user-agent": BROWSER_UA } });
  await connected(socket);
  const docname = unique("RECOVER");
  first.frappe.allow(SITE, ALICE, "ToDo", docname);
  const room = `doc:ToDo/${docname}`;
  socket.emit("doc_subscribe", "ToDo", docname);
  await first.publishUntilReceived(socket, room);
  const probe = socket.received.find((r) => r.event === "probe");
  assert.equal(typeof probe.args.at(-1), "string", "a browser's events carry their offset as last argument");
  const counts = await Promise.all(cluster.instances.map(websockets));
  assert.deepEqual([...counts].sort(), [0, 1], `the socket is on one instance: ${counts}`);
  return { socket, room, holder: counts.indexOf(1) };
}

/** SIGTERM the instance `index`, awaited, and the client's disconnect with it; returns the reason. */
async function stopInstance(cluster, index, socket) {
  const gone = nextEvent(socket, "disconnect", 15000);
  const { server } = cluster.instances[index];
  await server.stop();
  assert.equal(server.proc.exitCode, 0, `instance ${index} stopped cleanly (signal: ${server.proc.signalCode})`);
  const [reason] = await gone;
  return reason;
}

/**
 * Point `socket`'s Manager at `stack`'s port for its next connect(): Manager.open() makes its
 * engine from `socket.io.uri`, and the engine takes hostname and port from that URI.
 */
function pointAt(socket, stack) {
  const uri = new URL(socket.io.uri);
  uri.port = String(stack.port);
  socket.io.uri = uri.href;
}

/**
 * Bring `socket` back (connect()) and check that it resumed on `stack`: recovered with the
 * same `id`, the `run`'s eleven missed events once and in order with their offsets, then a
 * live event in its doc `room` once.
 */
async function expectRecoveredOn(stack, socket, { id, run, room }) {
  const since = socket.received.length;
  const back = nextEvent(socket, "connect", 15000);
  socket.connect();
  await back;
  assert.equal(socket.recovered, true, "socket.recovered");
  assert.equal(socket.id, id, "the same socket id on the other instance");
  await waitSeeing(() => seqs(socket, "missed", run).length >= 11, { timeoutMs: 10000,
    what: "the 11 missed events", seen: () => `got ${JSON.stringify(seqs(socket, "missed", run))}` });
  await stack.flush(socket, { userRoom: userRoom(ALICE) });
  assert.deepEqual(seqs(socket, "missed", run), [...Array(11).keys()], "each missed event once, in order");
  assert.ok(socket.received.slice(since).filter((r) => r.event === "missed").every((r) => typeof r.args.at(-1) === "string"),
    "replayed events carry their offset");
  // Live, in the doc room it kept: once.
  await stack.publish("live", { run, seq: 0 }, { room });
  await waitFor(() => seqs(socket, "live", run).length >= 1, { what: "the live event in the doc room" });
  await stack.flush(socket, { userRoom: userRoom(ALICE) });
  assert.deepEqual(seqs(socket, "live", run), [0], "the live event once");
}

const WITH_NGINX = { timeout: 60000, skip: !NGINX && "nginx is not installed" };

describe("recovery across instances", () => {
  test("a client whose instance stops recovers its session on another", WITH_NGINX, async (t) => {
    const cluster = await startCluster(t, { common: SHARED_LOG, nginx: true });
    const copier = await copierIndex(cluster);
    const { socket, room, holder } = await browserInDocRoom(cluster);
    const id = socket.id;
    const survivor = cluster.instances[1 - holder];
    t.diagnostic(`the socket was on instance ${holder}; the copier was instance ${copier}`);

    const reason = await stopInstance(cluster, holder, socket);
    t.diagnostic(`the client saw: ${reason}`);
    // Away: ten to its doc room, one to its user room.
    const run = unique("run");
    for (let seq = 0; seq < 10; seq += 1) await survivor.publish("missed", { run, seq }, { room });
    await survivor.publish("missed", { run, seq: 10 }, { room: userRoom(ALICE) });
    // Whoever copied before, the survivor copies now (published during a handover or not).
    await waitFor(async () => (await status(survivor)).bench_log?.copier === true,
      { timeoutMs: 10000, what: "the survivor to hold the bench log's lease" });
    // An observer on the survivor: once it has a later event, the survivor has logged them all.
    const observer = await survivor.connect({ site: SITE, sid: BOB_SID, transports: ["websocket"] });
    await survivor.flush(observer, { userRoom: userRoom(BOB) });
    assert.equal(await websockets(survivor), 1, "only the observer on the survivor before the client is back");

    await expectRecoveredOn(survivor, socket, { id, run, room });
    assert.equal(await websockets(survivor), 2, "the survivor's status counts the recovered socket");
    assert.ok((await status(survivor)).sites.find((s) => s.site === SITE).users.includes(ALICE), "Alice online on the survivor");
    socket.disconnect();
    observer.disconnect();
  });

  test("the copier's stop loses nothing", { timeout: 90000 }, async (t) => {
    const cluster = await startCluster(t, { common: SHARED_LOG });
    const copierAt = await copierIndex(cluster);
    const copier = cluster.instances[copierAt];
    const other = cluster.instances[1 - copierAt];
    const socket = await other.connect({ site: SITE, sid: ALICE_SID, transports: ["websocket"] });
    await other.flush(socket, { userRoom: userRoom(ALICE) });

    const run = unique("run");
    let seq = 0;
    const publish = async () => {
      await other.publish("numbered", { run, seq }, { room: userRoom(ALICE) });
      seq += 1;
    };
    // Before: the copier copies.
    while (seq < 100) await publish();
    // During and after its stop, until the other instance holds the lease: each publication
    // is followed by a look at the other's status, which paces the series.
    const stopAt = seq;
    let exitedAt;
    let exitCode;
    const stopping = copier.server.stop().then(() => { exitedAt = seq; exitCode = copier.server.proc.exitCode; });
    const takenAt = await waitFor(async () => {
      await publish();
      return exitedAt !== undefined && (await status(other)).bench_log?.copier === true && seq;
    }, { timeoutMs: 30000, everyMs: 1, what: "the other instance to take the lease after the copier stopped" });
    await stopping;
    assert.equal(exitCode, 0, "the copier stopped cleanly");
    // After: the new copier copies.
    for (let i = 0; i < 100; i += 1) await publish();
    const total = seq;
    t.diagnostic(`published ${total}: the stop began at ${stopAt}, the copier had exited by ${exitedAt}, `
      + `the other held the lease by ${takenAt}`);

    await waitSeeing(() => seqs(socket, "numbered", run).length >= total, { timeoutMs: 20000,
      what: `all ${total} numbered events`, seen: () => `got ${seqs(socket, "numbered", run).length}` });
    await other.flush(socket, { userRoom: userRoom(ALICE) });
    const got = seqs(socket, "numbered", run);
    const missing = [...Array(total).keys()].filter((n) => !got.includes(n));
    assert.deepEqual(missing, [], "none lost");
    assert.deepEqual(got, [...Array(total).keys()], "each exactly once, in order");
    assert.ok(socket.connected, "the client on the other instance stayed connected");
    socket.disconnect();
  });

  test("without the shared log, offsets are per instance", WITH_NGINX, async (t) => {
    const cluster = await startCluster(t, { common: { realtime_shared_state: "redis" }, nginx: true });
    const { socket, holder } = await browserInDocRoom(cluster);
    const id = socket.id;
    const survivor = cluster.instances[1 - holder];
    await stopInstance(cluster, holder, socket);
    const back = nextEvent(socket, "connect", 15000);
    socket.connect();
    await back;
    assert.equal(socket.recovered, false, "socket.recovered");
    assert.notEqual(socket.id, id, "a new socket id");
    await survivor.flush(socket, { userRoom: userRoom(ALICE) });
    assert.equal((await status(survivor)).bench_log, null, "no bench log without the Redis recovery store");
    socket.disconnect();
  });

  test("a client whose instance is not the copier stops, and it recovers on the copier", { timeout: 60000 }, async (t) => {
    const cluster = await startCluster(t, { common: SHARED_LOG });
    const copierAt = await copierIndex(cluster);
    const copier = cluster.instances[copierAt];
    const { socket, room, holder } = await browserInDocRoom(cluster, { at: 1 - copierAt });
    assert.equal(holder, 1 - copierAt, "the socket is on the instance that does not copy");
    const id = socket.id;
    t.diagnostic(`the socket was on instance ${holder}; the copier was instance ${copierAt}`);

    const reason = await stopInstance(cluster, holder, socket);
    t.diagnostic(`the client saw: ${reason}`);
    // Away: ten to its doc room, one to its user room.
    const run = unique("run");
    for (let seq = 0; seq < 10; seq += 1) await copier.publish("missed", { run, seq }, { room });
    await copier.publish("missed", { run, seq: 10 }, { room: userRoom(ALICE) });
    assert.equal((await status(copier)).bench_log?.copier, true, "the copier kept its lease");
    // An observer on the copier: once it has a later event, the copier has logged them all.
    const observer = await copier.connect({ site: SITE, sid: BOB_SID, transports: ["websocket"] });
    await copier.flush(observer, { userRoom: userRoom(BOB) });
    assert.equal(await websockets(copier), 1, "only the observer on the copier before the client is back");

    pointAt(socket, copier);
    await expectRecoveredOn(copier, socket, { id, run, room });
    assert.equal(socket.io.engine.port, String(copier.port), "connected to the copier's port");
    assert.equal(await websockets(copier), 2, "the copier's status counts the recovered socket");
    assert.equal((await status(copier)).bench_log?.copier, true, "still the copier");
    socket.disconnect();
    observer.disconnect();
  });
});
