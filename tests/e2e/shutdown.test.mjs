// SIGTERM (supervisor stop/restart, systemd): every client's transport is closed, not a
// Socket.IO disconnect, so socket.io-client reconnects by itself ("transport close", unlike
// "io server disconnect"); the disconnects are counted and logged per site, and it exits 0.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startStack } from "../support/harness.mjs";

test("SIGTERM closes every client's transport, logs the disconnects and exits 0", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const sockets = await Promise.all([["websocket"], ["polling"], ["polling", "websocket"]]
    .map((transports) => stack.connect({ sid: "sid-alice", transports })));
  const reasons = sockets.map((socket) => new Promise((resolve) => socket.once("disconnect", resolve)));

  stack.server.proc.kill("SIGTERM");
  const code = await Promise.race([
    stack.server.exited,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no exit within 12 s")), 12000)),
  ]);

  assert.equal(code, 0);
  for (const reason of await Promise.all(reasons)) {
    assert.ok(["transport close", "transport error"].includes(reason),
      `clients must see a transport-level disconnect they retry, got "${reason}"`);
  }
  assert.match(stack.server.output, /closing the site's connections site=site1\.local sockets=3 reason="server_shutdown"/);
});
