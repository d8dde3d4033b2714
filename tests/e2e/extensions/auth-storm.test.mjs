// Reconnect storms (protocol §10 #17): after a restart every tab reconnects at once. Concurrent
// handshakes with the same credential share one get_user_info call, and calls to Frappe are
// bounded by realtime_callback_concurrency: they queue instead of stampeding the web workers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, connected, nextEvent, ALICE, ALICE_SID, BOB_SID, CAROL_SID, USER_INFO, userRoom,
} from "../../support/harness.mjs";

let stack;
before(async () => {
  stack = await startStack({ version: 15, common: { realtime_callback_concurrency: 2 } });
});
after(async () => { await stack?.stop(); });

test("20 concurrent handshakes with one sid make one get_user_info call", async () => {
  stack.frappe.latencyMs = 1000; // slow enough that all 20 handshakes overlap
  const calls = stack.frappe.callsTo(USER_INFO).length;
  const sockets = Array.from({ length: 20 }, () => stack.socket({ sid: ALICE_SID, transports: ["websocket"] }));
  try {
    await Promise.all(sockets.map((socket) => connected(socket)));
  } finally {
    stack.frappe.latencyMs = 0;
  }
  assert.equal(stack.frappe.callsTo(USER_INFO).length - calls, 1);
  const got = Promise.all(sockets.map((socket) => nextEvent(socket, "msgprint")));
  await stack.publish("msgprint", "all tabs", { room: userRoom(ALICE) });
  assert.equal((await got).length, 20);
});

test("calls to Frappe queue behind realtime_callback_concurrency", async () => {
  stack.frappe.peakConcurrent = stack.frappe.concurrent;
  stack.frappe.latencyMs = 200;
  const started = performance.now();
  try {
    // Different users: nothing to coalesce, so 6 calls of 200 ms, at most 2 at a time: three
    // waves, so at least 600 ms (without the bound they would all run at once, ~200 ms).
    const users = [ALICE_SID, BOB_SID, CAROL_SID, "nobody-1", "nobody-2", "nobody-3"];
    await Promise.all(users.map((sid) => stack.connect({ sid, transports: ["websocket"] })));
  } finally {
    stack.frappe.latencyMs = 0;
  }
  const elapsed = performance.now() - started;
  assert.ok(stack.frappe.peakConcurrent <= 2, `peak ${stack.frappe.peakConcurrent} calls at once`);
  assert.ok(elapsed >= 590, `6 handshakes took only ${Math.round(elapsed)} ms: calls were not queued`);
});
