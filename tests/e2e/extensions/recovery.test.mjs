// Connection state recovery (socket.io ≥ 4.6; docs/design.md "Connection state recovery"):
// a socket cut by something that is not its doing keeps its session for
// realtime_recovery_seconds; socket.io-client comes back with {pid, offset}, is
// re-authenticated, gets the same id, its rooms, and every publication it missed, in order,
// exactly once. Anything else (unknown pid, expired session, trimmed log, logged-out user,
// explicit disconnect, cut for cause) is an ordinary connect. Offsets go only to sockets that
// take them (a browser's User-Agent, a pid in the CONNECT auth, or {recovery: true}).
//
// Cuts go through a TCP proxy the test controls: `cut({hold: true})` destroys every current
// connection (the client sees its transport close) and keeps new ones waiting until
// `release()`, so the client's reconnection is held while the server notices the cut and
// while the events it misses are published. Every wait is bounded; the only waits for time to
// pass are where time passing is the point (the recovery window).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { io as io48 } from "socket.io-client";
import { io as io46 } from "socket.io-client-4.6";
import { io as io47 } from "socket.io-client-4.7";
import {
  Server, startStack, waitFor, nextEvent, SITES, ALICE, ALICE_SID, BOB, BOB_SID, userRoom, unique,
} from "../../support/harness.mjs";
import { CutProxy } from "../../support/cut-proxy.mjs";

const SITE = SITES[0];
const BROWSER_UA = "Mozilla/5.0 (test)";
const CLIENTS = [["4.6.2", io46], ["4.7.2", io47], ["4.8", io48]];

const RECOVERIES = "frappe_realtime_recoveries_total";
const REPLAYED = "frappe_realtime_recovery_events_replayed_total";
const LOG_EVENTS = "frappe_realtime_recovery_log_events";
const LOG_BYTES = "frappe_realtime_recovery_log_bytes";
const KEPT = "frappe_realtime_recovery_sessions_kept";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/**
 * A browser-like socket.io-client socket (User-Agent Mozilla, reconnection on, short delays)
 * of `sid`, through `proxy` when given; resolves once connected.
 */
async function browser(stack, { io = io48, proxy, transports = ["websocket"], sid = ALICE_SID, auth } = {}) {
  const socket = stack.socket({
    sid, io, transports, auth,
    port: proxy?.port ?? stack.port,
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    headers: { "User-Agent": BROWSER_UA },
  });
  await nextEvent(socket, "connect", 8000);
  return socket;
}

/** Subscribe `socket` to a fresh document `user` may read; resolves with its room once joined. */
async function subscribeDoc(stack, socket, user = ALICE) {
  const doctype = unique("Recovery Doc");
  const docname = unique("DOC");
  stack.frappe.allow(SITE, user, doctype, docname);
  socket.emit("doc_subscribe", doctype, docname);
  const room = `doc:${doctype}/${docname}`;
  await stack.publishUntilReceived(socket, room);
  return room;
}

/**
 * Cut `socket`'s connection at the proxy and hold its reconnection; resolves with the
 * client's disconnect reason once the server has kept the session (the gauge went up).
 */
async function cutAndHold(stack, proxy, socket) {
  const keptBefore = await stack.metric(KEPT, { site: SITE });
  const gone = nextEvent(socket, "disconnect", 5000);
  proxy.cut({ hold: true });
  const [reason] = await gone;
  await waitFor(async () => (await stack.metric(KEPT, { site: SITE })) >= keptBefore + 1,
    { timeoutMs: 5000, what: "the server to keep the cut socket's session" });
  return reason;
}

/** Let the held reconnection through; resolves once the socket is connected again. */
async function releaseAndReconnect(proxy, socket) {
  const back = nextEvent(socket, "connect", 15000);
  proxy.release();
  await back;
}

/** The arguments of every `event` the socket received from index `since` on. */
function argsOf(socket, event, since = 0) {
  return socket.received.slice(since).filter((r) => r.event === event).map((r) => r.args);
}

/** Wait until `observer` has the event carrying `marker` (the server has handled everything before it). */
async function observed(observer, event, marker) {
  await waitFor(() => argsOf(observer, event).some((args) => args[0]?.marker === marker),
    { timeoutMs: 8000, what: `the observer to get ${event} ${marker}` });
}

/**
 * A stack started with `options` (startStack's) and a CutProxy in front of it, so that a test
 * can cut its clients' connections; the stack is stopped again if the proxy cannot start.
 */
async function stackBehindProxy(options) {
  const stack = await startStack(options);
  try {
    return { stack, proxy: await CutProxy.start(stack.port) };
  } catch (err) {
    await stack.stop();
    throw err;
  }
}

async function stopStackAndProxy(stack, proxy) {
  await stack?.stop();
  await proxy?.close();
}

const outcome = (stack, value) => stack.metric(RECOVERIES, { site: SITE, outcome: value });

// ---------------------------------------------------------------------------------------------
// Recovery after a transport cut
// ---------------------------------------------------------------------------------------------

describe("a browser socket cut from under it recovers its session", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy()));
  after(() => stopStackAndProxy(stack, proxy));

  const scenarios = [
    ...CLIENTS.map(([version, io]) => ({ version, io, transports: ["websocket"] })),
    { version: "4.8", io: io48, transports: ["polling", "websocket"], upgrade: true },
  ];
  for (const { version, io, transports, upgrade } of scenarios) {
    test(`socket.io-client ${version} over ${transports.join("+")}: same id, its rooms, every missed event once, in order`,
      { timeout: 60000 }, async () => {
        const N = 20;
        const socket = await browser(stack, { io, proxy, transports });
        if (upgrade) {
          await waitFor(() => socket.io.engine?.transport?.name === "websocket", { what: "the upgrade" });
        }
        // Rooms of every kind a client subscribes to: doc, doctype, task_progress, open_doc.
        const docRoom = await subscribeDoc(stack, socket);
        const doctype = unique("Recovery Doctype");
        stack.frappe.allow(SITE, ALICE, doctype);
        socket.emit("doctype_subscribe", doctype);
        await stack.publishUntilReceived(socket, `doctype:${doctype}`);
        const task = unique("task");
        socket.emit("task_subscribe", task);
        await stack.publishUntilReceived(socket, `task_progress:${task}`);
        const openType = unique("Open Doc");
        const openName = unique("OPEN");
        stack.frappe.allow(SITE, ALICE, openType, openName);
        socket.emit("doc_open", openType, openName);
        await stack.publishUntilReceived(socket, `open_doc:${openType}/${openName}`);
        const rooms = [docRoom, userRoom(ALICE), `doctype:${doctype}`, `task_progress:${task}`,
          `open_doc:${openType}/${openName}`];
        // Every probe so far carried an offset: this socket takes them.
        const probe = socket.received.find((r) => r.event === "probe");
        assert.equal(probe.args.length, 2, "a browser's events carry the offset as last argument");
        assert.equal(typeof probe.args[1], "string");

        // An observer that stays connected: once it has the last event, the server handled all.
        const observer = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
        const id = socket.id;
        const recoveredBefore = await outcome(stack, "recovered");
        const replayedBefore = await stack.metric(REPLAYED, { site: SITE });

        const reason = await cutAndHold(stack, proxy, socket);
        assert.match(reason, /transport (close|error)/);
        const run = unique("run");
        for (let seq = 0; seq < N * rooms.length; seq += 1) {
          const room = rooms[seq % rooms.length];
          await stack.publish("missed", { run, seq, room, marker: `${run}-${seq}` }, { room });
        }
        await stack.publish("observer_mark", { marker: run }, { room: userRoom(ALICE) });
        await observed(observer, "observer_mark", run);
        const since = socket.received.length;
        await releaseAndReconnect(proxy, socket);

        assert.equal(socket.recovered, true, "socket.recovered");
        assert.equal(socket.id, id, "the same socket id");
        const total = N * rooms.length;
        await waitFor(() => argsOf(socket, "missed", since).filter((a) => a[0]?.run === run).length >= total,
          { timeoutMs: 10000, what: `all ${total} missed events` });
        await stack.flush(socket, { userRoom: userRoom(ALICE) });
        const missed = argsOf(socket, "missed", since).filter((a) => a[0]?.run === run);
        assert.deepEqual(missed.map((a) => a[0].seq), [...Array(total).keys()], "each once, in order");
        for (const args of missed) {
          assert.equal(args.length, 2, "payload and offset");
          assert.equal(typeof args[1], "string");
        }
        assert.equal(new Set(missed.map((a) => a[1])).size, total, "distinct offsets");

        // Every room is still the socket's: a new publication to each arrives.
        for (const room of rooms) {
          const marker = unique("after");
          await stack.publish("after", { marker }, { room });
          await waitFor(() => argsOf(socket, "after").some((a) => a[0]?.marker === marker),
            { what: `a publication to ${room} after recovery` });
        }
        assert.equal(await outcome(stack, "recovered"), recoveredBefore + 1);
        const replayed = (await stack.metric(REPLAYED, { site: SITE })) - replayedBefore;
        assert.ok(replayed >= total, `events replayed: ${replayed} (want ≥ ${total})`);
        socket.disconnect();
        observer.disconnect();
      });
  }
});

describe("a polling socket cut from under it (realtime_slow_client_timeout 1 s)", () => {
  let stack;
  let proxy;
  // The server learns that a polling client is gone when events wait unpolled for the slow
  // client timeout (a cut that keeps the session), instead of after the 45 s heartbeat.
  before(async () => ({ stack, proxy } = await stackBehindProxy({ common: { realtime_slow_client_timeout: 1 } })));
  after(() => stopStackAndProxy(stack, proxy));

  test("recovers with every missed event, including those queued to the dead session", { timeout: 60000 }, async () => {
    const socket = await browser(stack, { proxy, transports: ["polling"] });
    const docRoom = await subscribeDoc(stack, socket);
    const observer = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const id = socket.id;
    const recoveredBefore = await outcome(stack, "recovered");
    const keptBefore = await stack.metric(KEPT, { site: SITE });

    const gone = nextEvent(socket, "disconnect", 5000);
    proxy.cut({ hold: true });
    assert.match((await gone)[0], /transport (close|error)/);
    // Publish until the server has cut the polling session (its events wait unpolled) and
    // kept it, then publish more.
    const rooms = [docRoom, userRoom(ALICE)];
    const run = unique("run");
    let seq = 0;
    const publish = async () => {
      const room = rooms[seq % rooms.length];
      await stack.publish("missed", { run, seq, room }, { room });
      seq += 1;
    };
    await waitFor(async () => {
      await publish();
      return (await stack.metric(KEPT, { site: SITE })) >= keptBefore + 1;
    }, { timeoutMs: 15000, everyMs: 100, what: "the unpolled session to be cut and kept" });
    assert.equal(await stack.metric("frappe_realtime_disconnects_total", { site: SITE, reason: "slow_consumer" }), 1,
      "the server cut it as a slow consumer, which keeps the session");
    for (let i = 0; i < 20; i += 1) await publish();
    const total = seq;
    await stack.publish("observer_mark", { marker: run }, { room: userRoom(ALICE) });
    await observed(observer, "observer_mark", run);
    const since = socket.received.length;
    await releaseAndReconnect(proxy, socket);

    assert.equal(socket.recovered, true, "socket.recovered");
    assert.equal(socket.id, id, "the same socket id");
    await waitFor(() => argsOf(socket, "missed").filter((a) => a[0]?.run === run).length >= total,
      { timeoutMs: 10000, what: `all ${total} missed events` });
    await stack.flush(socket, { userRoom: userRoom(ALICE) });
    const missed = argsOf(socket, "missed").filter((a) => a[0]?.run === run);
    assert.deepEqual(missed.map((a) => a[0].seq), [...Array(total).keys()], "each once, in order");
    assert.ok(argsOf(socket, "missed", since).length >= 20, "at least those published after the cut were replayed");
    const marker = unique("after");
    await stack.publish("after", { marker }, { room: docRoom });
    await waitFor(() => argsOf(socket, "after").some((a) => a[0]?.marker === marker), { what: "the doc room kept" });
    assert.equal(await outcome(stack, "recovered"), recoveredBefore + 1);
    socket.disconnect();
    observer.disconnect();
  });
});

describe("a websocket whose send queue overflowed under load", () => {
  let stack;
  let proxy;
  // Only the queue's bound can cut it (the byte bound and the stall timeout out of reach), and
  // a log large enough for the big events that fill the kernel buffers first.
  before(async () => ({ stack, proxy } = await stackBehindProxy({
    common: {
      realtime_slow_client_timeout: 60,
      realtime_slow_client_max_bytes: 1e9,
      realtime_recovery_max_bytes: 64 * 1024 * 1024,
    },
  })));
  after(() => stopStackAndProxy(stack, proxy));

  test("is cut, and recovers every event, the ones dropped from its queue included, once, in order",
    { timeout: 90000 }, async () => {
      const socket = await browser(stack, { io: io47, proxy });
      const docRoom = await subscribeDoc(stack, socket);
      const id = socket.id;
      const recoveredBefore = await outcome(stack, "recovered");
      const dropped = () => stack.metric("frappe_realtime_socket_send_dropped_total", { site: SITE });
      const droppedBefore = await dropped();

      // The client stops taking bytes: big events fill the kernel buffers, then small ones
      // overflow the server's 1024-packet queue for it.
      proxy.stall();
      const run = unique("run");
      const big = "x".repeat(256 * 1024);
      let seq = 0;
      for (; seq < 60; seq += 1) await stack.publish("missed", { run, seq, pad: big }, { room: docRoom });
      for (; seq < 1260; seq += 1) await stack.publish("missed", { run, seq }, { room: docRoom });
      await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
        { site: SITE, reason: "slow_consumer" })) === 1, { timeoutMs: 20000, what: "the overflowing socket to be cut" });
      assert.ok((await dropped()) > droppedBefore, "sends to its full queue were dropped");
      assert.match(stack.server.output, /cutting a slow consumer.*its send queue overflowed/);

      // The client notices when its connection goes (here: the proxy ends it), and comes back.
      const gone = nextEvent(socket, "disconnect", 5000);
      proxy.cut();
      await gone;
      await nextEvent(socket, "connect", 15000);
      assert.equal(socket.recovered, true, "socket.recovered");
      assert.equal(socket.id, id, "the same socket id");
      const total = seq;
      const ours = () => argsOf(socket, "missed").filter((a) => a[0]?.run === run);
      await waitFor(() => ours().length >= total, { timeoutMs: 30000, what: `all ${total} events` })
        .catch((err) => {
          const seqs = ours().map((a) => a[0].seq);
          throw new Error(`${err.message}: ${seqs.length} arrived (first ${seqs[0]}, last ${seqs.at(-1)}), `
            + `connected ${socket.connected}\nserver log, last 3 KB:\n${stack.server.output.slice(-3072)}`);
        });
      await stack.flush(socket, { userRoom: userRoom(ALICE) });
      const received = argsOf(socket, "missed").filter((a) => a[0]?.run === run);
      assert.deepEqual(received.map((a) => a[0].seq), [...Array(total).keys()], "each once, in order");
      assert.equal(await outcome(stack, "recovered"), recoveredBefore + 1);
      socket.disconnect();
    });
});

// ---------------------------------------------------------------------------------------------
// Ordinary connects: expired, unknown, logged out, too old
// ---------------------------------------------------------------------------------------------

describe("with realtime_recovery_seconds 1", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy({ common: { realtime_recovery_seconds: 1 } })));
  after(() => stopStackAndProxy(stack, proxy));

  test("a client back after the window gets an ordinary connect: new id, fresh rooms only", { timeout: 30000 }, async () => {
    const socket = await browser(stack, { proxy });
    const docRoom = await subscribeDoc(stack, socket);
    const id = socket.id;
    const before = (await outcome(stack, "expired")) + (await outcome(stack, "unknown"));
    const recoveredBefore = await outcome(stack, "recovered");
    await cutAndHold(stack, proxy, socket);
    await stack.publish("missed", { n: 1 }, { room: userRoom(ALICE) });
    await sleep(2000); // the point: the 1 s window passes
    const since = socket.received.length;
    await releaseAndReconnect(proxy, socket);

    assert.equal(socket.recovered, false, "socket.recovered");
    assert.notEqual(socket.id, id, "a new socket id");
    const marker = unique("doc");
    await stack.publish("doc_event", { marker }, { room: docRoom });
    await stack.flush(socket, { userRoom: userRoom(ALICE) }); // the user room still works
    assert.equal(argsOf(socket, "doc_event", since).length, 0, "the doc room was not kept");
    assert.equal(argsOf(socket, "missed", since).length, 0, "nothing replayed");
    const after = (await outcome(stack, "expired")) + (await outcome(stack, "unknown"));
    assert.equal(after - before, 1, "counted as expired (or unknown)");
    assert.equal(await outcome(stack, "recovered"), recoveredBefore);
    socket.disconnect();
  });
});

/** A raw Engine.IO websocket of alice's that joins the namespace with `auth`; resolves with its CONNECT reply. */
async function rawJoin(stack, auth, { headers = {} } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=websocket`, {
    headers: { origin: stack.frappe.url, cookie: `sid=${ALICE_SID}`, "x-frappe-site-name": SITE, ...headers },
  });
  ws.messages = [];
  ws.on("error", () => {});
  const reply = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the raw client did not join in time")), 8000);
    ws.on("message", (data) => {
      const text = data.toString();
      ws.messages.push(text);
      if (text.startsWith("0")) ws.send(`40/${SITE},${auth === undefined ? "" : JSON.stringify(auth)}`);
      if (text === "2") ws.send("3");
      if (text.startsWith(`40/${SITE},`)) { clearTimeout(timer); resolve(JSON.parse(text.slice(`40/${SITE},`.length))); }
      if (text.startsWith(`44/${SITE},`)) { clearTimeout(timer); reject(new Error(`refused: ${text}`)); }
    });
  });
  return { ws, reply };
}

/** The arguments of the events `ws` got named `event`. */
function rawEvents(ws, event) {
  return ws.messages.filter((m) => m.startsWith(`42/${SITE},`))
    .map((m) => JSON.parse(m.slice(`42/${SITE},`.length)))
    .filter(([name]) => name === event)
    .map(([, ...args]) => args);
}

describe("a CONNECT naming a session that was never kept", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("a bogus pid gets an ordinary CONNECT reply with a pid of its own; outcome unknown", { timeout: 30000 }, async () => {
    const before = await outcome(stack, "unknown");
    const { ws, reply } = await rawJoin(stack, { pid: "bogus", offset: "1" });
    assert.equal(typeof reply.sid, "string");
    assert.equal(typeof reply.pid, "string");
    assert.notEqual(reply.pid, "bogus");
    assert.equal(await outcome(stack, "unknown"), before + 1);
    // A client that named a pid takes offsets.
    const marker = unique("m");
    await stack.publish("ev", { marker }, { room: userRoom(ALICE) });
    await waitFor(() => rawEvents(ws, "ev").some((args) => args[0]?.marker === marker), { what: "the event" });
    const [args] = rawEvents(ws, "ev");
    assert.equal(args.length, 2, `payload and offset: ${JSON.stringify(args)}`);
    assert.equal(typeof args[1], "string");
    ws.terminate();
  });

  test("the pid of a socket still connected is not a kept session", { timeout: 30000 }, async () => {
    const live = await rawJoin(stack, undefined);
    const before = await outcome(stack, "unknown");
    const { ws, reply } = await rawJoin(stack, { pid: live.reply.pid, offset: "0" });
    assert.notEqual(reply.sid, live.reply.sid);
    assert.notEqual(reply.pid, live.reply.pid);
    assert.equal(await outcome(stack, "unknown"), before + 1);
    assert.equal(await outcome(stack, "recovered"), 0);
    ws.terminate();
    live.ws.terminate();
  });
});

describe("a user logged out during the gap", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy()));
  after(() => stopStackAndProxy(stack, proxy));

  test("comes back as Guest, as an ordinary connect of that sid would: nothing of theirs replayed; outcome refused",
    { timeout: 30000 }, async () => {
      const socket = await browser(stack, { proxy });
      const docRoom = await subscribeDoc(stack, socket);
      const observer = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      const id = socket.id;
      const refusedBefore = await outcome(stack, "refused");
      const recoveredBefore = await outcome(stack, "recovered");
      await cutAndHold(stack, proxy, socket);
      stack.frappe.removeSession(SITE, ALICE_SID);
      const run = unique("run");
      for (let seq = 0; seq < 10; seq += 1) {
        await stack.publish("missed", { run, seq }, { room: seq % 2 ? docRoom : userRoom(ALICE) });
      }
      await stack.publish("observer_mark", { marker: run }, { room: userRoom(ALICE) });
      await observed(observer, "observer_mark", run);
      const since = socket.received.length;
      await releaseAndReconnect(proxy, socket);

      assert.equal(socket.recovered, false, "socket.recovered");
      // Guest's rooms, not alice's: a sentinel to user:Guest arrives; nothing of alice's does.
      const marker = unique("later");
      await stack.publish("for_alice", { marker }, { room: userRoom(ALICE) });
      await stack.publish("for_alice", { marker }, { room: docRoom });
      await stack.flush(socket, { userRoom: userRoom("Guest") });
      assert.equal(argsOf(socket, "missed", since).length, 0, "none of alice's missed events replayed");
      assert.equal(argsOf(socket, "for_alice", since).length, 0, "not in alice's rooms");
      assert.equal(await outcome(stack, "refused"), refusedBefore + 1);
      assert.equal(await outcome(stack, "recovered"), recoveredBefore);
      // An ordinary connect: a Guest socket does not carry alice's socket id.
      assert.notEqual(socket.id, id, "a new socket id");
      socket.disconnect();
      observer.disconnect();
      stack.frappe.addSession(SITE, ALICE_SID, ALICE);
    });
});

describe("with realtime_recovery_max_events 5", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy({ common: { realtime_recovery_max_events: 5 } })));
  after(() => stopStackAndProxy(stack, proxy));

  test("a client whose offset was trimmed away gets an ordinary connect (too_old); a flood does not grow the log",
    { timeout: 60000 }, async () => {
      const socket = await browser(stack, { proxy });
      await subscribeDoc(stack, socket);
      const observer = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      const id = socket.id;
      const tooOldBefore = await outcome(stack, "too_old");
      const recoveredBefore = await outcome(stack, "recovered");
      await cutAndHold(stack, proxy, socket);
      const run = unique("run");
      const sizes = [];
      for (let seq = 0; seq < 220; seq += 1) {
        const marker = `${run}-${seq}`;
        await stack.publish("missed", { run, seq, marker, pad: "p".repeat(100) }, { room: userRoom(ALICE) });
        if (seq % 20 === 19) {
          await observed(observer, "missed", marker);
          sizes.push(await stack.metric(LOG_EVENTS, { site: SITE }));
        }
      }
      await stack.publish("observer_mark", { marker: run }, { room: userRoom(ALICE) });
      await observed(observer, "observer_mark", run);
      sizes.push(await stack.metric(LOG_EVENTS, { site: SITE }));
      assert.ok(sizes.every((n) => n <= 5), `log sizes while flooding: ${sizes.join(", ")}`);
      assert.ok(sizes.at(-1) >= 1, "the log holds the newest publications");
      const bytes = await stack.metric(LOG_BYTES, { site: SITE });
      assert.ok(bytes > 0 && bytes <= 5 * 1024, `log bytes: ${bytes}`);
      const since = socket.received.length;
      await releaseAndReconnect(proxy, socket);

      assert.equal(socket.recovered, false, "socket.recovered");
      assert.notEqual(socket.id, id, "a new socket id");
      await stack.flush(socket, { userRoom: userRoom(ALICE) });
      assert.equal(argsOf(socket, "missed", since).length, 0, "nothing replayed: a partial replay would be a lie");
      assert.equal(await outcome(stack, "too_old"), tooOldBefore + 1);
      assert.equal(await outcome(stack, "recovered"), recoveredBefore);
      socket.disconnect();
      observer.disconnect();
    });
});

// ---------------------------------------------------------------------------------------------
// Isolation, and what keeps nothing
// ---------------------------------------------------------------------------------------------

describe("isolation of the replay", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy()));
  after(() => stopStackAndProxy(stack, proxy));

  test("only publications to the socket's own rooms are replayed", { timeout: 30000 }, async () => {
    const socket = await browser(stack, { proxy });
    const docRoom = await subscribeDoc(stack, socket);
    // bob is connected and in a document room alice never subscribed to.
    const bob = await browser(stack, { sid: BOB_SID });
    const bobDoc = await subscribeDoc(stack, bob, BOB);
    const observer = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await cutAndHold(stack, proxy, socket);
    const run = unique("run");
    const plan = [
      ["mine", userRoom(ALICE)], ["foreign", userRoom(BOB)], ["mine", docRoom], ["foreign", bobDoc],
      ["foreign", "doc:Never Subscribed/X-1"], ["mine", "all"], ["foreign", userRoom("Guest")],
      ["foreign", "doctype:Never Subscribed"], ["mine", userRoom(ALICE)],
    ];
    for (const [seq, [event, room]] of plan.entries()) await stack.publish(event, { run, seq, room }, { room });
    await stack.publish("observer_mark", { marker: run }, { room: userRoom(ALICE) });
    await observed(observer, "observer_mark", run);
    await waitFor(() => argsOf(bob, "foreign").some((a) => a[0]?.run === run), { what: "bob to get his events" });
    const since = socket.received.length;
    await releaseAndReconnect(proxy, socket);

    assert.equal(socket.recovered, true, "socket.recovered");
    await stack.flush(socket, { userRoom: userRoom(ALICE) });
    const mine = argsOf(socket, "mine", since).filter((a) => a[0]?.run === run).map((a) => a[0].seq);
    assert.deepEqual(mine, plan.flatMap(([event], seq) => (event === "mine" ? [seq] : [])));
    const foreign = argsOf(socket, "foreign", since).filter((a) => a[0]?.run === run);
    assert.deepEqual(foreign, [], "nothing published to rooms the socket was not in");
    socket.disconnect();
    bob.disconnect();
    observer.disconnect();
  });
});

describe("a disconnect that keeps nothing", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("the client's own disconnect(): connect() again is an ordinary connect", { timeout: 30000 }, async () => {
    const socket = await browser(stack);
    const docRoom = await subscribeDoc(stack, socket);
    const id = socket.id;
    const keptBefore = await stack.metric(KEPT, { site: SITE });
    const leftBefore = await stack.metric("frappe_realtime_disconnects_total", { site: SITE, reason: "client_disconnect" });
    const unknownBefore = await outcome(stack, "unknown");
    const recoveredBefore = await outcome(stack, "recovered");
    socket.disconnect();
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "client_disconnect" })) === leftBefore + 1, { what: "the server to see the disconnect" });
    assert.equal(await stack.metric(KEPT, { site: SITE }), keptBefore, "no session kept");
    const since = socket.received.length;
    socket.connect();
    await nextEvent(socket, "connect", 8000);

    assert.equal(socket.recovered, false, "socket.recovered");
    assert.notEqual(socket.id, id, "a new socket id");
    // socket.io-client still names its old pid: it is not a kept session.
    assert.equal(await outcome(stack, "unknown"), unknownBefore + 1);
    assert.equal(await outcome(stack, "recovered"), recoveredBefore);
    const marker = unique("doc");
    await stack.publish("doc_event", { marker }, { room: docRoom });
    await stack.flush(socket, { userRoom: userRoom(ALICE) });
    assert.equal(argsOf(socket, "doc_event", since).length, 0, "the doc room was not kept");
    socket.disconnect();
  });

  test("a server cut for cause (revocation): connect() again is an ordinary connect", { timeout: 30000 }, async () => {
    const socket = await browser(stack);
    const docRoom = await subscribeDoc(stack, socket);
    const id = socket.id;
    const keptBefore = await stack.metric(KEPT, { site: SITE });
    const recoveredBefore = await outcome(stack, "recovered");
    const gone = nextEvent(socket, "disconnect", 5000);
    await stack.redis.client.publish("frappe_realtime:revoke", JSON.stringify({ site: SITE, user: ALICE }));
    assert.equal((await gone)[0], "io server disconnect");
    assert.equal(await stack.metric(KEPT, { site: SITE }), keptBefore, "no session kept");
    const since = socket.received.length;
    socket.connect();
    await nextEvent(socket, "connect", 8000);

    assert.equal(socket.recovered, false, "socket.recovered");
    assert.notEqual(socket.id, id, "a new socket id");
    assert.equal(await outcome(stack, "recovered"), recoveredBefore);
    const marker = unique("doc");
    await stack.publish("doc_event", { marker }, { room: docRoom });
    await stack.flush(socket, { userRoom: userRoom(ALICE) });
    assert.equal(argsOf(socket, "doc_event", since).length, 0, "the doc room was not kept");
    socket.disconnect();
  });
});

// ---------------------------------------------------------------------------------------------
// Who gets offsets
// ---------------------------------------------------------------------------------------------

describe("offsets go only to sockets that take them", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  /** The arguments `socket` gets for one publication of `message` to alice's room. */
  async function argsFor(socket, message) {
    const since = socket.received.length;
    await stack.publish("shape", message, { room: userRoom(ALICE) });
    await stack.flush(socket, { userRoom: userRoom(ALICE) });
    const got = argsOf(socket, "shape", since);
    assert.equal(got.length, 1);
    return got[0];
  }

  for (const transports of [["websocket"], ["polling"]]) {
    test(`a node client without a browser User-Agent or recovery auth (${transports[0]}): events as published`,
      { timeout: 30000 }, async () => {
        const socket = await stack.connect({ sid: ALICE_SID, transports });
        assert.deepEqual(await argsFor(socket, { a: 1 }), [{ a: 1 }]);
        assert.deepEqual(await argsFor(socket, "text"), ["text"]);
        socket.disconnect();
      });
  }

  test("a raw client without User-Agent or auth (as python-socketio): no extra argument", { timeout: 30000 }, async () => {
    const { ws, reply } = await rawJoin(stack, undefined);
    assert.equal(typeof reply.sid, "string");
    assert.equal(typeof reply.pid, "string", "the CONNECT reply carries a pid with recovery on");
    const marker = unique("m");
    await stack.publish("ev", { marker }, { room: userRoom(ALICE) });
    await waitFor(() => rawEvents(ws, "ev").some((args) => args[0]?.marker === marker), { what: "the event" });
    assert.deepEqual(rawEvents(ws, "ev"), [[{ marker }]]);
    ws.terminate();
  });

  test("a client whose auth is {recovery: true} gets the offset as last argument", { timeout: 30000 }, async () => {
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"], auth: { recovery: true } });
    const args = await argsFor(socket, { a: 1 });
    assert.equal(args.length, 2);
    assert.deepEqual(args[0], { a: 1 });
    assert.equal(typeof args[1], "string");
    socket.disconnect();
  });

  test("a browser (User-Agent Mozilla/…) gets the offset as last argument, over either transport", { timeout: 30000 }, async () => {
    for (const transports of [["websocket"], ["polling"]]) {
      const socket = await browser(stack, { transports });
      const args = await argsFor(socket, { a: 1 });
      assert.equal(args.length, 2, `${transports}: ${JSON.stringify(args)}`);
      assert.equal(typeof args[1], "string");
      const again = await argsFor(socket, { a: 2 });
      assert.notEqual(again[1], args[1], "a new offset per publication");
      socket.disconnect();
    }
  });
});

describe("with realtime_recovery_seconds 0 (recovery off)", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy({ common: { realtime_recovery_seconds: 0 } })));
  after(() => stopStackAndProxy(stack, proxy));

  test("CONNECT replies carry the sid alone, events no offset, and a cut socket comes back as a new one",
    { timeout: 30000 }, async () => {
      const { ws, reply } = await rawJoin(stack, undefined);
      assert.deepEqual(Object.keys(reply), ["sid"]);
      ws.terminate();
      const socket = await browser(stack, { proxy });
      const marker = unique("m");
      await stack.publish("shape", { marker }, { room: userRoom(ALICE) });
      await stack.flush(socket, { userRoom: userRoom(ALICE) });
      assert.deepEqual(argsOf(socket, "shape"), [[{ marker }]], "no offset for a browser either");
      const id = socket.id;
      const gone = nextEvent(socket, "disconnect", 5000);
      const back = nextEvent(socket, "connect", 15000);
      proxy.cut();
      await gone;
      await back;
      // socket.io-client sets `recovered` to `pid && …`: undefined when the reply has no pid.
      assert.ok(!socket.recovered, `socket.recovered is ${socket.recovered}`);
      assert.notEqual(socket.id, id, "a new socket id");
      assert.equal(await stack.metric(KEPT, { site: SITE }), 0);
      for (const value of ["recovered", "expired", "unknown", "too_old", "refused"]) {
        assert.equal(await outcome(stack, value), 0, `no recovery outcome ${value}`);
      }
      socket.disconnect();
    });
});

// ---------------------------------------------------------------------------------------------
// The Redis store: sessions and the log outlive a restart
// ---------------------------------------------------------------------------------------------

describe("with realtime_recovery_store redis, a restart (SIGTERM) is recovered from", () => {
  let stack;
  let proxy;
  before(async () => ({ stack, proxy } = await stackBehindProxy({ common: { realtime_recovery_store: "redis" } })));
  after(() => stopStackAndProxy(stack, proxy));

  for (const [version, io] of CLIENTS) {
    test(`socket.io-client ${version}: same id, its doc room, and what was published while the new process was up`,
      { timeout: 60000 }, async () => {
        const socket = await browser(stack, { io, proxy });
        const docRoom = await subscribeDoc(stack, socket);
        const id = socket.id;

        // Hold the reconnection, stop the process as supervisor does, start the next one.
        proxy.hold();
        const gone = nextEvent(socket, "disconnect", 10000);
        await stack.server.stop();
        await gone;
        stack.server = await Server.start({ bench: stack.bench, port: stack.port });
        await stack.waitSubscribed();
        assert.match(stack.server.output, /recovery state loaded from Redis/);

        // Published while no process ran would be lost (pub/sub keeps nothing); these come
        // once the next process is subscribed, while the client is still held.
        const run = unique("run");
        const rooms = [docRoom, userRoom(ALICE)];
        for (let seq = 0; seq < 20; seq += 1) {
          await stack.publish("missed", { run, seq }, { room: rooms[seq % 2] });
        }
        const observer = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
        await stack.flush(observer, { userRoom: userRoom(BOB) });
        const since = socket.received.length;
        await releaseAndReconnect(proxy, socket);

        assert.equal(socket.recovered, true, "socket.recovered after a restart");
        assert.equal(socket.id, id, "the same socket id");
        await waitFor(() => argsOf(socket, "missed", since).filter((a) => a[0]?.run === run).length >= 20,
          { timeoutMs: 10000, what: "the events published after the restart" });
        await stack.flush(socket, { userRoom: userRoom(ALICE) });
        const seqs = argsOf(socket, "missed", since).filter((a) => a[0]?.run === run).map((a) => a[0].seq);
        assert.deepEqual(seqs, [...Array(20).keys()], "each once, in order");
        await stack.publishUntilReceived(socket, docRoom, { event: "after_restart" });
        assert.ok(await outcome(stack, "recovered") >= 1, "counted by the new process");
        socket.disconnect();
      });
  }
});
