// Reliability under faults (docs/reliability.md): Redis killed and restarted under publish load,
// Frappe's web side answering with redirects and broken JSON (protocol §4), and a randomised
// isolation property test (no cross-site, cross-user or permission leaks; protocol §5, §6), with
// some clients cut and recovering in the middle of the publications.
//
// Every wait is bounded. Absence is asserted deterministically: the bridge delivers Redis
// messages to a socket in order, so a sentinel published last and received proves that every
// earlier publication meant for that socket has been delivered (harness `flush`).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createClient } from "redis";
import {
  startStack, waitFor, refusal, nextEvent, Redis, SITES, ALICE, ALICE_SID, GUEST, USER_INFO_PATH,
  userRoom, unique, trackDisconnects,
} from "../../support/harness.mjs";
import { CutProxy } from "../../support/cut-proxy.mjs";
import { Cluster } from "../../support/cluster.mjs";

const [SITE1] = SITES;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Wait until `socket` got `event` whose first argument carries `marker`. */
function receivedMarker(socket, event, marker, timeoutMs = 5000) {
  return waitFor(() => socket.received.some((r) => r.event === event && r.args[0]?.marker === marker),
    { timeoutMs, what: `${event} ${marker}` });
}

/** The value of an unlabelled sample in a Prometheus scrape; 0 when the series is absent. */
async function scrapeValue(port, name) {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3000) });
  assert.equal(response.status, 200, "/metrics answers 200");
  const text = await response.text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{}`));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}

async function readyStatus(port) {
  const response = await fetch(`http://127.0.0.1:${port}/ready`, { signal: AbortSignal.timeout(2000) });
  await response.text();
  return response.status;
}

/** The first few items of a list, for failure messages. */
function preview(list, n = 20) {
  return list.length > n ? `${list.slice(0, n).join(", ")}, … (${list.length} in all)` : list.join(", ");
}

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Redis killed (SIGKILL) and restarted 10 times while events are being published
// ---------------------------------------------------------------------------------------------

/**
 * Publish numbered events to `room` every `everyMs` on a connection of its own until stopped
 * (bounded in count and time). PUBLISH answers how many subscribers received the message: the
 * numbers for which it answered ≥ 1 reached our server while its subscription was up. The
 * offline queue is off, so a publish while Redis is down fails at once instead of piling up.
 * With several instances, a number counts as reached when `subscribers` (all of them) got it.
 *
 * One subtlety: Redis queues the publisher's reply and the subscribers' copies in the same
 * event-loop pass but writes the reply first (its pending-write list is LIFO), so a SIGKILL
 * landing just after the reply can lose a copy the reply counted. A reply to the *next* PUBLISH
 * proves that pass completed; `delivered()` is therefore the acknowledged numbers whose
 * successor was answered too (plus the very last one, after which Redis was not killed).
 */
function startPublisher(url, { site, room, run, subscribers = 1, everyMs = 20, maxCount = 20000, maxMs = 120000 }) {
  const client = createClient({
    url,
    disableOfflineQueue: true,
    socket: { connectTimeout: 1000, reconnectStrategy: (retries) => (retries > 1000 ? new Error("gave up") : 20) },
  });
  client.on("error", () => {});
  const state = { sent: 0, acked: [], ackedAt: new Map(), answered: new Set(), failed: 0, stopped: false };
  const deadline = Date.now() + maxMs;
  state.done = (async () => {
    await client.connect();
    for (let n = 0; !state.stopped && n < maxCount && Date.now() < deadline; n += 1) {
      const body = JSON.stringify({ event: "seq", message: { run, n }, namespace: site, room });
      state.sent += 1;
      try {
        const receivers = await client.publish("events", body);
        state.answered.add(n);
        if (receivers >= subscribers) {
          state.acked.push(n);
          state.ackedAt.set(n, Date.now());
        }
      } catch {
        state.failed += 1; // Redis down or killed mid-command: this one may or may not have arrived
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
    await client.disconnect().catch(() => {});
  })();
  state.stop = async () => { state.stopped = true; await state.done; };
  state.delivered = () => state.acked.filter((n) => state.answered.has(n + 1) || n === state.sent - 1);
  return state;
}

// Once with one instance, once with three on the same Redis (issue 20): a websocket and a
// polling client on each instance, and an event counts as acknowledged when every instance got it.
for (const count of [1, 3]) describe(`Redis killed and restarted 10 times under publish load, ${count} instance${count > 1 ? "s" : ""}`, () => {
  const KILLS = 10;
  const RESUBSCRIBE_LIMIT_MS = 1500;
  let stack;
  let cluster;
  /** Every instance's stack (they share one Redis). */
  let instances;
  before(async () => {
    if (count === 1) {
      stack = await startStack({ version: 15 });
      instances = [stack];
    } else {
      cluster = await Cluster.start({ count, version: 15 });
      instances = cluster.instances;
      stack = instances[0];
    }
  });
  after(async () => { await (cluster ?? stack)?.stop(); });

  test("clients stay connected, every acknowledged event reaches every client in order, the subscription is back fast", async (t) => {
    const serverExits = [];
    for (const instance of instances) {
      instance.server.proc.once("exit", (code, signal) => serverExits.push({ port: instance.port, code, signal }));
    }
    const clients = {};
    const disconnects = {};
    for (const [i, instance] of instances.entries()) {
      for (const transport of ["websocket", "polling"]) {
        const name = count > 1 ? `${transport}@${i}` : transport;
        clients[name] = await instance.connect({ sid: ALICE_SID, transports: [transport] });
        disconnects[name] = trackDisconnects(clients[name]);
      }
    }
    const reconnectsBefore = await Promise.all(instances.map((instance) =>
      scrapeValue(instance.port, "frappe_realtime_redis_reconnects_total")));

    const run = unique("kill-run");
    const publisher = startPublisher(stack.redis.url, { site: SITE1, room: userRoom(ALICE), run, subscribers: count });
    const resubscribeMs = [];
    const killedAt = [];
    const readyDuringOutage = [];
    try {
      /** Wait until `count` more publications have been acknowledged by a subscriber. */
      const ackedMore = (count) => {
        const from = publisher.acked.length;
        return waitFor(() => publisher.acked.length >= from + count,
          { timeoutMs: 5000, everyMs: 10, what: `${count} acknowledged publications` });
      };
      await ackedMore(10);

      for (let kill = 1; kill <= KILLS; kill += 1) {
        const port = stack.redis.port;
        const logFrom = stack.server.output.length;
        killedAt.push(Date.now());
        await stack.redis.stop(); // SIGKILL
        if (kill === 1) {
          // While Redis is down the server is not ready: poll /ready until it says so.
          await waitFor(async () => {
            const status = await readyStatus(stack.port).catch(() => 0);
            readyDuringOutage.push(status);
            return status === 503;
          }, { timeoutMs: 3000, everyMs: 20, what: "/ready to answer 503 while Redis is down" });
        } else {
          // Outages of varying length (fault injection, not synchronisation): 100–500 ms.
          await new Promise((r) => setTimeout(r, 100 + (kill % 5) * 100));
        }
        const redis = await Redis.start({ port }); // resolves as soon as it answers PING
        for (const instance of instances) instance.redis = redis;
        const answered = Date.now();
        await waitFor(() => stack.redis.subscribers().then((n) => n >= count).catch(() => false),
          { timeoutMs: 5000, everyMs: 10, what: `the server to re-subscribe after kill ${kill}` })
          .catch((err) => {
            err.message += `\nserver log since the kill:\n${stack.server.output.slice(logFrom)}`;
            throw err;
          });
        resubscribeMs.push(Date.now() - answered);
        // Events flow again before the next kill (also proves each up-period was exercised).
        await ackedMore(10);
      }
      await ackedMore(10);
    } finally {
      await publisher.stop();
    }
    const required = publisher.delivered();
    t.diagnostic(`published ${publisher.sent}, acknowledged ${publisher.acked.length} (${publisher.acked.length - required.length}`
      + ` of them answered just before a kill, not required), failed ${publisher.failed}`);
    t.diagnostic(`resubscribe times after PING (ms): ${resubscribeMs.join(", ")}; max ${Math.max(...resubscribeMs)}`);

    assert.ok(required.length >= KILLS * 10, `every up-period had acknowledged publications (${required.length})`);
    // Everything required has been delivered once the last of them has arrived (in order).
    const last = required.at(-1);
    const seqs = (socket) => socket.received.filter((r) => r.event === "seq" && r.args[0]?.run === run)
      .map((r) => r.args[0].n);
    for (const [name, socket] of Object.entries(clients)) {
      await waitFor(() => seqs(socket).includes(last),
        { timeoutMs: 10000, what: `the ${name} client to receive event ${last}` });
    }

    assert.deepEqual(serverExits, [], "no server process ever exited");
    for (const instance of instances) assert.equal(instance.server.proc.exitCode, null, "every server is still running");
    assert.deepEqual(disconnects, Object.fromEntries(Object.keys(clients).map((name) => [name, []])),
      "no client ever disconnected");
    assert.ok(Object.values(clients).every((socket) => socket.connected));

    // Each acknowledged number missing from a client, with when it was acknowledged relative
    // to the next kill, and whether the other client got it.
    const got = Object.fromEntries(Object.entries(clients).map(([name, socket]) => [name, seqs(socket)]));
    const problems = [];
    for (const [name, list] of Object.entries(got)) {
      const outOfOrder = list.filter((n, i) => i > 0 && n <= list[i - 1]);
      if (outOfOrder.length) problems.push(`${name}: out of order or twice: ${preview(outOfOrder)}`);
      const others = Object.keys(got).filter((k) => k !== name);
      const missing = required.filter((n) => !list.includes(n)).map((n) => {
        const at = publisher.ackedAt.get(n);
        const nextKill = killedAt.findIndex((k) => k >= at);
        const when = nextKill < 0 ? "after the last kill" : `${killedAt[nextKill] - at} ms before kill ${nextKill + 1}`;
        const withIt = others.filter((other) => got[other].includes(n));
        return `${n} (acknowledged ${when}; received by ${withIt.length} of the ${others.length} other clients)`;
      });
      if (missing.length) {
        problems.push(`${name} missed ${missing.length} of ${required.length} acknowledged events: ${preview(missing)}`);
      }
    }
    if (problems.length) {
      const counters = [];
      for (const name of ["frappe_realtime_redis_messages_received_total", "frappe_realtime_socket_send_dropped_total"]) {
        counters.push(`${name} ${await scrapeValue(stack.port, name)}`);
      }
      problems.push(...counters);
    }
    assert.deepEqual(problems, [], problems.join("\n"));

    assert.equal(resubscribeMs.length, KILLS);
    const slow = resubscribeMs.filter((ms) => ms > RESUBSCRIBE_LIMIT_MS);
    assert.deepEqual(slow, [],
      `re-subscribing took more than ${RESUBSCRIBE_LIMIT_MS} ms after Redis answered PING (all: ${resubscribeMs.join(", ")})`);

    for (const [i, instance] of instances.entries()) {
      const reconnectsAfter = await scrapeValue(instance.port, "frappe_realtime_redis_reconnects_total");
      assert.equal(reconnectsAfter - reconnectsBefore[i], KILLS,
        `instance ${i}: frappe_realtime_redis_reconnects_total went from ${reconnectsBefore[i]} to ${reconnectsAfter}`);
    }
    assert.ok(readyDuringOutage.includes(503), `/ready during the outage answered ${readyDuringOutage.join(", ")}`);
    assert.equal(await readyStatus(stack.port), 200, "/ready answers 200 once subscribed again");
  });
});

// ---------------------------------------------------------------------------------------------
// 2. Frappe's web side misbehaving: redirects, redirect loops, broken JSON (protocol §4.2)
// ---------------------------------------------------------------------------------------------


/**
 * A tiny stand-in for the Frappe web server at `realtime_callback_url`, whose get_user_info
 * answer is switched by `mode`: "ok", "redirect" (302 to another path that answers), "loop"
 * (two paths redirecting to each other), "malformed" (`{"message":`). It vouches for sid-alice
 * (cookie on v16, query on v15) and nobody else.
 */
async function startCallbackServer() {
  const state = { mode: "ok", hits: [] };
  const userInfo = (req, url, res) => {
    const cookieSid = /(?:^|;\s*)sid=([^;]*)/.exec(req.headers.cookie ?? "")?.[1];
    const sid = url.searchParams.get("sid") ?? cookieSid;
    const body = sid === ALICE_SID
      ? { message: { user: ALICE, user_type: "System User", installed_apps: ["frappe"] } }
      : { message: { user: "Guest", user_type: "Website User", installed_apps: ["frappe"] } };
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  const redirect = (res, location) => {
    res.writeHead(302, { location, "content-type": "text/html" });
    res.end("<a>moved</a>");
  };
  state.server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    state.hits.push(url.pathname);
    if (url.pathname === USER_INFO_PATH) {
      switch (state.mode) {
        case "ok": return userInfo(req, url, res);
        case "redirect": return redirect(res, `/moved/get_user_info${url.search}`);
        case "loop": return redirect(res, `/loop/a${url.search}`);
        case "malformed":
          res.writeHead(200, { "content-type": "application/json" });
          return res.end('{"message":');
      }
    }
    if (url.pathname === "/moved/get_user_info") return userInfo(req, url, res);
    if (url.pathname === "/loop/a") return redirect(res, `/loop/b${url.search}`);
    if (url.pathname === "/loop/b") return redirect(res, `${USER_INFO_PATH}${url.search}`);
    res.writeHead(404, { "content-type": "application/json" });
    res.end("{}");
  });
  await new Promise((resolve) => state.server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${state.server.address().port}`;
  state.close = async () => {
    state.server.closeAllConnections?.();
    await new Promise((resolve) => state.server.close(resolve));
  };
  return state;
}

for (const version of [15, 16]) {
  describe(`Frappe ${version}: get_user_info redirects and broken answers (protocol §4.2)`, () => {
    const TIMEOUT_S = 2;
    let stack;
    let web;
    before(async () => {
      web = await startCallbackServer();
      stack = await startStack({ version,
        common: () => ({ realtime_callback_url: web.url, realtime_callback_timeout: TIMEOUT_S }) });
    });
    after(async () => {
      await stack?.stop();
      await web?.close();
    });

    /** A handshake as alice; resolves with the refusal message (or the socket) and the time it took. */
    async function handshake({ expectRefusal }) {
      const started = Date.now();
      const socket = stack.socket({ sid: ALICE_SID });
      const outcome = expectRefusal ? await refusal(socket) : await new Promise((resolve, reject) => {
        socket.once("connect", () => resolve(socket));
        socket.once("connect_error", (err) => reject(new Error(`the handshake was refused: ${err.message}`)));
      });
      return { outcome, elapsed: Date.now() - started };
    }

    /** An accepted alice socket receives an event published to alice's room. */
    async function assertDeliversTo(socket) {
      const marker = unique("served");
      await stack.publish("msgprint", { marker }, { room: userRoom(ALICE) });
      await receivedMarker(socket, "msgprint", marker);
    }

    /** The server still accepts a normal handshake and delivers to it. */
    async function assertStillServes() {
      web.mode = "ok";
      const { outcome: socket } = await handshake({ expectRefusal: false });
      await assertDeliversTo(socket);
      socket.disconnect();
      assert.equal(stack.server.proc.exitCode, null, "the server is still running");
    }

    function assertRefusedInTime({ outcome, elapsed }, what) {
      assert.match(outcome, /^Unauthorized/, `${what}: refusal message`);
      assert.ok(!outcome.includes(ALICE_SID), `${what}: the refusal leaks the sid: ${outcome}`);
      assert.ok(elapsed < TIMEOUT_S * 1000 + 500,
        `${what}: refused after ${elapsed} ms (realtime_callback_timeout ${TIMEOUT_S} s)`);
    }

    test("a 302 to another path is followed: the handshake succeeds as the user", async () => {
      web.mode = "redirect";
      web.hits.length = 0;
      const { outcome: socket } = await handshake({ expectRefusal: false });
      assert.ok(web.hits.includes("/moved/get_user_info"), `the redirect was followed (hits: ${web.hits.join(", ")})`);
      // The credential survived the (same-host) redirect: the socket is alice's, not a Guest's.
      await assertDeliversTo(socket);
      socket.disconnect();
      await assertStillServes();
    });

    test("a redirect loop → Unauthorized within the callback timeout, after a bounded number of requests", async () => {
      web.mode = "loop";
      web.hits.length = 0;
      const result = await handshake({ expectRefusal: true });
      assertRefusedInTime(result, "redirect loop");
      assert.ok(web.hits.length >= 2 && web.hits.length <= 50,
        `the loop was followed a bounded number of times (${web.hits.length} requests)`);
      const settled = web.hits.length;
      await assertStillServes();
      assert.ok(web.hits.length <= settled + 2, "the loop is not still being followed");
    });

    test("malformed JSON (`{\"message\":`) → Unauthorized within the callback timeout", async () => {
      web.mode = "malformed";
      assertRefusedInTime(await handshake({ expectRefusal: true }), "malformed JSON");
      await assertStillServes();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// 3. Isolation property test: random sites, users, user types, permissions and subscriptions;
//    every client receives exactly the publications its site, user and rooms entitle it to
// ---------------------------------------------------------------------------------------------

const DOCTYPES = ["ToDo", "Note", "Sales Invoice", "Task"];
const DOCS = { "ToDo": ["TD-1", "TD-2"], "Note": ["welcome"], "Sales Invoice": ["SINV/0001", "SINV-0002"], "Task": ["TASK 1"] };
const TASKS = ["t-alpha", "t-beta", "t-gamma"];
const USERS = ["u0@example.com", "u1@example.com", "u2@example.com", "u3@example.com"];
const UNSERVED_SITE = "site3.local";
/** Rooms no client can be in (nobody subscribed, nobody opened, nobody is that user). */
const EMPTY_ROOMS = ["user:nobody@example.com", "doctype:Nobody", "doc:ToDo/none", "task_progress:nobody",
  "open_doc:ToDo/TD-1", "doc:ToDo", "doctype:", "user:"];
const CLIENTS = 16;
const PUBLICATIONS = 300;

/** Every room worth publishing to. */
function allRooms() {
  return [
    ...[...USERS, GUEST].map(userRoom), "website", "all",
    ...DOCTYPES.map((dt) => `doctype:${dt}`),
    ...DOCTYPES.flatMap((dt) => DOCS[dt].map((dn) => `doc:${dt}/${dn}`)),
    ...TASKS.map((id) => `task_progress:${id}`),
    ...EMPTY_ROOMS,
  ];
}

/** A random world: sessions, user types and permissions per site, clients and their subscriptions. */
function buildWorld(seed) {
  const random = prng(seed);
  const pick = (list) => list[Math.floor(random() * list.length)];
  const chance = (p) => random() < p;

  const sessions = {}; // site → user → {sid, userType}
  const allowed = new Set(); // `${site}|${user}|${doctype}|${docname}`
  for (const [s, site] of SITES.entries()) {
    sessions[site] = {};
    USERS.forEach((user, u) => {
      sessions[site][user] = { sid: `sid-${seed}-${s}-${u}`, userType: chance(0.5) ? "System User" : "Website User" };
    });
    for (const user of [...USERS, GUEST]) {
      for (const dt of DOCTYPES) {
        if (chance(0.4)) allowed.add(`${site}|${user}|${dt}|`);
        for (const dn of DOCS[dt]) if (chance(0.4)) allowed.add(`${site}|${user}|${dt}|${dn}`);
      }
    }
  }

  const clients = [];
  for (let i = 0; i < CLIENTS; i += 1) {
    const site = pick(SITES);
    const other = SITES.find((s) => s !== site);
    let user;
    let userType;
    let sid;
    if (chance(0.25)) {
      // A Guest: the anonymous cookie, an unknown sid, or another site's valid sid.
      user = GUEST;
      userType = "Website User";
      sid = pick(["Guest", `sid-unknown-${seed}-${i}`, sessions[other][pick(USERS)].sid]);
    } else {
      user = pick(USERS);
      ({ sid, userType } = sessions[site][user]);
    }
    const doctypes = DOCTYPES.filter(() => chance(0.5));
    const docs = DOCTYPES.flatMap((dt) => DOCS[dt].map((dn) => [dt, dn])).filter(() => chance(0.35));
    const tasks = TASKS.filter(() => chance(0.3));
    const transports = pick([["websocket"], ["polling"], undefined]);
    // A websocket client is cut through the proxy and recovers (a polling one would wait for
    // its ping timeout to be noticed).
    const recovers = transports?.[0] === "websocket" && chance(0.5);

    const may = (dt, dn = "") => allowed.has(`${site}|${user}|${dt}|${dn}`);
    const rooms = new Set([userRoom(user), "website"]);
    if (userType === "System User") rooms.add("all");
    const joined = []; // rooms joined by a subscription: each gets a positive probe
    for (const dt of doctypes) if (may(dt)) joined.push(`doctype:${dt}`);
    for (const [dt, dn] of docs) if (may(dt, dn)) joined.push(`doc:${dt}/${dn}`);
    for (const id of tasks) joined.push(`task_progress:${id}`);
    for (const room of joined) rooms.add(room);
    clients.push({ name: `client${i}(${user}@${site}, ${userType}, ${transports?.join("+") ?? "default"})`,
      site, user, userType, sid, doctypes, docs, tasks, transports, recovers, rooms, joined });
  }

  const rooms = allRooms();
  const publications = [];
  for (let id = 0; id < PUBLICATIONS; id += 1) {
    if (chance(0.08)) {
      publications.push({ id, everySite: true });
    } else {
      const site = chance(0.05) ? UNSERVED_SITE : pick(SITES);
      publications.push({ id, site, room: pick(rooms) });
    }
  }
  return { sessions, allowed, clients, publications };
}

/** The model: who must receive a publication. */
function entitled(client, publication) {
  if (publication.everySite) return true;
  return publication.site === client.site && client.rooms.has(publication.room);
}

/** Cut `clients` at the proxy, holding their reconnection, once the server kept each session. */
async function cutAndHold(stack, proxy, clients) {
  if (clients.length === 0) return;
  const kept = () => Promise.all(SITES.map((site) => stack.metric("frappe_realtime_recovery_sessions_kept", { site })))
    .then((counts) => counts.reduce((a, b) => a + b, 0));
  const before = await kept();
  const gone = clients.map((client) => nextEvent(client.socket, "disconnect", 5000));
  proxy.cut({ hold: true });
  await Promise.all(gone);
  await waitFor(async () => (await kept()) >= before + clients.length,
    { timeoutMs: 5000, what: `the server to keep ${clients.length} sessions` });
}

/** Let the held clients back in; resolves once every one is connected again. */
async function release(proxy, clients) {
  const back = clients.map((client) => nextEvent(client.socket, "connect", 15000));
  proxy.release();
  await Promise.all(back);
}

/** Permission calls (anything but get_user_info) the fake Frappe has received. */
function permissionCalls(stack) {
  return stack.frappe.calls.filter((c) => !c.path.endsWith("frappe.realtime.get_user_info"));
}

describe("isolation property: every client gets exactly what its site, user and rooms entitle it to", () => {
  const base = process.env.SEED !== undefined ? Number(process.env.SEED) : Math.floor(Math.random() * 2 ** 31);
  assert.ok(Number.isInteger(base), `SEED must be an integer (got ${process.env.SEED})`);
  const seeds = [base, base + 1, base + 2];

  for (const seed of seeds) {
    const version = seed % 2 === 0 ? 16 : 15;
    test(`seed ${seed} (Frappe ${version}; rerun with SEED=${seed})`, async (t) => {
      t.diagnostic(`seed ${seed}`);
      const world = buildWorld(seed);
      const stack = await startStack({ version });
      let proxy;
      try {
        for (const site of SITES) {
          for (const [user, { sid, userType }] of Object.entries(world.sessions[site])) {
            stack.frappe.addSession(site, sid, user, userType);
          }
        }
        for (const key of world.allowed) {
          const [site, user, doctype, docname] = key.split("|");
          stack.frappe.allow(site, user, doctype, docname);
        }

        // Connect everyone, then subscribe (doctype, doc, task) as a browser would. The
        // recovering clients go through a proxy that cuts them in the middle of the
        // publications (connection state recovery: they must still get exactly their share).
        proxy = await CutProxy.start(stack.port);
        for (const client of world.clients) {
          const through = client.recovers ? { port: proxy.port, reconnection: true, reconnectionDelay: 100,
            reconnectionDelayMax: 300, auth: { recovery: true } } : {};
          client.socket = await stack.connect({ site: client.site, sid: client.sid, transports: client.transports, ...through });
          client.disconnects = trackDisconnects(client.socket);
        }
        let expectedCalls = 0;
        for (const client of world.clients) {
          for (const dt of client.doctypes) client.socket.emit("doctype_subscribe", dt);
          for (const [dt, dn] of client.docs) client.socket.emit("doc_subscribe", dt, dn);
          for (const id of client.tasks) client.socket.emit("task_subscribe", id);
          expectedCalls += client.doctypes.length + client.docs.length;
        }

        // Settle: every permission call was made (a denial can never turn into a join), and each
        // room a subscription joined has delivered a probe to that client.
        await waitFor(() => permissionCalls(stack).length >= expectedCalls,
          { timeoutMs: 10000, what: `${expectedCalls} permission calls` });
        await Promise.all(world.clients.map(async (client) => {
          for (const room of client.joined) {
            await stack.publishUntilReceived(client.socket, room, { site: client.site, timeoutMs: 8000 });
          }
        }));
        assert.equal(permissionCalls(stack).length, expectedCalls, "one permission call per subscription");

        // Publish; a third of the way in, cut the recovering clients and hold them while the
        // next third is published; then flush every client with a sentinel to its user room.
        const recovering = world.clients.filter((client) => client.recovers);
        for (const publication of world.publications) {
          if (publication.id === Math.floor(PUBLICATIONS / 3)) await cutAndHold(stack, proxy, recovering);
          if (publication.id === Math.floor((2 * PUBLICATIONS) / 3)) await release(proxy, recovering);
          const body = { event: "pub", message: { id: publication.id } };
          if (!publication.everySite) Object.assign(body, { namespace: publication.site, room: publication.room });
          await stack.redis.publish(body);
        }
        for (const client of recovering) {
          assert.equal(client.socket.recovered, true, `${client.name} recovered`);
          client.disconnects = client.disconnects.filter((reason) => !/^transport (close|error)$/.test(reason));
        }
        await Promise.all(world.clients.map((client) =>
          stack.flush(client.socket, { site: client.site, userRoom: userRoom(client.user) })));

        // Compare with the model, in publication order.
        const describePub = (id) => {
          const p = world.publications[id];
          return p.everySite ? `#${id} every site` : `#${id} ${p.site} ${p.room}`;
        };
        const problems = [];
        for (const client of world.clients) {
          const expected = world.publications.filter((p) => entitled(client, p)).map((p) => p.id);
          const got = client.socket.received.filter((r) => r.event === "pub").map((r) => r.args[0]?.id);
          if (JSON.stringify(got) === JSON.stringify(expected)) continue;
          const extra = got.filter((id) => !expected.includes(id));
          const missing = expected.filter((id) => !got.includes(id));
          problems.push(`${client.name} rooms [${[...client.rooms].join(", ")}]:`
            + `\n    unexpected: ${preview(extra.map(describePub), 10) || "none"}`
            + `\n    missing: ${preview(missing.map(describePub), 10) || "none"}`
            + (extra.length || missing.length ? "" : "\n    same set, wrong order or duplicates"));
        }
        assert.deepEqual(problems, [], `seed ${seed}: deliveries differ from the model:\n${problems.join("\n")}`);

        const totalDelivered = world.clients.reduce((n, c) => n + c.socket.received.filter((r) => r.event === "pub").length, 0);
        t.diagnostic(`${world.clients.length} clients (${recovering.length} cut and recovered), `
          + `${world.publications.length} publications, ${totalDelivered} deliveries`);
        assert.ok(totalDelivered > 0, "the random world delivered something");
        for (const client of world.clients) {
          assert.deepEqual(client.disconnects, [], `${client.name} was disconnected`);
        }
      } finally {
        await proxy?.close();
        await stack.stop();
      }
    });
  }
});
