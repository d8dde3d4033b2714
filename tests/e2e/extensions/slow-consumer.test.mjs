// Slow consumers (docs/reliability.md): a websocket client that stops reading holds at most
// its bounded send queue; it is cut once its connection has taken no bytes for
// realtime_slow_client_timeout, or at once when its queue overflows; the cut shows in metrics
// and logs with the reason, and clients that do read get every event meanwhile. A polling
// client that stops polling while events wait for it is cut the same way.
//
// The slow client is a raw Engine.IO websocket (the `ws` package) that joins the namespace as
// Frappe's client does, then stops reading its TCP socket.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startStack, waitFor, SITES, ALICE_SID, BOB_SID } from "../../support/harness.mjs";

const SITE = SITES[0];
const BIG = "x".repeat(256 * 1024);

/**
 * A client of bob's (a System User, so in room `all`) that stops reading once connected:
 * straight over websocket, or (`upgrade`) as Frappe's client does, polling then upgrading.
 * `joinAfterUpgrade` sends the namespace CONNECT only once on websocket (the upgrade can
 * finish before the namespace is joined: the join waits for a call to Frappe).
 */
async function stalledClient(stack, { upgrade = false, joinAfterUpgrade = false } = {}) {
  const headers = { origin: stack.frappe.url, cookie: `sid=${BOB_SID}`, "x-frappe-site-name": SITE };
  const base = `127.0.0.1:${stack.port}/socket.io/?EIO=4`;
  let sid;
  if (upgrade) {
    const open = await (await fetch(`http://${base}&transport=polling`, { headers })).text();
    sid = JSON.parse(open.slice(1)).sid;
  }
  if (upgrade && !joinAfterUpgrade) {
    await fetch(`http://${base}&transport=polling&sid=${sid}`, { method: "POST", headers, body: `40/${SITE},` });
    let polled = "";
    for (let poll = 0; poll < 5 && !polled.includes(`40/${SITE},`); poll += 1) {
      polled += await (await fetch(`http://${base}&transport=polling&sid=${sid}`, { headers })).text();
    }
    assert.ok(polled.includes(`40/${SITE},`), `namespace joined over polling: ${polled}`);
  }
  const ws = new WebSocket(`ws://${base}&transport=websocket${sid ? `&sid=${sid}` : ""}`, { headers });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the raw client did not join in time")), 8000);
    ws.on("error", reject);
    ws.on("open", () => { if (upgrade) ws.send("2probe"); });
    ws.on("message", (data) => {
      const text = data.toString();
      if (text === "3probe" && joinAfterUpgrade) { ws.send("5"); ws.send(`40/${SITE},`); }
      if (text === "3probe" && !joinAfterUpgrade) { ws.send("5"); clearTimeout(timer); resolve(); }
      if (text.startsWith("0")) ws.send(`40/${SITE},`);
      if (text.startsWith(`40/${SITE},`)) { clearTimeout(timer); resolve(); }
    });
  });
  ws._socket.pause(); // stop reading: the kernel buffers fill, then the server's queue
  return ws;
}

/** Publish `count` events of `payload` to `all`; resolve once `reader` has them all, in order. */
async function publishAndRead(stack, reader, event, count, payload) {
  for (let seq = 0; seq < count; seq += 1) await stack.publish(event, { seq, payload }, { room: "all" });
  await waitFor(() => reader.received.filter((r) => r.event === event).length === count,
    { timeoutMs: 20000, what: `the reading client to get all ${count} ${event}` });
  const seqs = reader.received.filter((r) => r.event === event).map((r) => r.args[0].seq);
  assert.deepEqual(seqs, [...Array(count).keys()]);
}

describe("a client that stops reading, with realtime_slow_client_timeout 2 s", () => {
  let stack;
  // A byte bound out of reach, so only the timeout can cut.
  before(async () => {
    stack = await startStack({ common: { realtime_slow_client_timeout: 2, realtime_slow_client_max_bytes: 1e9 } });
  });
  after(async () => { await stack?.stop(); });

  test("is cut after the timeout with reason slow_consumer; a reading client gets everything", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const slow = await stalledClient(stack);
    const rssBefore = stack.server.rssKiB();
    // 60 × 256 KiB = 15 MiB: more than loopback's socket buffers, so the slow client's
    // connection stops taking bytes.
    await publishAndRead(stack, reader, "big", 60, BIG);
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "slow_consumer" })) === 1, { timeoutMs: 10000, what: "the slow consumer to be cut" });
    assert.equal(await stack.metric("frappe_realtime_slow_consumers_disconnected_total"), 1);
    assert.match(stack.server.output, /cutting a slow consumer.*took no bytes for realtime_slow_client_timeout/);
    assert.match(stack.server.output, /client disconnected.*reason="?slow_consumer/);
    assert.ok(reader.connected, "the reading client stays connected");
    const grewMiB = (stack.server.rssKiB() - rssBefore) / 1024;
    assert.ok(grewMiB < 100, `server memory grew by ${grewMiB.toFixed(1)} MiB`);
    slow.terminate();
  });

  test("a client that upgraded from polling is cut the same way", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const slow = await stalledClient(stack, { upgrade: true });
    await publishAndRead(stack, reader, "big2", 60, BIG);
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "slow_consumer" })) === 2, { timeoutMs: 10000, what: "the upgraded slow consumer to be cut" });
    slow.terminate();
  });

  // The socket is admitted when it is already on websocket, but the request it keeps is the
  // polling one: its websocket connection is the one to watch, not the polling connection.
  test("a client that upgraded before joining the namespace is cut the same way", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const slow = await stalledClient(stack, { upgrade: true, joinAfterUpgrade: true });
    await publishAndRead(stack, reader, "big3", 60, BIG);
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "slow_consumer" })) === 3, { timeoutMs: 10000, what: "the slow consumer to be cut" });
    slow.terminate();
  });
});

describe("a polling client that stops polling, with realtime_slow_client_timeout 2 s", () => {
  let stack;
  before(async () => {
    stack = await startStack({ common: { realtime_slow_client_timeout: 2, realtime_slow_client_max_bytes: 1e9 } });
  });
  after(async () => { await stack?.stop(); });

  test("is cut once events have waited unpolled for the timeout, with reason slow_consumer", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const headers = { origin: stack.frappe.url, cookie: `sid=${BOB_SID}`, "x-frappe-site-name": SITE };
    const base = `http://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=polling`;
    const open = await (await fetch(base, { headers })).text();
    const sid = JSON.parse(open.slice(1)).sid;
    await fetch(`${base}&sid=${sid}`, { method: "POST", headers, body: `40/${SITE},` });
    let polled = "";
    for (let poll = 0; poll < 5 && !polled.includes(`40/${SITE},`); poll += 1) {
      polled += await (await fetch(`${base}&sid=${sid}`, { headers })).text();
    }
    assert.ok(polled.includes(`40/${SITE},`), `namespace joined over polling: ${polled}`);
    // From here on the client sends no GET; what is published to `all` waits for it.
    await publishAndRead(stack, reader, "unpolled", 3, "z");
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "slow_consumer" })) === 1, { timeoutMs: 10000, what: "the polling client to be cut" });
    assert.equal(await stack.metric("frappe_realtime_slow_consumers_disconnected_total"), 1);
    assert.match(stack.server.output,
      /cutting a slow consumer.*transport="?polling"?.*took no bytes for realtime_slow_client_timeout/);
    assert.ok(reader.connected, "the reading client stays connected");
  });
});

describe("a client that stops reading while its queue overflows", () => {
  let stack;
  // A long timeout and a byte bound out of reach, so only the overflow can explain a cut.
  before(async () => {
    stack = await startStack({ common: { realtime_slow_client_timeout: 60, realtime_slow_client_max_bytes: 1e9 } });
  });
  after(async () => { await stack?.stop(); });

  test("is cut soon after its 1024-packet queue overflows; the drops are counted", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const slow = await stalledClient(stack);
    await publishAndRead(stack, reader, "big", 60, BIG);
    await publishAndRead(stack, reader, "small", 1200, "y");
    await waitFor(async () => (await stack.metric("frappe_realtime_socket_send_dropped_total", { site: SITE })) > 0,
      { what: "sends to the full queue to be dropped and counted" });
    await waitFor(async () => (await stack.metric("frappe_realtime_disconnects_total",
      { site: SITE, reason: "slow_consumer" })) === 1, { timeoutMs: 10000, what: "the overflowing consumer to be cut" });
    assert.match(stack.server.output, /cutting a slow consumer.*its send queue overflowed/);
    assert.ok(reader.connected);
    slow.terminate();
  });
});

describe("a client that stops reading while bytes pile up for it", () => {
  let stack;
  // A long timeout and too few packets to overflow the queue: only the byte bound can cut it.
  before(async () => {
    stack = await startStack({
      common: { realtime_slow_client_timeout: 60, realtime_slow_client_max_bytes: 2 * 1024 * 1024 },
    });
  });
  after(async () => { await stack?.stop(); });

  test("is cut once more than realtime_slow_client_max_bytes were queued for it", async () => {
    const reader = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const slow = await stalledClient(stack);
    const cutCount = () => stack.metric("frappe_realtime_disconnects_total", { site: SITE, reason: "slow_consumer" });
    let published = 0;
    // Keep publishing 256 KiB events (at most 300, well under the 1024-packet queue) until
    // the slow client is cut: first the kernel buffers fill, then 2 MiB queue up.
    await waitFor(async () => {
      for (let i = 0; i < 10 && published < 300; i += 1, published += 1) {
        await stack.publish("big", { seq: published, payload: BIG }, { room: "all" });
      }
      return (await cutCount()) === 1;
    }, { timeoutMs: 30000, everyMs: 50, what: "the byte bound to cut the slow consumer" });
    assert.match(stack.server.output, /more bytes queued than realtime_slow_client_max_bytes/);
    await waitFor(() => reader.received.filter((r) => r.event === "big").length === published,
      { timeoutMs: 20000, what: "the reading client to get every event" });
    assert.equal(await stack.metric("frappe_realtime_socket_send_dropped_total", { site: SITE }), 0);
    slow.terminate();
  });
});
