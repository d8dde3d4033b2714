// Frappe 14 and 13 benches (README "Frappe 14"; protocol tags [v14], [v13]): one namespace `/`,
// rooms prefixed with the site, `redis_socketio`, Frappe 14's refusal texts, permission calls
// with `?sid=`, doc_viewers and typing indicators; Frappe 13's socket.io-client 2.x speaks
// Engine.IO 3, which is refused for now (below).
//
// Every wait is bounded; non-receipt is proven with a sentinel published after the event.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { io } from "socket.io-client";
import {
  startStack, connected, refusal, waitFor, SITES, ALICE, ALICE_SID, BOB, BOB_SID, unique, payloads,
} from "../../support/harness.mjs";

const require = createRequire(import.meta.url);
const io2 = require("socket.io-client-2"); // socket.io-client 2.5 (Engine.IO 3), as Frappe 13 ships

const [SITE, OTHER_SITE] = SITES;

/** Publish as Frappe 13 and 14 do: no namespace, the site in front of the room. */
function publish14(stack, event, message, room) {
  const body = { event, message };
  if (room !== undefined) body.room = room;
  return stack.redis.publish(body);
}

/** The Desk of Frappe 14: `io(origin, {withCredentials, reconnectionAttempts: 3})` on `/`. */
function desk14(stack, { sid = ALICE_SID, site = SITE, headers = {}, namespace = "/" } = {}) {
  const extraHeaders = { origin: stack.frappe.url, "x-frappe-site-name": site, ...headers };
  if (sid) extraHeaders.cookie = `sid=${sid}`;
  for (const [k, v] of Object.entries(extraHeaders)) if (v === undefined) delete extraHeaders[k];
  const socket = io(`http://127.0.0.1:${stack.port}${namespace}`, {
    withCredentials: true, reconnection: false, forceNew: true, timeout: 8000, extraHeaders,
  });
  return stack.track(socket);
}

/** Publish a sentinel to `user`'s room of `site` until `socket` has it: everything before is in. */
async function flush(stack, socket, user = ALICE, site = SITE) {
  const marker = unique("sentinel");
  await waitFor(async () => {
    await publish14(stack, "sentinel", { marker }, `${site}:user:${user}`);
    return payloads(socket, "sentinel").some((m) => m?.marker === marker);
  }, { timeoutMs: 5000, everyMs: 100, what: "the sentinel" });
}

describe("Frappe 14: one namespace, site-prefixed rooms", () => {
  let stack;
  before(async () => {
    stack = await startStack({ version: 14 });
    stack.frappe.allow(SITE, ALICE, "ToDo");
    stack.frappe.allow(SITE, ALICE, "ToDo", "T-1");
    stack.frappe.allow(SITE, BOB, "ToDo", "T-1");
  });
  after(async () => { await stack?.stop(); });

  test("the Desk connects to `/` and gets its site's events as Frappe 14 publishes them", async () => {
    const socket = desk14(stack);
    await connected(socket);
    await flush(stack, socket);
    const event = unique("ev");
    for (const room of [`${SITE}:user:${ALICE}`, `${SITE}:all`, `${SITE}:website`]) {
      await publish14(stack, event, { room }, room);
    }
    // Not for this socket: the other site's rooms, another user's.
    await publish14(stack, event, { room: "other" }, `${OTHER_SITE}:user:${ALICE}`);
    await publish14(stack, event, { room: "bob" }, `${SITE}:user:${BOB}`);
    await publish14(stack, event, { room: "every site" }); // no room: bench watch's build_event
    await flush(stack, socket);
    assert.deepEqual(payloads(socket, event).map((m) => m.room),
      [`${SITE}:user:${ALICE}`, `${SITE}:all`, `${SITE}:website`, "every site"]);
  });

  test("subscriptions ask can_subscribe_doc / can_subscribe_doctype with ?sid= and join prefixed rooms", async () => {
    const socket = desk14(stack);
    await connected(socket);
    socket.emit("doctype_subscribe", "ToDo");
    socket.emit("doc_subscribe", "ToDo", "T-1");
    socket.emit("doc_subscribe", "ToDo", "SECRET");
    for (const room of [`${SITE}:doctype:ToDo`, `${SITE}:doc:ToDo/T-1`]) {
      const event = unique("joined");
      await waitFor(async () => {
        await publish14(stack, event, { room }, room);
        return payloads(socket, event).length > 0;
      }, { timeoutMs: 5000, everyMs: 100, what: `delivery to ${room}` });
    }
    const calls = stack.frappe.calls.filter((c) => c.path.includes("can_subscribe_doc"));
    assert.ok(calls.some((c) => c.path.endsWith("can_subscribe_doctype") && c.query.doctype === "ToDo" && c.query.sid === ALICE_SID));
    assert.ok(calls.some((c) => c.path.endsWith("can_subscribe_doc") && c.query.docname === "T-1" && c.query.sid === ALICE_SID));
    const secret = unique("secret");
    await publish14(stack, secret, {}, `${SITE}:doc:ToDo/SECRET`);
    await flush(stack, socket);
    assert.deepEqual(payloads(socket, secret), [], "a denied document is not joined");
  });

  test("doc_viewers goes even to a lone viewer, and doc_typers follows doc_typing", async () => {
    const alice = desk14(stack);
    const bob = desk14(stack, { sid: BOB_SID });
    await Promise.all([connected(alice), connected(bob)]);
    alice.emit("doc_open", "ToDo", "T-1");
    await waitFor(() => payloads(alice, "doc_viewers").some((v) => v.users.join() === ALICE),
      { what: "doc_viewers to the lone viewer (Frappe 14 does not suppress it)" });
    await waitFor(() => payloads(alice, "doc_typers").some((v) => v.docname === "T-1" && v.users.length === 0),
      { what: "doc_typers after doc_open" });
    bob.emit("doc_open", "ToDo", "T-1");
    const both = (v) => [...v.users].sort().join() === [ALICE, BOB].join();
    await waitFor(() => payloads(alice, "doc_viewers").some(both) && payloads(bob, "doc_viewers").some(both),
      { what: "doc_viewers with both" });
    bob.emit("doc_typing", "ToDo", "T-1");
    await waitFor(() => payloads(alice, "doc_typers").some((v) => v.users.join() === BOB),
      { what: "doc_typers naming bob" });
    bob.emit("doc_typing_stopped", "ToDo", "T-1");
    await waitFor(() => payloads(alice, "doc_typers").at(-1)?.users.length === 0,
      { what: "doc_typers empty again" });
  });

  test("Frappe 14's refusals: no /<site> namespaces, its own credential texts", async () => {
    assert.equal(await refusal(desk14(stack, { namespace: `/${SITE}` })), "Invalid namespace");
    assert.equal(await refusal(desk14(stack, { sid: null })), "No cookie transmitted.");
    assert.equal(await refusal(desk14(stack, { sid: null, headers: { cookie: "theme=dark" } })), "No sid transmitted.");
    assert.equal(await refusal(desk14(stack, { headers: { origin: "http://evil.example" } })), "Invalid origin");
  });

  test("a Frappe 15 publication (with namespace) reaches the same sockets", async () => {
    const socket = desk14(stack);
    await connected(socket);
    const event = unique("v15shape");
    await stack.publish(event, { ok: 1 }, { site: SITE, room: `user:${ALICE}` });
    await flush(stack, socket);
    assert.deepEqual(payloads(socket, event), [{ ok: 1 }]);
  });
});

// Frappe 13's socket.io-client 2.x speaks Engine.IO 3, which is refused for now (README
// "Frappe 13"): the engine answers it `Unsupported protocol version`.
describe("Frappe 13: socket.io-client 2.x (Engine.IO 3) is refused", () => {
  let stack;
  before(async () => { stack = await startStack({ version: 13 }); });
  after(async () => { await stack?.stop(); });

  test("no Engine.IO 3 session opens, and a 2.x client never connects", async () => {
    const headers = { origin: stack.frappe.url, "x-frappe-site-name": SITE, cookie: `sid=${ALICE_SID}` };
    const base = `http://127.0.0.1:${stack.port}/socket.io/?EIO=3&transport=polling`;
    // No session opens: the answer is an Engine.IO error, which a 2.x client cannot read.
    const open = await fetch(base, { headers, signal: AbortSignal.timeout(5000) });
    const body = await open.text();
    assert.ok(!/^\d+:0\{/.test(body), `an Engine.IO 3 (length-prefixed) open packet: ${body}`);
    // As socket.io answers it: a numeric code.
    assert.equal(open.status, 400);
    assert.deepEqual(JSON.parse(body), { code: 5, message: "Unsupported protocol version" });
    // The 2.x client itself gets an error, never a connection.
    const socket = io2(`http://127.0.0.1:${stack.port}/`, {
      transports: ["polling"], forceNew: true, reconnection: false, extraHeaders: headers,
      transportOptions: { polling: { extraHeaders: headers } },
    });
    stack.sockets.push(socket);
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("neither connect nor error within 8 s")), 8000);
      socket.once("connect", () => { clearTimeout(timer); reject(new Error("a 2.x client connected")); });
      socket.once("connect_error", () => { clearTimeout(timer); resolve(); });
    });
    socket.close();
  });
});
