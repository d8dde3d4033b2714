// SIGTERM (supervisor stop/restart, systemd): every client's transport is closed, not a
// Socket.IO disconnect, so socket.io-client reconnects by itself ("transport close", unlike
// "io server disconnect"); the disconnects are counted and logged per site, and it exits 0.
import { test } from "node:test";
import net from "node:net";
import assert from "node:assert/strict";
import { startStack, ALICE_SID } from "../../support/harness.mjs";

test("SIGTERM closes every client's transport, logs the disconnects and exits 0", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const sockets = await Promise.all([["websocket"], ["polling"], ["polling", "websocket"]]
    .map((transports) => stack.connect({ sid: ALICE_SID, transports })));
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

// A restart is a reconnect storm: clients come back as soon as their transport closes. The
// old process must have stopped listening by then. If it still accepted, a client could get a
// session on a server whose namespaces are already gone and be answered `Invalid namespace`,
// a refusal socket.io-client does not retry: that tab would stay offline until reloaded (570
// of 19,500 clients in a loadgen storm before this was fixed).
test("SIGTERM closes the listening port before any client is told to go", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const sockets = await Promise.all(Array.from({ length: 1000 },
    () => stack.connect({ sid: ALICE_SID, transports: ["websocket"] })));
  const firstDisconnect = Promise.race(sockets.map((socket) =>
    new Promise((resolve) => socket.once("disconnect", resolve))));
  const portAtFirstDisconnect = firstDisconnect.then(() => new Promise((resolve) => {
    const probe = net.connect({ host: "127.0.0.1", port: stack.port });
    probe.once("connect", () => { probe.destroy(); resolve("accepting"); });
    probe.once("error", (err) => resolve(err.code));
  }));

  stack.server.proc.kill("SIGTERM");
  const state = await Promise.race([
    portAtFirstDisconnect,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no disconnect within 12 s")), 12000)),
  ]);

  assert.equal(state, "ECONNREFUSED", "a client retrying during shutdown must find the port closed");
});
