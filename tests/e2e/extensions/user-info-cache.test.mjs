// The optional cache of positive get_user_info answers (realtime_user_info_cache_seconds; off
// by default). With it, repeated handshakes of one credential ask Frappe once per TTL; the
// documented trade-off is that a logout reaches new handshakes only after the TTL, unless
// the user is revoked, which forgets their answers at once. Guest answers are never cached.
import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, waitFor, SITES, ALICE_SID, BOB, BOB_SID, CAROL_SID, USER_INFO,
} from "../../support/harness.mjs";

const SITE = SITES[0];
const userInfoCalls = (stack) => stack.frappe.callsTo(USER_INFO).length;

/** A stack whose server has already read Frappe 16's socket secret (its first handshake
 * retries once for it), so every later call counted is a handshake's own. */
async function warmStack(options) {
  const stack = await startStack(options);
  (await stack.connect({ sid: CAROL_SID, transports: ["websocket"] })).disconnect();
  return stack;
}

describe("with realtime_user_info_cache_seconds set", () => {
  let stack;
  before(async () => { stack = await warmStack({ common: { realtime_user_info_cache_seconds: 300 } }); });
  after(async () => { await stack?.stop(); });

  test("repeated handshakes of one sid ask Frappe once", async () => {
    const before = userInfoCalls(stack);
    for (let i = 0; i < 5; i += 1) {
      const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      socket.disconnect();
    }
    assert.equal(userInfoCalls(stack) - before, 1);
    const text = await (await fetch(`http://127.0.0.1:${stack.port}/metrics`)).text();
    assert.match(text, /^frappe_realtime_user_info_cache_hits_total 4$/m);
  });

  test("a logout reaches new handshakes after the TTL, or at once when the user is revoked", async () => {
    await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    stack.frappe.removeSession(SITE, BOB_SID);
    // Within the TTL the remembered answer still admits bob: the documented trade-off.
    const remembered = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.publishUntilReceived(remembered, "user:bob@example.com");

    await stack.redis.client.publish("frappe_realtime:revoke", JSON.stringify({ site: SITE, user: BOB }));
    await waitFor(() => !remembered.connected, { what: "bob's sockets to be revoked" });
    const before = userInfoCalls(stack);
    const after = await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    assert.equal(userInfoCalls(stack) - before, 1, "Frappe is asked again after the revocation");
    // Frappe now answers Guest for that sid: the socket is not in bob's room.
    await stack.publish("for_bob", { secret: true }, { room: "user:bob@example.com" });
    await stack.flush(after, { userRoom: "user:Guest" });
    assert.ok(!after.received.some((r) => r.event === "for_bob"));
  });

  test("Guest answers are not remembered", async () => {
    const before = userInfoCalls(stack);
    for (let i = 0; i < 3; i += 1) {
      const socket = await stack.connect({ sid: "made-up-sid", transports: ["websocket"] });
      socket.disconnect();
    }
    assert.equal(userInfoCalls(stack) - before, 3);
  });
});

describe("by default", () => {
  let stack;
  before(async () => { stack = await warmStack(); });
  after(async () => { await stack?.stop(); });

  test("every handshake after the last one finished asks Frappe again", async () => {
    const before = userInfoCalls(stack);
    for (let i = 0; i < 3; i += 1) {
      const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      socket.disconnect();
    }
    assert.equal(userInfoCalls(stack) - before, 3);
  });
});

describe("across a SIGHUP", () => {
  let stack;
  before(async () => { stack = await warmStack({ common: { realtime_user_info_cache_seconds: 300 } }); });
  after(async () => { await stack?.stop(); });

  test("the Frappe client keeps its remembered answers: a reload does not ask Frappe again", async () => {
    (await stack.connect({ sid: ALICE_SID, transports: ["websocket"] })).disconnect();
    const before = userInfoCalls(stack);
    const reloads = () => stack.server.output.split("configuration reloaded").length;
    const reloaded = reloads();
    process.kill(stack.server.proc.pid, "SIGHUP");
    await waitFor(() => reloads() > reloaded, { what: "the reload in the log" });
    (await stack.connect({ sid: ALICE_SID, transports: ["websocket"] })).disconnect();
    assert.equal(userInfoCalls(stack) - before, 0, "the answer was remembered across the reload");
  });
});
