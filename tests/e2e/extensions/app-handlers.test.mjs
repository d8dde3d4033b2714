// App handlers without JavaScript (docs/app-handlers.md; protocol §7): the handlers
// Frappe 16's Node service loads from each installed app's realtime/handlers.js, shipped here
// as data for the public apps, run only on sites that have the app installed. Each case
// reproduces what the app's handlers.js does: events, rooms, payload shapes, who receives
// what, and the denials. Then a bad handler file (the other apps keep working, SIGHUP
// reloads), and `ping` answered once.
//
// Clients are the official socket.io-client as Frappe 16's Desk connects; alice and bob are
// System Users (sid-alice, sid-bob), carol a Website User. Every wait is bounded; where the
// point is that nothing arrives, a later event to the same socket proves the earlier one was
// handled first (the server handles a socket's events in order, and a sentinel published
// afterwards arrives after anything the handler sent).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  startStack, waitFor, nextEvent, SITES, ALICE, ALICE_SID, BOB, BOB_SID, unique, received,
} from "../../support/harness.mjs";

const [SITE, OTHER_SITE] = SITES;
const APPS = ["helpdesk", "raven", "drive", "suite", "pos_next", "quizzly", "time_tracker", "press_agent_manager"];

/** Wait until `socket` has received `count` `event`s; returns their arguments. */
async function receivedCount(socket, event, count, what = event) {
  await waitFor(() => received(socket, event).length >= count, { timeoutMs: 5000, what });
  return received(socket, event);
}

/** Resolve once everything the server sent `socket` before now has arrived (a sentinel to its user room). */
const settled = (stack, socket, user, site = SITE) => stack.flush(socket, { site, userRoom: `user:${user}` });

/** Publish to `room` until `socket` receives it: it is in the room. */
const isIn = (stack, socket, room, site = SITE) => stack.publishUntilReceived(socket, room, { site });

/** Whether `socket` is in `room`: publish a marker there, then a sentinel to its user room. */
async function inRoom(stack, socket, room, user, site = SITE) {
  const marker = unique("room-probe");
  await stack.publish("room_probe", { marker }, { site, room });
  await settled(stack, socket, user, site);
  return received(socket, "room_probe").some(([m]) => m?.marker === marker);
}

describe("public apps' handlers on a Frappe 16 bench that has them installed", () => {
  let stack;
  before(async () => {
    // Every app on the first site; on the second, none of them.
    stack = await startStack({ apps: APPS, installedApps: (site) => (site === SITE ? APPS : []) });
  });
  after(async () => { await stack?.stop(); });

  describe("helpdesk", () => {
    test("view_ticket: a permitted viewer joins open_doc:HD Ticket/<id> and every viewer gets ticket_viewers", async () => {
      const ticket = 4242;
      stack.frappe.allow(SITE, ALICE, "HD Ticket", String(ticket));
      stack.frappe.allow(SITE, BOB, "HD Ticket", String(ticket));
      // Bob connects first and views second: Node lists viewers in the order they connected.
      const bob = await stack.connect({ sid: BOB_SID });
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("view_ticket", ticket);
      const [[first]] = await receivedCount(alice, "ticket_viewers", 1);
      assert.deepEqual(first, { ticket_id: ticket, users: JSON.stringify([ALICE]), total_viewers: 1 });
      bob.emit("view_ticket", ticket);
      const forBob = await receivedCount(bob, "ticket_viewers", 1);
      const forAlice = await receivedCount(alice, "ticket_viewers", 2);
      for (const [payload] of [forBob[0], forAlice[1]]) {
        assert.deepEqual(payload, { ticket_id: ticket, users: JSON.stringify([BOB, ALICE]), total_viewers: 2 });
      }
      assert.ok(await inRoom(stack, bob, `open_doc:HD Ticket/${ticket}`, BOB));

      // notify_ticket_update and typing reach the other viewers, never the sender.
      alice.emit("notify_ticket_update", ticket, "status", "Closed");
      const [[update]] = await receivedCount(bob, "ticket_update", 1);
      assert.deepEqual(update, { ticket_id: ticket, user: ALICE, field: "status", value: "Closed" });
      bob.emit("helpdesk_ticket_typing", ticket);
      const [[typing]] = await receivedCount(alice, "helpdesk_ticket_typing", 1);
      assert.deepEqual(typing, { ticket_id: ticket, user: BOB });
      bob.emit("helpdesk_ticket_typing_stopped", ticket);
      await receivedCount(alice, "helpdesk_ticket_typing_stopped", 1);
      await settled(stack, alice, ALICE);
      await settled(stack, bob, BOB);
      assert.equal(received(alice, "ticket_update").length, 0, "the sender does not get its own update");
      assert.equal(received(bob, "helpdesk_ticket_typing").length, 0, "nor its own typing");

      // ticket_get_viewers: only to the asker's user room.
      const viewersForBob = received(bob, "ticket_viewers").length;
      alice.emit("ticket_get_viewers", ticket);
      await receivedCount(alice, "ticket_viewers", 3);
      await settled(stack, bob, BOB);
      assert.equal(received(bob, "ticket_viewers").length, viewersForBob, "bob did not ask");

      // stop_view_ticket: out of the room, the rest told who stays.
      bob.emit("stop_view_ticket", ticket);
      const [[left]] = (await receivedCount(alice, "ticket_viewers", 4)).slice(3);
      assert.deepEqual(left, { ticket_id: ticket, users: JSON.stringify([ALICE]), total_viewers: 1 });
      assert.equal(await inRoom(stack, bob, `open_doc:HD Ticket/${ticket}`, BOB), false);
      alice.disconnect();
      bob.disconnect();
    });

    test("view_ticket without permission joins nothing; a non-viewer's updates and typing go nowhere", async () => {
      const ticket = unique("T");
      stack.frappe.allow(SITE, ALICE, "HD Ticket", ticket);
      const alice = await stack.connect({ sid: ALICE_SID });
      const bob = await stack.connect({ sid: BOB_SID });
      alice.emit("view_ticket", ticket);
      await receivedCount(alice, "ticket_viewers", 1);
      bob.emit("view_ticket", ticket); // bob may not read it
      bob.emit("notify_ticket_update", ticket, "status", "Open");
      bob.emit("helpdesk_ticket_typing", ticket);
      bob.emit("ticket_get_viewers", ticket);
      bob.emit("view_ticket", ""); // nothing to view
      await settled(stack, bob, BOB);
      await settled(stack, alice, ALICE);
      assert.equal(await inRoom(stack, bob, `open_doc:HD Ticket/${ticket}`, BOB), false);
      assert.equal(received(alice, "ticket_update").length, 0);
      assert.equal(received(alice, "helpdesk_ticket_typing").length, 0);
      assert.equal(received(bob, "ticket_viewers").length, 0);
      assert.equal(received(alice, "ticket_viewers").length, 1, "no announcement for a refused viewer");
      alice.disconnect();
      bob.disconnect();
    });

    test("on a site without helpdesk installed, its events do nothing", async () => {
      const ticket = unique("T");
      stack.frappe.allow(OTHER_SITE, ALICE, "HD Ticket", ticket);
      const alice = await stack.connect({ sid: ALICE_SID, site: OTHER_SITE });
      alice.emit("view_ticket", ticket);
      await settled(stack, alice, ALICE, OTHER_SITE);
      assert.equal(received(alice, "ticket_viewers").length, 0);
      assert.equal(await inRoom(stack, alice, `open_doc:HD Ticket/${ticket}`, ALICE, OTHER_SITE), false);
      alice.disconnect();
    });
  });

  describe("raven", () => {
    test("typing: the channel's viewers get raven_channel_typers with who types; get_typers needs permission", async () => {
      const channel = unique("channel");
      const alice = await stack.connect({ sid: ALICE_SID });
      const bob = await stack.connect({ sid: BOB_SID });
      // Bob views the channel (Frappe's own doc_open puts him in its open_doc room).
      stack.frappe.allow(SITE, BOB, "Raven Channel", channel);
      bob.emit("doc_open", "Raven Channel", channel);
      await isIn(stack, bob, `open_doc:Raven Channel/${channel}`);
      alice.emit("raven_channel_typing", channel);
      const [[typers]] = await receivedCount(bob, "raven_channel_typers", 1);
      assert.deepEqual(typers, { channel, users: [ALICE] });
      // get_typers: bob may read the channel, so it comes to his user room; alice may not.
      bob.emit("raven_channel_get_typers", channel);
      const forBob = await receivedCount(bob, "raven_channel_typers", 2);
      assert.deepEqual(forBob[1][0], { channel, users: [ALICE] });
      alice.emit("raven_channel_get_typers", channel);
      await settled(stack, alice, ALICE);
      assert.equal(received(alice, "raven_channel_typers").length, 0, "no permission, no answer");
      alice.emit("raven_channel_typing_stopped", channel);
      const [, , [stopped]] = await receivedCount(bob, "raven_channel_typers", 3);
      assert.deepEqual(stopped, { channel, users: [] });
      alice.emit("fire");
      await nextEvent(alice, "ice");
      alice.disconnect();
      bob.disconnect();
    });
  });

  describe("drive, quizzly", () => {
    test("document_version_change_emit: the document's room, the sender included, gets document_version_change_recv", async () => {
      const doc = unique("FILE");
      stack.frappe.allow(SITE, ALICE, "Drive File", doc);
      stack.frappe.allow(SITE, BOB, "Drive File", doc);
      const alice = await stack.connect({ sid: ALICE_SID });
      const bob = await stack.connect({ sid: BOB_SID });
      for (const socket of [alice, bob]) {
        socket.emit("doc_subscribe", "Drive File", doc);
        await isIn(stack, socket, `doc:Drive File/${doc}`);
      }
      alice.emit("document_version_change_emit", "Drive File", doc, ALICE, "/img/a.png", 7);
      const expected = { doctype: "Drive File", docname: doc, author: ALICE, author_image: "/img/a.png", author_id: 7 };
      assert.deepEqual((await receivedCount(bob, "document_version_change_recv", 1))[0][0], expected);
      assert.deepEqual((await receivedCount(alice, "document_version_change_recv", 1))[0][0], expected);
      alice.disconnect();
      bob.disconnect();
    });

    test("tt_join joins tt_session_<pin> for a six-digit pin only; tt_leave leaves it", async () => {
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("tt_join", "123456");
      await isIn(stack, alice, "tt_session_123456");
      for (const pin of ["12345", "1234567", "abcdef", 123457]) alice.emit("tt_join", pin);
      for (const room of ["tt_session_12345", "tt_session_1234567", "tt_session_abcdef", "tt_session_123457"]) {
        assert.equal(await inRoom(stack, alice, room, ALICE), false, room);
      }
      alice.emit("tt_leave", "123456");
      await waitFor(async () => !(await inRoom(stack, alice, "tt_session_123456", ALICE)), { what: "tt_leave" });
      alice.disconnect();
    });
  });

  describe("guarded joins through an app's method: suite, pos_next", () => {
    test("guest_subscribe joins guest:<id> when validate_guest_session says valid, with the sender's credential", async () => {
      stack.frappe.route("/api/method/suite.meet.api.meeting.validate_guest_session", (call) =>
        ({ body: { message: { valid: call.query.guest_id === "guest_valid123" && call.user === ALICE } } }));
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("guest_subscribe", "guest_valid123");
      await isIn(stack, alice, "guest:guest_valid123");
      const calls = stack.frappe.callsTo("validate_guest_session");
      assert.equal(calls.at(-1).headers.cookie, `sid=${ALICE_SID}`);
      const asked = calls.length;
      alice.emit("guest_subscribe", "guest_other456");
      alice.emit("guest_subscribe", "guest_1"); // too short: never asked
      await waitFor(() => stack.frappe.callsTo("validate_guest_session").length === asked + 1,
        { what: "the check of guest_other456" });
      assert.equal(await inRoom(stack, alice, "guest:guest_other456", ALICE), false);
      assert.equal(await inRoom(stack, alice, "guest:guest_1", ALICE), false);
      assert.equal(stack.frappe.callsTo("validate_guest_session").length, asked + 1, "only the well-formed id was checked");
      alice.emit("guest_unsubscribe", "guest_valid123");
      await waitFor(async () => !(await inRoom(stack, alice, "guest:guest_valid123", ALICE)), { what: "guest_unsubscribe" });
      alice.disconnect();
    });

    test("pos_profile_subscribe joins pos_profile:<name> when has_pos_profile_access answers truthy", async () => {
      stack.frappe.route("/api/method/pos_next.realtime_events.has_pos_profile_access", (call) =>
        ({ body: { message: call.query.pos_profile === "Main POS" ? 1 : 0 } }));
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("pos_profile_subscribe", "Main POS");
      await isIn(stack, alice, "pos_profile:Main POS");
      alice.emit("pos_profile_subscribe", "Other POS");
      alice.emit("pos_profile_subscribe", 42);
      assert.equal(await inRoom(stack, alice, "pos_profile:Other POS", ALICE), false);
      assert.equal(await inRoom(stack, alice, "pos_profile:42", ALICE), false);
      alice.emit("pos_profile_unsubscribe", "Main POS");
      await waitFor(async () => !(await inRoom(stack, alice, "pos_profile:Main POS", ALICE)), { what: "unsubscribe" });
      alice.disconnect();
    });
  });

  describe("forwarding to the site: time_tracker, press_agent_manager", () => {
    test("tracker:heartbeat POSTs its payload to sync_heartbeat_ws with the sender's credential", async () => {
      const heartbeats = [];
      stack.frappe.route("/api/method/time_tracker.time_tracker.api.sync_heartbeat_ws", (call) => {
        heartbeats.push(call);
        return { body: { message: "ok" } };
      });
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("tracker:heartbeat", { project: "P-1", seconds: 30 });
      await waitFor(() => heartbeats.length === 1, { what: "the heartbeat to reach the site" });
      assert.deepEqual(heartbeats[0].body, { project: "P-1", seconds: 30 });
      assert.equal(heartbeats[0].user, ALICE);
      alice.disconnect();
    });

    test("remote_job.sync_job and sync_step POST message.data to the job's control-plane path", async () => {
      const posted = [];
      for (const kind of ["sync-job", "sync-step"]) {
        stack.frappe.route(`/api/control-plane/remote-jobs/J-9/${kind}`, (call) => {
          posted.push([kind, call.body, call.user]);
          return { body: {} };
        });
      }
      const alice = await stack.connect({ sid: ALICE_SID });
      alice.emit("remote_job.sync_job", { job_id: "J-9", data: { status: "Running" } });
      alice.emit("remote_job.sync_step", { job_id: "J-9", data: { step: 2 } });
      await waitFor(() => posted.length === 2, { what: "both posts" });
      assert.deepEqual(posted.sort(), [["sync-job", { status: "Running" }, ALICE], ["sync-step", { step: 2 }, ALICE]]);
      alice.disconnect();
    });
  });

  test("ping is answered once, by Frappe's own handler, though helpdesk and suite answer it in Node", async () => {
    const alice = await stack.connect({ sid: ALICE_SID });
    alice.emit("ping");
    await nextEvent(alice, "pong");
    await settled(stack, alice, ALICE);
    assert.equal(received(alice, "pong").length, 1);
    alice.disconnect();
  });
});

describe("a bad handler file", () => {
  let stack;
  let file;
  before(async () => {
    stack = await startStack({
      apps: ["myapp", "quizzly"],
      beforeStart: (bench) => {
        file = path.join(bench, "apps/myapp/realtime/handlers.json");
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, '{\n "app": "myapp",\n "handlers": [\n  {"event": "my_join", "args": ["x"], "join": "mine:{y}"}\n ]\n}\n');
      },
    });
  });
  after(async () => { await stack?.stop(); });

  test("disables that app only, names the file and the line, is counted, and SIGHUP loads the fixed file", async () => {
    assert.match(stack.server.output, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:4: handler of \`my_join\``));
    assert.equal(await stack.metric("frappe_realtime_app_handler_files_rejected_total", { app: "myapp" }), 1);
    const alice = await stack.connect({ sid: ALICE_SID });
    alice.emit("tt_join", "654321");
    await isIn(stack, alice, "tt_session_654321"); // quizzly works
    alice.emit("my_join", "a");
    assert.equal(await inRoom(stack, alice, "mine:a", ALICE), false);

    fs.writeFileSync(file, '{"app": "myapp", "handlers": [{"event": "my_join", "args": ["x"], "join": "mine:{x}"}]}');
    stack.server.proc.kill("SIGHUP");
    await waitFor(() => /app handlers loaded app="?myapp/.test(stack.server.output), { what: "the reload" });
    alice.emit("my_join", "a");
    await isIn(stack, alice, "mine:a");
    alice.disconnect();
  });
});
