// A real browser behind bench's real nginx config, with frappe-realtime run by supervisord from
// bench's real supervisor block.
//
// Real programs: redis-server, supervisord (the `[program:<bench>-node-socketio]` block rendered
// by tests/support/render_bench.py from bench's own templates, with command= our binary), nginx
// (bench's rendered nginx.conf: upstreams, `location /socket.io`, `location /assets`,
// `@webserver`; only the `listen` lines are moved to a free loopback port, by
// tests/support/bench-nginx.mjs) and headless Chromium (playwright-core). The web app behind
// nginx is a small HTTP server on `webserver_port` that serves a desk page at `/desk` and
// forwards everything else to the fake Frappe. The page loads
// socket.io-client from `/assets/` (served by nginx from `sites/assets`, as Frappe's assets are)
// and connects exactly like Frappe's desk client (protocol §8):
// `io(window.location.origin + "/" + site, {withCredentials: true, reconnectionAttempts: 3})`,
// after setting the `sid` cookie; the site name resolves to 127.0.0.1 via Chromium's
// --host-resolver-rules so Host, Origin and X-Frappe-Site-Name are the site's.
//
// Checks, for bench's port-based server block and for its dns_multitenant one: the page
// upgrades to websocket through nginx; events published on Redis in the v15+ shape reach it for
// its user room, a permitted doc room (and neither a refused doc room nor an unjoined room) and a
// task_progress room; `supervisorctl restart <bench>-node-socketio` makes the page reconnect by
// itself and receive the next event; with the server stopped for a moment a reconnect attempt
// gets nginx's 502 and a later one gets in; a polling-only page works through nginx too; the
// server's supervisor logs hold no sid or socket secret. Screenshots of the page go to
// tests/artifacts/browser-nginx*.png, the logs and configs of the last run next to them.
//
// Skipped (with the reason) only when nginx, supervisord/supervisorctl or chromium is not
// installed (CI installs them: `apt-get install -y nginx supervisor chromium`). Every wait is
// bounded; everything listens on loopback; everything started is stopped by its own PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import {
  BINARY, Redis, asFrappeJson, freePort, makeBench, waitFor, ROOT, SITES, ALICE, ALICE_SID, USER_INFO,
} from "../../support/harness.mjs";
import { FakeFrappe } from "../../support/fake-frappe.mjs";
import { BenchNginx, NGINX, RENDER_BENCH, canConnect, findProgram, listenLines, renderBench, run, startChild } from "../../support/bench-nginx.mjs";

const SOCKET_IO_JS = path.join(ROOT, "node_modules/socket.io-client/dist/socket.io.min.js");
const ARTIFACTS = path.join(ROOT, "tests/artifacts");

const [SITE] = SITES;
const DOCTYPE = "ToDo";
const DOCNAME = "TODO-0001"; // alice may read it
const SECRET_DOC = "TODO-SECRET"; // alice may not
const TASK = "task-7f3a";

// ---------------------------------------------------------------------------------------------
// What must be installed
// ---------------------------------------------------------------------------------------------

const SUPERVISORD = findProgram(["supervisord"]);
const SUPERVISORCTL = findProgram(["supervisorctl"]);
const CHROMIUM = findProgram([process.env.CHROMIUM_PATH, "/usr/bin/chromium", "chromium", "chromium-browser"].filter(Boolean));
const missing = [
  !NGINX && "nginx",
  !SUPERVISORD && "supervisord",
  !SUPERVISORCTL && "supervisorctl",
  !CHROMIUM && "chromium",
].filter(Boolean);
const SKIP = missing.length > 0
  ? `not installed: ${missing.join(", ")} (Debian: apt-get install -y nginx supervisor chromium)`
  : false;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]);
}

/** The text of the `location /socket.io { … }` block (with its indentation and closing brace). */
function socketioLocation(conf) {
  const m = /^([ \t]*)location \/socket\.io \{\n[\s\S]*?\n\1\}/m.exec(conf);
  return m?.[0] ?? null;
}

// The desk page. It connects as frappe/public/js/frappe/socketio_client.js does on v15/v16
// (namespace = site, withCredentials, reconnectionAttempts 3, default transports unless the
// query string asks for others), subscribes as a form and a background job would, and records
// everything it receives on `window.__rt` and in the DOM.
function deskPage(sid) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Desk · frappe-realtime behind nginx</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px sans-serif; margin: 16px; }
  .meta b { font-family: monospace; }
  ol { font: 12px monospace; }
  li.sys { color: #777; }
</style>
<script src="/assets/socket.io.min.js"></script>
</head><body>
<h2 id="title"></h2>
<p class="meta">status: <b id="status">loading</b> · transport: <b id="transport">-</b> ·
connects: <b id="connects">0</b> · socket id: <b id="sid">-</b></p>
<ol id="events"></ol>
<script>
(() => {
  const params = new URLSearchParams(location.search);
  const site = location.hostname; // frappe.boot.sitename
  document.cookie = "sid=${sid}; path=/";
  const rt = window.__rt = { events: [], connects: 0, disconnects: [], errors: [], upgrades: 0 };
  const $ = (id) => document.getElementById(id);
  const line = (text, cls) => {
    const li = document.createElement("li");
    li.textContent = new Date().toISOString().slice(11, 23) + "  " + text;
    if (cls) li.className = cls;
    $("events").appendChild(li);
  };
  const options = { withCredentials: true, reconnectionAttempts: 3 };
  if (params.get("transports")) options.transports = params.get("transports").split(",");
  $("title").textContent = "io(" + window.location.origin + "/" + site + ", " + JSON.stringify(options) + ")";
  const socket = rt.socket = io(window.location.origin + "/" + site, options);
  socket.on("connect", () => {
    rt.connects += 1;
    $("status").textContent = "connected";
    $("connects").textContent = rt.connects;
    $("sid").textContent = socket.id;
    line("connect (" + socket.io.engine.transport.name + ")", "sys");
    socket.io.engine.once("upgrade", (t) => { rt.upgrades += 1; line("upgrade → " + t.name, "sys"); });
  });
  socket.on("disconnect", (reason) => {
    rt.disconnects.push(reason);
    $("status").textContent = "disconnected: " + reason;
    line("disconnect: " + reason, "sys");
  });
  socket.on("connect_error", (err) => {
    rt.errors.push(err.message);
    console.log("Error connecting to socket.io: " + err.message);
    line("connect_error: " + err.message, "sys");
  });
  socket.io.on("reconnect_attempt", (n) => line("reconnect attempt " + n, "sys"));
  socket.io.on("reconnect_failed", () => { rt.reconnectFailed = true; line("reconnect failed", "sys"); });
  socket.onAny((event, ...args) => {
    rt.events.push({ event, args });
    line(event + " " + JSON.stringify(args));
  });
  setInterval(() => { $("transport").textContent = socket.io.engine?.transport?.name ?? "-"; }, 100);
  // As a form does on load, and a page waiting on a background job.
  socket.emit("doc_subscribe", "${DOCTYPE}", "${DOCNAME}");
  socket.emit("doc_subscribe", "${DOCTYPE}", "${SECRET_DOC}");
  socket.emit("task_subscribe", "${TASK}");
})();
</script>
</body></html>`;
}

/** The web app behind nginx: `/desk` here, everything else forwarded to the fake Frappe. */
function startWebApp(port, frappePort) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url, headers: req.headers });
    if (req.method === "GET" && new URL(req.url, "http://x").pathname === "/desk") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      return res.end(deskPage(ALICE_SID));
    }
    const upstream = http.request({ host: "127.0.0.1", port: frappePort, method: req.method, path: req.url, headers: req.headers },
      (up) => { res.writeHead(up.statusCode, up.headers); up.pipe(res); });
    upstream.on("error", () => { res.writeHead(502); res.end(); });
    req.pipe(upstream);
  });
  server.requests = requests;
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

// Two ways bench writes the server block for a site:
// - "port": bench's default (no dns_multitenant): one server block on the site's nginx_port
//   (render_bench.py --nginx-port), `X-Frappe-Site-Name <site>` literally;
// - "dns_multitenant": sites served by name on port 80, `X-Frappe-Site-Name $host`.
// Either way the test then pins the listen address to 127.0.0.1 (and drops `[::]:…`).
const MODES = [
  { name: "port", dnsMultitenant: false, screenshot: "browser-nginx.png", logs: "browser-nginx-logs" },
  { name: "dns_multitenant", dnsMultitenant: true, screenshot: "browser-nginx-dns_multitenant.png", logs: "browser-nginx-dns_multitenant-logs" },
];

for (const mode of MODES) describe(`a browser behind bench nginx (${mode.name}), with the server run by bench's supervisor block`, { skip: SKIP, timeout: 45000 }, () => {
  const SCREENSHOT = path.join(ARTIFACTS, mode.screenshot);
  const LOGS = path.join(ARTIFACTS, mode.logs); // kept for a look after a run
  const s = {}; // everything started, for after()
  let page;
  let browser;

  /** The page's record of what it received. */
  const rt = (p = page) => p.evaluate(() => ({
    reconnectFailed: Boolean(window.__rt.reconnectFailed),
    events: window.__rt.events,
    connects: window.__rt.connects,
    disconnects: window.__rt.disconnects,
    errors: window.__rt.errors,
    connected: window.__rt.socket.connected,
    id: window.__rt.socket.id,
    transport: window.__rt.socket.io.engine?.transport?.name ?? null,
  }));

  const publish = (event, message, room) => s.redis.publish({ event, message, namespace: SITE, room });

  /** Wait for `check(state of page p)`; on timeout the error shows the page's state then. */
  async function waitPage(p, check, what, timeoutMs = 10000) {
    try {
      await waitFor(async () => check(await rt(p)), { timeoutMs, everyMs: 50, what });
    } catch (err) {
      const state = await rt(p).catch((e) => `(page unreadable: ${e.message})`);
      throw new Error(`${err.message}\npage state: ${JSON.stringify(state)}`);
    }
  }

  /**
   * Publish to `room` until the page has it (a join, or the server's Redis subscription after a
   * restart, may still be in flight): each copy gets 600 ms to arrive before the next. Bounded.
   */
  async function publishUntilSeen(p, room, event, { timeoutMs = 8000 } = {}) {
    const marker = `${event}-${Math.random().toString(36).slice(2)}`;
    const seen = (state) => state.events.some((e) => e.event === event && e.args[0]?.marker === marker);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await publish(event, { marker, room }, room);
      try {
        await waitFor(async () => seen(await rt(p)), { timeoutMs: Math.min(600, Math.max(0, deadline - Date.now())), everyMs: 30 });
        return marker;
      } catch {
        if (Date.now() >= deadline) {
          throw new Error(`the page did not receive ${event} in ${room} within ${timeoutMs} ms\npage state: ${JSON.stringify(await rt(p))}`);
        }
      }
    }
  }

  const supervisorctl = (...args) => run(SUPERVISORCTL, ["-c", s.supervisorConf, ...args], { timeoutMs: 30000 });
  const program = () => `${s.benchName}-node-socketio`;
  const serverLog = () => ["node-socketio.log", "node-socketio.error.log"]
    .map((f) => { try { return fs.readFileSync(path.join(s.bench, "logs", f), "utf8"); } catch { return ""; } })
    .join("");

  before(async () => {
    assert.ok(fs.existsSync(BINARY), `${BINARY} is missing: build it with \`cargo build\``);
    assert.ok(fs.existsSync(RENDER_BENCH), `${RENDER_BENCH} is missing (it renders bench's real supervisor and nginx templates)`);
    const { chromium } = await import("playwright-core");

    s.tmp = fs.mkdtempSync(path.join(os.tmpdir(), "browser-nginx-"));
    s.redis = await Redis.start();
    s.frappe = await new FakeFrappe({ version: 16, redisUrl: s.redis.url }).listen();
    s.frappe.addSite(SITE, { installedApps: ["frappe", "erpnext"] });
    s.frappe.addSession(SITE, ALICE_SID, ALICE);
    s.frappe.allow(SITE, ALICE, DOCTYPE, DOCNAME);

    s.socketioPort = await freePort();
    s.webserverPort = await freePort();
    s.nginxPort = await freePort();
    s.web = await startWebApp(s.webserverPort, s.frappe.port);

    // The bench. The realtime server calls Frappe on the web port directly (its documented fix
    // for the hairpin through the public URL, which does not resolve outside the browser here).
    s.bench = makeBench({
      sites: [SITE],
      version: 16,
      common: {
        socketio_port: s.socketioPort,
        webserver_port: s.webserverPort,
        redis_queue: s.redis.url,
        ...(mode.dnsMultitenant ? { dns_multitenant: true } : {}),
        realtime_callback_url: `http://127.0.0.1:${s.webserverPort}`,
        // Sessions outlive `supervisorctl restart` (README, "Connection state recovery").
        realtime_recovery_store: "redis",
      },
    });
    s.benchName = path.basename(s.bench);
    fs.mkdirSync(path.join(s.bench, "logs"), { recursive: true });
    fs.mkdirSync(path.join(s.bench, "config"), { recursive: true });
    fs.copyFileSync(SOCKET_IO_JS, path.join(s.bench, "sites/assets/socket.io.min.js"));

    // Bench's own templates, rendered for this bench.
    s.rendered = path.join(s.tmp, "rendered");
    const { nginxConf } = await renderBench({ bench: s.bench, benchName: s.benchName, sites: [SITE],
      socketioPort: s.socketioPort, webserverPort: s.webserverPort, out: s.rendered, realtimeBin: BINARY, timeoutMs: 20000,
      ...(mode.dnsMultitenant ? {} : { nginxPort: s.nginxPort }) });

    // supervisord, with the rendered [program:<bench>-node-socketio] block. Only `--host
    // 127.0.0.1` is added to its command= so the test listens on loopback only.
    const block = fs.readFileSync(path.join(s.rendered, "socketio-block.conf"), "utf8");
    assert.match(block, new RegExp(`^\\[program:${s.benchName}-node-socketio\\]$`, "m"));
    assert.match(block, new RegExp(`^directory=${s.bench}/?$`, "m"), "directory= is the bench");
    const command = /^command=(.*)$/m.exec(block)?.[1];
    assert.ok(command?.startsWith(BINARY), `command= runs our binary: ${command}`);
    s.block = path.join(s.tmp, "socketio-block.conf");
    fs.writeFileSync(s.block, command.includes("--host")
      ? block
      : block.replace(/^command=.*$/m, (line) => `${line} --host 127.0.0.1`));
    s.supervisorConf = path.join(s.tmp, "supervisord.conf");
    fs.writeFileSync(s.supervisorConf, [
      "[unix_http_server]",
      `file=${s.tmp}/supervisor.sock`,
      "chmod=0700",
      "",
      "[supervisord]",
      "nodaemon=true",
      `pidfile=${s.tmp}/supervisord.pid`,
      `logfile=${s.tmp}/supervisord.log`,
      `childlogdir=${s.tmp}`,
      "loglevel=info",
      "",
      "[rpcinterface:supervisor]",
      "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
      "",
      "[supervisorctl]",
      `serverurl=unix://${s.tmp}/supervisor.sock`,
      "",
      "[include]",
      `files = ${s.block}`,
      "",
    ].join("\n"));
    s.supervisord = startChild(SUPERVISORD, ["-c", s.supervisorConf], { cwd: s.tmp });
    await waitFor(async () => {
      if (s.supervisord.exitCode !== null) throw new Error(`supervisord exited:\n${s.supervisord.output}`);
      const st = await supervisorctl("status", program());
      return /RUNNING/.test(st.stdout);
    }, { timeoutMs: 15000, everyMs: 200, what: "supervisord to run the server" });
    try {
      await waitFor(() => canConnect(s.socketioPort), { timeoutMs: 10000, what: `the server on port ${s.socketioPort}` });
      await waitFor(() => s.redis.subscribers().then((n) => n >= 1).catch(() => false),
        { timeoutMs: 10000, what: "the server to subscribe to events" });
    } catch (err) {
      throw new Error(`${err.message}\nserver log:\n${serverLog()}`);
    }

    // nginx with the rendered bench config, moved to a loopback port.
    s.renderedNginx = nginxConf;
    const listenPort = mode.dnsMultitenant ? 80 : s.nginxPort; // what bench put there
    assert.deepEqual(listenLines(s.renderedNginx), [`${listenPort}`, `[::]:${listenPort}`], "bench's listen lines for the site");
    s.nginxDir = path.join(s.tmp, "nginx"); // its logs are kept by after() even if it fails to start
    s.nginx = await BenchNginx.start({ conf: s.renderedNginx, port: s.nginxPort, dir: s.nginxDir });
    assert.ok(s.nginx.listens >= 1, "the rendered nginx.conf has a listen line");
    s.nginxConf = s.nginx.mainConf;

    // Chromium, resolving the site to loopback.
    browser = s.browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 20000,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-proxy-server", `--host-resolver-rules=MAP ${SITE} 127.0.0.1`],
    });
    s.context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    s.context.setDefaultTimeout(15000);
  }, { timeout: 40000 });

  after(async () => {
    const errors = [];
    const attempt = async (what, fn) => { try { await fn(); } catch (err) { errors.push(`${what}: ${err.message}`); } };
    if (s.browser) await attempt("chromium", () => withTimeout(s.browser.close(), 10000, "browser.close"));
    if (s.supervisord) {
      await attempt("supervisord", async () => {
        if (s.supervisord.exitCode === null) await supervisorctl("shutdown");
        const timer = setTimeout(() => s.supervisord.kill("SIGTERM"), 12000);
        const killer = setTimeout(() => s.supervisord.kill("SIGKILL"), 20000);
        await s.supervisord.exited;
        clearTimeout(timer);
        clearTimeout(killer);
      });
    }
    if (s.nginx) await attempt("nginx", () => s.nginx.stop());
    if (s.web) {
      s.web.closeAllConnections?.();
      await attempt("web app", () => new Promise((resolve) => s.web.close(resolve)));
    }
    if (s.frappe) await attempt("fake frappe", () => s.frappe.close());
    if (s.redis) await attempt("redis", () => s.redis.stop());
    await attempt("keeping the logs", async () => {
      fs.rmSync(LOGS, { recursive: true, force: true });
      fs.mkdirSync(LOGS, { recursive: true });
      const keep = { "node-socketio.log": path.join(s.bench ?? "", "logs/node-socketio.log"),
        "node-socketio.error.log": path.join(s.bench ?? "", "logs/node-socketio.error.log"),
        "supervisord.log": path.join(s.tmp ?? "", "supervisord.log"),
        "nginx-error.log": path.join(s.nginxDir ?? "", "error.log"), "nginx-access.log": path.join(s.nginxDir ?? "", "access.log"),
        "nginx-main.conf": s.nginxConf ?? "", "bench-nginx.conf": path.join(s.nginxDir ?? "", "bench-nginx.conf"),
        "rendered-nginx.conf": path.join(s.rendered ?? "", "nginx.conf"), "supervisord.conf": s.supervisorConf ?? "",
        "socketio-block.conf": s.block ?? "" };
      for (const [name, file] of Object.entries(keep)) if (fs.existsSync(file)) fs.copyFileSync(file, path.join(LOGS, name));
    });
    if (s.bench) fs.rmSync(s.bench, { recursive: true, force: true });
    if (s.tmp) fs.rmSync(s.tmp, { recursive: true, force: true });
    if (errors.length) throw new Error(errors.join("\n"));
  });

  test("bench's rendered nginx config is used with only its listen lines changed", () => {
    const used = fs.readFileSync(path.join(s.nginxDir, "bench-nginx.conf"), "utf8");
    const rendered = socketioLocation(s.renderedNginx);
    assert.ok(rendered, "the rendered nginx.conf has a `location /socket.io` block");
    assert.equal(socketioLocation(used), rendered, "the `location /socket.io` block is byte-identical to the rendered one");
    const siteName = mode.dnsMultitenant ? "$host" : SITE;
    for (const directive of ["proxy_http_version 1.1;", `proxy_set_header X-Frappe-Site-Name ${siteName};`, "proxy_set_header Upgrade $http_upgrade;",
      'proxy_set_header Connection "upgrade";', "proxy_set_header Origin $scheme://$http_host;",
      "proxy_set_header Host $host;", `proxy_pass http://${s.benchName}-socketio-server;`]) {
      assert.ok(rendered.includes(directive), `the socket.io location has ${directive}`);
    }
    assert.match(s.renderedNginx, new RegExp(`upstream ${s.benchName}-socketio-server \\{\\s*server 127\\.0\\.0\\.1:${s.socketioPort} fail_timeout=0;`));
    assert.match(s.renderedNginx, new RegExp(`upstream ${s.benchName}-frappe \\{\\s*server 127\\.0\\.0\\.1:${s.webserverPort} fail_timeout=0;`));
    const strip = (text) => text.split("\n").filter((l) => !/^\s*(#\s*)?listen\s/.test(l)).join("\n");
    assert.equal(strip(used), strip(s.renderedNginx), "nothing but listen lines differ");
  });

  test("the desk page connects through nginx and upgrades to websocket", { timeout: 30000 }, async () => {
    page = await s.context.newPage();
    page.on("console", (msg) => { if (msg.type() === "error") s.consoleErrors = [...(s.consoleErrors ?? []), msg.text()]; });
    const response = await page.goto(`http://${SITE}:${s.nginxPort}/desk`, { waitUntil: "load" });
    assert.equal(response.status(), 200);
    // The desk request went nginx → @webserver with the site's headers.
    const desk = s.web.requests.find((r) => r.url === "/desk");
    assert.equal(desk.headers["x-frappe-site-name"], SITE);
    assert.equal(desk.headers.host, SITE);
    await waitPage(page, (st) => st.connected, "the page to connect");
    await page.waitForFunction(() => window.__rt.socket.io.engine.transport.name === "websocket", null, { timeout: 10000 });
    const state = await rt();
    assert.equal(state.transport, "websocket");
    assert.equal(state.connects, 1);
    assert.deepEqual(state.errors, []);
    // The server authenticated the browser's cookie with the site.
    const calls = s.frappe.callsTo(USER_INFO);
    assert.ok(calls.some((c) => c.site === SITE && (c.headers.cookie ?? "").includes(`sid=${ALICE_SID}`)),
      "get_user_info was called for the site with the page's sid cookie");
  });

  test("events published on Redis reach the page: user room, permitted doc room, task room", { timeout: 30000 }, async () => {
    // User room: joined before the connection was acknowledged.
    await publishUntilSeen(page, `user:${ALICE}`, "msgprint");
    // Python publishes with frappe.as_json (indent 1, sorted keys, \u escapes).
    await s.redis.publish(asFrappeJson({ event: "eval_message", message: { text: "Café ✓" }, namespace: SITE, room: `user:${ALICE}` }));
    await waitPage(page, (st) => st.events.some((e) => e.event === "eval_message"), "the as_json event", 5000);
    // A browser takes connection state recovery's offsets: the publication's offset comes
    // last, after Frappe's message.
    const [message, offset, ...rest] = (await rt()).events.find((e) => e.event === "eval_message").args;
    assert.deepEqual(message, { text: "Café ✓" });
    assert.match(offset, /^\d+$/, "the recovery offset");
    assert.deepEqual(rest, []);
    // Doc room: joined after has_permission (granted for DOCNAME only).
    await publishUntilSeen(page, `doc:${DOCTYPE}/${DOCNAME}`, "doc_update");
    // Task room: task_subscribe needs no permission.
    await publishUntilSeen(page, `task_progress:${TASK}`, "task_progress");
    // The refused document: publish to it, then a sentinel to the user room (in-order delivery).
    await publish("doc_update", { secret: true }, `doc:${DOCTYPE}/${SECRET_DOC}`);
    await publishUntilSeen(page, `user:${ALICE}`, "sentinel");
    const { events } = await rt();
    assert.ok(!events.some((e) => e.args[0]?.secret), "an event for a refused document reached the page");
    const perms = s.frappe.callsTo("frappe.realtime.has_permission");
    assert.ok(perms.some((c) => c.query.doctype === DOCTYPE && c.query.name === DOCNAME), "has_permission was asked for the doc");
    assert.ok(perms.some((c) => c.query.doctype === DOCTYPE && c.query.name === SECRET_DOC), "has_permission was asked for the refused doc");
    // An event for another room of the same site does not reach the page.
    await publish("list_update", { other: true }, "doctype:Note");
    await publishUntilSeen(page, `user:${ALICE}`, "sentinel");
    assert.ok(!(await rt()).events.some((e) => e.args[0]?.other), "an event for a room the page never joined reached it");
    // What the user sees.
    const items = await page.locator("#events li:not(.sys)").allTextContents();
    assert.ok(items.some((t) => t.includes("task_progress")) && items.some((t) => t.includes("doc_update")));
  });

  test("a transport cut under the page: it comes back with the same id, its rooms, and every event it missed, once, in order", { timeout: 40000 }, async () => {
    const before = await rt();
    const kept = async () => {
      const text = await (await fetch(`http://127.0.0.1:${s.socketioPort}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith("frappe_realtime_recovery_sessions_kept{") && l.includes(`site="${SITE}"`));
      return line ? Number(line.split(" ").pop()) : 0;
    };
    // Reconnect after a fixed 2 s, so the publications below fall inside the gap; then close
    // the websocket from the page, as a network drop would end it.
    await page.evaluate(() => {
      const manager = window.__rt.socket.io;
      manager.reconnectionDelay(2000);
      manager.reconnectionDelayMax(2000);
      manager.randomizationFactor(0);
      manager.engine.transport.ws.close();
    });
    await waitPage(page, (now) => now.disconnects.length > before.disconnects.length, "the page to see the cut", 5000);
    await waitFor(async () => (await kept()) >= 1, { timeoutMs: 5000, what: "the server to keep the session" });
    const marker = `gap-${Math.random()}`;
    for (let seq = 0; seq < 10; seq += 1) {
      await publish("doc_update", { marker, seq }, `doc:${DOCTYPE}/${DOCNAME}`);
      await publish("task_progress", { marker, seq }, `task_progress:${TASK}`);
    }
    await waitPage(page, (now) => now.connects > before.connects && now.connected, "the page to reconnect", 15000);
    assert.equal(await page.evaluate(() => window.__rt.socket.recovered), true, "socket.recovered");
    const after = await rt();
    assert.equal(after.id, before.id, "the same socket id");
    await waitPage(page, (now) => now.events.filter((e) => e.args[0]?.marker === marker).length >= 20, "the missed events", 5000);
    await publishUntilSeen(page, `user:${ALICE}`, "sentinel");
    for (const event of ["doc_update", "task_progress"]) {
      const seqs = (await rt()).events.filter((e) => e.event === event && e.args[0]?.marker === marker).map((e) => e.args[0].seq);
      assert.deepEqual(seqs, [...Array(10).keys()], `every missed ${event} once, in order`);
    }
    // The rooms are back: a new publication to the doc room arrives without a new subscribe.
    await publishUntilSeen(page, `doc:${DOCTYPE}/${DOCNAME}`, "doc_update");
    await page.evaluate(() => {
      const manager = window.__rt.socket.io;
      manager.reconnectionDelay(1000);
      manager.reconnectionDelayMax(5000);
      manager.randomizationFactor(0.5);
    });
  });

  test("`supervisorctl restart <bench>-node-socketio`: the page reconnects by itself, recovers its session and rooms, and gets the next event", { timeout: 40000 }, async () => {
    const before = await rt();
    const oldPid = (await supervisorctl("pid", program())).stdout.trim();
    const restarted = await supervisorctl("restart", program());
    assert.equal(restarted.code, 0, `supervisorctl restart failed:\n${restarted.stdout}${restarted.stderr}`);
    assert.match(restarted.stdout, /stopped/);
    assert.match(restarted.stdout, /started/);
    const newPid = (await supervisorctl("pid", program())).stdout.trim();
    assert.match(newPid, /^\d+$/);
    assert.notEqual(newPid, oldPid, "supervisor started a new process");
    // Socket.IO's own reconnection (3 attempts, ~1 s, 2 s, 4 s), through nginx, to the new process.
    await waitPage(page, (now) => now.connects > before.connects && now.connected, "the page to reconnect", 20000);
    const after = await rt();
    assert.ok(after.disconnects.length > before.disconnects.length, "the page saw the disconnect");
    // The Redis recovery store kept the page's session across the restart: same socket, and
    // its doc and task rooms, which Frappe's client never subscribes to again.
    assert.equal(await page.evaluate(() => window.__rt.socket.recovered), true, "socket.recovered after the restart");
    assert.equal(after.id, before.id, "the same Socket.IO session");
    await publishUntilSeen(page, `doc:${DOCTYPE}/${DOCNAME}`, "doc_update", { timeoutMs: 10000 });
    await publishUntilSeen(page, `task_progress:${TASK}`, "task_progress", { timeoutMs: 10000 });
    await page.waitForFunction(() => window.__rt.socket.io.engine.transport.name === "websocket", null, { timeout: 10000 });
    // The new process is subscribed to Redis; the next event to the user room arrives.
    await publishUntilSeen(page, `user:${ALICE}`, "msgprint", { timeoutMs: 10000 });
    // The websocket of the first connection went through nginx (logged when it closed).
    const access = fs.readFileSync(path.join(s.nginxDir, "access.log"), "utf8");
    // (A websocket with an Engine.IO sid is an upgrade from polling, not a direct connection.)
    assert.match(access, /"GET \/socket\.io\/\?EIO=4&transport=websocket[^ "]*&sid=[^ "]* HTTP\/1\.1" 101 /);
  });

  test("server down for a moment: a reconnect attempt gets nginx's 502, a later one gets in", { timeout: 40000 }, async () => {
    const before = await rt();
    const stopped = await supervisorctl("stop", program());
    assert.equal(stopped.code, 0, `supervisorctl stop failed:\n${stopped.stdout}${stopped.stderr}`);
    // The first attempt (after ~0.5–1.5 s) reaches nginx while the upstream is down.
    await waitPage(page, (now) => now.errors.length > before.errors.length, "a failed reconnect attempt", 8000);
    const access = fs.readFileSync(path.join(s.nginxDir, "access.log"), "utf8");
    assert.match(access, /"GET \/socket\.io\/\?EIO=4&transport=polling[^ "]* HTTP\/1\.1" 502 /, "nginx answered 502");
    const started = await supervisorctl("start", program());
    assert.equal(started.code, 0, `supervisorctl start failed:\n${started.stdout}${started.stderr}`);
    // The next attempt comes at least ~1 s after the failed one; the server is up by then.
    await waitPage(page, (now) => {
      if (now.reconnectFailed) throw new Error(`the page gave up reconnecting: ${JSON.stringify(now)}`);
      return now.connects > before.connects && now.connected;
    }, "the page to reconnect", 20000);
    await publishUntilSeen(page, `user:${ALICE}`, "msgprint", { timeoutMs: 10000 });
    await page.waitForFunction(() => window.__rt.socket.io.engine.transport.name === "websocket", null, { timeout: 10000 });
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });

  test("a polling-only page works through nginx", { timeout: 30000 }, async () => {
    const polling = await s.context.newPage();
    try {
      await polling.goto(`http://${SITE}:${s.nginxPort}/desk?transports=polling`, { waitUntil: "load" });
      await waitPage(polling, (st) => st.connected, "the polling page to connect");
      assert.equal((await rt(polling)).transport, "polling");
      await publishUntilSeen(polling, `user:${ALICE}`, "msgprint");
      await publishUntilSeen(polling, `doc:${DOCTYPE}/${DOCNAME}`, "doc_update");
      await publishUntilSeen(polling, `task_progress:${TASK}`, "task_progress");
      const state = await rt(polling);
      assert.equal(state.transport, "polling", "still polling (no upgrade offered to use)");
      assert.equal(state.connects, 1);
      assert.deepEqual(state.disconnects, []);
      const access = fs.readFileSync(path.join(s.nginxDir, "access.log"), "utf8");
      assert.match(access, /"POST \/socket\.io\/\?EIO=4&transport=polling[^ "]*sid=[^ "]* HTTP\/1\.1" 200 /);
    } finally {
      await polling.close();
    }
  });

  test("the server's supervisor logs hold no sid or socket secret", () => {
    const log = serverLog();
    assert.ok(log.length > 0, "the server wrote to logs/node-socketio.log");
    const leaked = [...s.frappe.secretsIssued].filter((secret) => log.includes(secret));
    assert.deepEqual(leaked, [], "secrets in the server log");
    // nginx's 502s while the server was stopped are expected; nothing else.
    const unexpected = (s.consoleErrors ?? []).filter((e) => !/status of 502 \(Bad Gateway\)/.test(e));
    assert.deepEqual(unexpected, [], "errors in the page's console");
  });
});
