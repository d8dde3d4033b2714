// An idle server stays idle: no timer or watcher may keep a core busy. (The site watcher once
// reacted to its own reads of sites/ and rescanned in a loop, burning a whole core; only the
// load generator's CPU figures showed it.)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, ALICE_SID } from "../../support/harness.mjs";

let stack;
before(async () => { stack = await startStack(); });
after(async () => { await stack?.stop(); });

test("an idle server with a connected client uses almost no CPU", async () => {
  await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
  const before = stack.server.cpuMs();
  // A window of wall time is the measurement itself here, not a wait for an event.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const spent = stack.server.cpuMs() - before;
  // A busy loop spends ~3000 ms here; idle work (site rescans every 5 s, metrics upkeep,
  // slow-consumer sweeps) a few ms.
  assert.ok(spent < 300, `the idle server used ${spent} ms of CPU in 3 s`);
});
