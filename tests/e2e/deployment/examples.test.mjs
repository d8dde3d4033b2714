// The example clients (examples/node-client, examples/python-client), run as a user runs them:
// each logs in with a Frappe sid or an API token, connects over websocket or long-polling,
// prints the event Frappe publishes to its user's room, and exits 0 (`--once`).
//
// Two ways in, against the real server:
// - "root namespace": what a non-browser client sends: namespace `/`, X-Frappe-Site-Name, no
//   Origin header, the credential only in the Socket.IO CONNECT auth payload;
// - "site namespace": what Frappe's own Node service accepts as well: `/<site>`, an Origin whose
//   host is the Host's, the credential only as a Cookie / Authorization header.
// Then what each client puts on the wire (headers, the CONNECT packet's auth payload), recorded
// by a loopback Engine.IO endpoint that refuses every CONNECT, and how each one fails.
//
// The Python client runs from the venv scripts/setup makes. Every wait is bounded; every child
// process is stopped by its own PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { WebSocketServer } from "ws";
import {
  startStack, waitFor, SITES, ROOT, ALICE, ALICE_SID, DAVE_API_KEY, DAVE_TOKEN, unique, DAVE,
} from "../../support/harness.mjs";

const PYTHON = path.join(ROOT, ".cache/python-client-venv/bin/python");
const CLIENTS = {
  node: [process.execPath, path.join(ROOT, "examples/node-client/client.mjs")],
  python: [PYTHON, path.join(ROOT, "examples/python-client/client.py")],
};
const SITE = SITES[0];
const CREDENTIALS = {
  sid: { args: ["--sid", ALICE_SID], user: ALICE, secret: ALICE_SID },
  token: { args: ["--token", DAVE_API_KEY], user: DAVE, secret: "secret-dave" },
};
const TRANSPORTS = ["websocket", "polling"];

/** One example client as a child process; `output` is stdout and stderr interleaved. */
function runClient(kind, args, env = {}) {
  const [command, ...argv] = CLIENTS[kind];
  const inherited = { ...process.env };
  delete inherited.FRAPPE_SID; // the credential comes from each test
  delete inherited.FRAPPE_TOKEN;
  const proc = spawn(command, [...argv, ...args], {
    cwd: ROOT,
    env: { ...inherited, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const child = { proc, stdout: "", stderr: "", output: "", code: undefined };
  proc.stdout.on("data", (chunk) => { child.stdout += chunk; child.output += chunk; });
  proc.stderr.on("data", (chunk) => { child.stderr += chunk; child.output += chunk; });
  child.exited = new Promise((resolve) => proc.once("close", (code, signal) => {
    child.code = code ?? signal;
    resolve(child.code);
  }));
  return child;
}

/** The child's exit code within `ms`; past it, it is killed (by its PID) and the test fails. */
async function exitCode(child, ms) {
  const timer = setTimeout(() => child.proc.kill("SIGKILL"), ms);
  const code = await child.exited;
  clearTimeout(timer);
  assert.notEqual(code, "SIGKILL", `the client did not exit within ${ms} ms:\n${child.output}`);
  return code;
}

function stop(child) {
  if (child.code === undefined) child.proc.kill("SIGKILL");
}

/** The args of the `event <name> <json>` line the client printed for `event`. */
function printedArgs(child, event) {
  const line = child.stdout.split("\n").find((l) => l.startsWith(`event ${event} `));
  assert.ok(line, `no line for ${event}:\n${child.output}`);
  return JSON.parse(line.slice(`event ${event} `.length));
}

/**
 * Run `kind` with `args` until it connects, publish an event to `user`'s room (again until the
 * client prints it: bounded), and check it exits 0 having printed exactly that event.
 */
async function receivesEvent(stack, kind, { args, user, secret, transport, env }) {
  const event = unique("examples");
  const message = { marker: unique("marker"), nested: { list: [1, "two", null], ok: true } };
  const child = runClient(kind, [
    "--url", `http://127.0.0.1:${stack.port}`, "--site", SITE, "--transports", transport,
    "--once", event, "--timeout", "20", ...args,
  ], env);
  try {
    await waitFor(() => child.stdout.includes("client: connected") || child.code !== undefined,
      { timeoutMs: 25000, what: `the ${kind} client to connect` });
    assert.match(child.stdout, /client: connected/, `the ${kind} client did not connect:\n${child.output}`);
    await waitFor(async () => {
      if (child.code !== undefined) return true;
      await stack.publish(event, message, { room: `user:${user}` });
      return child.stdout.includes(`event ${event} `);
    }, { timeoutMs: 10000, everyMs: 200, what: `the ${kind} client to print ${event}` });
    assert.equal(await exitCode(child, 10000), 0, child.output);
    assert.deepEqual(printedArgs(child, event), [message]);
    assert.match(child.stdout, new RegExp(`client: connected .*\\(transport ${transport}\\)`));
    assert.ok(!child.output.includes(secret), `the client printed its credential:\n${child.output}`);
  } finally {
    stop(child);
  }
}

describe("the example clients against the server", () => {
  let stack;
  before(async () => {
    assert.ok(fs.existsSync(PYTHON), `${PYTHON} is missing: run scripts/setup test`);
    // No Origin means no URL to call Frappe back at but the configured one.
    stack = await startStack({ common: (frappe) => ({ realtime_callback_url: frappe.url }) });
  });
  after(async () => {
    await stack?.stop();
  });

  for (const kind of Object.keys(CLIENTS)) {
    for (const [credential, { args, user, secret }] of Object.entries(CREDENTIALS)) {
      for (const transport of TRANSPORTS) {
        test(`${kind}, ${credential}, ${transport}: root namespace, no Origin, credential in the auth payload`, async () => {
          await receivesEvent(stack, kind, {
            args: [...args, "--namespace", "/", "--credential-in", "auth"], user, secret, transport,
          });
        });

        test(`${kind}, ${credential}, ${transport}: /<site> namespace, Origin, credential in a header`, async () => {
          await receivesEvent(stack, kind, {
            args: [...args, "--namespace", `/${SITE}`, "--origin", stack.frappe.url, "--credential-in", "headers"],
            user, secret, transport,
          });
        });
      }
    }

    test(`${kind}: the credential can come from the environment (kept out of the process list)`, async () => {
      await receivesEvent(stack, kind, {
        args: ["--namespace", `/${SITE}`, "--origin", stack.frappe.url], env: { FRAPPE_TOKEN: DAVE_API_KEY },
        user: CREDENTIALS.token.user, secret: CREDENTIALS.token.secret, transport: "websocket",
      });
    });

    test(`${kind}: a refused login exits 1 with the server's reason, without printing the credential`, async () => {
      const child = runClient(kind, [
        "--url", `http://127.0.0.1:${stack.port}`, "--site", SITE, "--namespace", `/${SITE}`,
        "--origin", stack.frappe.url, "--token", "key-dave:not-the-secret", "--timeout", "20",
      ]);
      try {
        assert.equal(await exitCode(child, 25000), 1, child.output);
        assert.match(child.stderr, /^client: connect_error: Unauthorized: /m);
        assert.ok(!child.output.includes("not-the-secret"), child.output);
      } finally {
        stop(child);
      }
    });

    test(`${kind}: --exit-after-connect exits 0 once connected; --once exits 1 at the --timeout`, async () => {
      const base = ["--url", `http://127.0.0.1:${stack.port}`, "--site", SITE, "--namespace", `/${SITE}`,
        "--origin", stack.frappe.url, "--sid", ALICE_SID, "--transports", "websocket"];
      const quick = runClient(kind, [...base, "--exit-after-connect"]);
      const waiting = runClient(kind, [...base, "--once", "never-published", "--timeout", "2"]);
      try {
        assert.equal(await exitCode(quick, 20000), 0, quick.output);
        assert.match(quick.stdout, /client: connected/);
        assert.equal(await exitCode(waiting, 20000), 1, waiting.output);
        assert.match(waiting.stderr, /^client: timeout: no never-published event within 2 s$/m);
      } finally {
        stop(quick);
        stop(waiting);
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// What the clients send, seen by a loopback Engine.IO endpoint that records the handshake's
// headers and the Socket.IO CONNECT packet, then refuses it with CONNECT_ERROR "recorded".
// ---------------------------------------------------------------------------------------------

class Recorder {
  async listen() {
    this.requests = []; // {transport, headers}
    this.connects = []; // {namespace, auth}
    this.server = http.createServer((req, res) => this.#polling(req, res));
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on("upgrade", (req, socket, head) => {
      this.requests.push({ transport: "websocket", headers: req.headers });
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send(`0${JSON.stringify(this.#open([]))}`);
        ws.on("message", (data) => {
          const reply = this.#packet(data.toString());
          if (reply) ws.send(reply);
        });
      });
    });
    this.pending = new Map(); // Engine.IO sid -> {res of a waiting GET, queued packets}
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async close() {
    for (const ws of this.wss.clients) ws.terminate();
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  #open(upgrades) {
    return { sid: unique("eio"), upgrades, pingInterval: 25000, pingTimeout: 20000, maxPayload: 1000000 };
  }

  /**
   * An Engine.IO message carrying a Socket.IO CONNECT (`4` + `0[/ns,][{auth}]`) is recorded;
   * the answer is a message carrying CONNECT_ERROR (`4` + `4[/ns,]{"message":…}`).
   */
  #packet(text) {
    const match = /^40(\/[^,]*,)?(.*)$/s.exec(text);
    if (!match) return null;
    const namespace = match[1] ? match[1].slice(0, -1) : "/";
    this.connects.push({ namespace, auth: match[2] ? JSON.parse(match[2]) : undefined });
    return `44${match[1] ?? ""}${JSON.stringify({ message: "recorded" })}`;
  }

  #polling(req, res) {
    const url = new URL(req.url, "http://x");
    const sid = url.searchParams.get("sid");
    const send = (body) => {
      res.writeHead(200, { "content-type": "text/plain; charset=UTF-8" });
      res.end(body);
    };
    if (!sid) { // the handshake: no upgrade offered, so a polling client stays on polling
      this.requests.push({ transport: "polling", headers: req.headers });
      const open = this.#open([]);
      this.pending.set(open.sid, { queued: [] });
      return send(`0${JSON.stringify(open)}`);
    }
    const session = this.pending.get(sid);
    if (!session) return send("1"); // close
    if (req.method === "POST") {
      let body = "";
      req.on("data", (chunk) => { body += chunk; });
      req.on("end", () => {
        for (const packet of body.split("\x1e")) {
          const reply = this.#packet(packet);
          if (reply) session.queued.push(reply);
        }
        send("ok");
        this.#flush(session);
      });
      return undefined;
    }
    session.res = res;
    return this.#flush(session);
  }

  #flush(session) {
    if (!session.res || session.queued.length === 0) return;
    session.res.writeHead(200, { "content-type": "text/plain; charset=UTF-8" });
    session.res.end(session.queued.splice(0).join("\x1e"));
    session.res = undefined;
  }
}

describe("what the example clients send", () => {
  let recorder;
  before(async () => {
    assert.ok(fs.existsSync(PYTHON), `${PYTHON} is missing: run scripts/setup test`);
    recorder = await new Recorder().listen();
  });
  after(async () => {
    await recorder?.close();
  });

  /** Run a client against the recorder; it must exit 1 with the refusal; what it sent. */
  async function record(kind, args) {
    recorder.requests = [];
    recorder.connects = [];
    const child = runClient(kind, ["--url", recorder.url, "--timeout", "15", ...args]);
    try {
      assert.equal(await exitCode(child, 20000), 1, child.output);
      assert.match(child.stderr, /^client: connect_error: recorded$/m, child.output);
      assert.doesNotMatch(child.output, /sid-alice|secret-dave/, "the credential is never printed");
    } finally {
      stop(child);
    }
    assert.equal(recorder.connects.length, 1, `one CONNECT:\n${child.output}`);
    return { headers: recorder.requests[0].headers, transport: recorder.requests[0].transport, ...recorder.connects[0] };
  }

  for (const kind of Object.keys(CLIENTS)) {
    for (const transport of TRANSPORTS) {
      test(`${kind}, ${transport}: by default the credential goes both ways, to /, with no Origin`, async () => {
        const sent = await record(kind, ["--site", SITE, "--sid", ALICE_SID, "--transports", transport]);
        assert.equal(sent.transport, transport);
        assert.equal(sent.namespace, "/");
        assert.deepEqual(sent.auth, { sid: ALICE_SID });
        assert.equal(sent.headers.cookie, `sid=${ALICE_SID}`);
        assert.equal(sent.headers.authorization, undefined);
        assert.equal(sent.headers["x-frappe-site-name"], SITE);
        assert.equal(sent.headers.origin, undefined, "no Origin header unless --origin");
      });

      test(`${kind}, ${transport}: --credential-in auth sends the token in the auth payload only`, async () => {
        const sent = await record(kind, ["--token", DAVE_API_KEY, "--credential-in", "auth",
          "--transports", transport]);
        assert.equal(sent.namespace, "/");
        assert.deepEqual(sent.auth, { token: DAVE_API_KEY });
        assert.equal(sent.headers.cookie, undefined);
        assert.equal(sent.headers.authorization, undefined);
        assert.equal(sent.headers["x-frappe-site-name"], undefined, "no --site, no X-Frappe-Site-Name");
        assert.equal(sent.headers.origin, undefined);
      });

      test(`${kind}, ${transport}: --credential-in headers, --namespace and --origin`, async () => {
        const sent = await record(kind, ["--site", SITE, "--namespace", `/${SITE}`, "--origin", "https://erp.example.com",
          "--token", DAVE_API_KEY, "--credential-in", "headers", "--transports", transport]);
        assert.equal(sent.namespace, `/${SITE}`);
        assert.ok(sent.auth === undefined || Object.keys(sent.auth).length === 0, `no auth payload: ${JSON.stringify(sent.auth)}`);
        assert.equal(sent.headers.authorization, DAVE_TOKEN);
        assert.equal(sent.headers.cookie, undefined);
        assert.equal(sent.headers.origin, "https://erp.example.com");
      });
    }
  }
});
