// A client that is not the Desk: a VS Code extension style socket.io client, with socket.io-client
// 4.6.2, 4.7.2 (what Frappe 15 locks) and 4.8.x side by side (npm aliases in package.json), through
// bench's real nginx and directly on the service port.
//
// The client is created exactly as such extensions create it (only `transports` varies, for
// the polling cases, and the URL):
//
//   io("http://<host>:<port>", { path: "/socket.io", transports: ["websocket", "polling"],
//     auth: { sid }, extraHeaders: { Cookie: "sid=<sid>; system_user=yes" },
//     reconnection: true, reconnectionDelay: 1000, reconnectionAttempts: 5 })
//
// and listens for `ai_progress`, `msgprint` and `eval_js`. It connects to the root namespace
// `/` and sends no Origin (Node's clients do not). What it must get: the connection, on `/`,
// served as the site; then the events Frappe 15+ publishes for its user (`{event, message,
// namespace: <site>, room: "user:<user>"}`, as `frappe.as_json` writes them) exactly once, in
// order.
//
// (a) Through bench's nginx (tests/support/bench-nginx.mjs: bench's rendered nginx.conf on a
//     loopback port): nginx sets `X-Frappe-Site-Name <site>` and rewrites Origin to
//     `$scheme://$http_host`. The bench has no `default_site`, and Host and Origin say
//     127.0.0.1, so only nginx's header names the site. Over websocket, over polling, and
//     polling then upgrading to websocket (events published all along the upgrade).
// (b) Directly on the service port: Host is 127.0.0.1 and nothing names the site, so
//     `default_site` does. Over websocket and over polling.
// Both benches set `realtime_callback_url` (the fake Frappe): a client without Origin (b), or
// one whose Origin nginx made up (a), is validated there. Also: an API token in the auth
// payload with no Cookie header, both ways; the other site's events never reaching the
// client; a server restart behind nginx, after which every release reconnects by itself; and
// the refusal on the service port of a bench without `default_site`.
//
// Every wait is bounded; everything listens on loopback; processes are stopped by PID (the
// harness and bench-nginx.mjs); every socket is closed with disconnect() (reconnection is on).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { io as io46 } from "socket.io-client-4.6";
import { io as io47 } from "socket.io-client-4.7";
import { io as io48 } from "socket.io-client";
import {
  SITES, Server, asFrappeJson, connected, refusal, startStack, waitFor, ALICE_SID, DAVE_API_KEY,
  USER_INFO, ALICE, DAVE,
} from "../../support/harness.mjs";
import { NGINX, startBenchNginx } from "../../support/bench-nginx.mjs";

const require = createRequire(import.meta.url);
const CLIENTS = [
  { release: "4.6.2", io: io46, pkg: "socket.io-client-4.6" },
  { release: "4.7.2", io: io47, pkg: "socket.io-client-4.7" },
  { release: "4.8.x", io: io48, pkg: "socket.io-client" },
].map((c) => ({ ...c, version: require(`${c.pkg}/package.json`).version }));

const SITE = SITES[0];
const OTHER_SITE = SITES[1];
const SKIP = NGINX ? false : "not installed: nginx (Debian: apt-get install -y nginx)";

/** The extension's client, with exactly its options; records what its three listeners get. */
function extensionClient(io, url, { sid, token, transports = ["websocket", "polling"] }) {
  const options = token
    ? { path: "/socket.io", transports, auth: { token },
      reconnection: true, reconnectionDelay: 1000, reconnectionAttempts: 5 }
    : { path: "/socket.io", transports, auth: { sid }, extraHeaders: { Cookie: `sid=${sid}; system_user=yes` },
      reconnection: true, reconnectionDelay: 1000, reconnectionAttempts: 5 };
  const socket = io(url, options);
  socket.got = [];
  socket.on("ai_progress", (data) => socket.got.push(["ai_progress", data]));
  socket.on("msgprint", (data) => socket.got.push(["msgprint", data]));
  socket.on("eval_js", (data) => socket.got.push(["eval_js", data]));
  // Observation only: which transports the engine went through.
  socket.upgrades = [];
  socket.io.engine?.on("upgrade", (transport) => socket.upgrades.push(transport.name));
  return socket;
}

/** What an AI feature publishes for one request, in order (`frappe.publish_realtime(…, user=…)`). */
function eventsFor(tag) {
  return [
    ["ai_progress", { request: tag, progress: 10, status: "Reading the document…" }],
    ["ai_progress", { request: tag, progress: 55, status: "Asking the model" }],
    ["ai_progress", { request: tag, progress: 100, status: "Done ✓", done: true }],
    ["msgprint", { message: `Summary ready (${tag})`, title: "AI", indicator: "green" }],
    ["eval_js", `frappe.show_alert(${JSON.stringify(`AI ${tag} done`)})`],
  ];
}

/** Publish on Redis exactly as Frappe 15+ does: `frappe.as_json({event, message, namespace, room})`. */
function publish(stack, [event, message], { site = SITE, user = ALICE } = {}) {
  return stack.redis.publish(asFrappeJson({ event, message, namespace: site, room: `user:${user}` }));
}

/**
 * Resolve once `socket` has received a final msgprint (published after everything else; the
 * bridge delivers in order), then a little more for any late duplicate. Returns what was
 * expected, the sentinel included.
 */
async function publishSentinel(stack, socket, tag, options) {
  const sentinel = ["msgprint", { message: `sentinel ${tag}` }];
  await publish(stack, sentinel, options);
  try {
    await waitFor(() => socket.got.some(([e, m]) => e === "msgprint" && m?.message === sentinel[1].message),
      { timeoutMs: 5000, what: `the sentinel of ${tag}` });
  } catch (err) {
    throw new Error(`${err.message}; received: ${JSON.stringify(socket.got)}`);
  }
  await new Promise((r) => setTimeout(r, 150));
  return sentinel;
}

/** Publish the request's events, and assert they arrive exactly once, in order. */
async function assertEventsOnce(stack, socket, tag, options) {
  const events = eventsFor(tag);
  for (const e of events) await publish(stack, e, options);
  const sentinel = await publishSentinel(stack, socket, tag, options);
  assert.deepEqual(socket.got, [...events, sentinel], "every event once, in publication order");
}

/** The namespace a socket.io-client socket joined (`nsp` in 4.x). */
const namespaceOf = (socket) => socket.nsp;

/** The cases of one client release against one URL (nginx's or the service's). */
function clientCases(client, ctx, { upgrade }) {
  const open = async (options) => {
    const socket = extensionClient(client.io, ctx.url(), options);
    ctx.sockets.push(socket);
    await connected(socket);
    return socket;
  };

  test(`socket.io-client ${client.version}: websocket`, { timeout: 20000 }, async () => {
    const socket = await open({ sid: ALICE_SID });
    try {
      assert.equal(namespaceOf(socket), "/");
      assert.equal(socket.io.engine.transport.name, "websocket");
      await assertEventsOnce(ctx.stack, socket, `ws-${client.version}`);
    } finally {
      socket.disconnect();
    }
    const call = ctx.stack.frappe.callsTo(USER_INFO).at(-1);
    assert.equal(call.site, SITE, "the site was called for the site the handshake resolved to");
    assert.match(call.headers.cookie ?? "", /(^|; )sid=sid-alice(;|$)/, "with the extension's sid");
  });

  test(`socket.io-client ${client.version}: polling`, { timeout: 20000 }, async () => {
    const socket = await open({ sid: ALICE_SID, transports: ["polling"] });
    try {
      assert.equal(namespaceOf(socket), "/");
      assert.equal(socket.io.engine.transport.name, "polling");
      await assertEventsOnce(ctx.stack, socket, `polling-${client.version}`);
      assert.equal(socket.io.engine.transport.name, "polling", "polling only: no upgrade");
    } finally {
      socket.disconnect();
    }
  });

  if (upgrade) {
    test(`socket.io-client ${client.version}: polling, then upgrade to websocket while events flow`, { timeout: 20000 }, async () => {
      // Progress events are published back to back from before the client exists until well
      // after its upgrade, so whenever the server joins the socket to its user room, and
      // whichever transport carries them, what arrives must be every event from some point on:
      // none lost, none twice, in order. (Here the upgrade usually completes before the
      // CONNECT is acknowledged, which waits for get_user_info, so the events ride the
      // websocket; delivery on polling is the polling case's.)
      const tag = `upgrade-${client.version}`;
      const published = [];
      let publishing = true;
      const publisher = (async () => {
        while (publishing) {
          const e = ["ai_progress", { request: tag, step: published.length }];
          published.push(e);
          await publish(ctx.stack, e);
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      let socket;
      try {
        socket = await open({ sid: ALICE_SID, transports: ["polling", "websocket"] });
        assert.equal(namespaceOf(socket), "/");
        await waitFor(() => socket.io.engine.transport.name === "websocket", { timeoutMs: 8000, what: "the upgrade to websocket" });
        await waitFor(() => socket.got.length >= 10, { timeoutMs: 5000, what: "progress events after the upgrade" });
      } finally {
        publishing = false;
        await publisher;
      }
      try {
        const rest = eventsFor(tag).slice(3);
        for (const e of rest) await publish(ctx.stack, e);
        const sentinel = await publishSentinel(ctx.stack, socket, tag);
        assert.equal(socket.io.engine.transport.name, "websocket");
        assert.deepEqual(socket.upgrades, ["websocket"], "the engine opened on polling and upgraded once");
        const first = socket.got[0]?.[1]?.step;
        assert.ok(Number.isInteger(first), `the first event is a progress event: ${JSON.stringify(socket.got[0])}`);
        assert.deepEqual(socket.got, [...published.slice(first), ...rest, sentinel],
          "every progress event from the first received on, once, in publication order, across the upgrade");
      } finally {
        socket.disconnect();
      }
    });
  }

  test(`socket.io-client ${client.version}: an API token in the auth payload, no Cookie header`, { timeout: 20000 }, async () => {
    const socket = await open({ token: DAVE_API_KEY });
    try {
      assert.equal(namespaceOf(socket), "/");
      await assertEventsOnce(ctx.stack, socket, `token-${client.version}`, { user: DAVE });
    } finally {
      socket.disconnect();
    }
    const call = ctx.stack.frappe.callsTo(USER_INFO).at(-1);
    assert.equal(call.headers.authorization, `token ${DAVE_API_KEY}`, "the token went to Frappe as Authorization: token <key>:<secret>");
    assert.equal(call.headers.cookie, undefined, "and no cookie");
  });
}

describe("a VS Code extension style client through bench's nginx", { skip: SKIP, timeout: 120000 }, () => {
  const ctx = { sockets: [] };
  ctx.url = () => ctx.nginx.url;

  before(async () => {
    // No default_site: through nginx only X-Frappe-Site-Name can name the site.
    ctx.stack = await startStack({ common: (frappe) => ({ realtime_callback_url: frappe.url }) });
    // nginx's @webserver upstream is the fake Frappe (unused by these clients).
    ctx.nginx = await startBenchNginx({ bench: ctx.stack.bench, site: SITE, socketioPort: ctx.stack.port,
      webserverPort: ctx.stack.frappe.port });
    assert.ok(ctx.nginx.rendered.includes(`proxy_set_header X-Frappe-Site-Name ${SITE};`));
    assert.ok(ctx.nginx.rendered.includes("proxy_set_header Origin $scheme://$http_host;"));
  }, { timeout: 90000 });

  after(async () => {
    for (const socket of ctx.sockets) socket.disconnect();
    await ctx.nginx?.stop();
    await ctx.stack?.stop();
  });

  for (const client of CLIENTS) clientCases(client, ctx, { upgrade: true });

  test("the client releases are the ones wanted", () => {
    assert.deepEqual(CLIENTS.map((c) => c.version.split(".").slice(0, 2).join(".")), ["4.6", "4.7", "4.8"]);
    assert.equal(CLIENTS[0].version, "4.6.2");
    assert.equal(CLIENTS[1].version, "4.7.2");
  });

  test("the clients went through nginx, and the other site's events never reached them", { timeout: 20000 }, async () => {
    const access = ctx.nginx.accessLog();
    assert.match(access, /"GET \/socket\.io\/\?EIO=4&transport=websocket[^ "]* HTTP\/1\.1" 101 /);
    assert.match(access, /"POST \/socket\.io\/\?EIO=4&transport=polling[^ "]*sid=[^ "]* HTTP\/1\.1" 200 /);
    const socket = extensionClient(io48, ctx.url(), { sid: ALICE_SID });
    ctx.sockets.push(socket);
    try {
      await connected(socket);
      await publish(ctx.stack, ["msgprint", { message: "for the other site" }], { site: OTHER_SITE });
      const sentinel = await publishSentinel(ctx.stack, socket, "isolation");
      assert.deepEqual(socket.got, [sentinel]);
    } finally {
      socket.disconnect();
    }
  });

  test("the server restarts behind nginx: every release reconnects by itself and gets the next events once", { timeout: 40000 }, async () => {
    const sockets = CLIENTS.map((client) => {
      const socket = extensionClient(client.io, ctx.url(), { sid: ALICE_SID });
      socket.release = client.version;
      socket.connects = 0;
      socket.on("connect", () => { socket.connects += 1; });
      ctx.sockets.push(socket);
      return socket;
    });
    try {
      await Promise.all(sockets.map((socket) => connected(socket)));
      const ids = sockets.map((socket) => socket.id);
      const old = ctx.stack.server;
      await old.stop();
      ctx.stack.server = await Server.start({ bench: ctx.stack.bench, port: ctx.stack.port });
      const leaked = [...ctx.stack.frappe.secretsIssued].filter((secret) => old.output.includes(secret));
      assert.deepEqual(leaked, [], "secrets in the first server's log");
      await ctx.stack.waitSubscribed();
      // Socket.IO's own reconnection (1 s ± 50 %, then 2 s, …; 5 attempts), through nginx.
      await waitFor(() => sockets.every((socket) => socket.connected && socket.connects === 2),
        { timeoutMs: 15000, everyMs: 50, what: "every client to reconnect" });
      sockets.forEach((socket, i) => assert.notEqual(socket.id, ids[i], `${socket.release}: a new session`));
      for (const socket of sockets) socket.got = [];
      const tag = "after-restart";
      const events = eventsFor(tag);
      for (const e of events) await publish(ctx.stack, e);
      const sentinel = ["msgprint", { message: `sentinel ${tag}` }];
      await publish(ctx.stack, sentinel);
      await waitFor(() => sockets.every((socket) => socket.got.length >= events.length + 1),
        { timeoutMs: 5000, what: "the events on every client" });
      await new Promise((r) => setTimeout(r, 150));
      for (const socket of sockets) {
        assert.deepEqual(socket.got, [...events, sentinel], `${socket.release}: every event once, in order`);
      }
    } finally {
      for (const socket of sockets) socket.disconnect();
    }
  });

  test("directly on the service port, without default_site nothing names the site: Invalid namespace", { timeout: 20000 }, async () => {
    const socket = extensionClient(io48, `http://127.0.0.1:${ctx.stack.port}`, { sid: ALICE_SID });
    ctx.sockets.push(socket);
    try {
      assert.equal(await refusal(socket), "Invalid namespace");
    } finally {
      socket.disconnect();
    }
  });
});

describe("a VS Code extension style client directly on the service port (default_site)", { timeout: 120000 }, () => {
  const ctx = { sockets: [] };
  ctx.url = () => `http://127.0.0.1:${ctx.stack.port}`;

  before(async () => {
    ctx.stack = await startStack({ common: (frappe) => ({ default_site: SITE, realtime_callback_url: frappe.url }) });
  }, { timeout: 30000 });

  after(async () => {
    for (const socket of ctx.sockets) socket.disconnect();
    await ctx.stack?.stop();
  });

  for (const client of CLIENTS) clientCases(client, ctx, { upgrade: false });
});
