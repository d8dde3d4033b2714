// The handshake timeout (docs/reliability.md): a client that opens an Engine.IO session but
// never joins a namespace is closed after realtime_callback_timeout + 5 s, so idle
// half-handshakes cannot pile up.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startStack, SITES, ALICE_SID } from "../../support/harness.mjs";

let stack;
before(async () => { stack = await startStack({ common: { realtime_callback_timeout: 1 } }); });
after(async () => { await stack?.stop(); });

test("a session that never sends its namespace CONNECT is closed after the handshake timeout", async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=websocket`, {
    headers: { origin: stack.frappe.url, cookie: `sid=${ALICE_SID}`, "x-frappe-site-name": SITES[0] },
  });
  const opened = performance.now();
  const closedAfterMs = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("still open after 15 s")), 15000);
    ws.on("error", () => {});
    ws.on("close", () => { clearTimeout(timer); resolve(performance.now() - opened); });
  });
  // 1 s callback timeout + 5 s margin; the upper bound leaves room for a loaded machine.
  assert.ok(closedAfterMs >= 5500 && closedAfterMs < 12000, `closed after ${Math.round(closedAfterMs)} ms`);
});
