// Last state on subscribe (README, "Last state on subscribe"): the latest publication of each
// event to a `task_progress:` room, and to the rooms and events the operator lists, reaches a
// socket that subscribes after it was published; nothing else does.
//
// Absence is asserted through ordering: the subscription's kept state is queued before any
// later publication, so once a sentinel published after the subscription has arrived, a kept
// event that did not come before it will not come.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, waitFor, received, SITES, ALICE, ALICE_SID, BOB_SID, unique,
} from "../../support/harness.mjs";

const SITE = SITES[0];

/** Subscribe with `event`/`args`, then wait for a sentinel published to `room` after it. */
async function subscribeAndSettle(stack, socket, room, event, ...args) {
  socket.emit(event, ...args);
  await stack.publishUntilReceived(socket, room, { event: "sentinel" });
}

describe("last state on subscribe", () => {
  let stack;
  before(async () => {
    stack = await startStack({
      common: {
        realtime_last_state_rooms: ["doc:"],
        realtime_last_state_events: ["ai_progress"],
      },
    });
  });
  after(async () => { await stack?.stop(); });

  test("a late task_subscribe gets the task's latest progress at once, then what follows", async () => {
    const task = unique("task");
    const room = `task_progress:${task}`;
    for (const progress of [10, 40, 70]) await stack.publish("task_progress", { progress }, { room });
    // The bridge handles publications in order: once this arrives, the three above are kept.
    const probe = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });

    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await subscribeAndSettle(stack, socket, room, "task_subscribe", task);
    assert.deepEqual(received(socket, "task_progress"), [[{ progress: 70 }]], "only the latest, once");
    await stack.publish("task_progress", { progress: 100 }, { room });
    await waitFor(() => received(socket, "task_progress").length === 2, { what: "the next progress" });
    assert.deepEqual(received(socket, "task_progress")[1], [{ progress: 100 }]);
  });

  test("progress_subscribe (the older name) gets it too", async () => {
    const task = unique("task");
    const room = `task_progress:${task}`;
    await stack.publish("progress", { percent: 5 }, { room });
    const probe = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await subscribeAndSettle(stack, socket, room, "progress_subscribe", task);
    assert.deepEqual(received(socket, "progress"), [[{ percent: 5 }]]);
  });

  test("listed rooms (doc:) keep their state; unlisted rooms (doctype:) do not", async () => {
    const doctype = unique("Note");
    stack.frappe.allow(SITE, ALICE, doctype);
    stack.frappe.allow(SITE, ALICE, doctype, "A");
    await stack.publish("doc_update", { modified: "1" }, { room: `doc:${doctype}/A` });
    await stack.publish("list_update", { name: "A" }, { room: `doctype:${doctype}` });
    const probe = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });

    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await subscribeAndSettle(stack, socket, `doc:${doctype}/A`, "doc_subscribe", doctype, "A");
    assert.deepEqual(received(socket, "doc_update"), [[{ modified: "1" }]]);
    await subscribeAndSettle(stack, socket, `doctype:${doctype}`, "doctype_subscribe", doctype);
    assert.deepEqual(received(socket, "list_update"), [], "doctype rooms are not listed");
  });

  test("a refused subscription gets no state", async () => {
    const doctype = unique("Secret");
    await stack.publish("doc_update", { secret: true }, { room: `doc:${doctype}/X` });
    const probe = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    socket.emit("doc_subscribe", doctype, "X");
    await waitFor(() => stack.frappe.callsTo("frappe.realtime.has_permission")
      .concat(stack.frappe.callsTo("frappe.realtime.can_subscribe_doc"))
      .some((c) => JSON.stringify(c.query).includes(doctype)), { what: "the permission call" });
    // A later allowed subscription on the same socket has completed once its state arrives.
    const task = unique("task");
    await stack.publish("task_progress", { after: true }, { room: `task_progress:${task}` });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });
    socket.emit("task_subscribe", task);
    await waitFor(() => received(socket, "task_progress").length === 1, { what: "the allowed subscription" });
    await stack.flush(socket, { userRoom: `user:${ALICE}` });
    assert.deepEqual(received(socket, "doc_update"), []);
  });
});

describe("last state on subscribe, turned off", () => {
  let stack;
  before(async () => { stack = await startStack({ common: { realtime_last_state_seconds: 0 } }); });
  after(async () => { await stack?.stop(); });

  test("a late task_subscribe gets nothing until the next publication", async () => {
    const task = unique("task");
    const room = `task_progress:${task}`;
    await stack.publish("task_progress", { progress: 50 }, { room });
    const probe = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.flush(probe, { userRoom: "user:bob@example.com" });
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await subscribeAndSettle(stack, socket, room, "task_subscribe", task);
    assert.deepEqual(received(socket, "task_progress"), []);
  });
});
