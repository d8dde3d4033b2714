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
// (5) (1) on long-polling, behind nginx sticky by session id (`hash $arg_sid`; each instance
//     runs with `--upstream-server I/N`, so the polls of a session reach the instance that made
//     its id): the browser's instance gets SIGTERM, eleven events are published, and it comes
//     back through nginx with a new handshake, which carries no sid yet: nginx's hash falls
//     back to round-robin, which passes over the dead upstream (a refused connection goes to
//     the next server), and the polls after it go by the survivor's id to the survivor. It is
//     recovered with the same id, still on long-polling, the eleven once in order, a live once.
//     (A fresh nginx's round-robin sends the first handshake to the first instance, which took
//     the lease, so in practice this stops the copier too, as (1) does.)
// (6) Frappe 14: one namespace, `/`, for every site (the site named in the handshake), and
//     Frappe 14's publications name no namespace but put the site in front of the room. Alice's
//     browsers of two sites, each in a doc room of its site, on the instance that does not copy,
//     which gets SIGTERM; meanwhile, as Frappe 14 publishes, each site's doc room gets ten
//     events (the sites in turn) and halfway one event has no room, for every socket of every
//     site (bench watch's build_event). Pointed at the copier, each comes back recovered with
//     its id and gets the all-sites event exactly once in its place among its own site's ten,
//     none of the other site's; the all-sites event has the same offset on both: one entry of
//     the log, delivered to several rooms of `/`.
// (7) (4) with SIGKILL: the instance keeps nothing at its end. What the client resumes on the
//     copier is the live copy of its session (its id, rooms and admission offset) that its
//     instance wrote when it admitted it and as it joined rooms; it comes back recovered with
//     the same id, the eleven once and in order, a live one once. Without the live copies it
//     connects afresh (checked by hand: `socket.recovered` false).
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

/** `site`'s sockets on `stack`'s own status, by transport. */
async function sockets(stack, site = SITE) {
  const { websocket = 0, polling = 0 } = (await status(stack)).sites.find((s) => s.site === site)?.sockets ?? {};
  return { websocket, polling };
}

/** How many of `site`'s sockets `stack` holds, on either transport. */
async function held(stack, site = SITE) {
  const { websocket, polling } = await sockets(stack, site);
  return websocket + polling;
}

/** The namespace a client of `site` connects to on `stack`'s bench: `/` up to Frappe 14. */
function namespaceOf(stack, site = SITE) {
  return stack.frappe.version <= 14 ? "/" : `/${site}`;
}

/**
 * Publish as the bench's Frappe does: from 15 on with the site as namespace, before (13, 14)
 * with the site in front of the room. No room is every socket of every site, in either shape.
 */
function publish(stack, event, message, { site = SITE, room } = {}) {
  if (stack.frappe.version > 14) return stack.publish(event, message, { site, room });
  return stack.redis.publish(room === undefined ? { event, message } : { event, message, room: `${site}:${room}` });
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

/** The `run`'s `event`s `socket` received, as `{event, args}`. */
function ofRun(socket, event, run) {
  return socket.received.filter((r) => r.event === event && r.args[0]?.run === run);
}

/** The `run`'s `event`s `socket` received, by `seq`. */
function seqs(socket, event, run) {
  return ofRun(socket, event, run).map((r) => r.args[0].seq);
}

/**
 * A cluster of two instances of a Frappe `version` bench with `common` config, stopped after
 * the test; with `nginx` ("address" or "sid", Cluster.startNginx's `sticky`), behind bench's
 * nginx.
 */
async function startCluster(t, { common, nginx, version }) {
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
  cluster = await Cluster.start({ count: 2, version,
    common: (frappe) => ({ realtime_callback_url: frappe.url, ...common }) });
  if (nginx) await cluster.startNginx({ site: SITE, sticky: nginx, dir });
  return cluster;
}

/**
 * Alice's browser of `site` through nginx on `transport` (websocket unless given), reconnection
 * off (the test says when it comes back), subscribed to a fresh document (its room as Frappe
 * 15 names it, without the site); resolves once events of that room reach it. With `at`,
 * straight to instance `at` instead of through nginx. Returns the socket, its doc room, and
 * the index of the instance that holds it.
 */
async function browserInDocRoom(cluster, { at, site = SITE, transport = "websocket" } = {}) {
  const [first] = cluster.instances;
  const options = { site, sid: ALICE_SID, transports: [transport], namespace: namespaceOf(first, site),
    headers: { "user-agent": BROWSER_UA } };
  const socket = at === undefined
    ? first.socket({ ...options, port: cluster.nginx.port, siteHeader: false, origin: `http://127.0.0.1:${cluster.nginx.port}` })
    : cluster.instances[at].socket(options);
  await connected(socket);
  const docname = unique("RECOVER");
  first.frappe.allow(site, ALICE, "ToDo", docname);
  const room = `doc:ToDo/${docname}`;
  socket.emit("doc_subscribe", "ToDo", docname);
  await first.publishUntilReceived(socket, room, { site });
  const probe = socket.received.find((r) => r.event === "probe");
  assert.equal(typeof probe.args.at(-1), "string", "a browser's events carry their offset as last argument");
  const counts = await Promise.all(cluster.instances.map((stack) => held(stack, site)));
  assert.deepEqual([...counts].sort(), [0, 1], `the socket is on one instance: ${counts}`);
  return { socket, room, holder: counts.indexOf(1) };
}

/**
 * SIGTERM the instance `index`, awaited, and the disconnect of each of its `clients` with it;
 * returns their reasons.
 */
async function stopInstance(cluster, index, ...clients) {
  return endInstance("SIGTERM", cluster, index, ...clients);
}

/**
 * End the instance `index` with `signal`, awaited, and its clients' disconnects; returns their
 * reasons. SIGTERM is a clean stop (exit code 0); SIGKILL leaves it no last word.
 */
async function endInstance(signal, cluster, index, ...clients) {
  const gone = clients.map((socket) => nextEvent(socket, "disconnect", 15000));
  const { server } = cluster.instances[index];
  if (signal === "SIGKILL") {
    server.proc.kill("SIGKILL");
    await server.exited;
    assert.equal(server.proc.signalCode, "SIGKILL", `instance ${index} was killed`);
  } else {
    await server.stop();
    assert.equal(server.proc.exitCode, 0, `instance ${index} stopped cleanly (signal: ${server.proc.signalCode})`);
  }
  return (await Promise.all(gone)).map(([reason]) => reason);
}

/** What a client in doc `room` misses while away (`run`'s seq 0 to 10): ten to the room, one to Alice's room. */
async function publishWhileAway(stack, run, room) {
  for (let seq = 0; seq < 10; seq += 1) await publish(stack, "missed", { run, seq }, { room });
  await publish(stack, "missed", { run, seq: 10 }, { room: userRoom(ALICE) });
}

/**
 * Bob's socket on `stack` (websocket), once it has an event published after everything before
 * now: by then `stack` has logged all of those (it reads the bench log in order).
 */
async function observer(stack) {
  const socket = await stack.connect({ site: SITE, sid: BOB_SID, transports: ["websocket"], namespace: namespaceOf(stack) });
  await stack.flush(socket, { userRoom: userRoom(BOB) });
  return socket;
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
 * Bring `socket` (a client of `site`) back (connect()) and check that it resumed on `stack`:
 * recovered with the same `id`, the `run`'s eleven missed events once and in order with their
 * offsets, then a live event in its doc `room` once.
 */
async function expectRecoveredOn(stack, socket, { id, run, room, site = SITE }) {
  const since = socket.received.length;
  const back = nextEvent(socket, "connect", 15000);
  socket.connect();
  await back;
  assert.equal(socket.recovered, true, "socket.recovered");
  assert.equal(socket.id, id, "the same socket id on the other instance");
  await waitSeeing(() => seqs(socket, "missed", run).length >= 11, { timeoutMs: 10000,
    what: "the 11 missed events", seen: () => `got ${JSON.stringify(seqs(socket, "missed", run))}` });
  await stack.flush(socket, { site, userRoom: userRoom(ALICE) });
  assert.deepEqual(seqs(socket, "missed", run), [...Array(11).keys()], "each missed event once, in order");
  assert.ok(socket.received.slice(since).filter((r) => r.event === "missed").every((r) => typeof r.args.at(-1) === "string"),
    "replayed events carry their offset");
  // Live, in the doc room it kept: once.
  await publish(stack, "live", { run, seq: 0 }, { site, room });
  await waitFor(() => seqs(socket, "live", run).length >= 1, { what: "the live event in the doc room" });
  await stack.flush(socket, { site, userRoom: userRoom(ALICE) });
  assert.deepEqual(seqs(socket, "live", run), [0], "the live event once");
}

/**
 * (1) and (5): Alice's browser through nginx (`sticky` as Cluster.startNginx takes it) on
 * `transport`, in a doc room, loses its instance to a SIGTERM, misses eleven events, and comes
 * back through nginx on the other instance, on the same transport, recovered.
 */
async function recoversThroughNginx(t, { sticky, transport }) {
  const cluster = await startCluster(t, { common: SHARED_LOG, nginx: sticky });
  const copier = await copierIndex(cluster);
  const { socket, room, holder } = await browserInDocRoom(cluster, { transport });
  const id = socket.id;
  const survivor = cluster.instances[1 - holder];
  t.diagnostic(`the socket was on instance ${holder}; the copier was instance ${copier}`);

  const [reason] = await stopInstance(cluster, holder, socket);
  t.diagnostic(`the client saw: ${reason}`);
  const run = unique("run");
  await publishWhileAway(survivor, run, room);
  // Whoever copied before, the survivor copies now (published during a handover or not).
  await waitFor(async () => (await status(survivor)).bench_log?.copier === true,
    { timeoutMs: 10000, what: "the survivor to hold the bench log's lease" });
  const bob = await observer(survivor);
  assert.deepEqual(await sockets(survivor), { websocket: 1, polling: 0 }, "only the observer on the survivor before the client is back");

  await expectRecoveredOn(survivor, socket, { id, run, room });
  assert.equal(socket.io.engine.port, String(cluster.nginx.port), "back through nginx");
  assert.equal(socket.io.engine.transport.name, transport, "on the same transport");
  const expected = { websocket: 1, polling: 0 };
  expected[transport] += 1;
  assert.deepEqual(await sockets(survivor), expected, "the survivor's status counts the recovered socket");
  assert.ok((await status(survivor)).sites.find((s) => s.site === SITE).users.includes(ALICE), "Alice online on the survivor");
  // Gone once it leaves (and no poll is left pending in nginx, whose stop would wait for it).
  socket.disconnect();
  await waitFor(async () => (await held(survivor)) === 1, { what: "the survivor to let the recovered socket go" });
  bob.disconnect();
}

const WITH_NGINX = { timeout: 60000, skip: !NGINX && "nginx is not installed" };

describe("recovery across instances", () => {
  test("a client whose instance stops recovers its session on another", WITH_NGINX,
    (t) => recoversThroughNginx(t, { sticky: "address", transport: "websocket" }));

  test("the copier's stop loses nothing", { timeout: 90000 }, async (t) => {
    const cluster = await startCluster(t, { common: SHARED_LOG });
    const copierAt = await copierIndex(cluster);
    const copier = cluster.instances[copierAt];
    const other = cluster.instances[1 - copierAt];
    const socket = await other.connect({ site: SITE, sid: ALICE_SID, transports: ["websocket"] });
    await other.flush(socket, { userRoom: userRoom(ALICE) });

    const run = unique("run");
    let seq = 0;
    const publishNext = async () => {
      await other.publish("numbered", { run, seq }, { room: userRoom(ALICE) });
      seq += 1;
    };
    // Before: the copier copies.
    while (seq < 100) await publishNext();
    // During and after its stop, until the other instance holds the lease: each publication
    // is followed by a look at the other's status, which paces the series.
    const stopAt = seq;
    let exitedAt;
    let exitCode;
    const stopping = copier.server.stop().then(() => { exitedAt = seq; exitCode = copier.server.proc.exitCode; });
    const takenAt = await waitFor(async () => {
      await publishNext();
      return exitedAt !== undefined && (await status(other)).bench_log?.copier === true && seq;
    }, { timeoutMs: 30000, everyMs: 1, what: "the other instance to take the lease after the copier stopped" });
    await stopping;
    assert.equal(exitCode, 0, "the copier stopped cleanly");
    // After: the new copier copies.
    for (let i = 0; i < 100; i += 1) await publishNext();
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
    const cluster = await startCluster(t, { common: { realtime_shared_state: "redis" }, nginx: "address" });
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

  // (4) again with SIGKILL (7). The killed instance keeps nothing at its end: what the
  // client resumes is the live copy its instance wrote when it admitted it and as it joined
  // rooms.
  for (const [how, signal] of [["stops", "SIGTERM"], ["is killed (SIGKILL)", "SIGKILL"]]) test(`a client whose instance is not the copier ${how}, and it recovers on the copier`, { timeout: 60000 }, async (t) => {
    const cluster = await startCluster(t, { common: SHARED_LOG });
    const copierAt = await copierIndex(cluster);
    const copier = cluster.instances[copierAt];
    const { socket, room, holder } = await browserInDocRoom(cluster, { at: 1 - copierAt });
    assert.equal(holder, 1 - copierAt, "the socket is on the instance that does not copy");
    const id = socket.id;
    t.diagnostic(`the socket was on instance ${holder}; the copier was instance ${copierAt}`);

    const [reason] = await endInstance(signal, cluster, holder, socket);
    t.diagnostic(`the client saw: ${reason}`);
    const run = unique("run");
    await publishWhileAway(copier, run, room);
    assert.equal((await status(copier)).bench_log?.copier, true, "the copier kept its lease");
    const bob = await observer(copier);
    assert.equal(await held(copier), 1, "only the observer on the copier before the client is back");

    pointAt(socket, copier);
    await expectRecoveredOn(copier, socket, { id, run, room });
    assert.equal(socket.io.engine.port, String(copier.port), "connected to the copier's port");
    assert.equal(await held(copier), 2, "the copier's status counts the recovered socket");
    assert.equal((await status(copier)).bench_log?.copier, true, "still the copier");
    socket.disconnect();
    bob.disconnect();
  });

  test("long-polling through nginx sticky by session id", WITH_NGINX,
    (t) => recoversThroughNginx(t, { sticky: "sid", transport: "polling" }));

  test("Frappe 14: the root namespace recovers across instances, and an all-sites event is logged once per site",
    { timeout: 60000 }, async (t) => {
      const cluster = await startCluster(t, { common: SHARED_LOG, version: 14 });
      const copierAt = await copierIndex(cluster);
      const copier = cluster.instances[copierAt];
      const away = 1 - copierAt;
      const clients = [];
      for (const site of SITES) clients.push({ site, ...(await browserInDocRoom(cluster, { at: away, site })) });
      for (const { site, socket, holder } of clients) {
        assert.equal(socket.nsp, "/", `${site}: Frappe 14's one namespace`);
        assert.equal(holder, away, `${site}: the socket is on the instance that does not copy`);
      }
      const ids = clients.map(({ socket }) => socket.id);

      const reasons = await stopInstance(cluster, away, ...clients.map(({ socket }) => socket));
      t.diagnostic(`the clients saw: ${reasons.join(", ")}`);
      // Away, as Frappe 14 publishes: seq 0 to 10 to each site's doc room in turn, but 5 once,
      // with no room, to every site. (The probes and sentinels keep Frappe 15's shape, which a
      // Frappe 14 bench takes too.)
      const run = unique("run");
      const EVERY_SITE = "every site";
      for (let seq = 0; seq < 11; seq += 1) {
        if (seq === 5) await publish(copier, "missed", { run, seq, site: EVERY_SITE });
        else for (const { site, room } of clients) await publish(copier, "missed", { run, seq, site }, { site, room });
      }
      assert.equal((await status(copier)).bench_log?.copier, true, "the copier kept its lease");
      const bob = await observer(copier);
      assert.deepEqual(await Promise.all(SITES.map((site) => held(copier, site))), [1, 0],
        "only the observer on the copier before the clients are back");

      for (const [i, { site, socket, room }] of clients.entries()) {
        pointAt(socket, copier);
        await expectRecoveredOn(copier, socket, { id: ids[i], run, room, site });
        assert.deepEqual(ofRun(socket, "missed", run).map((r) => r.args[0].site),
          [...Array(11).keys()].map((seq) => (seq === 5 ? EVERY_SITE : site)),
          `${site}: its own site's events and the all-sites one in its place, none of the other site's`);
      }
      const offsets = clients.map(({ socket }) => ofRun(socket, "missed", run)[5].args.at(-1));
      t.diagnostic(`the all-sites event's offsets: ${offsets.join(", ")}`);
      assert.equal(offsets[0], offsets[1], "one offset for the all-sites event on both sites");
      assert.deepEqual(await Promise.all(SITES.map((site) => held(copier, site))), [2, 1],
        "the copier's status counts both recovered sockets");
      for (const { socket } of clients) socket.disconnect();
      bob.disconnect();
    });
});
