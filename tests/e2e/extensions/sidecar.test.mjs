// The extension point for stateful handlers (docs/app-handlers.md, "Stateful handlers: a
// sidecar"): an app's declared events go over a Redis stream to a sidecar in any language,
// and what the sidecar publishes on Frappe's `events` channel comes back to the clients.
// examples/python-sidecar runs here as a user would run it, with its handlers.json as the
// app's own realtime/handlers.json: a shared whiteboard per document, whose strokes live in
// the sidecar. The sidecar is stopped by its PID; every wait is bounded.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  startStack, waitFor, SITES, ROOT, ALICE, ALICE_SID, BOB, BOB_SID, payloads,
} from "../../support/harness.mjs";

const PYTHON = path.join(ROOT, ".cache/python-client-venv/bin/python");
const EXAMPLE = path.join(ROOT, "examples/python-sidecar");
const SITE = SITES[0];

describe("a Python sidecar behind an app's queued events", () => {
  let stack;
  let sidecar;
  before(async () => {
    stack = await startStack({
      apps: ["whiteboard"],
      installedApps: () => ["whiteboard"],
      beforeStart: (bench) => {
        const dir = path.join(bench, "apps/whiteboard/realtime");
        fs.mkdirSync(dir, { recursive: true });
        fs.copyFileSync(path.join(EXAMPLE, "handlers.json"), path.join(dir, "handlers.json"));
      },
    });
    sidecar = { output: "" };
    sidecar.proc = spawn(PYTHON, [path.join(EXAMPLE, "sidecar.py"), "--redis", stack.redis.url,
      "--stream", `whiteboard:${SITE}`], { stdio: ["ignore", "pipe", "pipe"] });
    sidecar.proc.stdout.on("data", (chunk) => { sidecar.output += chunk; });
    sidecar.proc.stderr.on("data", (chunk) => { sidecar.output += chunk; });
    sidecar.exited = new Promise((resolve) => sidecar.proc.once("exit", resolve));
    await waitFor(() => sidecar.output.includes("ready") || sidecar.proc.exitCode !== null,
      { timeoutMs: 10000, what: "the sidecar to start" });
    assert.equal(sidecar.proc.exitCode, null, `the sidecar exited:\n${sidecar.output}`);
  });
  after(async () => {
    if (sidecar?.proc.exitCode === null) {
      sidecar.proc.kill("SIGTERM");
      const timer = setTimeout(() => sidecar.proc.kill("SIGKILL"), 5000);
      await sidecar.exited;
      clearTimeout(timer);
    }
    await stack?.stop();
  });

  test("state kept by the sidecar: joins get the strokes so far, strokes reach everyone on the document", async () => {
    const board = `WB-${Math.random().toString(36).slice(2, 8)}`;
    stack.frappe.allow(SITE, ALICE, "Whiteboard", board);
    stack.frappe.allow(SITE, BOB, "Whiteboard", board);
    const alice = await stack.connect({ sid: ALICE_SID });
    const bob = await stack.connect({ sid: BOB_SID });

    alice.emit("whiteboard_join", "Whiteboard", board);
    await waitFor(() => payloads(alice, "whiteboard_state").length === 1, { what: "alice's state" });
    assert.deepEqual(payloads(alice, "whiteboard_state")[0],
      { doctype: "Whiteboard", name: board, strokes: [], socket_id: alice.id });

    alice.emit("whiteboard_draw", "Whiteboard", board, { from: [0, 0], to: [10, 10] });
    await waitFor(() => payloads(alice, "whiteboard_stroke").length === 1, { what: "alice's own stroke" });
    const stroke = { doctype: "Whiteboard", name: board, by: ALICE, stroke: { from: [0, 0], to: [10, 10] } };
    assert.deepEqual(payloads(alice, "whiteboard_stroke")[0], stroke);
    assert.equal(payloads(bob, "whiteboard_stroke").length, 0, "bob is not on the board yet");

    // Bob joins later: the sidecar sends him what was drawn; a stroke of his reaches alice.
    bob.emit("whiteboard_join", "Whiteboard", board);
    await waitFor(() => payloads(bob, "whiteboard_state").length === 1, { what: "bob's state" });
    assert.deepEqual(payloads(bob, "whiteboard_state")[0].strokes, [{ by: ALICE, stroke: stroke.stroke }]);
    bob.emit("whiteboard_draw", "Whiteboard", board, { from: [5, 5], to: [6, 6] });
    await waitFor(() => payloads(alice, "whiteboard_stroke").length === 2, { what: "bob's stroke at alice" });
    assert.equal(payloads(alice, "whiteboard_stroke")[1].by, BOB);
    alice.disconnect();
    bob.disconnect();
  });

  test("the server's checks hold before anything reaches the sidecar", async () => {
    const board = `WB-${Math.random().toString(36).slice(2, 8)}`;
    stack.frappe.allow(SITE, ALICE, "Whiteboard", board);
    const alice = await stack.connect({ sid: ALICE_SID });
    const bob = await stack.connect({ sid: BOB_SID });
    alice.emit("whiteboard_join", "Whiteboard", board);
    await waitFor(() => payloads(alice, "whiteboard_state").length === 1, { what: "alice's state" });
    bob.emit("whiteboard_join", "Whiteboard", board); // not permitted: not joined, not queued
    bob.emit("whiteboard_draw", "Whiteboard", board, { scribble: true }); // not a member: dropped
    alice.emit("whiteboard_draw", "Whiteboard", board, { mark: "after" });
    // Entries are handled in order: once alice's stroke is back, bob's would have been too.
    await waitFor(() => payloads(alice, "whiteboard_stroke").length === 1, { what: "alice's stroke" });
    assert.deepEqual(payloads(alice, "whiteboard_stroke").map((s) => s.stroke), [{ mark: "after" }]);
    await stack.flush(bob, { userRoom: `user:${BOB}` });
    assert.equal(payloads(bob, "whiteboard_state").length, 0);
    alice.disconnect();
    bob.disconnect();
  });
});
