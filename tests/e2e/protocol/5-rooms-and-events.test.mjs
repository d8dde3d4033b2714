// Client→server events and the rooms they lead to, for Frappe 15 and 16 (protocol §5, §8).
//
// Every wait is bounded. Absence is asserted deterministically where the server's own ordering
// allows it: the bridge delivers Redis messages to a socket in order, so "publish the forbidden
// event, then a sentinel to the socket's user room, and wait for the sentinel" proves the
// forbidden event was not delivered (harness `flush`). Event handlers run concurrently on the
// server, so a denial is only checked after the fake Frappe has seen the permission call and a
// later, allowed subscription on the same socket has completed.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, nextEvent, waitFor, SITES, ALICE, ALICE_SID, BOB, BOB_SID, CAROL, CAROL_SID, DAVE,
  DAVE_TOKEN, GUEST, userRoom, unique,
} from "../../support/harness.mjs";

const SITE = SITES[0];

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------


/** The permission endpoint and query each Frappe version uses (protocol §5.2). */
const PERMISSION = {
  15: {
    doctype: { endpoint: "frappe.realtime.can_subscribe_doctype", query: (dt) => ({ doctype: dt }) },
    doc: { endpoint: "frappe.realtime.can_subscribe_doc", query: (dt, dn) => ({ doctype: dt, docname: dn }) },
  },
  16: {
    doctype: { endpoint: "frappe.realtime.has_permission", query: (dt) => ({ doctype: dt, name: "" }) },
    doc: { endpoint: "frappe.realtime.has_permission", query: (dt, dn) => ({ doctype: dt, name: dn }) },
  },
};

/** Permission calls the fake Frappe received for this doctype (and docname). */
function permissionCalls(stack, version, kind, doctype, docname) {
  const { endpoint, query } = PERMISSION[version][kind];
  const expected = query(doctype, docname);
  return stack.frappe.callsTo(`/api/method/${endpoint}`)
    .filter((c) => Object.entries(expected).every(([k, v]) => c.query[k] === v));
}

/** Every call the fake Frappe received that is not the handshake's get_user_info. */
function allPermissionCalls(stack) {
  return stack.frappe.calls.filter((c) => !c.path.endsWith("frappe.realtime.get_user_info"));
}

/** The call carries the socket's own credential as the version sends it (protocol §4.2, §5.2). */
async function assertCarriesCredential(stack, version, call, { sid, authorization }) {
  if (authorization) {
    assert.equal(call.headers.authorization, authorization);
  } else if (version === 15) {
    assert.equal(call.query.sid, sid, "v15 sends the sid as a query parameter");
  } else {
    const cookies = (call.headers.cookie ?? "").split(";").map((s) => s.trim());
    assert.ok(cookies.includes(`sid=${sid}`), `v16 sends Cookie: sid=${sid} (got ${call.headers.cookie})`);
  }
  if (version === 16) {
    const secret = await stack.redis.client.get("socketio_auth_secret");
    assert.ok(secret, "the fake Frappe created the socket secret");
    assert.equal(call.headers["x-frappe-socket-secret"], secret);
  }
}

/** Assert `socket` (of `user`) does not get an event published to `room`. */
async function assertNotInRoom(stack, socket, user, room) {
  const marker = unique("forbidden");
  await stack.publish("forbidden", { marker }, { room });
  await stack.flush(socket, { userRoom: userRoom(user) });
  assert.ok(!socket.received.some((r) => r.event === "forbidden" && r.args[0]?.marker === marker),
    `${user}'s socket received an event published to ${room}`);
}

/** Wait until events published to `room` no longer reach `socket` (leaving needs no HTTP call). */
async function waitUntilLeft(stack, socket, user, room) {
  await waitFor(async () => {
    const marker = unique("left");
    await stack.publish("left-probe", { marker }, { room });
    await stack.flush(socket, { userRoom: userRoom(user) });
    return !socket.received.some((r) => r.event === "left-probe" && r.args[0]?.marker === marker);
  }, { what: `the socket to leave ${room}` });
}

/** One ping/pong round trip: the socket is connected and its event loop answers. */
async function assertAlive(socket) {
  assert.ok(socket.connected, "the socket is still connected");
  const pong = nextEvent(socket, "pong");
  socket.emit("ping");
  assert.deepEqual(await pong, []);
}

/**
 * Let `user` subscribe to a fresh doctype on `socket` and wait until the join is visible. Used
 * after a denied (or never-made) call: this later, allowed one has completed round-trip.
 */
async function settle(stack, socket, user) {
  const doctype = unique("Settle");
  stack.frappe.allow(SITE, user, doctype);
  socket.emit("doctype_subscribe", doctype);
  await stack.publishUntilReceived(socket, `doctype:${doctype}`);
  return doctype;
}

/**
 * Emit a subscription the fake Frappe denies and assert no join: wait until the fake saw the
 * call, let an allowed subscription on the same socket complete, then publish to the room.
 */
async function assertDenied(stack, version, socket, user, { event, args, kind, room }) {
  const before = permissionCalls(stack, version, kind, ...args).length;
  socket.emit(event, ...args);
  await waitFor(() => permissionCalls(stack, version, kind, ...args).length > before,
    { what: `the ${event} permission call` });
  await settle(stack, socket, user);
  await assertNotInRoom(stack, socket, user, room);
}

/** doc_viewers payloads `socket` got for one document, optionally only after index `since`. */
function viewersFor(socket, doctype, docname, since = 0) {
  return socket.received.slice(since)
    .filter((r) => r.event === "doc_viewers")
    .map((r) => r.args[0])
    .filter((p) => p?.doctype === doctype && p?.docname === docname);
}

/** Wait for a doc_viewers for the document naming exactly `users` (order-insensitive). */
async function waitViewers(socket, doctype, docname, users, since = 0) {
  const want = [...users].sort();
  const payload = await waitFor(() => viewersFor(socket, doctype, docname, since)
    .find((p) => Array.isArray(p.users) && JSON.stringify([...p.users].sort()) === JSON.stringify(want)),
  { what: `doc_viewers for ${doctype}/${docname} with ${want.join(", ")}` });
  assert.deepEqual({ ...payload, users: [...payload.users].sort() }, { doctype, docname, users: want },
    "doc_viewers is {doctype, docname, users} with each user once");
  return payload;
}

/** Open a document the user may read and wait until the socket is in its open_doc room. */
async function openDoc(stack, socket, doctype, docname) {
  socket.emit("doc_open", doctype, docname);
  await stack.publishUntilReceived(socket, `open_doc:${doctype}/${docname}`);
}

/** Subscribe to a Redis channel with a client of our own; messages are collected. */
async function watchChannel(stack, channel) {
  const sub = stack.redis.client.duplicate();
  sub.on("error", () => {});
  await sub.connect();
  const messages = [];
  await sub.subscribe(channel, (message) => messages.push(message));
  return {
    messages,
    /** Publish a marker on the channel ourselves and wait for it: earlier publishes have arrived. */
    async flush() {
      const marker = JSON.stringify({ sentinel: unique("channel") });
      await stack.redis.client.publish(channel, marker);
      await waitFor(() => messages.includes(marker), { what: `the ${channel} sentinel` });
      return messages.filter((m) => !m.includes('"sentinel"'));
    },
    close: () => sub.disconnect().catch(() => {}),
  };
}

/** Arguments that are missing, falsy or not strings: no permission call, no join (protocol §5.2). */
const ODD_FIRST_ARGS = [
  [], [""], [null], [0], [42], [false], [true], [{ doctype: "ToDo" }], [["ToDo", "x"]],
  ["", "ToDo-1"], [null, "ToDo-1"], [42, "ToDo-1"], [{}, "ToDo-1"],
];
/** A valid doctype with a missing or odd docname: doc events make no call either. */
const ODD_DOCNAME_ARGS = [["ToDo"], ["ToDo", ""], ["ToDo", null], ["ToDo", 7], ["ToDo", { a: 1 }], ["ToDo", ["x"]]];

const ALL_EVENTS = [
  "ping", "doctype_subscribe", "doctype_unsubscribe", "doc_subscribe", "doc_unsubscribe",
  "task_subscribe", "progress_subscribe", "task_unsubscribe", "doc_open", "doc_close", "open_in_editor",
];

// ---------------------------------------------------------------------------------------------
// The suites, once per Frappe version
// ---------------------------------------------------------------------------------------------

for (const version of [15, 16]) {
  describe(`Frappe ${version}: client events`, () => {
    let stack;
    before(async () => { stack = await startStack({ version }); });
    after(async () => { await stack?.stop(); });
    // Each test starts with no client of an earlier test still connected.
    afterEach(() => { for (const s of stack.sockets) if (s.connected) s.disconnect(); });

    const alice = () => stack.connect({ sid: ALICE_SID });
    const bob = () => stack.connect({ sid: BOB_SID });
    const carol = () => stack.connect({ sid: CAROL_SID });
    const dave = () => stack.connect({ authorization: DAVE_TOKEN });
    const guest = () => stack.connect({ sid: "Guest" });

    // Protocol §5.1: rooms joined on connect.
    describe("rooms on connect (§5.1)", () => {
      test("a System User joins user:<user>, website and all", async () => {
        const socket = await alice();
        for (const room of [userRoom(ALICE), "website", "all"]) {
          await stack.publishUntilReceived(socket, room, { event: unique("room") });
        }
      });

      test("a Website User joins user:<user> and website but not all", async () => {
        const socket = await carol();
        await stack.publishUntilReceived(socket, userRoom(CAROL));
        await stack.publishUntilReceived(socket, "website");
        await assertNotInRoom(stack, socket, CAROL, "all");
      });

      test("a Guest joins user:Guest and website but not all", async () => {
        const socket = await guest();
        await stack.publishUntilReceived(socket, userRoom(GUEST));
        await stack.publishUntilReceived(socket, "website");
        await assertNotInRoom(stack, socket, GUEST, "all");
      });

      test("an API-token System User joins user:<user>, website and all", async () => {
        const socket = await dave();
        for (const room of [userRoom(DAVE), "website", "all"]) {
          await stack.publishUntilReceived(socket, room);
        }
      });

      test("a socket is not in another user's room", async () => {
        const a = await alice();
        await bob();
        await assertNotInRoom(stack, a, ALICE, userRoom(BOB));
      });
    });

    // Protocol §5.2: doctype_subscribe / doctype_unsubscribe and their permission call.
    describe("doctype_subscribe / doctype_unsubscribe (§5.2)", () => {
      test("an allowed doctype_subscribe joins doctype:<dt> after the version's permission call", async () => {
        const socket = await alice();
        const other = await bob();
        const doctype = unique("Sales Invoice");
        stack.frappe.allow(SITE, ALICE, doctype);
        socket.emit("doctype_subscribe", doctype);
        await stack.publishUntilReceived(socket, `doctype:${doctype}`);

        const calls = permissionCalls(stack, version, "doctype", doctype);
        assert.equal(calls.length, 1, "exactly one permission call");
        const [call] = calls;
        assert.equal(call.path, `/api/method/${PERMISSION[version].doctype.endpoint}`);
        if (version === 16) assert.equal(call.query.name, "", "v16 checks the doctype with name=\"\"");
        else assert.ok(!("docname" in call.query), "v15 can_subscribe_doctype has no docname");
        await assertCarriesCredential(stack, version, call, { sid: ALICE_SID });
        // The join is the subscribing socket's only.
        await assertNotInRoom(stack, other, BOB, `doctype:${doctype}`);
      });

      test("a denied doctype_subscribe does not join", async () => {
        const socket = await bob();
        const doctype = unique("Salary Slip");
        stack.frappe.allow(SITE, ALICE, doctype); // someone else may; bob may not
        await assertDenied(stack, version, socket, BOB,
          { event: "doctype_subscribe", args: [doctype], kind: "doctype", room: `doctype:${doctype}` });
        const [call] = permissionCalls(stack, version, "doctype", doctype);
        await assertCarriesCredential(stack, version, call, { sid: BOB_SID });
      });

      test("with an Authorization-header client the permission call carries that header", async () => {
        const socket = await dave();
        const doctype = unique("Project");
        stack.frappe.allow(SITE, DAVE, doctype);
        socket.emit("doctype_subscribe", doctype);
        await stack.publishUntilReceived(socket, `doctype:${doctype}`);
        const [call] = permissionCalls(stack, version, "doctype", doctype);
        await assertCarriesCredential(stack, version, call, { authorization: DAVE_TOKEN });
      });

      test("doctype_unsubscribe leaves doctype:<dt> and makes no call", async () => {
        const socket = await alice();
        const doctype = unique("ToDo");
        stack.frappe.allow(SITE, ALICE, doctype);
        socket.emit("doctype_subscribe", doctype);
        await stack.publishUntilReceived(socket, `doctype:${doctype}`);
        const calls = allPermissionCalls(stack).length;
        socket.emit("doctype_unsubscribe", doctype);
        await waitUntilLeft(stack, socket, ALICE, `doctype:${doctype}`);
        await assertNotInRoom(stack, socket, ALICE, `doctype:${doctype}`);
        assert.equal(allPermissionCalls(stack).length, calls, "unsubscribing calls nobody");
      });
    });

    // Protocol §5.2 / §5.4: doc_subscribe / doc_unsubscribe → doc:<dt>/<dn>.
    describe("doc_subscribe / doc_unsubscribe (§5.2, §5.4)", () => {
      test("an allowed doc_subscribe joins doc:<dt>/<dn> (spaces and slashes unescaped)", async () => {
        const socket = await alice();
        const doctype = unique("Sales Invoice");
        const docname = "SINV/2024 0001";
        stack.frappe.allow(SITE, ALICE, doctype, docname);
        socket.emit("doc_subscribe", doctype, docname);
        await stack.publishUntilReceived(socket, `doc:${doctype}/${docname}`);

        const calls = permissionCalls(stack, version, "doc", doctype, docname);
        assert.equal(calls.length, 1, "exactly one permission call");
        assert.equal(calls[0].path, `/api/method/${PERMISSION[version].doc.endpoint}`);
        await assertCarriesCredential(stack, version, calls[0], { sid: ALICE_SID });
      });

      test("a denied doc_subscribe does not join", async () => {
        const socket = await bob();
        const doctype = unique("Journal Entry");
        const docname = "JV-0001";
        stack.frappe.allow(SITE, BOB, doctype); // doctype-level permission is not document permission
        await assertDenied(stack, version, socket, BOB,
          { event: "doc_subscribe", args: [doctype, docname], kind: "doc", room: `doc:${doctype}/${docname}` });
        const [call] = permissionCalls(stack, version, "doc", doctype, docname);
        await assertCarriesCredential(stack, version, call, { sid: BOB_SID });
      });

      test("an Authorization-header client's doc_subscribe call carries that header", async () => {
        const socket = await dave();
        const doctype = unique("Task");
        stack.frappe.allow(SITE, DAVE, doctype, "TASK-1");
        socket.emit("doc_subscribe", doctype, "TASK-1");
        await stack.publishUntilReceived(socket, `doc:${doctype}/TASK-1`);
        const [call] = permissionCalls(stack, version, "doc", doctype, "TASK-1");
        await assertCarriesCredential(stack, version, call, { authorization: DAVE_TOKEN });
      });

      test("doc_unsubscribe leaves that document's room only", async () => {
        const socket = await alice();
        const doctype = unique("ToDo");
        for (const dn of ["A", "B"]) {
          stack.frappe.allow(SITE, ALICE, doctype, dn);
          socket.emit("doc_subscribe", doctype, dn);
          await stack.publishUntilReceived(socket, `doc:${doctype}/${dn}`);
        }
        socket.emit("doc_unsubscribe", doctype, "A");
        await waitUntilLeft(stack, socket, ALICE, `doc:${doctype}/A`);
        await assertNotInRoom(stack, socket, ALICE, `doc:${doctype}/A`);
        await stack.publishUntilReceived(socket, `doc:${doctype}/B`);
      });
    });

    // Protocol §5.2: task_subscribe / progress_subscribe / task_unsubscribe (no permission call).
    describe("task_subscribe / progress_subscribe / task_unsubscribe (§5.2)", () => {
      for (const event of ["task_subscribe", "progress_subscribe"]) {
        test(`${event} joins task_progress:<id> without a permission call`, async () => {
          const socket = await carol(); // even a Website User: tasks are not permission-checked
          const calls = allPermissionCalls(stack).length;
          const task = unique("task");
          socket.emit(event, task);
          await stack.publishUntilReceived(socket, `task_progress:${task}`);
          assert.equal(allPermissionCalls(stack).length, calls, "no call to Frappe");
        });
      }

      test("task_unsubscribe leaves task_progress:<id>", async () => {
        const socket = await alice();
        const task = unique("task");
        socket.emit("progress_subscribe", task);
        await stack.publishUntilReceived(socket, `task_progress:${task}`);
        socket.emit("task_unsubscribe", task);
        await waitUntilLeft(stack, socket, ALICE, `task_progress:${task}`);
        await assertNotInRoom(stack, socket, ALICE, `task_progress:${task}`);
      });
    });

    // Protocol §5.2 (doc_open/doc_close) and §5.3 (doc_viewers).
    describe("doc_open / doc_close / doc_viewers (§5.2, §5.3)", () => {
      /** A document alice and bob may both read. */
      function sharedDoc() {
        const doctype = unique("Sales Order");
        const docname = unique("SO");
        for (const user of [ALICE, BOB]) stack.frappe.allow(SITE, user, doctype, docname);
        return { doctype, docname };
      }

      test("doc_open makes the version's permission call and joins open_doc:<dt>/<dn>", async () => {
        const socket = await alice();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, socket, doctype, docname);
        const calls = permissionCalls(stack, version, "doc", doctype, docname);
        assert.equal(calls.length, 1);
        await assertCarriesCredential(stack, version, calls[0], { sid: ALICE_SID });
      });

      test("a lone viewer is not told about himself", async () => {
        const socket = await alice();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, socket, doctype, docname);
        await assertAlive(socket);
        await stack.flush(socket, { userRoom: userRoom(ALICE) });
        assert.deepEqual(viewersFor(socket, doctype, docname), [], "no doc_viewers for a lone viewer");
      });

      test("alice and bob viewing one document both get users [alice, bob]", async () => {
        const a = await alice();
        const b = await bob();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, a, doctype, docname);
        b.emit("doc_open", doctype, docname);
        await waitViewers(a, doctype, docname, [ALICE, BOB]);
        await waitViewers(b, doctype, docname, [ALICE, BOB]);
      });

      test("a user with two tabs is listed once", async () => {
        const tab1 = await alice();
        const tab2 = await alice();
        const b = await bob();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, tab1, doctype, docname);
        // Two sockets of one user: two entries, so not suppressed; users de-duplicated.
        tab2.emit("doc_open", doctype, docname);
        await waitViewers(tab1, doctype, docname, [ALICE]);
        await waitViewers(tab2, doctype, docname, [ALICE]);
        b.emit("doc_open", doctype, docname);
        for (const s of [tab1, tab2, b]) {
          const payload = await waitViewers(s, doctype, docname, [ALICE, BOB]);
          assert.equal(payload.users.length, 2, `alice listed once: ${JSON.stringify(payload.users)}`);
        }
      });

      test("doc_close leaves the room and tells the remaining viewers", async () => {
        const a = await alice();
        const b = await bob();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, a, doctype, docname);
        b.emit("doc_open", doctype, docname);
        await waitViewers(b, doctype, docname, [ALICE, BOB]);
        const since = b.received.length;
        a.emit("doc_close", doctype, docname);
        await waitViewers(b, doctype, docname, [BOB], since);
        await waitUntilLeft(stack, a, ALICE, `open_doc:${doctype}/${docname}`);
      });

      test("closing one document does not forget the others", async () => {
        const a = await alice();
        const b = await bob();
        const docA = sharedDoc();
        const docB = sharedDoc();
        await openDoc(stack, a, docA.doctype, docA.docname);
        await openDoc(stack, a, docB.doctype, docB.docname);
        b.emit("doc_open", docB.doctype, docB.docname);
        await waitViewers(b, docB.doctype, docB.docname, [ALICE, BOB]);

        a.emit("doc_close", docA.doctype, docA.docname);
        await waitUntilLeft(stack, a, ALICE, `open_doc:${docA.doctype}/${docA.docname}`);
        const since = b.received.length;
        a.disconnect();
        await waitViewers(b, docB.doctype, docB.docname, [BOB], since);
      });

      test("a disconnect updates every document the socket had open", async () => {
        const a = await alice();
        const b = await bob();
        const docs = [sharedDoc(), sharedDoc(), sharedDoc()];
        for (const d of docs) await openDoc(stack, a, d.doctype, d.docname);
        for (const d of docs) {
          b.emit("doc_open", d.doctype, d.docname);
          await waitViewers(b, d.doctype, d.docname, [ALICE, BOB]);
        }
        const since = b.received.length;
        a.disconnect();
        for (const d of docs) await waitViewers(b, d.doctype, d.docname, [BOB], since);
      });

      test("a disconnect with another tab of the same user still open keeps that user listed", async () => {
        const tab1 = await alice();
        const tab2 = await alice();
        const b = await bob();
        const { doctype, docname } = sharedDoc();
        await openDoc(stack, tab1, doctype, docname);
        await openDoc(stack, tab2, doctype, docname);
        b.emit("doc_open", doctype, docname);
        await waitViewers(b, doctype, docname, [ALICE, BOB]);
        const since = b.received.length;
        tab1.disconnect();
        await waitViewers(b, doctype, docname, [ALICE, BOB], since);
      });

      test("doc_open on a denied document does nothing", async () => {
        const a = await alice();
        const b = await bob();
        const doctype = unique("Payroll Entry");
        const docname = "PE-1";
        stack.frappe.allow(SITE, BOB, doctype, docname); // bob may read it, alice may not
        await openDoc(stack, b, doctype, docname);
        const bobSince = b.received.length;

        await assertDenied(stack, version, a, ALICE,
          { event: "doc_open", args: [doctype, docname], kind: "doc", room: `open_doc:${doctype}/${docname}` });
        await stack.flush(b, { userRoom: userRoom(BOB) });
        assert.deepEqual(viewersFor(b, doctype, docname, bobSince), [],
          "bob is not told about a viewer who was refused");
        // Nor is alice remembered as a viewer: her disconnect announces nothing to bob.
        a.disconnect();
        await assertAlive(b);
        await stack.flush(b, { userRoom: userRoom(BOB) });
        assert.deepEqual(viewersFor(b, doctype, docname, bobSince), []);
      });
    });

    // Protocol §5.2 / §5.3: ping → pong.
    describe("ping (§5.2, §5.3)", () => {
      test("ping is answered with pong and no arguments", async () => {
        const socket = await carol();
        const pong = nextEvent(socket, "pong");
        socket.emit("ping");
        assert.deepEqual(await pong, []);
      });

      test("a Guest gets pong too", async () => {
        const socket = await guest();
        await assertAlive(socket);
      });
    });

    // Protocol §5.2 (open_in_editor row), §10 #15: without developer_mode nothing is published.
    describe("open_in_editor without developer_mode (§5.2, §10 #15)", () => {
      test("nothing is published on open_in_editor", async () => {
        const channel = await watchChannel(stack, "open_in_editor");
        try {
          const socket = await alice();
          socket.emit("open_in_editor", { file: "apps/frappe/frappe/__init__.py", line: 1, column: 1 });
          await assertAlive(socket);
          assert.deepEqual(await channel.flush(), []);
        } finally {
          await channel.close();
        }
      });
    });

    // Protocol §5.2: arguments are untrusted; odd ones are ignored and never reach Frappe.
    describe("odd or missing arguments (§5.2)", () => {
      test("falsy or non-string arguments: no call, no error, socket stays connected", async () => {
        const socket = await alice();
        const before = allPermissionCalls(stack).length;
        for (const event of ALL_EVENTS) {
          for (const args of ODD_FIRST_ARGS) socket.emit(event, ...args);
        }
        for (const event of ["doc_subscribe", "doc_unsubscribe", "doc_open", "doc_close"]) {
          for (const args of ODD_DOCNAME_ARGS) socket.emit(event, ...args);
        }
        // A later allowed subscription has made its call and completed: the odd ones, emitted
        // earlier on the same socket, would have made theirs by now.
        const settleDoctype = await settle(stack, socket, ALICE);
        await assertAlive(socket);
        const made = allPermissionCalls(stack).slice(before);
        assert.deepEqual(made.map((c) => c.query.doctype), [settleDoctype],
          `only the settling call was made; got ${JSON.stringify(made.map((c) => c.query))}`);
        // Still a working socket: its rooms deliver.
        await stack.publishUntilReceived(socket, userRoom(ALICE));
      });

      test("no odd task id joins a room: a falsy id makes no task_progress room", async () => {
        const socket = await alice();
        for (const args of ODD_FIRST_ARGS) socket.emit("task_subscribe", ...args);
        await settle(stack, socket, ALICE);
        for (const room of ["task_progress:", "task_progress:null", "task_progress:0",
          "task_progress:42", "task_progress:false", "task_progress:[object Object]"]) {
          await assertNotInRoom(stack, socket, ALICE, room);
        }
      });

      test("a 200 KB string and an empty string as every event's arguments", async () => {
        const socket = await alice();
        const big = "x".repeat(200 * 1024);
        for (const event of ALL_EVENTS) {
          socket.emit(event, big);
          socket.emit(event, big, big);
          socket.emit(event, "");
          socket.emit(event, "", "");
        }
        await assertAlive(socket);
        await settle(stack, socket, ALICE);
        await assertAlive(socket);
        // The server itself is still healthy for others.
        const other = await bob();
        await assertAlive(other);
      });

      test("an object, array, number and null at once on every event", async () => {
        const socket = await alice();
        for (const event of ALL_EVENTS) socket.emit(event, { a: [1, 2] }, [3, { b: null }], 4.5, null, true);
        await settle(stack, socket, ALICE);
        await assertAlive(socket);
      });
    });
  });

  // Protocol §5.2 (open_in_editor: only in developer_mode and never for Guest), §10 #15.
  describe(`Frappe ${version}: open_in_editor with developer_mode`, () => {
    let stack;
    let channel;
    before(async () => {
      stack = await startStack({ version, common: { developer_mode: 1 } });
      channel = await watchChannel(stack, "open_in_editor");
    });
    after(async () => {
      await channel?.close();
      await stack?.stop();
    });
    afterEach(() => { for (const s of stack.sockets) if (s.connected) s.disconnect(); });

    /** Wait until the channel has a message whose parsed `marker` is `marker`. */
    const published = (marker) => waitFor(
      () => channel.messages.map((m) => JSON.parse(m)).find((m) => m.marker === marker),
      { what: `open_in_editor ${marker}` });

    test("a logged-in user's request is published as JSON on channel open_in_editor", async () => {
      const socket = await stack.connect({ sid: ALICE_SID });
      const request = { file: "apps/frappe/frappe/public/js/app.js", line: 12, column: 3, marker: unique("req") };
      socket.emit("open_in_editor", request);
      assert.deepEqual(await published(request.marker), request);
    });

    test("a Guest's request is not published", async () => {
      const start = channel.messages.length;
      const g = await stack.connect({ sid: "Guest" });
      const a = await stack.connect({ sid: ALICE_SID });
      const guestMarker = unique("guest");
      g.emit("open_in_editor", { file: "x.js", line: 1, column: 1, marker: guestMarker });
      await assertAlive(g);
      const aliceMarker = unique("alice");
      a.emit("open_in_editor", { file: "y.js", line: 2, column: 2, marker: aliceMarker });
      await published(aliceMarker);
      await channel.flush();
      const markers = channel.messages.slice(start).map((m) => JSON.parse(m).marker);
      assert.ok(!markers.includes(guestMarker), "the Guest's request was published");
    });

    test("a non-object argument publishes nothing and the socket stays connected", async () => {
      const start = channel.messages.length;
      const socket = await stack.connect({ sid: ALICE_SID });
      for (const args of [[], ["apps/x.js"], [42], [null], [["apps/x.js", 1, 1]], [""], [true]]) {
        socket.emit("open_in_editor", ...args);
      }
      await assertAlive(socket);
      const marker = unique("after");
      socket.emit("open_in_editor", { file: "z.js", line: 3, column: 4, marker });
      await published(marker);
      await channel.flush();
      const got = channel.messages.slice(start).filter((m) => !m.includes('"sentinel"'));
      assert.deepEqual(got.map((m) => JSON.parse(m).marker), [marker], "only the object was published");
      assert.ok(socket.connected);
    });
  });
}
