// Clients that are not the Desk (README "Clients that are not the Desk"): the root namespace
// `/`, handshakes without Origin, the CONNECT auth payload, a site's allow_cors, for Frappe 15
// and 16, directly on the service port. Through bench's nginx and with several socket.io-client
// releases: extensions/clients-nginx.test.mjs. Frappe 13 and 14: protocol/3-6-frappe-13-and-14.test.mjs.
//
// Every wait is bounded; non-receipt is proven with a sentinel published after the event (the
// bridge delivers in order; harness `flush`).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { io } from "socket.io-client";
import {
  startStack, connected, refusal, waitFor, SITES, ALICE, ALICE_SID, BOB, BOB_SID, DAVE,
  DAVE_API_KEY, DAVE_TOKEN, unique, payloads, REFUSAL, USER_INFO_PATH,
} from "../../support/harness.mjs";

const [SITE, OTHER_SITE] = SITES;
const PORTAL = "https://portal.example";

/**
 * The client of a VS Code extension streaming `ai_progress` (issue text, socket.io-client 4.x):
 * the root namespace, the sid in the auth payload and in a Cookie header, no Origin.
 */
function ideClient(stack, { sid = ALICE_SID, transports = ["websocket", "polling"], extra = {} } = {}) {
  const socket = io(`http://127.0.0.1:${stack.port}`, {
    path: "/socket.io",
    transports,
    auth: { sid },
    extraHeaders: { Cookie: `sid=${sid}; system_user=yes` },
    reconnection: true, reconnectionDelay: 1000, reconnectionAttempts: 5,
    forceNew: true,
    ...extra,
  });
  return stack.track(socket);
}

/** A client of any shape on any namespace, with no headers beyond `headers`. */
function client(stack, { namespace = "/", headers = {}, auth, transports = ["websocket"] } = {}) {
  const socket = io(`http://127.0.0.1:${stack.port}${namespace}`, {
    transports, extraHeaders: headers, auth, reconnection: false, forceNew: true, timeout: 8000,
  });
  return stack.track(socket);
}

/** Wait until every socket has the sentinel published after everything before it. */
async function flushAll(stack, sockets, user = ALICE, site = SITE) {
  for (const socket of sockets) await stack.flush(socket, { site, userRoom: `user:${user}` });
}

async function settle(stack, socket, user = ALICE, site = SITE) {
  await stack.publishUntilReceived(socket, `user:${user}`, { site, event: unique("settle") });
}

function writeSiteConfig(stack, site, config) {
  fs.writeFileSync(path.join(stack.bench, "sites", site, "site_config.json"), JSON.stringify(config));
}

for (const version of [15, 16]) {
  describe(`Frappe ${version}: the root namespace and clients without Origin, configured web server`, () => {
    let stack;
    before(async () => {
      stack = await startStack({ version, common: (frappe) => ({ default_site: SITE, realtime_callback_url: frappe.url }) });
    });
    after(async () => { await stack?.stop(); });

    for (const transports of [["websocket", "polling"], ["polling"]]) {
      test(`the IDE extension's client (${transports[0]}) is served as the default site and gets its user's events`, async () => {
        const socket = ideClient(stack, { transports });
        await connected(socket);
        assert.equal(socket.io.engine.transport.name, transports[0]);
        await settle(stack, socket);
        const steps = [{ step: 1, of: 3 }, { step: 2, of: 3 }, { step: 3, of: 3 }];
        for (const step of steps) await stack.publish("ai_progress", step, { site: SITE, room: `user:${ALICE}` });
        await stack.publish("msgprint", "done", { site: SITE, room: `user:${ALICE}` });
        await stack.publish("eval_js", "console.log(1)", { site: SITE, room: `user:${ALICE}` });
        await stack.flush(socket, { site: SITE, userRoom: `user:${ALICE}` });
        assert.deepEqual(payloads(socket, "ai_progress"), steps, "every step once, in order");
        assert.deepEqual(payloads(socket, "msgprint"), ["done"]);
        assert.deepEqual(payloads(socket, "eval_js"), ["console.log(1)"]);
        // The other site's events for the same user do not reach it.
        await stack.publish("ai_progress", { other: true }, { site: OTHER_SITE, room: `user:${ALICE}` });
        await stack.flush(socket, { site: SITE, userRoom: `user:${ALICE}` });
        assert.equal(payloads(socket, "ai_progress").length, 3);
        // The callback went to the configured web server, naming the site.
        const call = stack.frappe.calls.filter((c) => c.path === USER_INFO_PATH).at(-1);
        assert.equal(call.headers["x-frappe-site-name"], SITE);
        socket.disconnect();
      });
    }

    test("X-Frappe-Site-Name picks the site on `/`; a site the bench lacks is Invalid namespace", async () => {
      const other = client(stack, { headers: { "x-frappe-site-name": OTHER_SITE, cookie: `sid=${ALICE_SID}` } });
      await connected(other);
      await settle(stack, other, ALICE, OTHER_SITE);
      const unknown = client(stack, { headers: { "x-frappe-site-name": "nosuch.local", cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(unknown), "Invalid namespace");
    });

    test("sockets on `/` and on `/<site>` of one site each get every event exactly once", async () => {
      const root = client(stack, { headers: { cookie: `sid=${ALICE_SID}` } });
      const own = client(stack, { namespace: `/${SITE}`, headers: { origin: stack.frappe.url, "x-frappe-site-name": SITE, cookie: `sid=${ALICE_SID}` } });
      await Promise.all([connected(root), connected(own)]);
      await Promise.all([settle(stack, root), settle(stack, own)]);
      stack.frappe.allow(SITE, ALICE, "ToDo");
      stack.frappe.allow(SITE, ALICE, "ToDo", "T-1");
      const task = unique("task");
      for (const socket of [root, own]) {
        socket.emit("doctype_subscribe", "ToDo");
        socket.emit("doc_subscribe", "ToDo", "T-1");
        socket.emit("task_subscribe", task);
        await stack.publishUntilReceived(socket, "doctype:ToDo", { site: SITE, event: unique("joined") });
        await stack.publishUntilReceived(socket, "doc:ToDo/T-1", { site: SITE, event: unique("joined") });
        await stack.publishUntilReceived(socket, `task_progress:${task}`, { site: SITE, event: unique("joined") });
      }
      const rooms = [`user:${ALICE}`, "all", "website", "doctype:ToDo", "doc:ToDo/T-1", `task_progress:${task}`];
      const event = unique("once");
      for (const [i, room] of rooms.entries()) await stack.publish(event, { i, room }, { site: SITE, room });
      await stack.redis.publish({ event, message: { i: rooms.length, room: "every site" } });
      await flushAll(stack, [root, own]);
      const expected = [...rooms, "every site"].map((room, i) => ({ i, room }));
      assert.deepEqual(payloads(root, event), expected, "root namespace: once each, in order");
      assert.deepEqual(payloads(own, event), expected, "site namespace: once each, in order");
    });

    test("doc_viewers lists the viewers on `/` and on `/<site>` together", async () => {
      stack.frappe.allow(SITE, ALICE, "Note", "N-1");
      stack.frappe.allow(SITE, BOB, "Note", "N-1");
      const alice = client(stack, { headers: { cookie: `sid=${ALICE_SID}` } });
      const bob = client(stack, { namespace: `/${SITE}`, headers: { origin: stack.frappe.url, "x-frappe-site-name": SITE, cookie: `sid=${BOB_SID}` } });
      await Promise.all([connected(alice), connected(bob)]);
      alice.emit("doc_open", "Note", "N-1");
      bob.emit("doc_open", "Note", "N-1");
      const both = (socket) => payloads(socket, "doc_viewers").some((v) => v.docname === "N-1"
        && [...v.users].sort().join() === [ALICE, BOB].sort().join());
      await waitFor(() => both(alice) && both(bob), { what: "doc_viewers with both users on both sockets" });
      // Bob leaves from his namespace: Alice, on `/`, is told she is alone.
      bob.disconnect();
      await waitFor(() => payloads(alice, "doc_viewers").at(-1)?.users?.join() === ALICE,
        { what: "doc_viewers without bob on alice's socket" });
      alice.disconnect();
    });

    test("the auth payload is the credential when the headers carry none: sid, token, authorization", async () => {
      const bySid = client(stack, { auth: { sid: BOB_SID } });
      const byToken = client(stack, { auth: { token: DAVE_API_KEY } });
      const byHeader = client(stack, { auth: { authorization: DAVE_TOKEN } });
      await Promise.all([connected(bySid), connected(byToken), connected(byHeader)]);
      await settle(stack, bySid, BOB);
      await settle(stack, byToken, DAVE);
      await settle(stack, byHeader, DAVE);
      const wrong = client(stack, { auth: { token: "key-dave:wrong" } });
      assert.match(await refusal(wrong), /^Unauthorized: /);
      const none = client(stack, { auth: { pid: "x", offset: "1" } });
      assert.equal(await refusal(none), "Missing cookie and authorization header. Either one needed for authentication.");
    });

    test("no Origin is accepted; a mismatching Origin is still refused", async () => {
      const program = client(stack, { namespace: `/${SITE}`, headers: { "x-frappe-site-name": SITE, cookie: `sid=${ALICE_SID}` } });
      await connected(program);
      const foreign = client(stack, { namespace: `/${SITE}`, headers: { "x-frappe-site-name": SITE, origin: "https://evil.example", cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(foreign), "Invalid origin");
      const foreignRoot = client(stack, { headers: { origin: "https://evil.example", cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(foreignRoot), "Invalid origin", "default_site (Host is 127.0.0.1) names the site");
      const foreignRootNamed = client(stack, { headers: { "x-frappe-site-name": SITE, origin: "https://evil.example", cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(foreignRootNamed), "Invalid origin");
    });

    test("a site's allow_cors admits the origins it lists, with credentials; edits apply without a restart", async () => {
      const fromPortal = () => client(stack, {
        namespace: `/${OTHER_SITE}`, transports: ["polling", "websocket"],
        headers: { "x-frappe-site-name": OTHER_SITE, origin: PORTAL, cookie: `sid=${ALICE_SID}` },
      });
      assert.equal(await refusal(fromPortal()), "Invalid origin");
      writeSiteConfig(stack, OTHER_SITE, { allow_cors: [PORTAL] });
      const admitted = await waitFor(async () => {
        const socket = fromPortal();
        try {
          await connected(socket, 3000);
          return socket;
        } catch {
          socket.disconnect();
          return null;
        }
      }, { timeoutMs: 8000, everyMs: 100, what: "the new allow_cors to apply" });
      await settle(stack, admitted, ALICE, OTHER_SITE);
      // Straight to the service, no proxy naming the site: the Host does, not the portal's Origin.
      const direct = client(stack, {
        namespace: `/${OTHER_SITE}`,
        headers: { host: `${OTHER_SITE}:${stack.port}`, origin: PORTAL, cookie: `sid=${ALICE_SID}` },
      });
      await connected(direct);
      await settle(stack, direct, ALICE, OTHER_SITE);
      // The site is called back at the configured web server, never at the portal.
      const call = stack.frappe.calls.filter((c) => c.path === USER_INFO_PATH).at(-1);
      assert.equal(call.headers["x-frappe-site-name"], OTHER_SITE);
      // Other origins stay refused, and the other site lists nothing.
      const evil = client(stack, { namespace: `/${OTHER_SITE}`, headers: { "x-frappe-site-name": OTHER_SITE, origin: "https://evil.example", cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(evil), "Invalid origin");
      const elsewhere = client(stack, { namespace: `/${SITE}`, headers: { "x-frappe-site-name": SITE, origin: PORTAL, cookie: `sid=${ALICE_SID}` } });
      assert.equal(await refusal(elsewhere), "Invalid origin");
      // The CORS answer to the portal's polling request allows it with credentials.
      const res = await fetch(`http://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=polling`, {
        headers: { origin: PORTAL, "x-frappe-site-name": OTHER_SITE },
      });
      assert.equal(res.headers.get("access-control-allow-origin"), PORTAL);
      assert.equal(res.headers.get("access-control-allow-credentials"), "true");
      writeSiteConfig(stack, OTHER_SITE, {});
    });
  });
}

describe("clients without Origin on a bench with no web server configured", () => {
  let stack;
  before(async () => { stack = await startStack({ version: 16 }); });
  after(async () => { await stack?.stop(); });

  test("are refused with a message that names the keys to set, before any call to Frappe", async () => {
    const before = stack.frappe.calls.length;
    const socket = client(stack, { headers: { "x-frappe-site-name": SITE, cookie: `sid=${ALICE_SID}` } });
    assert.equal(await refusal(socket), REFUSAL.noCallbackTarget);
    assert.equal(stack.frappe.calls.length, before);
    assert.equal(await stack.metric("frappe_realtime_handshakes_total", { site: SITE, outcome: "no_callback_target" }), 1);
  });

  test("the Desk (Origin of the site's own) still works as before", async () => {
    const desk = await stack.connect({ sid: ALICE_SID });
    await settle(stack, desk);
  });
});
