// The Redis bridge, Frappe → clients (protocol §6): routing by site and room, broadcasts without a
// room, unknown sites, ordering, payload fidelity, malformed publications, and Redis going
// away (protocol §10 #1: the service keeps serving and re-subscribes).
//
// Every wait is bounded. Absence is asserted deterministically: the bridge delivers Redis
// messages in order, so "publish, then a sentinel to the socket's own user room, wait for the
// sentinel" (harness `flush`) proves the earlier publication was not delivered to that socket.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, nextEvent, waitFor, Redis, SITES, ALICE, ALICE_SID, BOB, BOB_SID, CAROL, CAROL_SID,
  userRoom, unique, trackDisconnects, asFrappeJson,
} from "../../support/harness.mjs";

const [SITE1, SITE2] = SITES;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Connect `user` (by sid) to `site`, optionally over a fixed transport list. */
function connectAs(stack, user, { site = SITE1, transports } = {}) {
  const sid = { [ALICE]: ALICE_SID, [BOB]: BOB_SID, [CAROL]: CAROL_SID }[user];
  return stack.connect({ site, sid, transports });
}

/** Received events named `event` whose first argument carries `marker`. */
function withMarker(socket, event, marker) {
  return socket.received.filter((r) => r.event === event && r.args[0]?.marker === marker);
}

/** Wait until `socket` got `event` carrying `marker`; returns its arguments. */
async function receivedMarker(socket, event, marker, timeoutMs = 5000) {
  const [hit] = await waitFor(() => {
    const hits = withMarker(socket, event, marker);
    return hits.length ? hits : null;
  }, { timeoutMs, what: `${event} ${marker}` });
  return hit.args;
}

/** Assert, after a sentinel round trip, that `socket` never got anything carrying `marker`. */
async function assertNothingWith(stack, socket, marker, { site, user }) {
  await stack.flush(socket, { site, userRoom: userRoom(user) });
  assert.ok(!JSON.stringify(socket.received).includes(marker),
    `${user}'s socket on ${site} received something carrying ${marker}`);
}

/** Strip the terminal colour codes a log formatter may add. */
function plain(text) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, "");
}

/** A raw Engine.IO open on the server's port: it is listening and answering. */
async function openPacket(port) {
  const res = await fetch(`http://127.0.0.1:${port}/socket.io/?EIO=4&transport=polling`,
    { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  const body = await res.text();
  assert.match(body, /^0\{/);
  return JSON.parse(body.slice(1));
}

// ---------------------------------------------------------------------------------------------
// §6.2: routing by site namespace and room
// ---------------------------------------------------------------------------------------------

describe("§6.2 routing: a publication reaches its room on its site only", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });
  afterEach(() => { for (const s of stack.sockets) if (s.connected) s.disconnect(); });

  test("an event to a room of site1 reaches that room's sockets on site1, not the same user on site2", async () => {
    const alice1a = await connectAs(stack, ALICE, { site: SITE1 });
    const alice1b = await connectAs(stack, ALICE, { site: SITE1, transports: ["polling"] });
    const alice2 = await connectAs(stack, ALICE, { site: SITE2 });
    const bob1 = await connectAs(stack, BOB, { site: SITE1 });

    const marker = unique("routed");
    await stack.publish("msgprint", { marker, text: "hello" }, { site: SITE1, room: userRoom(ALICE) });

    for (const socket of [alice1a, alice1b]) {
      assert.deepEqual(await receivedMarker(socket, "msgprint", marker), [{ marker, text: "hello" }],
        "the message is passed through unchanged as the single argument");
    }
    await assertNothingWith(stack, alice2, marker, { site: SITE2, user: ALICE });
    await assertNothingWith(stack, bob1, marker, { site: SITE1, user: BOB });
  });

  test("the same room name on site2 is a different room", async () => {
    const alice1 = await connectAs(stack, ALICE, { site: SITE1 });
    const alice2 = await connectAs(stack, ALICE, { site: SITE2 });
    const marker = unique("site2");
    await stack.publish("list_update", { marker }, { site: SITE2, room: "all" });
    assert.deepEqual(await receivedMarker(alice2, "list_update", marker), [{ marker }]);
    await assertNothingWith(stack, alice1, marker, { site: SITE1, user: ALICE });
  });

  test("an event without `message` arrives with null", async () => {
    const alice = await connectAs(stack, ALICE);
    const got = nextEvent(alice, "bare");
    await stack.redis.publish({ event: "bare", namespace: SITE1, room: userRoom(ALICE) });
    assert.deepEqual(await got, [null]);
  });

  // §6.2: a missing or falsy `room` goes to every site's namespace (JavaScript truthiness).
  const FALSY_ROOMS = [["no room", undefined], ["an empty room", ""], ["a null room", null],
    ["room false", false], ["room 0", 0]];
  for (const [label, room] of FALSY_ROOMS) {
    test(`${label}: every site's sockets get it (build_event)`, async () => {
      const sockets = [
        await connectAs(stack, ALICE, { site: SITE1 }),
        await connectAs(stack, CAROL, { site: SITE1 }), // Website User: not in `all`
        await connectAs(stack, BOB, { site: SITE2, transports: ["polling"] }),
        await connectAs(stack, CAROL, { site: SITE2, transports: ["websocket"] }),
      ];
      const message = { success: true, changed_files: ["/assets/frappe/dist/js/desk.bundle.ABC.js"],
        live_reload: false, marker: unique("build") };
      const body = { event: "build_event", message };
      if (room !== undefined) body.room = room;
      await stack.redis.publish(body);
      for (const socket of sockets) {
        assert.deepEqual(await receivedMarker(socket, "build_event", message.marker), [message]);
      }
    });
  }

  test("a publication for a site this bench does not serve is dropped, nothing breaks", async () => {
    const alice1 = await connectAs(stack, ALICE, { site: SITE1 });
    const alice2 = await connectAs(stack, ALICE, { site: SITE2 });
    const disconnects = [trackDisconnects(alice1), trackDisconnects(alice2)];
    const marker = unique("ghost");
    for (const room of ["all", userRoom(ALICE), "website"]) {
      await stack.publish("ghost", { marker }, { site: "nosuch.local", room });
    }
    await assertNothingWith(stack, alice1, marker, { site: SITE1, user: ALICE });
    await assertNothingWith(stack, alice2, marker, { site: SITE2, user: ALICE });

    // The bridge and the server go on working.
    const after = unique("after-ghost");
    await stack.publish("list_update", { marker: after }, { site: SITE1, room: "all" });
    await receivedMarker(alice1, "list_update", after);
    assert.equal(stack.server.proc.exitCode, null, "the server is still running");
    assert.deepEqual(disconnects, [[], []]);
    assert.ok(alice1.connected && alice2.connected);
  });
});

// ---------------------------------------------------------------------------------------------
// §6 delivery order and payload fidelity (§6.1: Python's ASCII-escaped JSON)
// ---------------------------------------------------------------------------------------------

describe("§6 order and payload fidelity", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });
  afterEach(() => { for (const s of stack.sockets) if (s.connected) s.disconnect(); });

  for (const transports of [["websocket"], ["polling"], undefined]) {
    const label = transports ? transports.join("+") : "default (polling → websocket)";
    test(`500 events published back to back arrive all, in order (${label})`, async () => {
      const socket = await connectAs(stack, ALICE, { transports });
      const run = unique("seq");
      const COUNT = 500;
      // One connection pipelines the publishes in this order.
      await Promise.all(Array.from({ length: COUNT }, (_, n) =>
        stack.publish("seq", { run, n }, { room: userRoom(ALICE) })));
      const got = () => socket.received.filter((r) => r.event === "seq" && r.args[0]?.run === run)
        .map((r) => r.args[0].n);
      await waitFor(() => got().length >= COUNT, { timeoutMs: 15000, what: `${COUNT} events` });
      assert.deepEqual(got(), Array.from({ length: COUNT }, (_, n) => n));
    });
  }

  const TEXT = "emoji 😀🎉👩‍💻, CJK 漢字かなカナ한국어, RTL עברית العربية, accents café Ñandú ß, "
    + "controls \t\n\"quoted\" \\ back\\slash, zero-width \u200b, U+FFFF \uffff";

  for (const transports of [["websocket"], ["polling"]]) {
    const label = transports.join("+");

    test(`Unicode arrives intact, also from Python's ASCII-escaped JSON (${label})`, async () => {
      const socket = await connectAs(stack, ALICE, { transports });
      const marker = unique("unicode");
      const message = { marker, text: TEXT, nested: { "clé 键 🔑": ["ünï", "😀"] } };

      // As node-redis would publish it: raw UTF-8.
      await stack.publish("utf8", message, { room: userRoom(ALICE) });
      // As frappe.as_json publishes it: \u00e9, surrogate pairs for emoji, indent 1, sorted keys.
      const escaped = asFrappeJson({ event: "escaped", message, namespace: SITE1, room: userRoom(ALICE) });
      assert.ok(escaped.includes("caf\\u00e9") && escaped.includes("\\ud83d\\ude00"), escaped.slice(0, 200));
      assert.ok(/^[\x00-\x7f]*$/.test(escaped), "the Python form is pure ASCII");
      await stack.redis.publish(escaped);

      assert.deepEqual(await receivedMarker(socket, "utf8", marker), [message]);
      assert.deepEqual(await receivedMarker(socket, "escaped", marker), [message]);
    });

    test(`a ~500 KB message arrives intact (${label})`, async () => {
      const socket = await connectAs(stack, ALICE, { transports });
      const marker = unique("big");
      const chunk = "lorem ipsum 0123456789 é漢😀 ";
      const text = chunk.repeat(Math.ceil(500_000 / Buffer.byteLength(chunk)));
      const message = { marker, text, rows: Array.from({ length: 200 }, (_, i) => ({ i, name: `row-${i}` })) };
      const size = Buffer.byteLength(JSON.stringify(message));
      assert.ok(size > 490_000 && size < 600_000, `payload is ~500 KB (${size})`);
      await stack.publish("big", message, { room: userRoom(ALICE) });
      const [got] = await receivedMarker(socket, "big", marker, 10000);
      assert.equal(got.text.length, text.length);
      assert.ok(got.text === text, "the big text is identical");
      assert.deepEqual(got, message);
      assert.ok(socket.connected);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// §6.2 malformed publications: dropped, warned about without the payload, nothing breaks
// ---------------------------------------------------------------------------------------------

describe("§6.2 malformed publications are dropped with a warning that omits the payload", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("each malformed message is dropped, warned about, and later events still arrive", async () => {
    const alice1 = await connectAs(stack, ALICE, { site: SITE1 });
    const alice2 = await connectAs(stack, ALICE, { site: SITE2, transports: ["polling"] });
    const disconnects = [trackDisconnects(alice1), trackDisconnects(alice2)];
    const MARK = unique("SECRETPAYLOAD");
    const routed = { namespace: SITE1, room: "all" };

    const malformed = {
      "not JSON": `{"event": "leak", "message": "${MARK}", "namespace": "${SITE1}", "room": "all"`,
      "plain text": `${MARK} is not json`,
      "null": "null",
      "a number": "42",
      "a JSON string": JSON.stringify(MARK),
      "an array": JSON.stringify(["leak", MARK]),
      "no event": JSON.stringify({ message: MARK, ...routed }),
      "a numeric event": JSON.stringify({ event: 7, message: MARK, ...routed }),
      "an object event": JSON.stringify({ event: { name: MARK }, message: MARK, ...routed }),
      "event connect": JSON.stringify({ event: "connect", message: MARK, ...routed }),
      "event disconnect": JSON.stringify({ event: "disconnect", message: MARK, ...routed }),
      "event connect_error": JSON.stringify({ event: "connect_error", message: { message: MARK }, ...routed }),
      "a room without namespace": JSON.stringify({ event: "leak", message: MARK, room: "all" }),
      "a room with an empty namespace": JSON.stringify({ event: "leak", message: MARK, room: "all", namespace: "" }),
    };

    const logFrom = stack.server.output.length;
    for (const body of Object.values(malformed)) await stack.redis.publish(body);

    // A valid event published after them arrives, on both sites.
    const after = unique("valid");
    await stack.redis.publish({ event: "list_update", message: { marker: after } });
    await receivedMarker(alice1, "list_update", after);
    await receivedMarker(alice2, "list_update", after);
    await assertNothingWith(stack, alice1, MARK, { site: SITE1, user: ALICE });
    await assertNothingWith(stack, alice2, MARK, { site: SITE2, user: ALICE });
    for (const socket of [alice1, alice2]) {
      const names = socket.received.map((r) => r.event);
      for (const reserved of ["leak", "connect", "disconnect", "connect_error", 7]) {
        assert.ok(!names.includes(reserved), `the client got an event named ${reserved}`);
      }
    }
    assert.deepEqual(disconnects, [[], []], "no client was disconnected");
    assert.ok(alice1.connected && alice2.connected);
    assert.equal(stack.server.proc.exitCode, null, "the server is still running");

    // One warning line per dropped message; the payload never reaches the log.
    const warnings = () => plain(stack.server.output.slice(logFrom)).split("\n")
      .filter((line) => /\bWARN\b/.test(line));
    const expected = Object.keys(malformed).length;
    await waitFor(() => warnings().length >= expected, { timeoutMs: 3000, what: `${expected} warning lines` })
      .catch(() => assert.fail(`expected a warning per malformed message (${expected}), got:\n${warnings().join("\n")}`));
    assert.ok(!stack.server.output.includes(MARK), "the log does not contain the payload");
  });
});

// ---------------------------------------------------------------------------------------------
// §6 / §10 #1: Redis going away and coming back
// ---------------------------------------------------------------------------------------------

describe("§6 / §10 #1 Redis restart: the server re-subscribes, connected clients keep receiving", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("after a Redis restart on the same port an event reaches a socket that stayed connected", async () => {
    const ws = await connectAs(stack, ALICE, { transports: ["websocket"] });
    const polling = await connectAs(stack, ALICE, { transports: ["polling"] });
    const disconnects = [trackDisconnects(ws), trackDisconnects(polling)];
    const before = unique("before");
    await stack.publish("msgprint", { marker: before }, { room: userRoom(ALICE) });
    await receivedMarker(ws, "msgprint", before);

    for (let round = 1; round <= 2; round += 1) {
      await stack.redis.restart();
      await stack.waitSubscribed();
      const marker = unique(`after-restart-${round}`);
      await stack.publish("msgprint", { marker }, { room: userRoom(ALICE) });
      await receivedMarker(ws, "msgprint", marker);
      await receivedMarker(polling, "msgprint", marker);
    }
    assert.deepEqual(disconnects, [[], []], "the sockets never disconnected");
    assert.ok(ws.connected && polling.connected);
    assert.equal(stack.server.proc.exitCode, null);
  });
});

describe("§10 #1 the server starts while Redis is down and subscribes once it is up", () => {
  for (const version of [15, 16]) {
    test(`Frappe ${version}: listening without Redis, delivering once Redis is up`, async () => {
      const stack = await startStack({ version, startRedis: false });
      try {
        // Listening and answering while Redis is unreachable.
        const open = await openPacket(stack.port);
        assert.ok(open.sid);
        assert.equal(stack.server.proc.exitCode, null, "the server did not exit without Redis");

        // Redis comes up on the configured port.
        stack.redis = await Redis.start({ port: stack.redis.port });
        await stack.waitSubscribed();
        const socket = await connectAs(stack, ALICE);
        const disconnects = trackDisconnects(socket);
        const marker = unique("late-redis");
        await stack.publish("msgprint", { marker }, { room: userRoom(ALICE) });
        assert.deepEqual(await receivedMarker(socket, "msgprint", marker), [{ marker }]);
        assert.deepEqual(disconnects, []);
      } finally {
        await stack.stop();
      }
    });
  }

  test("Frappe 15: a client connected while Redis is down receives once Redis is up", async () => {
    const stack = await startStack({ version: 15, startRedis: false });
    try {
      // v15's get_user_info needs no Redis: the client connects with Redis still down.
      const socket = await connectAs(stack, ALICE, { transports: ["websocket"] });
      const disconnects = trackDisconnects(socket);
      stack.redis = await Redis.start({ port: stack.redis.port });
      await stack.waitSubscribed();
      const marker = unique("late-redis-v15");
      await stack.publish("msgprint", { marker }, { room: userRoom(ALICE) });
      assert.deepEqual(await receivedMarker(socket, "msgprint", marker), [{ marker }]);
      assert.deepEqual(disconnects, []);
      assert.ok(socket.connected);
    } finally {
      await stack.stop();
    }
  });
});
