// Several instances on one bench and one Redis (README "Several instances", issue 20): the same
// binary and configuration, each on its own port, each subscribed to Frappe's `events` and
// delivering to its own sockets.
//
// (1) Exactly once per client: three instances, clients of two sites spread over them on both
//     transports; user, doc, doctype, task and all-sites events each reach every socket meant
//     for it exactly once, whichever instance it is on, and no other.
// (2) Through bench's real nginx, its upstream block replaced by nginx/socketio-upstream.conf's
//     with the three instances, sticky by session id (`hash $arg_sid`, instances run with
//     `--upstream-server I/N`) and by client address (`ip_hash`): websocket, long-polling
//     (every poll of a session reaches its instance, or the session would be unknown) and
//     polling upgraded to websocket, with events all along.
//
// Every wait is bounded; everything listens on loopback; processes are stopped by PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Server, connected, waitFor, SITES, ALICE, ALICE_SID, BOB, BOB_SID, userRoom } from "../../support/harness.mjs";
import { CutProxy } from "../../support/cut-proxy.mjs";
import { NGINX } from "../../support/bench-nginx.mjs";
import { Cluster } from "../../support/cluster.mjs";

const [SITE1, SITE2] = SITES;
const ADMIN_TOKEN = "scale-out-admin-token-0123456789";
const received = (socket, event, tag) =>
  socket.received.filter((r) => r.event === event && r.args[0]?.tag === tag).length;

describe("three instances on one Redis", () => {
  let cluster;
  const sockets = {};

  before(async () => {
    cluster = await Cluster.start({ count: 3, common: { realtime_admin_token: ADMIN_TOKEN } });
    const [a, b, c] = cluster.instances;
    cluster.instances[0].frappe.allow(SITE1, ALICE, "ToDo", "T1");
    cluster.instances[0].frappe.allow(SITE1, BOB, "ToDo", "T1");
    cluster.instances[0].frappe.allow(SITE1, BOB, "ToDo");
    // Alice on every instance of site1 (both transports) and on site2; Bob on two instances.
    sockets.alice0 = await a.connect({ site: SITE1, sid: ALICE_SID, transports: ["websocket"] });
    sockets.alice1 = await b.connect({ site: SITE1, sid: ALICE_SID, transports: ["polling"] });
    sockets.alice2 = await c.connect({ site: SITE1, sid: ALICE_SID, transports: ["websocket"] });
    sockets.bob1 = await b.connect({ site: SITE1, sid: BOB_SID, transports: ["websocket"] });
    sockets.bob2 = await c.connect({ site: SITE1, sid: BOB_SID, transports: ["polling"] });
    sockets.aliceSite2 = await a.connect({ site: SITE2, sid: ALICE_SID, transports: ["websocket"] });
    // Subscriptions on different instances; each is in place once a probe gets through.
    sockets.alice0.emit("doc_subscribe", "ToDo", "T1");
    sockets.bob1.emit("doc_subscribe", "ToDo", "T1");
    sockets.bob2.emit("doctype_subscribe", "ToDo");
    sockets.alice2.emit("task_subscribe", "task-1");
    await a.publishUntilReceived(sockets.alice0, "doc:ToDo/T1");
    await a.publishUntilReceived(sockets.bob1, "doc:ToDo/T1");
    await a.publishUntilReceived(sockets.bob2, "doctype:ToDo");
    await a.publishUntilReceived(sockets.alice2, "task_progress:task-1");
  });
  after(async () => { await cluster?.stop(); });

  test("every event reaches each socket meant for it exactly once, on whichever instance", async () => {
    const publisher = cluster.instances[1];
    await publisher.publish("note", { tag: "user" }, { room: userRoom(ALICE) });
    await publisher.publish("note", { tag: "doc" }, { room: "doc:ToDo/T1" });
    await publisher.publish("note", { tag: "doctype" }, { room: "doctype:ToDo" });
    await publisher.publish("note", { tag: "task" }, { room: "task_progress:task-1" });
    await publisher.publish("note", { tag: "all-sites" }, { site: SITE1 });
    // The bridge delivers in order: once each socket has its last event, it has all before it.
    const all = Object.values(sockets);
    await waitFor(() => all.every((s) => received(s, "note", "all-sites") >= 1),
      { what: "the all-sites event on every socket" });
    const expected = {
      alice0: { user: 1, doc: 1, doctype: 0, task: 0, "all-sites": 1 },
      alice1: { user: 1, doc: 0, doctype: 0, task: 0, "all-sites": 1 },
      alice2: { user: 1, doc: 0, doctype: 0, task: 1, "all-sites": 1 },
      bob1: { user: 0, doc: 1, doctype: 0, task: 0, "all-sites": 1 },
      bob2: { user: 0, doc: 0, doctype: 1, task: 0, "all-sites": 1 },
      aliceSite2: { user: 0, doc: 0, doctype: 0, task: 0, "all-sites": 1 },
    };
    const got = Object.fromEntries(Object.entries(sockets).map(([name, socket]) =>
      [name, Object.fromEntries(Object.keys(expected.alice0).map((tag) => [tag, received(socket, "note", tag)]))]));
    assert.deepEqual(got, expected);
  });

  test("POST /admin/disconnect on one instance disconnects the user on every instance", async () => {
    const [a, b, c] = cluster.instances;
    const tabs = [await a.connect({ site: SITE2, sid: BOB_SID }), await b.connect({ site: SITE2, sid: BOB_SID }),
      await c.connect({ site: SITE2, sid: BOB_SID, transports: ["polling"] })];
    const gone = tabs.map((socket) => new Promise((resolve) => socket.once("disconnect", resolve)));
    const response = await fetch(`http://127.0.0.1:${b.port}/admin/disconnect?site=${SITE2}&user=${encodeURIComponent(BOB)}`,
      { method: "POST", headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(5000) });
    assert.deepEqual(await response.json(), { disconnected: 1, instances_told: true });
    const reasons = await Promise.race([Promise.all(gone),
      new Promise((_, reject) => setTimeout(() => reject(new Error("not every tab was disconnected")), 5000))]);
    assert.deepEqual(reasons, ["io server disconnect", "io server disconnect", "io server disconnect"]);
  });

  test("each instance serves its own sockets: the status of each counts only them", async () => {
    const counts = await Promise.all(cluster.instances.map(async (stack) => {
      const status = await (await fetch(`http://127.0.0.1:${stack.port}/status.json`)).json();
      return status.sites.reduce((sum, site) => sum + site.sockets.websocket + site.sockets.polling, 0);
    }));
    assert.deepEqual(counts, [2, 2, 2]);
  });
});

describe("three instances behind bench's nginx", { skip: !NGINX && "nginx is not installed" }, () => {
  for (const sticky of ["sid", "address"]) {
    describe(`sticky by ${sticky === "sid" ? "session id (hash $arg_sid)" : "client address (ip_hash)"}`, () => {
      let cluster;
      let dir;
      before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "scale-out-"));
        // Clients through nginx carry the Origin nginx makes up: the site is called back here.
        cluster = await Cluster.start({ count: 3, common: (frappe) => ({ realtime_callback_url: frappe.url }) });
        await cluster.startNginx({ site: SITE1, sticky, dir });
      });
      after(async () => {
        await cluster?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      });

      /** A client through nginx, as the Desk opens it (nginx names the site). */
      const viaNginx = (transports) => cluster.instances[0].socket({
        site: SITE1, sid: ALICE_SID, transports, port: cluster.nginx.port, siteHeader: false,
        origin: `http://127.0.0.1:${cluster.nginx.port}`,
      });

      /** Publish `count` events to Alice's room, one at a time, each awaited on `socket`. */
      async function stream(socket, tag, count) {
        for (let i = 0; i < count; i += 1) {
          await cluster.instances[0].publish("note", { tag, i }, { room: userRoom(ALICE) });
          await waitFor(() => received(socket, "note", tag) > i, { what: `${tag} event ${i}` });
        }
        assert.equal(received(socket, "note", tag), count, "each exactly once");
        assert.ok(socket.connected, "the session was never lost");
      }

      test("websocket", async () => {
        const socket = await connected(viaNginx(["websocket"]));
        await stream(socket, `ws-${sticky}`, 5);
        socket.disconnect();
      });

      test("long-polling: every poll of a session reaches the instance that holds it", async () => {
        const clients = [];
        for (let i = 0; i < 6; i += 1) clients.push(await connected(viaNginx(["polling"])));
        for (const [i, socket] of clients.entries()) await stream(socket, `poll-${sticky}-${i}`, 4);
        const perInstance = await Promise.all(cluster.instances.map(async (stack) => {
          const status = await (await fetch(`http://127.0.0.1:${stack.port}/status.json`)).json();
          return status.sites.find((s) => s.site === SITE1).sockets.polling;
        }));
        assert.equal(perInstance.reduce((a, b) => a + b, 0), 6, `polling sockets per instance: ${perInstance}`);
        if (sticky === "sid") {
          // Handshakes carry no sid yet, so nginx spreads them round-robin.
          assert.ok(perInstance.filter((n) => n > 0).length >= 2, `spread: ${perInstance}`);
        }
        for (const socket of clients) socket.disconnect();
      });

      test("polling upgraded to websocket, with events all along", async () => {
        const socket = await connected(viaNginx(["polling", "websocket"]));
        await stream(socket, `upgrade-before-${sticky}`, 2);
        await waitFor(() => socket.io.engine.transport.name === "websocket", { timeoutMs: 8000, what: "the upgrade" });
        await stream(socket, `upgrade-after-${sticky}`, 3);
        socket.disconnect();
      });
    });
  }
});

describe("shared state across instances (realtime_shared_state: redis)", () => {
  let cluster;
  let alice;
  let bob;
  const DOC_KEY = `frappe_realtime:shared:doc:${SITE1}:ToDo/T1`;
  const viewersSeen = (socket) => socket.received.filter((r) => r.event === "doc_viewers").map((r) => r.args[0].users);
  /** Wait until `socket`'s latest doc_viewers lists `users`. */
  const told = (socket, users, timeoutMs = 5000) => waitFor(
    () => JSON.stringify(viewersSeen(socket).at(-1)) === JSON.stringify(users),
    { timeoutMs, what: `doc_viewers ${JSON.stringify(users)} (seen: ${JSON.stringify(viewersSeen(socket))})` });

  before(async () => {
    cluster = await Cluster.start({ count: 2, common: { realtime_shared_state: "redis" } });
    const [a, b] = cluster.instances;
    a.frappe.allow(SITE1, ALICE, "ToDo", "T1");
    a.frappe.allow(SITE1, BOB, "ToDo", "T1");
    alice = await a.connect({ site: SITE1, sid: ALICE_SID, transports: ["websocket"] });
    bob = await b.connect({ site: SITE1, sid: BOB_SID, transports: ["websocket"] });
  });
  after(async () => { await cluster?.stop(); });

  test("two users on two instances see each other, and who stays when one leaves", async () => {
    const redis = cluster.instances[0].redis.client;
    alice.emit("doc_open", "ToDo", "T1");
    await waitFor(async () => (await redis.zCard(DOC_KEY)) === 1, { what: "Alice's viewing in Redis" });
    bob.emit("doc_open", "ToDo", "T1");
    await told(alice, [ALICE, BOB]);
    await told(bob, [ALICE, BOB]);
    bob.emit("doc_close", "ToDo", "T1");
    await told(alice, [ALICE]);
    bob.emit("doc_open", "ToDo", "T1");
    await told(alice, [ALICE, BOB]);
  });

  /** The instances instance 0's /status.json lists, by their socket counts. */
  const listedInstances = async () => {
    const status = await (await fetch(`http://127.0.0.1:${cluster.instances[0].port}/status.json`)).json();
    return { this: status.this_instance, instances: status.instances.map((i) => ({
      instance: i.instance, websocket: i.sites.reduce((n, site) => n + site.websocket, 0),
      users: i.sites.reduce((n, site) => n + site.users_online, 0) })) };
  };

  test("each instance's status page lists every instance with what it serves", async () => {
    const listed = await waitFor(async () => {
      const seen = await listedInstances();
      return seen.instances.length === 2 && seen.instances.every((i) => i.websocket === 1) && seen;
    }, { timeoutMs: 8000, what: "both instances on the status page" });
    assert.ok(listed.instances.some((i) => i.instance === listed.this), "this instance is among them");
    assert.deepEqual(listed.instances.map((i) => i.users), [1, 1]);
    const page = await (await fetch(`http://127.0.0.1:${cluster.instances[1].port}/status`)).text();
    assert.match(page, /<h2>Instances<\/h2>/);
    assert.equal((page.match(/<tr data-instance=/g) ?? []).length, 2);
    // Who is connected to the site anywhere: Alice on one instance, Bob on the other.
    const row = new RegExp(`<tr data-bench-site="${SITE1}">.*?</tr>`).exec(page)?.[0] ?? "";
    assert.match(row, new RegExp(`2: ${ALICE}, ${BOB}`), row);
  });

  test("an instance killed with SIGKILL: its viewers are gone for the others within 8 s", async (t) => {
    const victim = cluster.instances[1].server;
    const killedAt = Date.now();
    victim.proc.kill("SIGKILL");
    await victim.exited;
    await told(alice, [ALICE], 12_000);
    const after = Date.now() - killedAt;
    t.diagnostic(`Bob's viewing was cleared ${after} ms after his instance was killed`);
    // 6 s of expiry after its last renewal (at most 2 s before the kill) and up to a 2 s
    // heartbeat: 8 s, and a second for the machine.
    assert.ok(after <= 9_000, `Bob's viewing outlived his instance by ${after} ms`);
    assert.equal(await cluster.instances[0].redis.client.zCard(DOC_KEY), 1, "only Alice's socket is left");
    const listed = await listedInstances();
    assert.deepEqual(listed.instances.map((i) => i.instance), [listed.this], "the status lists only the live instance");
  });
});

// Recovery's Redis store with several instances that do not share state (so not the bench's
// shared log, scale-out-recovery.test.mjs): each numbers the publications it logs itself, so
// each keeps its own log and sessions (under its port), and a restarted instance recovers its
// own clients from them, not from another instance's.
describe("realtime_recovery_store redis with two instances", () => {
  let cluster;
  let proxy;
  const BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
  before(async () => {
    cluster = await Cluster.start({ count: 2,
      common: { realtime_recovery_store: "redis" } });
    proxy = await CutProxy.start(cluster.instances[0].port);
  });
  after(async () => {
    await cluster?.stop();
    await proxy?.close();
  });

  test("each instance keeps its own store, and a restarted one recovers its clients from it", { timeout: 60000 }, async () => {
    const [a, b] = cluster.instances;
    a.frappe.allow(SITE1, ALICE, "ToDo", "R1");
    // Alice's browser on instance A (through the proxy, so the test can hold its return);
    // Bob on B, so B logs the same publications under its own offsets.
    const socket = a.socket({ sid: ALICE_SID, transports: ["websocket"], port: proxy.port, reconnection: true,
      reconnectionDelay: 100, reconnectionDelayMax: 300, headers: { "User-Agent": BROWSER } });
    await connected(socket);
    socket.emit("doc_subscribe", "ToDo", "R1");
    await a.publishUntilReceived(socket, "doc:ToDo/R1");
    const bob = await b.connect({ sid: BOB_SID, transports: ["websocket"] });
    const id = socket.id;
    // An event for every socket of the site: both instances log it, each in its own log.
    await a.publish("note", { tag: "everyone" }, { site: SITE1 });
    await waitFor(() => [socket, bob].every((s) => received(s, "note", "everyone") === 1), { what: "the site-wide event" });
    const keys = await waitFor(async () => {
      const found = await a.redis.client.keys("frappe_realtime:recovery:*:log");
      return found.length >= 2 && found;
    }, { what: "both instances' logs in Redis" });
    assert.deepEqual(keys.sort(), [a.port, b.port].sort().map((port) => `frappe_realtime:recovery:port-${port}:/${SITE1}:log`),
      "one log per instance, named by its port");

    // A restarts (SIGTERM, then the same command), Alice held away meanwhile.
    proxy.hold();
    const gone = new Promise((resolve) => socket.once("disconnect", resolve));
    await a.server.stop();
    await gone;
    a.server = await Server.start({ bench: a.bench, port: a.port, args: ["--host", "127.0.0.1", "--upstream-server", "1/2"] });
    await waitFor(() => a.redis.subscribers().then((n) => n >= 2), { timeoutMs: 10000, what: "A subscribed again" });
    for (let seq = 0; seq < 10; seq += 1) await a.publish("missed", { seq, tag: "while-away" }, { room: "doc:ToDo/R1" });
    const back = new Promise((resolve) => socket.once("connect", resolve));
    proxy.release();
    await back;
    assert.equal(socket.recovered, true, "recovered from A's own store");
    assert.equal(socket.id, id);
    await waitFor(() => socket.received.filter((r) => r.event === "missed").length >= 10, { what: "the missed events" });
    await a.flush(socket, { userRoom: userRoom(ALICE) });
    assert.deepEqual(socket.received.filter((r) => r.event === "missed").map((r) => r.args[0].seq),
      [...Array(10).keys()], "each once, in order");
    socket.disconnect();
  });
});
