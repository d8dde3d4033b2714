// The whole path once, before the chapters: a Desk-like client of Frappe 16 connects with its
// cookie, and what `publish_realtime` puts on Redis for its user room reaches it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, nextEvent, ALICE, ALICE_SID, userRoom } from "../../support/harness.mjs";

let stack;
before(async () => { stack = await startStack(); });
after(async () => { await stack?.stop(); });

test("a logged-in user receives an event published to their user room", async () => {
  const socket = await stack.connect({ sid: ALICE_SID });
  const got = nextEvent(socket, "msgprint");
  await stack.publish("msgprint", "hello", { room: userRoom(ALICE) });
  assert.deepEqual(await got, ["hello"]);
});
