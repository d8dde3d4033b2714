// Session revocation (docs/reliability.md): an operator endpoint or a Redis message
// disconnects every socket of a user on one site — and only those — with a Socket.IO
// DISCONNECT, which socket.io-client does not retry ("io server disconnect").
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, nextEvent, waitFor, SITES, ALICE, ALICE_SID, BOB_SID } from "../../support/harness.mjs";

const TOKEN = "test-admin-token-0123456789";

async function revokeVia(stack, { site = SITES[0], user = ALICE, token = TOKEN } = {}) {
  const url = `http://127.0.0.1:${stack.port}/admin/disconnect?site=${encodeURIComponent(site)}&user=${encodeURIComponent(user)}`;
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const response = await fetch(url, { method: "POST", headers, signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: await response.json() };
}

async function revokedCount(stack) {
  const text = await (await fetch(`http://127.0.0.1:${stack.port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("frappe_realtime_disconnects_total")
    && l.includes('reason="session_revoked"') && l.includes(`site="${SITES[0]}"`));
  return line ? Number(line.split(" ").pop()) : 0;
}

describe("without realtime_admin_token", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("the admin endpoint is off", async () => {
    const socket = await stack.connect({ sid: ALICE_SID });
    const { status } = await revokeVia(stack);
    assert.equal(status, 404);
    assert.equal(socket.connected, true);
  });
});

describe("with realtime_admin_token", () => {
  let stack;
  before(async () => { stack = await startStack({ common: { realtime_admin_token: TOKEN } }); });
  after(async () => { await stack?.stop(); });

  test("a missing or wrong token is refused and disconnects nobody", async () => {
    const socket = await stack.connect({ sid: ALICE_SID });
    assert.equal((await revokeVia(stack, { token: null })).status, 401);
    assert.equal((await revokeVia(stack, { token: `${TOKEN}x` })).status, 401);
    assert.equal(socket.connected, true);
    socket.disconnect();
  });

  test("POST /admin/disconnect disconnects the user's sockets on that site only", async () => {
    const before = await revokedCount(stack);
    const tabs = [await stack.connect({ sid: ALICE_SID }), await stack.connect({ sid: ALICE_SID, transports: ["polling"] })];
    const otherSite = await stack.connect({ sid: ALICE_SID, site: SITES[1] });
    const bob = await stack.connect({ sid: BOB_SID });
    const reasons = tabs.map((socket) => nextEvent(socket, "disconnect"));

    const { status, body } = await revokeVia(stack);
    assert.equal(status, 200);
    assert.deepEqual(body, { disconnected: 2, instances_told: true });
    for (const [reason] of await Promise.all(reasons)) assert.equal(reason, "io server disconnect");
    assert.equal(otherSite.connected, true);
    assert.equal(bob.connected, true);
    await waitFor(async () => (await revokedCount(stack)) === before + 2, { what: "the revoked disconnects counted" });
    const got = nextEvent(bob, "msgprint");
    await stack.publish("msgprint", "bob still here", { room: "user:bob@example.com" });
    assert.deepEqual(await got, ["bob still here"]);
    for (const socket of [otherSite, bob]) socket.disconnect();
  });

  test("a message on Redis channel frappe_realtime:revoke does the same", async () => {
    const tab = await stack.connect({ sid: ALICE_SID });
    const bob = await stack.connect({ sid: BOB_SID });
    const reason = nextEvent(tab, "disconnect");
    await stack.redis.client.publish("frappe_realtime:revoke", "not json"); // dropped, logged
    await stack.redis.client.publish("frappe_realtime:revoke", JSON.stringify({ site: SITES[0], user: ALICE }));
    assert.equal((await reason)[0], "io server disconnect");
    assert.equal(bob.connected, true);
    assert.match(stack.server.output, /dropped a revocation/);
    bob.disconnect();
  });

  test("the token never reaches the log", () => {
    assert.ok(!stack.server.output.includes(TOKEN));
  });
});
