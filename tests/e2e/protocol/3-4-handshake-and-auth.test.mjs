// Handshake checks, site resolution, authentication and the get_user_info callback, for
// Frappe 15 and 16 (protocol §3 and §4).
//
// Every wait is bounded (harness `waitFor`, `nextEvent`, `refusal`, `connected`). Non-receipt is
// asserted deterministically: the bridge delivers Redis messages to a socket in order, so
// "publish the forbidden event, then a sentinel to the socket's own user room, wait for the
// sentinel" proves the forbidden event was not delivered (harness `flush`).
//
// Sockets are "settled" after `connect` (an event to their own user room is published until it
// arrives) before single-shot assertions. Node joins the connect-time rooms before the client
// can see `connect`; whether this server does is checked by its own test ("an event published
// the moment `connect` fires…"), so that race does not make unrelated tests flaky.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Manager } from "socket.io-client";
import {
  startStack, freePort, waitFor, nextEvent, connected, refusal, SITES, ALICE, ALICE_SID, BOB,
  BOB_SID, CAROL, CAROL_SID, DAVE, DAVE_TOKEN, USER_INFO, REFUSAL, userRoom, unique,
} from "../../support/harness.mjs";

const [SITE, OTHER_SITE] = SITES;
const SECRET_KEY = "socketio_auth_secret";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const userInfoCalls = (stack) => stack.frappe.callsTo(USER_INFO);

/**
 * Open a handshake that must be refused. Returns the connect_error message and asserts the
 * refusal came alone: no `connect` event, no other event.
 */
async function refusedAlone(stack, options) {
  const socket = stack.socket(options);
  let sawConnect = false;
  socket.on("connect", () => { sawConnect = true; });
  const message = await refusal(socket);
  assert.equal(sawConnect, false, "a refused client must never see `connect`");
  assert.equal(socket.connected, false);
  assert.deepEqual(socket.received, [], "a refused client receives no events");
  return message;
}

/**
 * As `refusedAlone`, and the fake Frappe must not have been asked who the client is: the local
 * checks (§3.3 #1–#4') come before the callback.
 */
async function refusedLocally(stack, options, expected) {
  const before = userInfoCalls(stack).length;
  const message = await refusedAlone(stack, options);
  assert.equal(message, expected);
  assert.equal(userInfoCalls(stack).length, before, "no get_user_info call for a locally refused handshake");
}

/** Wait (bounded) until `socket` gets events of `ownRoom`: its connect-time joins are done. */
function settle(stack, socket, ownRoom, site = SITE) {
  return stack.publishUntilReceived(socket, ownRoom, { site, event: "settle" });
}

/** Connect, settle in `ownRoom` (the user room the socket must be in) and return the socket. */
async function connectAs(stack, options, ownRoom) {
  const socket = await stack.connect(options);
  await settle(stack, socket, ownRoom, options.site ?? SITE);
  return socket;
}

/** As `connectAs`, plus the get_user_info calls the fake Frappe received for this handshake. */
async function connectAndTrace(stack, options, ownRoom) {
  const before = userInfoCalls(stack).length;
  const socket = await stack.connect(options);
  const calls = userInfoCalls(stack).slice(before);
  assert.ok(calls.length >= 1, "an accepted handshake was vouched for by get_user_info");
  await settle(stack, socket, ownRoom, options.site ?? SITE);
  return { socket, calls, last: calls.at(-1) };
}

/** Assert `socket` receives an event published to `room` of `site`. */
async function assertInRoom(stack, socket, room, site = SITE) {
  const event = unique("probe");
  const marker = unique("marker");
  const got = nextEvent(socket, event);
  await stack.publish(event, { marker }, { room, site });
  assert.deepEqual(await got, [{ marker }], `expected delivery to ${room}`);
}

/** Assert `socket` (whose own room is `ownRoom`) does not get an event published to `room`. */
async function assertNotInRoom(stack, socket, room, ownRoom, site = SITE) {
  const event = unique("forbidden");
  await stack.publish(event, { x: 1 }, { room, site });
  await stack.flush(socket, { site, userRoom: ownRoom });
  assert.equal(socket.received.some((r) => r.event === event), false, `${room} must not reach this socket`);
}

/** Cookie pairs of a request header, trimmed. */
const cookiePairs = (header) => (header ?? "").split(";").map((s) => s.trim()).filter(Boolean);

/** A Socket.IO manager (one engine.io session) whose namespaces share the given headers. */
function sharedSession(stack, extraHeaders) {
  const manager = new Manager(`http://127.0.0.1:${stack.port}`, {
    transports: ["polling", "websocket"], extraHeaders, withCredentials: true,
    reconnection: false, timeout: 8000,
  });
  const packets = [];
  manager.on("packet", (packet) => packets.push(packet));
  const open = (nsp) => {
    const socket = manager.socket(nsp);
    socket.received = [];
    socket.onAny((event, ...args) => socket.received.push({ event, args }));
    stack.sockets.push(socket);
    return socket;
  };
  return { open, packets };
}

// ---------------------------------------------------------------------------------------------
// Tests, once per Frappe version
// ---------------------------------------------------------------------------------------------

for (const version of [15, 16]) {
  // Protocol §3.3: the checks, their order and exact texts; a refusal is a lone connect_error and
  // no call to Frappe precedes a local refusal. §3.1: `/` is never a site. §3.2 step 3.
  describe(`Frappe ${version}: handshake refusals (protocol §3.3)`, () => {
    let stack;
    before(async () => { stack = await startStack({ version }); });
    after(async () => { await stack?.stop(); });
    afterEach(() => { if (stack) stack.frappe.fault = null; });

    test("Invalid namespace: a real site's namespace while X-Frappe-Site-Name names the other site", async () => {
      await refusedLocally(stack, { site: OTHER_SITE, namespace: `/${SITE}`, sid: ALICE_SID }, REFUSAL.namespace);
      await refusedLocally(stack, { site: SITE, namespace: `/${OTHER_SITE}`, sid: ALICE_SID }, REFUSAL.namespace);
    });

    test("Invalid namespace: an unknown namespace", async () => {
      await refusedLocally(stack, { site: "nosuch.local", sid: ALICE_SID }, REFUSAL.namespace);
      await refusedLocally(stack, { site: SITE, namespace: "/nosuch.local", sid: ALICE_SID }, REFUSAL.namespace);
    });

    test("Invalid namespace: the root namespace `/` when the headers name no site of this bench", async () => {
      // `/` serves the site the handshake resolves to (tests/e2e/extensions/clients.test.mjs); here none.
      await refusedLocally(stack, { namespace: "/", site: "nosuch.local", sid: ALICE_SID }, REFUSAL.namespace);
      await refusedLocally(stack, { namespace: "/", site: "nosuch.local", authorization: DAVE_TOKEN }, REFUSAL.namespace);
      await refusedLocally(stack, { namespace: "/", sid: ALICE_SID, siteHeader: false }, REFUSAL.namespace);
    });

    test("§3.2 step 3: without X-Frappe-Site-Name or default_site the Origin's host is the site", async () => {
      // Origin is http://127.0.0.1:<port>, so the resolved site is 127.0.0.1, not site1.local.
      await refusedLocally(stack, { siteHeader: false, sid: ALICE_SID }, REFUSAL.namespace);
    });

    test("Invalid origin: Origin host differs from Host", async () => {
      await refusedLocally(stack, { sid: ALICE_SID, origin: "http://evil.example" }, REFUSAL.origin);
      await refusedLocally(stack, { sid: ALICE_SID, origin: `http://${SITE}` }, REFUSAL.origin);
    });

    test("no Origin header at all: not refused as cross-origin, but the site cannot be called back unless configured", async () => {
      // A program's handshake (no Origin) passes the origin check (README: clients without
      // Origin); with no realtime_callback_url or webserver_host here, the refusal names them.
      await refusedLocally(stack, { sid: ALICE_SID, headers: { origin: undefined } }, REFUSAL.noCallbackTarget);
      await refusedLocally(stack, { authorization: DAVE_TOKEN, headers: { origin: undefined } }, REFUSAL.noCallbackTarget);
    });

    test("Missing cookie and authorization header", async () => {
      await refusedLocally(stack, {}, REFUSAL.missing);
    });

    test("No authentication method: a cookie without sid", async () => {
      await refusedLocally(stack, { headers: { cookie: "theme=dark" } }, REFUSAL.noMethod);
      await refusedLocally(stack, { headers: { cookie: "theme=dark; full_name=Jane%20Doe" } }, REFUSAL.noMethod);
    });

    test("checks run in protocol §3.3 order: namespace, origin, credentials", async () => {
      // Everything wrong → the namespace check speaks first.
      await refusedLocally(stack,
        { site: OTHER_SITE, namespace: `/${SITE}`, origin: "http://evil.example" }, REFUSAL.namespace);
      // Namespace right, origin and credentials wrong → origin.
      await refusedLocally(stack, { origin: "http://evil.example" }, REFUSAL.origin);
      // Without an Origin there is no origin to get wrong: the credentials speak.
      await refusedLocally(stack, { headers: { origin: undefined, cookie: "theme=dark" } }, REFUSAL.noMethod);
      // Only the credentials wrong.
      await refusedLocally(stack, { headers: { cookie: "theme=dark" } }, REFUSAL.noMethod);
    });

    test("after Invalid namespace nothing is attached in that namespace (Node defect not copied)", async () => {
      // One engine.io session whose headers name OTHER_SITE, with valid credentials. The CONNECT
      // to OTHER_SITE is accepted; the CONNECT to SITE is refused. Had the server attached the
      // refused socket anyway (Node's defect, §3.3), it would be in SITE's `user:alice` room and
      // the event below would reach this session in SITE's namespace.
      const session = sharedSession(stack, {
        origin: stack.frappe.url, "x-frappe-site-name": OTHER_SITE, cookie: `sid=${ALICE_SID}`,
      });
      const accepted = session.open(`/${OTHER_SITE}`);
      await connected(accepted);
      await settle(stack, accepted, userRoom(ALICE), OTHER_SITE);
      const before = userInfoCalls(stack).length;
      const refused = session.open(`/${SITE}`);
      assert.equal(await refusal(refused), REFUSAL.namespace);
      assert.equal(userInfoCalls(stack).length, before, "no get_user_info for the refused namespace");
      const event = unique("leak");
      await stack.publish(event, { x: 1 }, { site: SITE, room: userRoom(ALICE) });
      await stack.publish(event, { x: 1 }, { site: SITE, room: "website" });
      await stack.flush(accepted, { site: OTHER_SITE, userRoom: userRoom(ALICE) });
      const leaked = session.packets.filter((p) => p.nsp === `/${SITE}` && p.type !== 4 /* CONNECT_ERROR */);
      assert.deepEqual(leaked, [], "no packet of the refused namespace may follow its CONNECT_ERROR");
      assert.equal(accepted.received.some((r) => r.event === event), false);
    });

    if (version === 16) {
      test("Unauthorized when the site answers {} even after re-reading the secret (exactly one retry)", async () => {
        stack.frappe.fault = { status: 200, body: '{"message": {}}' };
        const before = userInfoCalls(stack).length;
        const message = await refusedAlone(stack, { sid: ALICE_SID });
        assert.match(message, /^Unauthorized/);
        assert.equal(userInfoCalls(stack).length - before, 2, "one call, then one retry after {} (§4.4)");
      });
    }
  });

  // Protocol §3.2: X-Frappe-Site-Name decides; default_site applies to localhost/127.0.0.1 clients
  // without that header, from common_site_config.json or FRAPPE_SITE.
  describe(`Frappe ${version}: site resolution (protocol §3.2)`, () => {
    describe("default_site in common_site_config.json", () => {
      let stack;
      before(async () => { stack = await startStack({ version, common: { default_site: OTHER_SITE } }); });
      after(async () => { await stack?.stop(); });

      test("X-Frappe-Site-Name wins over default_site", async () => {
        const { socket, last } = await connectAndTrace(stack, { site: SITE, sid: ALICE_SID }, userRoom(ALICE));
        assert.equal(last.headers["x-frappe-site-name"], SITE, "the callback names the resolved site");
        await assertInRoom(stack, socket, userRoom(ALICE), SITE);
        await refusedLocally(stack, { site: SITE, namespace: `/${OTHER_SITE}`, sid: ALICE_SID }, REFUSAL.namespace);
      });

      test("X-Frappe-Site-Name is reduced to its hostname (scheme and port stripped)", async () => {
        const socket = await connectAs(stack, {
          site: SITE, sid: ALICE_SID, headers: { "x-frappe-site-name": `https://${SITE}:8443` },
        }, userRoom(ALICE));
        await assertInRoom(stack, socket, userRoom(ALICE), SITE);
      });

      test("default_site is used when Host is 127.0.0.1 and there is no X-Frappe-Site-Name", async () => {
        const { socket, last } = await connectAndTrace(stack,
          { site: OTHER_SITE, siteHeader: false, sid: ALICE_SID }, userRoom(ALICE));
        assert.equal(last.site, OTHER_SITE, "the fake Frappe saw the callback for default_site");
        await assertInRoom(stack, socket, userRoom(ALICE), OTHER_SITE);
        await refusedLocally(stack, { site: SITE, siteHeader: false, sid: ALICE_SID }, REFUSAL.namespace);
      });
    });

    describe("default_site from the FRAPPE_SITE environment variable", () => {
      let stack;
      before(async () => { stack = await startStack({ version, env: { FRAPPE_SITE: OTHER_SITE } }); });
      after(async () => { await stack?.stop(); });

      test("FRAPPE_SITE is used when Host is 127.0.0.1 and there is no X-Frappe-Site-Name", async () => {
        const socket = await connectAs(stack, { site: OTHER_SITE, siteHeader: false, sid: ALICE_SID }, userRoom(ALICE));
        await assertInRoom(stack, socket, userRoom(ALICE), OTHER_SITE);
        await refusedLocally(stack, { site: SITE, siteHeader: false, sid: ALICE_SID }, REFUSAL.namespace);
      });
    });
  });

  // Protocol §4.1 (credentials and precedence), §4.2 (how the callback carries them), §4.4 (secret),
  // §4.5 / §5.1 (user, Guest, user_type → rooms).
  describe(`Frappe ${version}: authentication (protocol §4)`, () => {
    let stack;
    before(async () => {
      stack = await startStack({ version });
      stack.frappe.addToken(SITE, `Basic ${Buffer.from("erin:pw").toString("base64")}`, "erin@example.com");
      stack.frappe.addToken(SITE, "Bearer oauth-frank-123", "frank@example.com", "Website User");
    });
    after(async () => { await stack?.stop(); });

    if (version === 16) {
      // Must stay first in this describe: it needs a Redis where the secret was never created.
      test("the first-ever connection succeeds although no socket secret exists yet", async () => {
        assert.equal(await stack.redis.client.get(SECRET_KEY), null, "precondition: no secret yet");
        const { socket, last } = await connectAndTrace(stack, { sid: ALICE_SID }, userRoom(ALICE));
        const secret = await stack.redis.client.get(SECRET_KEY);
        assert.ok(secret, "the site created the secret");
        assert.equal(last.headers["x-frappe-socket-secret"], secret, "the retry carried the new secret");
        await assertInRoom(stack, socket, userRoom(ALICE));
      });
    }

    test("a sid cookie authenticates its user, who gets events of their user room", async () => {
      const socket = await connectAs(stack, { sid: ALICE_SID }, userRoom(ALICE));
      await assertInRoom(stack, socket, userRoom(ALICE));
      await assertInRoom(stack, socket, "website");
      await assertNotInRoom(stack, socket, userRoom(CAROL), userRoom(ALICE));
    });

    if (version === 15) {
      test("v15 sends the sid as ?sid= and no socket secret", async () => {
        const { last } = await connectAndTrace(stack, { sid: ALICE_SID }, userRoom(ALICE));
        assert.equal(last.path, `/api/method/${USER_INFO}`);
        assert.equal(last.query.sid, ALICE_SID);
        assert.equal(last.headers["x-frappe-socket-secret"], undefined);
        assert.equal(last.headers.authorization, undefined);
      });
    } else {
      test("v16 sends Cookie: sid=… and x-frappe-socket-secret equal to Redis socketio_auth_secret", async () => {
        const { last } = await connectAndTrace(stack, { sid: ALICE_SID }, userRoom(ALICE));
        assert.equal(last.path, `/api/method/${USER_INFO}`);
        assert.ok(cookiePairs(last.headers.cookie).includes(`sid=${ALICE_SID}`), `got Cookie: ${last.headers.cookie}`);
        assert.equal(last.headers["x-frappe-socket-secret"], await stack.redis.client.get(SECRET_KEY));
        assert.equal(last.headers.authorization, undefined);
      });

      test("v16 secret rotation: a new secret in Redis is picked up and the connection succeeds", async () => {
        await stack.connect({ sid: ALICE_SID }); // the server now holds the current secret
        const rotated = unique("rotated-secret");
        await stack.redis.client.set(SECRET_KEY, rotated);
        const { socket, last } = await connectAndTrace(stack, { sid: ALICE_SID }, userRoom(ALICE));
        assert.equal(last.headers["x-frappe-socket-secret"], rotated);
        await assertInRoom(stack, socket, userRoom(ALICE));
        // Steady state again: the next connection needs a single call.
        const { calls } = await connectAndTrace(stack, { sid: BOB_SID }, userRoom(BOB));
        assert.equal(calls.length, 1, "the rotated secret is reused once learnt");
        assert.equal(calls[0].headers["x-frappe-socket-secret"], rotated);
      });
    }

    test("an unknown sid is accepted as Guest: user:Guest and website, but not all", async () => {
      const socket = await connectAs(stack, { sid: unique("sid-expired") }, userRoom("Guest"));
      await assertInRoom(stack, socket, userRoom("Guest"));
      await assertInRoom(stack, socket, "website");
      await assertNotInRoom(stack, socket, "all", userRoom("Guest"));
    });

    test("a System User joins all; a Website User does not", async () => {
      const alice = await connectAs(stack, { sid: ALICE_SID }, userRoom(ALICE));
      await assertInRoom(stack, alice, "all");
      const carol = await connectAs(stack, { sid: CAROL_SID }, userRoom(CAROL));
      await assertInRoom(stack, carol, userRoom(CAROL));
      await assertInRoom(stack, carol, "website");
      await assertNotInRoom(stack, carol, "all", userRoom(CAROL));
    });

    for (const [kind, authorization, user, systemUser] of [
      ["token", DAVE_TOKEN, DAVE, true],
      ["Basic", `Basic ${Buffer.from("erin:pw").toString("base64")}`, "erin@example.com", true],
      ["Bearer", "Bearer oauth-frank-123", "frank@example.com", false],
    ]) {
      test(`an Authorization header (${kind}) is passed through verbatim and authenticates`, async () => {
        const { socket, last } = await connectAndTrace(stack, { authorization }, userRoom(user));
        assert.equal(last.headers.authorization, authorization);
        assert.equal(last.query.sid, undefined, "no sid is sent with a header-only credential");
        await assertInRoom(stack, socket, userRoom(user));
        if (systemUser) await assertInRoom(stack, socket, "all");
        else await assertNotInRoom(stack, socket, "all", userRoom(user));
      });
    }

    test("Authorization wins over a sid=Guest cookie (and over a valid sid cookie)", async () => {
      for (const cookie of ["sid=Guest", `sid=${ALICE_SID}`]) {
        const { socket, last } = await connectAndTrace(stack,
          { authorization: DAVE_TOKEN, headers: { cookie } }, userRoom(DAVE));
        assert.equal(last.headers.authorization, DAVE_TOKEN);
        await assertInRoom(stack, socket, userRoom(DAVE));
        await assertInRoom(stack, socket, "all");
        await assertNotInRoom(stack, socket, userRoom(cookie === "sid=Guest" ? "Guest" : ALICE), userRoom(DAVE));
      }
    });
  });

  // Protocol §4.3: where get_user_info goes. Default = the Origin (exercised everywhere else);
  // `realtime_callback_url` (this service's extension), developer_mode port rewrite,
  // webserver_host + webserver_port.
  describe(`Frappe ${version}: callback URL (protocol §4.3)`, () => {
    const DEAD_ORIGIN = "http://127.0.0.1:1"; // same host as Host, so the origin check passes

    describe("realtime_callback_url", () => {
      let stack;
      before(async () => {
        stack = await startStack({ version, common: (frappe) => ({ realtime_callback_url: frappe.url }) });
      });
      after(async () => { await stack?.stop(); });

      test("callbacks go to the fixed URL, not the Origin, and carry x-frappe-site-name", async () => {
        for (const site of [SITE, OTHER_SITE]) {
          const { socket, last } = await connectAndTrace(stack,
            { site, sid: ALICE_SID, origin: DEAD_ORIGIN }, userRoom(ALICE));
          assert.equal(last.headers["x-frappe-site-name"], site);
          assert.equal(last.headers.host, `127.0.0.1:${stack.frappe.port}`);
          await assertInRoom(stack, socket, userRoom(ALICE), site);
        }
      });
    });

    describe("developer_mode + webserver_port", () => {
      let stack;
      before(async () => {
        stack = await startStack({
          version, common: (frappe) => ({ developer_mode: 1, webserver_port: frappe.port }),
        });
      });
      after(async () => { await stack?.stop(); });

      test("the Origin's port is replaced by webserver_port", async () => {
        const { socket, last } = await connectAndTrace(stack, { sid: ALICE_SID, origin: DEAD_ORIGIN }, userRoom(ALICE));
        assert.equal(last.headers.host, `127.0.0.1:${stack.frappe.port}`);
        await assertInRoom(stack, socket, userRoom(ALICE));
      });
    });

    describe("webserver_port without developer_mode", () => {
      let stack;
      before(async () => {
        stack = await startStack({ version, common: (frappe) => ({ webserver_port: frappe.port }) });
      });
      after(async () => { await stack?.stop(); });

      test("the Origin is used verbatim (no port rewrite outside developer mode)", async () => {
        const message = await refusedAlone(stack, { sid: ALICE_SID, origin: DEAD_ORIGIN });
        assert.match(message, /^Unauthorized/);
        await stack.connect({ sid: ALICE_SID }); // the real Origin works
      });
    });

    describe("webserver_host + webserver_port", () => {
      let stack;
      before(async () => {
        stack = await startStack({
          version, common: (frappe) => ({ webserver_host: "127.0.0.1", webserver_port: frappe.port }),
        });
      });
      after(async () => { await stack?.stop(); });

      test("callbacks go to http://<webserver_host>:<webserver_port>", async () => {
        const { socket, last } = await connectAndTrace(stack, { sid: ALICE_SID, origin: DEAD_ORIGIN }, userRoom(ALICE));
        assert.equal(last.headers.host, `127.0.0.1:${stack.frappe.port}`);
        assert.equal(last.headers["x-frappe-site-name"], SITE);
        await assertInRoom(stack, socket, userRoom(ALICE));
      });
    });
  });

  // Protocol §3.3 #5: a failing callback refuses with `Unauthorized…`, promptly, without leaking
  // the credential, and the server keeps serving.
  describe(`Frappe ${version}: callback failures (protocol §3.3 #5, §4.2)`, () => {
    let stack;
    const credentials = [];
    const sid = () => { const s = unique("sid-leakcheck"); credentials.push(s); return s; };
    const token = () => { const t = unique("leaktoken"); credentials.push(t); return `token key-x:${t}`; };

    before(async () => { stack = await startStack({ version, common: { realtime_callback_timeout: 1 } }); });
    after(async () => { await stack?.stop(); });
    afterEach(() => { if (stack) stack.frappe.fault = null; });

    /** The refusal must say Unauthorized and carry none of the credentials. */
    function assertUnauthorized(message) {
      assert.match(message, /^Unauthorized/);
      for (const secret of credentials) assert.ok(!message.includes(secret), `message leaks ${secret}: ${message}`);
    }

    test("a site slower than realtime_callback_timeout → Unauthorized within 2.5 s", async () => {
      // After the delay the fake would vouch for Alice: only the timeout can refuse. (A fixed body
      // also keeps the late handler away from Redis, which is closed by then.)
      const late = { message: { user: ALICE, user_type: "System User", installed_apps: ["frappe"] } };
      stack.frappe.fault = { latencyMs: 3000, status: 200, body: JSON.stringify(late) };
      for (const options of [{ sid: sid() }, { authorization: token() }]) {
        const started = Date.now();
        const message = await refusedAlone(stack, options);
        const elapsed = Date.now() - started;
        assertUnauthorized(message);
        assert.ok(elapsed < 2500, `refused after ${elapsed} ms`);
      }
    });

    test("Frappe down (connection refused) → Unauthorized", async () => {
      const origin = `http://127.0.0.1:${await freePort()}`;
      assertUnauthorized(await refusedAlone(stack, { sid: sid(), origin }));
      assertUnauthorized(await refusedAlone(stack, { authorization: token(), origin }));
    });

    test("HTTP 500 → Unauthorized", async () => {
      stack.frappe.fault = { status: 500, body: "Internal Server Error" };
      assertUnauthorized(await refusedAlone(stack, { sid: sid() }));
      assertUnauthorized(await refusedAlone(stack, { authorization: token() }));
    });

    test("an HTML body → Unauthorized", async () => {
      stack.frappe.fault = { status: 200, body: "<!DOCTYPE html><html><body>Login</body></html>" };
      assertUnauthorized(await refusedAlone(stack, { sid: sid() }));
      assertUnauthorized(await refusedAlone(stack, { authorization: token() }));
    });

    test("afterwards the server still serves, and its log never shows a sid or token", async () => {
      const socket = await connectAs(stack, { sid: ALICE_SID }, userRoom(ALICE));
      await assertInRoom(stack, socket, userRoom(ALICE));
      assert.ok(credentials.length >= 8, "the failure tests above ran");
      assert.ok(stack.server.output.length > 0, "the server logged something");
      for (const secret of [...credentials, ALICE_SID, "secret-dave"]) {
        assert.ok(!stack.server.output.includes(secret), `server output contains ${secret}`);
      }
    });
  });

  // Resource use and concurrency of refusals: refused handshakes leave nothing behind, and
  // a refusal racing an acceptance to the same site does not disturb it.
  describe(`Frappe ${version}: refusal races and leaks`, () => {
    let stack;
    before(async () => { stack = await startStack({ version }); });
    after(async () => { await stack?.stop(); });

    /** `count` refused handshakes to junk namespaces, `parallel` at a time. */
    async function junkHandshakes(stack, from, count, parallel = 25) {
      for (let i = from; i < from + count; i += parallel) {
        const batch = [];
        for (let j = i; j < Math.min(i + parallel, from + count); j += 1) {
          const socket = stack.socket({ site: `junk-${j}`, sid: ALICE_SID });
          batch.push(refusal(socket).then((message) => assert.equal(message, REFUSAL.namespace)));
        }
        await Promise.all(batch);
      }
      stack.sockets.length = 0; // all closed by their refusal; do not keep them alive
    }

    test("refused handshakes do not accumulate memory", async (t) => {
      // socketioxide holds a refused session until the connect timeout (callback timeout + 5 s,
      // 6 s here), then frees it. So rounds of refusals spaced by that timeout reuse the same
      // memory: RSS after the third round stays within 3 MB of the first (the old dynamic-
      // namespace design kept ~16 KB per junk name forever).
      const short = await startStack({ version, common: { realtime_callback_timeout: 1 } });
      t.after(() => short.stop());
      const released = () => new Promise((resolve) => setTimeout(resolve, 7000)); // a server timer: no event to await
      const round = (from) => junkHandshakes(short, from, 300);
      await round(0);
      await released();
      const baseline = short.server.rssKiB();
      await round(300);
      await released();
      await round(600);
      const grown = short.server.rssKiB() - baseline;
      assert.ok(grown < 3072, `RSS grew by ${grown} KiB over two more rounds of 300 refusals (baseline ${baseline} KiB)`);
      assert.equal(userInfoCalls(short).length, 0, "junk namespaces never reach Frappe");
      const socket = await connectAs(short, { sid: ALICE_SID }, userRoom(ALICE));
      await assertInRoom(short, socket, userRoom(ALICE));
    });

    test("an event published the moment `connect` fires is delivered (rooms joined before the ack)", async () => {
      // Protocol §5.1 / §4.5: connect-time rooms are joined as part of accepting the socket (Node
      // joins synchronously in its connection handler; only v13-early joined afterwards and
      // lost events). Each socket publishes to its user room from its own `connect` listener.
      const rounds = 10;
      const perRound = 100;
      const lost = [];
      for (let round = 0; round < rounds; round += 1) {
        const sockets = Array.from({ length: perRound }, () => {
          const socket = stack.socket({ sid: ALICE_SID, transports: ["websocket"] });
          socket.marker = unique("at-connect");
          socket.once("connect", () => { stack.publish("at_connect", { marker: socket.marker }, { room: userRoom(ALICE) }); });
          return socket;
        });
        await Promise.all(sockets.map((socket) => connected(socket)));
        // Every socket is settled once a later event reached all of them (in-order delivery).
        const last = unique("last");
        await stack.publish("at_connect", { marker: last }, { room: userRoom(ALICE) });
        await waitFor(() => sockets.every((socket) => socket.received.some((r) => r.args[0]?.marker === last)),
          { what: "the closing event on every socket" });
        for (const socket of sockets) {
          if (!socket.received.some((r) => r.event === "at_connect" && r.args[0]?.marker === socket.marker)) {
            lost.push(socket.marker);
          }
          socket.disconnect();
        }
        stack.sockets.length = 0;
      }
      assert.deepEqual(lost, [], `${lost.length} of ${rounds * perRound} sockets missed an event published after their connect`);
    });

    test("a refused and an accepted handshake to the same site at the same moment", async () => {
      const refusals = [
        [{ sid: BOB_SID, origin: "http://evil.example" }, REFUSAL.origin],
        [{ site: OTHER_SITE, namespace: `/${SITE}`, sid: BOB_SID }, REFUSAL.namespace],
        [{}, REFUSAL.missing],
        [{ headers: { cookie: "theme=dark" } }, REFUSAL.noMethod],
      ];
      for (let round = 0; round < 12; round += 1) {
        const [options, expected] = refusals[round % refusals.length];
        const refused = stack.socket(options);
        const accepted = stack.socket({ sid: ALICE_SID });
        const [message] = await Promise.all([refusal(refused), connected(accepted)]);
        assert.equal(message, expected);
        await settle(stack, accepted, userRoom(ALICE));
        await assertInRoom(stack, accepted, userRoom(ALICE));
        await assertInRoom(stack, accepted, "all");
        accepted.disconnect();
      }
    });
  });
}
