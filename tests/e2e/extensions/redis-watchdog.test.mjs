// Protocol §6 / §10 #1: the bridge probes an idle Redis link with PING. A subscribed RESP2
// connection answers PING with ["pong", ""]; the probe must take that as alive and keep the
// subscription (a bug once dropped it every 10 s, losing events published meanwhile).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, nextEvent, waitFor, ALICE, ALICE_SID, userRoom } from "../../support/harness.mjs";

let stack;
before(async () => { stack = await startStack(); });
after(async () => { await stack?.stop(); });

async function subscriberLastCommand() {
  const clients = await stack.redis.client.sendCommand(["CLIENT", "LIST"]);
  const line = clients.split("\n").find((l) => / sub=[1-9]\d* /.test(l));
  return line && /cmd=(\S+)/.exec(line)[1];
}

test("an idle subscription survives the PING watchdog", async () => {
  const socket = await stack.connect({ sid: ALICE_SID });
  await waitFor(async () => (await subscriberLastCommand()) === "ping",
    { timeoutMs: 15000, everyMs: 200, what: "the watchdog's PING" });
  assert.equal(await stack.redis.subscribers(), 1);
  const got = nextEvent(socket, "msgprint");
  await stack.publish("msgprint", "still here", { room: userRoom(ALICE) });
  assert.deepEqual(await got, ["still here"]);
  assert.doesNotMatch(stack.server.output, /lost the Redis subscription/);
});
